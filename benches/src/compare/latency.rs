//! End to end: from ingest accepting a request (the event's timestamp) to a subscriber
//! receiving it, at fixed offered rates and at the most a closed loop of 64 connections gets.
//! [`measure`] takes the bus the subscriber reads, so the JetStream rows
//! ([`super::jetstream`]) run the same load and the same clock as busd's.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use client::jetstream::Layout;
use client::subscriber::{Delivery, Notice, Options, Subscriber};
use futures::StreamExt;
use hdrhistogram::Histogram;
use protocol::{Filter, RawCodec, Role, ServerFrame};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use super::Budget;
use crate::bus_load;
use crate::process::start_ingest;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub load: String,
    pub achieved_per_sec: Option<f64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub events: Option<u64>,
    pub note: Option<String>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn run(budget: Budget, work: &std::path::Path) -> Vec<Row> {
    let dir = work.join("latency");
    let started = std::fs::create_dir_all(&dir).and_then(|_| start_ingest(&dir, &[]));
    let (_ingest, http, bus) = match started {
        Ok(started) => started,
        Err(e) => return vec![failed("all", &e.to_string())],
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return vec![failed("all", &e.to_string())],
    };
    let seconds = Duration::from_secs(u64::from(budget.seconds));
    let loads = [
        (Some(1_000), "1k req/s offered"),
        (Some(20_000), "20k req/s offered"),
        (None, "max (64 connections, closed loop)"),
    ];
    let watch = Watch::Busd(bus);
    let mut rows = Vec::new();
    for (rate, load) in loads {
        let load_run = Load {
            rate,
            seconds,
            // busd hands an event to its subscribers within a millisecond.
            drain: Duration::from_millis(500),
        };
        let measured = runtime.block_on(measure(http, &watch, Requests::LATENCY, load_run));
        let row = match measured {
            Ok(m) => Row {
                load: load.into(),
                achieved_per_sec: Some(m.answered as f64 / m.seconds),
                p50_us: Some(m.p50_us),
                p99_us: Some(m.p99_us),
                p999_us: Some(m.p999_us),
                events: Some(m.delivered),
                note: (m.accepted < m.answered)
                    .then(|| format!("{} answers were not 2xx", m.answered - m.accepted)),
            },
            Err(e) => failed(load, &e.to_string()),
        };
        rows.push(row);
    }
    rows
}

fn failed(load: &str, note: &str) -> Row {
    Row {
        load: load.into(),
        achieved_per_sec: None,
        p50_us: None,
        p99_us: None,
        p999_us: None,
        events: None,
        note: Some(note.into()),
    }
}

/// Where the measuring subscriber reads: busd's own protocol, raw, so the busd rows measure
/// busd and not a client library; or a JetStream stream through the client library's
/// subscriber (what `busctl watch` runs), since that is the only reader Tracker has there.
#[derive(Debug, Clone)]
pub enum Watch {
    /// busd's (or the embedded busd's) address.
    Busd(SocketAddr),
    /// `nats://` URLs, comma-separated; the stream and subjects are the default layout's.
    Jetstream(String),
}

/// What the load asks ingest to accept: `data_bytes` of data per event, to accounts
/// `1..=accounts` in turn (active ones: ingest seeds every tenth account inactive).
#[derive(Debug, Clone, Copy)]
pub struct Requests {
    pub data_bytes: usize,
    pub accounts: u64,
}

impl Requests {
    /// The end-to-end rows' requests: one account, 64 bytes, as the busd rows publish.
    pub const LATENCY: Requests = Requests {
        data_bytes: 64,
        accounts: 1,
    };
}

/// How hard and how long: `rate` requests per second offered over 32 connections, or
/// `None` for 64 connections back to back; then up to `drain` for the subscriber to receive
/// every event ingest accepted.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rate: Option<u32>,
    pub seconds: Duration,
    pub drain: Duration,
}

