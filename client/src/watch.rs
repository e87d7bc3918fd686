//! `busctl watch`: a [`Subscriber`] printed to stdout.
//!
//! The subscriber does the hard part (reconnects, resume, restart gaps, copies dropped);
//! this module decides what busctl does with what it hands out: events to the output task
//! up to `--count`, gaps to stdout and stderr (and the exit `--exit-on-gap` asks for),
//! notices to stderr, and the exit code when the subscription ends.

use std::time::Duration;

use protocol::{Filter, ServerFrame};
use tokio::sync::mpsc;

use crate::aggregate::Aggregator;
use crate::cli::{WatchArgs, exit};
use crate::output::{self, Output};
use crate::render::describe_gap;
use crate::session::Welcome;
use crate::status;
use crate::subscriber::{self, Delivery, Options, SubscribeError, Subscriber};

/// Runs `busctl watch` until `--count`, an exit flag, or Ctrl-C; returns the exit code.
pub async fn run(args: WatchArgs) -> i32 {
    let (tx, rx) = mpsc::channel(256);
    let aggregator = args
        .aggregate
        .map(|window| Aggregator::new(window, args.top));
    let output = tokio::spawn(output::run(
        rx,
        args.plain_format(),
        args.template.clone(),
        aggregator,
    ));
    let mut subscriber = Subscriber::new(options(&args));
    let mut watch = Watch::new(args, tx);
    let code = tokio::select! {
        code = watch.run(&mut subscriber) => code,
        _ = plumbing::signal::interrupted() => exit::OK,
    };
    let (events, gaps, reconnects) = (watch.events, watch.gaps, subscriber.reconnects());
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

/// The subscription `args` ask for.
fn options(args: &WatchArgs) -> Options {
    let filter = match &args.accounts {
        Some(list) if !args.all => Filter::Accounts(list.0.clone()),
        _ => Filter::All,
    };
    Options {
        bus: args.bus.bus.clone(),
        layout: args.bus.layout(),
        token: args.bus.token.clone(),
        // A group member says which group it is in, for `busctl stats`.
        name: match &args.group {
            Some(group) => format!("busctl-watch-{}@{group}", std::process::id()),
            None => format!("busctl-watch-{}", std::process::id()),
        },
        filter,
        max_outage: args.max_outage,
        resume: None,
        group: args.group.clone(),
        start: args.start(),
        origins: args.origins.iter().cloned().collect(),
    }
}

/// What busctl has done with the subscriber's deliveries so far.
struct Watch {
    args: WatchArgs,
    output: mpsc::Sender<Output>,
    events: u64,
    gaps: u64,
}

impl Watch {
    fn new(args: WatchArgs, output: mpsc::Sender<Output>) -> Self {
        Watch {
            args,
            output,
            events: 0,
            gaps: 0,
        }
    }

    async fn run(&mut self, subscriber: &mut Subscriber) -> i32 {
        loop {
            match subscriber.next().await {
                Ok(delivery) => {
                    if let Some(code) = self.on_delivery(delivery).await {
                        return code;
                    }
                }
                Err(SubscribeError::Outage(outage)) => {
                    let max = self.args.max_outage.unwrap_or(outage.down);
                    status!(
                        "giving up: the bus was unreachable for {}s (--max-outage {})",
                        outage.down.as_secs(),
                        humantime::format_duration(max)
                    );
                    return exit::OUTAGE;
                }
                Err(err) => {
                    status!("{err}");
                    return exit::ERROR;
                }
            }
        }
    }

    /// Acts on one delivery; `Some` is the exit code when watching is over.
    async fn on_delivery(&mut self, delivery: Delivery) -> Option<i32> {
        match delivery {
            Delivery::Notice(notice) => {
                status!("{notice}");
                None
            }
            Delivery::Gap(gap) => {
                self.gaps += 1;
                status!("gap: {}", describe_gap(&gap));
                let _ = self.output.send(Output::Gap(gap)).await;
                self.args.exit_on_gap.then_some(exit::GAP)
            }
            Delivery::Events { epoch, mut events } => {
                if let Some(pattern) = &self.args.matches {
                    events.retain(|(_, event)| pattern.is_match(&event.data));
                }
                if let Some(count) = self.args.count {
                    let left = count.saturating_sub(self.events);
                    events.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                }
                if events.is_empty() {
                    return None;
                }
                self.events += events.len() as u64;
                if self
                    .output
                    .send(Output::Events { epoch, events })
                    .await
                    .is_err()
                {
                    return Some(exit::OK);
                }
                if self.args.group.is_some() && !self.synced().await {
                    return Some(exit::OK);
                }
                match self.args.count {
                    Some(count) if self.events >= count => Some(exit::OK),
                    _ => None,
                }
            }
        }
    }

    /// Waits until the output task has written out everything sent so far: a group
    /// member asks for more, which acknowledges what it was handed, only then. `false`
    /// when the output task is gone.
    async fn synced(&self) -> bool {
        let (done, written) = tokio::sync::oneshot::channel();
        self.output.send(Output::Synced(done)).await.is_ok() && written.await.is_ok()
    }
}

/// Drives busctl watch's decisions over `sessions`, each a connection's `Welcome` and the
/// frames read on it, without sockets, and returns what it would have printed: the
/// subscriber's (resume points, restart gaps, copies dropped by `(origin, id)`) and busctl's
/// own (`--count`, `--exit-on-gap`). What tests and the fuzz targets run in place of a busd.
pub async fn replay(args: WatchArgs, sessions: Vec<(Welcome, Vec<ServerFrame>)>) -> Vec<Output> {
    let deliveries = subscriber::replay(sessions);
    let (tx, mut rx) = mpsc::channel(deliveries.len().max(1));
    let mut watch = Watch::new(args, tx);
    for delivery in deliveries {
        if watch.on_delivery(delivery).await.is_some() {
            break;
        }
    }
    drop(watch);
    let mut printed = Vec::new();
    while let Some(output) = rx.recv().await {
        printed.push(output);
    }
    printed
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use protocol::Event;

    fn welcome(epoch: u64) -> Welcome {
        Welcome {
            epoch,
            head_seq: 0,
            max_frame: 1 << 20,
            follows: None,
        }
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

    fn event(id: u64) -> Event {
        Event {
            account_id: 1,
            timestamp_us: 0,
            data: format!("o-{id}"),
            origin: "o".into(),
            id,
        }
    }

    #[tokio::test]
    async fn exit_on_gap_stops_at_the_gap() {
        let frames = vec![
            ServerFrame::Gap {
                from_seq: 1,
                to_seq: 4,
                missed: 4,
            },
            ServerFrame::Events(vec![(5, event(5))]),
        ];
        let out = replay(args(&["--exit-on-gap"]), vec![(welcome(10), frames)]).await;
        assert_eq!(out.len(), 1, "the gap, and nothing after it");
    }

    #[tokio::test]
    async fn match_filters_before_count() {
        let frames = vec![ServerFrame::Events(
            (1..=6).map(|id| (id, event(id))).collect(),
        )];
        let out = replay(
            args(&["--match", "^o-[246]$", "--count", "2"]),
            vec![(welcome(10), frames)],
        )
        .await;
        let printed = printed_seqs(&out);
        assert_eq!(printed, [2, 4]);
    }

    /// The seqs of the events printed, in order.
    fn printed_seqs(out: &[Output]) -> Vec<u64> {
        out.iter()
            .flat_map(|o| match o {
                Output::Events { events, .. } => events.iter().map(|(seq, _)| *seq).collect(),
                Output::Gap(_) | Output::Synced(_) => vec![],
            })
            .collect()
    }

    #[tokio::test]
    async fn count_stops_inside_a_frame() {
        let frames = vec![
            ServerFrame::Events((1..=5).map(|id| (id, event(id))).collect()),
            ServerFrame::Events(vec![(6, event(6))]),
        ];
        let out = replay(args(&["--count", "3"]), vec![(welcome(10), frames)]).await;
        let printed = printed_seqs(&out);
        assert_eq!(printed, [1, 2, 3]);
    }
}
