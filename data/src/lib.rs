//! The accounts store: SQLite is the source of truth, [`Accounts`] the in-memory index that
//! ingest checks on every request, and [`sync`] the loop that keeps the two in step.
//!
//! `version` grows on every change (triggers maintain it, so a write from any tool counts),
//! which lets a sync pass read only the rows changed since the last one.

pub mod admin;
pub mod index;
pub mod schema;
pub mod sync;

pub use index::{Accounts, Status};
pub use schema::open;

/// What can go wrong with the accounts database.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("account {0} does not exist")]
    NotFound(u64),
    #[error("account {0} already exists")]
    Exists(u64),
    #[error("account id {0} is out of range (at most {max})", max = i64::MAX)]
    IdOutOfRange(u64),
    #[error("cannot start the sync thread: {0}")]
    Thread(std::io::Error),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
