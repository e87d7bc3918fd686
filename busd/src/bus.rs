//! The bus: sequence numbers, the replay ring, the routing index and the subscribers.
//!
//! One lock orders everything that must be ordered: assigning seqs, appending to the ring,
//! routing into queues and (re)subscribing. Because a subscription reads its replay from the
//! ring and joins the index in the same critical section as publishes, a resuming subscriber
//! can neither miss an event between the two nor see one twice.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use protocol::fanout::entry_head;
use protocol::publish::RawPublish;
use protocol::{Filter, Position, PublisherStats, Start, Stats, SubscriberStats, fanout, varint};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::filter::{FilterIndex, SubKey, origin_matches};
use crate::group::{Groups, Left, Sent, Unacked};
use crate::queue::{Entry, Gap, Queue, WhenFull};
use crate::ring::Ring;
use crate::runs::{Encoded, Runs};

/// One subscriber as the bus and its writer task share it.
pub struct Subscriber {
    /// busd's number for it, shown in stats.
    pub id: u64,
    /// The name from its `Hello`, shown in stats.
    pub name: String,
    /// What the bus has routed to it and its writer has not sent yet.
    pub queue: Queue,
    /// Wakes the writer when its queue goes from empty to not, or overflows.
    pub notify: Notify,
    /// Events its writer has sent, for stats.
    pub delivered: AtomicU64,
    /// Set when it joins a consumer group: what it was sent and has not acknowledged.
    pub member: std::sync::OnceLock<Unacked>,
}

/// Counters that only ever grow; read without the lock for stats.
#[derive(Default)]
pub struct Counters {
    /// Events sequenced.
    pub published: AtomicU64,
    /// Event deliveries written to subscribers.
    pub delivered: AtomicU64,
    /// Resent batches recognised and dropped.
    pub duplicate_batches: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
    /// Connected publishers.
    pub publishers: AtomicU64,
}

/// Writers to wake once the publishes that reached them are done.
///
/// Waking a subscriber's writer the moment its queue stops being empty makes it write each
/// batch on its own while another batch from the same publisher is already waiting to be
/// read: on a machine with idle cores the writer runs at once, and a publisher pipelining
/// batches costs every subscriber one write (and its reader one read) per batch. A
/// publisher connection instead keeps the wake-ups here while it has another whole batch
/// to publish at once, up to [`Wakes::MAX_BATCHES`], and wakes them before it waits for
/// more: the subscriber then takes every batch that reached it in one write. Nothing waits
/// for a clock, so an event is never held back longer than it takes busd to publish what
/// had already arrived. Dropping the list wakes whoever is in it, so no wake-up is lost.
#[derive(Default)]
pub struct Wakes {
    writers: Vec<Arc<Subscriber>>,
    batches: usize,
}

impl Wakes {
    /// Most batches published before the writers they reached are woken, which bounds how
    /// long a busy publisher can hold back its subscribers' writes.
    pub const MAX_BATCHES: usize = 8;

    fn add(&mut self, sub: &Arc<Subscriber>) {
        self.writers.push(sub.clone());
    }

    /// Counts one more batch published into this list.
    pub fn count_batch(&mut self) {
        self.batches += 1;
    }

    /// True once the list holds [`Wakes::MAX_BATCHES`]: wake it before publishing more.
    pub fn full(&self) -> bool {
        self.batches >= Self::MAX_BATCHES
    }

    /// Wakes every writer in the list and empties it.
    pub fn wake(&mut self) {
        self.batches = 0;
        for sub in self.writers.drain(..) {
            sub.notify.notify_one();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake();
    }
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The events got the seqs `first..=last` (an empty batch gets `first > last`).
    Accepted {
        /// The first seq given.
        first: u64,
        /// The last seq given.
        last: u64,
    },
    /// This publisher already sent a batch with this id (or a later one); nothing was added.
    Duplicate,
}

/// The bus is closed for publishing: busd is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("busd is shutting down")]
pub struct Closed;

/// The daemon's one shared state: every connection task holds it.
pub struct Bus {
    epoch: u64,
    when_full: WhenFull,
    queue_events: usize,
    state: Mutex<State>,
    /// Figures read without the lock, for stats.
    pub counters: Counters,
}

struct Slot {
    sub: Arc<Subscriber>,
    filter: Option<Filter>,
    /// The consumer group it joined; its events then come through [`Groups`], not the index.
    group: Option<String>,
}

/// Why a `Join` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The connection already subscribed or joined: one role per subscriber connection.
    #[error("this connection already subscribed or joined a group")]
    AlreadySubscribed,
}

