//! busctl and ingest over NATS JetStream, against real nats-servers on loopback: filters,
//! a server too old to filter, retention gaps, server restarts, a stream made again, exit
//! codes, refusals, an existing stream, stats, publish and doctor.
//!
//! Every test skips (with a message) when the pinned nats-server is not installed
//! (`.ci/nats-server` installs it); the test of the old server also needs Debian's.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use client::jetstream::Layout;
use client::jetstream::stream::Summary;
use serde_json::Value;
use tempfile::TempDir;
use testkit::nats::Cluster;
use testkit::{Proc, binary, free_port};

#[macro_use]
mod support;
use support::{WAIT, assert_a_frozen_server_is_noticed, busctl, busctl_command, json, watch};

/// Where Debian's nats-server package puts the program (2.9.10 on bookworm).
const DEBIAN_NATS: &str = "/usr/sbin/nats-server";

/// Every stdout line `proc` prints until it closes stdout (it exited).
fn rest_of_stdout(proc: &Proc) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match proc.stdout.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => return lines,
            Err(RecvTimeoutError::Timeout) => panic!("stdout still open after {WAIT:?}"),
        }
    }
}

/// The next stdout line of `proc` within `within`, or `None`.
fn next_line(proc: &Proc, within: Duration) -> Option<String> {
    proc.stdout.recv_timeout(within).ok()
}

