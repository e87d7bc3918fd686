//! `busctl publish`: events by hand, through the same [`Publisher`] ingest uses, so they are
//! delivered at least once to busd and never twice.
//!
//! The events go into a small outbox (a window of batches, whatever `--repeat` says) and the
//! command waits whenever it is full; it ends when busd has acknowledged every event, when
//! busd refuses it, or when busd stays away for `--max-outage`.

use std::sync::Arc;
use std::time::Duration;

use protocol::publish::max_event_len;

use crate::cli::{PublishArgs, exit};
use crate::outbox::{Full, Limits, Outbox};
use crate::publisher::{PublishError, Publisher, Report, Settings};
use crate::status;

/// Events per batch, and a byte budget that keeps frames under busd's 1 MiB default.
const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;
/// Batches the outbox holds: all `publish` ever keeps in memory.
const WINDOW: usize = 16;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `busctl publish`; returns the exit code.
pub async fn run(args: PublishArgs) -> i32 {
    // Unique per run: busd keeps one live process per publisher name.
    let name = format!("busctl-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let outbox = Arc::new(Outbox::new(
        limits(&args.data, &name),
        plumbing::clock::now_ns(),
    ));
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
    let given = std::cell::Cell::new(0);
    let published = tokio::select! {
        err = publisher.failed() => Err(err),
        () = publish_all(&outbox, &args, &name, &given) => Ok(()),
    };
    let acked = given
        .get()
        .saturating_sub(publisher.outbox().depth() as u64);
    publisher.stop().await;
    match published {
        Ok(()) => {
            status!("published {} events to {}", args.repeat, args.bus.bus);
            exit::OK
        }
        Err(PublishError::Outage(outage)) => {
            status!(
                "giving up after {}s: {acked} of {} events acknowledged",
                outage.down.as_secs(),
                args.repeat
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

/// Gives the outbox `--repeat` events, counting them in `given`, waiting for room whenever
/// it is full; then waits until busd has them all.
async fn publish_all(
    outbox: &Outbox,
    args: &PublishArgs,
    origin: &str,
    given: &std::cell::Cell<u64>,
) {
    let timestamp_us = plumbing::clock::now_us();
    for _ in 0..args.repeat {
        loop {
            let room = outbox.room.notified();
            match outbox.push(args.account, timestamp_us, &args.data, origin) {
                Ok(_) => {
                    given.set(given.get() + 1);
                    break;
                }
                Err(Full) => room.await,
            }
        }
    }
    while outbox.drain(Duration::from_secs(3600)).await.is_err() {}
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

    #[test]
    fn the_window_bounds_memory_whatever_repeat_says() {
        let outbox = Outbox::new(limits("x", "o"), 1);
        let accepted = std::iter::repeat_with(|| outbox.push(1, 2, "x", "o"))
            .take_while(Result::is_ok)
            .count();
        assert_eq!(accepted, WINDOW * BATCH_EVENTS);
    }
}
