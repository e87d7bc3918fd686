//! `busctl stats`: busd's counters as a table or JSON, with rates from two samples; on a
//! JetStream bus, the stream's state, its leader and how far each replica is behind.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{
    ClientFrame, ErrorCode, OLDEST_VERSION, PROTOCOL_VERSION, PublisherStats, Role, ServerFrame,
    Stats,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::bus::Address;
use crate::cli::{Format, StatsArgs, exit};
use crate::jetstream::{self, JetstreamError, stream::Summary};
use crate::output::{CLEAR, View};
use crate::session::{self, Conn, SessionError};
use crate::status;

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    stats: Stats,
    published_per_sec: Option<f64>,
    delivered_per_sec: Option<f64>,
    /// Per publisher name (the origin of its events); `null` from a busd of protocol 2.
    publishers: Option<Vec<PublisherReport>>,
}

#[derive(Debug, Serialize)]
struct PublisherReport {
    #[serde(flatten)]
    stats: PublisherStats,
    events_per_sec: Option<f64>,
}

/// busd's figures at one moment.
struct Sample {
    at: Instant,
    stats: Stats,
    publishers: Option<Vec<PublisherStats>>,
}

/// Runs `busctl stats`; returns the exit code.
pub async fn run(args: StatsArgs) -> i32 {
    let jetstream = match Address::parse(&args.bus.bus) {
        Ok(Address::Jetstream(servers)) => Some(servers),
        _ => None,
    };
    match (args.watch, jetstream) {
        (Some(every), Some(servers)) => {
            let view = View::for_stdout(args.format);
            watch(every, || summary(&args, &servers), view, stream_table).await
        }
        (Some(every), None) => watch_busd(&args, every).await,
        (None, Some(servers)) => once(summary(&args, &servers).await, &args, stream_table),
        (None, None) => once(report(&args).await, &args, table),
    }
}

/// Prints what was read once, in `--format` (a table by default); the exit code.
fn once<T: Serialize, E: std::fmt::Display>(
    read: Result<T, E>,
    args: &StatsArgs,
    table: fn(&T) -> String,
) -> i32 {
    match read {
        Ok(read) => {
            let view = match args.format.unwrap_or(Format::Text) {
                Format::Json => View::Json,
                Format::Text => View::Table,
            };
            show(&read, view, table);
            exit::OK
        }
        Err(err) => {
            status!("{err}");
            exit::ERROR
        }
    }
}

/// Prints one refresh as `view` says.
fn show<T: Serialize>(read: &T, view: View, table: fn(&T) -> String) {
    let mut out = std::io::stdout().lock();
    let _ = match view {
        View::Json => writeln!(out, "{}", serde_json::to_string(read).unwrap_or_default()),
        View::Table => write!(out, "{}", table(read)),
        View::Redrawn => out
            .write_all(CLEAR)
            .and_then(|()| write!(out, "{}", table(read))),
    };
    let _ = out.flush();
}

