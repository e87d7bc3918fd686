//! What `ingest --durable` costs: the same ingest answering as soon as an event is in its
//! outbox (the default) and only once the bus acknowledged it (`--durable`), in the same
//! run, with wrk -t1 at 64 and 256 connections, on its embedded busd and on a one-node
//! JetStream (the pinned nats-server, skipped without it). Every request is
//! `GET /1?data=<64 bytes>`, as in the HTTP part.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use super::Budget;
use super::http::Row;
use crate::process::{spawn_ingest, wrk};

/// The bus of a row: ingest's embedded busd, or JetStream.
pub const BUSD: &str = "busd (embedded)";
/// A one-node JetStream, stream of one replica.
pub const JETSTREAM: &str = "JetStream R1";
/// The two ways ingest answers.
pub const DEFAULT: &str = "default";
pub const DURABLE: &str = "--durable";

/// Rows are named `ingest <mode>, <bus>`, e.g. `ingest --durable, busd (embedded)`.
pub fn server(mode: &str, bus: &str) -> String {
    format!("ingest {mode}, {bus}")
}

pub fn run(budget: Budget, work: &Path) -> Vec<Row> {
    if let Err(note) = super::tools::ensure("wrk", "wrk") {
        return vec![skipped("all", &note)];
    }
    // CI's smoke run only checks that each row can be made.
    let connections: &[u32] = if budget.smoke { &[64] } else { &[64, 256] };
    let mut rows = Vec::new();
    for mode in [DEFAULT, DURABLE] {
        rows.extend(on_bus(budget, work, BUSD, None, mode, connections));
    }
    let Some(program) = testkit::nats::server() else {
        rows.push(skipped(
            &server("-", JETSTREAM),
            "skipped: the pinned nats-server is not installed (.ci/nats-server installs it)",
        ));
        return rows;
    };
    let cluster = std::panic::catch_unwind(AssertUnwindSafe(|| {
        testkit::nats::Cluster::start_with(&program, 1)
    }));
    let Ok(cluster) = cluster else {
        rows.push(skipped(
            &server("-", JETSTREAM),
            "the nats-server did not start (its log is on stderr)",
        ));
        return rows;
    };
    let urls = cluster.urls();
    for mode in [DEFAULT, DURABLE] {
        rows.extend(on_bus(
            budget,
            work,
            JETSTREAM,
            Some(&urls),
            mode,
            connections,
        ));
    }
    rows
}

/// One ingest in `mode` on `bus` (`urls` for JetStream, else its embedded busd), measured
/// at each of `connections`.
fn on_bus(
    budget: Budget,
    work: &Path,
    bus: &str,
    urls: Option<&str>,
    mode: &str,
    connections: &[u32],
) -> Vec<Row> {
    let name = server(mode, bus);
    let dir = work.join(format!("durable-{}-{}", rows_dir(bus), rows_dir(mode)));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return vec![skipped(&name, &e.to_string())];
    }
    let origin = format!("bench-{}", rows_dir(mode));
    let mut args = vec!["--origin", origin.as_str()];
    if mode == DURABLE {
        args.push("--durable");
    }
    let ingest = match spawn_ingest(&dir, urls, &args) {
        Ok(ingest) => ingest,
        Err(e) => return vec![skipped(&name, &format!("ingest: {e}"))],
    };
    let url = format!("http://{}/1?data={}", ingest.http, "d".repeat(64));
    connections
        .iter()
        .map(|&c| {
            let report = wrk(&url, &[], c, budget.seconds, None);
            super::http::row(&name, &format!("c={c}"), report)
        })
        .collect()
}

fn rows_dir(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase()
}

fn skipped(server: &str, note: &str) -> Row {
    Row {
        server: server.into(),
        mode: "-".into(),
        requests_per_sec: None,
        ok_per_sec: None,
        p50: None,
        p99: None,
        errors: None,
        note: Some(note.into()),
    }
}

/// A wrk latency (`950.00us`, `1.83ms`, `1.02s`) in milliseconds.
pub fn millis(latency: &str) -> Option<f64> {
    let latency = latency.trim();
    let (number, per_ms) = if let Some(n) = latency.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = latency.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = latency.strip_suffix("m") {
        (n, 60_000.0)
    } else if let Some(n) = latency.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * per_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_read_as_milliseconds() {
        assert!((millis("950.00us").unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(millis("1.83ms"), Some(1.83));
        assert_eq!(millis("1.02s"), Some(1020.0));
        assert_eq!(millis("2.00m"), Some(120_000.0));
        assert_eq!(millis("-"), None);
    }
}
