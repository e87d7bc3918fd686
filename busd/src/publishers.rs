//! Live publisher names: one process per name at a time.
//!
//! busd drops a batch whose id is not above the last one from the same publisher, so two
//! processes sharing a name (two ingest with one `--origin`) would have each other's batches
//! taken for duplicates and silently dropped. Like an MQTT broker with client ids, busd keeps
//! one live connection per name: a second *process* (another `instance`) is refused with
//! `NameInUse` while the first is connected, and a reconnection of the *same* process takes
//! over its old connection, which may be a half-open socket busd has not noticed is dead.

use std::sync::Mutex;

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

/// The names of the publishers connected now.
#[derive(Default)]
pub struct Publishers {
    live: Mutex<FxHashMap<String, Live>>,
}

struct Live {
    instance: u64,
    connection: u64,
    replaced: CancellationToken,
}

/// Another live process holds the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("publisher name is in use by another live connection")]
pub struct NameInUse;

/// A connection's hold on its name, given up when dropped.
pub struct Claim<'a> {
    publishers: &'a Publishers,
    name: String,
    connection: u64,
    /// Cancelled when a newer connection of the same process takes the name over.
    pub replaced: CancellationToken,
}

impl Publishers {
    /// Whether a connection holds `name` now.
    pub fn is_live(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Claims `name` for `connection` of process `instance`; an empty name claims nothing
    /// (it also opts out of duplicate detection).
    pub fn claim(
        &self,
        name: &str,
        instance: u64,
        connection: u64,
    ) -> Result<Claim<'_>, NameInUse> {
        let replaced = CancellationToken::new();
        if !name.is_empty() {
            let mut live = self.lock();
            if let Some(old) = live.get(name) {
                if old.instance != instance {
                    return Err(NameInUse);
                }
                old.replaced.cancel();
            }
            let entry = Live {
                instance,
                connection,
                replaced: replaced.clone(),
            };
            live.insert(name.to_owned(), entry);
        }
        Ok(Claim {
            publishers: self,
            name: name.to_owned(),
            connection,
            replaced,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<String, Live>> {
        // Each update is a single insert or remove: a panic cannot leave it half done.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Claim<'_> {
    /// The claimed name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut live = self.publishers.lock();
        if live
            .get(&self.name)
            .is_some_and(|l| l.connection == self.connection)
        {
            live.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_process_is_refused_while_the_name_is_live() {
        let publishers = Publishers::default();
        let first = publishers.claim("ingest-1", 7, 1).unwrap();
        assert!(publishers.claim("ingest-1", 8, 2).is_err());
        assert!(publishers.claim("ingest-2", 8, 3).is_ok());
        drop(first);
        assert!(publishers.claim("ingest-1", 8, 4).is_ok());
    }

    #[test]
    fn the_same_process_takes_over_its_old_connection() {
        let publishers = Publishers::default();
        let old = publishers.claim("ingest-1", 7, 1).unwrap();
        let new = publishers.claim("ingest-1", 7, 2).unwrap();
        assert!(old.replaced.is_cancelled());
        assert!(!new.replaced.is_cancelled());
        drop(old); // the old connection ending must not release the new one's name
        assert!(publishers.claim("ingest-1", 9, 3).is_err());
        drop(new);
        assert!(publishers.claim("ingest-1", 9, 4).is_ok());
    }

    #[test]
    fn an_empty_name_claims_nothing() {
        let publishers = Publishers::default();
        let _a = publishers.claim("", 1, 1).unwrap();
        assert!(publishers.claim("", 2, 2).is_ok());
    }
}
