//! The sync loop: watches `PRAGMA data_version` and applies changed rows to the index, so
//! activating or deactivating an account takes effect within a poll interval, no restart.
//!
//! SQLite bumps `data_version` whenever another connection commits, which makes the idle
//! poll a cheap pragma instead of a query over the table.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::{Accounts, Result};

/// A running sync thread; stops when dropped or [`Sync::stop`]ped.
pub struct Sync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sync {
    /// Starts polling `path` every `interval` on its own connection and thread.
    pub fn start(path: PathBuf, accounts: Arc<Accounts>, interval: Duration) -> Result<Sync> {
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("accounts-sync".into())
            .spawn(move || run(&conn, &accounts, interval, &stopping))
            .map_err(crate::DataError::Thread)?;
        Ok(Sync {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        self.halt();
    }
}

fn data_version(conn: &Connection) -> Option<i64> {
    conn.pragma_query_value(None, "data_version", |row| row.get(0))
        .ok()
}

fn run(conn: &Connection, accounts: &Accounts, interval: Duration, stop: &AtomicBool) {
    let mut seen = None;
    while !stop.load(Ordering::Acquire) {
        let now = data_version(conn);
        if now != seen {
            match accounts.apply_changes(conn) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(changes = n, version = accounts.version(), "accounts synced")
                }
                Err(err) => tracing::warn!(%err, "accounts sync failed; will retry"),
            }
            seen = now;
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Status, schema::open};
    use std::time::Instant;

    #[test]
    fn another_connections_write_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (conn, _) = open(&path).unwrap();
        let accounts = Arc::new(Accounts::default());
        accounts.load(&conn).unwrap();
        let sync = Sync::start(path.clone(), accounts.clone(), Duration::from_millis(20)).unwrap();
        let (writer, _) = open(&path).unwrap();
        writer
            .execute("UPDATE accounts SET is_active = 0 WHERE account_id = 7", [])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while accounts.status(7) != Status::Inactive {
            assert!(Instant::now() < deadline, "the change was never applied");
            std::thread::sleep(Duration::from_millis(10));
        }
        sync.stop();
    }
}
