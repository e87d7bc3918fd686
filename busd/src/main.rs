//! `busd`: Tracker's pub/sub daemon. Logs go to stderr; it prints nothing on stdout.
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when it cannot serve (for
//! example the address is taken), 2 for bad arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use busd::{Config, SlowPolicy};

/// Tracker's pub/sub daemon: numbers events, keeps a replay ring and fans events out to
/// subscribers by account, with a bounded queue per subscriber.
#[derive(Parser, Debug)]
#[command(
    name = "busd",
    version,
    after_help = "Every flag also reads TRACKER_BUSD_<FLAG>, e.g. TRACKER_BUSD_LISTEN; --token reads TRACKER_BUS_TOKEN.\nExit codes: 0 clean shutdown, 1 cannot serve, 2 bad arguments."
)]
struct Args {
    /// Address to listen on; binds loopback unless told otherwise.
    #[arg(long, env = "TRACKER_BUSD_LISTEN", default_value = "127.0.0.1:7070", value_parser = plumbing::args::socket_addr)]
    listen: String,
    /// Shared secret that publishers and subscribers must send in Hello.
    #[arg(long, env = "TRACKER_BUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Events a subscriber's queue holds before the slow policy applies.
    #[arg(long, env = "TRACKER_BUSD_QUEUE_EVENTS", default_value_t = 65_536, value_parser = positive)]
    queue_events: usize,
    /// Byte budget of the replay ring (e.g. 64MiB, 1GiB).
    #[arg(long, env = "TRACKER_BUSD_REPLAY_BYTES", default_value = "64MiB")]
    replay_bytes: ByteSize,
    /// What to do with a subscriber whose queue is full.
    #[arg(long, env = "TRACKER_BUSD_SLOW_POLICY", value_enum, default_value_t = SlowPolicy::DropOldest)]
    slow_policy: SlowPolicy,
    /// Most subscribers (and connections still in their handshake); more are refused with
    /// an Error frame. Publishers have their own --max-publishers slots on top.
    #[arg(long, env = "TRACKER_BUSD_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = positive)]
    max_connections: usize,
    /// Most publishers, kept apart so that subscribers can never lock them out.
    #[arg(long, env = "TRACKER_BUSD_MAX_PUBLISHERS", default_value_t = 1_000, value_parser = positive)]
    max_publishers: usize,
    /// Largest frame accepted or sent.
    #[arg(long, env = "TRACKER_BUSD_MAX_FRAME", default_value = "1MiB")]
    max_frame: ByteSize,
    /// Most account ids one Subscribe may name.
    #[arg(long, env = "TRACKER_BUSD_MAX_FILTER", default_value_t = 100_000, value_parser = positive)]
    max_filter: usize,
    /// How long a new connection has to send Hello.
    #[arg(long, env = "TRACKER_BUSD_HELLO_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    hello_timeout: Duration,
    /// How long a frame may take to arrive once it has started; a connection idle between
    /// frames has no deadline.
    #[arg(long, env = "TRACKER_BUSD_FRAME_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    frame_timeout: Duration,
    /// Memory for partly received frames across all connections (at least --max-frame); a
    /// connection whose frame does not fit is not read until some frees.
    #[arg(long, env = "TRACKER_BUSD_READ_BUDGET", default_value = "256MiB")]
    read_budget: ByteSize,
    /// Idle time after which a subscriber is sent a heartbeat.
    #[arg(long, env = "TRACKER_BUSD_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// How long shutdown waits for subscriber queues to flush.
    #[arg(long, env = "TRACKER_BUSD_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// File where each run records itself, so that after a graceful restart clients can
    /// prove nothing was missed ("" keeps no record: every restart is reported as a gap).
    #[arg(long, env = "TRACKER_BUSD_STATE_FILE", default_value = "busd.state", value_parser = any_path)]
    state_file: PathBuf,
}

/// A path, where an empty one (`--state-file ""`) is allowed and means none.
fn any_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

impl Args {
    fn config(&self) -> anyhow::Result<Config> {
        let max_frame = usize::try_from(self.max_frame.as_u64())
            .ok()
            .filter(|n| (16..=u32::MAX as usize).contains(n))
            .context("--max-frame must be between 16 bytes and 4GiB")?;
        Ok(Config {
            // An empty value (an unset variable in a compose file, say) means no token.
            token: self.token.clone().filter(|t| !t.is_empty()),
            queue_events: self.queue_events,
            replay_bytes: usize::try_from(self.replay_bytes.as_u64()).unwrap_or(usize::MAX),
            slow_policy: self.slow_policy,
            max_connections: self.max_connections,
            max_publishers: self.max_publishers,
            max_frame,
            max_filter: self.max_filter,
            hello_timeout: self.hello_timeout,
            frame_timeout: self.frame_timeout,
            read_budget: usize::try_from(self.read_budget.as_u64()).unwrap_or(usize::MAX),
            heartbeat: self.heartbeat,
            drain_timeout: self.drain_timeout,
            state_file: Some(self.state_file.clone()).filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (args, warnings) = plumbing::env::parse::<Args>();
    plumbing::logging::init();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let config = args.config()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!("listening on {}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        plumbing::signal::interrupted().await;
        info!("signal received");
        on_signal.cancel();
    });
    busd::serve(listener, config, shutdown).await?;
    Ok(())
}
