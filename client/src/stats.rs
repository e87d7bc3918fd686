//! `busctl stats`: busd's counters as a table or JSON, with rates from two samples; on a
//! JetStream bus, the stream's state, its leader and how far each replica is behind.

use std::fmt::Write as _;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, Role, ServerFrame, Stats};
use serde::Serialize;

use crate::bus::Address;
use crate::cli::{Format, StatsArgs, exit};
use crate::jetstream::{self, JetstreamError, stream::Summary};
use crate::session::{self, Conn, SessionError};
use crate::status;

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    stats: Stats,
    published_per_sec: Option<f64>,
    delivered_per_sec: Option<f64>,
}

/// Runs `busctl stats`; returns the exit code.
pub async fn run(args: StatsArgs) -> i32 {
    match Address::parse(&args.bus.bus) {
        Ok(Address::Jetstream(servers)) => {
            print(summary(&args, &servers).await, args.format, stream_table)
        }
        _ => print(report(&args).await, args.format, table),
    }
}

/// Prints what was read in `format`; the exit code.
fn print<T: Serialize, E: std::fmt::Display>(
    read: Result<T, E>,
    format: Format,
    table: fn(&T) -> String,
) -> i32 {
    match read {
        Ok(read) => {
            match format {
                Format::Json => println!("{}", serde_json::to_string(&read).unwrap_or_default()),
                Format::Text => print!("{}", table(&read)),
            }
            exit::OK
        }
        Err(err) => {
            status!("{err}");
            exit::ERROR
        }
    }
}

async fn report(args: &StatsArgs) -> Result<Report, SessionError> {
    let name = format!("busctl-stats-{}", std::process::id());
    let (mut conn, _) = session::open(
        &args.bus.bus,
        Role::Subscriber,
        &name,
        args.bus.token.as_deref(),
    )
    .await?;
    let first = request(&mut conn).await?;
    if args.sample.is_zero() {
        return Ok(Report {
            stats: first,
            published_per_sec: None,
            delivered_per_sec: None,
        });
    }
    let started = tokio::time::Instant::now();
    tokio::time::sleep(args.sample).await;
    let second = request(&mut conn).await?;
    let secs = started.elapsed().as_secs_f64();
    let rate = |a: u64, b: u64| Some(b.saturating_sub(a) as f64 / secs);
    Ok(Report {
        published_per_sec: rate(first.published, second.published),
        delivered_per_sec: rate(first.delivered, second.delivered),
        stats: second,
    })
}

async fn request(conn: &mut Conn) -> Result<Stats, SessionError> {
    conn.send(ClientFrame::StatsRequest)
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.next()).await {
            Ok(Some(Ok(ServerFrame::Stats(stats)))) => return Ok(stats),
            Ok(Some(Ok(ServerFrame::Error { code, message }))) => {
                return Err(SessionError::Refused { code, message });
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(SessionError::Lost(e.to_string())),
            Ok(None) => return Err(SessionError::Lost("busd closed the connection".into())),
            Err(_) => return Err(SessionError::Lost("no Stats from busd in time".into())),
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
    out
}
