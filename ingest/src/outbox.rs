//! Accepted events on their way to busd: a bounded buffer that keeps every batch until busd
//! acknowledges it, so a reconnect (or a new busd) gets it again and a 202 is never lost.
//!
//! Events are encoded to their wire bytes as they are accepted, straight from the request,
//! and a batch is just the bytes accumulated since the last one. The bound counts events both
//! waiting and unacknowledged: when busd stops acknowledging, the buffer fills and requests
//! get 503 instead of memory growing without end.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use protocol::publish::encode_event;
use tokio::sync::Notify;

/// A batch sent (or to be sent) to busd, kept until acknowledged.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub count: u64,
    /// The events, encoded back to back.
    pub events: Bytes,
}

/// The buffer is full: busd has not acknowledged enough of what was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

pub struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    batch_events: usize,
    /// Wakes the forwarder when events arrive in an empty buffer or a batch fills up.
    pub ready: Notify,
}

struct Inner {
    pending: BytesMut,
    pending_count: usize,
    unacked: VecDeque<Batch>,
    unacked_count: usize,
    next_id: u64,
    next_event_id: u64,
}

impl Outbox {
    /// `first_batch_id` must exceed any id this publisher name used before: busd drops a
    /// batch whose id is not above the last one it saw from the name.
    pub fn new(capacity: usize, batch_events: usize, first_batch_id: u64) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                pending: BytesMut::with_capacity(64 * 1024),
                pending_count: 0,
                unacked: VecDeque::new(),
                unacked_count: 0,
                next_id: first_batch_id,
                next_event_id: first_batch_id,
            }),
            capacity,
            batch_events: batch_events.max(1),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves `Inner` consistent; a panic elsewhere does not poison its data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts one event, or refuses it when the buffer is full.
    pub fn push(
        &self,
        account_id: u64,
        timestamp_us: u64,
        data: &str,
        origin: &str,
    ) -> Result<(), Full> {
        let mut inner = self.lock();
        if inner.pending_count + inner.unacked_count >= self.capacity {
            return Err(Full);
        }
        let id = inner.next_event_id;
        inner.next_event_id += 1;
        encode_event(&mut inner.pending, account_id, timestamp_us, data, origin, id);
        inner.pending_count += 1;
        let wake = inner.pending_count == 1 || inner.pending_count == self.batch_events;
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Whether a full batch is waiting.
    pub fn batch_ready(&self) -> bool {
        self.lock().pending_count >= self.batch_events
    }

    /// Cuts the waiting events into a batch, keeps it as unacknowledged and returns it.
    pub fn take_batch(&self) -> Option<Batch> {
        let mut inner = self.lock();
        if inner.pending_count == 0 {
            return None;
        }
        let batch = Batch {
            id: inner.next_id,
            count: inner.pending_count as u64,
            events: inner.pending.split().freeze(),
        };
        inner.next_id += 1;
        inner.unacked_count += inner.pending_count;
        inner.pending_count = 0;
        inner.unacked.push_back(batch.clone());
        Some(batch)
    }

    /// busd has `batch_id` (and, acks being in order, every batch before it). Wakes the
    /// forwarder if events are waiting, since it may have been holding them for this ack.
    pub fn ack(&self, batch_id: u64) {
        let mut inner = self.lock();
        while inner.unacked.front().is_some_and(|b| b.id <= batch_id) {
            if let Some(batch) = inner.unacked.pop_front() {
                inner.unacked_count -= batch.count as usize;
            }
        }
        let waiting = inner.pending_count > 0;
        drop(inner);
        if waiting {
            self.ready.notify_one();
        }
    }

    /// Whether at least half the buffer is taken: busd is behind, and connections should
    /// stop reading for a moment rather than fill the rest and answer 503.
    pub fn above_high_water(&self) -> bool {
        self.depth() >= self.capacity / 2
    }

    /// Batches sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().unacked.len()
    }

    /// Every batch busd has not acknowledged, oldest first, to send again after a reconnect.
    pub fn unacked(&self) -> Vec<Batch> {
        self.lock().unacked.iter().cloned().collect()
    }

    /// Accepted events busd does not have yet: waiting plus unacknowledged.
    pub fn depth(&self) -> usize {
        let inner = self.lock();
        inner.pending_count + inner.unacked_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_kept_until_acknowledged() {
        let outbox = Outbox::new(10, 100, 500);
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
        assert!(outbox.unacked().is_empty());
    }

    #[test]
    fn high_water_is_half_the_buffer() {
        let outbox = Outbox::new(4, 100, 1);
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
    async fn an_ack_wakes_the_forwarder_when_events_wait() {
        let outbox = Outbox::new(10, 100, 1);
        outbox.push(1, 2, "a", "o").unwrap();
        outbox.ready.notified().await;
        let batch = outbox.take_batch().unwrap();
        assert_eq!(outbox.in_flight(), 1);
        outbox.push(1, 2, "b", "o").unwrap();
        outbox.ready.notified().await;
        outbox.ack(batch.id);
        assert_eq!(outbox.in_flight(), 0);
        // The ack left a permit: the forwarder holding "b" for it wakes at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready.notified())
            .await
            .unwrap();
    }

    #[test]
    fn a_full_buffer_refuses_until_acks_free_room() {
        let outbox = Outbox::new(2, 100, 1);
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
}
