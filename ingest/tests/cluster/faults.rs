//! The fault schedule of the cluster test: one fault at a time under the load, each followed
//! by a pause so its cost can be told apart from the next one's, and what each cost.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::chaos::checker::{At, Outcome};
use crate::chaos::load::Outcomes;
use crate::chaos::watcher::Record;
use crate::topology::Topology;
use testkit::netns::NetemError;

/// Load before the first fault.
pub const LEAD: Duration = Duration::from_secs(3);
/// Load after each fault before the next one (and after the last, before the load stops).
pub const PAUSE: Duration = Duration::from_secs(5);
/// How long an app host stays cut off.
const CUT_FOR: Duration = Duration::from_secs(10);
/// How long a killed stream leader stays down.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// How long an app host's packets are delayed and dropped, by how much and how many.
const NETEM_FOR: Duration = Duration::from_secs(8);
const NETEM_DELAY: Duration = Duration::from_millis(50);
const NETEM_LOSS_PERCENT: f64 = 1.0;
/// How long a gracefully stopped ingest stays down before it is started again.
const STOPPED_FOR: Duration = Duration::from_secs(3);
/// How long the nodes may take to agree on the stream's leader before the kill.
const LEADER_WITHIN: Duration = Duration::from_secs(15);

/// The faults, in the order they are injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// app1's link down for 10 s, then up again.
    LinkCut,
    /// SIGKILL of the JetStream node leading the stream, restarted 1 s later.
    LeaderKill,
    /// 50 ms delay and 1% loss on everything app2 sends, for 8 s (when the kernel has netem).
    Netem,
    /// PostgreSQL stopped (fast: clients cut off) and started again.
    PgRestart,
    /// SIGTERM to ingest-3: it drains and exits 0, stays down for 3 s while nginx uses the
    /// other two, and is started again.
    IngestStop,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::LinkCut,
        Kind::LeaderKill,
        Kind::Netem,
        Kind::PgRestart,
        Kind::IngestStop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::LinkCut => "link-cut",
            Kind::LeaderKill => "leader-kill",
            Kind::Netem => "netem",
            Kind::PgRestart => "pg-restart",
            Kind::IngestStop => "ingest-stop",
        }
    }

    /// `none`, or a comma list of fault names (`CLUSTER_FAULTS`).
    pub fn parse_list(list: &str) -> Vec<Kind> {
        if list.trim() == "none" {
            return Vec::new();
        }
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Kind::ALL
                    .into_iter()
                    .find(|k| k.name() == name)
                    .unwrap_or_else(|| {
                        panic!(
                            "unknown fault {name:?}; known: {}",
                            Kind::ALL.map(Kind::name).join(", ")
                        )
                    })
            })
            .collect()
    }
}

/// A fault as it happened.
pub struct Done {
    pub kind: Kind,
    pub at: At,
    /// When everything was back (the fault's own recovery included).
    pub end: At,
    /// What was hit, or why the fault could not be injected.
    pub note: String,
}

/// Injects `kinds` one after another, with [`LEAD`] before and [`PAUSE`] after each.
pub fn run(topology: &mut Topology, nats: &Path, kinds: &[Kind], start: Instant) -> Vec<Done> {
    let now = || At::from_duration(start.elapsed());
    std::thread::sleep(LEAD);
    let mut done = Vec::new();
    for &kind in kinds {
        let at = now();
        eprintln!("cluster {at:?}: fault {}", kind.name());
        let note = match kind {
            Kind::LinkCut => link_cut(topology),
            Kind::LeaderKill => leader_kill(topology, nats),
            Kind::Netem => netem(topology),
            Kind::PgRestart => pg_restart(topology),
            Kind::IngestStop => ingest_stop(topology),
        };
        let end = now();
        eprintln!("cluster {end:?}: fault {} over: {note}", kind.name());
        done.push(Done {
            kind,
            at,
            end,
            note,
        });
        std::thread::sleep(PAUSE);
    }
    done
}

