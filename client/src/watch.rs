//! `busctl watch`: the loop that never gives up on the bus.
//!
//! It remembers the last position it printed (epoch, seq) and, after any disconnect,
//! reconnects with backoff, sends its filter again with `resume_after` that position, and
//! prints only what is new. A busd restart shows up as a new epoch. Nothing was missed only
//! when the new busd's `Welcome` says it directly follows the run we were watching and we
//! had everything up to that run's last seq (its `Goodbye`); a chain that does not reach
//! back to our epoch (a crash, or a restart we slept through) is a gap of unknown size.
//!
//! Events also carry `(origin, id)`, with ids growing per origin. After a busd crash a
//! publisher resends the batches the dead busd had not acknowledged, and the new busd
//! numbers them afresh; the watcher drops any event whose id is not above the last it
//! printed from that origin, so such a copy is never printed twice.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, Event, Filter, Position, Role, ServerFrame};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::aggregate::Aggregator;
use crate::cli::{WatchArgs, exit};
use crate::output::{self, Output};
use crate::render::{GapReport, describe_gap};
use crate::session::{self, Conn, SessionError, Welcome};
use crate::status;
use plumbing::backoff::Backoff;

/// busd heartbeats a subscriber idle for a second; this long without any frame is "quiet",
/// and busctl pings to find out whether busd is still there.
const QUIET_AFTER: Duration = Duration::from_millis(2500);
/// This long without any frame (the ping unanswered) and the connection is taken for dead.
const DEAD_AFTER: Duration = Duration::from_secs(5);

/// Runs `busctl watch` until `--count`, an exit flag, or Ctrl-C; returns the exit code.
pub async fn run(args: WatchArgs) -> i32 {
    let (tx, rx) = mpsc::channel(256);
    let aggregator = args
        .aggregate
        .map(|window| Aggregator::new(window, args.top));
    let output = tokio::spawn(output::run(rx, args.format, aggregator));
    let mut watch = Watch::new(args, tx);
    let code = tokio::select! {
        code = watch.run() => code,
        _ = plumbing::signal::interrupted() => exit::OK,
    };
    let (events, gaps, reconnects) = (watch.events, watch.gaps, watch.reconnects);
    drop(watch);
    let written = tokio::time::timeout(Duration::from_secs(5), output).await;
    status!("{events} events, {gaps} gaps, {reconnects} reconnects");
    match written {
        Ok(Ok(Err(err))) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            status!("cannot write to stdout: {err}");
            exit::ERROR
        }
        _ => code,
    }
}

/// How one connection ended.
enum Ended {
    Lost(String),
    Exit(i32),
}

struct Watch {
    args: WatchArgs,
    filter: Filter,
    name: String,
    output: mpsc::Sender<Output>,
    /// The last seq printed (or, before any, where watching started), in busd's epoch.
    position: Option<Position>,
    /// Per origin, the highest event id printed: anything at or below it is a copy.
    printed: HashMap<String, u64>,
    events: u64,
    gaps: u64,
    reconnects: u64,
}

impl Watch {
    fn new(args: WatchArgs, output: mpsc::Sender<Output>) -> Self {
        let filter = match &args.accounts {
            Some(list) if !args.all => Filter::Accounts(list.0.clone()),
            _ => Filter::All,
        };
        Watch {
            args,
            filter,
            name: format!("busctl-watch-{}", std::process::id()),
            output,
            position: None,
            printed: HashMap::new(),
            events: 0,
            gaps: 0,
            reconnects: 0,
        }
    }

