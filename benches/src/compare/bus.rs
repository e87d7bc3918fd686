//! Pub/sub: busd against redis-server pub/sub and two nats-servers (Debian's, and the current
//! release `.ci/nats-server` installs), in the three shapes of the targets, with 64-byte
//! payloads (the filtered shape twice: a batch's accounts in order, and interleaved so that
//! busd cannot pass a subscriber its events as runs). Each system gets a fresh server per
//! shape and round (the systems take turns; a row is its median round) and the same kind of
//! raw client: a pipelining publisher with a window of 8 batches of 512, and subscribers that
//! count messages without decoding them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use protocol::Filter;
use serde::Serialize;

use super::tools::{ensure, ensure_at, free_port, spawn_listening};
use super::{Budget, nats, redis, rounds};
use crate::bus_load::{self, Shape};
use crate::process::{Running, release_binary};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    pub shape: String,
    pub published_per_sec: Option<f64>,
    pub delivered_per_sec: Option<f64>,
    /// busd: events reported missing in Gap frames; Redis and NATS: events published but
    /// never received by the subscribers that should have had them.
    pub lost: Option<u64>,
    pub note: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Busd,
    Redis,
    Nats,
}

/// One server the shapes run against: its row label and its program, or why it has none.
struct System {
    kind: Kind,
    name: String,
    program: Result<PathBuf, String>,
}

/// Where Debian's nats-server package puts the program.
const DEBIAN_NATS: &str = "/usr/sbin/nats-server";

impl System {
    /// busd, Redis, Debian's nats-server and the pinned current one (`.ci/nats-server`),
    /// found or installed once per run. The NATS rows carry the version each server reports.
    fn all() -> Vec<System> {
        let debian = ensure_at(Path::new(DEBIAN_NATS), "nats-server");
        let debian_name = match debian.as_deref().ok().and_then(testkit::nats::version) {
            Some(v) => format!("nats-server {v} (Debian)"),
            None => "nats-server (Debian)".to_owned(),
        };
        let pinned = testkit::nats::server();
        let pinned_version = pinned
            .as_deref()
            .and_then(testkit::nats::version)
            .unwrap_or_else(|| testkit::nats::VERSION.to_owned());
        vec![
            System::busd(),
            System {
                kind: Kind::Redis,
                name: "redis-server pub/sub".into(),
                program: ensure("redis-server", "redis-server"),
            },
            System {
                kind: Kind::Nats,
                name: debian_name,
                program: debian,
            },
            System {
                kind: Kind::Nats,
                name: format!("nats-server {pinned_version}"),
                program: pinned.ok_or_else(|| {
                    format!(
                        "skipped: nats-server {} not installed (.ci/nats-server installs it)",
                        testkit::nats::VERSION
                    )
                }),
            },
        ]
    }

    /// busd's release build.
    fn busd() -> System {
        System {
            kind: Kind::Busd,
            name: "busd".into(),
            program: release_binary("busd", "busd").map_err(|e| e.to_string()),
        }
    }

    /// Starts a fresh server on a free loopback port.
    fn start(&self) -> Result<(Running, String), String> {
        let program = self.program.as_ref().map_err(Clone::clone)?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(program);
        match self.kind {
            Kind::Busd => {
                command.args(["--listen", &addr]).env("RUST_LOG", "warn");
            }
            Kind::Redis => {
                command.args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
            }
            Kind::Nats => {
                command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            }
        }
        let running = spawn_listening(&mut command, &addr, &self.name)?;
        Ok((running, addr))
    }
}

pub fn run(budget: Budget) -> Vec<Row> {
    let shapes = [
        Shape::one_to_one(),
        Shape::one_to_ten(),
        Shape::filtered(),
        Shape::filtered_interleaved(),
    ];
    run_shapes(budget, &shapes, &System::all())
}

/// Consumer groups on busd: a group of 4 members against 4 plain subscribers of disjoint
/// account sets, the same work split by hand; both decode every frame, the group's members
/// acknowledge each.
pub fn run_groups(budget: Budget) -> Vec<Row> {
    let shapes = [Shape::four_disjoint(), Shape::group_of_four()];
    run_shapes(budget, &shapes, &[System::busd()])
}