/// What one run measured, from both ends: requests answered and accepted (2xx) by ingest,
/// and the events the subscriber received and how late.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The load's length.
    pub seconds: f64,
    /// Responses of any status.
    pub answered: u64,
    /// 2xx responses: events ingest took responsibility for.
    pub accepted: u64,
    /// Distinct events the subscriber received (by event id: one ingest, so ids are unique).
    pub delivered: u64,
    /// Events received again after their first copy.
    pub duplicates: u64,
    /// Gaps the subscriber reported.
    pub gaps: u64,
    /// Events those gaps said were lost (a gap of unknown size counts none).
    pub missed: u64,
    /// How long after the load ended `delivered` reached `accepted`: how far behind the
    /// subscriber was. `None` when it did not within the load's `drain`.
    pub caught_up: Option<Duration>,
    /// What went wrong on the subscriber's side, if anything did (a reconnect, an error).
    pub trouble: Option<String>,
    /// Accepted to received, over the events received, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

/// What the subscriber has seen so far: one lock, taken once per batch of events.
struct Tally {
    histogram: Histogram<u64>,
    ids: HashSet<u64>,
    duplicates: u64,
    gaps: u64,
    missed: u64,
    trouble: Option<String>,
}

impl Tally {
    fn record(&mut self, now: u64, event: &protocol::Event) {
        if self.ids.insert(event.id) {
            self.histogram
                .saturating_record(now.saturating_sub(event.timestamp_us).max(1));
        } else {
            self.duplicates += 1;
        }
    }

    fn trouble(&mut self, what: String) {
        self.trouble.get_or_insert(what);
    }
}

type Shared = Arc<Mutex<Tally>>;

