//! The sync loop: watches `PRAGMA data_version` and applies changed rows to the index, so
//! activating or deactivating an account takes effect within a poll interval, no restart.
//!
//! SQLite bumps `data_version` whenever another connection commits, which makes the idle
//! poll a cheap pragma instead of a query over the table.
//!
//! It also watches the file itself. An open connection keeps reading a deleted or replaced
//! file, so without this check ingest would serve a database nothing can change any more while
//! the tools write to a new file at the same path. So each pass compares the (device, inode)
//! at the path with the one that was opened; on a difference it says so once, keeps the index
//! as it is, and when an accounts database is back at the path it reloads the index from it
//! in full.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::{Accounts, DataError, Result, schema::open_existing};

/// A running sync thread; stops when dropped or [`SyncThread::stop`]ped.
pub struct SyncThread {
    stop: Arc<AtomicBool>,
    accounts: Arc<Accounts>,
    thread: Option<JoinHandle<()>>,
}

impl SyncThread {
    /// Starts polling `path` every `interval` on its own connection and thread. `path` must
    /// already be an accounts database: the sync never creates one.
    pub fn start(path: PathBuf, accounts: Arc<Accounts>, interval: Duration) -> Result<SyncThread> {
        let source = Source::open(&path)?;
        accounts.set_file_ok(true);
        let mut watcher = Watcher {
            path,
            accounts: accounts.clone(),
            source: Some(source),
            seen: None,
            incident: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("accounts-sync".into())
            .spawn(move || watcher.run(interval, &stopping))
            .map_err(DataError::Thread)?;
        Ok(SyncThread {
            stop,
            accounts,
            thread: Some(thread),
        })
    }

    /// Whether the file at the path is still the database being followed; see
    /// [`Accounts::file_ok`].
    pub fn file_ok(&self) -> bool {
        self.accounts.file_ok()
    }

    /// Stops the thread and waits for it, so no pass runs after shutdown.
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

impl Drop for SyncThread {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Which file a path names. A file created again at the same path gets another one, even
/// with the same name and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// The file at `path`, or `None` when there is none.
fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// The database being followed and the file it was opened from.
struct Source {
    conn: Connection,
    file: FileId,
}

impl Source {
    /// Opens the accounts database at `path`, never creating one. The file is identified
    /// before it is opened: if it is replaced in between, the next pass sees a difference and
    /// reopens, whereas identifying it after could pair the old connection with the new file.
    fn open(path: &Path) -> Result<Source> {
        let Ok(Some(file)) = file_id(path) else {
            return Err(DataError::Missing(path.to_owned()));
        };
        let conn = open_existing(path)?;
        Ok(Source { conn, file })
    }

    /// Closes the connection to a file no longer at the path, first emptying the `-wal` file
    /// it shares with that path. SQLite does not checkpoint on closing a moved database, and a
    /// stale `-wal` left beside the path would be replayed into whatever database is put
    /// there next, showing (and writing) the old file's pages in it. The checkpoint works on
    /// the connection's open files, so it never touches a new database's own files.
    fn retire(self) {
        // Readers in other processes can hold the checkpoint up; do not wait long for them.
        let _ = self.conn.busy_timeout(Duration::from_millis(500));
        let emptied = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        if !matches!(emptied, Ok(0)) {
            tracing::warn!(
                ?emptied,
                "could not empty the old database's -wal file; a database put at the same path may show stale pages until every process using the old one has closed it"
            );
        }
    }
}

/// The time from finding the file gone or replaced until a database is reloaded.
#[derive(Default)]
struct Incident {
    /// Why the file now at the path could not be used on the last pass.
    refused: Option<String>,
    /// Whether a refusal was logged: once per incident, and only when the same reason is seen
    /// on two passes in a row, so a database caught while it is being created stays quiet.
    refusal_logged: bool,
}

/// The sync thread's state.
struct Watcher {
    path: PathBuf,
    accounts: Arc<Accounts>,
    /// `None` during an incident: the old connection is closed as soon as the file is found
    /// gone, which lets SQLite remove its `-wal` and `-shm` files before a new database is
    /// created beside them.
    source: Option<Source>,
    /// `data_version` at the last sync.
    seen: Option<i64>,
    incident: Option<Incident>,
}

impl Watcher {
    fn run(&mut self, interval: Duration, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            self.pass();
            std::thread::sleep(interval);
        }
    }

    fn pass(&mut self) {
        let now = file_id(&self.path);
        let in_place = match (&self.source, &now) {
            (Some(source), Ok(Some(file))) => source.file == *file,
            _ => false,
        };
        if in_place {
            self.sync();
        } else {
            self.lost(&now);
        }
    }

    /// Applies what changed since the last pass, if anything did.
    fn sync(&mut self) {
        let Some(source) = &self.source else { return };
        let now = data_version(&source.conn);
        if now == self.seen {
            return;
        }
        match self.accounts.apply_changes(&source.conn) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    changes = n,
                    version = self.accounts.version(),
                    "accounts synced"
                )
            }
            Err(err) => tracing::warn!(%err, "accounts sync failed; will retry"),
        }
        self.seen = now;
    }

    /// The file at the path is not the one being followed.
    fn lost(&mut self, now: &std::io::Result<Option<FileId>>) {
        if self.incident.is_none() {
            self.begin_incident(now);
        }
        if let Ok(Some(_)) = now {
            self.reload();
        }
    }

    fn begin_incident(&mut self, now: &std::io::Result<Option<FileId>>) {
        if let Some(source) = self.source.take() {
            source.retire();
        }
        self.seen = None;
        self.accounts.set_file_ok(false);
        self.incident = Some(Incident::default());
        let what = match now {
            Ok(None) => "was deleted".to_owned(),
            Ok(Some(_)) => "was replaced by another file".to_owned(),
            Err(err) => format!("cannot be checked ({err})"),
        };
        tracing::error!(
            "the accounts database {} {what}: ingest keeps serving the {} accounts it has in memory, but sees no account changes until an accounts database is back at that path",
            self.path.display(),
            self.accounts.len()
        );
    }

    /// Follows the database now at the path, replacing the whole index with its accounts.
    fn reload(&mut self) {
        let reloaded = Source::open(&self.path)
            .and_then(|source| Ok((self.accounts.reload(&source.conn)?, source)));
        match reloaded {
            Ok((count, source)) => {
                self.source = Some(source);
                self.incident = None;
                self.accounts.set_file_ok(true);
                tracing::info!(
                    "an accounts database is back at {}: reloaded it in full ({count} accounts) and follows its changes again",
                    self.path.display()
                );
            }
            Err(err) => self.refused(err.to_string()),
        }
    }

    fn refused(&mut self, reason: String) {
        let Some(incident) = &mut self.incident else {
            return;
        };
        if incident.refused.as_deref() == Some(reason.as_str()) && !incident.refusal_logged {
            tracing::warn!("cannot reload the accounts yet: {reason}");
            incident.refusal_logged = true;
        }
        incident.refused = Some(reason);
    }
}

