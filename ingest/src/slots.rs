//! Connection slots, and taking one back from an idle connection when they run out.
//!
//! `--max-connections` bounds the sockets ingest serves at once. On its own it lets one
//! client that opens that many sockets and sends nothing hold every slot until the idle
//! timeout, while every real request gets 503. So, as nginx does with its "reusable"
//! connections, when the slots run out the connection that has been idle longest is closed
//! to admit the newcomer. Idle means waiting for a request with nothing buffered and no
//! response being written: a connection that has sent nothing yet, or a keep-alive
//! connection between requests. A connection partway through a request head is not idle;
//! the header timeout bounds it instead.
//!
//! The request path stays cheap: a connection pays an atomic load and store when it goes
//! idle and an atomic swap when bytes arrive. The registry's lock is taken only on connect,
//! on disconnect, and when the slots have run out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use slab::Slab;
use tokio::sync::Notify;

/// A slot's state while its connection reads or answers a request.
const BUSY: u64 = 0;
/// A slot's state once it was taken back: its connection must close without answering.
const RECLAIMED: u64 = u64::MAX;
/// Attempts at reclaiming before giving up, each lost to a connection that woke up between
/// the scan and the claim. Losing even once needs a request to arrive in that instant.
const ATTEMPTS: usize = 4;

/// The slots of every open HTTP connection, so the one idle longest can be found and asked
/// to close when a newcomer finds none free.
pub struct Slots {
    /// Idle times are stored as nanoseconds since this instant, plus one.
    epoch: Instant,
    open: Mutex<Slab<Arc<Slot>>>,
}

/// What the accept side and a connection share.
struct Slot {
    /// [`BUSY`], [`RECLAIMED`], or the time the connection went idle. Only the connection
    /// moves it away from `BUSY`; only a reclaim moves it from idle to `RECLAIMED`, with a
    /// compare-and-swap, so the connection and the reclaim cannot both win.
    state: AtomicU64,
    /// Wakes the connection once its slot is reclaimed.
    close: Notify,
}

/// One connection's place in [`Slots`], held for as long as the connection is open and
/// released when dropped.
pub struct Lease {
    slots: Arc<Slots>,
    slot: Arc<Slot>,
    key: usize,
}

impl Slots {
    /// An empty registry, shared by the accept loop and every connection.
    pub fn new() -> Arc<Slots> {
        Arc::new(Slots {
            epoch: Instant::now(),
            open: Mutex::new(Slab::new()),
        })
    }

    /// Registers a connection accepted at `now`. It counts as idle from then on: a socket
    /// that never sends anything must not hold its slot against newcomers.
    pub fn register(self: &Arc<Self>, now: Instant) -> Lease {
        let slot = Arc::new(Slot {
            state: AtomicU64::new(self.stamp(now)),
            close: Notify::new(),
        });
        let key = self.lock().insert(slot.clone());
        Lease {
            slots: self.clone(),
            slot,
            key,
        }
    }

