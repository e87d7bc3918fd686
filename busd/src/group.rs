//! Consumer groups: members share the events their filters take, each event to one member,
//! every event of an account to the same member while the membership stays the same.
//!
//! An account's owner is chosen by rendezvous hashing among the members whose filter takes
//! the account: the member with the highest hash of (account, member id). A member joining
//! takes only the accounts it now wins and a member leaving gives only its own accounts out,
//! so every other account keeps its owner, and with it its order. Owners are cached per
//! account; the cache is cleared on every change of membership.
//!
//! A group whose last member left is remembered (up to [`REMEMBERED_EMPTY`] of them) with
//! where it stopped, so the next member to join is given what nobody received meanwhile
//! from the replay ring, and a gap for what the ring no longer holds or the last member was
//! sent and never acknowledged.

use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use protocol::Filter;
use rustc_hash::FxHashMap;

use crate::filter::SubKey;
use crate::queue::Gap;

/// Empty groups remembered, oldest forgotten first.
pub const REMEMBERED_EMPTY: usize = 1024;
/// Accounts whose owner a group caches; publishers choose account ids, so the cache is
/// emptied when it reaches this, and owners are computed again as events arrive.
pub const CACHED_OWNERS: usize = 65_536;

/// One member as routing sees it.
struct Member {
    key: SubKey,
    /// busd's subscriber id: stable for the member's life, the input of its hash.
    id: u64,
    filter: Filter,
}

/// Where a group that lost its last member stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Every event after this seq that its members' filter took went to no member.
    pub after: u64,
    /// What the last member was sent and never acknowledged, or lost from its queue.
    pub gap: Option<Gap>,
}

#[derive(Default)]
struct Group {
    members: Vec<Member>,
    /// Owner per account, filled as events arrive; `None` when no member takes it.
    owners: FxHashMap<u64, Option<SubKey>>,
}

impl Group {
    fn owner(&mut self, account_id: u64) -> Option<SubKey> {
        if self.owners.len() >= CACHED_OWNERS && !self.owners.contains_key(&account_id) {
            self.owners.clear();
        }
        let members = &self.members;
        *self.owners.entry(account_id).or_insert_with(|| {
            members
                .iter()
                .filter(|m| m.filter.matches(account_id))
                .max_by_key(|m| score(account_id, m.id))
                .map(|m| m.key)
        })
    }
}

/// The rendezvous hash: SipHash with fixed keys, so every busd run agrees; computed once per
/// account and membership, so its cost is not on the publish path.
fn score(account_id: u64, member: u64) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one((account_id, member))
}

/// Every group with members, and the empty ones remembered.
#[derive(Default)]
pub struct Groups {
    live: FxHashMap<String, Group>,
    empty: FxHashMap<String, Left>,
    empty_order: VecDeque<String>,
}

impl Groups {
    /// Whether no group has a member: the publish path then skips groups entirely.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Adds a member; returns where the group stopped if it had been left empty.
    pub fn join(&mut self, name: &str, key: SubKey, id: u64, filter: Filter) -> Option<Left> {
        let left = self.empty.remove(name);
        if left.is_some() {
            self.empty_order.retain(|n| n != name);
        }
        let group = self.live.entry(name.to_owned()).or_default();
        group.members.push(Member { key, id, filter });
        group.owners.clear();
        left
    }

    /// Removes a member; returns whether the group still has members. A group left empty
    /// is remembered with `left` (see [`Groups::join`]).
    pub fn leave(&mut self, name: &str, key: SubKey, left: Left) -> bool {
        let Some(group) = self.live.get_mut(name) else {
            return false;
        };
        group.members.retain(|m| m.key != key);
        group.owners.clear();
        if !group.members.is_empty() {
            return true;
        }
        self.live.remove(name);
        if self.empty_order.len() == REMEMBERED_EMPTY {
            if let Some(oldest) = self.empty_order.pop_front() {
                self.empty.remove(&oldest);
            }
        }
        self.empty.insert(name.to_owned(), left);
        self.empty_order.push_back(name.to_owned());
        false
    }

