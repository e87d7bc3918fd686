//! Accepted events on their way to busd: a bounded buffer that keeps every batch until busd
//! acknowledges it, so a reconnect (or a new busd) gets it again and a 202 is never lost.
//!
//! Events are encoded to their wire bytes as they are accepted, straight from the request,
//! into the batch being filled. A batch is sealed when it holds `batch_events` events or the
//! next event would take it past `batch_bytes`, so every batch fits in one busd frame however
//! large the backlog grows: a backlog drains batch by batch instead of becoming one frame busd
//! must refuse. The buffer's bounds count events and bytes, waiting and unacknowledged alike:
//! when busd stops acknowledging, the buffer fills and requests get 503 instead of memory
//! growing without end.
//!
//! Event ids grow by one per event in the order events are accepted, and batches are
//! acknowledged in order, so "acknowledged up to event id N" says everything about which
//! events the bus holds: [`Outbox::acknowledged`] lets whoever promised an event wait for
//! that (ingest's `--durable`), and is woken once per acknowledgement, not per event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use protocol::publish::{encode_event, max_event_len};
use tokio::sync::Notify;

/// A batch sent (or to be sent) to busd, kept until acknowledged.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Grows with every batch, so busd can drop one it already has.
    pub id: u64,
    /// Events in the batch.
    pub count: u64,
    /// The events, encoded back to back.
    pub events: Bytes,
    /// The id of its last event: acknowledging the batch acknowledges every event id up to
    /// this one.
    pub last_event_id: u64,
}

/// The buffer is full: busd has not acknowledged enough of what was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// How much the outbox holds, and how it cuts batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most events held (waiting plus unacknowledged).
    pub events: usize,
    /// Most encoded bytes held (waiting plus unacknowledged).
    pub bytes: usize,
    /// Most events in one batch.
    pub batch_events: usize,
    /// Most encoded event bytes in one batch: below busd's frame limit.
    pub batch_bytes: usize,
}

/// The buffer between accepting an event and busd acknowledging it.
pub struct Outbox {
    inner: Mutex<Inner>,
    limits: Limits,
    /// Wakes the publisher when events arrive in an empty buffer or a batch is sealed.
    pub ready: Notify,
    /// Wakes whoever waits for the buffer to empty (shutdown's drain).
    pub drained: Notify,
    /// Wakes connections holding back while the buffer was over half full.
    pub room: Notify,
    /// The highest event id the bus has acknowledged (0 before the first).
    acked_event: AtomicU64,
    /// Wakes whoever waits for an event's acknowledgement ([`Outbox::acknowledged`]).
    acked: Notify,
}

struct Inner {
    /// The batch being filled.
    filling: BytesMut,
    filling_count: usize,
    /// Batches sealed and not yet sent.
    sealed: VecDeque<Batch>,
    /// Batches sent and not yet acknowledged, oldest first.
    unacked: VecDeque<Batch>,
    /// Events and bytes held, in all three places.
    events: usize,
    bytes: usize,
    next_batch_id: u64,
    next_event_id: u64,
}

