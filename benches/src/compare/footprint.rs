//! Memory and start: ingest with a million accounts, and busd holding 10,000 idle subscribers.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{Filter, Role};
use serde::Serialize;

use super::Budget;
use super::tools::{free_port, rss, spawn_listening};
use crate::bus_load;
use crate::process::{Running, release_binary};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub value: String,
    /// The value in bytes, for a memory row: what the goals read.
    pub bytes: Option<u64>,
}

/// The row of busd's memory per idle subscriber.
pub const PER_IDLE_SUBSCRIBER: &str = "busd: memory per idle subscriber";
/// The start of the row of busd's memory with every idle subscriber connected.
pub const WITH_IDLE_SUBSCRIBERS: &str = "busd: resident memory with ";

pub fn run(budget: Budget, work: &std::path::Path) -> Vec<Row> {
    let accounts = if budget.smoke { 10_000 } else { 1_000_000 };
    let subscribers = if budget.smoke { 500 } else { 10_000 };
    let mut rows = ingest_start(work, accounts).unwrap_or_else(|e| {
        vec![Row {
            what: "ingest start".into(),
            value: format!("failed: {e}"),
            bytes: None,
        }]
    });
    rows.extend(busd_idle(subscribers).unwrap_or_else(|e| {
        vec![Row {
            what: "busd idle subscribers".into(),
            value: format!("failed: {e}"),
            bytes: None,
        }]
    }));
    rows
}

fn ingest_start(work: &std::path::Path, accounts: u64) -> Result<Vec<Row>, String> {
    let ingest = release_binary("ingest", "ingest").map_err(|e| e.to_string())?;
    let dir = work.join("footprint");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = dir.join("accounts.db");
    let status = Command::new(&ingest)
        .args(["accounts", "seed", "--count", &accounts.to_string(), "--db"])
        .arg(&db)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    status.success().then_some(()).ok_or("seeding failed")?;
    let started = Instant::now();
    let mut child = Command::new(&ingest)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-bus-listen",
            "127.0.0.1:0",
            "--db",
        ])
        .arg(&db)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0) // stopped as a group by `Running`
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let process = Running(child);
    let mut load = String::from("?");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(elapsed) = line.split("elapsed=").nth(1) {
            load = elapsed.trim().to_owned();
        }
        if line.contains("origin=") {
            break;
        }
    }
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let resident = rss(process.0.id());
    Ok(vec![
        Row {
            what: format!("ingest: accounts loaded ({accounts})"),
            value: load,
            bytes: None,
        },
        Row {
            what: "ingest: process start to listening".into(),
            value: format!("{ready:.2?}"),
            bytes: None,
        },
        Row {
            what: "ingest: resident memory after start".into(),
            value: mib(resident),
            bytes: Some(resident),
        },
    ])
}

fn busd_idle(subscribers: u32) -> Result<Vec<Row>, String> {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(release_binary("busd", "busd").map_err(|e| e.to_string())?);
    command.args(["--listen", &addr]).env("RUST_LOG", "warn");
    let process = spawn_listening(&mut command, &addr, "busd")?;
    let before = rss(process.0.id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let connections = runtime.block_on(async {
        let mut connections = Vec::new();
        for i in 0..u64::from(subscribers) {
            let filter = Filter::Accounts([i % 1000].into_iter().collect());
            connections.push(bus_load::connect(addr, Role::Subscriber, Some(filter)).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, std::io::Error>(connections)
    });
    let connections = connections.map_err(|e| e.to_string())?;
    let after = rss(process.0.id());
    drop(connections);
    let per = after.saturating_sub(before) / u64::from(subscribers);
    Ok(vec![
        Row {
            what: "busd: resident memory, idle".into(),
            value: mib(before),
            bytes: Some(before),
        },
        Row {
            what: format!("{WITH_IDLE_SUBSCRIBERS}{subscribers} idle subscribers"),
            value: mib(after),
            bytes: Some(after),
        },
        Row {
            what: PER_IDLE_SUBSCRIBER.into(),
            value: format!("{:.1} KiB", per as f64 / 1024.0),
            bytes: Some(per),
        },
    ])
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
