//! A publisher with many batches in flight, as fast as it can go, with events from 1 byte to
//! 16 KiB, while subscribers stall, vanish and come back and busd itself is frozen: every
//! event reaches each subscriber exactly once, in order, or falls inside a reported gap.
//!
//! Pipelining is what lets busd hold its subscribers' wake-ups while the next batch is
//! already readable; the lock-step tests elsewhere never have a second batch waiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, Event, Filter, Position, Role, ServerFrame};
use testkit::bus::*;
use tokio::sync::Semaphore;

const BATCHES: u64 = 1200;
const PER_BATCH: usize = 32;
const IN_FLIGHT: usize = 8;

/// What was published, by sequence number: (event id, account, data).
type Sent = HashMap<u64, (u64, u64, String)>;

/// Which accounts a subscriber takes.
type Wants = fn(u64) -> bool;

/// What one subscriber saw over all its connections.
#[derive(Default)]
struct Seen {
    last_seq: u64,
    delivered: Vec<u64>,
    gaps: Vec<(u64, u64)>,
    connections: u32,
}

impl Seen {
    /// Takes one frame; panics on anything out of order or not as sent.
    fn take(&mut self, frame: ServerFrame, sent: &Sent, wants: Wants) {
        match frame {
            ServerFrame::Events(events) => {
                for (seq, event) in events {
                    assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
                    self.last_seq = seq;
                    let (id, account, data) = sent.get(&seq).expect("a seq that was published");
                    assert_eq!(
                        (event.id, event.account_id, &event.data),
                        (*id, *account, data),
                        "seq {seq} arrives whole, as published"
                    );
                    assert!(wants(event.account_id), "only the accounts asked for");
                    self.delivered.push(seq);
                }
            }
            ServerFrame::Gap {
                from_seq, to_seq, ..
            } => {
                assert!(from_seq > self.last_seq && to_seq >= from_seq);
                self.last_seq = to_seq;
                self.gaps.push((from_seq, to_seq));
            }
            ServerFrame::Heartbeat { .. } | ServerFrame::Pong => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Every wanted event was delivered once or lies in a gap; returns how many were lost.
    fn check(&self, name: &str, sent: &Sent, wants: Wants) -> usize {
        let delivered: std::collections::HashSet<u64> = self.delivered.iter().copied().collect();
        assert_eq!(delivered.len(), self.delivered.len(), "{name}: never twice");
        let in_gap = |seq: u64| {
            self.gaps
                .iter()
                .any(|&(from, to)| (from..=to).contains(&seq))
        };
        let mut lost = 0;
        for (seq, (_, account, _)) in sent {
            if wants(*account) && !delivered.contains(seq) {
                assert!(
                    in_gap(*seq),
                    "{name}: seq {seq} neither delivered nor in a gap"
                );
                lost += 1;
            }
        }
        lost
    }
}

/// Every batch, with events of 1 byte to 16 KiB on accounts 1 to 3 from a fixed seed, and
/// what busd will number them: one publisher, so seqs follow publish order from `head_seq`.
fn batches(head_seq: u64) -> (Vec<Vec<Event>>, Sent) {
    let mut random = random_below(0x2545_f491_4f6c_dd1d);
    let batches: Vec<Vec<Event>> = (0..BATCHES)
        .map(|_| {
            (0..PER_BATCH)
                .map(|_| {
                    let len = 1usize << random(15);
                    let fill = char::from(b'a' + random(26) as u8);
                    event(1 + random(3), &fill.to_string().repeat(len))
                })
                .collect()
        })
        .collect();
    let sent = (head_seq + 1..)
        .zip(batches.iter().flatten())
        .map(|(seq, e)| (seq, (e.id, e.account_id, e.data.clone())))
        .collect();
    (batches, sent)
}

/// The last seq a subscriber wanting `wants` has to reach.
fn last_wanted(sent: &Sent, wants: Wants) -> u64 {
    sent.iter()
        .filter(|(_, (_, account, _))| wants(*account))
        .map(|(seq, _)| *seq)
        .max()
        .expect("some event wanted")
}

/// Publishes every batch with up to [`IN_FLIGHT`] unacknowledged, writing as many as the
/// window allows before flushing, so that busd often finds several batches readable at once.
/// Says so on `halfway` once a third of them are written.
async fn publish_pipelined(
    addr: SocketAddr,
    batches: Vec<Vec<Event>>,
    halfway: tokio::sync::oneshot::Sender<()>,
) {
    let (conn, _, _) = join(addr, Role::Publisher, "pipelined").await;
    let (mut sink, mut acks) = conn.split();
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let acking = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut acked = 0;
            while acked < BATCHES {
                match acks.next().await {
                    Some(Ok(ServerFrame::PubAck { batch_id })) => {
                        window.add_permits(usize::try_from(batch_id - acked).unwrap());
                        acked = batch_id;
                    }
                    Some(Ok(ServerFrame::Heartbeat { .. })) => {}
                    other => panic!("expected PubAck, got {other:?}"),
                }
            }
        })
    };
    let mut halfway = Some(halfway);
    for (batch_id, events) in (1..).zip(batches) {
        if window.try_acquire().map(|p| p.forget()).is_err() {
            sink.flush().await.expect("flush");
            window.acquire().await.expect("window open").forget();
        }
        sink.feed(ClientFrame::Publish { batch_id, events })
            .await
            .expect("publish");
        if batch_id == BATCHES / 3 {
            sink.flush().await.expect("flush");
            halfway.take().map(|tx| tx.send(()));
        }
    }
    sink.flush().await.expect("flush");
    acking.await.expect("acks read");
}

