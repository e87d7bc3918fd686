//! The accept loop Tracker's servers share: a connection cap with a refusal path, a pause
//! instead of a spin when accepting fails (out of file descriptors, say), and a tracker of
//! every connection task so shutdown can wait for them.
//!
//! Over the cap a server may first make room: ingest closes its longest-idle keep-alive
//! connection so that idle sockets cannot lock real requests out; busd refuses outright.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// How long a newcomer waits for the slot of a connection that `reclaim` asked to close.
/// That connection was idle and closes as soon as its task runs, so this is only reached
/// when the process is badly overloaded; it bounds how long accepting can stall.
pub const RECLAIM_WAIT: Duration = Duration::from_millis(100);

/// A `reclaim` for servers that never close a connection to admit another: the newcomer
/// over the cap is refused.
pub fn never_reclaim() -> bool {
    false
}

/// Accepts until `stop`, running `serve` for each connection while fewer than
/// `max_connections` are open. Over the cap it calls `reclaim`, which may ask an open
/// connection to close and says whether it did; if so the newcomer gets that connection's
/// slot once it is freed (waiting up to [`RECLAIM_WAIT`]). The rest go to `refuse`.
/// Returns the tracker of the tasks still running, closed, for the caller to wait on.
pub async fn accept_loop<S, SF, R, RF, C>(
    listener: TcpListener,
    max_connections: usize,
    stop: &CancellationToken,
    serve: S,
    refuse: R,
    reclaim: C,
) -> TaskTracker
where
    S: Fn(TcpStream) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RF,
    RF: Future<Output = ()> + Send + 'static,
    C: Fn() -> bool,
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
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if reclaim() => reclaimed_slot(&permits).await,
            Err(_) => None,
        };
        match permit {
            Some(permit) => {
                let connection = serve(stream);
                tasks.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            None => {
                tasks.spawn(refuse(stream));
            }
        }
    }
    tasks.close();
    tasks
}

/// The slot of the connection `reclaim` asked to close, if it is freed in time. The
/// semaphore hands a released permit to the longest waiter first, so that slot comes here
/// rather than to whoever asks next.
async fn reclaimed_slot(permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    tokio::time::timeout(RECLAIM_WAIT, permits.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    /// Runs an accept loop with one slot whose connections say "served" and stay until
    /// `release` is notified, and whose refused connections say "refused".
    async fn one_slot(
        reclaim: impl Fn() -> bool + Send + 'static,
        release: Arc<Notify>,
    ) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let serve = |mut stream: TcpStream| {
                let release = release.clone();
                async move {
                    let _ = stream.write_all(b"served").await;
                    release.notified().await;
                }
            };
            let refuse = |mut stream: TcpStream| async move {
                let _ = stream.write_all(b"refused").await;
            };
            accept_loop(listener, 1, &stopped, serve, refuse, reclaim).await;
        });
        (addr, stop)
    }

    async fn greeting(addr: std::net::SocketAddr) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap();
        (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn over_the_cap_newcomers_are_refused_without_reclaim() {
        let (addr, stop) = one_slot(never_reclaim, Arc::new(Notify::new())).await;
        let (_first, said) = greeting(addr).await;
        assert_eq!(said, "served");
        assert_eq!(greeting(addr).await.1, "refused");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_reclaimed_slot_goes_to_the_newcomer() {
        let release = Arc::new(Notify::new());
        let signal = release.clone();
        let reclaim = move || {
            signal.notify_one();
            true
        };
        let (addr, stop) = one_slot(reclaim, release).await;
        let (_first, said) = greeting(addr).await;
        assert_eq!(said, "served");
        assert_eq!(greeting(addr).await.1, "served");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_reclaim_that_frees_nothing_in_time_is_a_refusal() {
        let (addr, stop) = one_slot(|| true, Arc::new(Notify::new())).await;
        let (_first, said) = greeting(addr).await;
        assert_eq!(said, "served");
        let started = tokio::time::Instant::now();
        assert_eq!(greeting(addr).await.1, "refused");
        assert!(started.elapsed() >= RECLAIM_WAIT);
        stop.cancel();
    }
}