fn lock(tally: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a JetStream subscriber may take to create its consumer before the run fails.
const LIVE_WITHIN: Duration = Duration::from_secs(30);

/// Runs `load` against ingest at `http` with one subscriber on `watch` that records, for
/// every event, now minus the time ingest accepted it. The subscriber is live before the
/// first request, so it must receive every event the run's 2xx answers accepted.
pub async fn measure(
    http: SocketAddr,
    watch: &Watch,
    requests: Requests,
    load: Load,
) -> std::io::Result<Measured> {
    let tally: Shared = Arc::new(Mutex::new(Tally {
        histogram: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .map_err(std::io::Error::other)?,
        ids: HashSet::new(),
        duplicates: 0,
        gaps: 0,
        missed: 0,
        trouble: None,
    }));
    let receiver = match watch {
        Watch::Busd(bus) => {
            let stream = bus_load::connect(*bus, Role::Subscriber, Some(Filter::All)).await?;
            tokio::spawn(record_busd(stream, tally.clone()))
        }
        Watch::Jetstream(urls) => {
            let (live, is_live) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(record_jetstream(urls.clone(), tally.clone(), live));
            let outcome = tokio::time::timeout(LIVE_WITHIN, is_live).await;
            if !matches!(outcome, Ok(Ok(()))) {
                task.abort();
                let why = lock(&tally).trouble.clone();
                return Err(std::io::Error::other(format!(
                    "the watcher was not live within {LIVE_WITHIN:?}: {}",
                    why.unwrap_or_else(|| "no reason given".into())
                )));
            }
            task
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Answers::default());
    let connections: u32 = if load.rate.is_some() { 32 } else { 64 };
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(f64::from(connections) / f64::from(r)));
    let mut clients = Vec::new();
    for i in 0..connections {
        clients.push(tokio::spawn(client(
            http,
            requests,
            u64::from(i),
            interval,
            stop.clone(),
            counts.clone(),
        )));
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(load.seconds).await;
    stop.store(true, Relaxed);
    let secs = started.elapsed().as_secs_f64();
    // Each client finishes the request it has out, so `accepted` is exact once all are in.
    for c in clients {
        let _ = c.await;
    }
    let accepted = counts.accepted.load(Relaxed);
    let ended = tokio::time::Instant::now();
    let caught_up = loop {
        if lock(&tally).ids.len() as u64 >= accepted {
            break Some(ended.elapsed());
        }
        if ended.elapsed() >= load.drain {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    receiver.abort();
    let t = lock(&tally);
    let h = &t.histogram;
    Ok(Measured {
        seconds: secs,
        answered: counts.answered.load(Relaxed),
        accepted,
        delivered: t.ids.len() as u64,
        duplicates: t.duplicates,
        gaps: t.gaps,
        missed: t.missed,
        caught_up,
        trouble: t.trouble.clone(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    })
}

/// Decodes every event from busd and records it.
async fn record_busd(stream: TcpStream, tally: Shared) {
    let mut frames = FramedRead::with_capacity(stream, RawCodec::default(), 1 << 20);
    while let Some(Ok(body)) = frames.next().await {
        match protocol::codec::decode_body(&body) {
            Ok(ServerFrame::Events(events)) => {
                let now = now_us();
                let mut t = lock(&tally);
                for (_, event) in &events {
                    t.record(now, event);
                }
            }
            Ok(ServerFrame::Gap { missed, .. }) => {
                let mut t = lock(&tally);
                t.gaps += 1;
                t.missed += missed;
            }
            _ => {}
        }
    }
    lock(&tally).trouble("busd closed the connection".into());
}

/// Reads every account's events from JetStream with the client library's subscriber, from
/// the stream's end when it subscribes (said on `live`), and records them.
async fn record_jetstream(urls: String, tally: Shared, live: tokio::sync::oneshot::Sender<()>) {
    let mut subscriber = Subscriber::new(Options {
        bus: urls,
        layout: Layout::default(),
        token: None,
        name: "bench-watcher".into(),
        filter: Filter::All,
        max_outage: Some(LIVE_WITHIN),
        resume: None,
        group: None,
        start: protocol::Start::Head,
        origins: Default::default(),
    });
    let mut live = Some(live);
    loop {
        match subscriber.next().await {
            Ok(Delivery::Events { events, .. }) => {
                let now = now_us();
                let mut t = lock(&tally);
                for (_, event) in &events {
                    t.record(now, event);
                }
            }
            Ok(Delivery::Gap(gap)) => {
                let mut t = lock(&tally);
                t.gaps += 1;
                t.missed += gap.missed.unwrap_or(0);
            }
            Ok(Delivery::Notice(Notice::Live { .. })) => {
                if let Some(live) = live.take() {
                    let _ = live.send(());
                }
            }
            Ok(Delivery::Notice(
                notice @ (Notice::Reconnecting(_) | Notice::StreamRecreated { .. }),
            )) => {
                lock(&tally).trouble(format!("watcher: {notice}"));
            }
            Ok(Delivery::Notice(_)) => {}
            Err(err) => {
                lock(&tally).trouble(format!("watcher stopped: {err}"));
                return;
            }
        }
    }
}

/// Responses the load's clients received.
#[derive(Default)]
struct Answers {
    answered: AtomicU64,
    accepted: AtomicU64,
}

/// One keep-alive connection: a request every `interval` (or back to back), each answered
/// before the next. Connection `index` starts at its own account, so the accounts share
/// the load evenly whatever the connection count.
async fn client(
    http: SocketAddr,
    requests: Requests,
    index: u64,
    interval: Option<Duration>,
    stop: Arc<AtomicBool>,
    counts: Arc<Answers>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(http).await?;
    stream.set_nodelay(true)?;
    let data = "d".repeat(requests.data_bytes);
    let accounts = requests.accounts.max(1);
    let targets: Vec<String> = (1..=accounts)
        .map(|account| format!("GET /{account}?data={data} HTTP/1.1\r\nHost: bench\r\n\r\n"))
        .collect();
    let mut turn = index;
    let mut ticks = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut buf = vec![0u8; 4096];
    while !stop.load(Relaxed) {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        let request = &targets[(turn % accounts) as usize];
        turn += 1;
        stream.write_all(request.as_bytes()).await?;
        // ingest's answers are one small segment each: read until the head and body are in.
        let mut have = 0;
        loop {
            let n = stream.read(&mut buf[have..]).await?;
            if n == 0 {
                return Ok(());
            }
            have += n;
            if complete(&buf[..have]) {
                break;
            }
        }
        counts.answered.fetch_add(1, Relaxed);
        if buf.starts_with(b"HTTP/1.1 2") {
            counts.accepted.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + length
}
