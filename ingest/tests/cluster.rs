//! Many machines on one: a cluster test across network namespaces (testkit::netns). Three app
//! hosts each run a JetStream node and an ingest (`--bus` all three nodes, `--db` PostgreSQL
//! on the `db` host); nginx on `lb` balances over the three ingest; `busctl watch --format
//! json` of every account and of 50 accounts runs on `watch`, and `busctl watch --aggregate`
//! on `agg`; the load of the fault-injection test (ingest/tests/chaos) runs on `client` and
//! goes through nginx. Every host has its own address on a private bridge the test makes and
//! removes; nothing outside the machine is touched.
//!
//! After the load, the chaos checker holds the promise: every request answered 202 is
//! delivered exactly once to every watcher of its account, and no watcher reports a gap (no
//! fault here can lose an event the stream acknowledged). Order per account holds too: the
//! ingests run `--durable`, so a 202 means the stream has the event, and an event answered
//! 202 before another of its account was sent must arrive first. (Without `--durable` a 202
//! comes before the bus has the event, and two instances' outboxes can overtake each other
//! after a fault.) The figures are printed: requests, 202s, 503s, delivered, duplicates, the
//! events checked for order, and the longest watcher outage.
//!
//! Needs root and iproute2 (network namespaces), the pinned nats-server (`.ci/nats-server`),
//! nginx and PostgreSQL; skipped, saying why, without them, except that CI fails when it
//! runs as root with iproute2 and cannot make namespaces or lacks one of the servers.
//! `CLUSTER_SECONDS` (least seconds of load, default 30), `CLUSTER_RATE` (requests/s, default
//! 1000) and `CLUSTER_FAULTS` (`none`, or a comma list of the faults' names; default all, in
//! their order) shape it:
//!
//!     cargo test -p ingest --test cluster -- --nocapture

#[allow(dead_code)]
#[path = "chaos/mod.rs"]
mod chaos;
#[path = "cluster/faults.rs"]
mod faults;
#[path = "cluster/topology.rs"]
mod topology;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos::checker::{self, Accounts, At, Expect, Incarnation, Ledger, Outcome, Verdict};
use chaos::load::{self, Outcomes, Plan};
use chaos::watcher::{Record, Watcher};
use faults::Kind;
use testkit::Proc;
use topology::Topology;

/// Accounts ingest seeds in a new database: 1..=1000, every tenth inactive.
const ACCOUNTS: u32 = 1000;
/// The second watcher's accounts.
const WATCHED: usize = 50;
/// How long a watcher may take to say it is live.
const LIVE_WITHIN: Duration = Duration::from_secs(30);
/// `--aggregate` windows.
const WINDOW: &str = "1s";

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} cannot be parsed")),
    )
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

/// Skips (true) when `missing` names something absent, after saying so; fails in CI, whose
/// `.ci/run` installs every server this test needs.
fn skip_without(missing: Option<&str>) -> bool {
    let Some(missing) = missing else {
        return false;
    };
    assert!(
        !in_ci(),
        "{missing}, and this is CI on a machine that can make network namespaces"
    );
    eprintln!("skipped: {missing}");
    true
}

fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// What is needed to run, or `None` after saying why not.
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    if testkit::netns::skip_without_netns() {
        return None;
    }
    let nats = testkit::nats::server();
    if skip_without(
        nats.is_none()
            .then_some("the pinned nats-server is not installed (.ci/nats-server installs it)"),
    ) {
        return None;
    }
    let nginx = nginx();
    if skip_without(
        nginx
            .is_none()
            .then_some("nginx is not installed (apt-get install nginx-light)"),
    ) {
        return None;
    }
    if testkit::postgres::skip_without_postgres() {
        return None;
    }
    Some((nats?, nginx?))
}

#[test]
fn every_202_through_nginx_reaches_the_watchers_once_across_hosts() {
    let Some((nats, nginx)) = prerequisites() else {
        return;
    };
    chaos::cluster::build_binaries();
    let began = Instant::now();
    let seconds: f64 = env("CLUSTER_SECONDS").unwrap_or(30.0);
    let rate: f64 = env("CLUSTER_RATE").unwrap_or(1000.0);
    let kinds = std::env::var("CLUSTER_FAULTS")
        .map(|list| Kind::parse_list(&list))
        .unwrap_or_else(|_| Kind::ALL.to_vec());
    let topology = Topology::start(&nats, &nginx);
    eprintln!("cluster: topology up in {:.1?}", began.elapsed());
    let summary = run(
        topology,
        &nats,
        &kinds,
        Duration::from_secs_f64(seconds),
        rate,
    );
    eprintln!("{}", summary.figures);
    eprintln!("cluster: done in {:.1?}", began.elapsed());
    assert!(
        summary.failures.is_empty(),
        "the promise was broken across hosts ({} findings):\n{}",
        summary.failures.len(),
        summary.failures.join("\n")
    );
}

struct Summary {
    figures: String,
    failures: Vec<String>,
}

