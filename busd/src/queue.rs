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

/// An event (or a run of them) as busd keeps it: its sequence number, its account (for routing and replay
/// filters) and the postcard bytes of `(seq, Event)`, shared by every queue that holds it.
///
/// In a plain subscriber's queue an entry may also be a run: `count` events of consecutive
/// seqs, published in one batch, whose bytes lie back to back. A subscriber taking every
/// event of a batch then costs one entry per batch, not one per event. The ring and a
/// consumer group member's queue hold single events only.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its sequence number in this epoch (a run's first).
    pub seq: u64,
    /// Its account, for routing and for filtering a replay (a run's first event's).
    pub account_id: u64,
    /// The postcard bytes of `(seq, Event)`, ready to go into an `Events` frame (a run's,
    /// back to back).
    pub bytes: Bytes,
    /// How many events: 1, or a run's length.
    pub count: u64,
}

impl Entry {
    /// A single event.
    pub fn one(seq: u64, account_id: u64, bytes: Bytes) -> Entry {
        Entry {
            seq,
            account_id,
            bytes,
            count: 1,
        }
    }

    /// The events it holds, as a gap if they are lost.
    pub fn gap(&self) -> Gap {
        Gap {
            from_seq: self.seq,
            to_seq: self.seq + self.count.saturating_sub(1),
            missed: self.count,
        }
    }

    /// Its events one by one (itself, for a single event).
    pub fn events(self) -> impl Iterator<Item = Entry> {
        let mut rest = Some(self);
        std::iter::from_fn(move || {
            let entry = rest.take()?;
            let (first, tail) = entry.split_first();
            rest = tail;
            Some(first)
        })
    }

    /// Its first event, and the run's other events if there are any.
    fn split_first(mut self) -> (Entry, Option<Entry>) {
        if self.count <= 1 {
            return (self, None);
        }
        // busd built these bytes from a validated batch, so they always parse; were they
        // not to, the whole run stays one entry rather than being cut anywhere.
        let Some((_, len)) = protocol::fanout::first_entry(&self.bytes) else {
            return (self, None);
        };
        let tail_bytes = self.bytes.split_off(len);
        let tail_account = protocol::fanout::first_entry(&tail_bytes).map_or(0, |(a, _)| a);
        let tail = Entry {
            seq: self.seq + 1,
            account_id: tail_account,
            bytes: tail_bytes,
            count: self.count - 1,
        };
        self.count = 1;
        (self, Some(tail))
    }

    /// Drops its first `n` events (fewer than it holds) and says which were dropped.
    fn skip(self, n: u64) -> (Option<Gap>, Entry) {
        let mut dropped: Option<Gap> = None;
        let mut rest = self;
        for _ in 0..n {
            match rest.split_first() {
                (first, Some(tail)) => {
                    Gap::widen(&mut dropped, first.seq);
                    rest = tail;
                }
                (whole, None) => return (Some(merge(dropped, whole.gap())), whole.emptied()),
            }
        }
        (dropped, rest)
    }

    /// An entry of no events (what is left of a run that could not be cut).
    fn emptied(self) -> Entry {
        Entry {
            bytes: Bytes::new(),
            count: 0,
            ..self
        }
    }
}

/// Two gaps as one, the first possibly absent.
fn merge(a: Option<Gap>, b: Gap) -> Gap {
    a.map_or(b, |a| a.merge(b))
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
    /// Events in `entries` (a run counts its length).
    len: usize,
    gap: Option<Gap>,
    dropped: u64,
    overflowed: bool,
}

impl Inner {
    /// Drops the oldest events until at most `capacity` are left, remembering them as the
    /// gap; a run is cut so that exactly the oldest go.
    fn drop_oldest(&mut self, capacity: usize) {
        while self.len > capacity {
            let excess = (self.len - capacity) as u64;
            let Some(oldest) = self.entries.pop_front() else {
                debug_assert!(false, "len counts {} events in an empty queue", self.len);
                self.len = 0;
                return;
            };
            let (gap, kept) = if oldest.count <= excess {
                (oldest.gap(), None)
            } else {
                let (gap, rest) = oldest.skip(excess);
                let Some(gap) = gap else {
                    self.entries.push_front(rest);
                    return;
                };
                (gap, Some(rest))
            };
            self.gap = Some(merge(self.gap, gap));
            self.len -= gap.missed as usize;
            self.dropped += gap.missed;
            if let Some(rest) = kept.filter(|rest| rest.count > 0) {
                self.entries.push_front(rest);
            }
        }
    }
}

