//! The faults: drawn from the seeded RNG, one at a time (each finishes, restarts included,
//! before the pause to the next begins), logged with their time.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use super::checker::{Accounts, At};
use super::cluster::Cluster;
use super::watcher::{Record, Watcher};

/// How long a (re)started watcher may take to say it is live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// busd SIGTERM and restart: graceful, Goodbye sent, nothing may be lost.
    BusdTerm,
    /// busd SIGKILL and restart: a crash, losses must be reported as gaps.
    BusdKill,
    /// busd SIGSTOP for 0.5-3 s, then SIGCONT.
    BusdFreeze,
    /// ingest SIGTERM and restart: it drains first and must exit 0.
    IngestTerm,
    /// The restarted watcher, SIGKILL and start again.
    WatcherKill,
    /// The restarted watcher, SIGTERM and start again.
    WatcherTerm,
    /// JetStream: SIGKILL of the stream's leader node, restarted a second later.
    LeaderKill,
    /// JetStream: every node stopped for 5 s, then started again.
    NatsOutage,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::BusdTerm,
        Kind::BusdKill,
        Kind::BusdFreeze,
        Kind::IngestTerm,
        Kind::WatcherKill,
        Kind::WatcherTerm,
    ];

    /// The faults of a JetStream run: busd's have no counterpart there.
    pub const JETSTREAM: [Kind; 5] = [
        Kind::LeaderKill,
        Kind::NatsOutage,
        Kind::IngestTerm,
        Kind::WatcherKill,
        Kind::WatcherTerm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::BusdTerm => "busd-term",
            Kind::BusdKill => "busd-kill",
            Kind::BusdFreeze => "busd-freeze",
            Kind::IngestTerm => "ingest-term",
            Kind::WatcherKill => "watcher-kill",
            Kind::WatcherTerm => "watcher-term",
            Kind::LeaderKill => "leader-kill",
            Kind::NatsOutage => "nats-outage",
        }
    }

    /// `CHAOS_FAULTS`: `none`, or a comma list of names; unset means all kinds.
    pub fn parse_list(list: &str) -> Vec<Kind> {
        if list.trim() == "none" {
            return Vec::new();
        }
        list.split(',')
            .map(|name| {
                Kind::ALL
                    .into_iter()
                    .chain(Kind::JETSTREAM)
                    .find(|k| k.name() == name.trim())
                    .unwrap_or_else(|| panic!("CHAOS_FAULTS: unknown fault {name:?}"))
            })
            .collect()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault as it happened.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub kind: Kind,
    pub at: At,
    /// When everything was running again.
    pub end: At,
}

/// The restarted watcher: its running incarnation and the finished ones.
pub struct Restarted {
    pub name: &'static str,
    pub bus: String,
    pub accounts: Accounts,
    pub current: Option<Watcher>,
    pub finished: Vec<Record>,
    pub incarnations: usize,
    pub failures: Vec<String>,
}

impl Restarted {
    pub fn start(name: &'static str, bus: &str, accounts: HashSet<u32>, start: Instant) -> Self {
        let mut restarted = Restarted {
            name,
            bus: bus.to_owned(),
            accounts: Accounts::Only(accounts),
            current: None,
            finished: Vec::new(),
            incarnations: 0,
            failures: Vec::new(),
        };
        restarted.spawn(start);
        restarted
    }

    fn spawn(&mut self, start: Instant) {
        self.incarnations += 1;
        let name = format!("{}#{}", self.name, self.incarnations);
        let mut watcher = Watcher::start(&name, &self.bus, &self.accounts, start);
        if watcher.wait_live(LIVE_WITHIN).is_none() {
            let message = format!("{name} did not say it was live within {LIVE_WITHIN:?}");
            eprintln!("chaos: FAILURE {message}");
            self.failures.push(message);
        }
        self.current = Some(watcher);
    }

    /// Stops the running incarnation with `signal` and starts the next.
    pub fn restart(&mut self, signal: &str, start: Instant) {
        self.stop(signal, start);
        self.spawn(start);
    }

    /// Stops the running incarnation (at the end of the run, or for a restart).
    pub fn stop(&mut self, signal: &str, start: Instant) {
        if let Some(watcher) = self.current.take() {
            self.finished.push(watcher.stop(signal, start));
        }
    }
}

/// The seeded sequence of (pause, fault, freeze length).
pub struct Schedule {
    rng: fastrand::Rng,
    kinds: Vec<Kind>,
}

impl Schedule {
    pub fn new(seed: u64, kinds: Vec<Kind>) -> Schedule {
        Schedule {
            rng: fastrand::Rng::with_seed(seed),
            kinds,
        }
    }

    fn next(&mut self) -> (Duration, Option<Kind>, Duration) {
        let pause = Duration::from_millis(self.rng.u64(1000..=4000));
        let kind = (!self.kinds.is_empty()).then(|| self.kinds[self.rng.usize(..self.kinds.len())]);
        let freeze = Duration::from_millis(self.rng.u64(500..=3000));
        (pause, kind, freeze)
    }

    /// Injects faults until `until` (the end of the load), returning what was done.
    pub fn run(
        &mut self,
        cluster: &mut Cluster,
        restarted: &mut Restarted,
        start: Instant,
        until: Instant,
    ) -> Vec<Done> {
        let mut done = Vec::new();
        loop {
            let (pause, kind, freeze) = self.next();
            let left = until.saturating_duration_since(Instant::now());
            std::thread::sleep(pause.min(left));
            let Some(kind) = kind.filter(|_| Instant::now() < until) else {
                if Instant::now() >= until {
                    return done;
                }
                continue;
            };
            let at = At::from_duration(start.elapsed());
            eprintln!("chaos {at:?}: fault {kind}{}", freeze_note(kind, freeze));
            inject(kind, freeze, cluster, restarted, start);
            let end = At::from_duration(start.elapsed());
            eprintln!(
                "chaos {end:?}: fault {kind} done in {:.1}s",
                end.as_secs() - at.as_secs()
            );
            done.push(Done { kind, at, end });
        }
    }
}

fn freeze_note(kind: Kind, freeze: Duration) -> String {
    match kind {
        Kind::BusdFreeze => format!(" for {freeze:?}"),
        _ => String::new(),
    }
}

fn inject(
    kind: Kind,
    freeze: Duration,
    cluster: &mut Cluster,
    restarted: &mut Restarted,
    start: Instant,
) {
    match kind {
        Kind::BusdTerm => cluster.busd_terminate_restart(),
        Kind::BusdKill => cluster.busd_kill_restart(),
        Kind::BusdFreeze => cluster.busd_freeze(freeze),
        Kind::IngestTerm => cluster.ingest_terminate_restart(),
        Kind::WatcherKill => restarted.restart("KILL", start),
        Kind::WatcherTerm => restarted.restart("TERM", start),
        Kind::LeaderKill => cluster.stream_leader_kill_restart(),
        Kind::NatsOutage => cluster.nats_outage(),
    }
}