fn data_version(conn: &Connection) -> Option<i64> {
    conn.pragma_query_value(None, "data_version", |row| row.get(0))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use crate::schema::{open, open_seeded};
    use std::time::Instant;

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn started(path: &Path) -> (Arc<Accounts>, SyncThread) {
        let (conn, _) = open(path).unwrap();
        let accounts = Arc::new(Accounts::default());
        accounts.load(&conn).unwrap();
        let sync = SyncThread::start(path.to_owned(), accounts.clone(), Duration::from_millis(20))
            .unwrap();
        (accounts, sync)
    }

    #[test]
    fn another_connections_write_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (accounts, sync) = started(&path);
        let (writer, _) = open(&path).unwrap();
        writer
            .execute("UPDATE accounts SET is_active = 0 WHERE account_id = 7", [])
            .unwrap();
        wait_until("the change was never applied", || {
            accounts.status(7) == Status::Inactive
        });
        assert!(sync.file_ok());
        sync.stop();
    }

    #[test]
    fn a_deleted_file_keeps_the_index_and_a_new_one_is_reloaded_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (accounts, sync) = started(&path);
        std::fs::remove_file(&path).unwrap();
        wait_until("the deletion was never noticed", || !sync.file_ok());
        assert_eq!(accounts.len(), 1000, "the index is kept");
        assert_eq!(accounts.status(500), Status::Inactive);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!path.exists(), "nothing was created at the path");

        let (conn, created) = open_seeded(&path, 10).unwrap();
        assert!(created);
        wait_until("the new database was never reloaded", || sync.file_ok());
        assert_eq!(accounts.len(), 10);
        assert_eq!(accounts.status(500), Status::Unknown);
        assert_eq!(accounts.status(5), Status::Active);
        conn.execute("UPDATE accounts SET is_active = 0 WHERE account_id = 5", [])
            .unwrap();
        wait_until("changes to the new database are followed", || {
            accounts.status(5) == Status::Inactive
        });
        sync.stop();
    }

    #[test]
    fn a_file_replaced_by_rename_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (accounts, sync) = started(&path);
        let other = dir.path().join("b.db");
        drop(open_seeded(&other, 3).unwrap());
        // The old file's -wal (all 1,000 seeded rows) is still beside the path, and SQLite
        // would replay it into the new file unless the sync empties it first.
        assert!(dir.path().join("a.db-wal").metadata().unwrap().len() > 0);
        std::fs::rename(&other, &path).unwrap();
        // The index is swapped before the file is marked good again: wait for both.
        wait_until("the replacement was never reloaded", || {
            accounts.len() == 3 && sync.file_ok()
        });
        assert_eq!(accounts.status(4), Status::Unknown);
        let count: i64 = open_existing(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3, "the new file shows its own rows only");
        sync.stop();
    }

    #[test]
    fn a_file_that_is_not_an_accounts_database_is_not_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let (accounts, sync) = started(&path);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        wait_until("the replacement was never noticed", || !sync.file_ok());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!sync.file_ok());
        assert_eq!(accounts.len(), 1000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left alone");
        sync.stop();
    }

    #[test]
    fn start_refuses_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let started = SyncThread::start(
            path.clone(),
            Arc::new(Accounts::default()),
            Duration::from_millis(20),
        );
        assert!(matches!(started, Err(DataError::Missing(_))));
        assert!(!path.exists());
    }
}