struct State {
    head: u64,
    closed: bool,
    ring: Ring,
    index: FilterIndex,
    groups: Groups,
    /// Scratch for the group members one event goes to.
    group_targets: Vec<SubKey>,
    slots: Vec<Option<Slot>>,
    free: Vec<SubKey>,
    next_id: u64,
    /// Per publisher name: the highest batch id seen, to drop resent batches (the few most
    /// recent instances (process) with their last id, newest last; ids are only comparable
    /// within one instance), and its counts for stats.
    last_batch: FxHashMap<String, Record>,
    /// Per-slot staging for one publish, kept to reuse its allocations.
    scratch: Vec<Vec<Entry>>,
    touched: Vec<SubKey>,
    /// A publish's events for plain subscribers, staged as runs before they become entries.
    runs: Runs,
    /// Where each entry of the batch being published ends, kept to reuse its allocation.
    ends: Vec<usize>,
}

/// What the bus knows of one publisher name.
#[derive(Default)]
struct Record {
    /// Recent instances with their last batch id, newest last.
    instances: Vec<(u64, u64)>,
    batches: u64,
    events: u64,
    duplicates: u64,
}

impl Bus {
    /// A bus for the run `epoch`, with a ring of `replay_bytes` and subscriber queues of
    /// `queue_events` that behave as `when_full` says when they fill.
    pub fn new(epoch: u64, replay_bytes: usize, queue_events: usize, when_full: WhenFull) -> Self {
        Bus {
            epoch,
            when_full,
            queue_events,
            state: Mutex::new(State {
                head: 0,
                closed: false,
                ring: Ring::new(replay_bytes),
                index: FilterIndex::default(),
                groups: Groups::default(),
                group_targets: Vec::new(),
                slots: Vec::new(),
                free: Vec::new(),
                next_id: 1,
                last_batch: FxHashMap::default(),
                scratch: Vec::new(),
                touched: Vec::new(),
                runs: Runs::default(),
                ends: Vec::new(),
            }),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent between its statements that can
        // panic (none index out of bounds by construction), so a poisoned lock is usable;
        // a publish cut short leaves runs staged, which the next publish clears first.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This run, as every `Welcome` and `Goodbye` names it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last seq given out: where a fresh subscription starts.
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// Sequences a batch, keeps it in the ring and routes it to every matching queue.
    /// `publisher` and `instance` name the sender for duplicate detection; an empty name
    /// opts out.
    pub fn publish(
        &self,
        publisher: &str,
        instance: u64,
        batch: RawPublish,
    ) -> Result<Published, Closed> {
        self.publish_deferring(publisher, instance, batch, &mut Wakes::default())
    }

    /// [`Bus::publish`], leaving the writers it must wake in `wakes`: a publisher connection
    /// with another batch already readable publishes that one too before waking them, so a
    /// subscriber gets both batches' events in one write (see [`Wakes`]).
    pub fn publish_deferring(
        &self,
        publisher: &str,
        instance: u64,
        batch: RawPublish,
        wakes: &mut Wakes,
    ) -> Result<Published, Closed> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed {
            return Err(Closed);
        }
        if !publisher.is_empty() {
            let events = batch.events.len() as u64;
            if !state.is_new_batch(publisher, instance, batch.batch_id, events) {
                self.counters.duplicate_batches.fetch_add(1, Relaxed);
                return Ok(Published::Duplicate);
            }
        }
        let first = state.head + 1;
        state.runs.clear();
        let mut ends = std::mem::take(&mut state.ends);
        let bytes = encode(&batch, first, &mut ends);
        state.runs.stage_all(state.index.takes_all(), &ends);
        for (index, event) in batch.events.iter().enumerate() {
            state.head += 1;
            let start = index.checked_sub(1).map_or(0, |i| ends[i]);
            let entry = Entry::one(
                state.head,
                event.account_id,
                bytes.slice(start..ends[index]),
            );
            state.route(index, &ends, &entry);
            state.ring.push(entry);
        }
        let encoded = Encoded {
            bytes: &bytes,
            ends: &ends,
            first_seq: first,
        };
        let (scratch, touched) = (&mut state.scratch, &mut state.touched);
        state.runs.drain(
            &encoded,
            |index| batch.events[index].account_id,
            |key, entry| stage(scratch, touched, key, entry),
        );
        state.ends = ends;
        state.deliver(self.when_full, wakes);
        self.counters
            .published
            .fetch_add(batch.events.len() as u64, Relaxed);
        Ok(Published::Accepted {
            first,
            last: state.head,
        })
    }

    /// Adds a subscriber that receives nothing until it subscribes.
    pub fn register(&self, name: String) -> (SubKey, Arc<Subscriber>) {
        let mut state = self.lock();
        let sub = Arc::new(Subscriber {
            id: state.next_id,
            name,
            queue: Queue::new(self.queue_events),
            notify: Notify::new(),
            delivered: AtomicU64::new(0),
            member: std::sync::OnceLock::new(),
        });
        state.next_id += 1;
        let slot = Some(Slot {
            sub: sub.clone(),
            filter: None,
            group: None,
        });
        let key = match state.free.pop() {
            Some(key) => {
                state.slots[key] = slot;
                key
            }
            None => {
                state.slots.push(slot);
                state.scratch.push(Vec::new());
                state.slots.len() - 1
            }
        };
        (key, sub)
    }

    /// Removes a subscriber that left; its queue goes with it, except a group member's,
    /// whose events go to the members taking over its accounts.
    pub fn unregister(&self, key: SubKey) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(slot) = state.slots.get_mut(key).and_then(Option::take) {
            match (&slot.group, &slot.filter) {
                (Some(group), _) => state.hand_over(group, key, &slot.sub, self.when_full),
                (None, Some(filter)) => state.index.remove(key, filter),
                (None, None) => {}
            }
            state.free.push(key);
        }
    }

