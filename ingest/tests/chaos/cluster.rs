//! The real bus (busd, or a 3-node NATS JetStream cluster) and ingest, on fixed ports so
//! restarts land where clients look for them, with busd's state file, the JetStream stores
//! and ingest's directory reused across restarts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::bus::Busd;
use testkit::{Proc, free_port};

use super::load::MAX_DATA;

/// The stream ingest publishes to on JetStream (its default).
const STREAM: &str = client::jetstream::DEFAULT_STREAM;

/// How long ingest may take to drain on SIGTERM (`--drain-timeout`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What ingest logs after draining on SIGTERM: all acknowledged, or some lost.
const DRAINED: &str = "every accepted event was acknowledged";
const UNDRAINED: &str = "did not acknowledge";

/// How long a process may take to come up.
const START: Duration = Duration::from_secs(30);

/// Builds busd and busctl with this test's profile. testkit finds them beside the test
/// executable but builds them only when missing, so without this a stale binary (or, under
/// `--release`, none) would be tested.
pub fn build_binaries() {
    let ingest = std::path::Path::new(env!("CARGO_BIN_EXE_ingest"));
    let profile = ingest
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .expect("ingest's target directory");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args([
        "build", "-p", "busd", "--bin", "busd", "-p", "client", "--bin", "busctl",
    ]);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building busd and busctl failed");
}

/// Which bus a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    Busd,
    /// Three JetStream nodes and an R3 stream.
    Jetstream,
}

/// The bus and ingest as they run now, and what went wrong with them.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub bus: String,
    pub http: SocketAddr,
    busd: Option<Busd>,
    nats: Option<testkit::nats::Cluster>,
    ingest: Option<Proc>,
    /// Flags every ingest of this cluster gets besides the usual ones (`--durable`, say).
    ingest_args: Vec<String>,
    /// Findings about the processes themselves (exit codes, undrained events).
    pub failures: Vec<String>,
}

impl Cluster {
    /// Starts the bus, then ingest (which seeds accounts.db in a new directory and, on
    /// JetStream, creates the R3 stream).
    pub fn start(kind: Bus) -> Cluster {
        Cluster::start_with(kind, &[])
    }

    /// [`Cluster::start`], with `ingest_args` added to every ingest's command line.
    pub fn start_with(kind: Bus, ingest_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("a temp dir for the run");
        let nats = (kind == Bus::Jetstream).then(|| testkit::nats::Cluster::start(3));
        let bus = match &nats {
            Some(nats) => nats.urls(),
            None => format!("127.0.0.1:{}", free_port()),
        };
        let http = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("a socket address");
        let mut cluster = Cluster {
            dir,
            bus,
            http,
            busd: None,
            nats,
            ingest: None,
            ingest_args: ingest_args.iter().map(|a| a.to_string()).collect(),
            failures: Vec::new(),
        };
        if kind == Bus::Busd {
            cluster.busd = Some(cluster.spawn_busd());
        }
        cluster.ingest = Some(cluster.spawn_ingest());
        cluster
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("busd.state")
    }

    fn spawn_busd(&self) -> Busd {
        let state = self.state_file();
        let state = state.to_str().expect("a UTF-8 temp path");
        Busd::start_on(
            &self.bus,
            &["--state-file", state, "--replay-bytes", "64MiB"],
        )
    }

