//! A real `busctl watch --format json` process, read on its own threads so its pipes never
//! fill, with every line stamped on arrival.
//!
//! Lines are turned into compact records as they arrive (an id, not the data), so a long
//! run keeps memory modest.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::checker::{Accounts, At, Delivery};
use super::ident::identify;

/// Stdout gaps longer than this are remembered, to report the longest silence.
const SILENCE: Duration = Duration::from_millis(100);

/// At most this many unparseable lines are kept (all are counted as failures).
const BAD_LINES: usize = 20;

/// Settling: done when no watcher printed or said anything for this long while none was
/// reconnecting, or for [`SETTLED_COMPLETE`] once every watcher has all it is owed; at most
/// [`SETTLE_AT_MOST`].
const SETTLED: Duration = Duration::from_secs(5);
const SETTLED_COMPLETE: Duration = Duration::from_secs(1);
const SETTLE_AT_MOST: Duration = Duration::from_secs(120);

/// What a watcher's stdout carried.
#[derive(Default)]
pub struct Printed {
    pub deliveries: Vec<Delivery>,
    pub gaps: Vec<At>,
    pub bad_lines: Vec<String>,
    /// Stretches of more than [`SILENCE`] without a line, as (from, to).
    pub silences: Vec<(At, At)>,
    pub last_line: Option<At>,
}

/// What a watcher's stderr carried that the check needs.
#[derive(Default)]
pub struct Said {
    pub live: Option<At>,
    pub nothing_missed: Vec<At>,
}

/// A finished watcher: everything it printed.
pub struct Record {
    pub name: String,
    pub accounts: Accounts,
    pub live: Option<At>,
    pub stopped: At,
    pub printed: Printed,
    pub said: Said,
    pub exit: Option<ExitStatus>,
}

/// A running watcher.
pub struct Watcher {
    pub name: String,
    accounts: Accounts,
    child: KillOnDrop,
    stdout: JoinHandle<Printed>,
    stderr: JoinHandle<Said>,
    live: Receiver<At>,
    live_at: Option<At>,
    /// Events printed so far, for waiting until the stream settles.
    pub delivered: Arc<AtomicUsize>,
    /// Lines said on stderr so far: a watcher catching up says so before it prints.
    said: Arc<AtomicUsize>,
    /// Whether the last thing it said is that it is reconnecting: its silence then says
    /// nothing about whether it has everything.
    reconnecting: Arc<AtomicBool>,
}

impl Watcher {
    /// Starts `busctl watch` on `bus` for `accounts`; `start` is the run's clock.
    pub fn start(name: &str, bus: &str, accounts: &Accounts, start: Instant) -> Watcher {
        let mut command = Command::new(testkit::binary("client", "busctl"));
        command.args(["watch", "--bus", bus, "--format", "json"]);
        match accounts {
            Accounts::All => command.arg("--all"),
            Accounts::Only(set) => command.args(["--accounts", &list(set)]),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("busctl for {name} starts: {e}"));
        let delivered = Arc::new(AtomicUsize::new(0));
        let out = child.stdout.take().expect("busctl stdout is piped");
        let err = child.stderr.take().expect("busctl stderr is piped");
        let (live_tx, live) = channel();
        let counter = delivered.clone();
        let stdout = spawn_reader(name, move || read_stdout(out, start, &counter));
        let label = name.to_owned();
        let said = Arc::new(AtomicUsize::new(0));
        let reconnecting = Arc::new(AtomicBool::new(false));
        let state = (said.clone(), reconnecting.clone());
        let stderr = spawn_reader(name, move || {
            read_stderr(err, &label, start, live_tx, (&state.0, &state.1))
        });
        Watcher {
            name: name.to_owned(),
            accounts: accounts.clone(),
            child: KillOnDrop(child),
            stdout,
            stderr,
            live,
            live_at: None,
            delivered,
            said,
            reconnecting,
        }
    }

    /// Waits until it says it is live; `None` if it does not within `within`.
    pub fn wait_live(&mut self, within: Duration) -> Option<At> {
        if self.live_at.is_none() {
            self.live_at = self.live.recv_timeout(within).ok();
        }
        self.live_at
    }

    /// Sends `signal` (KILL or TERM), waits for the exit and collects what it printed.
    /// `stopped` is when the signal was sent, on the run's clock.
    pub fn stop(mut self, signal: &str, start: Instant) -> Record {
        let stopped = At::from_duration(start.elapsed());
        let child = &mut self.child.0;
        send_signal(child.id(), signal);
        let exit = wait_exit(child, Duration::from_secs(15));
        if exit.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let printed = self
            .stdout
            .join()
            .expect("the stdout reader does not panic");
        let said = self
            .stderr
            .join()
            .expect("the stderr reader does not panic");
        Record {
            name: self.name,
            accounts: self.accounts,
            live: self.live_at.or(said.live),
            stopped,
            printed,
            said,
            exit,
        }
    }
}