impl Queue {
    /// A queue of at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                len: 0,
                gap: None,
                dropped: 0,
                overflowed: false,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing that runs under this lock panics (no indexing, no arithmetic that can
        // overflow on counts the queue itself keeps), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves `batch` (in sequence order) into the queue, leaving `batch` empty. Returns true
    /// when the writer may be waiting: the queue was empty or has just overflowed.
    pub fn push(&self, batch: &mut Vec<Entry>, when_full: WhenFull) -> bool {
        let mut inner = self.lock();
        let was_empty = inner.entries.is_empty();
        let events: u64 = batch.iter().map(|e| e.count).sum();
        if inner.overflowed
            || when_full == WhenFull::Refuse && inner.len as u64 + events > self.capacity as u64
        {
            // Refused events are remembered as a gap too: a consumer group member's queue
            // is handed to the other members when it is disconnected, gap included.
            inner.dropped += events;
            for entry in batch.drain(..) {
                inner.gap = Some(merge(inner.gap, entry.gap()));
            }
            let newly = !inner.overflowed;
            inner.overflowed = true;
            return newly;
        }
        inner.len += events as usize;
        inner.entries.extend(batch.drain(..));
        inner.drop_oldest(self.capacity);
        was_empty
    }

    /// Records events that were lost before reaching this queue (a replay that fell out of the
    /// ring), to be reported ahead of everything queued after it.
    pub fn push_gap(&self, gap: Gap) {
        let mut inner = self.lock();
        inner.gap = Some(inner.gap.map_or(gap, |old| old.merge(gap)));
    }

    /// Moves up to `max` of the oldest events into `out` (a run is not cut, so the last
    /// may take it past `max`; a group member's queue holds single events only). An overflowed queue gives nothing
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
        let mut taken = 0;
        while taken < max {
            let Some(entry) = inner.entries.pop_front() else {
                break;
            };
            taken += entry.count as usize;
            out.push(entry);
        }
        inner.len -= taken;
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
        inner.len = 0;
        (entries, inner.gap.take())
    }

    /// Events waiting, for stats.
    pub fn len(&self) -> usize {
        self.lock().len
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
        seqs.map(|seq| Entry::one(seq, 1, Bytes::new())).collect()
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

    /// A run of the events `seqs`, of accounts 100 + seq, as busd builds one.
    fn run(seqs: std::ops::RangeInclusive<u64>) -> Entry {
        let mut bytes = bytes::BytesMut::new();
        for seq in seqs.clone() {
            let event = protocol::Event {
                account_id: 100 + seq,
                timestamp_us: seq,
                data: "x".repeat(seq as usize % 7),
                origin: "o".into(),
                id: seq,
            };
            let event = postcard::to_allocvec(&event).expect("an event encodes");
            protocol::fanout::encode_entry(&mut bytes, seq, &event);
        }
        Entry {
            seq: *seqs.start(),
            account_id: 100 + seqs.start(),
            bytes: bytes.freeze(),
            count: seqs.count() as u64,
        }
    }

    #[test]
    fn a_run_splits_into_its_events() {
        let events: Vec<Entry> = run(5..=8).events().collect();
        let seqs: Vec<(u64, u64, u64)> = events
            .iter()
            .map(|e| (e.seq, e.account_id, e.count))
            .collect();
        assert_eq!(
            seqs,
            vec![(5, 105, 1), (6, 106, 1), (7, 107, 1), (8, 108, 1)]
        );
        let joined: Vec<u8> = events.iter().flat_map(|e| e.bytes.to_vec()).collect();
        assert_eq!(
            joined,
            run(5..=8).bytes.to_vec(),
            "cut where one event ends"
        );
        assert_eq!(events[2].bytes.to_vec(), run(7..=7).bytes.to_vec());
    }

    #[test]
    fn drop_oldest_cuts_a_run_to_keep_exactly_the_newest() {
        let queue = Queue::new(5);
        queue.push(&mut vec![run(1..=4)], WhenFull::DropOldest);
        queue.push(&mut vec![run(5..=7)], WhenFull::DropOldest);
        assert_eq!(queue.len(), 5);
        let mut out = Vec::new();
        let drained = queue.drain_into(usize::MAX, &mut out);
        let gap = Gap {
            from_seq: 1,
            to_seq: 2,
            missed: 2,
        };
        assert_eq!(drained.gap, Some(gap));
        let seqs: Vec<u64> = out
            .into_iter()
            .flat_map(Entry::events)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![3, 4, 5, 6, 7]);
        assert_eq!(queue.dropped(), 2);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_run_larger_than_the_queue_keeps_its_newest() {
        let queue = Queue::new(2);
        queue.push(&mut vec![run(1..=6)], WhenFull::DropOldest);
        let mut out = Vec::new();
        let drained = queue.drain_into(usize::MAX, &mut out);
        assert_eq!(
            drained.gap.map(|g| (g.from_seq, g.to_seq, g.missed)),
            Some((1, 4, 4))
        );
        let seqs: Vec<u64> = out
            .into_iter()
            .flat_map(Entry::events)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![5, 6]);
    }

    #[test]
    fn refused_runs_count_every_event() {
        let queue = Queue::new(4);
        queue.push(&mut vec![run(1..=3)], WhenFull::Refuse);
        assert!(queue.push(&mut vec![run(4..=5)], WhenFull::Refuse));
        assert_eq!(queue.dropped(), 2);
        let (kept, gap) = queue.take_all();
        assert_eq!(kept.iter().map(|e| e.count).sum::<u64>(), 3);
        assert_eq!(
            gap.map(|g| (g.from_seq, g.to_seq, g.missed)),
            Some((4, 5, 2))
        );
    }

    #[test]
    fn drain_takes_whole_runs_and_counts_events() {
        let queue = Queue::new(100);
        queue.push(
            &mut vec![run(1..=3), run(4..=6), run(7..=9)],
            WhenFull::DropOldest,
        );
        let mut out = Vec::new();
        queue.drain_into(4, &mut out);
        assert_eq!(out.len(), 2, "the second run takes it past 4, whole");
        assert_eq!(queue.len(), 3);
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
        Entry::one(seq, 0, Bytes::new())
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
