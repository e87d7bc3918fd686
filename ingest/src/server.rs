//! The HTTP accept loop: a connection cap that takes back the slot of the connection idle
//! longest before refusing a newcomer, and a shutdown that stops accepting and lets open
//! connections finish the request they are in.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::connection::{self, Timeouts};
use crate::metrics::Metrics;
use crate::request::Limits;
use crate::route::App;
use crate::slots::Slots;

/// How the HTTP side treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// What a request head may be.
    pub limits: Limits,
    /// How long a head may take, and an idle connection may stay.
    pub timeouts: Timeouts,
    /// Most connections open at once (idle ones are reclaimed first).
    pub max_connections: usize,
}

/// Serves HTTP on `listener` until `stop`, then waits a moment for open connections.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    settings: Settings,
    stop: CancellationToken,
) {
    let Settings {
        limits,
        timeouts,
        max_connections,
    } = settings;
    let slots = Slots::new();
    let tasks = plumbing::accept::accept_loop(
        listener,
        max_connections,
        &stop,
        |stream| {
            let lease = slots.register(std::time::Instant::now());
            connection::handle(stream, app.clone(), limits, timeouts, stop.clone(), lease)
        },
        connection::refuse,
        || reclaim(&slots, &app.metrics),
    )
    .await;
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        warn!(
            open = tasks.len(),
            "closing HTTP connections that did not finish in time"
        );
    }
}

/// Asks the connection idle longest to close, so that sockets left open and silent cannot
/// keep real requests out; counted in /metrics.
fn reclaim(slots: &Slots, metrics: &Metrics) -> bool {
    let reclaimed = slots.reclaim_idlest();
    if reclaimed {
        metrics.connections_reclaimed.inc();
    }
    reclaimed
}
