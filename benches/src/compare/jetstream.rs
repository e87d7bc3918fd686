//! ingest -> NATS JetStream -> one watcher, beside the ceiling of the same servers: for a
//! stream of one replica (one node) and of three (three local nodes), a raw async-nats
//! publisher with asynchronous acknowledgements, then the real ingest binary publishing to
//! the same cluster while one watcher (the client library's subscriber, what `busctl watch`
//! runs) reads every event: 2xx/s at 64 connections back to back, every accepted event
//! counted at the watcher, and end-to-end latency at 5k req/s offered. The servers are the
//! pinned nats-server ([`testkit::nats::server`]); without it the part is skipped, saying so.
//! Every row notes the CPU each process used over it, since they all share the same cores.

use std::future::IntoFuture as _;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use client::jetstream::Layout;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;
use testkit::nats::Cluster;

use super::Budget;
use super::latency::{self, Load, Measured, Requests, Watch};
use crate::process::spawn_ingest;

/// One figure of the JetStream table. `per_sec` is acknowledged messages per second for the
/// raw publisher and 2xx answers per second for ingest, the two things the goal compares.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Copies of the stream (1 or 3), one node each: what the goals match rows on.
    pub replicas: usize,
    /// The stream and the servers it lives on, with their version.
    pub stream: String,
    /// [`RAW`] or [`INGEST`].
    pub client: String,
    /// [`RAW_LOAD`], [`CLOSED_LOOP`] or [`OFFERED`].
    pub load: String,
    pub per_sec: Option<f64>,
    /// Accepted by ingest to received by the watcher; `None` for the raw publisher.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Messages JetStream acknowledged (raw) or events ingest answered 2xx (ingest).
    pub accepted: Option<u64>,
    /// Distinct events the watcher received; must equal `accepted` for ingest's rows.
    pub delivered: Option<u64>,
    /// Events the watcher received more than once; must be 0.
    pub duplicates: Option<u64>,
    pub note: Option<String>,
}

/// The raw publisher's rows.
pub const RAW: &str = "raw async-nats publisher";
/// ingest's rows.
pub const INGEST: &str = "ingest -> JetStream -> 1 watcher";
/// The raw publisher's load.
pub const RAW_LOAD: &str = "async acks, window 4096";
/// ingest's throughput row, the one the goal compares with the raw publisher.
pub const CLOSED_LOOP: &str = "c=64 closed loop";
/// ingest's latency row.
pub const OFFERED: &str = "5k req/s offered";

/// Acknowledgements the raw publisher waits for at once: enough that the round trip to the
/// stream leader never idles it.
const WINDOW: usize = 4096;
/// Bytes of payload per message, the raw publisher's and ingest's events' `data` alike.
pub const PAYLOAD_BYTES: usize = 100;
/// Subjects (and ingest accounts) the load cycles through: accounts 1 to 9 are active in the
/// accounts ingest seeds (every tenth is inactive).
const ACCOUNTS: u64 = 9;
/// How long ingest's events may take to reach the watcher after the load stops, and the raw
/// publisher's last acknowledgements to come, before the row says what is missing.
const DRAIN: Duration = Duration::from_secs(30);
/// ingest's latency row's offered rate.
const RATE: u32 = 5_000;

/// Both stream sizes' rows, or one row per size saying why they could not be measured.
pub fn run(budget: Budget, work: &Path) -> Vec<Row> {
    let Some(program) = testkit::nats::server() else {
        return [1, 3]
            .into_iter()
            .map(|replicas| {
                failed(
                    replicas,
                    &stream_name(replicas, None),
                    "-",
                    &format!(
                        "skipped: nats-server {} not installed (.ci/nats-server installs it)",
                        testkit::nats::VERSION
                    ),
                )
            })
            .collect();
    };
    let version = testkit::nats::version(&program);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return vec![failed(1, "-", "-", &e.to_string())],
    };
    let seconds = Duration::from_secs(u64::from(budget.seconds));
    let mut rows = Vec::new();
    for replicas in [1, 3] {
        let stream = stream_name(replicas, version.as_deref());
        rows.extend(one_size(&runtime, replicas, &stream, seconds, work));
    }
    rows
}

/// `R3: 3 nodes, nats-server 2.15.1`.
fn stream_name(replicas: usize, version: Option<&str>) -> String {
    let nodes = if replicas == 1 { "node" } else { "nodes" };
    let version = version.unwrap_or(testkit::nats::VERSION);
    format!("R{replicas}: {replicas} {nodes}, nats-server {version}")
}

fn failed(replicas: usize, stream: &str, client: &str, note: &str) -> Row {
    Row {
        replicas,
        stream: stream.into(),
        client: client.into(),
        load: "-".into(),
        per_sec: None,
        p50_us: None,
        p99_us: None,
        accepted: None,
        delivered: None,
        duplicates: None,
        note: Some(note.into()),
    }
}

