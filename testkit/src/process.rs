//! Real processes under test: their stdout and stderr lines arrive on channels (and stderr is
//! echoed, so a failing test shows what the program said), and they die with the test.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary, building it first if this test run has not.
///
/// `CARGO_BIN_EXE_<name>` only exists for a package's own binaries; tests of one crate that
/// drive another crate's binary find it beside their own executable in the target directory.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {name} failed");
    }
    path
}

/// A loopback port that was free a moment ago, for a process that must be restarted on the
/// same port. Prefer `--listen 127.0.0.1:0` and reading the address where possible.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running process; killed when dropped.
pub struct Proc {
    child: Child,
    label: String,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
    /// Every stderr line so far, whether or not a wait has consumed it.
    history: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(label: &str, command: &mut Command) -> Proc {
        let mut child = spawn_group(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .unwrap_or_else(|e| panic!("{label} starts: {e}"));
        let history = Arc::new(Mutex::new(Vec::new()));
        let stdout = lines(child.stdout.take().expect("stdout"), None, None);
        let stderr = lines(
            child.stderr.take().expect("stderr"),
            Some(label.to_owned()),
            Some(history.clone()),
        );
        Proc {
            child,
            label: label.into(),
            stdout,
            stderr,
            history,
        }
    }

    /// Everything the process has written to stderr so far.
    pub fn stderr_log(&self) -> String {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> String {
        wait_line(&self.stderr, needle, within)
            .unwrap_or_else(|| panic!("{} never said {needle:?} on stderr", self.label))
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_stdout(&self, needle: &str, within: Duration) -> String {
        wait_line(&self.stdout, needle, within)
            .unwrap_or_else(|| panic!("{} never printed {needle:?}", self.label))
    }

    /// The address after "listening on " in the process's log.
    pub fn listening_addr(&self) -> SocketAddr {
        let line = self.wait_stderr("listening on ", Duration::from_secs(20));
        let rest = line.split("listening on ").nth(1).expect("an address");
        let addr = rest.split_whitespace().next().expect("an address");
        addr.parse().expect("a socket address")
    }

    /// The next `n` stdout lines.
    pub fn stdout_lines(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.stdout
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("{} printed {i} of {n} expected lines", self.label))
            })
            .collect()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.label);
    }

    /// Waits for the process to exit, failing the test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.try_wait_exit(within)
            .unwrap_or_else(|| panic!("{} did not exit within {within:?}", self.label))
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running, for a
    /// test that reports a hung process as one finding among others instead of stopping.
    pub fn try_wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// Starts `command` as the leader of a process group of its own, so that whatever it starts
/// (nginx's workers, say) can be stopped with it by [`stop_group`].
pub fn spawn_group(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    command.process_group(0).spawn()
}

/// Stops the process group `child` leads: SIGTERM, so servers shut down their workers
/// cleanly, then SIGKILL for whatever is left after a second, then reaps `child`.
pub fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |name: &str| {
        let _ = Command::new("kill")
            .args([name, "--", &group])
            .stderr(Stdio::null())
            .status();
    };
    if matches!(child.try_wait(), Ok(None)) {
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(1);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The leader may be gone while its children are not: the group outlives it.
    signal("-KILL");
    let _ = child.wait();
}

fn lines(
    source: impl Read + Send + 'static,
    echo: Option<String>,
    history: Option<Arc<Mutex<Vec<String>>>>,
) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            if let Some(label) = &echo {
                eprintln!("{label}: {line}");
            }
            if let Some(history) = &history {
                history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
            }
            let _ = tx.send(line);
        }
    });
    rx
}

fn wait_line(lines: &Receiver<String>, needle: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        }
    }
}
