//! The accept loop and the order of a graceful shutdown.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::accept::{accept_loop, never_reclaim};
use crate::bus::Bus;
use crate::config::Config;
use crate::connection::{self, Context};
use crate::shutdown::Shutdown;

/// Serves publishers and subscribers on `listener` until `shutdown` is cancelled, then stops
/// reading, closes the bus, flushes every subscriber and says `Goodbye` (see [`Shutdown`]).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let bus = Arc::new(Bus::new(
        new_epoch(),
        config.replay_bytes,
        config.queue_events,
        config.slow_policy.when_full(),
    ));
    info!(epoch = bus.epoch(), "bus ready");
    let drain_timeout = config.drain_timeout;
    let max_connections = config.max_connections;
    let ctx = Arc::new(Context {
        bus: bus.clone(),
        config,
        shutdown: Shutdown::default(),
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
        move |socket| connection::refuse_over_limit(socket, max_connections),
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
    info!(epoch = bus.epoch(), last_seq, "stopped");
    Ok(())
}

/// Microseconds since the Unix epoch: distinct for every start, and growing across restarts.
fn new_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}