/// The rows of one stream size, each on the same fresh cluster: the raw publisher first (its
/// stream deleted after), then ingest's throughput and latency.
fn one_size(
    runtime: &tokio::runtime::Runtime,
    replicas: usize,
    stream: &str,
    seconds: Duration,
    work: &Path,
) -> Vec<Row> {
    // Cluster::start panics with the servers' logs (shown on stderr) when JetStream is not
    // ready in time: one failed row, not a failed run.
    let cluster = match std::panic::catch_unwind(AssertUnwindSafe(|| Cluster::start(replicas))) {
        Ok(cluster) => cluster,
        Err(_) => {
            return vec![failed(
                replicas,
                stream,
                "-",
                "the nats-server cluster did not start (its logs are on stderr)",
            )];
        }
    };
    let urls = cluster.urls();
    let servers: Vec<u32> = (0..cluster.nodes())
        .flat_map(|i| pids_running(cluster.config(i)))
        .collect();
    let cpu = Cpu(vec![
        ("nats-server", servers.clone()),
        ("harness", vec![std::process::id()]),
    ]);
    let before = cpu.sample();
    let mut raw_row = runtime
        .block_on(raw(&urls, replicas, seconds))
        .unwrap_or_else(|e| failed(replicas, stream, RAW, &e));
    raw_row.stream = stream.into();
    add_note(&mut raw_row, &cpu.since(&before));
    let mut rows = vec![raw_row];
    rows.extend(ingest(
        runtime, &urls, &servers, replicas, stream, seconds, work,
    ));
    // ingest (dropped inside `ingest`) is gone before its servers: it never waits on a
    // dead cluster while shutting down.
    drop(cluster);
    rows
}

