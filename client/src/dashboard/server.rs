//! The dashboard's HTTP side (axum): the page and its two assets, `/api/state` (the latest
//! snapshot as JSON, for scripts and tests) and `/events`, a Server-Sent Events stream of
//! the same snapshots a few times a second.
//!
//! Snapshots reach the streams through a `tokio::sync::watch` channel, which holds only the
//! latest one: a slow page skips snapshots instead of queueing them, and a page that goes
//! away drops its stream, which gives back its place in the connection count. Streams are
//! capped at [`MAX_STREAMS`].

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::watch;

use super::board::Snapshot;

/// Most pages connected at once; one more is answered 503.
pub const MAX_STREAMS: usize = 256;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// What every request handler shares: the latest snapshot and the count of open streams.
#[derive(Clone)]
pub struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    streams: Arc<AtomicUsize>,
}

impl Shared {
    /// Handlers reading `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Shared {
            snapshots,
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Pages connected to `/events` now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

/// The routes: `/`, `/page.js`, `/page.css`, `/api/state` and `/events`.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(script))
        .route("/page.css", get(style))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .with_state(shared)
}

/// The query both data routes take: `?account=N` filters the tail.
#[derive(Debug, Deserialize)]
struct TailFilter {
    account: Option<u64>,
}

async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn state(State(shared): State<Shared>, Query(filter): Query<TailFilter>) -> Response {
    let json = shared
        .snapshots
        .borrow()
        .json(filter.account, shared.streams());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        json,
    )
        .into_response()
}

/// One open `/events` stream: counted while it lives, so a page that went away shows.
struct Stream {
    streams: Arc<AtomicUsize>,
}

impl Stream {
    /// Counts a new stream, or `None` when [`MAX_STREAMS`] are open.
    fn open(streams: &Arc<AtomicUsize>) -> Option<Stream> {
        streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < MAX_STREAMS).then_some(open + 1)
            })
            .ok()?;
        Some(Stream {
            streams: streams.clone(),
        })
    }

    fn open_now(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn events(State(shared): State<Shared>, Query(filter): Query<TailFilter>) -> Response {
    let Some(stream) = Stream::open(&shared.streams) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboard pages open\n",
        )
            .into_response();
    };
    let mut snapshots = shared.snapshots.clone();
    // The first snapshot goes out at once; then one per change.
    snapshots.mark_changed();
    let account = filter.account;
    let events = futures::stream::unfold(
        (snapshots, stream),
        move |(mut snapshots, stream)| async move {
            snapshots.changed().await.ok()?;
            let json = snapshots
                .borrow_and_update()
                .json(account, stream.open_now());
            let event = SseEvent::default().event("state").data(json);
            Some((Ok::<_, Infallible>(event), (snapshots, stream)))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}