/// Waits until `proc` has said `needle` on stderr, whether or not a wait has read that line
/// already, and returns the line.
fn wait_log(proc: &Proc, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = proc.stderr_log();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "never said {needle:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running ingest publishing to JetStream, in a directory of its own (so its accounts
/// database is created and seeded: accounts 1..=1000, every tenth inactive).
struct Ingest {
    proc: Proc,
    http: SocketAddr,
    _dir: TempDir,
}

/// `ingest --bus <bus>` with `extra` flags, on a free port, in `dir`; not waited for.
fn ingest_command(dir: &Path, bus: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(binary("ingest", "ingest"));
    command
        .current_dir(dir)
        .args(["--listen", "127.0.0.1:0", "--bus", bus])
        .args(extra)
        .env_remove("RUST_LOG");
    for variable in ["TRACKER_BUS", "TRACKER_STREAM", "TRACKER_SUBJECT_PREFIX"] {
        command.env_remove(variable);
    }
    command
}

impl Ingest {
    /// Starts ingest on `bus` and waits until it listens and `/readyz` says the bus is up.
    async fn start(bus: &str, extra: &[&str]) -> Ingest {
        let ingest = Ingest::start_unready(bus, extra);
        ingest.wait_ready().await;
        ingest
    }

    /// Starts ingest on `bus` and waits until it listens.
    fn start_unready(bus: &str, extra: &[&str]) -> Ingest {
        let dir = tempfile::tempdir().expect("a temp dir");
        let proc = Proc::spawn("ingest", &mut ingest_command(dir.path(), bus, extra));
        let http = proc.listening_addr();
        Ingest {
            proc,
            http,
            _dir: dir,
        }
    }

    async fn readyz(&self) -> u16 {
        testkit::http::get(self.http, "/readyz").await.status
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.readyz().await != 200 {
            assert!(
                Instant::now() < deadline,
                "ingest not ready within {WAIT:?}:\n{}",
                self.proc.stderr_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `events` (account, data) in order on one keep-alive connection; each must be
    /// accepted (202).
    async fn send(&self, events: &[(u64, String)]) {
        send_to(self.http, events).await;
    }
}

/// Sends `events` (account, data) to the ingest at `http` in order on one keep-alive
/// connection; each must be accepted (202).
async fn send_to(http: SocketAddr, events: &[(u64, String)]) {
    let mut client = testkit::http::Client::connect(http).await;
    for (account, data) in events {
        let reply = client.get(&format!("/{account}?data={data}")).await;
        assert_eq!(reply.status, 202, "/{account}?data={data}: {}", reply.body);
    }
}

/// The client library's view of the default stream on `bus`, as `busctl stats` reads it.
async fn summary(bus: &str) -> Summary {
    let servers: Vec<String> = bus.split(',').map(str::to_owned).collect();
    let conn = client::jetstream::connect(&servers, "tests", None, Duration::from_secs(5))
        .await
        .expect("connect to NATS");
    client::jetstream::stream::summary(&conn.js, &Layout::default())
        .await
        .expect("the stream's summary")
}

/// Waits until the stream on `bus` holds sequence `last_seq`, and returns its summary.
async fn wait_last_seq(bus: &str, last_seq: u64) -> Summary {
    let deadline = Instant::now() + WAIT;
    loop {
        let summary = summary(bus).await;
        if summary.last_seq >= last_seq {
            return summary;
        }
        assert!(
            Instant::now() < deadline,
            "the stream reached seq {} of {last_seq}",
            summary.last_seq
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `watcher`'s JSON lines, which follow seq `after`, until it has accounted for every
/// seq up to `last_seq`: each one printed (with the data `data_at(seq)`) or inside a gap line,
/// in order, so nothing is skipped silently and nothing is printed twice. A gap may only cover
/// seqs below `first_held`, what the stream no longer holds. Returns the number of gaps.
fn read_through(
    watcher: &Proc,
    after: u64,
    last_seq: u64,
    first_held: u64,
    data_at: impl Fn(u64) -> String,
) -> u64 {
    let mut at = after;
    let mut gaps = 0;
    while at < last_seq {
        let line = next_line(watcher, WAIT).unwrap_or_else(|| {
            panic!(
                "stopped at seq {at} of {last_seq}\n{}",
                watcher.stderr_log()
            )
        });
        let item = json(&line);
        if let Some(gap) = item.get("gap") {
            let from = gap["from_seq"].as_u64().expect("from_seq");
            let to = gap["to_seq"].as_u64().expect("an eviction has a known end");
            assert_eq!(
                from,
                at + 1,
                "the gap starts where the events stopped: {line}"
            );
            assert!(to >= from, "{line}");
            assert_eq!(gap["missed"].as_u64(), Some(to - from + 1), "{line}");
            assert!(
                to < first_held,
                "only what the stream no longer holds is a gap (first seq {first_held}): {line}"
            );
            at = to;
            gaps += 1;
        } else {
            let seq = item["seq"].as_u64().expect("seq");
            assert_eq!(seq, at + 1, "no silent jump: {line}");
            assert_eq!(item["data"], data_at(seq), "the event at its seq: {line}");
            at = seq;
        }
    }
    gaps
}

/// A nats-server on `port` without JetStream (no `-js`).
fn plain_nats(program: &Path, port: u16) -> Proc {
    let proc = Proc::spawn(
        "nats (no JetStream)",
        Command::new(program).args(["-a", "127.0.0.1", "-p", &port.to_string()]),
    );
    wait_port(port);
    proc
}

/// A single JetStream nats-server on `port` with its store in `store`.
fn jetstream_nats(program: &Path, port: u16, store: &Path) -> Proc {
    let proc = Proc::spawn(
        "nats",
        Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store),
    );
    wait_port(port);
    proc
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(account, data)` pairs whose data names the event: `<prefix>-<i>`.
fn numbered(prefix: &str, accounts: impl Fn(usize) -> u64, count: usize) -> Vec<(u64, String)> {
    (0..count)
        .map(|i| (accounts(i), format!("{prefix}-{i}")))
        .collect()
}

#[tokio::test]
async fn a_multi_account_watch_never_shows_another_account() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    // One watcher asks the server to filter on the two subjects; the other, allowed a
    // single filter subject, reads every account's subject and filters by itself.
    let served = watch(&bus, &["--accounts", "1,5"]);
    let local = watch(&bus, &["--accounts", "1,5", "--max-filter-subjects", "1"]);
    let accounts = [1, 2, 5, 7];
    let events = numbered("ev", |i| accounts[(i * 3 + i / 5) % 4], 400);
    ingest.send(&events).await;
    // Sent last: once it is printed, everything before it has been.
    ingest.send(&[(5, "last".to_owned())]).await;
    let wanted: Vec<&(u64, String)> = events.iter().filter(|(a, _)| [1, 5].contains(a)).collect();
    assert!(wanted.len() > 150, "enough of both accounts");
    for (name, watcher) in [("server-filtered", &served), ("self-filtered", &local)] {
        let lines = watcher.stdout_lines(wanted.len() + 1, WAIT);
        let printed: Vec<Value> = lines.iter().map(|l| json(l)).collect();
        let got: Vec<(u64, String)> = printed
            .iter()
            .map(|e| {
                let account = e["account_id"].as_u64().unwrap_or_else(|| panic!("{e}"));
                (account, e["data"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        let mut expected: Vec<(u64, String)> = wanted.iter().map(|&e| e.clone()).collect();
        expected.push((5, "last".to_owned()));
        assert_eq!(
            got, expected,
            "{name}: exactly accounts 1 and 5, in order, once"
        );
        let seqs: Vec<u64> = printed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: {seqs:?}");
        assert!(
            printed.iter().all(|e| e.get("gap").is_none()),
            "{name}: no gap"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(watcher.stdout.try_recv().is_err(), "{name}: nothing else");
    }
}

#[tokio::test]
async fn a_server_too_old_to_filter_is_refused() {
    nats_or_skip!();
    let debian = Path::new(DEBIAN_NATS);
    if !debian.is_file() {
        eprintln!("skipped: {DEBIAN_NATS} is not installed (Debian's nats-server package)");
        return;
    }
    let version = testkit::nats::version(debian).unwrap_or_default();
    if client::jetstream::filters_many_subjects(&version) {
        eprintln!("skipped: {DEBIAN_NATS} is {version}, which filters on several subjects");
        return;
    }
    let cluster = Cluster::start_with(debian, 1);
    let bus = cluster.urls();
    // ingest creates the stream on the old server too.
    let ingest = Ingest::start(&bus, &[]).await;

    let mut refused = busctl(&["watch", "--bus", &bus, "--accounts", "1,5"]);
    let code = refused.wait_exit(WAIT).code();
    let log = refused.stderr_log();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("nats-server {version}")) && log.contains("2.10"),
        "the message names the version and the one needed: {log}"
    );

    // One subject is one filter: that works there; so does filtering in busctl.
    let mut single = watch(&bus, &["--accounts", "5", "--count", "3"]);
    let mut local = watch(
        &bus,
        &[
            "--accounts",
            "1,5",
            "--max-filter-subjects",
            "1",
            "--count",
            "4",
        ],
    );
    let events: Vec<(u64, String)> = [7, 5, 2, 1, 5, 7, 5]
        .iter()
        .enumerate()
        .map(|(i, &a)| (a, format!("old-{i}")))
        .collect();
    ingest.send(&events).await;
    assert!(single.wait_exit(WAIT).success());
    let data = |proc: &Proc| -> Vec<String> {
        rest_of_stdout(proc)
            .iter()
            .map(|l| json(l)["data"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(data(&single), ["old-1", "old-4", "old-6"]);
    assert!(local.wait_exit(WAIT).success());
    assert_eq!(data(&local), ["old-1", "old-3", "old-4", "old-6"]);
    // The last N of one account are counted by probe consumers there too.
    let last = watch_history(&bus, &["--accounts", "5", "--last", "2"], 2);
    assert_eq!(data_of(&last), ["old-4", "old-6"]);
}

#[tokio::test]
async fn retention_eviction_is_a_gap_line() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &["--retain-bytes", "64KiB"]).await;
    let watcher = watch(&bus, &[]);
    let mut quitter = watch(&bus, &["--exit-on-gap"]);
    let first = numbered("e", |i| 1 + (i % 7) as u64, 10);
    ingest.send(&first).await;
    for proc in [&watcher, &quitter] {
        let lines = proc.stdout_lines(10, WAIT);
        assert_eq!(json(&lines[9])["data"], "e-9");
        assert_eq!(json(&lines[9])["seq"], 10);
    }

    // Both fall asleep; the stream meanwhile takes many times its byte budget, so it drops
    // what they had not read yet.
    watcher.signal("STOP");
    quitter.signal("STOP");
    let more = numbered("f", |i| 1 + (i % 7) as u64, 4000);
    ingest.send(&more).await;
    let last_seq = 10 + more.len() as u64;
    let stream = wait_last_seq(&bus, last_seq).await;
    assert!(
        stream.first_seq > 11 + 1000,
        "evicted more than one pull could have delivered: {stream:?}"
    );
    watcher.signal("CONT");
    quitter.signal("CONT");

    assert_eq!(
        quitter.wait_exit(WAIT).code(),
        Some(3),
        "--exit-on-gap: {}",
        quitter.stderr_log()
    );
    // It printed what it had read before the eviction, in order, then the gap, and stopped.
    let printed: Vec<Value> = rest_of_stdout(&quitter).iter().map(|l| json(l)).collect();
    let (gap, events) = printed.split_last().expect("the gap line");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (11..11 + seqs.len() as u64).collect::<Vec<u64>>());
    assert_eq!(gap["gap"]["from_seq"], 11 + seqs.len() as u64, "{gap}");
    assert!(
        gap["gap"]["to_seq"]
            .as_u64()
            .is_some_and(|to| to < stream.first_seq),
        "{gap}"
    );

    let gaps = read_through(&watcher, 10, last_seq, stream.first_seq, |seq| {
        format!("f-{}", seq - 11)
    });
    assert!(gaps >= 1, "the eviction was reported");
    watcher.signal("INT");
    let summary_line = watcher.wait_stderr("events,", WAIT);
    assert!(
        summary_line.contains(&format!("{gaps} gaps")),
        "{summary_line}"
    );
}

#[tokio::test]
async fn exit_code_flags_behave_as_with_busd() {
    nats_or_skip!();
    // Nothing listens: an outage from the start.
    let closed = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut nobody = busctl(&["watch", "--bus", &closed, "--max-outage", "2s"]);
    assert_eq!(
        nobody.wait_exit(WAIT).code(),
        Some(4),
        "{}",
        nobody.stderr_log()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "gave up after {took:?}"
    );
    nobody.wait_stderr("giving up", WAIT);

    let mut cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let mut counted = watch(&bus, &["--accounts", "3", "--count", "50"]);
    let mut outage = watch(&bus, &["--max-outage", "2s"]);
    ingest.send(&numbered("c", |_| 3, 80)).await;
    assert_eq!(
        counted.wait_exit(WAIT).code(),
        Some(0),
        "--count reached exits 0"
    );
    let lines = rest_of_stdout(&counted);
    assert_eq!(lines.len(), 50, "exactly --count events");
    assert_eq!(json(&lines[49])["data"], "c-49");
    assert_eq!(outage.stdout_lines(80, WAIT).len(), 80);

    // The server goes away under a live watcher.
    cluster.stop_all();
    let stopped = Instant::now();
    assert_eq!(
        outage.wait_exit(WAIT).code(),
        Some(4),
        "{}",
        outage.stderr_log()
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "gave up {took:?} after the server stopped"
    );
    outage.wait_stderr("giving up", WAIT);
    drop(ingest);
}

#[tokio::test]
async fn bad_addresses_and_servers_get_clear_errors() {
    let program = nats_or_skip!();
    for args in [
        &["watch", "--bus", "nats://h:1,127.0.0.1:2"][..],
        &["stats", "--bus", "nats://h:1,"],
        &["watch", "--bus", "redis://h:6379"],
    ] {
        let output = busctl_command(args).output().expect("busctl runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--bus"), "{args:?}: {stderr}");
    }
    let mixed = busctl_command(&["watch", "--bus", "nats://h:1,127.0.0.1:2"])
        .output()
        .expect("busctl runs");
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(stderr.contains("nats:// URLs only"), "{stderr}");
    let dir = tempfile::tempdir().expect("a temp dir");
    let output = ingest_command(dir.path(), "nats://h:1,127.0.0.1:2", &[])
        .output()
        .expect("ingest runs");
    assert_eq!(output.status.code(), Some(2));

    // No server yet: ingest starts, is not ready, and buffers what it accepts until a
    // JetStream server comes up on that port.
    let port = free_port();
    let bus = format!("nats://127.0.0.1:{port}");
    let waiting = Ingest::start_unready(&bus, &[]);
    let warning = wait_log(&waiting.proc, "not reachable yet");
    assert!(warning.contains("WARN"), "{warning}");
    assert_eq!(waiting.readyz().await, 503);
    waiting.send(&[(5, "early".to_owned())]).await;
    let store = tempfile::tempdir().expect("a temp dir");
    let server = jetstream_nats(&program, port, store.path());
    waiting.wait_ready().await;
    let stream = wait_last_seq(&bus, 1).await;
    assert_eq!((stream.messages, stream.last_seq), (1, 1), "{stream:?}");
    drop(waiting);
    drop(server);

    // A server without JetStream refuses for good: ingest exits 1 saying why.
    let port = free_port();
    let bus = format!("nats://127.0.0.1:{port}");
    let _plain = plain_nats(&program, port);
    let mut refused = Proc::spawn("ingest", &mut ingest_command(dir.path(), &bus, &[]));
    assert_eq!(refused.wait_exit(WAIT).code(), Some(1));
    let log = refused.stderr_log();
    assert!(log.contains("without JetStream"), "{log}");
    for args in [
        &["watch", "--bus", &bus][..],
        &["stats", "--bus", &bus],
        &["publish", "--bus", &bus, "--account", "1", "--data", "x"],
    ] {
        let mut proc = busctl(args);
        assert_eq!(proc.wait_exit(WAIT).code(), Some(1), "{args:?}");
        let log = proc.stderr_log();
        assert!(log.contains("JetStream"), "{args:?}: {log}");
    }

    // Three replicas on one server cannot be: ingest exits 1 saying so.
    let cluster = Cluster::start(1);
    let mut replicas = Proc::spawn(
        "ingest",
        &mut ingest_command(dir.path(), &cluster.urls(), &["--replicas", "3"]),
    );
    assert_eq!(replicas.wait_exit(WAIT).code(), Some(1));
    let log = replicas.stderr_log();
    assert!(
        log.contains("cannot create stream TRACKER") && log.contains("3 replicas"),
        "{log}"
    );
}

#[tokio::test]
async fn an_existing_stream_with_other_settings_is_used_with_a_warning() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let mut first = Ingest::start(&bus, &["--retain-bytes", "1MiB"]).await;
    first.send(&[(2, "before".to_owned())]).await;
    wait_last_seq(&bus, 1).await;
    first.proc.signal("TERM");
    assert!(first.proc.wait_exit(WAIT).success());
    assert!(
        !first
            .proc
            .stderr_log()
            .contains("using the stream as it is"),
        "the stream it created is as asked"
    );

    let second = Ingest::start(&bus, &["--retain-bytes", "2MiB"]).await;
    let warning = wait_log(&second.proc, "using the stream as it is");
    assert!(
        warning.contains("WARN") && warning.contains("max_bytes 1048576 (asked 2097152)"),
        "{warning}"
    );
    let watcher = watch(&bus, &[]);
    second.send(&[(2, "after".to_owned())]).await;
    let event = json(&watcher.stdout_lines(1, WAIT)[0]);
    assert_eq!(
        (event["data"].as_str(), event["seq"].as_u64()),
        (Some("after"), Some(2))
    );
    let servers = vec![bus.clone()];
    let conn = client::jetstream::connect(&servers, "tests", None, Duration::from_secs(5))
        .await
        .expect("connect");
    let info = conn
        .js
        .get_stream("TRACKER")
        .await
        .expect("the stream")
        .get_info()
        .await
        .expect("its info");
    assert_eq!(info.config.max_bytes, 1 << 20, "used as it is");
}

#[tokio::test]
async fn busctl_stats_shows_the_stream() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let mut watcher = watch(&bus, &["--count", "37"]);
    ingest.send(&numbered("s", |i| 1 + i as u64 % 3, 37)).await;
    assert!(watcher.wait_exit(WAIT).success(), "all 37 arrived");

    let mut text = busctl(&["stats", "--bus", &bus]);
    assert!(text.wait_exit(WAIT).success(), "{}", text.stderr_log());
    let table = rest_of_stdout(&text).join("\n");
    assert!(table.contains("stream TRACKER"), "{table}");
    assert!(table.contains("messages 37"), "{table}");
    assert!(table.contains("last seq 37"), "{table}");

    let mut stats = busctl(&["stats", "--bus", &bus, "--format", "json"]);
    assert!(stats.wait_exit(WAIT).success(), "{}", stats.stderr_log());
    let lines = rest_of_stdout(&stats);
    assert_eq!(lines.len(), 1, "one JSON object: {lines:?}");
    let report = json(&lines[0]);
    assert_eq!(report["stream"], "TRACKER");
    assert_eq!(report["last_seq"], 37, "{report}");
    assert_eq!(report["messages"], 37, "{report}");
    assert_eq!(report["first_seq"], 1, "{report}");
    assert_eq!(report["replicas"], 1, "{report}");
    assert!(
        report["epoch"].as_u64().is_some_and(|e| e > 1_600_000_000),
        "{report}"
    );

    let mut elsewhere = busctl(&["stats", "--bus", &bus, "--stream", "NOPE"]);
    assert_eq!(elsewhere.wait_exit(WAIT).code(), Some(1));
    assert!(elsewhere.stderr_log().contains("NOPE"), "names the stream");

    // --watch: one JSON line a refresh when piped, the newest figures each time.
    let mut refreshing = busctl(&["stats", "--bus", &bus, "--watch", "200ms"]);
    let first = json(&refreshing.stdout_lines(1, WAIT)[0]);
    assert_eq!(first["last_seq"], 37, "{first}");
    ingest.send(&numbered("t", |_| 1, 3)).await;
    let newer = loop {
        let line = json(&refreshing.stdout_lines(1, WAIT)[0]);
        if line["last_seq"] != 37 {
            break line;
        }
    };
    assert_eq!(newer["last_seq"], 40, "{newer}");
    refreshing.signal("INT");
    assert!(refreshing.wait_exit(WAIT).success());
}

#[tokio::test]
async fn busctl_publish_and_doctor_work_over_jetstream() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let mut watcher = watch(&bus, &["--accounts", "5", "--count", "100"]);
    let mut publish = busctl(&[
        "publish",
        "--bus",
        &bus,
        "--account",
        "5",
        "--data",
        "x",
        "--repeat",
        "100",
    ]);
    assert_eq!(
        publish.wait_exit(WAIT).code(),
        Some(0),
        "{}",
        publish.stderr_log()
    );
    publish.wait_stderr("published 100 events", WAIT);
    assert!(watcher.wait_exit(WAIT).success(), "all 100 arrived");
    let lines = rest_of_stdout(&watcher);
    assert_eq!(lines.len(), 100);
    for line in &lines {
        let event = json(line);
        assert_eq!(event["data"], "x", "{line}");
        assert_eq!(event["account_id"], 5, "{line}");
        assert!(
            event["origin"]
                .as_str()
                .is_some_and(|o| o.starts_with("busctl-")),
            "{line}"
        );
    }
    assert_eq!(summary(&bus).await.last_seq, 100, "each event once");

    let http = format!("http://{}", ingest.http);
    let output = busctl_command(&["doctor", "--bus", &bus, "--ingest", &http, "--account", "5"])
        .output()
        .expect("busctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("bus      ok")
            && stdout.contains("ingest   ok")
            && stdout.contains("delivery ok"),
        "{stdout}"
    );
    // Watching another stream, the canary never shows up.
    let output = busctl_command(&[
        "doctor",
        "--bus",
        &bus,
        "--ingest",
        &http,
        "--stream",
        "OTHER",
        "--timeout",
        "1s",
    ])
    .output()
    .expect("busctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("bus      FAIL"), "{stdout}");
}

#[tokio::test]
async fn a_watcher_whose_consumer_is_gone_reports_the_eviction_on_resume() {
    nats_or_skip!();
    let mut cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &["--retain-bytes", "64KiB"]).await;
    let watcher = watch(&bus, &[]);
    ingest
        .send(&numbered("e", |i| 1 + (i % 7) as u64, 10))
        .await;
    assert_eq!(json(&watcher.stdout_lines(10, WAIT)[9])["seq"], 10);

    watcher.signal("STOP");
    let more = numbered("f", |i| 1 + (i % 7) as u64, 4000);
    ingest.send(&more).await;
    let last_seq = 10 + more.len() as u64;
    let stream = wait_last_seq(&bus, last_seq).await;
    // The server restarts while the watcher sleeps: its consumer, kept in memory, is gone,
    // and the watcher must make a new one from its position, which the stream evicted.
    cluster.restart(0);
    assert_eq!(
        summary(&bus).await.first_seq,
        stream.first_seq,
        "kept as it was"
    );
    watcher.signal("CONT");
    let gaps = read_through(&watcher, 10, last_seq, stream.first_seq, |seq| {
        format!("f-{}", seq - 11)
    });
    assert!(gaps >= 1, "the eviction was reported");
    let log = watcher.stderr_log();
    assert!(log.contains("resumed after"), "a new consumer: {log}");
    drop(ingest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_and_doubles_nothing() {
    nats_or_skip!();
    let mut cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let watcher = watch(&bus, &[]);
    let events = numbered("r", |i| 1 + (i % 9) as u64, 600);
    let sender = {
        let (http, events) = (ingest.http, events.clone());
        tokio::spawn(async move {
            for chunk in events.chunks(20) {
                send_to(http, chunk).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart(0);
    sender.await.expect("the sender");
    ingest.send(&[(1, "last".to_owned())]).await;

    let lines = watcher.stdout_lines(events.len() + 1, WAIT);
    let printed: Vec<Value> = lines.iter().map(|l| json(l)).collect();
    assert!(
        printed.iter().all(|e| e.get("gap").is_none()),
        "no gap: {lines:?}"
    );
    let data: Vec<&str> = printed
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
    expected.push("last");
    assert_eq!(data, expected, "every event once, in order");
    let seqs: Vec<u64> = printed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=601).collect::<Vec<u64>>(),
        "the stream holds each once"
    );
    let log = watcher.stderr_log();
    assert!(log.contains("resumed after"), "{log}");
}

#[tokio::test]
async fn a_recreated_stream_is_a_gap_of_unknown_size() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let watcher = watch(&bus, &[]);
    ingest.send(&numbered("old", |_| 4, 5)).await;
    let old = json(&watcher.stdout_lines(5, WAIT)[4]);
    assert_eq!(old["seq"], 5);

    // An operator deletes the stream (`nats stream rm`); ingest makes it again.
    let servers = vec![bus.clone()];
    let conn = client::jetstream::connect(&servers, "tests", None, Duration::from_secs(5))
        .await
        .expect("connect");
    conn.js.delete_stream("TRACKER").await.expect("deleted");
    ingest.send(&numbered("new", |_| 4, 3)).await;

    let gap = json(&watcher.stdout_lines(1, WAIT)[0]);
    assert_eq!(gap["gap"]["from_seq"], 6, "{gap}");
    assert!(
        gap["gap"]["to_seq"].is_null() && gap["gap"]["missed"].is_null(),
        "of unknown size: {gap}"
    );
    assert_eq!(gap["gap"]["epoch"], old["epoch"], "{gap}");
    let new: Vec<Value> = watcher
        .stdout_lines(3, WAIT)
        .iter()
        .map(|l| json(l))
        .collect();
    let got: Vec<(u64, &str)> = new
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(1, "new-0"), (2, "new-1"), (3, "new-2")]);
    let log = watcher.stderr_log();
    assert!(log.contains("the stream was created again"), "{log}");
}

/// Seconds since the Unix epoch, and the nanoseconds past the second.
fn wall_clock() -> (u64, u32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    (now.as_secs(), now.subsec_nanos())
}

/// Publishes `count` events of account 4 straight to the stream, as ingest would.
async fn publish_direct(conn: &client::jetstream::Connection, prefix: &str, count: usize) {
    for i in 0..count {
        support::publish_to_stream(conn, 4, &format!("{prefix}-{i}"), i as u64 + 1).await;
    }
}

#[tokio::test]
async fn a_stream_recreated_within_the_same_second_is_still_a_gap() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let servers = vec![bus.clone()];
    let conn = client::jetstream::connect(&servers, "tests", None, Duration::from_secs(5))
        .await
        .expect("connect");
    let layout = Layout::default();
    // The epoch is the stream's creation time in whole seconds: a stream deleted and made
    // again within the same second has the same one. Tried until both fall in one second.
    for attempt in 1..=5 {
        let (_, nanos) = wall_clock();
        tokio::time::sleep(Duration::from_nanos(u64::from(1_000_000_000 - nanos))).await;
        let (old, _) = client::jetstream::stream::ensure(&conn.js, &layout)
            .await
            .expect("created");
        let old_second = old.cached_info().created.unix_timestamp();
        let watcher = watch(&bus, &[]);
        publish_direct(&conn, "old", 3).await;
        assert_eq!(json(&watcher.stdout_lines(3, WAIT)[2])["seq"], 3);
        watcher.signal("STOP");
        conn.js.delete_stream("TRACKER").await.expect("deleted");
        let (new, _) = client::jetstream::stream::ensure(&conn.js, &layout)
            .await
            .expect("created again");
        let new_second = new.cached_info().created.unix_timestamp();
        publish_direct(&conn, "new", 10).await;
        if new_second != old_second {
            eprintln!("attempt {attempt}: the stream was made again in another second");
            watcher.signal("CONT");
            drop(watcher);
            conn.js.delete_stream("TRACKER").await.expect("deleted");
            continue;
        }
        watcher.signal("CONT");
        // What follows seq 3 of the old stream: a gap, or the new stream from its start;
        // never the new stream from seq 4 on as if it were the old one.
        let next = json(&watcher.stdout_lines(1, WAIT)[0]);
        assert!(
            next.get("gap").is_some() || next["data"] == "new-0",
            "the new stream's first events were skipped silently: {next}\n{}",
            watcher.stderr_log()
        );
        return;
    }
    eprintln!("skipped: could not make the stream twice within one second");
}

#[tokio::test]
async fn a_cluster_without_quorum_is_waited_out_losing_nothing() {
    nats_or_skip!();
    let mut cluster = Cluster::start(3);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &["--replicas", "3", "--bus-timeout", "2s"]).await;
    let watcher = watch(&bus, &[]);
    let before = numbered("q", |i| 1 + (i % 9) as u64, 50);
    ingest.send(&before).await;
    assert_eq!(watcher.stdout_lines(before.len(), WAIT).len(), before.len());

    // Two of three down: the stream cannot store anything, so nothing is acknowledged.
    // ingest keeps accepting into its buffer and says it is not ready.
    let leader = cluster.wait_stream_leader("TRACKER", WAIT);
    let down: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &node in &down {
        cluster.stop(node);
    }
    let during = numbered("w", |i| 1 + (i % 9) as u64, 50);
    ingest.send(&during).await;
    let deadline = Instant::now() + WAIT;
    while ingest.readyz().await != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 without quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_log(&ingest.proc, "lost the bus");

    for &node in &down {
        cluster.restart(node);
    }
    ingest.wait_ready().await;
    let lines = watcher.stdout_lines(during.len(), Duration::from_secs(60));
    let data: Vec<String> = lines
        .iter()
        .map(|l| json(l)["data"].as_str().expect("data").to_owned())
        .collect();
    let expected: Vec<String> = during.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        data, expected,
        "every event accepted without quorum, once, in order"
    );
}

/// The first `n` stdout lines of a `busctl watch --format json` on `bus` with `args`.
fn watch_history(bus: &str, args: &[&str], n: usize) -> Vec<Value> {
    let mut argv = vec!["watch", "--bus", bus, "--format", "json"];
    argv.extend_from_slice(args);
    let proc = busctl(&argv);
    proc.stdout_lines(n, WAIT).iter().map(|l| json(l)).collect()
}

fn data_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["data"].as_str().unwrap_or("GAP").to_owned())
        .collect()
}

#[tokio::test]
async fn history_is_read_from_the_stream() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let first = numbered("a", |i| 1 + (i % 3) as u64, 12);
    ingest.send(&first).await;
    wait_last_seq(&bus, 12).await;
    std::thread::sleep(Duration::from_millis(1100));
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(100));
    let second = numbered("b", |i| 1 + (i % 3) as u64, 3);
    ingest.send(&second).await;
    wait_last_seq(&bus, 15).await;

    let last = watch_history(&bus, &["--accounts", "1", "--last", "2"], 2);
    assert_eq!(
        data_of(&last),
        ["a-9", "b-0"],
        "filtered: found by the server's counts"
    );
    let last_all = watch_history(&bus, &["--last", "3"], 3);
    assert_eq!(data_of(&last_all), ["b-0", "b-1", "b-2"]);
    let everything = watch_history(&bus, &["--from-beginning"], 15);
    assert_eq!(everything[0]["data"], "a-0");
    assert_eq!(everything[14]["data"], "b-2");
    let recent = watch_history(&bus, &["--since", &since], 3);
    assert_eq!(data_of(&recent), ["b-0", "b-1", "b-2"]);
    let more = watch_history(&bus, &["--accounts", "2", "--last", "100"], 5);
    assert_eq!(
        data_of(&more),
        ["a-1", "a-4", "a-7", "a-10", "b-1"],
        "all it holds, no gap"
    );

    // Then live: history and new events in one watch.
    let watcher = busctl(&["watch", "--bus", &bus, "--format", "json", "--last", "1"]);
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "b-2");
    watcher.wait_stderr("live (epoch", WAIT);
    ingest.send(&numbered("c", |_| 1, 1)).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "c-0");
}

#[tokio::test]
async fn history_of_an_empty_stream_is_nothing_then_live() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let watchers = [
        watch(&bus, &["--last", "5"]),
        watch(&bus, &["--accounts", "1,2", "--last", "5"]),
    ];
    ingest.send(&numbered("n", |_| 1, 1)).await;
    for watcher in &watchers {
        let line = json(&watcher.stdout_lines(1, WAIT)[0]);
        assert_eq!((&line["data"], &line["seq"]), (&"n-0".into(), &1.into()));
    }
}

#[tokio::test]
async fn history_the_stream_no_longer_holds_is_a_gap_first() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &["--retain-bytes", "64KiB"]).await;
    ingest
        .send(&numbered("e", |i| 1 + (i % 7) as u64, 2000))
        .await;
    let stream = wait_last_seq(&bus, 2000).await;
    assert!(stream.first_seq > 1, "evicted: {stream:?}");
    for args in [
        &["--from-beginning"][..],
        &["--last", "100000"],
        &["--since", "1h"],
    ] {
        let lines = watch_history(&bus, args, 2);
        assert_eq!(lines[0]["gap"]["from_seq"], 1, "{args:?}: {lines:?}");
        assert_eq!(lines[0]["gap"]["to_seq"], stream.first_seq - 1, "{args:?}");
        assert_eq!(lines[1]["seq"], stream.first_seq, "{args:?}");
    }
}

#[tokio::test]
async fn origin_and_match_filter_in_busctl() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let one = Ingest::start(&bus, &["--origin", "one"]).await;
    let two = Ingest::start(&bus, &["--origin", "two"]).await;
    one.send(&numbered("a", |i| 1 + (i % 2) as u64, 4)).await;
    two.send(&numbered("b", |i| 1 + (i % 2) as u64, 4)).await;
    wait_last_seq(&bus, 8).await;
    let watcher = watch(
        &bus,
        &[
            "--origin",
            "two",
            "--match",
            "-[023]$",
            "--accounts",
            "1",
            "--from-beginning",
        ],
    );
    // Origin two, account 1 (even i), data ending in 0, 2 or 3.
    let lines = watcher.stdout_lines(2, WAIT);
    let got: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let line = json(l);
            (
                line["origin"].as_str().unwrap().into(),
                line["data"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("two".into(), "b-0".into()), ("two".into(), "b-2".into())]
    );
    one.send(&numbered("c", |_| 1, 1)).await;
    two.send(&numbered("d", |_| 1, 4)).await;
    let live = watcher.stdout_lines(3, WAIT);
    let data: Vec<Value> = live.iter().map(|l| json(l)["data"].clone()).collect();
    assert_eq!(data, ["d-0", "d-2", "d-3"], "not c-0: origin one");
    assert!(next_line(&watcher, Duration::from_millis(300)).is_none());
}

/// `--last N` on a filter over an R3 stream prints exactly the last N events of the
/// watched accounts, right after a replica has been made to fall behind (paused while the
/// others stored 20000 events, then resumed). Until it catches up, that replica answers
/// stream info itself (naming no leader) with its own empty copy, and probe consumers
/// placed on it count short, so the search starts too early: without counting on the
/// leader only, the watcher panicked or printed the first N of thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_n_of_a_filter_are_counted_on_the_stream_leader() {
    nats_or_skip!();
    let mut cluster = Cluster::start(3);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &["--replicas", "3"]).await;
    let leader = cluster.wait_stream_leader("TRACKER", WAIT);
    let meta = cluster.meta_leader();
    // A follower of the stream, and not the meta leader, so consumers can still be made.
    let behind = (0..3)
        .filter(|i| *i != leader)
        .max_by_key(|i| Some(*i) != meta)
        .expect("a follower");
    cluster.signal(behind, "STOP");
    // Accounts 1 to 4 in turn: the watched ones (1 and 3) are every other event.
    let events = numbered("e", |i| 1 + (i % 4) as u64, 20000);
    ingest.send(&events).await;
    wait_last_seq(&bus, events.len() as u64).await;
    cluster.signal(behind, "CONT");

    let n = 7;
    let watcher = watch(&bus, &["--accounts", "1,3", "--last", "7"]);
    let lines: Vec<Value> = watcher
        .stdout_lines(n, WAIT)
        .iter()
        .map(|l| json(l))
        .collect();
    let watched: Vec<String> = events
        .iter()
        .filter(|(account, _)| [1, 3].contains(account))
        .map(|(_, data)| data.clone())
        .collect();
    let expected = &watched[watched.len() - n..];
    assert_eq!(
        data_of(&lines),
        expected,
        "the last {n} of accounts 1 and 3"
    );
    let more = next_line(&watcher, Duration::from_secs(2));
    assert!(more.is_none(), "exactly {n} lines, then {more:?}");
}

/// A watcher whose stdout is not read for a while (piped into a pager that is paused, say)
/// stops pulling from its consumer meanwhile, and async-nats then finds its missed-heartbeat
/// timer expired with heartbeats and messages waiting unread. That is no sign of a dead
/// server: the watcher must go on with the same consumer, saying nothing on stderr, and
/// print every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_pausing_the_output_is_no_missed_heartbeat() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    // --count: busctl exits once it has printed them all, so reading stdout ends.
    let count = "2000";
    let mut child = busctl_command(&["watch", "--bus", &bus, "--format", "json", "--count", count])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("busctl starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (live_tx, live) = std::sync::mpsc::channel();
    let said = std::thread::spawn(move || {
        let mut said = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("live (epoch") {
                let _ = live_tx.send(());
            }
            said.push_str(&line);
            said.push('\n');
        }
        said
    });
    live.recv_timeout(WAIT).expect("the watcher goes live");
    // More than the pipe and busctl's output queue hold, so busctl blocks on stdout.
    let data = "p".repeat(400);
    let events = numbered(
        &data,
        |i| 1 + (i % 3) as u64,
        count.parse().expect("a count"),
    );
    ingest.send(&events).await;
    std::thread::sleep(4 * Duration::from_secs(1));
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let lines: Vec<String> = (0..events.len())
        .map_while(|_| line_rx.recv_timeout(WAIT).ok())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let said = said.join().expect("the stderr reader");
    let printed: Vec<String> = lines.iter().map(|l| json(l)["data"].to_string()).collect();
    let sent: Vec<String> = events.iter().map(|(_, d)| format!("{d:?}")).collect();
    assert!(
        printed == sent,
        "every event once, in order: {} of {} lines",
        printed.len(),
        sent.len()
    );
    assert!(!said.contains("heartbeat"), "stderr: {said}");
    assert!(!said.contains("reconnect"), "stderr: {said}");
}

/// The other side of the test above: a watcher that keeps reading notices a frozen server
/// by its missed heartbeats within seconds, and goes on once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_noticed_by_its_missed_heartbeats() {
    nats_or_skip!();
    let mut cluster = Cluster::start(1);
    let bus = cluster.urls();
    let ingest = Ingest::start(&bus, &[]).await;
    let watcher = watch(&bus, &[]);
    // Read something first: a watcher that has been reading all along is not "away".
    ingest.send(&numbered("t", |_| 1, 1)).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "t-0");
    assert_a_frozen_server_is_noticed(&mut cluster, 0, &watcher);
    ingest.send(&numbered("u", |_| 1, 1)).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "u-0");
}
