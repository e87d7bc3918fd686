//! One run: one seed, the real processes, the load, the faults, then the check.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::checker::{Accounts, At, Expect, Incarnation, Ledger, Missing, Outcome, Verdict};
use super::cluster::Cluster;
use super::load::{self, ConnError, Outcomes, Plan};
use super::schedule::{Done, Kind, LIVE_WITHIN, Restarted, Schedule};
use super::watcher::{Record, Watcher};

/// Accounts ingest seeds: 1..=1000, every tenth inactive.
const ACCOUNTS: u32 = 1000;

/// Size of each watched set.
const WATCHED: usize = 50;

/// Settling: the stream is done when nothing new arrived for this long...
const SETTLED: Duration = Duration::from_secs(5);
/// ...or, once every watcher has its expected count, for this long.
const SETTLED_COMPLETE: Duration = Duration::from_secs(1);
/// Missing events shown per finding.
const EXAMPLES: usize = 20;

/// Give up settling after this long.
const SETTLE_AT_MOST: Duration = Duration::from_secs(120);

/// How the run is shaped (from the environment, see the test's doc).
#[derive(Clone)]
pub struct Config {
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
    let mut running = start(&sets, &runtime);
    let loaded = load_under_faults(&mut running, &sets, seed, config, &runtime);
    settle(&loaded.outcomes, &sets, [&running.w_all, &running.w_some]);
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
fn start(sets: &Sets, runtime: &tokio::runtime::Runtime) -> Running {
    let start = Instant::now();
    let mut failures = Vec::new();
    let cluster = Cluster::start();
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
    let count = || watchers.map(|w| w.delivered.load(Ordering::Relaxed));
    let began = Instant::now();
    let mut last = count();
    let mut since = Instant::now();
    while began.elapsed() < SETTLE_AT_MOST {
        std::thread::sleep(Duration::from_millis(200));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
            continue;
        }
        let complete = now.iter().zip(expected).all(|(&n, e)| n >= e);
        if since.elapsed() >= SETTLED || (complete && since.elapsed() >= SETTLED_COMPLETE) {
            return;
        }
    }
    eprintln!("chaos: the watchers were still receiving after {SETTLE_AT_MOST:?}");
}

/// Checks and figures over one finished run.
struct Report<'a> {
    seed: u64,
    outcomes: &'a Outcomes,
    faults: &'a [Done],
    /// When the load ran.
    window: (At, At),
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

