//! The schema, created on first open and seeded so a fresh install works at once.

use std::path::Path;

use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};

use crate::{DataError, Result};

/// Accounts a new database is seeded with.
pub const SEED_ACCOUNTS: u64 = 1000;

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts(
    account_id INTEGER PRIMARY KEY,
    account_name TEXT NOT NULL,
    is_active INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    key_hash BLOB
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
CREATE TRIGGER IF NOT EXISTS accounts_update_version AFTER UPDATE OF account_id, account_name, is_active, key_hash ON accounts BEGIN
    UPDATE change_counter SET version = version + 1;
    UPDATE accounts SET version = (SELECT version FROM change_counter) WHERE account_id = NEW.account_id;
END;
CREATE TRIGGER IF NOT EXISTS accounts_delete_version AFTER DELETE ON accounts BEGIN
    UPDATE change_counter SET version = version + 1;
    INSERT INTO account_deletions VALUES (OLD.account_id, (SELECT version FROM change_counter));
END;
";

/// Opens the database at `path` for ingest itself, creating the file if missing. Returns
/// whether the accounts table had to be created, in which case it has been seeded with
/// [`SEED_ACCOUNTS`] accounts.
///
/// "New" means "no accounts table", not "no file": SQLite takes a 0-byte file for an empty
/// database, and serving from one would answer 404 to everything.
pub fn open(path: &Path) -> Result<(Connection, bool)> {
    open_seeded(path, SEED_ACCOUNTS)
}

/// Like [`open`], but a new database gets accounts `1..=count` instead of the default seed,
/// so `ingest accounts seed --count N` on a new path gives exactly N accounts.
///
/// The table and its seed are created in one transaction, so a running ingest watching the
/// path never reloads a half-made database.
pub fn open_seeded(path: &Path, count: u64) -> Result<(Connection, bool)> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let created = initialise(&mut conn, count).map_err(|err| not_sqlite(err, path))?;
    Ok((conn, created))
}

/// Opens an existing accounts database without ever creating one: for the commands that
/// change or read accounts, where a missing or foreign file means a wrong `--db`, not a
/// wish for a new database. A database from an older version is brought up to date.
pub fn open_existing(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|err| {
        if path.exists() {
            DataError::from(err)
        } else {
            DataError::Missing(path.to_owned())
        }
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if !has_accounts_table(&conn).map_err(|err| not_sqlite(err, path))? {
        return Err(DataError::NotAccounts(path.to_owned()));
    }
    // An older database gains what this version needs (the key column); nothing is seeded.
    initialise(&mut conn, 0)?;
    Ok(conn)
}

/// Creates the schema and seeds `count` accounts unless the accounts table exists; returns
/// whether it did. `BEGIN IMMEDIATE` makes two processes opening a new file at once agree on
/// which of them creates it.
fn initialise(conn: &mut Connection, count: u64) -> Result<bool> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let created = !has_accounts_table(&tx)?;
    if !created {
        add_key_hash(&tx)?;
    }
    tx.execute_batch(SCHEMA)?;
    if created {
        insert_seed(&tx, count)?;
    }
    tx.commit()?;
    Ok(created)
}

/// Brings a database made before write keys up to date: adds the `key_hash` column, and
/// drops the update trigger so [`SCHEMA`] recreates it watching that column too.
fn add_key_hash(conn: &Connection) -> rusqlite::Result<()> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('accounts') WHERE name = 'key_hash'")?
        .exists([])?;
    if !has_column {
        conn.execute_batch(
            "ALTER TABLE accounts ADD COLUMN key_hash BLOB;
             DROP TRIGGER IF EXISTS accounts_update_version;",
        )?;
    }
    Ok(())
}

fn has_accounts_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'accounts'")?
        .exists([])
}

/// SQLite's own message for a non-SQLite file ("file is not a database") does not say which
/// file; this does.
fn not_sqlite(err: impl Into<DataError>, path: &Path) -> DataError {
    match err.into() {
        DataError::Sqlite(err) if err.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            DataError::NotSqlite(path.to_owned())
        }
        other => other,
    }
}

