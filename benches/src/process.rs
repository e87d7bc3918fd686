//! Running the release binaries the harness measures, and the load generator.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The release build of a workspace binary, built first if missing.
pub fn release_binary(package: &str, name: &str) -> std::io::Result<PathBuf> {
    binary(package, name, false)
}

/// Like [`release_binary`], but has cargo build it even when present (nothing to do when it
/// is up to date): `cargo bench` builds only the benches' own package, so a binary of another
/// package can be older than the code a bench means to measure.
pub fn fresh_release_binary(package: &str, name: &str) -> std::io::Result<PathBuf> {
    binary(package, name, true)
}

fn binary(package: &str, name: &str, rebuild: bool) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // benches run from target/release/deps/
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| std::io::Error::other("no target directory"))?;
    let path = dir.join(name);
    if rebuild || !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if dir.ends_with("debug") {
            "dev"
        } else {
            "release"
        };
        let mut command = Command::new(cargo);
        command.args(["build", "--profile", profile, "-p", package, "--bin", name]);
        // Without what cargo set for running this bench: some build scripts (ring's) rerun
        // when those change, and the next `cargo bench` would then rebuild them all again.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if set_by_cargo_for_a_run(&key) {
                command.env_remove(&*key);
            }
        }
        let status = command.status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("building {name} failed")));
        }
    }
    Ok(path)
}

/// Whether `key` is one of the variables cargo sets for the program it runs (a bench), not
/// one a person sets to configure cargo.
fn set_by_cargo_for_a_run(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
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
    let ingest = spawn_ingest(dir, None, extra)?;
    match ingest.embedded_bus {
        Some(bus) => Ok((ingest.process, ingest.http, bus)),
        None => Err(std::io::Error::other(
            "no embedded busd address in ingest's log",
        )),
    }
}

/// A started ingest: the process, where it serves HTTP, where its embedded busd listens
/// (`None` with `--bus`), and the warnings and errors it logged since, so a row can say
/// why a figure looks wrong (a lost bus, a stream used as it was).
pub struct Ingest {
    pub process: Running,
    pub http: SocketAddr,
    pub embedded_bus: Option<SocketAddr>,
    pub warnings: Arc<Mutex<Vec<String>>>,
    /// Every line it logged until it listened (how long the accounts took to load, say).
    pub startup: Vec<String>,
}

/// The most warning lines [`Ingest::warnings`] keeps: the first ones say what went wrong.
const KEPT_WARNINGS: usize = 20;

/// Starts ingest in `dir` on a free HTTP port, publishing to `bus` (`--bus`, e.g. the
/// `nats://` URLs of a JetStream cluster) or, without one, to an embedded busd on a free
/// port. Returns once ingest has logged every address it listens on; if it exits first,
/// the error carries the last lines it logged.
pub fn spawn_ingest(
    dir: &std::path::Path,
    bus: Option<&str>,
    extra: &[&str],
) -> std::io::Result<Ingest> {
    let mut command = Command::new(release_binary("ingest", "ingest")?);
    command.current_dir(dir).args(["--listen", "127.0.0.1:0"]);
    match bus {
        Some(bus) => command.args(["--bus", bus]),
        None => command.args(["--embedded-bus-listen", "127.0.0.1:0"]),
    };
    let mut child = command
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
    let (mut http, mut embedded_bus) = (None, None);
    let mut said = Vec::new();
    while http.is_none() || (bus.is_none() && embedded_bus.is_none()) {
        let Some(line) = lines.next() else {
            let last = said[said.len().saturating_sub(5)..].join(" | ");
            return Err(std::io::Error::other(format!("ingest exited: {last}")));
        };
        let line = line?;
        let addr = || {
            line.split("listening on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        };
        if line.contains("embedded busd listening on") {
            embedded_bus = addr();
        } else if line.contains("origin=") && line.contains("listening on ") {
            http = addr();
        }
        said.push(line);
    }
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let kept = warnings.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() < KEPT_WARNINGS {
                    kept.push(line);
                }
            }
        }
    });
    match http {
        Some(http) => Ok(Ingest {
            process: running,
            http,
            embedded_bus,
            warnings,
            startup: said,
        }),
        None => Err(std::io::Error::other("no HTTP address in ingest's log")),
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

/// Runs wrk (one thread) against `url`, sending `headers` (`Name: value`) with every request;
/// `None` if wrk is not installed.
pub fn wrk(
    url: &str,
    headers: &[String],
    connections: u32,
    seconds: u32,
    script: Option<&str>,
) -> Option<WrkReport> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
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