/// Publishes 100-byte messages to a stream made like ingest's for `seconds`, keeping
/// [`WINDOW`] acknowledgements outstanding, and counts those that come back in time.
async fn raw(urls: &str, replicas: usize, seconds: Duration) -> Result<Row, String> {
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new()
        .name("bench-raw-publisher")
        .connect(servers)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(WINDOW)
        .build(client);
    let layout = Layout {
        stream: "BENCH_RAW".into(),
        prefix: "raw.events".into(),
        replicas,
        ..Layout::default()
    };
    js.create_stream(client::jetstream::stream::config(&layout))
        .await
        .map_err(|e| format!("creating stream {}: {e}", layout.stream))?;
    let payload = Bytes::from(vec![b'r'; PAYLOAD_BYTES]);
    let subjects: Vec<String> = (1..=ACCOUNTS).map(|a| layout.subject(a)).collect();
    let mut acks = FuturesOrdered::new();
    let (mut sent, mut acked, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let started = Instant::now();
    let deadline = started + seconds;
    while Instant::now() < deadline {
        while acks.len() < WINDOW {
            let publish = PublishMessage::build()
                .message_id(format!("raw:{sent}"))
                .payload(payload.clone());
            let subject = subjects[(sent % ACCOUNTS) as usize].clone();
            let ack = js
                .send_publish(subject, publish)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            acks.push_back(ack.into_future());
            sent += 1;
        }
        match acks.next().await {
            Some(Ok(_)) => acked += 1,
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            None => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The ones still out are awaited (not counted in the rate) so errors among them show.
    let outstanding = acks.len();
    let late = tokio::time::timeout(DRAIN, async {
        while let Some(ack) = acks.next().await {
            if let Err(e) = ack {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    })
    .await;
    let _ = js.delete_stream(&layout.stream).await;
    let mut note =
        format!("{PAYLOAD_BYTES}-byte payloads with Nats-Msg-Id, subjects raw.events.1-{ACCOUNTS}");
    if late.is_err() {
        note += &format!(
            "; of the {outstanding} acks out at the end, not all came back within {DRAIN:?}"
        );
    }
    if errors > 0 {
        note += &format!(
            "; {errors} publishes failed (first: {})",
            first_error.unwrap_or_default()
        );
    }
    Ok(Row {
        replicas,
        stream: String::new(),
        client: RAW.into(),
        load: RAW_LOAD.into(),
        per_sec: Some(acked as f64 / elapsed),
        p50_us: None,
        p99_us: None,
        accepted: Some(acked),
        delivered: None,
        duplicates: None,
        note: Some(note),
    })
}

/// ingest's two rows: the real binary publishing to the cluster (creating stream `TRACKER`
/// with `replicas` copies), loaded by 64 connections back to back and then at 5k req/s,
/// each run with a fresh watcher that must receive every event the run's 2xx answers accepted.
fn ingest(
    runtime: &tokio::runtime::Runtime,
    urls: &str,
    servers: &[u32],
    replicas: usize,
    stream: &str,
    seconds: Duration,
    work: &Path,
) -> Vec<Row> {
    let dir = work.join(format!("jetstream-r{replicas}"));
    let replicas_arg = replicas.to_string();
    let started = std::fs::create_dir_all(&dir).and_then(|_| {
        spawn_ingest(
            &dir,
            Some(urls),
            &["--replicas", &replicas_arg, "--stream", "TRACKER"],
        )
    });
    let ingest = match started {
        Ok(ingest) => ingest,
        Err(e) => return vec![failed(replicas, stream, INGEST, &format!("ingest: {e}"))],
    };
    let watch = Watch::Jetstream(urls.to_owned());
    let requests = Requests {
        data_bytes: PAYLOAD_BYTES,
        accounts: ACCOUNTS,
    };
    let cpu = Cpu(vec![
        ("ingest", vec![ingest.process.0.id()]),
        ("nats-server", servers.to_vec()),
        ("harness", vec![std::process::id()]),
    ]);
    let mut rows = Vec::new();
    for (rate, load) in [(None, CLOSED_LOOP), (Some(RATE), OFFERED)] {
        let run = Load {
            rate,
            seconds,
            drain: DRAIN,
        };
        let before = cpu.sample();
        let measured = runtime.block_on(latency::measure(ingest.http, &watch, requests, run));
        let mut row = match measured {
            Ok(m) => row(replicas, load, &m),
            Err(e) => failed(replicas, stream, INGEST, &e.to_string()),
        };
        row.stream = stream.into();
        row.load = load.into();
        add_note(&mut row, &cpu.since(&before));
        rows.push(row);
    }
    let warnings = ingest
        .warnings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let (Some(first), Some(last)) = (warnings.first(), rows.last_mut()) {
        add_note(
            last,
            &format!(
                "ingest logged {} warnings or errors during these runs, the first: {}",
                warnings.len(),
                first.trim()
            ),
        );
    }
    rows
}

/// Appends `more` to the row's note.
fn add_note(row: &mut Row, more: &str) {
    match &mut row.note {
        Some(note) if !note.is_empty() => *note += &format!("; {more}"),
        note => *note = Some(more.to_owned()),
    }
}

/// Groups of processes whose CPU time the rows report: on a machine whose cores ingest, the
/// servers and the harness (its HTTP clients, the raw publisher, the watcher) all share,
/// it shows which of them bounded a figure.
struct Cpu(Vec<(&'static str, Vec<u32>)>);

impl Cpu {
    /// Now, and each group's CPU seconds so far.
    fn sample(&self) -> (Instant, Vec<f64>) {
        let used = self
            .0
            .iter()
            .map(|(_, pids)| pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum())
            .collect();
        (Instant::now(), used)
    }

    /// Each group's CPU since `before`, in cores: `CPU in cores: ingest 0.93, ...`.
    fn since(&self, before: &(Instant, Vec<f64>)) -> String {
        let (at, used_before) = before;
        let wall = at.elapsed().as_secs_f64().max(1e-3);
        let (_, used_now) = self.sample();
        let groups = self
            .0
            .iter()
            .zip(used_now.iter().zip(used_before))
            .map(|((name, _), (now, then))| format!("{name} {:.2}", (now - then) / wall))
            .collect::<Vec<_>>()
            .join(", ");
        format!("CPU in cores over the run and its drain: {groups}")
    }
}

/// The CPU time (user and system) process `pid` has used, from `/proc/<pid>/stat`; `None`
/// once it is gone.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, the unit of these fields, is 100 on every Linux architecture's ABI.
    Some(ticks as f64 / 100.0)
}

/// The processes whose command line names `path`: a cluster node's nats-server, found by
/// its config file, since the cluster does not hand out its processes' ids.
fn pids_running(path: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt as _;
    let needle = path.as_os_str().as_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// A measured ingest row: 2xx/s, latency, and whether the watcher received every accepted
/// event exactly once, said in words.
fn row(replicas: usize, load: &str, m: &Measured) -> Row {
    let mut note = if m.delivered == m.accepted && m.duplicates == 0 {
        "delivered = accepted".to_owned()
    } else if m.delivered < m.accepted {
        format!(
            "**{} accepted events not delivered** within {DRAIN:?}",
            m.accepted - m.delivered
        )
    } else {
        format!(
            "**{} events delivered that no 2xx answer accepted**",
            m.delivered.saturating_sub(m.accepted)
        )
    };
    if m.duplicates > 0 {
        note += &format!("; **{} delivered twice**", m.duplicates);
    }
    if m.gaps > 0 {
        note += &format!("; {} gaps reported ({} events)", m.gaps, m.missed);
    }
    match m.caught_up {
        Some(after) if after >= Duration::from_millis(100) => {
            note += &format!(
                "; the watcher had them all {:.1} s after the load",
                after.as_secs_f64()
            );
        }
        _ => {}
    }
    if m.answered > m.accepted {
        note += &format!("; {} answers were not 2xx", m.answered - m.accepted);
    }
    if let Some(trouble) = &m.trouble {
        note += &format!("; {trouble}");
    }
    if load == OFFERED {
        note += &format!("; achieved {:.0} req/s", m.answered as f64 / m.seconds);
    }
    Row {
        replicas,
        stream: String::new(),
        client: INGEST.into(),
        load: load.into(),
        per_sec: Some(m.accepted as f64 / m.seconds),
        p50_us: Some(m.p50_us),
        p99_us: Some(m.p99_us),
        accepted: Some(m.accepted),
        delivered: Some(m.delivered),
        duplicates: Some(m.duplicates),
        note: Some(note),
    }
}