    fn spawn_ingest(&self) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
        command
            .current_dir(self.dir.path())
            .args(["--listen", &self.http.to_string(), "--bus", &self.bus])
            .args(["--origin", "chaos-ingest", "--drain-timeout", "60s"])
            .args(["--max-data", &MAX_DATA.to_string()])
            .args(&self.ingest_args)
            .env("RUST_LOG", "info");
        if self.nats.is_some() {
            command.args(["--replicas", "3"]);
        }
        let proc = Proc::spawn("ingest", &mut command);
        proc.wait_stderr("listening on ", START);
        proc
    }

    fn busd(&self) -> &Busd {
        self.busd.as_ref().expect("busd runs between faults")
    }

    /// SIGTERM, then a new busd on the same port and state file.
    pub fn busd_terminate_restart(&mut self) {
        let mut busd = self.busd.take().expect("busd runs between faults");
        busd.proc.signal("TERM");
        match busd.proc.try_wait_exit(Duration::from_secs(30)) {
            Some(status) if status.success() => {}
            Some(status) => self.fail(format!("busd exited with {status} on SIGTERM")),
            None => self.fail("busd did not exit within 30 s of SIGTERM".into()),
        }
        drop(busd);
        self.busd = Some(self.spawn_busd());
    }

    /// SIGKILL (a crash), then a new busd on the same port and state file.
    pub fn busd_kill_restart(&mut self) {
        let busd = self.busd.take().expect("busd runs between faults");
        busd.kill();
        self.busd = Some(self.spawn_busd());
    }

    fn nats(&mut self) -> &mut testkit::nats::Cluster {
        self.nats.as_mut().expect("a JetStream run")
    }

    /// On JetStream, each node's view of the stream: the replicas' lag and where each
    /// watcher's consumer is (see `testkit::nats::Cluster::placement`); `None` on busd.
    pub fn placement(&mut self) -> Option<String> {
        Some(self.nats.as_mut()?.placement(STREAM))
    }

    /// SIGKILL of the node leading the stream, and its restart a second later: the stream
    /// elects another leader meanwhile.
    pub fn stream_leader_kill_restart(&mut self) {
        let nats = self.nats();
        let leader = nats.wait_stream_leader(STREAM, START);
        nats.kill(leader);
        std::thread::sleep(Duration::from_secs(1));
        nats.restart(leader);
    }

    /// Every node stopped for five seconds, then all started again from their stores.
    pub fn nats_outage(&mut self) {
        let nats = self.nats();
        nats.stop_all();
        std::thread::sleep(Duration::from_secs(5));
        nats.restart_all();
    }

    /// SIGSTOP for `pause`, then SIGCONT.
    pub fn busd_freeze(&mut self, pause: Duration) {
        self.busd().signal("STOP");
        std::thread::sleep(pause);
        self.busd().signal("CONT");
    }

    /// Sends `signal` to the whole bus: busd, or every JetStream node (`STOP` and `CONT`
    /// freeze and thaw it without the bus noticing anything but lost time). For
    /// `tests/durable.rs`; the chaos schedule's faults have their own methods.
    #[allow(dead_code)]
    pub fn bus_signal(&mut self, signal: &str) {
        match self.nats.as_mut() {
            Some(nats) => (0..nats.nodes()).for_each(|i| nats.signal(i, signal)),
            None => self.busd().signal(signal),
        }
    }

    /// SIGKILL of ingest: a crash, with nothing drained. Returns once it has exited. For
    /// `tests/durable.rs`.
    #[allow(dead_code)]
    pub fn ingest_kill(&mut self) {
        if let Some(mut ingest) = self.ingest.take() {
            ingest.signal("KILL");
            let _ = ingest.try_wait_exit(Duration::from_secs(10));
        }
    }

    /// SIGTERM: ingest drains what it holds and must exit 0 having said every accepted
    /// event was acknowledged; then a new ingest on the same directory, port and origin.
    /// Returns when the new one listens.
    pub fn ingest_terminate_restart(&mut self) {
        self.stop_ingest();
        self.ingest = Some(self.spawn_ingest());
    }

    /// SIGTERM to ingest and the checks of its drain.
    fn stop_ingest(&mut self) {
        let Some(mut ingest) = self.ingest.take() else {
            return;
        };
        let started = Instant::now();
        ingest.signal("TERM");
        let exit = ingest.try_wait_exit(DRAIN_TIMEOUT + Duration::from_secs(15));
        let log = drain_report(&ingest);
        match exit {
            Some(status) if status.success() => {}
            Some(status) => self.fail(format!("ingest exited with {status} on SIGTERM")),
            None => self.fail(format!(
                "ingest did not exit within {:?} of SIGTERM",
                started.elapsed()
            )),
        }
        if let Some(line) = log.lines().find(|l| l.contains(UNDRAINED)) {
            self.fail(format!("ingest lost accepted events on SIGTERM: {line}"));
        } else if exit.is_some() && !log.contains(DRAINED) {
            self.fail("ingest exited without saying every accepted event was acknowledged".into());
        }
    }

    /// Stops both at the end of a run; busd must exit 0 too.
    pub fn stop(mut self) -> Vec<String> {
        self.stop_ingest();
        if let Some(mut busd) = self.busd.take() {
            busd.proc.signal("TERM");
            match busd.proc.try_wait_exit(Duration::from_secs(30)) {
                Some(status) if status.success() => {}
                Some(status) => self.fail(format!("busd exited with {status} at the end")),
                None => self.fail("busd did not exit within 30 s at the end".into()),
            }
        }
        self.failures
    }

    fn fail(&mut self, message: String) {
        eprintln!("chaos: FAILURE {message}");
        self.failures.push(message);
    }
}

/// ingest's log once its drain report has been read: the process may have exited before
/// the thread reading its stderr got that far.
fn drain_report(ingest: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = ingest.stderr_log();
        if log.contains(DRAINED) || log.contains(UNDRAINED) || Instant::now() >= deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