    /// The member of group `name` that owns `account_id`, if any member takes it.
    pub fn owner(&mut self, name: &str, account_id: u64) -> Option<SubKey> {
        self.live.get_mut(name)?.owner(account_id)
    }

    /// Every member of group `name`.
    pub fn members(&self, name: &str) -> Vec<SubKey> {
        self.live
            .get(name)
            .map(|g| g.members.iter().map(|m| m.key).collect())
            .unwrap_or_default()
    }

    /// Appends, for each group, the member that owns `account_id`.
    pub fn owners(&mut self, account_id: u64, out: &mut Vec<SubKey>) {
        for group in self.live.values_mut() {
            if let Some(key) = group.owner(account_id) {
                out.push(key);
            }
        }
    }
}

/// One thing a member was written and has not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// An event: its seq and account.
    Event(u64, u64),
    /// A gap line: lost with the member unless an event written after it is acknowledged.
    Gap(Gap),
}

/// What a member was written and has not acknowledged, in the order written, at most
/// [`protocol::MAX_UNACKED`] events. The writer records, `Ack` retires, and a member that
/// leaves hands the rest to the bus to report.
#[derive(Default)]
pub struct Unacked {
    sent: std::sync::Mutex<VecDeque<Sent>>,
}

impl Unacked {
    fn sent(&self) -> std::sync::MutexGuard<'_, VecDeque<Sent>> {
        // Every critical section is a single push, pop or take: a poisoned lock is usable.
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many more events the writer may send before the next `Ack`.
    pub fn room(&self) -> usize {
        protocol::MAX_UNACKED.saturating_sub(self.sent().len())
    }

    /// Notes events just written, as `(seq, account)`.
    pub fn record(&self, written: impl IntoIterator<Item = (u64, u64)>) {
        let mut sent = self.sent();
        sent.extend(
            written
                .into_iter()
                .map(|(seq, account)| Sent::Event(seq, account)),
        );
    }

    /// Notes a gap line just written.
    pub fn record_gap(&self, gap: Gap) {
        self.sent().push_back(Sent::Gap(gap));
    }

    /// Retires the event `seq` and everything written before it (seqs are not in order
    /// here: events handed over from a member that left come after newer ones); an `Ack`
    /// for an event not in the log changes nothing. Returns whether the writer had been out
    /// of room.
    pub fn ack(&self, seq: u64) -> bool {
        let mut sent = self.sent();
        let was_full = sent.len() >= protocol::MAX_UNACKED;
        if let Some(at) = sent
            .iter()
            .position(|s| matches!(s, Sent::Event(s, _) if *s == seq))
        {
            sent.drain(..=at);
        }
        was_full && sent.len() < protocol::MAX_UNACKED
    }

