//! Log setup shared by Tracker's daemons: tracing to stderr, filtered by `RUST_LOG` (default
//! `info`, with the NATS client at `warn`: its every connect and close would drown ingest's
//! own account of the link), with colour only on a terminal.

use std::io::IsTerminal;

/// Sets up logging once, at start; a second call does nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}
