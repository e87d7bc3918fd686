//! One run: one seed, the real processes, the load, the faults, then the check.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::checker::{Accounts, At, Expect, Incarnation, Ledger, Outcome, Verdict};
use super::cluster::{Bus, Cluster};
use super::load::{self, Outcomes, Plan};
use super::report::Report;
use super::schedule::{Done, Kind, LIVE_WITHIN, Restarted, Schedule};
use super::watcher::{self, Record, Watcher};

/// Accounts ingest seeds: 1..=1000, every tenth inactive.
const ACCOUNTS: u32 = 1000;

/// Size of each watched set.
const WATCHED: usize = 50;

/// How the run is shaped (from the environment, see the test's doc).
#[derive(Clone)]
pub struct Config {
    pub bus: Bus,
    pub load: Duration,
    pub faults: Vec<Kind>,
    pub rate: Option<f64>,
    pub clients: usize,
    pub pipeline: usize,
}

/// What a run found.
pub struct Summary {
    pub figures: String,
    pub failures: Vec<String>,
}

/// The three watchers' accounts, drawn from the seed.
struct Sets {
    active: Vec<u32>,
    some: HashSet<u32>,
    restarted: HashSet<u32>,
}

fn sets(seed: u64) -> Sets {
    let active: Vec<u32> = (1..=ACCOUNTS).filter(|a| a % 10 != 0).collect();
    let mut shuffled = active.clone();
    fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
    Sets {
        some: shuffled[..WATCHED].iter().copied().collect(),
        restarted: shuffled[WATCHED..2 * WATCHED].iter().copied().collect(),
        active,
    }
}

/// The processes of a run while it lasts.
struct Running {
    start: Instant,
    cluster: Cluster,
    w_all: Watcher,
    w_some: Watcher,
    restarted: Restarted,
    failures: Vec<String>,
}

/// What the load phase produced.
struct Loaded {
    outcomes: Outcomes,
    faults: Vec<Done>,
    /// When the load ran.
    window: (At, At),
}

pub fn run(seed: u64, config: &Config) -> Summary {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the load");
    let sets = sets(seed);
    let mut running = start(&sets, config.bus, &runtime);
    let loaded = load_under_faults(&mut running, &sets, seed, config, &runtime);
    settle(&loaded.outcomes, &sets, [&running.w_all, &running.w_some]);
    if let Some(placement) = running.cluster.placement() {
        eprintln!("chaos: the stream and the watchers' consumers after settling:\n{placement}");
    }
    let (mut records, mut finished, mut failures) = stop_all(running);
    let report = Report {
        seed,
        outcomes: &loaded.outcomes,
        faults: &loaded.faults,
        window: loaded.window,
    };
    let verdicts = verdicts(&loaded, &mut records, &mut finished);
    report.check(&records, &finished, &verdicts, &mut failures);
    Summary {
        figures: report.figures(&records, &finished, &verdicts),
        failures: failures
            .into_iter()
            .map(|f| format!("CHAOS_SEED={seed}: {f}"))
            .collect(),
    }
}

/// Stops the watchers, then ingest and busd (checking their exits); returns the fixed
/// watchers' records, the restarted one's, and the failures so far.
fn stop_all(running: Running) -> (Vec<Record>, Vec<Record>, Vec<String>) {
    let Running {
        start,
        cluster,
        w_all,
        w_some,
        mut restarted,
        mut failures,
    } = running;
    let records = vec![w_all.stop("TERM", start), w_some.stop("TERM", start)];
    restarted.stop("TERM", start);
    failures.append(&mut restarted.failures);
    failures.extend(cluster.stop());
    eprintln!(
        "chaos {:?}: processes stopped; checking",
        At::from_duration(start.elapsed())
    );
    (records, restarted.finished, failures)
}

/// busd, ingest (ready: accounts loaded, busd connected) and the three watchers (live).
fn start(sets: &Sets, bus: Bus, runtime: &tokio::runtime::Runtime) -> Running {
    let start = Instant::now();
    let mut failures = Vec::new();
    let cluster = Cluster::start(bus);
    runtime.block_on(wait_ready(cluster.http));
    let bus = cluster.bus.clone();
    let w_all = start_watcher("W_all", &bus, Accounts::All, start, &mut failures);
    let some = Accounts::Only(sets.some.clone());
    let w_some = start_watcher("W_some", &bus, some, start, &mut failures);
    let restarted = Restarted::start("W_restarted", &bus, sets.restarted.clone(), start);
    Running {
        start,
        cluster,
        w_all,
        w_some,
        restarted,
        failures,
    }
}