    /// Everything still unacknowledged, leaving none.
    pub fn take(&self) -> VecDeque<Sent> {
        std::mem::take(&mut *self.sent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(ids: impl IntoIterator<Item = u64>) -> Filter {
        Filter::Accounts(ids.into_iter().collect())
    }

    fn owners(groups: &mut Groups, name: &str, n: u64) -> Vec<Option<SubKey>> {
        (0..n).map(|a| groups.owner(name, a)).collect()
    }

    const NOTHING: Left = Left {
        after: 0,
        gap: None,
    };

    #[test]
    fn every_account_has_one_owner_and_the_work_is_shared() {
        let mut groups = Groups::default();
        for key in 0..3 {
            groups.join("g", key, 100 + key as u64, Filter::All);
        }
        let owned = owners(&mut groups, "g", 3000);
        for key in 0..3 {
            let n = owned.iter().filter(|o| **o == Some(key)).count();
            assert!((800..1200).contains(&n), "member {key} owns {n} of 3000");
        }
    }

    #[test]
    fn a_change_moves_only_the_accounts_it_must() {
        let mut groups = Groups::default();
        groups.join("g", 0, 10, Filter::All);
        groups.join("g", 1, 11, Filter::All);
        let before = owners(&mut groups, "g", 1000);
        groups.join("g", 2, 12, Filter::All);
        let after = owners(&mut groups, "g", 1000);
        for (b, a) in before.iter().zip(&after) {
            assert!(
                a == b || *a == Some(2),
                "{b:?} moved to {a:?}, not to the newcomer"
            );
        }
        assert!(groups.leave("g", 2, NOTHING));
        assert_eq!(owners(&mut groups, "g", 1000), before);
    }

    #[test]
    fn only_members_whose_filter_takes_an_account_own_it() {
        let mut groups = Groups::default();
        groups.join("g", 0, 10, accounts([1, 2]));
        groups.join("g", 1, 11, accounts([2, 3]));
        assert_eq!(groups.owner("g", 1), Some(0));
        assert_eq!(groups.owner("g", 3), Some(1));
        assert_eq!(groups.owner("g", 4), None);
        let mut out = Vec::new();
        groups.owners(4, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn groups_are_independent_and_an_empty_one_is_remembered() {
        let mut groups = Groups::default();
        groups.join("a", 0, 10, Filter::All);
        groups.join("b", 1, 11, Filter::All);
        let mut out = Vec::new();
        groups.owners(7, &mut out);
        out.sort();
        assert_eq!(out, vec![0, 1]);
        let left = Left {
            after: 42,
            gap: None,
        };
        assert!(!groups.leave("a", 0, left));
        assert_eq!(groups.members("a"), Vec::<SubKey>::new());
        assert_eq!(groups.join("a", 2, 12, Filter::All), Some(left));
        assert_eq!(groups.join("a", 3, 13, Filter::All), None);
    }

    #[test]
    fn acks_retire_in_order_and_room_is_bounded() {
        let unacked = Unacked::default();
        unacked.record((1..=protocol::MAX_UNACKED as u64).map(|s| (s, 7)));
        assert_eq!(unacked.room(), 0);
        assert!(unacked.ack(10), "room again after a full log");
        assert_eq!(unacked.room(), 10);
        assert!(!unacked.ack(5), "an old ack changes nothing");
        assert_eq!(unacked.take().front(), Some(&Sent::Event(11, 7)));
        assert_eq!(unacked.room(), protocol::MAX_UNACKED);
        unacked.record([(100, 1), (3, 2), (101, 1)]);
        assert!(
            !unacked.ack(3),
            "handed over after a newer one, acknowledged by its own seq"
        );
        assert_eq!(unacked.take(), VecDeque::from([Sent::Event(101, 1)]));
    }

    #[test]
    fn a_gap_line_is_kept_until_an_event_after_it_is_acknowledged() {
        let unacked = Unacked::default();
        let gap = Gap {
            from_seq: 1,
            to_seq: 4,
            missed: 4,
        };
        unacked.record([(5, 1)]);
        unacked.record_gap(gap);
        unacked.record([(9, 1)]);
        unacked.ack(5);
        assert_eq!(
            unacked.take(),
            VecDeque::from([Sent::Gap(gap), Sent::Event(9, 1)])
        );
        unacked.record_gap(gap);
        unacked.record([(10, 1)]);
        unacked.ack(10);
        assert!(unacked.take().is_empty());
    }

    #[test]
    fn the_owner_cache_is_bounded_and_owners_stay_the_same() {
        let mut groups = Groups::default();
        groups.join("g", 0, 10, Filter::All);
        groups.join("g", 1, 11, Filter::All);
        let first = owners(&mut groups, "g", 100);
        for account in 0..(CACHED_OWNERS as u64 + 10) {
            groups.owner("g", account);
        }
        assert!(groups.live["g"].owners.len() <= CACHED_OWNERS);
        assert_eq!(owners(&mut groups, "g", 100), first);
    }

    #[test]
    fn empty_groups_remembered_are_bounded() {
        let mut groups = Groups::default();
        for i in 0..REMEMBERED_EMPTY + 10 {
            let name = format!("g{i}");
            groups.join(&name, i, i as u64, Filter::All);
            groups.leave(&name, i, NOTHING);
        }
        assert_eq!(groups.empty.len(), REMEMBERED_EMPTY);
        assert_eq!(groups.join("g0", 0, 0, Filter::All), None);
    }
}
