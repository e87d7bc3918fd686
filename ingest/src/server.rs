//! The HTTP accept loop: a connection cap, and a shutdown that stops accepting and lets open
//! connections finish the request they are in.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::connection::{self, Timeouts};
use crate::request::Limits;
use crate::route::App;

pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    timeouts: Timeouts,
    max_connections: usize,
    stop: CancellationToken,
) {
    let tasks = busd::accept::accept_loop(
        listener,
        max_connections,
        &stop,
        |stream| connection::serve(stream, app.clone(), limits, timeouts, stop.clone()),
        connection::refuse,
        busd::accept::never_reclaim,
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
