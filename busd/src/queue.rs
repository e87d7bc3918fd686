//! A subscriber's bounded queue of events waiting to be written to its socket.
//!
//! The bus pushes under its own lock and the subscriber's writer drains from its own task, so
//! this is the one structure two threads touch for every event. It holds no waker: `push`
//! reports whether the queue was empty and the caller wakes the writer, which keeps this file
//! plain enough to model-check with loom (`RUSTFLAGS="--cfg loom" cargo test -p busd --lib queue`).
//!
//! When the queue is full, either the oldest events make room and the loss is remembered as a
//! [`Gap`] to tell the subscriber about (`DropOldest`), or the queue refuses everything from
//! then on and reports itself overflowed so the subscriber can be disconnected (`Refuse`). In
//! neither case does a slow reader hold up the pusher.

use std::collections::VecDeque;

use bytes::Bytes;

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// An event as busd keeps it: its sequence number, its account (for routing and replay
/// filters) and the postcard bytes of `(seq, Event)`, shared by every queue that holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its sequence number in this epoch.
    pub seq: u64,
    /// Its account, for routing and for filtering a replay.
    pub account_id: u64,
    /// The postcard bytes of `(seq, Event)`, ready to go into an `Events` frame.
    pub bytes: Bytes,
}

/// Events dropped from one queue: the range of sequence numbers they span and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first seq dropped.
    pub from_seq: u64,
    /// The last seq dropped.
    pub to_seq: u64,
    /// How many were dropped (the range also spans events of other subscribers).
    pub missed: u64,
}

impl Gap {
    /// One event at `seq`.
    pub fn one(seq: u64) -> Gap {
        Gap {
            from_seq: seq,
            to_seq: seq,
            missed: 1,
        }
    }

    /// The range spanning both, their counts added (an upper bound where they overlap).
    pub fn merge(self, other: Gap) -> Gap {
        Gap {
            from_seq: self.from_seq.min(other.from_seq),
            to_seq: self.to_seq.max(other.to_seq),
            missed: self.missed + other.missed,
        }
    }

    /// `gap` grown by one more event at `seq` (earlier or later than those it holds).
    pub fn widen(gap: &mut Option<Gap>, seq: u64) {
        match gap {
            Some(gap) => {
                gap.from_seq = gap.from_seq.min(seq);
                gap.to_seq = gap.to_seq.max(seq);
                gap.missed += 1;
            }
            None => {
                *gap = Some(Gap {
                    from_seq: seq,
                    to_seq: seq,
                    missed: 1,
                })
            }
        }
    }
}

/// What a full queue does with more events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Make room by dropping the oldest events and remember them as a gap.
    DropOldest,
    /// Take nothing more and mark the queue overflowed: the subscriber is disconnected.
    Refuse,
}

/// What the writer takes out besides the events themselves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Events lost before the drained ones; it must be reported before them.
    pub gap: Option<Gap>,
    /// The queue refused events; the subscriber should be disconnected.
    pub overflowed: bool,
}

/// One subscriber's bounded queue between the bus and its writer: the bus never waits on
/// a slow reader, and whatever the queue cannot keep is reported, never silently lost.
pub struct Queue {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    entries: VecDeque<Entry>,
    gap: Option<Gap>,
    dropped: u64,
    overflowed: bool,
}