    /// Makes the subscriber a member of consumer group `group`, taking its share of what
    /// `filter` matches from now on. A group that had been left empty first gives it what
    /// no member received meanwhile (see [`crate::group`]).
    pub fn join(&self, key: SubKey, group: String, filter: Filter) -> Result<(), JoinError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(slot) = state.slots.get_mut(key).and_then(Option::as_mut) else {
            return Ok(());
        };
        if slot.filter.is_some() || slot.group.is_some() {
            return Err(JoinError::AlreadySubscribed);
        }
        let sub = slot.sub.clone();
        let _ = sub.member.set(Unacked::default());
        slot.filter = Some(filter.clone());
        slot.group = Some(group.clone());
        if let Some(left) = state.groups.join(&group, key, sub.id, filter.clone()) {
            if let Some(gap) = left.gap {
                sub.queue.push_gap(gap);
            }
            let after = Start::After(Position {
                epoch: self.epoch,
                seq: left.after,
            });
            let (gap, mut replay) =
                state.history(self.epoch, after, |e| filter.matches(e.account_id));
            // What the group's earlier members took and this one does not is theirs to
            // have missed: it is reported, not dropped unsaid.
            let (_, others) = state.history(self.epoch, after, |e| !filter.matches(e.account_id));
            let others = others
                .iter()
                .fold(None, |g, e| merge(g, Some(Gap::one(e.seq))));
            if let Some(gap) = merge(gap, others) {
                sub.queue.push_gap(gap);
            }
            sub.queue.push(&mut replay, WhenFull::DropOldest);
        }
        sub.notify.notify_one();
        Ok(())
    }

    /// A group member's `Ack`: wakes its writer if it was waiting for one.
    pub fn ack(&self, sub: &Subscriber, seq: u64) {
        if sub.member.get().is_some_and(|m| m.ack(seq)) {
            sub.notify.notify_one();
        }
    }

    /// Replaces the subscriber's filter and, with `resume_after`, queues what it missed
    /// (or a gap for what the ring no longer holds) ahead of any new event.
    pub fn subscribe(&self, key: SubKey, filter: Filter, resume_after: Option<Position>) {
        let start = resume_after.map_or(Start::Head, Start::After);
        self.subscribe_with(key, filter, &BTreeSet::new(), start);
    }

    /// Replaces the subscriber's filter and queues the history `start` asks for, of the
    /// matching accounts and `origins` (empty: all), ahead of any new event: a `Gap` first
    /// when the ring no longer reaches back as far as asked.
    pub fn subscribe_with(
        &self,
        key: SubKey,
        filter: Filter,
        origins: &BTreeSet<String>,
        start: Start,
    ) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(slot) = state.slots.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        if let Some(old) = slot.filter.take() {
            state.index.remove(key, &old);
        }
        state.index.insert(key, &filter);
        let sub = slot.sub.clone();
        let wanted = |e: &Entry| filter.matches(e.account_id) && origin_matches(origins, e);
        let (gap, mut replay) = state.history(self.epoch, start, wanted);
        if let Some(gap) = gap {
            sub.queue.push_gap(gap);
        }
        // A replay larger than the queue keeps its newest part and reports the rest as a
        // gap, whatever the slow policy: refusing would loop the reconnects.
        sub.queue.push(&mut replay, WhenFull::DropOldest);
        if let Some(slot) = state.slots.get_mut(key).and_then(Option::as_mut) {
            slot.filter = Some(filter);
        }
        sub.notify.notify_one();
    }

    /// Every publisher name this run has had batches from, by name, with its counts;
    /// `connected` says whether a name has a connection now.
    pub fn publisher_stats(&self, connected: impl Fn(&str) -> bool) -> Vec<PublisherStats> {
        let state = self.lock();
        let mut publishers: Vec<PublisherStats> = state
            .last_batch
            .iter()
            .map(|(name, record)| PublisherStats {
                name: name.clone(),
                connected: false,
                batches: record.batches,
                events: record.events,
                duplicate_batches: record.duplicates,
            })
            .collect();
        // Asked after the bus lock is released: no lock is ever taken inside it.
        drop(state);
        for publisher in &mut publishers {
            publisher.connected = connected(&publisher.name);
        }
        publishers.sort_by(|a, b| a.name.cmp(&b.name));
        publishers
    }

    /// Stops all publishing and returns the last seq this epoch will ever have.
    pub fn close(&self) -> u64 {
        let mut state = self.lock();
        state.closed = true;
        state.head
    }

    /// A snapshot of the figures `busctl stats` shows.
    pub fn stats(&self) -> Stats {
        let state = self.lock();
        // A connection that never subscribed (busctl stats asking for these very figures,
        // say) receives nothing and is no subscriber.
        let subscribers: Vec<SubscriberStats> = state
            .slots
            .iter()
            .flatten()
            .filter(|slot| slot.filter.is_some())
            .map(|slot| SubscriberStats {
                id: slot.sub.id,
                name: slot.sub.name.clone(),
                accounts: match &slot.filter {
                    Some(Filter::All) => None,
                    Some(Filter::Accounts(set)) => Some(set.len() as u64),
                    None => Some(0),
                },
                queue_depth: slot.sub.queue.len() as u64,
                delivered: slot.sub.delivered.load(Relaxed),
                dropped: slot.sub.queue.dropped(),
            })
            .collect();
        Stats {
            epoch: self.epoch,
            head_seq: state.head,
            connections: self.counters.connections.load(Relaxed),
            publishers: self.counters.publishers.load(Relaxed),
            published: self.counters.published.load(Relaxed),
            delivered: self.counters.delivered.load(Relaxed),
            dropped: subscribers.iter().map(|s| s.dropped).sum(),
            duplicate_batches: self.counters.duplicate_batches.load(Relaxed),
            ring_events: state.ring.len() as u64,
            ring_bytes: state.ring.bytes() as u64,
            subscribers,
        }
    }
}

