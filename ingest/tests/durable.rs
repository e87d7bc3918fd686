//! `ingest --durable` against the real binaries, on busd and on a 3-node JetStream cluster:
//!
//! - the bus stalls (SIGSTOP) under full-rate load, ingest is killed (SIGKILL), the bus
//!   resumes: every request answered 202 is delivered exactly once. The same run without
//!   `--durable` must lose 202s, or the scenario proves nothing;
//! - a bus that does not acknowledge within `--ack-timeout` gets the request a 503 with
//!   `Retry-After`, and the bus taking the event later delivers it once;
//! - pipelined requests, events and refusals mixed, are answered in order, and each
//!   connection's events arrive in the order it sent them.
//!
//! The load, the watcher (`busctl watch --format json`) and the checker are the chaos
//! test's; the tests here take turns, since each wants the machine's two cores.

#[allow(dead_code)]
#[path = "chaos/mod.rs"]
mod chaos;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chaos::checker::{Accounts, At, Expect, Incarnation, Ledger, Outcome, Verdict};
use chaos::cluster::{Bus, Cluster};
use chaos::ident::{Key, long_data};
use chaos::load::{self, MAX_DATA, Plan};
use chaos::watcher::{Record, Watcher};
use testkit::http::{Client, Reply};

/// Full-rate load before the bus stalls.
const LOAD_BEFORE: Duration = Duration::from_secs(3);
/// How long the bus is stopped before ingest is killed (the measurement).
const STALL: Duration = Duration::from_millis(1500);
/// How long a watcher may take to say it is live, and ingest to become ready.
const START: Duration = Duration::from_secs(30);

/// One test at a time: each runs processes and load that want both cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the load")
}

fn jetstream_missing() -> bool {
    let missing = testkit::nats::server().is_none();
    if missing {
        eprintln!("skipped: the pinned nats-server is not installed (.ci/nats-server installs it)");
    }
    missing
}

#[test]
fn only_durable_202s_survive_an_ingest_crash_while_busd_stalls() {
    let _turn = serial();
    chaos::cluster::build_binaries();
    let durable = crash_while_the_bus_stalls(Bus::Busd, &["--durable"]);
    let default = crash_while_the_bus_stalls(Bus::Busd, &[]);
    eprintln!("durable: {durable}\ndefault: {default}");
    durable.assert_every_202_delivered_once();
    assert!(
        default.lost > 0,
        "without --durable the crash lost no 202, so this scenario proves nothing: {default}"
    );
}

#[test]
fn durable_202s_survive_an_ingest_crash_while_jetstream_stalls() {
    if jetstream_missing() {
        return;
    }
    let _turn = serial();
    chaos::cluster::build_binaries();
    let durable = crash_while_the_bus_stalls(Bus::Jetstream, &["--durable"]);
    eprintln!("durable on JetStream: {durable}");
    durable.assert_every_202_delivered_once();
}

#[test]
fn busd_not_acknowledging_in_time_gets_503_and_the_event_later_arrives_once() {
    let _turn = serial();
    chaos::cluster::build_binaries();
    ack_timeout_gets_503(Bus::Busd);
}

#[test]
fn jetstream_not_acknowledging_in_time_gets_503_and_the_event_later_arrives_once() {
    if jetstream_missing() {
        return;
    }
    let _turn = serial();
    chaos::cluster::build_binaries();
    ack_timeout_gets_503(Bus::Jetstream);
}

#[test]
fn durable_pipelined_answers_keep_request_order() {
    let _turn = serial();
    chaos::cluster::build_binaries();
    let runtime = runtime();
    let started = Instant::now();
    let cluster = Cluster::start_with(Bus::Busd, &["--durable"]);
    runtime.block_on(wait_ready(cluster.http));
    let watcher = watch(&cluster, started);
    let http = cluster.http;
    let sent: Vec<Vec<u64>> = runtime.block_on(async move {
        let connections: Vec<_> = (0..8u64)
            .map(|conn| tokio::spawn(pipeline_mixed(http, conn)))
            .collect();
        let mut sent = Vec::new();
        for connection in connections {
            sent.push(connection.await.expect("a connection does not panic"));
        }
        sent
    });
    let events: usize = sent.iter().map(Vec::len).sum();
    let record = settle_and_stop(watcher, events, started);
    let failures = cluster.stop();
    assert!(failures.is_empty(), "{failures:?}");
    let delivered: Vec<u64> = record
        .printed
        .deliveries
        .iter()
        .filter_map(|d| d.key.as_id())
        .collect();
    assert_eq!(delivered.len(), events, "every 202 once, nothing else");
    for (conn, ids) in sent.iter().enumerate() {
        let arrived: Vec<u64> = delivered
            .iter()
            .copied()
            .filter(|id| id / CONN_IDS == conn as u64)
            .collect();
        assert_eq!(
            &arrived, ids,
            "connection {conn}'s events, in the order sent"
        );
    }
}

