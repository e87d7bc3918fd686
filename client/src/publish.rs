//! `busctl publish`: events by hand or from stdin, through the same [`Publisher`] ingest
//! uses, so they are delivered at least once to busd and never twice.
//!
//! The events go into a small outbox (a window of batches, whatever `--repeat` says or
//! stdin holds) and the command waits whenever it is full, and between events as `--rate`
//! says; it ends when busd has acknowledged every event, when busd refuses it, or when busd
//! stays away for `--max-outage`.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use protocol::publish::max_event_len;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use crate::cli::{PublishArgs, Rate, exit};
use crate::event_line::{self, EventLine};
use crate::outbox::{Full, Limits, Outbox};
use crate::publisher::{PublishError, Publisher, Report, Settings};
use crate::status;

/// Events per batch, and a byte budget that keeps frames under busd's 1 MiB default.
const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;
/// Batches the outbox holds: all `publish` ever keeps in memory.
const WINDOW: usize = 16;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run has handed the outbox, and what it passed over.
#[derive(Default)]
struct Tally {
    given: Cell<u64>,
    skipped: Cell<u64>,
}

/// Runs `busctl publish`; returns the exit code.
pub async fn run(args: PublishArgs) -> i32 {
    // Unique per run: busd keeps one live process per publisher name.
    let name = format!("busctl-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let data = args.data.as_deref().unwrap_or_default();
    let outbox = Arc::new(Outbox::new(limits(data, &name), plumbing::clock::now_ns()));
    let settings = Settings {
        bus: args.bus.bus.clone(),
        layout: args.bus.layout(),
        token: args.bus.token.clone(),
        name: name.clone(),
        linger: Duration::ZERO,
        max_in_flight: WINDOW,
        timeout: ACK_TIMEOUT,
        max_outage: Some(args.max_outage),
        refusal_is_final: true,
    };
    let mut publisher = Publisher::start(settings, outbox, Arc::new(say));
    let outbox = publisher.outbox().clone();
    let tally = Tally::default();
    let published = tokio::select! {
        err = publisher.failed() => Err(err),
        read = publish_all(&outbox, &args, &name, &tally) => Ok(read),
    };
    let given = tally.given.get();
    let acked = given.saturating_sub(publisher.outbox().depth() as u64);
    publisher.stop().await;
    let skipped = match tally.skipped.get() {
        0 => String::new(),
        n => format!(", skipped {n} malformed lines"),
    };
    match published {
        Ok(Ok(())) => {
            status!("published {given} events to {}{skipped}", args.bus.bus);
            exit::OK
        }
        Ok(Err(err)) => {
            status!("cannot read stdin: {err}; published the {given} events before it");
            exit::ERROR
        }
        Err(PublishError::Outage(outage)) => {
            status!(
                "giving up after {}s: {acked} of {given} events acknowledged",
                outage.down.as_secs(),
            );
            exit::OUTAGE
        }
        Err(err) => {
            status!("{err}");
            exit::ERROR
        }
    }
}

/// A window of batches, each cut to fit a frame; one event alone when `data` is larger.
fn limits(data: &str, origin: &str) -> Limits {
    let batch_bytes = BATCH_BYTES.max(max_event_len(data.len(), origin.len()));
    Limits {
        events: WINDOW * BATCH_EVENTS,
        bytes: WINDOW * batch_bytes,
        batch_events: BATCH_EVENTS,
        batch_bytes,
    }
}

/// Gives the outbox the events asked for (`--repeat` copies of `--data`, or stdin's
/// lines), counting them in `tally`; then waits until the bus has them all. An error is
/// stdin failing (what was read before it is published).
async fn publish_all(
    outbox: &Outbox,
    args: &PublishArgs,
    origin: &str,
    tally: &Tally,
) -> std::io::Result<()> {
    let mut pace = Pace::new(args.rate);
    let read = match (args.account, &args.data) {
        (Some(account_id), Some(data)) => {
            for _ in 0..args.repeat {
                pace.wait().await;
                push(outbox, account_id, data, origin).await;
                tally.given.set(tally.given.get() + 1);
            }
            Ok(())
        }
        _ => from_stdin(outbox, origin, &mut pace, tally).await,
    };
    while outbox.drain(Duration::from_secs(3600)).await.is_err() {}
    read
}

/// Publishes stdin's events, a line each; a malformed line is reported with its number
/// and skipped.
async fn from_stdin(
    outbox: &Outbox,
    origin: &str,
    pace: &mut Pace,
    tally: &Tally,
) -> std::io::Result<()> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        status!("reading events from stdin, one a line (account<TAB>data or JSON); Ctrl-D ends");
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if stdin.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let event = match event_line::parse(text).map(|e| e.and_then(fits(origin))) {
            None => continue,
            Some(Ok(event)) => event,
            Some(Err(reason)) => {
                status!("line {number}: {reason}; skipped");
                tally.skipped.set(tally.skipped.get() + 1);
                continue;
            }
        };
        pace.wait().await;
        push(outbox, event.account_id, &event.data, origin).await;
        tally.given.set(tally.given.get() + 1);
    }
    Ok(())
}