/// Publisher instances remembered per name for duplicate detection.
const INSTANCES_PER_NAME: usize = 8;

impl State {
    /// Whether `batch_id` is above every id this publisher instance sent before; if so it
    /// becomes the new mark. Counts the batch (of `events`) or the duplicate for stats.
    fn is_new_batch(&mut self, name: &str, instance: u64, batch_id: u64, events: u64) -> bool {
        if !self.last_batch.contains_key(name) {
            self.last_batch.insert(name.to_owned(), Record::default());
        }
        let Some(record) = self.last_batch.get_mut(name) else {
            return true;
        };
        let instances = &mut record.instances;
        let new = match instances.iter_mut().find(|(i, _)| *i == instance) {
            Some((_, last)) if batch_id <= *last => false,
            Some((_, last)) => {
                *last = batch_id;
                true
            }
            None => {
                if instances.len() == INSTANCES_PER_NAME {
                    instances.remove(0);
                }
                instances.push((instance, batch_id));
                true
            }
        };
        if new {
            record.batches += 1;
            record.events += events;
        } else {
            record.duplicates += 1;
        }
        new
    }

    /// The events `start` asks for that are `wanted`, oldest first, and the gap to report
    /// before them when the ring no longer reaches back that far.
    fn history(
        &self,
        epoch: u64,
        start: Start,
        wanted: impl Fn(&Entry) -> bool,
    ) -> (Option<Gap>, Vec<Entry>) {
        let evicted = || {
            let first = self.ring.first_seq(self.head);
            (first > 1).then(|| Gap {
                from_seq: 1,
                to_seq: first - 1,
                missed: first - 1,
            })
        };
        let after = match start {
            Start::Head => return (None, Vec::new()),
            Start::After(position) if position.epoch == epoch => position.seq,
            Start::After(_) | Start::Beginning => 0,
            Start::Last(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let mut last: Vec<Entry> = self
                    .ring
                    .iter_newest()
                    .filter(|e| wanted(e))
                    .take(n)
                    .cloned()
                    .collect();
                last.reverse();
                let short = last.len() < n;
                return (evicted().filter(|_| short), last);
            }
            Start::Since(since_us) => {
                let time = |e: &Entry| entry_head(&e.bytes).map_or(0, |h| h.timestamp_us);
                let index = self.ring.partition_point(|e| time(e) < since_us);
                // Nothing held is older than asked: what came before may have been evicted.
                let gap = if index == 0 { evicted() } else { None };
                let events = self.ring.iter_from(index).filter(|e| wanted(e)).cloned();
                return (gap, events.collect());
            }
        };
        let plan = self.ring.replay_from(after, self.head);
        let gap = plan.evicted.map(|(from_seq, to_seq)| Gap {
            from_seq,
            to_seq,
            missed: to_seq - from_seq + 1,
        });
        let events = self
            .ring
            .iter_from(plan.index)
            .filter(|e| wanted(e))
            .cloned();
        (gap, events.collect())
    }

