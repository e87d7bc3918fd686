//! The schema, created on first open and seeded so a fresh install works at once.

use std::path::Path;

use rusqlite::{Connection, params};

use crate::Result;

/// Accounts a new database is seeded with.
pub const SEED_ACCOUNTS: u64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts(
    account_id INTEGER PRIMARY KEY,
    account_name TEXT NOT NULL,
    is_active INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS accounts_by_version ON accounts(version);
-- Deletions leave a row here, so a sync that reads by version sees them too.
CREATE TABLE IF NOT EXISTS account_deletions(
    account_id INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS account_deletions_by_version ON account_deletions(version);
CREATE TABLE IF NOT EXISTS change_counter(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO change_counter VALUES (1, 0);
-- Every change takes the next version, whoever writes it.
CREATE TRIGGER IF NOT EXISTS accounts_insert_version AFTER INSERT ON accounts BEGIN
    UPDATE change_counter SET version = version + 1;
    UPDATE accounts SET version = (SELECT version FROM change_counter) WHERE account_id = NEW.account_id;
END;
CREATE TRIGGER IF NOT EXISTS accounts_update_version AFTER UPDATE OF account_id, account_name, is_active ON accounts BEGIN
    UPDATE change_counter SET version = version + 1;
    UPDATE accounts SET version = (SELECT version FROM change_counter) WHERE account_id = NEW.account_id;
END;
CREATE TRIGGER IF NOT EXISTS accounts_delete_version AFTER DELETE ON accounts BEGIN
    UPDATE change_counter SET version = version + 1;
    INSERT INTO account_deletions VALUES (OLD.account_id, (SELECT version FROM change_counter));
END;
";

/// Opens (creating if missing) the database at `path`. Returns whether it was created, in
/// which case it has been seeded with [`SEED_ACCOUNTS`] accounts.
pub fn open(path: &Path) -> Result<(Connection, bool)> {
    let created = !path.exists();
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)?;
    if created {
        seed(&conn, SEED_ACCOUNTS)?;
    }
    Ok((conn, created))
}

/// Deterministic accounts `1..=count`: `account-<id>`, every tenth one inactive. Existing
/// ids are left alone, so seeding twice is harmless.
pub fn seed(conn: &Connection, count: u64) -> Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let mut added = 0;
    {
        let mut insert = tx.prepare(
            "INSERT OR IGNORE INTO accounts(account_id, account_name, is_active) VALUES (?1, ?2, ?3)",
        )?;
        for id in 1..=count {
            let id = i64::try_from(id).map_err(|_| crate::DataError::IdOutOfRange(id))?;
            added += insert.execute(params![id, format!("account-{id}"), id % 10 != 0])? as u64;
        }
    }
    tx.commit()?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_created_and_seeded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (conn, created) = open(&path).unwrap();
        assert!(created);
        let (count, active): (u64, u64) = conn
            .query_row("SELECT COUNT(*), SUM(is_active) FROM accounts", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, active), (1000, 900));
        drop(conn);
        let (_, created) = open(&path).unwrap();
        assert!(!created);
    }

    #[test]
    fn every_change_gets_a_higher_version() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("a.db")).unwrap();
        let version = |id: i64| -> i64 {
            conn.query_row(
                "SELECT version FROM accounts WHERE account_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        let before = version(5);
        conn.execute("UPDATE accounts SET is_active = 0 WHERE account_id = 5", [])
            .unwrap();
        let after = version(5);
        assert!(after > before && after > version(1000));
        conn.execute("DELETE FROM accounts WHERE account_id = 6", [])
            .unwrap();
        let deleted: i64 = conn
            .query_row(
                "SELECT version FROM account_deletions WHERE account_id = 6",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(deleted > after);
    }
}