/// `--watch` on JetStream: the stream's summary every `every`, until Ctrl-C.
async fn watch<T: Serialize, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    every: Duration,
    read: impl Fn() -> F,
    view: View,
    table: fn(&T) -> String,
) -> i32 {
    let refreshes = async {
        loop {
            match read().await {
                Ok(read) => show(&read, view, table),
                Err(err) => status!(
                    "{err}; trying again in {}",
                    humantime::format_duration(every)
                ),
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        () = refreshes => exit::OK,
        _ = plumbing::signal::interrupted() => exit::OK,
    }
}

/// `--watch` on busd: one connection kept (made again when lost), a sample every `every`,
/// rates over each interval, until Ctrl-C.
async fn watch_busd(args: &StatsArgs, every: Duration) -> i32 {
    let view = View::for_stdout(args.format);
    let refreshes = async {
        let mut conn = None;
        let mut previous: Option<Sample> = None;
        loop {
            if conn.is_none() {
                match open(args).await {
                    Ok(opened) => conn = Some(opened),
                    Err(err) if err.is_fatal() => return Err(err),
                    Err(err) => status!(
                        "{err}; trying again in {}",
                        humantime::format_duration(every)
                    ),
                }
            }
            if let Some((c, publishers)) = conn.as_mut() {
                match sample(c, *publishers).await {
                    Ok(now) => {
                        show(&rates(previous.as_ref(), &now), view, table);
                        previous = Some(now);
                    }
                    Err(err) => {
                        status!(
                            "{err}; trying again in {}",
                            humantime::format_duration(every)
                        );
                        conn = None;
                        previous = None;
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        done = refreshes => match done {
            Ok(()) => exit::OK,
            Err(err) => {
                status!("{err}");
                exit::ERROR
            }
        },
        _ = plumbing::signal::interrupted() => exit::OK,
    }
}

/// Connects for stats: as a protocol 3 client, to ask for publishers too, or as a
/// protocol 2 client to a busd that speaks only that (no publishers then).
async fn open(args: &StatsArgs) -> Result<(Conn, bool), SessionError> {
    let name = format!("busctl-stats-{}", std::process::id());
    let token = args.bus.token.as_deref();
    let timeout = session::HANDSHAKE_TIMEOUT;
    let bus = &args.bus.bus;
    let role = Role::Subscriber;
    match session::open_speaking(bus, role, &name, token, timeout, PROTOCOL_VERSION).await {
        Ok((conn, _)) => Ok((conn, true)),
        Err(SessionError::Refused {
            code: ErrorCode::VersionMismatch,
            ..
        }) => {
            let (conn, _) =
                session::open_speaking(bus, role, &name, token, timeout, OLDEST_VERSION).await?;
            Ok((conn, false))
        }
        Err(err) => Err(err),
    }
}

async fn report(args: &StatsArgs) -> Result<Report, SessionError> {
    let (mut conn, publishers) = open(args).await?;
    let first = sample(&mut conn, publishers).await?;
    if args.sample.is_zero() {
        return Ok(rates(None, &first));
    }
    tokio::time::sleep(args.sample).await;
    let second = sample(&mut conn, publishers).await?;
    Ok(rates(Some(&first), &second))
}

/// `now`, with rates since `before` when there is one.
fn rates(before: Option<&Sample>, now: &Sample) -> Report {
    let secs = before.map(|b| now.at.duration_since(b.at).as_secs_f64());
    let rate = |a: u64, b: u64| {
        secs.filter(|s| *s > 0.0)
            .map(|s| b.saturating_sub(a) as f64 / s)
    };
    let publishers = now.publishers.as_ref().map(|list| {
        list.iter()
            .map(|p| {
                let earlier = before
                    .and_then(|b| b.publishers.as_ref())
                    .and_then(|l| l.iter().find(|e| e.name == p.name))
                    .map_or(0, |e| e.events);
                PublisherReport {
                    events_per_sec: rate(earlier, p.events),
                    stats: p.clone(),
                }
            })
            .collect()
    });
    Report {
        published_per_sec: before.and_then(|b| rate(b.stats.published, now.stats.published)),
        delivered_per_sec: before.and_then(|b| rate(b.stats.delivered, now.stats.delivered)),
        stats: now.stats.clone(),
        publishers,
    }
}

/// Reads busd's figures now (and its publishers', when `publishers`).
async fn sample(conn: &mut Conn, publishers: bool) -> Result<Sample, SessionError> {
    let at = Instant::now();
    let stats = request(conn, ClientFrame::StatsRequest, |frame| match frame {
        ServerFrame::Stats(stats) => Some(stats),
        _ => None,
    })
    .await?;
    let publishers = if publishers {
        let frame = ClientFrame::PublisherStatsRequest;
        Some(
            request(conn, frame, |frame| match frame {
                ServerFrame::PublisherStats(list) => Some(list),
                _ => None,
            })
            .await?,
        )
    } else {
        None
    };
    Ok(Sample {
        at,
        stats,
        publishers,
    })
}

/// Sends `ask` and waits for the answer `answer` picks out.
async fn request<T>(
    conn: &mut Conn,
    ask: ClientFrame,
    answer: impl Fn(ServerFrame) -> Option<T>,
) -> Result<T, SessionError> {
    conn.send(ask)
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.next()).await {
            Ok(Some(Ok(ServerFrame::Error { code, message }))) => {
                return Err(SessionError::Refused { code, message });
            }
            Ok(Some(Ok(frame))) => {
                if let Some(found) = answer(frame) {
                    return Ok(found);
                }
            }
            Ok(Some(Err(e))) => return Err(SessionError::Lost(e.to_string())),
            Ok(None) => return Err(SessionError::Lost("busd closed the connection".into())),
            Err(_) => return Err(SessionError::Lost("no answer from busd in time".into())),
        }
    }
}

async fn summary(args: &StatsArgs, servers: &[String]) -> Result<Summary, JetstreamError> {
    let name = format!("busctl-stats-{}", std::process::id());
    let token = args.bus.token.as_deref();
    let conn = jetstream::connect(servers, &name, token, Duration::from_secs(5)).await?;
    jetstream::stream::summary(&conn.js, &args.bus.layout()).await
}

fn stream_table(s: &Summary) -> String {
    let mut out = format!(
        "stream {}  epoch {}  replicas {}  leader {}
messages {}  bytes {}  first seq {}  last seq {}  consumers {}
",
        s.stream,
        s.epoch,
        s.replicas,
        s.leader.as_deref().unwrap_or("none"),
        s.messages,
        bytesize::ByteSize::b(s.bytes),
        s.first_seq,
        s.last_seq,
        s.consumers,
    );
    if !s.followers.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24}  {:>8}  {:>8}  {:>10}  {:>10}",
            "REPLICA", "CURRENT", "OFFLINE", "LAG", "ACTIVE"
        );
    }
    for f in &s.followers {
        let lag = f.lag.map_or("?".to_owned(), |l| l.to_string());
        let _ = writeln!(
            out,
            "{:<24}  {:>8}  {:>8}  {:>10}  {:>8}ms",
            f.name, f.current, f.offline, lag, f.active_ms
        );
    }
    out
}

fn table(report: &Report) -> String {
    let s = &report.stats;
    let rate = |r: Option<f64>| r.map_or(String::new(), |r| format!(" ({r:.1}/s)"));
    let mut out = format!(
        "epoch {}  head seq {}  ring {} events ({})\nconnections {}  publishers {}  subscribers {}\npublished {}{}  delivered {}{}  dropped {}  duplicate batches {}\n\n",
        s.epoch,
        s.head_seq,
        s.ring_events,
        bytesize::ByteSize::b(s.ring_bytes),
        s.connections,
        s.publishers,
        s.subscribers.len(),
        s.published,
        rate(report.published_per_sec),
        s.delivered,
        rate(report.delivered_per_sec),
        s.dropped,
        s.duplicate_batches,
    );
    let _ = writeln!(
        out,
        "{:>6}  {:<28}  {:>9}  {:>8}  {:>12}  {:>10}",
        "ID", "NAME", "ACCOUNTS", "QUEUE", "DELIVERED", "DROPPED"
    );
    for sub in &s.subscribers {
        let accounts = sub.accounts.map_or("all".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:>6}  {:<28}  {:>9}  {:>8}  {:>12}  {:>10}",
            sub.id, sub.name, accounts, sub.queue_depth, sub.delivered, sub.dropped
        );
    }
    if let Some(publishers) = &report.publishers {
        let _ = writeln!(
            out,
            "\n{:<28}  {:>9}  {:>10}  {:>12}  {:>10}  {:>10}",
            "PUBLISHER (ORIGIN)", "CONNECTED", "BATCHES", "EVENTS", "EVENTS/S", "DUPLICATES"
        );
        for p in publishers {
            let rate = p
                .events_per_sec
                .map_or(String::new(), |r| format!("{r:.1}"));
            let s = &p.stats;
            let connected = if s.connected { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "{:<28}  {:>9}  {:>10}  {:>12}  {:>10}  {:>10}",
                s.name, connected, s.batches, s.events, rate, s.duplicate_batches
            );
        }
    }
    out
}