    /// Asks the connection idle longest to close and returns whether there was one. Its
    /// slot is free once its task has ended; it owes no response, having none in hand.
    pub fn reclaim_idlest(&self) -> bool {
        let open = self.lock();
        for _ in 0..ATTEMPTS {
            let Some((slot, since)) = idlest(&open) else {
                return false;
            };
            let claimed = slot
                .state
                .compare_exchange(since, RECLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if claimed {
                slot.close.notify_one();
                return true;
            }
        }
        false
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `at` as an idle state: never [`BUSY`] nor [`RECLAIMED`], and later instants larger.
    fn stamp(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos)
            .unwrap_or(u64::MAX)
            .clamp(1, RECLAIMED - 1)
    }

    /// The registry; a panic elsewhere while it was held leaves it consistent, so a
    /// poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Slab<Arc<Slot>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The idle slot with the oldest idle time, and that time.
fn idlest(open: &Slab<Arc<Slot>>) -> Option<(&Arc<Slot>, u64)> {
    open.iter()
        .map(|(_, slot)| (slot, slot.state.load(Ordering::Acquire)))
        .filter(|&(_, state)| state != BUSY && state != RECLAIMED)
        .min_by_key(|&(_, since)| since)
}

impl Lease {
    /// Marks the connection idle as of `now`, before it waits for a request with nothing
    /// buffered; a connection already idle keeps its earlier time. Returns false if the
    /// slot was reclaimed: the connection must then close.
    pub fn idle(&self, now: Instant) -> bool {
        match self.slot.state.load(Ordering::Acquire) {
            RECLAIMED => false,
            // Nobody else moves a slot away from BUSY, so a plain store cannot lose a race.
            BUSY => {
                self.slot
                    .state
                    .store(self.slots.stamp(now), Ordering::Release);
                true
            }
            _ => true,
        }
    }

    /// Marks the connection busy, when bytes of a request have arrived. Returns false if
    /// the slot was reclaimed first: the connection must then close without answering.
    pub fn busy(&self) -> bool {
        self.slot.state.swap(BUSY, Ordering::AcqRel) != RECLAIMED
    }

    /// Completes once the slot is reclaimed, even if that happened before this was called.
    pub async fn reclaimed(&self) {
        self.slot.close.notified().await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slots.lock().try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn the_connection_idle_longest_is_reclaimed_first() {
        let slots = Slots::new();
        let first = slots.register(at(1));
        let second = slots.register(at(2));
        let third = slots.register(at(3));
        assert!(first.busy());
        assert!(first.idle(at(4)), "idle again after a request");
        assert!(slots.reclaim_idlest());
        assert!(
            !second.busy(),
            "the second has been idle since it connected"
        );
        assert!(slots.reclaim_idlest());
        assert!(!third.idle(at(5)));
        assert!(slots.reclaim_idlest());
        assert!(!first.busy());
        assert!(!slots.reclaim_idlest(), "each is reclaimed once");
    }

    #[test]
    fn busy_connections_are_never_reclaimed() {
        let slots = Slots::new();
        let reading = slots.register(at(1));
        let waiting = slots.register(at(2));
        assert!(reading.busy());
        assert!(slots.reclaim_idlest());
        assert!(!waiting.busy());
        assert!(!slots.reclaim_idlest(), "only a busy one is left");
        assert!(reading.idle(at(3)), "the busy one was left alone");
    }

    #[test]
    fn staying_idle_keeps_the_earlier_time() {
        let slots = Slots::new();
        let old = slots.register(at(1));
        let new = slots.register(at(2));
        assert!(old.idle(at(3)));
        assert!(slots.reclaim_idlest());
        assert!(!old.busy());
        assert!(new.busy());
    }

    #[test]
    fn a_lease_leaves_the_registry_when_dropped() {
        let slots = Slots::new();
        let lease = slots.register(at(1));
        let kept = slots.register(at(2));
        assert_eq!(slots.len(), 2);
        drop(lease);
        assert_eq!(slots.len(), 1);
        assert!(slots.reclaim_idlest());
        assert!(!kept.busy());
        drop(kept);
        assert!(slots.is_empty());
        assert!(!slots.reclaim_idlest());
    }

    #[tokio::test]
    async fn a_reclaimed_connection_is_woken_even_if_it_was_not_waiting() {
        let slots = Slots::new();
        let lease = slots.register(at(1));
        assert!(slots.reclaim_idlest());
        tokio::time::timeout(Duration::from_secs(1), lease.reclaimed())
            .await
            .expect("the reclaim is not lost");
    }

    #[test]
    fn stamps_order_instants_and_avoid_the_markers() {
        let slots = Slots::new();
        let early = slots.stamp(slots.epoch);
        let later = slots.stamp(slots.epoch + Duration::from_nanos(5));
        assert!(early != BUSY && early < later && later < RECLAIMED);
    }
}
