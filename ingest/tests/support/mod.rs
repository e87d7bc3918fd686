//! Starting the real ingest binary in a fresh directory.
#![allow(dead_code)]

pub mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::Proc;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Ingest {
    pub proc: Proc,
    pub http: SocketAddr,
    /// The embedded busd, when no `--bus` was given.
    pub bus: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Ingest {
    /// `ingest` on free ports, in a new directory (so the database is created and seeded).
    pub fn start(args: &[&str]) -> Ingest {
        Self::start_in(tempfile::tempdir().expect("a temp dir"), args)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Ingest {
        let embedded = !args.contains(&"--bus");
        let proc = Proc::spawn("ingest", &mut command_in(&dir, args));
        let bus = embedded.then(|| {
            addr_after(
                &proc.wait_stderr("embedded busd listening on ", WAIT),
                "listening on ",
            )
        });
        let http = addr_after(&proc.wait_stderr("origin=", WAIT), "listening on ");
        Ingest {
            proc,
            http,
            bus,
            dir,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("accounts.db")
    }

    /// Runs `ingest accounts ...` against this instance's database.
    pub fn accounts(&self, args: &[&str]) -> std::process::Output {
        accounts(&self.db(), args)
    }
}

/// Runs `ingest accounts ... --db <db>`.
pub fn accounts(db: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ingest"))
        .arg("accounts")
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("TRACKER_DB")
        .output()
        .expect("ingest accounts runs")
}

/// `ingest` in `dir` on ephemeral ports (HTTP and the embedded busd) with `args`.
fn command_in(dir: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
    command
        .current_dir(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-bus-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "info");
    command
}

/// Runs ingest in a fresh directory on ephemeral ports until it exits by itself, expecting
/// exit code 1 with `reason` on stderr: a start it must refuse.
pub fn expect_refused_start(args: &[&str], reason: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let output = command_in(&dir, args).output().expect("ingest runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(reason), "{args:?}: {stderr}");
}

fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = line
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Sends `count` events with unique data `prefix-i` over keep-alive connections (a new one
/// whenever the server, or a proxy in front of it, says it will close) and returns the data
/// of those answered 202. A 503 is left out; any other status fails the test.
pub async fn send(at: SocketAddr, prefix: &str, count: usize) -> Vec<String> {
    let mut client = testkit::http::Client::connect(at).await;
    let mut accepted = Vec::new();
    for i in 0..count {
        let data = format!("{prefix}-{i}");
        let reply = client.get(&format!("/{}?data={data}", 1 + i % 9)).await;
        match reply.status {
            202 => accepted.push(data),
            503 => {}
            other => panic!("unexpected {other}: {}", reply.body),
        }
        // nginx, for one, closes a keep-alive connection after keepalive_requests requests.
        if reply.header("connection") == Some("close") {
            client = testkit::http::Client::connect(at).await;
        }
    }
    accepted
}

/// How an ingest that had to stop by itself ended.
pub struct Exit {
    pub code: Option<i32>,
    pub stderr: String,
    /// From start to exit.
    pub took: Duration,
}

/// Runs ingest in a fresh directory on ephemeral ports and waits up to `within` for it to
/// exit by itself; fails the test, with what ingest said, if it still runs by then.
pub fn run_until_exit(args: &[&str], within: Duration) -> Exit {
    use std::io::Read as _;
    let dir = tempfile::tempdir().expect("a temp dir");
    let started = std::time::Instant::now();
    let mut child = command_in(&dir, args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ingest runs");
    // Read on the side, so an ingest that keeps talking cannot stall on a full pipe.
    let mut pipe = child.stderr.take().expect("stderr");
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = said.join().unwrap_or_default();
            panic!("ingest {args:?} still ran after {within:?}; it said:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exit {
        code: status.code(),
        stderr: said.join().unwrap_or_default(),
        took: started.elapsed(),
    }
}
