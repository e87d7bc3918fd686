//! The in-memory index ingest consults on every request: account id to active or not, and
//! the hash of its write key if it has one.
//!
//! Only what a request needs is kept (no names), so a million accounts fit in a few tens of
//! megabytes; `DashMap` shards the locks so request threads and the sync loop rarely meet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use rusqlite::Connection;
use rustc_hash::{FxBuildHasher, FxHashSet};

use crate::Result;
use crate::key::{KeyHash, Lock};

/// What a request for an account gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Inactive,
    Unknown,
    /// The account has a write key and the request presented none.
    KeyMissing,
    /// The account has a write key and the request presented another.
    KeyWrong,
}

/// What the index holds for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub active: bool,
    /// Boxed: most accounts have no key, and an entry stays 16 bytes.
    pub key: Option<Box<Lock>>,
}

impl Account {
    /// An account without a write key.
    pub fn open(active: bool) -> Account {
        Account { active, key: None }
    }

    /// An account as stored: `key_hash` is the stored hash column, if not NULL.
    pub fn stored(active: bool, key_hash: Option<&[u8]>) -> Account {
        Account {
            active,
            key: key_hash.map(|hash| Box::new(Lock::new(KeyHash::from_stored(hash)))),
        }
    }
}

/// Account id to [`Account`], shared by every request thread and the sync thread.
#[derive(Default)]
pub struct Accounts {
    /// FxHash: the keys are integer ids from our own table, so SipHash's flood resistance
    /// buys nothing, and hashing is a visible part of a request's cost.
    accounts: DashMap<u64, Account, FxBuildHasher>,
    /// Highest `version` applied so far.
    version: AtomicU64,
    loaded: AtomicBool,
    /// Set by the sync thread while the file at the database path is not the one it reads
    /// (deleted or replaced), so ingest can report it; inverted so the default means "fine".
    file_missing: AtomicBool,
}

impl Accounts {
    /// What a request without a key gets.
    pub fn status(&self, account_id: u64) -> Status {
        self.check(account_id, None)
    }