/// Deterministic accounts `1..=count`: `account-<id>`, every tenth one inactive. Existing
/// ids are left alone, so seeding twice is harmless. Returns how many were added.
pub fn seed(conn: &Connection, count: u64) -> Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let added = insert_seed(&tx, count)?;
    tx.commit()?;
    Ok(added)
}

fn insert_seed(conn: &Connection, count: u64) -> Result<u64> {
    let mut insert = conn.prepare(
        "INSERT OR IGNORE INTO accounts(account_id, account_name, is_active) VALUES (?1, ?2, ?3)",
    )?;
    let mut added = 0;
    for id in 1..=count {
        let id = i64::try_from(id).map_err(|_| DataError::IdOutOfRange(id))?;
        added += insert.execute(params![id, format!("account-{id}"), id % 10 != 0])? as u64;
    }
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

    fn count(conn: &Connection) -> u64 {
        conn.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_zero_byte_file_is_initialised_and_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        std::fs::write(&path, b"").unwrap();
        let (conn, created) = open(&path).unwrap();
        assert!(created);
        assert_eq!(count(&conn), SEED_ACCOUNTS);
    }

    #[test]
    fn an_sqlite_file_without_the_table_is_initialised_and_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE other(x)")
            .unwrap();
        let (conn, created) = open(&path).unwrap();
        assert!(created);
        assert_eq!(count(&conn), SEED_ACCOUNTS);
    }

    #[test]
    fn an_existing_empty_table_is_not_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (conn, created) = open_seeded(&path, 0).unwrap();
        assert!(created);
        assert_eq!(count(&conn), 0);
        let (conn, created) = open(&path).unwrap();
        assert!(!created);
        assert_eq!(count(&conn), 0);
    }

    #[test]
    fn open_seeded_gives_exactly_the_count_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (conn, created) = open_seeded(&path, 5).unwrap();
        assert!(created);
        assert_eq!(count(&conn), 5);
        let (conn, created) = open_seeded(&path, 7).unwrap();
        assert!(!created, "an existing database is not seeded again");
        assert_eq!(count(&conn), 5);
        assert_eq!(seed(&conn, 7).unwrap(), 2);
    }

    #[test]
    fn a_database_from_before_write_keys_gains_the_column_and_its_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = SCHEMA
            .replace("    key_hash BLOB\n", "")
            .replace("DEFAULT 0,\n", "DEFAULT 0\n")
            .replace(", key_hash ON accounts", " ON accounts");
        assert!(!old.contains("key_hash"), "{old}");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&old).unwrap();
        insert_seed(&conn, 3).unwrap();
        drop(conn);

        let conn = open_existing(&path).unwrap();
        let before: i64 = conn
            .query_row(
                "SELECT version FROM accounts WHERE account_id = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "UPDATE accounts SET key_hash = x'00' WHERE account_id = 2",
            [],
        )
        .unwrap();
        let after: i64 = conn
            .query_row(
                "SELECT version FROM accounts WHERE account_id = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            after > before,
            "a key change is a change: {before} -> {after}"
        );
        assert_eq!(count(&conn), 3, "nothing seeded");
    }

    #[test]
    fn open_existing_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.db");
        let err = open_existing(&path).err().unwrap();
        assert!(matches!(err, DataError::Missing(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("typo.db does not exist") && message.contains("seed --count N"),
            "{message}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn open_existing_refuses_what_is_not_an_accounts_database() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            open_existing(&empty),
            Err(DataError::NotAccounts(_))
        ));
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        let text = dir.path().join("text.db");
        std::fs::write(
            &text,
            "not a database, just some text long enough".repeat(10),
        )
        .unwrap();
        assert!(matches!(open_existing(&text), Err(DataError::NotSqlite(_))));
        assert!(matches!(open(&text), Err(DataError::NotSqlite(_))));
        let (_, _) = open(&dir.path().join("good.db")).unwrap();
        let conn = open_existing(&dir.path().join("good.db")).unwrap();
        assert_eq!(count(&conn), SEED_ACCOUNTS);
    }
}