    async fn run(&mut self) -> i32 {
        let mut backoff = Backoff::default();
        let mut down_since = Instant::now();
        let mut connected_before = false;
        status!("connecting to {}", self.args.bus.bus);
        loop {
            let opened = session::open(
                &self.args.bus.bus,
                Role::Subscriber,
                &self.name,
                self.args.bus.token.as_deref(),
            )
            .await;
            let reason = match opened {
                Ok((conn, welcome)) => {
                    if connected_before {
                        self.reconnects += 1;
                    }
                    connected_before = true;
                    backoff.reset();
                    match self.stream(conn, welcome).await {
                        Ended::Exit(code) => return code,
                        Ended::Lost(reason) => {
                            down_since = Instant::now();
                            reason
                        }
                    }
                }
                Err(err) if err.is_fatal() => {
                    status!("{err}");
                    return exit::ERROR;
                }
                Err(err) => err.to_string(),
            };
            let down = down_since.elapsed();
            let mut delay = backoff.next_delay();
            if let Some(max) = self.args.max_outage {
                if down >= max {
                    status!(
                        "giving up: busd unreachable for {}s (--max-outage {})",
                        down.as_secs(),
                        humantime::format_duration(max)
                    );
                    return exit::OUTAGE;
                }
                delay = delay.min(max - down);
            }
            status!(
                "reconnecting (attempt {}, down {}s): {reason}",
                backoff.attempt(),
                down.as_secs()
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Subscribes on a fresh connection and prints what arrives until it ends.
    async fn stream(&mut self, mut conn: Conn, welcome: Welcome) -> Ended {
        let first = self.position.is_none();
        let resume = match self.resume_point(welcome).await {
            Ok(resume) => resume,
            Err(ended) => return ended,
        };
        let subscribe = ClientFrame::Subscribe {
            filter: self.filter.clone(),
            resume_after: Some(resume),
        };
        if let Err(err) = conn.send(subscribe).await {
            return Ended::Lost(err.to_string());
        }
        if first {
            status!(
                "live (epoch {}, head seq {})",
                welcome.epoch,
                welcome.head_seq
            );
        } else {
            status!("resumed after seq {} (epoch {})", resume.seq, resume.epoch);
        }
        self.position = Some(resume);
        self.read(&mut conn).await
    }

    /// Where to resume on a connection to a busd with `welcome`, reporting any loss.
    async fn resume_point(&mut self, welcome: Welcome) -> Result<Position, Ended> {
        let Some(position) = self.position else {
            return Ok(Position {
                epoch: welcome.epoch,
                seq: welcome.head_seq,
            });
        };
        if position.epoch == welcome.epoch {
            return Ok(position);
        }
        if let Some(gap) = restart_gap(position, welcome) {
            self.report_gap(gap).await?;
        }
        Ok(Position {
            epoch: welcome.epoch,
            seq: 0,
        })
    }

    async fn read(&mut self, conn: &mut Conn) -> Ended {
        let mut last_frame = Instant::now();
        let mut quiet = false;
        loop {
            let deadline = last_frame + if quiet { DEAD_AFTER } else { QUIET_AFTER };
            let frame = match tokio::time::timeout_at(deadline, conn.next()).await {
                Err(_) if !quiet => {
                    quiet = true;
                    status!(
                        "quiet (last heartbeat {}s ago)",
                        last_frame.elapsed().as_secs()
                    );
                    let _ = conn.send(ClientFrame::Ping).await;
                    continue;
                }
                Err(_) => {
                    return Ended::Lost(format!(
                        "no heartbeat for {}s",
                        last_frame.elapsed().as_secs()
                    ));
                }
                Ok(None) => return Ended::Lost("busd closed the connection".into()),
                Ok(Some(Err(err))) => return Ended::Lost(err.to_string()),
                Ok(Some(Ok(frame))) => frame,
            };
            last_frame = Instant::now();
            if quiet {
                quiet = false;
                status!("live");
            }
            if let Some(ended) = self.on_frame(frame).await {
                return ended;
            }
        }
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Option<Ended> {
        let position = self.position.as_mut()?;
        match frame {
            ServerFrame::Events(events) => self.on_events(events).await,
            ServerFrame::Gap {
                from_seq,
                to_seq,
                missed,
            } => {
                position.seq = position.seq.max(to_seq);
                let gap = GapReport {
                    from_seq,
                    to_seq: Some(to_seq),
                    missed: Some(missed),
                    epoch: position.epoch,
                };
                self.report_gap(gap).await.err()
            }
            ServerFrame::Goodbye { epoch, last_seq } => {
                // busd flushes our queue before Goodbye: we have all of ours up to last_seq.
                if position.epoch == epoch {
                    position.seq = position.seq.max(last_seq);
                }
                status!("busd is shutting down (epoch {epoch}, last seq {last_seq}); will resume");
                Some(Ended::Lost("busd said goodbye".into()))
            }
            ServerFrame::Error { code, message } => {
                let err = SessionError::Refused { code, message };
                if err.is_fatal() {
                    status!("{err}");
                    Some(Ended::Exit(exit::ERROR))
                } else {
                    Some(Ended::Lost(err.to_string()))
                }
            }
            ServerFrame::Heartbeat { .. }
            | ServerFrame::Pong
            | ServerFrame::Welcome { .. }
            | ServerFrame::PubAck { .. }
            | ServerFrame::Stats(_) => None,
        }
    }

    /// Prints events not seen before, up to `--count`.
    async fn on_events(&mut self, events: Vec<(u64, Event)>) -> Option<Ended> {
        let position = self.position.as_mut()?;
        let mut fresh = Vec::with_capacity(events.len());
        for (seq, event) in events {
            // Seqs only go forward: a frame out of order (from no busd of ours) prints
            // nothing twice and nothing backwards.
            if seq <= position.seq {
                continue;
            }
            // Past copies too, so a resume does not ask for them again.
            position.seq = seq;
            if is_new(&mut self.printed, &event) {
                fresh.push((seq, event));
            }
        }
        if let Some(count) = self.args.count {
            fresh
                .truncate(usize::try_from(count.saturating_sub(self.events)).unwrap_or(usize::MAX));
        }
        if fresh.is_empty() {
            return None;
        }
        self.events += fresh.len() as u64;
        let epoch = position.epoch;
        let output = Output::Events {
            epoch,
            events: fresh,
        };
        if self.output.send(output).await.is_err() {
            return Some(Ended::Exit(exit::OK));
        }
        match self.args.count {
            Some(count) if self.events >= count => Some(Ended::Exit(exit::OK)),
            _ => None,
        }
    }

    async fn report_gap(&mut self, gap: GapReport) -> Result<(), Ended> {
        self.gaps += 1;
        status!("gap: {}", describe_gap(&gap));
        let _ = self.output.send(Output::Gap(gap)).await;
        if self.args.exit_on_gap {
            return Err(Ended::Exit(exit::GAP));
        }
        Ok(())
    }
}

/// Drives the watcher's decisions over `sessions`, each a connection's `Welcome` and the
/// frames read on it, without sockets, and returns what it would have printed: resume
/// points, restart gaps, copies dropped by `(origin, id)`, `--count`, `--exit-on-gap`. What
/// tests and the fuzz targets run in place of a busd.
pub async fn replay(args: WatchArgs, sessions: Vec<(Welcome, Vec<ServerFrame>)>) -> Vec<Output> {
    let frames: usize = sessions.iter().map(|(_, f)| f.len() + 1).sum();
    let (tx, mut rx) = mpsc::channel(frames.max(1));
    let mut watch = Watch::new(args, tx);
    'sessions: for (welcome, frames) in sessions {
        match watch.resume_point(welcome).await {
            Ok(position) => watch.position = Some(position),
            Err(_) => break,
        }
        for frame in frames {
            match watch.on_frame(frame).await {
                Some(Ended::Exit(_)) => break 'sessions,
                Some(Ended::Lost(_)) => continue 'sessions,
                None => {}
            }
        }
    }
    drop(watch);
    let mut printed = Vec::new();
    while let Some(output) = rx.recv().await {
        printed.push(output);
    }
    printed
}

/// What a restart into `welcome`'s epoch cost a watcher at `position` of an older epoch:
/// nothing (`None`) only when busd's chain proves it, else the gap to report.
fn restart_gap(position: Position, welcome: Welcome) -> Option<GapReport> {
    let (old, new) = (position.epoch, welcome.epoch);
    // busd's numbers are a peer's: saturate rather than trust them not to overflow.
    let gap = |to_seq: Option<u64>| GapReport {
        from_seq: position.seq.saturating_add(1),
        to_seq,
        missed: to_seq.map(|to| to.saturating_sub(position.seq)),
        epoch: old,
    };
    match welcome.follows {
        Some(prev) if prev.epoch == old && position.seq >= prev.seq => {
            status!(
                "busd restarted (epoch {old} -> {new}) right after the run whose end we saw: nothing was missed"
            );
            None
        }
        Some(prev) if prev.epoch == old => {
            status!(
                "busd restarted (epoch {old} -> {new}); epoch {old} ended at seq {} before we had it all",
                prev.seq
            );
            Some(gap(Some(prev.seq)))
        }
        Some(prev) => {
            status!(
                "busd restarted (epoch {old} -> {new}) after epoch {}, a run this watcher never saw",
                prev.epoch
            );
            Some(gap(None))
        }
        None => {
            status!("busd restarted (epoch {old} -> {new}) without a Goodbye");
            Some(gap(None))
        }
    }
}

/// Whether `event` is above the last id printed from its origin; if so it becomes the mark.
fn is_new(printed: &mut HashMap<String, u64>, event: &Event) -> bool {
    match printed.get_mut(&event.origin) {
        Some(last) if event.id <= *last => false,
        Some(last) => {
            *last = event.id;
            true
        }
        None => {
            printed.insert(event.origin.clone(), event.id);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn welcome(epoch: u64, follows: Option<(u64, u64)>) -> Welcome {
        Welcome {
            epoch,
            head_seq: 0,
            max_frame: 1 << 20,
            follows: follows.map(|(epoch, seq)| Position { epoch, seq }),
        }
    }

    #[test]
    fn only_an_unbroken_chain_means_nothing_was_missed() {
        let at = Position { epoch: 10, seq: 50 };
        assert_eq!(restart_gap(at, welcome(20, Some((10, 50)))), None);
        let short = restart_gap(at, welcome(20, Some((10, 80)))).unwrap();
        assert_eq!(
            (short.from_seq, short.to_seq, short.missed),
            (51, Some(80), Some(30))
        );
        // Two restarts while we were away: the chain names epoch 15, not ours.
        let skipped = restart_gap(at, welcome(20, Some((15, 7)))).unwrap();
        assert_eq!(
            (skipped.from_seq, skipped.to_seq, skipped.missed),
            (51, None, None)
        );
        let crashed = restart_gap(at, welcome(20, None)).unwrap();
        assert_eq!((crashed.to_seq, crashed.epoch), (None, 10));
    }

    #[test]
    fn copies_are_dropped_per_origin() {
        let event = |origin: &str, id| Event {
            account_id: 1,
            timestamp_us: 0,
            data: String::new(),
            origin: origin.into(),
            id,
        };
        let mut printed = HashMap::new();
        assert!(is_new(&mut printed, &event("a", 5)));
        assert!(is_new(&mut printed, &event("b", 1)));
        assert!(!is_new(&mut printed, &event("a", 5)));
        assert!(!is_new(&mut printed, &event("a", 4)));
        assert!(is_new(&mut printed, &event("a", 6)));
    }

    fn args(extra: &[&str]) -> WatchArgs {
        let mut argv = vec!["busctl", "watch", "--format", "json"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Watch(args),
            }) => args,
            other => panic!("{other:?}"),
        }
    }

    fn event(origin: &str, id: u64) -> Event {
        Event {
            account_id: 1,
            timestamp_us: 0,
            data: format!("{origin}-{id}"),
            origin: origin.into(),
            id,
        }
    }

    fn printed(outputs: &[Output]) -> Vec<(u64, u64, String)> {
        outputs
            .iter()
            .flat_map(|o| match o {
                Output::Events { epoch, events } => events
                    .iter()
                    .map(|(seq, e)| (*epoch, *seq, e.data.clone()))
                    .collect(),
                Output::Gap(_) => vec![],
            })
            .collect()
    }

    #[tokio::test]
    async fn a_crash_reports_a_gap_and_drops_the_resent_copies() {
        let first = welcome(10, None);
        let frames = vec![ServerFrame::Events(vec![
            (1, event("o", 1)),
            (2, event("o", 2)),
        ])];
        // busd crashed before acknowledging id 2: the publisher sent it again to the next.
        let second = welcome(20, None);
        let again = vec![ServerFrame::Events(vec![
            (1, event("o", 2)),
            (2, event("o", 3)),
        ])];
        let out = replay(args(&[]), vec![(first, frames), (second, again)]).await;
        assert!(matches!(
            out[1],
            Output::Gap(GapReport { to_seq: None, .. })
        ));
        assert_eq!(
            printed(&out),
            [
                (10, 1, "o-1".into()),
                (10, 2, "o-2".into()),
                (20, 2, "o-3".into())
            ]
        );
    }

    #[tokio::test]
    async fn seqs_never_go_back_within_a_frame() {
        let frames = vec![ServerFrame::Events(vec![
            (5, event("o", 5)),
            (3, event("o", 9)),
        ])];
        let out = replay(args(&[]), vec![(welcome(10, None), frames)]).await;
        assert_eq!(printed(&out), [(10, 5, "o-5".into())]);
    }

    #[tokio::test]
    async fn exit_on_gap_stops_at_the_gap() {
        let frames = vec![
            ServerFrame::Gap {
                from_seq: 1,
                to_seq: 4,
                missed: 4,
            },
            ServerFrame::Events(vec![(5, event("o", 5))]),
        ];
        let out = replay(args(&["--exit-on-gap"]), vec![(welcome(10, None), frames)]).await;
        assert_eq!(out.len(), 1, "the gap, and nothing after it");
    }
}