/// A watcher left running (a panicking test) must not outlive it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn list(set: &std::collections::HashSet<u32>) -> String {
    let mut ids: Vec<u32> = set.iter().copied().collect();
    ids.sort_unstable();
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn spawn_reader<T: Send + 'static>(
    name: &str,
    read: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(format!("{name}-reader"))
        .spawn(read)
        .expect("a reader thread starts")
}

/// One stdout line of `busctl watch --format json`; other keys are ignored.
#[derive(serde::Deserialize)]
struct Line<'a> {
    gap: Option<serde::de::IgnoredAny>,
    account_id: Option<u64>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

fn read_stdout(source: impl Read, start: Instant, delivered: &AtomicUsize) -> Printed {
    let mut printed = Printed::default();
    for line in BufReader::with_capacity(1 << 16, source)
        .lines()
        .map_while(Result::ok)
    {
        let at = At::from_duration(start.elapsed());
        note_silence(&mut printed, at);
        match serde_json::from_str::<Line<'_>>(&line) {
            Ok(Line { gap: Some(_), .. }) => printed.gaps.push(at),
            Ok(Line {
                account_id: Some(account),
                data: Some(data),
                ..
            }) => match identify(&data) {
                Some(seen) => {
                    printed.deliveries.push(Delivery::new(account, seen));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                None => bad_line(&mut printed, line),
            },
            _ => bad_line(&mut printed, line),
        }
    }
    printed
}

fn note_silence(printed: &mut Printed, at: At) {
    if let Some(last) = printed.last_line {
        if at > last.plus(SILENCE) {
            printed.silences.push((last, at));
        }
    }
    printed.last_line = Some(at);
}

fn bad_line(printed: &mut Printed, mut line: String) {
    if printed.bad_lines.len() < BAD_LINES {
        line.truncate(200);
        printed.bad_lines.push(line);
    }
}

/// Echoes status lines (so a failing run shows them) and notes `live` and "nothing was
/// missed".
fn read_stderr(
    source: impl Read,
    label: &str,
    start: Instant,
    live: Sender<At>,
    (lines, reconnecting): (&AtomicUsize, &AtomicBool),
) -> Said {
    let mut said = Said::default();
    for line in BufReader::new(source).lines().map_while(Result::ok) {
        let at = At::from_duration(start.elapsed());
        eprintln!("{label} {at:?}: {line}");
        lines.fetch_add(1, Ordering::Relaxed);
        if line.contains("reconnecting (attempt") {
            reconnecting.store(true, Ordering::Relaxed);
        } else if ["live (epoch", "resumed after", "busd restarted"]
            .iter()
            .any(|s| line.contains(s))
        {
            reconnecting.store(false, Ordering::Relaxed);
        }
        if said.live.is_none() && line.contains("live (epoch") {
            said.live = Some(at);
            let _ = live.send(at);
        }
        if line.contains("nothing was missed") {
            said.nothing_missed.push(at);
        }
    }
    said
}

/// Waits until the watchers have received everything they will: each has `expected`
/// events (in order), or none printed or said anything for a while and none is
/// reconnecting (one that is may still have a backlog on its way). `label` names the test
/// in the message when it gives up.
pub fn settle(watchers: &[&Watcher], expected: &[usize], label: &str) {
    let count = || -> Vec<(usize, usize)> {
        watchers
            .iter()
            .map(|w| {
                let said = w.said.load(Ordering::Relaxed);
                (w.delivered.load(Ordering::Relaxed), said)
            })
            .collect()
    };
    let began = Instant::now();
    let (mut last, mut since) = (count(), Instant::now());
    while began.elapsed() < SETTLE_AT_MOST {
        std::thread::sleep(Duration::from_millis(200));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
            continue;
        }
        let complete = now.iter().zip(expected).all(|(&(n, _), &e)| n >= e);
        let reconnecting = watchers
            .iter()
            .any(|w| w.reconnecting.load(Ordering::Relaxed));
        let quiet = since.elapsed() >= SETTLED && !reconnecting;
        if quiet || (complete && since.elapsed() >= SETTLED_COMPLETE) {
            return;
        }
    }
    eprintln!("{label}: the watchers were still receiving after {SETTLE_AT_MOST:?}");
}

pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on busctl") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
