//! The accounts store: SQLite (or PostgreSQL, see [`postgres`]) is the source of truth, [`Accounts`] the in-memory index that
//! ingest checks on every request, and [`sync`] the loop that keeps the two in step.
//!
//! `version` grows on every change (triggers maintain it, so a write from any tool counts),
//! which lets a sync pass read only the rows changed since the last one.

use std::path::PathBuf;

pub mod admin;
pub mod index;
pub mod key;
pub mod postgres;
pub mod schema;
pub mod sync;

pub use index::{Account, Accounts, Status};
/// Re-exported so callers can hold what [`open`] returns without depending on rusqlite.
pub use rusqlite::Connection;
pub use schema::{open, open_existing};

/// What can go wrong with the accounts database.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Raised instead of creating a file, so a mistyped `--db` never yields a second,
    /// freshly seeded database that nothing else reads.
    #[error(
        "{p} does not exist (nothing was created); to create it, start ingest with --db {p} or run `ingest accounts seed --count N --db {p}`",
        p = .0.display()
    )]
    Missing(PathBuf),
    /// The file opens as SQLite but holds no accounts table: probably the wrong file.
    #[error(
        "{p} is not an accounts database (it has no accounts table); to set it up, start ingest with --db {p} or run `ingest accounts seed --count N --db {p}`",
        p = .0.display()
    )]
    NotAccounts(PathBuf),
    /// The file is not SQLite at all; SQLite itself only says "file is not a database".
    #[error("{} is not an SQLite database", .0.display())]
    NotSqlite(PathBuf),
    #[error("account {0} does not exist")]
    NotFound(u64),
    #[error("account {0} already exists")]
    Exists(u64),
    #[error("account id {0} is out of range (at most {max})", max = i64::MAX)]
    IdOutOfRange(u64),
    #[error("cannot start the sync thread: {0}")]
    Thread(std::io::Error),
    /// Anything PostgreSQL or the connection to it reports, with its causes (the server's own
    /// message, an operating system error) in the message itself. Not chained as a source as
    /// well, which would print each of them twice.
    #[error("PostgreSQL: {}", with_causes(.0))]
    Postgres(tokio_postgres::Error),
    /// A `--db` that starts like a PostgreSQL URL but does not parse as one.
    #[error(
        "{0:?} is not a usable PostgreSQL URL ({1}); expected postgres://user@host:port/dbname"
    )]
    PostgresUrl(String, String),
    /// The PostgreSQL database has no accounts table, and the command asked must not create
    /// one: the URL probably names the wrong database.
    #[error(
        "{0} has no accounts table (nothing was created); to create it, start ingest with --db on it or run `ingest accounts seed --count N`"
    )]
    NoTable(String),
    /// The accounts table exists in PostgreSQL with a shape ingest cannot use; it is left
    /// alone rather than altered, since another program may rely on it as it is.
    #[error(
        "the accounts table in {db} is not the one ingest uses: {differences}; expected accounts(account_id BIGINT PRIMARY KEY, account_name TEXT NOT NULL, is_active BOOLEAN NOT NULL, version BIGINT NOT NULL, key_hash BYTEA)"
    )]
    Shape { db: String, differences: String },
    /// A statement PostgreSQL did not answer in time: the server or the network is stuck.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl From<tokio_postgres::Error> for DataError {
    fn from(err: tokio_postgres::Error) -> DataError {
        DataError::Postgres(err)
    }
}

/// An error and every cause under it, `: `-separated.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