/// Ids of connection `c`'s events are `c * CONN_IDS + n`.
const CONN_IDS: u64 = 1_000_000;

/// Sends groups of 1 to 8 pipelined requests, events (data of 12 to 4096 bytes, each with
/// its id) mixed with requests refused or answered without an event, and checks every
/// answer's status in order; returns the ids of the events answered 202, in order.
async fn pipeline_mixed(http: SocketAddr, conn: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(conn);
    let mut client = Client::connect(http).await;
    let mut accepted = Vec::new();
    for group in 0..60 {
        let mut wire = String::new();
        let mut expected = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..rng.usize(1..=8) {
            let (target, status) = match rng.u8(..8) {
                0 => ("/5000?data=x".to_owned(), 404),
                1 => ("/10?data=x".to_owned(), 403),
                2 => ("/5".to_owned(), 400),
                3 => ("/healthz".to_owned(), 200),
                _ => {
                    let id = conn * CONN_IDS + (accepted.len() + ids.len()) as u64;
                    let len = rng.usize(chaos::ident::ID_LEN..=MAX_DATA);
                    ids.push(id);
                    let account = 1 + rng.u64(..999);
                    let account = if account % 10 == 0 {
                        account + 1
                    } else {
                        account
                    };
                    (format!("/{account}?data={}", long_data(id, len)), 202)
                }
            };
            wire.push_str(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"));
            expected.push(status);
        }
        client.send_raw(wire.as_bytes()).await;
        let mut statuses = Vec::new();
        for _ in &expected {
            let reply = client.read_reply(false).await.expect("an answer");
            statuses.push(reply.status);
        }
        assert_eq!(statuses, expected, "connection {conn}, group {group}");
        accepted.extend(ids);
    }
    accepted
}

/// What a crash run found.
struct Crash {
    accepted: usize,
    /// 202s answered while the bus was stopped (after a moment for answers already sent).
    accepted_while_stalled: usize,
    lost: usize,
    duplicates: usize,
    problems: Vec<String>,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered 202 ({} while the bus was stopped), {} of them never delivered, \
             {} delivered twice",
            self.accepted, self.accepted_while_stalled, self.lost, self.duplicates
        )
    }
}

impl Crash {
    fn assert_every_202_delivered_once(&self) {
        assert!(
            self.accepted > 500,
            "too few 202s to prove anything: {self}"
        );
        assert!(
            self.lost == 0 && self.problems.is_empty(),
            "{self}\n{}",
            self.problems.join("\n")
        );
    }
}