fn link_cut(topology: &Topology) -> String {
    let host = topology.app(0);
    host.cut();
    std::thread::sleep(CUT_FOR);
    host.restore();
    format!("{} ({}) cut off for {CUT_FOR:?}", host.name(), host.addr())
}

fn leader_kill(topology: &mut Topology, nats: &Path) -> String {
    let deadline = Instant::now() + LEADER_WITHIN;
    let leader = loop {
        if let Some(leader) = topology.stream_leader() {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not agree on the stream's leader within {LEADER_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    topology.kill_nats(leader);
    std::thread::sleep(DOWN_FOR);
    topology.restart_nats(nats, leader);
    format!(
        "n{} on {} led the stream: SIGKILL, restarted after {DOWN_FOR:?}",
        leader + 1,
        topology.app(leader).name()
    )
}

fn netem(topology: &Topology) -> String {
    let host = topology.app(1);
    match host.netem(NETEM_DELAY, NETEM_LOSS_PERCENT) {
        Ok(()) => {
            std::thread::sleep(NETEM_FOR);
            host.clear_netem();
            format!(
                "{}: {NETEM_DELAY:?} delay and {NETEM_LOSS_PERCENT}% loss for {NETEM_FOR:?}",
                host.name()
            )
        }
        Err(NetemError::Unavailable(why)) => {
            let note = format!("NOT INJECTED: this kernel has no netem ({why})");
            eprintln!("cluster: netem fault skipped: {note}");
            note
        }
        Err(other) => panic!("{other}"),
    }
}

fn pg_restart(topology: &mut Topology) -> String {
    topology.pg.restart();
    format!(
        "PostgreSQL on {} stopped (fast) and started",
        topology.pg.addr()
    )
}

fn ingest_stop(topology: &mut Topology) -> String {
    let began = Instant::now();
    topology.stop_ingest(2);
    let drained = began.elapsed();
    std::thread::sleep(STOPPED_FOR);
    topology.restart_ingest(2);
    format!(
        "ingest-3 on {} stopped with SIGTERM (drained in {:.1} s), down {STOPPED_FOR:?}, \
         ready again {:.1} s after the SIGTERM",
        topology.app(2).name(),
        drained.as_secs_f64(),
        began.elapsed().as_secs_f64()
    )
}

/// What a fault cost, from its start to [`PAUSE`] after its end: requests sent then, their
/// 503s and unknown outcomes, the slowest answer, and each watcher's longest silence.
pub fn costs(done: &[Done], outcomes: &Outcomes, records: &[Record]) -> Vec<String> {
    done.iter()
        .map(|f| {
            let to = f.end.plus(PAUSE);
            let during: Vec<_> = outcomes
                .requests
                .iter()
                .filter(|r| r.sent >= f.at && r.sent <= to)
                .collect();
            let refused = during
                .iter()
                .filter(|r| r.outcome == Outcome::Refused)
                .count();
            let unknown = during
                .iter()
                .filter(|r| r.outcome == Outcome::Unknown)
                .count();
            let slowest = during
                .iter()
                .map(|r| r.answered.as_secs() - r.sent.as_secs())
                .fold(0.0, f64::max);
            let silences: Vec<String> = records
                .iter()
                .map(|r| format!("{} {:.1} s", r.name, crate::longest_silence(r, (f.at, to))))
                .collect();
            format!(
                "  {:<11} at {:?} for {:.1} s ({}): {} requests sent until {:.0} s after, 503 {}, \
                 unknown {}, slowest answer {:.2} s; longest watcher silence: {}",
                f.kind.name(),
                f.at,
                f.end.as_secs() - f.at.as_secs(),
                f.note,
                during.len(),
                PAUSE.as_secs_f64(),
                refused,
                unknown,
                slowest,
                silences.join(", ")
            )
        })
        .collect()
}