impl Queue {
    /// A queue of at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                gap: None,
                dropped: 0,
                overflowed: false,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave `Inner` inconsistent (every update is
        // a single push, pop or field write), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves `batch` (in sequence order) into the queue, leaving `batch` empty. Returns true
    /// when the writer may be waiting: the queue was empty or has just overflowed.
    pub fn push(&self, batch: &mut Vec<Entry>, when_full: WhenFull) -> bool {
        let mut inner = self.lock();
        let was_empty = inner.entries.is_empty();
        if inner.overflowed
            || when_full == WhenFull::Refuse && inner.entries.len() + batch.len() > self.capacity
        {
            // Refused events are remembered as a gap too: a consumer group member's queue
            // is handed to the other members when it is disconnected, gap included.
            inner.dropped += batch.len() as u64;
            for entry in batch.drain(..) {
                Gap::widen(&mut inner.gap, entry.seq);
            }
            let newly = !inner.overflowed;
            inner.overflowed = true;
            return newly;
        }
        for entry in batch.drain(..) {
            if inner.entries.len() == self.capacity {
                if let Some(oldest) = inner.entries.pop_front() {
                    Gap::widen(&mut inner.gap, oldest.seq);
                    inner.dropped += 1;
                }
            }
            inner.entries.push_back(entry);
        }
        was_empty
    }

    /// Records events that were lost before reaching this queue (a replay that fell out of the
    /// ring), to be reported ahead of everything queued after it.
    pub fn push_gap(&self, gap: Gap) {
        let mut inner = self.lock();
        inner.gap = Some(inner.gap.map_or(gap, |old| old.merge(gap)));
    }

    /// Moves up to `max` of the oldest events into `out`. An overflowed queue gives nothing
    /// out: its subscriber is about to be disconnected, and a consumer group member's queue
    /// and gap are then handed over whole.
    pub fn drain_into(&self, max: usize, out: &mut Vec<Entry>) -> Drained {
        let mut inner = self.lock();
        if inner.overflowed {
            return Drained {
                gap: None,
                overflowed: true,
            };
        }
        let take = inner.entries.len().min(max);
        out.extend(inner.entries.drain(..take));
        Drained {
            gap: inner.gap.take(),
            overflowed: inner.overflowed,
        }
    }

    /// Everything queued and the gap, leaving the queue empty, overflowed or not: what a
    /// consumer group member that left hands to the others.
    pub fn take_all(&self) -> (Vec<Entry>, Option<Gap>) {
        let mut inner = self.lock();
        let entries = inner.entries.drain(..).collect();
        (entries, inner.gap.take())
    }

    /// Events waiting, for stats.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events this queue has dropped or refused over its life.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        seqs.map(|seq| Entry {
            seq,
            account_id: 1,
            bytes: Bytes::new(),
        })
        .collect()
    }

    fn drain_all(queue: &Queue) -> (Drained, Vec<u64>) {
        let mut out = Vec::new();
        let drained = queue.drain_into(usize::MAX, &mut out);
        (drained, out.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn keeps_order_and_reports_first_push_only() {
        let queue = Queue::new(10);
        assert!(queue.push(&mut entries(1..=3), WhenFull::DropOldest));
        assert!(!queue.push(&mut entries(4..=5), WhenFull::DropOldest));
        let (drained, seqs) = drain_all(&queue);
        assert_eq!(drained, Drained::default());
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts_the_gap() {
        let queue = Queue::new(3);
        queue.push(&mut entries(1..=5), WhenFull::DropOldest);
        queue.push(&mut entries(6..=7), WhenFull::DropOldest);
        let (drained, seqs) = drain_all(&queue);
        let gap = Gap {
            from_seq: 1,
            to_seq: 4,
            missed: 4,
        };
        assert_eq!(drained.gap, Some(gap));
        assert_eq!(seqs, vec![5, 6, 7]);
        assert_eq!(queue.dropped(), 4);
        assert_eq!(drain_all(&queue).0.gap, None, "a gap is reported once");
    }

    #[test]
    fn refuse_overflows_and_stays_overflowed() {
        let queue = Queue::new(3);
        queue.push(&mut entries(1..=2), WhenFull::Refuse);
        assert!(queue.push(&mut entries(3..=4), WhenFull::Refuse));
        assert!(!queue.push(&mut entries(5..=5), WhenFull::Refuse));
        let (drained, seqs) = drain_all(&queue);
        assert!(drained.overflowed);
        assert!(
            seqs.is_empty(),
            "nothing more is written to an overflowed subscriber"
        );
        assert_eq!(queue.dropped(), 3, "every refused event counts");
        let (kept, gap) = queue.take_all();
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        let refused = Gap {
            from_seq: 3,
            to_seq: 5,
            missed: 3,
        };
        assert_eq!(gap, Some(refused), "and is remembered as a gap");
    }

    #[test]
    fn drains_in_bounded_steps() {
        let queue = Queue::new(100);
        queue.push(&mut entries(1..=10), WhenFull::DropOldest);
        let mut out = Vec::new();
        queue.drain_into(4, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(queue.len(), 6);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            account_id: 0,
            bytes: Bytes::new(),
        }
    }

    /// Whatever the interleaving of a pusher and a drainer, every event is either delivered
    /// exactly once, in order, or counted in a gap reported before anything that follows it.
    #[test]
    fn nothing_is_lost_unaccounted_for() {
        loom::model(|| {
            let queue = Arc::new(Queue::new(2));
            let pusher = {
                let queue = queue.clone();
                thread::spawn(move || {
                    queue.push(&mut vec![entry(1), entry(2)], WhenFull::DropOldest);
                    queue.push(&mut vec![entry(3)], WhenFull::DropOldest);
                })
            };
            let mut seen = Vec::new();
            let mut missed = 0;
            let mut last = 0;
            for _ in 0..2 {
                let mut out = Vec::new();
                let drained = queue.drain_into(1, &mut out);
                if let Some(gap) = drained.gap {
                    assert!(gap.from_seq > last);
                    last = gap.to_seq;
                    missed += gap.missed;
                }
                for e in out {
                    assert!(e.seq > last);
                    last = e.seq;
                    seen.push(e.seq);
                }
            }
            pusher.join().unwrap();
            let mut out = Vec::new();
            let drained = queue.drain_into(usize::MAX, &mut out);
            if let Some(gap) = drained.gap {
                assert!(gap.from_seq > last);
                missed += gap.missed;
            }
            for e in out {
                assert!(e.seq > last);
                last = e.seq;
                seen.push(e.seq);
            }
            assert_eq!(seen.len() as u64 + missed, 3);
            assert_eq!(queue.dropped(), missed);
        });
    }

    /// A refusing queue never accepts past capacity and reports the overflow to the drainer.
    #[test]
    fn refuse_reports_overflow() {
        loom::model(|| {
            let queue = Arc::new(Queue::new(2));
            let pusher = {
                let queue = queue.clone();
                thread::spawn(move || {
                    queue.push(&mut vec![entry(1), entry(2)], WhenFull::Refuse);
                    queue.push(&mut vec![entry(3)], WhenFull::Refuse)
                })
            };
            let mut out = Vec::new();
            let first = queue.drain_into(1, &mut out);
            let woke = pusher.join().unwrap();
            let rest = queue.drain_into(usize::MAX, &mut out);
            let delivered = out.len() as u64;
            if rest.overflowed {
                assert!(woke);
                // Nothing more is drained; what stayed queued is there to hand over.
                let kept = queue.take_all().0.len() as u64;
                assert_eq!(delivered + kept + queue.dropped(), 3);
            } else {
                assert!(!first.overflowed);
                assert_eq!(delivered, 3);
            }
        });
    }
}