    /// Stages `entry`, the batch's `index`th (entries end at `ends`), for every subscriber
    /// that named its account, as part of a run (those taking all have the whole batch
    /// staged already), and for the member of each consumer group that owns its account,
    /// alone: a member acknowledges and hands over single events.
    fn route(&mut self, index: usize, ends: &[usize], entry: &Entry) {
        for &key in self.index.named(entry.account_id) {
            self.runs.stage(key, index, ends);
        }
        if !self.groups.is_empty() {
            self.groups
                .owners(entry.account_id, &mut self.group_targets);
            for key in self.group_targets.drain(..) {
                stage(&mut self.scratch, &mut self.touched, key, entry.clone());
            }
        }
    }

    /// A member left group `group`. What was still queued for it goes to the members now
    /// owning those accounts, ahead of anything newer; what it was written and never
    /// acknowledged is a gap for them; gaps it had (lost from its queue, or written and
    /// not acknowledged) and events of accounts no remaining member takes are a gap for
    /// every member, since their accounts are not known or nobody owns them. With no member
    /// left, all of that is the gap the next member hears first, and the group remembers
    /// the head: what comes after it is replayed to that member.
    fn hand_over(&mut self, group: &str, key: SubKey, sub: &Subscriber, when_full: WhenFull) {
        let sent = sub.member.get().map(Unacked::take).unwrap_or_default();
        let (queued, lost) = sub.queue.take_all();
        let everything = sent
            .iter()
            .map(|s| match *s {
                Sent::Event(seq, _) => Some(Gap::one(seq)),
                Sent::Gap(gap) => Some(gap),
            })
            .chain(queued.iter().map(|e| Some(e.gap())))
            .fold(lost, merge);
        let left = Left {
            after: self.head,
            gap: everything,
        };
        if !self.groups.leave(group, key, left) {
            return;
        }
        let mut gaps: FxHashMap<SubKey, Gap> = FxHashMap::default();
        let mut shared = lost;
        for s in &sent {
            match *s {
                Sent::Gap(gap) => shared = merge(shared, Some(gap)),
                Sent::Event(seq, account) => match self.groups.owner(group, account) {
                    Some(owner) => add_gap(&mut gaps, owner, Gap::one(seq)),
                    None => Gap::widen(&mut shared, seq),
                },
            }
        }
        for entry in queued.into_iter().flat_map(Entry::events) {
            match self.groups.owner(group, entry.account_id) {
                Some(owner) => stage(&mut self.scratch, &mut self.touched, owner, entry),
                None => Gap::widen(&mut shared, entry.seq),
            }
        }
        if let Some(gap) = shared {
            for member in self.groups.members(group) {
                add_gap(&mut gaps, member, gap);
            }
        }
        for (owner, gap) in gaps {
            if let Some(slot) = &self.slots[owner] {
                slot.sub.queue.push_gap(gap);
                slot.sub.notify.notify_one();
            }
        }
        self.deliver(when_full, &mut Wakes::default());
    }

