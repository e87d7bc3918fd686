//! The routing index: from an account id to the subscribers that asked for it.
//!
//! Publishing an event looks up its account once and touches only the subscribers that named
//! it; those that take everything get the whole batch at once. The cost of a publish does not
//! grow with the number of subscribers that filter an event out.

use std::collections::BTreeSet;

use protocol::Filter;
use protocol::fanout::entry_head;
use rustc_hash::FxHashMap;

use crate::queue::Entry;

/// Whether `entry`, a single event (cut runs first), comes from one of `origins` (empty:
/// every origin). Not part of the
/// routing index: a subscriber's writer applies it as it drains, so it costs the publish
/// path and other subscribers nothing.
pub fn origin_matches(origins: &BTreeSet<String>, entry: &Entry) -> bool {
    origins.is_empty() || entry_head(&entry.bytes).is_some_and(|head| origins.contains(head.origin))
}

/// A subscriber's slot in the bus; small and dense so per-publish scratch space can be a `Vec`.
pub type SubKey = usize;

/// Which subscribers want an account: the subscribers that take all, and per account the
/// ones that named it, so routing an event touches only those.
#[derive(Default)]
pub struct FilterIndex {
    all: Vec<SubKey>,
    by_account: FxHashMap<u64, Keys>,
}

/// The subscribers that named one account. Most accounts have one, kept in the map itself:
/// routing an event then follows no pointer to a list of its own.
#[derive(Debug)]
enum Keys {
    One(SubKey),
    Many(Vec<SubKey>),
}

impl Keys {
    fn as_slice(&self) -> &[SubKey] {
        match self {
            Keys::One(key) => std::slice::from_ref(key),
            Keys::Many(keys) => keys,
        }
    }

    fn push(&mut self, key: SubKey) {
        match self {
            Keys::One(first) => *self = Keys::Many(vec![*first, key]),
            Keys::Many(keys) => keys.push(key),
        }
    }

    /// Removes `key`; returns whether no subscriber is left.
    fn remove(&mut self, key: SubKey) -> bool {
        match self {
            Keys::One(only) => *only == key,
            Keys::Many(keys) => {
                keys.retain(|k| *k != key);
                if let [last] = keys[..] {
                    *self = Keys::One(last);
                }
                self.as_slice().is_empty()
            }
        }
    }
}

impl FilterIndex {
    /// Adds subscriber `key` under `filter`.
    pub fn insert(&mut self, key: SubKey, filter: &Filter) {
        match filter {
            Filter::All => self.all.push(key),
            Filter::Accounts(accounts) => {
                for account in accounts {
                    match self.by_account.get_mut(account) {
                        Some(keys) => keys.push(key),
                        None => {
                            self.by_account.insert(*account, Keys::One(key));
                        }
                    }
                }
            }
        }
    }

    /// Removes subscriber `key`, which was inserted under `filter`.
    pub fn remove(&mut self, key: SubKey, filter: &Filter) {
        match filter {
            Filter::All => self.all.retain(|k| *k != key),
            Filter::Accounts(accounts) => {
                for account in accounts {
                    if self
                        .by_account
                        .get_mut(account)
                        .is_some_and(|keys| keys.remove(key))
                    {
                        self.by_account.remove(account);
                    }
                }
            }
        }
    }

    /// The subscribers that take every event. A publish stages each whole batch for them
    /// at once rather than event by event: they are never in the account lists, so no
    /// subscriber is reached both ways.
    pub fn takes_all(&self) -> &[SubKey] {
        &self.all
    }

    /// The subscribers that named `account_id` in their filter, each once.
    pub fn named(&self, account_id: u64) -> &[SubKey] {
        self.by_account
            .get(&account_id)
            .map_or(&[][..], Keys::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(ids: &[u64]) -> Filter {
        Filter::Accounts(ids.iter().copied().collect())
    }

    fn targets(index: &FilterIndex, account: u64) -> Vec<SubKey> {
        let mut keys = index.takes_all().to_vec();
        keys.extend(index.named(account));
        keys.sort();
        keys
    }

    #[test]
    fn routes_by_account_and_to_all() {
        let mut index = FilterIndex::default();
        index.insert(0, &Filter::All);
        index.insert(1, &accounts(&[1, 5]));
        index.insert(2, &accounts(&[5]));
        assert_eq!(targets(&index, 5), vec![0, 1, 2]);
        assert_eq!(targets(&index, 1), vec![0, 1]);
        assert_eq!(targets(&index, 7), vec![0]);
    }

    #[test]
    fn an_account_goes_from_one_subscriber_to_many_and_back() {
        let mut index = FilterIndex::default();
        for key in [1, 2, 3] {
            index.insert(key, &accounts(&[5]));
        }
        assert_eq!(targets(&index, 5), vec![1, 2, 3]);
        index.remove(2, &accounts(&[5]));
        assert_eq!(targets(&index, 5), vec![1, 3]);
        index.remove(1, &accounts(&[5]));
        assert_eq!(targets(&index, 5), vec![3]);
        assert!(matches!(index.by_account.get(&5), Some(Keys::One(3))));
        index.remove(9, &accounts(&[5]));
        assert_eq!(
            targets(&index, 5),
            vec![3],
            "removing another key changes nothing"
        );
        index.insert(4, &accounts(&[5]));
        assert_eq!(targets(&index, 5), vec![3, 4]);
        index.remove(3, &accounts(&[5]));
        index.remove(4, &accounts(&[5]));
        assert!(index.by_account.is_empty());
    }

    #[test]
    fn removal_undoes_insertion() {
        let mut index = FilterIndex::default();
        index.insert(1, &accounts(&[1, 5]));
        index.insert(2, &Filter::All);
        index.remove(1, &accounts(&[1, 5]));
        index.remove(2, &Filter::All);
        assert!(targets(&index, 5).is_empty());
        assert!(index.by_account.is_empty());
    }
}