/// Every shape against every system, each on a fresh server, in the budget's rounds: the
/// systems take turns within a round, and each row is its median round ([`rounds`]).
fn run_shapes(budget: Budget, shapes: &[Shape], systems: &[System]) -> Vec<Row> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return vec![skipped("busd", "-", &e.to_string())],
    };
    let measure = Duration::from_secs(u64::from(budget.seconds));
    let warmup = Duration::from_millis(if budget.smoke { 300 } else { 1000 });
    let mut rows = Vec::new();
    for shape in shapes {
        let mut runs: Vec<Vec<Row>> = systems.iter().map(|_| Vec::new()).collect();
        for round in 0..budget.rounds as usize {
            for i in rounds::turns(systems.len(), round) {
                let system = &systems[i];
                let row = match system.start() {
                    Ok((server, addr)) => {
                        let row =
                            runtime.block_on(measure_one(system, &addr, shape, warmup, measure));
                        drop(server);
                        row
                    }
                    Err(note) => skipped(&system.name, shape.name, &note),
                };
                runs[i].push(row);
            }
        }
        rows.extend(runs.into_iter().filter_map(median_row));
    }
    rows
}

/// The median round by delivered events/s, its note listing every round's; a round that
/// measured nothing (a server that did not start) counts as 0.
fn median_row(runs: Vec<Row>) -> Option<Row> {
    let runs = runs
        .into_iter()
        .map(|row| (row.delivered_per_sec.unwrap_or(0.0), row))
        .collect();
    let (row, keys) = rounds::median(runs)?;
    let note = match (
        row.note.clone(),
        rounds::note(&keys, |v| format!("{:.2}M", v / 1e6)),
    ) {
        (Some(own), _) => Some(own),
        (None, rounds) => rounds,
    };
    Some(Row { note, ..row })
}

fn skipped(system: &str, shape: &str, note: &str) -> Row {
    Row {
        system: system.into(),
        shape: shape.into(),
        published_per_sec: None,
        delivered_per_sec: None,
        lost: None,
        note: Some(note.into()),
    }
}

async fn measure_one(
    system: &System,
    addr: &str,
    shape: &Shape,
    warmup: Duration,
    measure: Duration,
) -> Row {
    let result = if system.kind == Kind::Busd {
        match addr.parse() {
            Ok(addr) => bus_load::run(addr, shape, warmup, measure)
                .await
                .map(|o| (o.published_per_sec, o.delivered_per_sec, o.missed)),
            Err(e) => Err(std::io::Error::other(format!("{e}"))),
        }
    } else {
        measure_raw(system.kind, addr, shape, warmup, measure).await
    };
    match result {
        Ok((published, delivered, lost)) => Row {
            system: system.name.clone(),
            shape: shape.name.into(),
            published_per_sec: Some(published),
            delivered_per_sec: Some(delivered),
            lost: Some(lost),
            note: None,
        },
        Err(e) => skipped(&system.name, shape.name, &e.to_string()),
    }
}

/// Channel (subject) names for a filter: one shared name for "all", one per account else.
fn names(filter: &Filter) -> Vec<String> {
    match filter {
        Filter::All => vec!["events".into()],
        Filter::Accounts(accounts) => accounts.iter().map(|a| format!("acct.{a}")).collect(),
    }
}

async fn measure_raw(
    kind: Kind,
    addr: &str,
    shape: &Shape,
    warmup: Duration,
    measure: Duration,
) -> std::io::Result<(f64, f64, u64)> {
    let delivered = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for filter in &shape.filters {
        match kind {
            Kind::Redis => redis::subscribe(addr, names(filter), delivered.clone()).await?,
            _ => nats::subscribe(addr, names(filter), delivered.clone()).await?,
        }
    }
    let filtered = shape
        .filters
        .iter()
        .any(|f| matches!(f, Filter::Accounts(_)));
    let targets = if filtered {
        (0..shape.accounts).map(|a| format!("acct.{a}")).collect()
    } else {
        vec!["events".to_owned()]
    };
    let publisher = {
        let (addr, published, stop) = (addr.to_owned(), published.clone(), stop.clone());
        tokio::spawn(async move {
            match kind {
                Kind::Redis => redis::publish(&addr, targets, published, stop).await,
                _ => nats::publish(&addr, targets, published, stop).await,
            }
        })
    };
    tokio::time::sleep(warmup).await;
    let (p0, d0) = (published.load(Relaxed), delivered.load(Relaxed));
    let started = std::time::Instant::now();
    tokio::time::sleep(measure).await;
    let secs = started.elapsed().as_secs_f64();
    let (p1, d1) = (published.load(Relaxed), delivered.load(Relaxed));
    stop.store(true, Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each event goes to every subscriber taking all, or to exactly one filtered subscriber.
    let fanout = if filtered {
        1
    } else {
        shape.filters.len() as u64
    };
    let lost = (published.load(Relaxed) * fanout).saturating_sub(delivered.load(Relaxed));
    Ok(((p1 - p0) as f64 / secs, (d1 - d0) as f64 / secs, lost))
}
