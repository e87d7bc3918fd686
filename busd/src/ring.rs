//! The replay ring: the most recent events of this epoch, within a byte budget.
//!
//! A subscriber that reconnects with `resume_after` is served from here, so a network blip
//! costs it nothing. Every accepted event enters the ring, so the sequence numbers it holds
//! are contiguous and an event is found by subtraction, not search.

use std::collections::VecDeque;

use crate::queue::Entry;

/// Bytes an entry costs beyond its encoding: the entry itself in the deque.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// The most recent events within a byte budget, oldest first: what a resuming subscriber
/// is replayed from.
pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    budget: usize,
}

/// Where a replay after some sequence number starts.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplayFrom {
    /// Events after the requested point that the ring no longer has, as `(from, to)`.
    pub evicted: Option<(u64, u64)>,
    /// Index into the ring of the first event to replay.
    pub index: usize,
}

impl Ring {
    /// An empty ring that keeps at most `budget` bytes of events.
    pub fn new(budget: usize) -> Self {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    fn cost(entry: &Entry) -> usize {
        entry.bytes.len() + ENTRY_OVERHEAD
    }

    /// Appends the next event (its seq must follow the last one), evicting the oldest to
    /// stay within budget.
    pub fn push(&mut self, entry: Entry) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|last| last.seq + 1 == entry.seq)
        );
        self.bytes += Self::cost(&entry);
        self.entries.push_back(entry);
        while self.bytes > self.budget {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= Self::cost(&old),
                None => break,
            }
        }
    }

    /// Plans a replay of every event with a seq above `after`, given the epoch's `head`.
    pub fn replay_from(&self, after: u64, head: u64) -> ReplayFrom {
        let first = self.entries.front().map_or(head + 1, |e| e.seq);
        if after + 1 >= first {
            let index = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
            ReplayFrom {
                evicted: None,
                index: index.min(self.entries.len()),
            }
        } else {
            ReplayFrom {
                evicted: Some((after + 1, first - 1)),
                index: 0,
            }
        }
    }

    /// The oldest seq held, or `head + 1` when nothing is: above 1, the epoch's first
    /// events have been evicted.
    pub fn first_seq(&self, head: u64) -> u64 {
        self.entries.front().map_or(head + 1, |e| e.seq)
    }

    /// The index of the first event for which `before` is false, the events being ordered
    /// so that it is true of a prefix (a time read from each: accepted times grow with seqs
    /// up to the clock skew between publishers, which may misplace a start by that much).
    pub fn partition_point(&self, before: impl FnMut(&Entry) -> bool) -> usize {
        self.entries.partition_point(before)
    }

    /// The events held, newest first.
    pub fn iter_newest(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().rev()
    }

    /// The events from ring index `index` on.
    pub fn iter_from(&self, index: usize) -> impl Iterator<Item = &Entry> {
        self.entries.range(index.min(self.entries.len())..)
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(seq: u64, len: usize) -> Entry {
        Entry::one(seq, seq % 3, Bytes::from(vec![0; len]))
    }

    #[test]
    fn evicts_oldest_past_the_budget() {
        let mut ring = Ring::new(3 * (100 + ENTRY_OVERHEAD));
        for seq in 1..=5 {
            ring.push(entry(seq, 100));
        }
        assert_eq!(ring.len(), 3);
        let seqs: Vec<u64> = ring.iter_from(0).map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }

    #[test]
    fn replay_within_the_ring_starts_right_after() {
        let mut ring = Ring::new(usize::MAX);
        for seq in 1..=5 {
            ring.push(entry(seq, 1));
        }
        let plan = ring.replay_from(2, 5);
        assert_eq!(
            plan,
            ReplayFrom {
                evicted: None,
                index: 2
            }
        );
        assert_eq!(ring.iter_from(plan.index).next().map(|e| e.seq), Some(3));
        assert_eq!(
            ring.replay_from(5, 5).index,
            5,
            "caught up: nothing to replay"
        );
        assert_eq!(
            ring.replay_from(9, 5).index,
            5,
            "a future seq replays nothing"
        );
    }

    #[test]
    fn replay_past_the_ring_reports_what_was_evicted() {
        let mut ring = Ring::new(2 * (1 + ENTRY_OVERHEAD));
        for seq in 1..=5 {
            ring.push(entry(seq, 1));
        }
        let plan = ring.replay_from(1, 5);
        assert_eq!(plan.evicted, Some((2, 3)));
        assert_eq!(ring.iter_from(plan.index).next().map(|e| e.seq), Some(4));
    }

    #[test]
    fn an_empty_ring_knows_the_head() {
        let ring = Ring::new(0);
        assert_eq!(ring.replay_from(0, 0).evicted, None);
        assert_eq!(ring.replay_from(3, 7).evicted, Some((4, 7)));
    }
}
