//! HTTP: ingest's whole path against nginx answering `return 204`, may_minihttp and hyper
//! hello servers, with wrk -t1 at 64 and 256 connections and pipelined 16 deep, each row
//! after a second of the same load that is not counted; and ingest again for an account with
//! a write key, every request carrying `Authorization: Bearer`. The servers take turns
//! within each of the budget's rounds, and each row is its median round ([`rounds`]).

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use serde::Serialize;

use super::tools::{ensure, free_port, spawn_listening, wait_listening};
use super::{Budget, rounds};
use crate::bus_load;
use crate::process::{Running, WrkReport, release_binary, start_ingest, wrk};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub server: String,
    pub mode: String,
    pub requests_per_sec: Option<f64>,
    /// Successful (2xx) responses per second: what the goals compare, since a server that
    /// sheds load with 503s is not serving those requests.
    pub ok_per_sec: Option<f64>,
    pub p50: Option<String>,
    pub p99: Option<String>,
    pub errors: Option<u64>,
    pub note: Option<String>,
}

const MODES: [(&str, u32, bool); 3] = [
    ("c=64", 64, false),
    ("c=256", 256, false),
    ("pipelined 16, c=64", 64, true),
];

/// Seconds of load before each measured row, not counted.
const WARM_UP: u32 = 1;

const PIPELINE_LUA: &str = "init = function(args)\n  local r = {}\n  for i = 1, 16 do r[i] = wrk.format(nil) end\n  req = table.concat(r)\nend\nrequest = function() return req end\n";

/// A server under test: its process, the URL to load and the headers to send.
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<String>,
    _processes: Vec<Running>,
}

pub fn run(budget: Budget, work: &std::path::Path) -> Vec<Row> {
    let script = work.join("pipeline.lua");
    let _ = std::fs::write(&script, PIPELINE_LUA);
    let script = script.to_string_lossy().into_owned();
    if let Err(note) = ensure("wrk", "wrk") {
        return vec![skipped("all", &note)];
    }
    let mut rows = Vec::new();
    // Every server runs for the whole part, idle but for its turns.
    let mut targets = Vec::new();
    for start in [
        ingest as fn(&std::path::Path) -> Result<Target, String>,
        keyed_ingest,
        nginx,
        may_minihttp,
        hyper,
    ] {
        match start(work) {
            Ok(target) => targets.push(target),
            Err(note) => rows.push(skipped("?", &note)),
        }
    }
    let mut measured: Vec<Vec<Row>> = targets.iter().map(|_| Vec::new()).collect();
    for (mode, connections, pipelined) in MODES {
        let script = pipelined.then_some(script.as_str());
        let mut runs: Vec<Vec<Option<WrkReport>>> = targets.iter().map(|_| Vec::new()).collect();
        for round in 0..budget.rounds as usize {
            for i in rounds::turns(targets.len(), round) {
                let target = &targets[i];
                if !budget.smoke {
                    // The same load for a second first, not counted: connections, caches
                    // and buffers (ingest's ring and outbox) are then warm for every server
                    // alike, and the row does not depend on whose load came before.
                    let _ = wrk(&target.url, &target.headers, connections, WARM_UP, script);
                }
                let seconds = budget.seconds;
                runs[i].push(wrk(
                    &target.url,
                    &target.headers,
                    connections,
                    seconds,
                    script,
                ));
            }
        }
        for (i, reports) in runs.into_iter().enumerate() {
            measured[i].push(median_row(targets[i].name, mode, reports));
        }
    }
    rows.extend(measured.into_iter().flatten());
    rows
}

/// The row of a server's median round by 2xx/s, its note listing every round's. A round
/// in which wrk failed counts as 0, as a pub/sub round that measured nothing does, and the
/// note says how many failed.
fn median_row(server: &str, mode: &str, reports: Vec<Option<WrkReport>>) -> Row {
    let failed = reports.iter().filter(|r| r.is_none()).count();
    let total = reports.len();
    let runs = reports
        .into_iter()
        .map(|report| {
            let row = row(server, mode, report);
            (row.ok_per_sec.unwrap_or(0.0), row)
        })
        .collect();
    let Some((row, keys)) = rounds::median(runs) else {
        return row(server, mode, None);
    };
    let rounds = rounds::note(&keys, |v| format!("{v:.0}"));
    let note = match (failed, rounds) {
        (0, rounds) => rounds,
        (_, Some(rounds)) => Some(format!("{rounds}; wrk failed in {failed} of {total}")),
        (_, None) => row.note.clone(),
    };
    Row { note, ..row }
}

