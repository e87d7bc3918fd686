//! The client library against the real busd: a `Publisher` and a `Subscriber` at full rate,
//! with events from 1 byte to 4 KiB, while busd is stopped gracefully or killed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use client::outbox::{Full, Limits, Outbox};
use client::publisher::{Publisher, Settings};
use client::subscriber::{Delivery, Notice, Subscriber};
use protocol::Filter;
use testkit::bus::{Busd, subscribe};
use testkit::free_port;

const EVENTS: u64 = 60_000;
const WAIT: Duration = Duration::from_secs(60);

/// Event `i`'s data: its number, padded to a size from 1 byte to 4 KiB.
fn data(i: u64) -> String {
    let len = (i * 7919 % 4096 + 1) as usize;
    let mut data = i.to_string();
    data.truncate(len);
    data.extend(std::iter::repeat_n('x', len - data.len()));
    data
}

fn publisher(bus: &str) -> Publisher {
    let limits = Limits {
        events: 50_000,
        bytes: 32 << 20,
        batch_events: 1024,
        batch_bytes: 512 * 1024,
    };
    let settings = Settings {
        bus: bus.into(),
        layout: Default::default(),
        token: None,
        name: "library-test".into(),
        linger: Duration::ZERO,
        max_in_flight: 8,
        timeout: Duration::from_secs(5),
        max_outage: Some(WAIT),
        refusal_is_final: true,
    };
    let outbox = Arc::new(Outbox::new(limits, plumbing::clock::now_ns()));
    Publisher::start(settings, outbox, Arc::new(|_| {}))
}

/// Gives the publisher every event as fast as its outbox takes them, counting in `pushed`.
async fn push_all(publisher: &Publisher, pushed: &AtomicU64) {
    let outbox = publisher.outbox();
    for i in 0..EVENTS {
        loop {
            let room = outbox.room.notified();
            match outbox.push(1 + i % 50, i, &data(i), "library-test") {
                Ok(_) => break,
                Err(Full) => room.await,
            }
        }
        pushed.store(i + 1, Ordering::Relaxed);
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Once a quarter of the events are pushed, stops busd with `signal` (`TERM` or `KILL`)
/// and starts the next one on the same address.
async fn restart_midway(busd: Busd, signal: &'static str, pushed: &AtomicU64) -> Busd {
    while pushed.load(Ordering::Relaxed) < EVENTS / 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let listen = busd.addr.to_string();
    let restarted = tokio::task::spawn_blocking(move || {
        match signal {
            "KILL" => busd.kill(),
            _ => busd.terminate(),
        }
        Busd::start_on(&listen, &["--replay-bytes", "256MiB"])
    });
    restarted.await.expect("busd restarted")
}

/// What a subscriber handed out until it had the last event.
#[derive(Default)]
struct Seen {
    /// Times each event (by its data's number) arrived.
    events: HashMap<u64, u32>,
    gaps: usize,
    resumed: usize,
}

async fn read_until_last(subscriber: &mut Subscriber) -> Seen {
    let mut seen = Seen::default();
    while !seen.events.contains_key(&(EVENTS - 1)) {
        let delivery = tokio::time::timeout(WAIT, subscriber.next())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<u64> = (0..EVENTS)
                    .filter(|i| !seen.events.contains_key(i))
                    .take(10)
                    .collect();
                panic!(
                    "no delivery in time: {} events, {} gaps, {} resumes; missing {missing:?}",
                    seen.events.len(),
                    seen.gaps,
                    seen.resumed
                )
            })
            .expect("the subscription lasts");
        match delivery {
            Delivery::Events { events, .. } => {
                for (_, event) in events {
                    let i = event.timestamp_us;
                    assert_eq!(event.data, data(i), "event {i} intact");
                    *seen.events.entry(i).or_default() += 1;
                }
            }
            Delivery::Gap(_) => seen.gaps += 1,
            Delivery::Notice(Notice::Resumed(_)) => seen.resumed += 1,
            Delivery::Notice(_) => {}
        }
    }
    seen
}

async fn live(subscriber: &mut Subscriber) {
    loop {
        if let Ok(Delivery::Notice(Notice::Live { .. })) = subscriber.next().await {
            return;
        }
    }
}

/// Publishes every event while a subscriber reads them, and stops busd with `signal` a
/// quarter of the way through; returns what the subscriber saw and whether the outbox
/// drained.
async fn through_a_restart(signal: &'static str) -> (Seen, Result<(), usize>) {
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &["--replay-bytes", "256MiB"]);
    let mut subscriber = subscribe(&listen, Filter::All);
    live(&mut subscriber).await;
    let publisher = publisher(&listen);
    let pushed = AtomicU64::new(0);
    let pushing = async {
        push_all(&publisher, &pushed).await;
        publisher.outbox().drain(WAIT).await
    };
    let restart = restart_midway(busd, signal, &pushed);
    let (seen, drained, _busd) = tokio::join!(read_until_last(&mut subscriber), pushing, restart);
    publisher.stop().await;
    (seen, drained)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_under_load_loses_nothing_and_doubles_nothing() {
    let (seen, drained) = through_a_restart("TERM").await;
    assert_eq!(drained, Ok(()), "busd acknowledged every event");
    assert_eq!(seen.gaps, 0, "a graceful restart is no gap");
    assert!(seen.resumed >= 1, "the subscriber resumed on the new busd");
    assert_eq!(seen.events.len() as u64, EVENTS, "every event arrived");
    assert!(seen.events.values().all(|&n| n == 1), "none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_load_is_a_gap_never_a_copy() {
    let (seen, drained) = through_a_restart("KILL").await;
    assert_eq!(drained, Ok(()), "the new busd acknowledged every event");
    assert!(seen.gaps >= 1, "a crash is reported as a gap");
    assert!(seen.events.values().all(|&n| n == 1), "none twice");
}
