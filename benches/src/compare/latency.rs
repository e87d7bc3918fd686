//! End to end: from ingest accepting a request (the event's timestamp) to a subscriber
//! receiving it, at fixed offered rates and at the most a closed loop of 64 connections gets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let mut rows = Vec::new();
    for (rate, load) in loads {
        let mut row = runtime
            .block_on(measure(http, bus, rate, seconds))
            .unwrap_or_else(|e| failed(load, &e.to_string()));
        row.load = load.into();
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

async fn measure(
    http: SocketAddr,
    bus: SocketAddr,
    rate: Option<u32>,
    seconds: Duration,
) -> std::io::Result<Row> {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?,
    ));
    let stream = bus_load::connect(bus, Role::Subscriber, Some(Filter::All)).await?;
    let receiver = tokio::spawn(record_lag(stream, histogram.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let connections = if rate.is_some() { 32 } else { 64 };
    let interval = rate.map(|r| Duration::from_secs_f64(f64::from(connections) / f64::from(r)));
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(tokio::spawn(client(
            http,
            interval,
            stop.clone(),
            sent.clone(),
        )));
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(seconds).await;
    stop.store(true, Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for c in clients {
        let _ = c.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.abort();
    let h = histogram
        .lock()
        .map_err(|_| std::io::Error::other("poisoned"))?;
    Ok(Row {
        load: String::new(),
        achieved_per_sec: Some(sent.load(Relaxed) as f64 / secs),
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        p999_us: Some(h.value_at_quantile(0.999)),
        events: Some(h.len()),
        note: None,
    })
}

/// Decodes every event and records now minus its timestamp.
async fn record_lag(stream: TcpStream, histogram: Arc<Mutex<Histogram<u64>>>) {
    let mut frames = FramedRead::with_capacity(stream, RawCodec::default(), 1 << 20);
    while let Some(Ok(body)) = frames.next().await {
        if let Ok(ServerFrame::Events(events)) = protocol::codec::decode_body(&body) {
            let now = now_us();
            if let Ok(mut h) = histogram.lock() {
                for (_, event) in events {
                    h.saturating_record(now.saturating_sub(event.timestamp_us).max(1));
                }
            }
        }
    }
}

/// One keep-alive connection: a request every `interval` (or back to back), each answered
/// before the next.
async fn client(
    http: SocketAddr,
    interval: Option<Duration>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(http).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /1?data={} HTTP/1.1\r\nHost: bench\r\n\r\n",
        "d".repeat(64)
    );
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
        sent.fetch_add(1, Relaxed);
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
