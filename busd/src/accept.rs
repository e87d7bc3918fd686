//! The accept loop Tracker's servers share: a connection cap with a refusal path, a pause
//! instead of a spin when accepting fails (out of file descriptors, say), and a tracker of
//! every connection task so shutdown can wait for them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// Accepts until `stop`, running `serve` for each connection while fewer than
/// `max_connections` are open and `refuse` for the rest. Returns the tracker of the tasks
/// still running, closed, for the caller to wait on.
pub async fn accept_loop<S, SF, R, RF>(
    listener: TcpListener,
    max_connections: usize,
    stop: &CancellationToken,
    serve: S,
    refuse: R,
) -> TaskTracker
where
    S: Fn(TcpStream) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
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
                let connection = serve(stream);
                tasks.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(_) => {
                tasks.spawn(refuse(stream));
            }
        }
    }
    tasks.close();
    tasks
}