/// The `--aggregate` watcher's windows, summed.
#[derive(Default, Debug)]
struct Aggregated {
    windows: usize,
    events: u64,
    gaps: u64,
}

fn run(
    mut topology: Topology,
    nats: &std::path::Path,
    kinds: &[Kind],
    load_for: Duration,
    rate: f64,
) -> Summary {
    let start = Instant::now();
    let client = topology.host("client").clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || client.join())
        .build()
        .expect("a runtime on the client host");
    let bus = topology.bus();
    let active: Vec<u32> = (1..=ACCOUNTS).filter(|a| a % 10 != 0).collect();
    let mut shuffled = active.clone();
    fastrand::Rng::with_seed(7).shuffle(&mut shuffled);
    let some: HashSet<u32> = shuffled[..WATCHED].iter().copied().collect();

    let mut failures = Vec::new();
    let watch = topology.host("watch").clone();
    let mut watchers: Vec<Watcher> = [
        ("W_all", Accounts::All),
        ("W_some", Accounts::Only(some.clone())),
    ]
    .into_iter()
    .map(|(name, accounts)| watch.enter(|| Watcher::start(name, &bus, &accounts, start)))
    .collect();
    for w in &mut watchers {
        if w.wait_live(LIVE_WITHIN).is_none() {
            failures.push(format!(
                "{} did not say it was live within {LIVE_WITHIN:?}",
                w.name
            ));
        }
    }
    let aggregate = Proc::spawn(
        "W_aggregate",
        topology
            .host("agg")
            .command(testkit::binary("client", "busctl"))
            .args(["watch", "--bus", &bus, "--all", "--aggregate", WINDOW])
            .args(["--format", "json"]),
    );
    aggregate.wait_stderr("live (epoch", LIVE_WITHIN);

    let plan = Plan {
        clients: 12,
        pipeline: 4,
        rate: Some(rate),
        hot: some.iter().copied().collect(),
        active,
        seed: 7,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = At::from_duration(start.elapsed());
    eprintln!(
        "cluster {load_start:?}: load starts through nginx at {}",
        topology.front()
    );
    let load = runtime.spawn(load::run(topology.front(), plan, start, stop.clone()));
    let until = Instant::now() + load_for;
    let done = faults::run(&mut topology, nats, kinds, start);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let outcomes = runtime.block_on(load).expect("the load does not panic");
    let load_end = At::from_duration(start.elapsed());
    eprintln!("cluster {load_end:?}: load stopped; waiting for the watchers to settle");
    settle(&outcomes, &some, &watchers);

    let records: Vec<Record> = watchers
        .into_iter()
        .map(|w| w.stop("TERM", start))
        .collect();
    aggregate.signal("TERM");
    let aggregated = read_aggregate(aggregate);
    failures.extend(topology.stop());
    for r in &records {
        if !r.exit.is_some_and(|s| s.success()) {
            failures.push(format!("{} exited with {:?} on SIGTERM", r.name, r.exit));
        }
    }
    check_load(&outcomes, &mut failures);
    let ledger = Ledger::new(&outcomes.requests, Vec::new());
    let mut records = records;
    let orders: Vec<(usize, Vec<_>)> = records
        .iter()
        .map(|r| checker::out_of_order(&ledger, &r.printed.deliveries))
        .collect();
    for (r, (_, late)) in records.iter().zip(&orders) {
        if !late.is_empty() {
            failures.push(format!(
                "{}: {} events arrived after an event of their account sent once they had \
                 been answered 202, e.g. (account, late, overtaking) {:?}",
                r.name,
                late.len(),
                &late[..late.len().min(5)]
            ));
        }
    }
    let verdicts: Vec<Verdict> = records
        .iter_mut()
        .map(|r| ledger.check(&incarnation(r)))
        .collect();
    let accepted = count(&outcomes, Outcome::Accepted);
    for v in &verdicts {
        failures.extend(v.problems.iter().map(|p| format!("{}: {p}", v.name)));
        if !v.uncovered.is_empty() {
            failures.push(format!(
                "{}: {} of {} accepted events never arrived, e.g. {:?}",
                v.name,
                v.uncovered.len(),
                v.expected,
                &v.uncovered[..v.uncovered.len().min(5)]
            ));
        }
        if v.gaps > 0 {
            failures.push(format!(
                "{}: {} gap lines, which no fault of this run explains",
                v.name, v.gaps
            ));
        }
    }
    if aggregated.events != accepted as u64 || aggregated.gaps != 0 {
        failures.push(format!(
            "W_aggregate counted {} events and {} gaps in {} windows; {accepted} were accepted",
            aggregated.events, aggregated.gaps, aggregated.windows
        ));
    }
    let window = (load_start, load_end);
    let mut figures = figures(&outcomes, &records, &verdicts, &aggregated, window);
    for (r, (checked, late)) in records.iter().zip(&orders) {
        figures += &format!(
            "\n  {:<8} order per account: {checked} accepted events checked, {} out of order",
            r.name,
            late.len()
        );
    }
    for line in faults::costs(&done, &outcomes, &records) {
        figures += "\n";
        figures += &line;
    }
    Summary { figures, failures }
}