impl Outbox {
    /// `first_id` must exceed any batch or event id this publisher name used before: busd
    /// drops a batch whose id is not above the last one it saw from the name, and watchers
    /// drop an event whose id is not above the last one they saw from the origin.
    pub fn new(limits: Limits, first_id: u64) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                filling: BytesMut::new(),
                filling_count: 0,
                sealed: VecDeque::new(),
                unacked: VecDeque::new(),
                events: 0,
                bytes: 0,
                next_batch_id: first_id,
                next_event_id: first_id,
            }),
            limits: Limits {
                batch_events: limits.batch_events.max(1),
                ..limits
            },
            ready: Notify::new(),
            drained: Notify::new(),
            room: Notify::new(),
            acked_event: AtomicU64::new(0),
            acked: Notify::new(),
        }
    }

    /// The bounds this outbox was made with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves `Inner` consistent; a panic elsewhere does not poison its data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts one event and returns its id, or refuses it when the buffer is full.
    pub fn push(
        &self,
        account_id: u64,
        timestamp_us: u64,
        data: &str,
        origin: &str,
    ) -> Result<u64, Full> {
        let mut inner = self.lock();
        if inner.events >= self.limits.events || inner.bytes >= self.limits.bytes {
            return Err(Full);
        }
        let room = max_event_len(data.len(), origin.len());
        let mut wake = false;
        if inner.filling_count > 0 && inner.filling.len() + room > self.limits.batch_bytes {
            inner.seal(self.limits.batch_bytes);
            wake = true;
        }
        let id = inner.next_event_id;
        inner.next_event_id += 1;
        let before = inner.filling.len();
        encode_event(
            &mut inner.filling,
            account_id,
            timestamp_us,
            data,
            origin,
            id,
        );
        inner.bytes += inner.filling.len() - before;
        inner.events += 1;
        inner.filling_count += 1;
        wake |= inner.filling_count == 1 && inner.sealed.is_empty();
        if inner.filling_count == self.limits.batch_events {
            inner.seal(self.limits.batch_bytes);
            wake = true;
        }
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
        Ok(id)
    }

    /// Whether a full batch is waiting.
    pub fn batch_ready(&self) -> bool {
        !self.lock().sealed.is_empty()
    }

    /// The oldest batch not yet sent (sealing the one being filled if it is the only one);
    /// it is kept as unacknowledged.
    pub fn take_batch(&self) -> Option<Batch> {
        let mut inner = self.lock();
        if inner.sealed.is_empty() {
            inner.seal(self.limits.batch_bytes);
        }
        let batch = inner.sealed.pop_front()?;
        inner.unacked.push_back(batch.clone());
        Some(batch)
    }

    /// busd has `batch_id` (and, acks being in order, every batch before it). Wakes the
    /// publisher if events are waiting, since it may have been holding them for this ack.
    pub fn ack(&self, batch_id: u64) {
        let mut inner = self.lock();
        let was_high = self.is_high(&inner);
        let mut last_event = None;
        while inner.unacked.front().is_some_and(|b| b.id <= batch_id) {
            if let Some(batch) = inner.unacked.pop_front() {
                inner.events -= batch.count as usize;
                inner.bytes -= batch.events.len();
                last_event = Some(batch.last_event_id);
            }
        }
        if let Some(id) = last_event {
            // Under the lock, so the mark only grows even when acks race.
            self.acked_event.fetch_max(id, Ordering::Release);
        }
        let waiting = inner.filling_count > 0 || !inner.sealed.is_empty();
        let empty = inner.events == 0;
        let room = was_high && !self.is_high(&inner);
        drop(inner);
        if waiting {
            self.ready.notify_one();
        }
        if empty {
            self.drained.notify_waiters();
        }
        if room {
            self.room.notify_waiters();
        }
        if last_event.is_some() {
            self.acked.notify_waiters();
        }
    }

    /// Whether the bus has acknowledged the event with id `event_id` (and so every event
    /// accepted before it).
    pub fn is_acknowledged(&self, event_id: u64) -> bool {
        self.acked_event.load(Ordering::Acquire) >= event_id
    }

    /// Waits until the bus has acknowledged the event with id `event_id`, or `deadline`;
    /// returns whether it did. Every waiter is woken by each acknowledgement and checks one
    /// number, so requests waiting on one round trip are all answered by its ack.
    pub async fn acknowledged(&self, event_id: u64, deadline: tokio::time::Instant) -> bool {
        loop {
            // Registered before the check, so an ack in between still wakes us.
            let acked = self.acked.notified();
            if self.is_acknowledged(event_id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, acked).await.is_err() {
                return self.is_acknowledged(event_id);
            }
        }
    }

    fn is_high(&self, inner: &Inner) -> bool {
        inner.events >= self.limits.events / 2 || inner.bytes >= self.limits.bytes / 2
    }

    /// Whether at least half the buffer is taken: busd is behind, and connections should
    /// stop reading for a moment rather than fill the rest and answer 503.
    pub fn above_high_water(&self) -> bool {
        self.is_high(&self.lock())
    }

    /// Batches sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().unacked.len()
    }

    /// Every batch busd has not acknowledged, oldest first, to send again after a reconnect.
    pub fn unacked(&self) -> Vec<Batch> {
        self.lock().unacked.iter().cloned().collect()
    }

    /// Waits until busd has acknowledged every event given to the outbox, or `timeout`
    /// passes; `Err` holds how many are still unacknowledged.
    pub async fn drain(&self, timeout: std::time::Duration) -> Result<(), usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let drained = self.drained.notified();
            if self.depth() == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return Err(self.depth());
            }
        }
    }

    /// Accepted events busd does not have yet: waiting plus unacknowledged.
    pub fn depth(&self) -> usize {
        self.lock().events
    }

    /// Encoded bytes of the events busd does not have yet.
    pub fn depth_bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Inner {
    /// Turns the events being filled into a batch with the next id, and makes room for the
    /// next one, at most `batch_bytes` (more than a batch can hold would be kept for nothing).
    fn seal(&mut self, batch_bytes: usize) {
        if self.filling_count == 0 {
            return;
        }
        let events = self.filling.split().freeze();
        // The next batch is likely about as large as this one: room for half as much again
        // now, in one allocation, rather than growing from what `split` left by doubling and
        // copying.
        self.filling
            .reserve((events.len() + events.len() / 2).min(batch_bytes));
        let batch = Batch {
            id: self.next_batch_id,
            count: self.filling_count as u64,
            events,
            last_event_id: self.next_event_id - 1,
        };
        self.next_batch_id += 1;
        self.filling_count = 0;
        self.sealed.push_back(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events: usize, batch_events: usize) -> Limits {
        Limits {
            events,
            bytes: usize::MAX,
            batch_events,
            batch_bytes: usize::MAX,
        }
    }

    #[test]
    fn batches_are_kept_until_acknowledged() {
        let outbox = Outbox::new(limits(10, 100), 500);
        outbox.push(1, 2, "a", "o").unwrap();
        outbox.push(1, 2, "b", "o").unwrap();
        let first = outbox.take_batch().unwrap();
        assert_eq!((first.id, first.count), (500, 2));
        assert!(outbox.take_batch().is_none());
        outbox.push(1, 2, "c", "o").unwrap();
        let second = outbox.take_batch().unwrap();
        assert_eq!(second.id, 501);
        assert_eq!(outbox.depth(), 3);
        assert_eq!(
            outbox.unacked().iter().map(|b| b.id).collect::<Vec<_>>(),
            [500, 501]
        );
        outbox.ack(500);
        assert_eq!(outbox.depth(), 1);
        outbox.ack(501);
        assert_eq!(outbox.depth(), 0);
        assert_eq!(outbox.depth_bytes(), 0);
        assert!(outbox.unacked().is_empty());
    }

    #[test]
    fn a_batch_like_the_last_one_fills_without_growing() {
        let outbox = Outbox::new(limits(10_000, 100), 1);
        let fill = || {
            for _ in 0..100 {
                outbox.push(1, 2, &"d".repeat(64), "origin").unwrap();
            }
        };
        fill();
        let first = outbox.take_batch().unwrap();
        let start = outbox.lock().filling.as_ptr();
        fill();
        let second = outbox.take_batch().unwrap();
        assert!(
            second.events.len() > first.events.len(),
            "ids above 127 take 2 bytes"
        );
        assert_eq!(second.events.as_ptr(), start, "filled where it started");
    }

    #[test]
    fn the_room_kept_for_the_next_batch_is_at_most_a_batch() {
        let batch_bytes = 64 * 1024;
        let outbox = Outbox::new(
            Limits {
                events: usize::MAX,
                bytes: usize::MAX,
                batch_events: usize::MAX,
                batch_bytes,
            },
            1,
        );
        let data = "x".repeat(4000);
        while outbox.depth_bytes() < 2 * batch_bytes {
            outbox.push(1, 2, &data, "origin").unwrap();
        }
        let full = outbox.take_batch().unwrap();
        assert!(
            full.events.len() > batch_bytes * 9 / 10,
            "{}",
            full.events.len()
        );
        let room = outbox.lock().filling.capacity();
        assert!(room <= batch_bytes, "{room} bytes kept for the next batch");
    }

    #[test]
    fn a_backlog_is_cut_into_batches_that_fit_a_frame() {
        let data = "x".repeat(4000);
        let outbox = Outbox::new(
            Limits {
                events: usize::MAX,
                bytes: usize::MAX,
                batch_events: 4096,
                batch_bytes: 64 * 1024,
            },
            1,
        );
        for _ in 0..1000 {
            outbox.push(1, 2, &data, "origin").unwrap();
        }
        let mut events = 0;
        let mut ids = Vec::new();
        while let Some(batch) = outbox.take_batch() {
            assert!(batch.events.len() <= 64 * 1024, "{}", batch.events.len());
            events += batch.count;
            ids.push(batch.id);
        }
        assert_eq!(events, 1000);
        assert!(ids.len() >= 1000 * 4000 / (64 * 1024));
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids grow by one");
    }

    #[test]
    fn batches_hold_at_most_batch_events() {
        let outbox = Outbox::new(limits(100, 3), 1);
        for _ in 0..7 {
            outbox.push(1, 2, "a", "o").unwrap();
        }
        assert!(outbox.batch_ready());
        let counts: Vec<u64> = std::iter::from_fn(|| outbox.take_batch())
            .map(|b| b.count)
            .collect();
        assert_eq!(counts, [3, 3, 1]);
    }

    #[test]
    fn the_byte_budget_refuses_before_memory_grows() {
        let outbox = Outbox::new(
            Limits {
                events: usize::MAX,
                bytes: 10_000,
                batch_events: 4096,
                batch_bytes: 4096,
            },
            1,
        );
        let data = "x".repeat(1000);
        let mut accepted = 0;
        while outbox.push(1, 2, &data, "o").is_ok() {
            accepted += 1;
        }
        assert_eq!(accepted, 10, "ten events of ~1 KB fill 10,000 bytes");
        assert!(outbox.depth_bytes() < 11_000);
        let mut last = 0;
        while let Some(batch) = outbox.take_batch() {
            last = batch.id;
        }
        assert_eq!(outbox.push(1, 2, &data, "o"), Err(Full), "unacked counts");
        outbox.ack(last);
        outbox.push(1, 2, &data, "o").unwrap();
    }

    #[test]
    fn high_water_is_half_the_buffer() {
        let outbox = Outbox::new(limits(4, 100), 1);
        outbox.push(1, 2, "a", "o").unwrap();
        assert!(!outbox.above_high_water());
        outbox.push(1, 2, "b", "o").unwrap();
        assert!(outbox.above_high_water());
        let batch = outbox.take_batch().unwrap();
        assert!(
            outbox.above_high_water(),
            "unacknowledged events still count"
        );
        outbox.ack(batch.id);
        assert!(!outbox.above_high_water());
    }

    #[tokio::test]
    async fn an_ack_wakes_the_publisher_when_events_wait() {
        let outbox = Outbox::new(limits(10, 100), 1);
        outbox.push(1, 2, "a", "o").unwrap();
        outbox.ready.notified().await;
        let batch = outbox.take_batch().unwrap();
        assert_eq!(outbox.in_flight(), 1);
        outbox.push(1, 2, "b", "o").unwrap();
        outbox.ready.notified().await;
        outbox.ack(batch.id);
        assert_eq!(outbox.in_flight(), 0);
        // The ack left a permit: the publisher holding "b" for it wakes at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready.notified())
            .await
            .unwrap();
    }

    #[test]
    fn a_full_buffer_refuses_until_acks_free_room() {
        let outbox = Outbox::new(limits(2, 100), 1);
        outbox.push(1, 2, "a", "o").unwrap();
        outbox.push(1, 2, "b", "o").unwrap();
        assert_eq!(outbox.push(1, 2, "c", "o"), Err(Full));
        let batch = outbox.take_batch().unwrap();
        assert_eq!(
            outbox.push(1, 2, "c", "o"),
            Err(Full),
            "sent but unacknowledged still counts"
        );
        outbox.ack(batch.id);
        outbox.push(1, 2, "c", "o").unwrap();
    }

    #[test]
    fn event_ids_grow_across_batches() {
        let outbox = Outbox::new(limits(10, 1), 100);
        outbox.push(1, 2, "a", "o").unwrap();
        outbox.push(1, 2, "b", "o").unwrap();
        let ids: Vec<u64> = std::iter::from_fn(|| outbox.take_batch())
            .map(|b| {
                let body = {
                    let mut frame = bytes::BytesMut::new();
                    protocol::publish::encode_frame(&mut frame, b.id, b.count, &b.events);
                    frame.split_off(4).freeze()
                };
                let raw = protocol::publish::parse(&body).unwrap();
                let event: protocol::Event =
                    protocol::codec::decode_body(raw.bytes(&raw.events[0])).unwrap();
                event.id
            })
            .collect();
        assert_eq!(ids, [100, 101]);
    }

    #[tokio::test]
    async fn an_ack_wakes_whoever_waits_for_its_events() {
        let outbox = std::sync::Arc::new(Outbox::new(limits(10, 100), 7));
        let first = outbox.push(1, 2, "a", "o").unwrap();
        let second = outbox.push(1, 2, "b", "o").unwrap();
        assert_eq!((first, second), (7, 8));
        let batch = outbox.take_batch().unwrap();
        let third = outbox.push(1, 2, "c", "o").unwrap();
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        assert!(!outbox.acknowledged(first, soon()).await, "not yet");
        let waiter = {
            let outbox = outbox.clone();
            let later = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            tokio::spawn(async move { outbox.acknowledged(second, later).await })
        };
        tokio::task::yield_now().await;
        outbox.ack(batch.id);
        assert!(waiter.await.unwrap(), "woken by the ack of its batch");
        assert!(outbox.is_acknowledged(first));
        assert!(
            !outbox.is_acknowledged(third),
            "the next batch is not acknowledged"
        );
        assert!(!outbox.acknowledged(third, soon()).await);
    }

    #[tokio::test]
    async fn an_ack_below_high_water_wakes_held_back_connections() {
        let outbox = Outbox::new(limits(4, 100), 1);
        outbox.push(1, 2, "a", "o").unwrap();
        outbox.push(1, 2, "b", "o").unwrap();
        assert!(outbox.above_high_water());
        let room = outbox.room.notified();
        let batch = outbox.take_batch().unwrap();
        outbox.ack(batch.id);
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("woken when the buffer fell under half");
    }
}