/// How long a subscriber may take to see every seq it wants: heartbeats keep a connection
/// that is no longer given events alive, so this, not a frame's wait, ends such a test.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Reads `conn` into `seen` until it has passed `last`, within [`CATCH_UP`].
async fn drain(conn: &mut Conn, seen: &mut Seen, last: u64, sent: &Sent, wants: Wants) {
    let reading = async {
        while seen.last_seq < last {
            seen.take(next(conn).await, sent, wants);
        }
    };
    if tokio::time::timeout(CATCH_UP, reading).await.is_err() {
        panic!("stuck at seq {} of {last}", seen.last_seq);
    }
}

/// A subscriber that reads a while, sometimes stops reading, then drops its connection and
/// resumes after the last seq it saw, until it has passed `last`.
async fn roam(addr: SocketAddr, epoch: u64, mut conn: Conn, sent: Arc<Sent>, last: u64) -> Seen {
    let wants: Wants = |account| account != 1;
    let mut seen = Seen {
        connections: 1,
        ..Seen::default()
    };
    let mut round = 0u64;
    loop {
        round += 1;
        for _ in 0..(10 + round * 7 % 60) {
            if seen.last_seq >= last {
                return seen;
            }
            seen.take(next(&mut conn).await, &sent, wants);
        }
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        drop(conn);
        let resume = Position {
            epoch,
            seq: seen.last_seq,
        };
        conn = subscriber(addr, accounts(&[2, 3]), Some(resume)).await.0;
        seen.connections += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_of_every_size_reach_each_subscriber_once_or_in_a_gap() {
    // A small queue and ring, so that stalling overflows one and resuming outruns the other.
    let busd = Busd::start(&["--queue-events", "2000", "--replay-bytes", "4MiB"]);
    let (mut steady, epoch) = subscriber(busd.addr, Filter::All, None).await;
    let mut stalled = tiny_window_subscriber(busd.addr, accounts(&[1, 2])).await;
    let (roamer, _) = subscriber(busd.addr, accounts(&[2, 3]), None).await;
    let (_, _, head_seq) = join(busd.addr, Role::Subscriber, "head").await;
    let (batches, sent) = batches(head_seq);
    let sent = Arc::new(sent);
    let all: Wants = |_| true;
    let one_two: Wants = |account| account != 3;
    let two_three: Wants = |account| account != 1;

    let (halfway, at_halfway) = tokio::sync::oneshot::channel();
    let publishing = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(60),
        publish_pipelined(busd.addr, batches, halfway),
    ));
    let roaming = tokio::spawn(tokio::time::timeout(
        CATCH_UP,
        roam(
            busd.addr,
            epoch,
            roamer,
            sent.clone(),
            last_wanted(&sent, two_three),
        ),
    ));
    let steady_reading = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let last = last_wanted(&sent, all);
            drain(&mut steady, &mut seen, last, &sent, all).await;
            seen
        })
    };
    // Frozen with a third of the batches written and more in flight.
    tokio::time::timeout(WAIT, at_halfway)
        .await
        .expect("a third of the batches written in time")
        .expect("the publisher got a third of the way");
    busd.signal("STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    busd.signal("CONT");

    publishing
        .await
        .expect("published")
        .expect("every batch written and acknowledged within a minute");
    let steady = steady_reading.await.expect("steady subscriber");
    let roamer = roaming
        .await
        .expect("roaming subscriber")
        .expect("the roaming subscriber saw every seq it wants in time");
    let mut stalled_seen = Seen::default();
    let last = last_wanted(&sent, one_two);
    drain(&mut stalled, &mut stalled_seen, last, &sent, one_two).await;

    steady.check("steady", &sent, all);
    assert!(
        stalled_seen.check("stalled", &sent, one_two) > 0,
        "the stalled subscriber's queue overflowed"
    );
    roamer.check("roaming", &sent, two_three);
    assert!(roamer.connections >= 3, "the roaming subscriber came back");
    let (mut watcher, _, _) = join(busd.addr, Role::Subscriber, "").await;
    assert_eq!(
        stats(&mut watcher).await.published,
        head_seq + sent.len() as u64
    );
}