fn count(outcomes: &Outcomes, outcome: Outcome) -> usize {
    outcomes
        .requests
        .iter()
        .filter(|r| r.outcome == outcome)
        .count()
}

/// What the load saw go wrong: other statuses than 202 and 503, stalls, failed connections
/// (nginx stays up, so a connection to it has no reason to fail).
fn check_load(outcomes: &Outcomes, failures: &mut Vec<String>) {
    if !outcomes.bad_statuses.is_empty() {
        failures.push(format!(
            "{} answers other than 202 or 503, e.g. {:?}",
            outcomes.bad_statuses.len(),
            &outcomes.bad_statuses[..outcomes.bad_statuses.len().min(5)]
        ));
    }
    if outcomes.stalls > 0 {
        failures.push(format!(
            "{} requests got no answer within 30 s",
            outcomes.stalls
        ));
    }
    if !outcomes.conn_errors.is_empty() {
        failures.push(format!(
            "{} connections to nginx failed, e.g. {:?}",
            outcomes.conn_errors.len(),
            &outcomes.conn_errors[..outcomes.conn_errors.len().min(5)]
        ));
    }
}

/// Waits until the watchers have received everything they will.
fn settle(outcomes: &Outcomes, some: &HashSet<u32>, watchers: &[Watcher]) {
    let accepted = |set: Option<&HashSet<u32>>| {
        outcomes
            .requests
            .iter()
            .filter(|r| r.outcome == Outcome::Accepted)
            .filter(|r| set.is_none_or(|s| s.contains(&r.account)))
            .count()
    };
    let expected = [accepted(None), accepted(Some(some))];
    let watchers: Vec<&Watcher> = watchers.iter().collect();
    chaos::watcher::settle(&watchers, &expected, "cluster");
}

fn incarnation(r: &mut Record) -> Incarnation {
    Incarnation {
        name: r.name.clone(),
        accounts: r.accounts.clone(),
        expect: Expect::Everything,
        deliveries: std::mem::take(&mut r.printed.deliveries),
        gaps: r.printed.gaps.clone(),
        nothing_missed: r.said.nothing_missed.clone(),
        bad_lines: r.printed.bad_lines.clone(),
    }
}

/// Sums the `--aggregate` watcher's JSON windows once it has exited.
fn read_aggregate(mut proc: Proc) -> Aggregated {
    let exit = proc.try_wait_exit(Duration::from_secs(15));
    let mut sum = Aggregated::default();
    while let Ok(line) = proc.stdout.recv_timeout(Duration::from_millis(500)) {
        let Ok(window) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        sum.windows += 1;
        sum.events += window["events"].as_u64().unwrap_or(0);
        sum.gaps += window["gaps"].as_u64().unwrap_or(0);
    }
    if exit.is_none_or(|s| !s.success()) {
        eprintln!("cluster: W_aggregate exit {exit:?}");
    }
    sum
}

fn figures(
    outcomes: &Outcomes,
    records: &[Record],
    verdicts: &[Verdict],
    aggregated: &Aggregated,
    window: (At, At),
) -> String {
    let secs = (window.1.as_secs() - window.0.as_secs()).max(0.001);
    let accepted = count(outcomes, Outcome::Accepted);
    let mut lines = vec![format!(
        "cluster: {secs:.1} s of load through nginx: {} requests, 202 {accepted}, 503 {}, \
         unknown {}, other {}; {:.0} accepted/s",
        outcomes.requests.len(),
        count(outcomes, Outcome::Refused) - outcomes.bad_statuses.len(),
        count(outcomes, Outcome::Unknown),
        outcomes.bad_statuses.len(),
        accepted as f64 / secs,
    )];
    for (v, r) in verdicts.iter().zip(records) {
        lines.push(format!(
            "  {:<8} delivered {:>7} of {:>7} owed; duplicates {}, gaps {}, missing {}, \
             longest outage {:.1} s",
            v.name,
            v.delivered,
            v.expected,
            v.duplicates,
            v.gaps,
            v.uncovered.len(),
            longest_silence(r, window),
        ));
    }
    lines.push(format!(
        "  W_aggregate {} events in {} windows of {WINDOW}, gaps {}",
        aggregated.events, aggregated.windows, aggregated.gaps
    ));
    lines.join("\n")
}

/// The longest stretch without a line on a watcher's stdout while the load ran.
pub fn longest_silence(r: &Record, (from, to): (At, At)) -> f64 {
    let from = from.max(r.live.unwrap_or(from));
    let to = to.min(r.stopped);
    let tail = r.printed.last_line.map_or(from, |l| l.max(from));
    r.printed
        .silences
        .iter()
        .map(|&(a, b)| (a.max(from), b.min(to)))
        .chain([(tail, to)])
        .filter(|(a, b)| a < b)
        .map(|(a, b)| b.as_secs() - a.as_secs())
        .fold(0.0, f64::max)
}
