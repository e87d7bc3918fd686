//! The side-by-side comparison in one command: `cargo bench -p benches --bench compare`.
//! Writes `benches/RESULTS.md` and `benches/results.json`. `BENCH_SECONDS` sets each run's
//! length (default 10) and `BENCH_ROUNDS` how many times each HTTP and pub/sub row is
//! measured, the systems taking turns, its median reported (default 3; see
//! `benches::compare::rounds`); `BENCH_SMOKE=1` runs every part once for 2 s and writes nothing but
//! stdout, which is what CI does so the harness cannot rot. `BENCH_PARTS=bus,footprint`
//! runs only the parts named (of `http`, `bus`, `groups`, `latency`, `jetstream`, `durable`,
//! `footprint`) and
//! writes nothing but stdout either: a partial run is for working on one part, not for the
//! record. Every server it starts listens on loopback, and every run is bounded in time.
//! `jetstream` runs ingest over real nats-server JetStream nodes (one, then three) beside a
//! raw async-nats publisher on the same servers; it needs the pinned nats-server
//! (`.ci/nats-server`) and says it was skipped without it.

use benches::compare::{Budget, bus, durable, footprint, http, jetstream, latency, report};

fn main() -> std::io::Result<()> {
    let smoke = std::env::var_os("BENCH_SMOKE").is_some();
    let seconds = if smoke {
        2
    } else {
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10)
    };
    let rounds = if smoke {
        1
    } else {
        std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(3)
    };
    let budget = Budget {
        seconds,
        rounds,
        smoke,
    };
    // Before anything starts: what else the machine was doing shows in its load.
    let machine = machine();
    let parts = std::env::var("BENCH_PARTS").ok();
    let wanted = |part: &str| {
        parts
            .as_deref()
            .is_none_or(|list| list.split(',').any(|p| p.trim() == part))
    };
    let work = tempfile::tempdir()?;
    let mut http = Vec::new();
    if wanted("http") {
        eprintln!("compare: HTTP");
        http = http::run(budget, work.path());
    }
    let mut bus = Vec::new();
    if wanted("bus") {
        eprintln!("compare: pub/sub");
        bus = bus::run(budget);
    }
    let mut groups = Vec::new();
    if wanted("groups") {
        eprintln!("compare: consumer groups on busd");
        groups = bus::run_groups(budget);
    }
    let mut latency = Vec::new();
    if wanted("latency") {
        eprintln!("compare: end to end");
        latency = latency::run(budget, work.path());
    }
    let mut jetstream = Vec::new();
    if wanted("jetstream") {
        eprintln!("compare: ingest over JetStream");
        jetstream = jetstream::run(budget, work.path());
    }
    let mut durable = Vec::new();
    if wanted("durable") {
        eprintln!("compare: ingest --durable against its default");
        durable = durable::run(budget, work.path());
    }
    let mut footprint = Vec::new();
    if wanted("footprint") {
        eprintln!("compare: memory and start");
        footprint = footprint::run(budget, work.path());
    }
    let goals = report::goals(&http, &bus, &latency, &jetstream, &durable, &footprint);
    let results = report::Results {
        generated: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine,
        seconds_per_run: seconds,
        rounds,
        smoke,
        http,
        bus,
        groups,
        latency,
        jetstream,
        durable,
        footprint,
        goals,
    };
    let markdown = report::markdown(&results);
    print!("{markdown}");
    if !smoke && parts.is_none() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::write(dir.join("RESULTS.md"), &markdown)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&results).map_err(std::io::Error::other)?,
        )?;
    }
    Ok(())
}

/// The machine and its state when the run began: cores, CPU, kernel and load average, so a
/// figure can be read against what else was running.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!(
        "{} cores ({cpu}, {}), Linux {kernel}, load average {load} at the start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    )
}
