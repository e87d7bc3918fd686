//! `ingest`: Tracker's HTTP endpoint. It checks each `GET /<account_id>?data=<data>` against
//! the accounts store and forwards accepted events to busd, which it runs in-process unless
//! given `--bus`. `ingest accounts ...` manages the accounts table.
//!
//! Exit codes: 0 after a clean shutdown or a successful command, 1 on failure, 2 for bad
//! arguments. Logs go to stderr; `ingest accounts ...` prints its result to stdout.

use anyhow::Context as _;

use ingest::cli::{self, Cli, Command};
use ingest::serve;

fn main() -> std::process::ExitCode {
    let (cli, warnings) = plumbing::env::parse::<Cli>();
    plumbing::logging::init();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Accounts(args)) => ingest::accounts::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve::run(args))
}
