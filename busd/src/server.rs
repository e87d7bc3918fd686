//! The accept loop and the order of a graceful shutdown.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::Bus;
use crate::config::Config;
use crate::connection;
use crate::context::Context;
use crate::peer;
use crate::publishers::Publishers;
use crate::reader::ReadBudget;
use crate::shutdown::Shutdown;
use crate::slots::Slots;
use crate::state::StateFile;
use plumbing::accept::{accept_loop, never_reclaim};

/// Serves publishers and subscribers on `listener` until `shutdown` is cancelled, then stops
/// reading, closes the bus, flushes every subscriber and says `Goodbye` (see [`Shutdown`]).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let epoch = new_epoch();
    let (follows, state) = match &config.state_file {
        Some(path) => StateFile::start(path, epoch),
        None => (None, None),
    };
    let bus = Arc::new(Bus::new(
        epoch,
        config.replay_bytes,
        config.queue_events,
        config.slow_policy.when_full(),
    ));
    match follows {
        Some(prev) => info!(
            epoch,
            follows_epoch = prev.epoch,
            follows_last_seq = prev.seq,
            "bus ready"
        ),
        None => info!(epoch, "bus ready (follows no graceful run)"),
    }
    let drain_timeout = config.drain_timeout;
    // Publishers' slots come on top of everyone else's (see `crate::slots`).
    let max_connections = config.max_connections.saturating_add(config.max_publishers);
    let ctx = Arc::new(Context {
        bus: bus.clone(),
        slots: Slots::new(config.max_connections, config.max_publishers),
        budget: read_budget(&config),
        config,
        shutdown: Shutdown::default(),
        publishers: Publishers::default(),
        follows,
        connections: AtomicU64::new(0),
    });
    let tasks = accept_loop(
        listener,
        max_connections,
        &shutdown,
        |socket| {
            let ctx = ctx.clone();
            async move {
                ctx.bus.counters.connections.fetch_add(1, Relaxed);
                connection::handle(socket, ctx.clone()).await;
                ctx.bus.counters.connections.fetch_sub(1, Relaxed);
            }
        },
        move |socket| peer::refuse_over_limit(socket, max_connections),
        never_reclaim,
    )
    .await;
    ctx.shutdown.stop_reading.cancel();
    let last_seq = bus.close();
    info!(
        epoch = bus.epoch(),
        last_seq, "shutting down: flushing subscribers"
    );
    ctx.shutdown.goodbye.cancel();
    if tokio::time::timeout(drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tasks.len(),
            "gave up waiting for connections to flush"
        );
    }
    if let Some(state) = state {
        state.finish(bus.epoch(), last_seq);
    }
    info!(epoch = bus.epoch(), last_seq, "stopped");
    Ok(())
}

/// The budget for partly received frames, raised to `max_frame` (and saying so) when lower,
/// since a frame that could never get its budget could never be received.
fn read_budget(config: &Config) -> ReadBudget {
    if config.read_budget < config.max_frame {
        warn!(
            read_budget = config.read_budget,
            max_frame = config.max_frame,
            "--read-budget is below --max-frame; raising it to --max-frame"
        );
    }
    ReadBudget::new(config.read_budget.max(config.max_frame))
}

/// Microseconds since the Unix epoch: distinct for every start, and growing across restarts.
fn new_epoch() -> u64 {
    plumbing::clock::now_us().max(1)
}