/// Runs the load for `config.load` while the schedule injects faults.
fn load_under_faults(
    running: &mut Running,
    sets: &Sets,
    seed: u64,
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> Loaded {
    let start = running.start;
    let plan = Plan {
        clients: config.clients,
        pipeline: config.pipeline,
        rate: config.rate,
        hot: sets.some.iter().chain(&sets.restarted).copied().collect(),
        active: sets.active.clone(),
        seed,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load_start = At::from_duration(start.elapsed());
    eprintln!("chaos {load_start:?}: load starts (CHAOS_SEED={seed})");
    let http = running.cluster.http;
    let load = runtime.spawn(load::run(http, plan, start, stop.clone()));
    let until = Instant::now() + config.load;
    let faults = Schedule::new(seed, config.faults.clone()).run(
        &mut running.cluster,
        &mut running.restarted,
        start,
        until,
    );
    stop.store(true, Ordering::Relaxed);
    let outcomes = runtime.block_on(load).expect("the load does not panic");
    let load_end = At::from_duration(start.elapsed());
    eprintln!("chaos {load_end:?}: load stopped; waiting for the watchers to settle");
    Loaded {
        outcomes,
        faults,
        window: (load_start, load_end),
    }
}

fn start_watcher(
    name: &str,
    bus: &str,
    accounts: Accounts,
    start: Instant,
    failures: &mut Vec<String>,
) -> Watcher {
    let mut watcher = Watcher::start(name, bus, &accounts, start);
    if watcher.wait_live(LIVE_WITHIN).is_none() {
        failures.push(format!(
            "{name} did not say it was live within {LIVE_WITHIN:?}"
        ));
    }
    watcher
}

/// Waits for ingest's /readyz: accounts loaded and busd connected.
async fn wait_ready(http: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while testkit::http::get(http, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the watchers have received everything they will.
fn settle(outcomes: &Outcomes, sets: &Sets, watchers: [&Watcher; 2]) {
    let accepted = |set: Option<&HashSet<u32>>| {
        outcomes
            .requests
            .iter()
            .filter(|r| r.outcome == Outcome::Accepted)
            .filter(|r| set.is_none_or(|s| s.contains(&r.account)))
            .count()
    };
    let expected = [accepted(None), accepted(Some(&sets.some))];
    watcher::settle(&watchers, &expected, "chaos");
}

/// The checker's verdict on every watcher incarnation: the fixed watchers, then the
/// restarted one's incarnations in order. Each record's deliveries are handed over and
/// dropped once checked, so only one watcher's are held twice at a time.
fn verdicts(loaded: &Loaded, records: &mut [Record], finished: &mut [Record]) -> Vec<Verdict> {
    let restarts = loaded
        .faults
        .iter()
        .filter(|f| f.kind == Kind::IngestTerm)
        .map(|f| (f.at, f.end))
        .collect();
    let ledger = Ledger::new(&loaded.outcomes.requests, restarts);
    let last = finished.len().saturating_sub(1);
    let fixed = records.iter_mut().map(|r| (r, Expect::Everything));
    let restarted = finished.iter_mut().enumerate().map(|(i, r)| {
        let expect = match r.live {
            None => Expect::Nothing,
            Some(live) => Expect::Between {
                live,
                stopped: (i < last).then_some(r.stopped),
            },
        };
        (r, expect)
    });
    fixed
        .chain(restarted)
        .map(|(r, expect)| ledger.check(&incarnation(r, expect)))
        .collect()
}

/// The checker's view of a watcher incarnation, taking its deliveries.
fn incarnation(r: &mut Record, expect: Expect) -> Incarnation {
    Incarnation {
        name: r.name.clone(),
        accounts: r.accounts.clone(),
        expect,
        deliveries: std::mem::take(&mut r.printed.deliveries),
        gaps: r.printed.gaps.clone(),
        nothing_missed: r.said.nothing_missed.clone(),
        bad_lines: r.printed.bad_lines.clone(),
    }
}
