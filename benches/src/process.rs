//! Running the release binaries the harness measures, and the load generator.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The release build of a workspace binary, built first if missing.
pub fn release_binary(package: &str, name: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // benches run from target/release/deps/
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| std::io::Error::other("no target directory"))?;
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if dir.ends_with("debug") {
            "dev"
        } else {
            "release"
        };
        let status = Command::new(cargo)
            .args(["build", "--profile", profile, "-p", package, "--bin", name])
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("building {name} failed")));
        }
    }
    Ok(path)
}

/// A process started in a group of its own (`process_group(0)`), stopped with everything
/// it started on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        testkit::process::stop_group(&mut self.0);
    }
}

/// Starts ingest in `dir` with an embedded busd on free ports; returns (http, bus) addresses.
pub fn start_ingest(
    dir: &std::path::Path,
    extra: &[&str],
) -> std::io::Result<(Running, SocketAddr, SocketAddr)> {
    let mut child = Command::new(release_binary("ingest", "ingest")?)
        .current_dir(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-bus-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn,ingest=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0) // stopped as a group by `Running`
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;
    let running = Running(child);
    let mut lines = BufReader::new(stderr).lines();
    let (mut http, mut bus) = (None, None);
    while http.is_none() || bus.is_none() {
        let line = lines
            .next()
            .ok_or_else(|| std::io::Error::other("ingest exited"))??;
        let addr = || {
            line.split("listening on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        };
        if line.contains("embedded busd listening on") {
            bus = addr();
        } else if line.contains("origin=") {
            http = addr();
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    match (http, bus) {
        (Some(http), Some(bus)) => Ok((running, http, bus)),
        _ => Err(std::io::Error::other("no addresses in ingest's log")),
    }
}

/// What wrk reported.
#[derive(Debug, Default, Clone)]
pub struct WrkReport {
    pub requests_per_sec: f64,
    pub requests: u64,
    pub p50: String,
    pub p99: String,
    pub errors: u64,
    pub non_2xx: u64,
}

/// Runs wrk (one thread) against `url`; `None` if wrk is not installed.
pub fn wrk(url: &str, connections: u32, seconds: u32, script: Option<&str>) -> Option<WrkReport> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.args(["-s", script]);
    }
    let output = command.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut report = WrkReport::default();
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rate] => report.requests_per_sec = rate.parse().unwrap_or(0.0),
            ["50%", v] => report.p50 = (*v).to_owned(),
            ["99%", v] => report.p99 = (*v).to_owned(),
            [n, "requests", "in", ..] => report.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => report.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                report.errors = rest
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    Some(report)
}
