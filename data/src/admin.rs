//! The operations behind `ingest accounts ...`. They take a connection from
//! [`crate::open_existing`] (or, for seeding, [`crate::schema::open_seeded`]), so a mistyped
//! path never becomes a new database.

use std::io::Write;

use rusqlite::{Connection, params};

use crate::key::KeyHash;
use crate::{DataError, Result};

pub use crate::schema::seed;

/// An id as both stores hold it (a signed 64-bit integer).
pub(crate) fn id(account_id: u64) -> Result<i64> {
    i64::try_from(account_id).map_err(|_| DataError::IdOutOfRange(account_id))
}

/// Adds one account; an existing id is an error rather than an overwrite, so a typo cannot
/// rename or reactivate someone else's account.
pub fn add(conn: &Connection, account_id: u64, name: &str, active: bool) -> Result<()> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO accounts(account_id, account_name, is_active) VALUES (?1, ?2, ?3)",
        params![id(account_id)?, name, active],
    )?;
    if inserted == 0 {
        return Err(DataError::Exists(account_id));
    }
    Ok(())
}

/// Activates or deactivates an account; the running ingest applies it on its next sync.
pub fn set_active(conn: &Connection, account_id: u64, active: bool) -> Result<()> {
    let updated = conn.execute(
        "UPDATE accounts SET is_active = ?2 WHERE account_id = ?1",
        params![id(account_id)?, active],
    )?;
    if updated == 0 {
        return Err(DataError::NotFound(account_id));
    }
    Ok(())
}

/// Gives an account a new write key (`Some`: its hash) or removes its key (`None`). A new
/// key replaces the old one at once: requests with the old key get 401 from then on.
pub fn set_key(conn: &Connection, account_id: u64, key: Option<&KeyHash>) -> Result<()> {
    let updated = conn.execute(
        "UPDATE accounts SET key_hash = ?2 WHERE account_id = ?1",
        params![id(account_id)?, key.map(KeyHash::as_bytes)],
    )?;
    if updated == 0 {
        return Err(DataError::NotFound(account_id));
    }
    Ok(())
}

/// Deletes an account; the running ingest answers its events 404 from its next sync. The
/// deletion is recorded (`account_deletions`), so every sync sees it.
pub fn delete(conn: &Connection, account_id: u64) -> Result<()> {
    let deleted = conn.execute(
        "DELETE FROM accounts WHERE account_id = ?1",
        params![id(account_id)?],
    )?;
    if deleted == 0 {
        return Err(DataError::NotFound(account_id));
    }
    Ok(())
}

/// One account as `list` reads it, for every store alike; the caller chooses how it is
/// written (text or JSON), so the stores read rows and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The account id.
    pub id: i64,
    /// Its name, for people.
    pub name: String,
    /// Whether its events are accepted.
    pub active: bool,
    /// Whether its events need a write key.
    pub keyed: bool,
}

impl Listed {
    /// The text line `list` prints: `id<TAB>name<TAB>active|inactive<TAB>key|no-key`.
    pub fn line(&self) -> String {
        let state = if self.active { "active" } else { "inactive" };
        let key = if self.keyed { "key" } else { "no-key" };
        format!("{}\t{}\t{state}\t{key}", self.id, self.name)
    }
}

/// Writes every account, one a line as `render` makes it, in id order; stops early when
/// `out` fails (a closed pipe). Returns how many were written.
pub fn list(
    conn: &Connection,
    out: &mut impl Write,
    render: impl Fn(&Listed) -> String,
) -> Result<u64> {
    let mut stmt = conn.prepare(
        "SELECT account_id, account_name, is_active, key_hash IS NOT NULL FROM accounts ORDER BY account_id",
    )?;
    let mut rows = stmt.query([])?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let listed = Listed {
            id: row.get(0)?,
            name: row.get(1)?,
            active: row.get(2)?,
            keyed: row.get(3)?,
        };
        if writeln!(out, "{}", render(&listed)).is_err() {
            break;
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::open;

    #[test]
    fn add_set_list() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("a.db")).unwrap();
        add(&conn, 2000, "acme", false).unwrap();
        assert!(matches!(
            add(&conn, 2000, "again", true),
            Err(DataError::Exists(2000))
        ));
        set_active(&conn, 2000, true).unwrap();
        assert!(matches!(
            set_active(&conn, 99_999, true),
            Err(DataError::NotFound(99_999))
        ));
        assert!(matches!(
            add(&conn, u64::MAX, "x", true),
            Err(DataError::IdOutOfRange(_))
        ));
        let mut out = Vec::new();
        assert_eq!(list(&conn, &mut out, Listed::line).unwrap(), 1001);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("2000\tacme\tactive\tno-key\n")
        );
        delete(&conn, 2000).unwrap();
        assert!(matches!(
            delete(&conn, 2000),
            Err(DataError::NotFound(2000))
        ));
        let mut out = Vec::new();
        assert_eq!(list(&conn, &mut out, |a| a.id.to_string()).unwrap(), 1000);
        assert!(String::from_utf8(out).unwrap().ends_with("\n1000\n"));
    }

    #[test]
    fn a_key_is_set_replaced_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = open(&dir.path().join("a.db")).unwrap();
        let accounts = crate::Accounts::default();
        accounts.load(&conn).unwrap();
        let (key, hash) = crate::key::generate().unwrap();
        set_key(&conn, 7, Some(&hash)).unwrap();
        accounts.apply_changes(&conn).unwrap();
        assert_eq!(accounts.status(7), crate::Status::KeyMissing);
        assert_eq!(
            accounts.check(7, Some(b"trk_guess")),
            crate::Status::KeyWrong
        );
        assert_eq!(
            accounts.check(7, Some(key.as_bytes())),
            crate::Status::Active
        );

        let (newer, hash) = crate::key::generate().unwrap();
        set_key(&conn, 7, Some(&hash)).unwrap();
        accounts.apply_changes(&conn).unwrap();
        assert_eq!(
            accounts.check(7, Some(key.as_bytes())),
            crate::Status::KeyWrong
        );
        assert_eq!(
            accounts.check(7, Some(newer.as_bytes())),
            crate::Status::Active
        );

        set_key(&conn, 7, None).unwrap();
        accounts.apply_changes(&conn).unwrap();
        assert_eq!(accounts.status(7), crate::Status::Active);
        assert!(matches!(
            set_key(&conn, 99_999, None),
            Err(DataError::NotFound(99_999))
        ));
        let mut out = Vec::new();
        list(&conn, &mut out, Listed::line).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("\n7\taccount-7\tactive\tno-key\n")
        );
    }
}
