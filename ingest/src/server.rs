//! The HTTP accept loop: a connection cap, and a shutdown that stops accepting and lets open
//! connections finish the request they are in.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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
    let permits = Arc::new(Semaphore::new(max_connections));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, stop) = (app.clone(), stop.clone());
                tasks.spawn(async move {
                    connection::serve(stream, app, limits, timeouts, stop).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tasks.spawn(connection::refuse(stream));
            }
        }
    }
    drop(listener);
    tasks.close();
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
