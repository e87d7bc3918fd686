//! Fault injection against the real binaries: HTTP load into ingest, busd and the watchers
//! under a random schedule of crashes, graceful restarts and freezes, and a checker holding
//! the promise: every request answered 202 is delivered exactly once to every watcher of its
//! account, or that watcher reported a gap covering it; and no watcher says "nothing was
//! missed" when something was.
//!
//! Every run prints its seed; `CHAOS_SEED=<n>` replays that schedule (the load's timing is
//! the machine's). Knobs, all optional:
//!
//! - `CHAOS_SEED`: run only this seed (default: a few fixed seeds and one random one).
//! - `CHAOS_SECONDS`: seconds of load per seed (default 25).
//! - `CHAOS_FAULTS`: `none`, or a comma list of `busd-term`, `busd-kill`, `busd-freeze`,
//!   `ingest-term`, `watcher-kill`, `watcher-term` (default: all).
//! - `CHAOS_RATE`: requests per second over all clients (default: as fast as possible).
//! - `CHAOS_CLIENTS`: concurrent HTTP clients (default 12).

#[path = "chaos/mod.rs"]
mod chaos;

use std::time::{Duration, Instant};

use chaos::run::{self, Config};
use chaos::schedule::Kind;

/// Seeds every default run covers, so CI exercises known schedules as well as a new one.
const FIXED_SEEDS: [u64; 2] = [1, 2];

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} cannot be parsed")),
    )
}

fn config() -> Config {
    Config {
        load: Duration::from_secs_f64(env("CHAOS_SECONDS").unwrap_or(25.0)),
        faults: std::env::var("CHAOS_FAULTS")
            .map(|list| Kind::parse_list(&list))
            .unwrap_or_else(|_| Kind::ALL.to_vec()),
        rate: env("CHAOS_RATE"),
        clients: env("CHAOS_CLIENTS").unwrap_or(12),
        pipeline: 4,
    }
}

fn seeds() -> Vec<u64> {
    match env("CHAOS_SEED") {
        Some(seed) => vec![seed],
        None => FIXED_SEEDS.into_iter().chain([fastrand::u64(..)]).collect(),
    }
}

#[test]
fn accepted_events_survive_random_faults() {
    let config = config();
    let seeds = seeds();
    chaos::cluster::build_binaries();
    eprintln!(
        "chaos: seeds {seeds:?} (replay one with CHAOS_SEED=<n>), {:?} of load each, faults {:?}",
        config.load, config.faults
    );
    let began = Instant::now();
    let mut failures = Vec::new();
    let mut figures = Vec::new();
    for seed in seeds {
        eprintln!("chaos: === CHAOS_SEED={seed} ===");
        let summary = run::run(seed, &config);
        eprintln!("{}", summary.figures);
        for failure in &summary.failures {
            eprintln!("chaos: FAILURE {failure}");
        }
        figures.push(summary.figures);
        failures.extend(summary.failures);
    }
    eprintln!("chaos: all seeds done in {:.0?}", began.elapsed());
    eprintln!("{}", figures.join("\n"));
    assert!(
        failures.is_empty(),
        "the promise was broken ({} findings):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