/// Refuses an event too large for a batch of this outbox.
fn fits(origin: &str) -> impl Fn(EventLine) -> Result<EventLine, event_line::LineError> + '_ {
    move |event| {
        if max_event_len(event.data.len(), origin.len()) > BATCH_BYTES {
            return Err(event_line::LineError::TooLarge(
                event.data.len(),
                BATCH_BYTES,
            ));
        }
        Ok(event)
    }
}

/// Hands one event to the outbox, waiting for room.
async fn push(outbox: &Outbox, account_id: u64, data: &str, origin: &str) {
    loop {
        let room = outbox.room.notified();
        match outbox.push(account_id, plumbing::clock::now_us(), data, origin) {
            Ok(_) => return,
            Err(Full) => room.await,
        }
    }
}

/// `--rate`: event n waits until n intervals after the first, so a slow moment is caught
/// up and the average holds.
struct Pace {
    every: Option<Duration>,
    next: Option<Instant>,
}

impl Pace {
    fn new(rate: Option<Rate>) -> Self {
        Pace {
            every: rate.map(Rate::interval),
            next: None,
        }
    }

    async fn wait(&mut self) {
        let Some(every) = self.every else {
            return;
        };
        let now = Instant::now();
        let at = self.next.unwrap_or(now);
        tokio::time::sleep_until(at).await;
        self.next = Some(at + every);
    }
}

/// The publisher's story on stderr.
fn say(report: Report) {
    match report {
        Report::Connected => {}
        Report::Lost { reason, .. } => status!("lost the bus: {reason}"),
        Report::Warning(warning) => status!("{warning}"),
        Report::Refused(err) => status!("{err}"),
        Report::Retrying(retry) => status!("{retry}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_data_makes_batches_of_one_that_still_fit() {
        let data = "x".repeat(800_000);
        let limits = limits(&data, "o");
        assert!(limits.batch_bytes >= max_event_len(data.len(), 1));
        let outbox = Outbox::new(limits, 1);
        outbox.push(1, 2, &data, "o").unwrap();
        outbox.push(1, 2, &data, "o").unwrap();
        let batch = outbox.take_batch().unwrap();
        assert_eq!(batch.count, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pace_keeps_the_average_rate() {
        let mut pace = Pace::new(Some(Rate(10.0)));
        let start = Instant::now();
        for _ in 0..11 {
            pace.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let mut free = Pace::new(None);
        free.wait().await;
    }

    #[test]
    fn the_window_bounds_memory_whatever_repeat_says() {
        let outbox = Outbox::new(limits("x", "o"), 1);
        let accepted = std::iter::repeat_with(|| outbox.push(1, 2, "x", "o"))
            .take_while(Result::is_ok)
            .count();
        assert_eq!(accepted, WINDOW * BATCH_EVENTS);
    }
}