    /// What a request presenting `key` (the bearer token, if any) gets. The key is checked
    /// before the account's state, so a caller without the key learns nothing about it.
    pub fn check(&self, account_id: u64, key: Option<&[u8]>) -> Status {
        let Some(account) = self.accounts.get(&account_id) else {
            return Status::Unknown;
        };
        match (&account.key, key) {
            (Some(_), None) => Status::KeyMissing,
            (Some(lock), Some(key)) if !lock.opens(key) => Status::KeyWrong,
            _ if account.active => Status::Active,
            _ => Status::Inactive,
        }
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Whether the first full load has finished (readiness).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Whether the database this index follows is still the file at its path. False while
    /// it has been deleted or replaced and no usable database has been reloaded since: the
    /// index then keeps answering from memory but no longer sees changes.
    pub fn file_ok(&self) -> bool {
        !self.file_missing.load(Ordering::Acquire)
    }

    pub(crate) fn set_file_ok(&self, ok: bool) {
        self.file_missing.store(!ok, Ordering::Release);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Loads every account, then marks the index loaded.
    pub fn load(&self, conn: &Connection) -> Result<usize> {
        let applied = self.apply_changes(conn)?;
        self.loaded.store(true, Ordering::Release);
        Ok(applied)
    }

    /// Makes the index exactly what `conn` holds: every row applied, every account it no
    /// longer has removed, and the version taken from it. For a database that replaced the one
    /// the index was loaded from, whose versions say nothing about what the index has.
    /// Returns how many accounts it holds.
    pub fn reload(&self, conn: &Connection) -> Result<usize> {
        // One read transaction: the rows and the version come from the same snapshot.
        let tx = conn.unchecked_transaction()?;
        let mut present = FxHashSet::default();
        let mut highest = 0;
        {
            let mut all =
                tx.prepare("SELECT account_id, is_active, key_hash, version FROM accounts")?;
            let mut rows = all.query([])?;
            while let Some(row) = rows.next()? {
                let (id, version): (i64, i64) = (row.get(0)?, row.get(3)?);
                self.accounts.insert(id as u64, stored(row)?);
                present.insert(id as u64);
                highest = highest.max(version);
            }
        }
        let deleted: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM account_deletions",
            [],
            |r| r.get(0),
        )?;
        tx.finish()?;
        self.accounts.retain(|id, _| present.contains(id));
        self.version
            .store(highest.max(deleted) as u64, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        Ok(present.len())
    }

    /// Sets one account (`Some`) or forgets it (`None`): for stores other than SQLite, which
    /// read their changes themselves and hand them over one at a time.
    pub(crate) fn set(&self, account_id: u64, account: Option<Account>) {
        match account {
            Some(account) => {
                self.accounts.insert(account_id, account);
            }
            None => {
                self.accounts.remove(&account_id);
            }
        }
    }

    /// Forgets every account `keep` rejects: after a full reload, the ones the store no
    /// longer has.
    pub(crate) fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.accounts.retain(|id, _| keep(*id));
    }

    /// Records that everything up to `version` has been applied, and that the index is
    /// loaded.
    pub(crate) fn applied_up_to(&self, version: u64) {
        self.version.store(version, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }

    /// Applies every row changed (or deleted) since the last pass; returns how many.
    pub fn apply_changes(&self, conn: &Connection) -> Result<usize> {
        let since = self.version() as i64;
        let mut highest = since;
        let mut applied = 0;
        let mut changed = conn.prepare_cached(
            "SELECT account_id, is_active, key_hash, version FROM accounts WHERE version > ?1 ORDER BY version",
        )?;
        let mut rows = changed.query([since])?;
        while let Some(row) = rows.next()? {
            let (id, version): (i64, i64) = (row.get(0)?, row.get(3)?);
            self.accounts.insert(id as u64, stored(row)?);
            highest = highest.max(version);
            applied += 1;
        }
        let mut deleted = conn.prepare_cached(
            "SELECT account_id, version FROM account_deletions WHERE version > ?1 ORDER BY version",
        )?;
        let mut rows = deleted.query([since])?;
        while let Some(row) = rows.next()? {
            let (id, version): (i64, i64) = (row.get(0)?, row.get(1)?);
            // A row deleted and then re-added carries a newer version than its deletion.
            if self.active_version_after(conn, id, version)? {
                continue;
            }
            self.accounts.remove(&(id as u64));
            highest = highest.max(version);
            applied += 1;
        }
        self.version.store(highest as u64, Ordering::Release);
        Ok(applied)
    }

    fn active_version_after(&self, conn: &Connection, id: i64, version: i64) -> Result<bool> {
        let mut stmt =
            conn.prepare_cached("SELECT 1 FROM accounts WHERE account_id = ?1 AND version > ?2")?;
        Ok(stmt.exists([id, version])?)
    }
}

/// The account in a row whose second and third columns are `is_active` and `key_hash`.
fn stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    let active: bool = row.get(1)?;
    let key_hash = row.get_ref(2)?.as_blob_or_null()?;
    Ok(Account::stored(active, key_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::open;

    #[test]
    fn loads_then_applies_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("a.db")).unwrap();
        let accounts = Accounts::default();
        assert!(!accounts.is_loaded());
        assert_eq!(accounts.load(&conn).unwrap(), 1000);
        assert!(accounts.is_loaded());
        assert_eq!(accounts.status(1), Status::Active);
        assert_eq!(accounts.status(10), Status::Inactive);
        assert_eq!(accounts.status(1001), Status::Unknown);

        conn.execute("UPDATE accounts SET is_active = 0 WHERE account_id = 1", [])
            .unwrap();
        conn.execute(
            "INSERT INTO accounts(account_id, account_name, is_active) VALUES (5000, 'new', 1)",
            [],
        )
        .unwrap();
        conn.execute("DELETE FROM accounts WHERE account_id = 2", [])
            .unwrap();
        assert_eq!(accounts.apply_changes(&conn).unwrap(), 3);
        assert_eq!(accounts.status(1), Status::Inactive);
        assert_eq!(accounts.status(5000), Status::Active);
        assert_eq!(accounts.status(2), Status::Unknown);
        assert_eq!(accounts.apply_changes(&conn).unwrap(), 0, "nothing new");

        conn.execute(
            "INSERT INTO accounts(account_id, account_name, is_active) VALUES (2, 'back', 1)",
            [],
        )
        .unwrap();
        accounts.apply_changes(&conn).unwrap();
        assert_eq!(
            accounts.status(2),
            Status::Active,
            "re-added after deletion"
        );
    }

    #[test]
    fn reload_makes_the_index_exactly_the_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = open(&dir.path().join("old.db")).unwrap();
        let accounts = Accounts::default();
        accounts.load(&old).unwrap();
        for _ in 0..3 {
            old.execute("UPDATE accounts SET is_active = 1 - is_active", [])
                .unwrap();
        }
        accounts.apply_changes(&old).unwrap();
        assert!(accounts.version() > 3000);

        let (new, _) = crate::schema::open_seeded(&dir.path().join("new.db"), 20).unwrap();
        new.execute("DELETE FROM accounts WHERE account_id = 3", [])
            .unwrap();
        assert_eq!(accounts.reload(&new).unwrap(), 19);
        assert_eq!(accounts.len(), 19);
        assert_eq!(
            accounts.status(500),
            Status::Unknown,
            "gone from the new file"
        );
        assert_eq!(accounts.status(3), Status::Unknown);
        assert_eq!(accounts.status(10), Status::Inactive);
        assert_eq!(accounts.version(), 21, "the new file's versions");

        new.execute("UPDATE accounts SET is_active = 0 WHERE account_id = 1", [])
            .unwrap();
        assert_eq!(accounts.apply_changes(&new).unwrap(), 1);
        assert_eq!(accounts.status(1), Status::Inactive);
    }

    #[test]
    fn file_ok_until_told_otherwise() {
        let accounts = Accounts::default();
        assert!(accounts.file_ok());
        accounts.set_file_ok(false);
        assert!(!accounts.file_ok());
    }
}