impl Report<'_> {
    fn check(
        &self,
        records: &[Record],
        finished: &[Record],
        verdicts: &[Verdict],
        failures: &mut Vec<String>,
    ) {
        self.check_load(failures);
        for r in records.iter().chain(finished.last()) {
            if !r.exit.is_some_and(|s| s.success()) {
                failures.push(format!("{} exited with {:?} on SIGTERM", r.name, r.exit));
            }
        }
        for verdict in verdicts {
            self.describe(verdict, failures);
        }
    }

    /// Statuses, stalls and connection errors the load saw.
    fn check_load(&self, failures: &mut Vec<String>) {
        let out = self.outcomes;
        if !out.bad_statuses.is_empty() {
            let examples: Vec<String> = out
                .bad_statuses
                .iter()
                .take(5)
                .map(|(at, status, body)| format!("{status} {body} at {at:?}"))
                .collect();
            failures.push(format!(
                "{} answers other than 202 or 503, e.g. {}",
                out.bad_statuses.len(),
                examples.join("; ")
            ));
        }
        if out.stalls > 0 {
            failures.push(format!(
                "{} requests got no answer within 30 s (ingest stalled)",
                out.stalls
            ));
        }
        let unexpected: Vec<&ConnError> = out
            .conn_errors
            .iter()
            .filter(|e| !self.ingest_restarted_during(e))
            .collect();
        if !unexpected.is_empty() {
            let examples: Vec<String> = unexpected
                .iter()
                .take(5)
                .map(|e| format!("{} at {:?} (opened {:?})", e.what, e.at, e.opened))
                .collect();
            failures.push(format!(
                "{} HTTP connections failed though ingest was not restarted while they were \
                 open, e.g. {}",
                unexpected.len(),
                examples.join("; ")
            ));
        }
    }

    /// Whether an ingest restart overlapped the failed connection's life: then the error
    /// (and its requests' unknown outcome) is expected.
    fn ingest_restarted_during(&self, e: &ConnError) -> bool {
        self.faults
            .iter()
            .any(|f| f.kind == Kind::IngestTerm && f.at <= e.at && e.opened <= f.end)
    }

    fn describe(&self, v: &Verdict, failures: &mut Vec<String>) {
        for problem in &v.problems {
            failures.push(format!("{}: {problem}", v.name));
        }
        if !v.lies.is_empty() {
            failures.push(format!(
                "{}: said \"nothing was missed\" after the 202 of {} events that reached busd \
                 and are missing with no gap; {}",
                v.name,
                v.lies.len(),
                self.examples(&v.lies)
            ));
        }
        if !v.uncovered.is_empty() {
            failures.push(format!(
                "{}: {} of {} accepted events missing with no gap covering them, {} of which \
                 provably reached busd ({} more were covered by gaps); {}",
                v.name,
                v.uncovered.len(),
                v.expected,
                v.reached_busd,
                v.covered_missing,
                self.examples(&v.uncovered)
            ));
        }
    }

    /// Up to [`EXAMPLES`] missing events spread over the run, and the faults around them.
    fn examples(&self, missing: &[Missing]) -> String {
        let (Some(first), Some(last)) = (missing.first(), missing.last()) else {
            return String::new();
        };
        let step = missing.len().div_ceil(EXAMPLES);
        let examples: Vec<String> = missing
            .iter()
            .step_by(step)
            .map(|m| {
                format!(
                    "account {} {:?} sent {:?} 202 {:?}",
                    m.account, m.key, m.sent, m.answered
                )
            })
            .collect();
        let around = Duration::from_secs(10);
        let near: Vec<String> = self
            .faults
            .iter()
            .filter(|f| f.end.plus(around) >= first.sent && f.at <= last.answered.plus(around))
            .map(|f| format!("{}@{:?}", f.kind, f.at))
            .collect();
        format!(
            "their 202s from {:?} to {:?}; faults from 10 s before to 10 s after: {}; e.g. {}",
            first.answered,
            last.answered,
            if near.is_empty() {
                "none".into()
            } else {
                near.join(", ")
            },
            examples.join(", ")
        )
    }

    fn figures(&self, records: &[Record], finished: &[Record], verdicts: &[Verdict]) -> String {
        let out = self.outcomes;
        let count = |o: Outcome| out.requests.iter().filter(|r| r.outcome == o).count();
        let secs = (self.window.1.as_secs() - self.window.0.as_secs()).max(0.001);
        let accepted = count(Outcome::Accepted);
        let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
        for f in self.faults {
            *by_kind.entry(f.kind).or_default() += 1;
        }
        let faults: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let mut lines = vec![
            format!(
                "CHAOS_SEED={}: {:.1} s of load: {} requests, 202 {}, 503 {}, unknown {}, \
                 other {}; {:.0} events/s, {:.2} MB/s of data accepted",
                self.seed,
                secs,
                out.requests.len(),
                accepted,
                count(Outcome::Refused) - out.bad_statuses.len(),
                count(Outcome::Unknown),
                out.bad_statuses.len(),
                accepted as f64 / secs,
                out.accepted_bytes as f64 / secs / 1e6,
            ),
            format!(
                "  faults: {}",
                if faults.is_empty() {
                    "none".into()
                } else {
                    faults.join(", ")
                }
            ),
        ];
        let all: Vec<&Record> = records.iter().chain(finished).collect();
        for (v, r) in verdicts.iter().zip(&all) {
            lines.push(format!(
                "  {:<15} delivered {:>8} of {:>8} owed; duplicates {}, gaps {}, \
                 covered-missing {}, uncovered-missing {} (reached busd {}, after \
                 \"nothing was missed\" {}), longest silence {:.1}s",
                v.name,
                v.delivered,
                v.expected,
                v.duplicates,
                v.gaps,
                v.covered_missing,
                v.uncovered.len(),
                v.reached_busd,
                v.lies.len(),
                self.longest_silence(r),
            ));
        }
        lines.join("\n")
    }

    /// The longest stretch without a stdout line while the load ran and the watcher lived.
    fn longest_silence(&self, r: &Record) -> f64 {
        let (from, to) = (
            self.window.0.max(r.live.unwrap_or(self.window.0)),
            self.window.1.min(r.stopped),
        );
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
}