    /// Moves every staged entry into its subscriber's queue, one lock per subscriber.
    fn deliver(&mut self, when_full: WhenFull, wakes: &mut Wakes) {
        for key in self.touched.drain(..) {
            let staged = &mut self.scratch[key];
            match &self.slots[key] {
                Some(slot) => {
                    if slot.sub.queue.push(staged, when_full) {
                        wakes.add(&slot.sub);
                    }
                }
                None => staged.clear(),
            }
        }
    }
}

/// Two optional gaps as one.
fn merge(a: Option<Gap>, b: Option<Gap>) -> Option<Gap> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (a, b) => a.or(b),
    }
}

/// Adds `gap` to what `member` will be told.
fn add_gap(gaps: &mut FxHashMap<SubKey, Gap>, member: SubKey, gap: Gap) {
    let merged = gaps.remove(&member).map_or(gap, |g| g.merge(gap));
    gaps.insert(member, merged);
}

/// Adds `entry` to subscriber `key`'s staging, noting the subscriber as touched.
fn stage(scratch: &mut [Vec<Entry>], touched: &mut Vec<SubKey>, key: SubKey, entry: Entry) {
    let staged = &mut scratch[key];
    if staged.is_empty() {
        touched.push(key);
    }
    staged.push(entry);
}

/// Encodes every event of `batch` as `(seq, Event)`, seqs from `first`, back to back in one
/// buffer shared by all of them; `ends` gets where each ends.
fn encode(batch: &RawPublish, first: u64, ends: &mut Vec<usize>) -> bytes::Bytes {
    let size = batch.body.len();
    let mut buf = BytesMut::with_capacity(size + batch.events.len() * varint::MAX_LEN);
    ends.clear();
    for (seq, event) in (first..).zip(&batch.events) {
        fanout::encode_entry(&mut buf, seq, batch.bytes(event));
        ends.push(buf.len());
    }
    buf.freeze()
}

#[cfg(test)]
mod tests;