/// Full-rate load from 16 keep-alive clients (pipelining up to 4, data of 1 to 4096
/// bytes) into ingest started with `ingest_args`; after [`LOAD_BEFORE`] the bus is
/// stopped, [`STALL`] later ingest is killed and the bus resumed. Then a watcher that saw it
/// all is checked against every answer.
fn crash_while_the_bus_stalls(bus: Bus, ingest_args: &[&str]) -> Crash {
    let runtime = runtime();
    let started = Instant::now();
    let mut cluster = Cluster::start_with(bus, ingest_args);
    runtime.block_on(wait_ready(cluster.http));
    let watcher = watch(&cluster, started);
    let active: Vec<u32> = (1..=1000).filter(|a| a % 10 != 0).collect();
    let plan = Plan {
        clients: 16,
        pipeline: 4,
        rate: None,
        hot: active.clone(),
        active,
        seed: 7,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = runtime.spawn(load::run(cluster.http, plan, started, stop.clone()));
    std::thread::sleep(LOAD_BEFORE);
    let stalled = At::from_duration(started.elapsed());
    cluster.bus_signal("STOP");
    std::thread::sleep(STALL);
    let killed = At::from_duration(started.elapsed());
    cluster.ingest_kill();
    cluster.bus_signal("CONT");
    stop.store(true, Ordering::Relaxed);
    let outcomes = runtime.block_on(load).expect("the load does not panic");
    let accepted: Vec<_> = outcomes
        .requests
        .iter()
        .filter(|r| r.outcome == Outcome::Accepted)
        .collect();
    let record = settle_and_stop(watcher, accepted.len(), started);
    let mut problems = cluster.stop();
    problems.extend(
        outcomes
            .bad_statuses
            .iter()
            .take(5)
            .map(|(at, status, body)| format!("{status} {body} at {at:?}")),
    );
    let verdict = check(&outcomes.requests, record);
    problems.extend(verdict.problems);
    let settled = stalled.plus(Duration::from_millis(100));
    Crash {
        accepted: accepted.len(),
        accepted_while_stalled: accepted
            .iter()
            .filter(|r| r.answered > settled && r.answered <= killed)
            .count(),
        lost: verdict.uncovered.len(),
        duplicates: verdict.duplicates,
        problems,
    }
}

/// The checker's verdict on one watcher that watched every account throughout.
fn check(requests: &[chaos::checker::Request], mut record: Record) -> Verdict {
    let ledger = Ledger::new(requests, Vec::new());
    ledger.check(&Incarnation {
        name: record.name.clone(),
        accounts: Accounts::All,
        expect: Expect::Everything,
        deliveries: std::mem::take(&mut record.printed.deliveries),
        gaps: record.printed.gaps.clone(),
        nothing_missed: record.said.nothing_missed.clone(),
        bad_lines: record.printed.bad_lines.clone(),
    })
}

/// With `--ack-timeout 1s`: events answered 202 while the bus answers; while it is stopped,
/// a pipelined group's events get 503 with `Retry-After` after the timeout, in order around
/// a request that needs no bus; once the bus resumes, 202 again, and the events refused
/// with 503 arrive too (they stayed in the outbox), each exactly once.
fn ack_timeout_gets_503(bus: Bus) {
    let runtime = runtime();
    let started = Instant::now();
    let mut cluster = Cluster::start_with(bus, &["--durable", "--ack-timeout", "1s"]);
    runtime.block_on(wait_ready(cluster.http));
    let watcher = watch(&cluster, started);
    let http = cluster.http;
    let mut client = runtime.block_on(Client::connect(http));
    let event = |id: u64, len: usize| format!("/{}?data={}", 1 + id, long_data(id, len));
    let answered = runtime.block_on(pipelined(
        &mut client,
        &[event(1, 12), "/5000?data=x".into(), event(2, MAX_DATA)],
    ));
    assert_eq!(statuses(&answered.0), [202, 404, 202]);
    cluster.bus_signal("STOP");
    let (replies, took) = runtime.block_on(pipelined(
        &mut client,
        &[event(3, 100), "/healthz".into(), event(4, 2000)],
    ));
    cluster.bus_signal("CONT");
    assert_eq!(statuses(&replies), [503, 200, 503]);
    for refused in [&replies[0], &replies[2]] {
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.body, ingest::durable::ACK_TIMEOUT_BODY);
    }
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "answered after {took:?}, not after the 1 s --ack-timeout"
    );
    // Each try a new event: a 503'd one may still arrive, and must not be taken for a copy.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tries = 5..;
    let (accepted, refused) = loop {
        let id = tries.next().expect("ids to spare");
        let (replies, _) = runtime.block_on(pipelined(&mut client, &[event(id, 500)]));
        match replies[0].status {
            202 => break (id, id - 5),
            503 if Instant::now() < deadline => continue,
            other => panic!("event {id} got {other} after the bus came back, not 202"),
        }
    };
    let record = settle_and_stop(watcher, 5, started);
    let failures = cluster.stop();
    assert!(failures.is_empty(), "{failures:?}");
    let mut arrived: HashMap<Key, usize> = HashMap::new();
    for delivery in &record.printed.deliveries {
        *arrived.entry(delivery.key).or_default() += 1;
    }
    for id in [1, 2, 3, 4, accepted] {
        assert_eq!(
            arrived.get(&Key::id(id)),
            Some(&1),
            "event {id} arrives once"
        );
    }
    for id in 5..accepted {
        assert!(
            arrived.get(&Key::id(id)) <= Some(&1),
            "event {id} at most once"
        );
    }
    eprintln!("202 again {refused} tries after the bus came back");
}

/// Sends `targets` in one write and reads their answers; returns them and how long the
/// first took.
async fn pipelined(client: &mut Client, targets: &[String]) -> (Vec<Reply>, Duration) {
    let wire: String = targets
        .iter()
        .map(|t| format!("GET {t} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    let sent = Instant::now();
    client.send_raw(wire.as_bytes()).await;
    let mut replies = Vec::new();
    let mut took = Duration::ZERO;
    for _ in targets {
        replies.push(client.read_reply(false).await.expect("an answer"));
        if replies.len() == 1 {
            took = sent.elapsed();
        }
    }
    (replies, took)
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

/// A `busctl watch --all` on the cluster's bus, live.
fn watch(cluster: &Cluster, started: Instant) -> Watcher {
    let mut watcher = Watcher::start("W_all", &cluster.bus, &Accounts::All, started);
    assert!(
        watcher.wait_live(START).is_some(),
        "the watcher did not go live within {START:?}"
    );
    watcher
}

/// Waits until the watcher has printed `expected` events and a second passed without more,
/// or nothing came for 4 s (at most a minute); then stops it.
fn settle_and_stop(watcher: Watcher, expected: usize, started: Instant) -> Record {
    let began = Instant::now();
    let mut last = 0;
    let mut since = Instant::now();
    while began.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        let now = watcher.delivered.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
            continue;
        }
        let quiet = since.elapsed();
        if (now >= expected && quiet >= Duration::from_secs(1)) || quiet >= Duration::from_secs(4) {
            break;
        }
    }
    watcher.stop("TERM", started)
}

/// Waits for ingest's /readyz: accounts loaded and the bus connected.
async fn wait_ready(http: SocketAddr) {
    let deadline = Instant::now() + START;
    while testkit::http::get(http, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