/// A row from wrk's report, or one saying wrk failed.
pub fn row(server: &str, mode: &str, report: Option<WrkReport>) -> Row {
    match report {
        Some(r) => Row {
            server: server.into(),
            mode: mode.into(),
            requests_per_sec: Some(r.requests_per_sec),
            ok_per_sec: Some(if r.requests == 0 {
                0.0
            } else {
                r.requests_per_sec * (r.requests.saturating_sub(r.non_2xx + r.errors)) as f64
                    / r.requests as f64
            }),
            p50: Some(r.p50),
            p99: Some(r.p99),
            errors: Some(r.errors + r.non_2xx),
            note: None,
        },
        None => Row {
            mode: mode.into(),
            note: Some("wrk failed to run".into()),
            ..skipped(server, "")
        },
    }
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

/// ingest with its embedded busd and one subscriber counting every event.
fn ingest(work: &std::path::Path) -> Result<Target, String> {
    let dir = work.join("ingest");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    started_ingest(&dir, "ingest (full path)", Vec::new())
}

/// The same, for an account with a write key: what checking the key costs. Not named
/// "ingest ..." so the plain rows stay the ones the other goals read.
fn keyed_ingest(work: &std::path::Path) -> Result<Target, String> {
    let dir = work.join("keyed");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let key = new_key(&dir).map_err(|e| format!("ingest accounts key: {e}"))?;
    let header = format!("Authorization: Bearer {key}");
    started_ingest(&dir, "keyed ingest (full path, Bearer key)", vec![header])
}

/// Seeds the default accounts in `dir` and gives account 1 a key; returns the key.
fn new_key(dir: &std::path::Path) -> std::io::Result<String> {
    let ingest = release_binary("ingest", "ingest")?;
    let db = dir.join("accounts.db");
    let run = |args: &[&str]| -> std::io::Result<String> {
        let output = Command::new(&ingest)
            .arg("accounts")
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    run(&["seed"])?;
    run(&["key", "1"])
}

fn started_ingest(
    dir: &std::path::Path,
    name: &'static str,
    headers: Vec<String>,
) -> Result<Target, String> {
    let (process, http, bus) = start_ingest(dir, &[]).map_err(|e| format!("ingest: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stream = runtime
        .block_on(bus_load::connect(
            bus,
            protocol::Role::Subscriber,
            Some(protocol::Filter::All),
        ))
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let (delivered, missed, stop) = (
            AtomicU64::new(0),
            AtomicU64::new(0),
            Arc::new(AtomicBool::new(false)),
        );
        runtime.block_on(bus_load::count_delivered(
            stream, &delivered, &missed, &stop,
        ));
    });
    Ok(Target {
        name,
        url: format!("http://{http}/1?data={}", "d".repeat(64)),
        headers,
        _processes: vec![process],
    })
}

fn nginx(work: &std::path::Path) -> Result<Target, String> {
    let nginx = ensure("nginx", "nginx-light")?;
    let port = free_port();
    let d = work.join("nginx");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    let d = d.display();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; keepalive_requests 10000000;\n\
           client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }} }}\n"
    );
    let path = work.join("nginx/nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(work.join("nginx/error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0) // stopped as a group by `Running`
        .spawn()
        .map_err(|e| e.to_string())?;
    let process = Running(child);
    let addr = format!("127.0.0.1:{port}");
    wait_listening(&addr)
        .then_some(())
        .ok_or("nginx did not start")?;
    Ok(Target {
        name: "nginx return 204 (1 worker)",
        url: format!("http://{addr}/"),
        headers: Vec::new(),
        _processes: vec![process],
    })
}

fn hello(name: &'static str, binary: &str) -> Result<Target, String> {
    let addr = format!("127.0.0.1:{}", free_port());
    let path = release_binary("benches", binary).map_err(|e| e.to_string())?;
    let process = spawn_listening(Command::new(path).arg(&addr), &addr, binary)?;
    Ok(Target {
        name,
        url: format!("http://{addr}/"),
        headers: Vec::new(),
        _processes: vec![process],
    })
}

fn may_minihttp(_: &std::path::Path) -> Result<Target, String> {
    hello("may_minihttp hello", "hello_may")
}

fn hyper(_: &std::path::Path) -> Result<Target, String> {
    hello("hyper hello", "hello_hyper")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(per_sec: f64) -> Option<WrkReport> {
        Some(WrkReport {
            requests_per_sec: per_sec,
            requests: 1000,
            p50: "1ms".into(),
            p99: "2ms".into(),
            errors: 0,
            non_2xx: 0,
        })
    }

    #[test]
    fn a_failed_round_counts_as_nothing_and_is_said() {
        let row = median_row("s", "c=64", vec![report(100.0), None, report(300.0)]);
        assert_eq!(row.ok_per_sec, Some(100.0));
        assert_eq!(
            row.note.as_deref(),
            Some("median of 3 rounds (100, 0, 300); wrk failed in 1 of 3")
        );
    }

    #[test]
    fn rounds_that_all_ran_say_only_their_figures() {
        let row = median_row(
            "s",
            "c=64",
            vec![report(200.0), report(100.0), report(300.0)],
        );
        assert_eq!(row.ok_per_sec, Some(200.0));
        assert_eq!(
            row.note.as_deref(),
            Some("median of 3 rounds (200, 100, 300)")
        );
        let alone = median_row("s", "c=64", vec![None]);
        assert_eq!(alone.note.as_deref(), Some("wrk failed to run"));
        assert_eq!(alone.mode, "c=64", "the goals find rows by mode");
    }
}
