//! The state file: what busd's previous run on this path left behind.
//!
//! Sequence numbers restart with every busd process, so a client coming back after a restart
//! can only conclude "nothing was missed" if it saw the `Goodbye` of the run that *directly*
//! preceded the new one. A client that was away across two restarts saw an older `Goodbye`
//! and would otherwise claim too much. So each run records itself here: `running <epoch>`
//! while it serves, `ended <epoch> <last_seq>` after a graceful shutdown. The next run reads
//! the record and names the run it follows in every `Welcome`; a crash leaves `running`,
//! which names nothing, and clients report a gap of unknown size.
//!
//! Writes go to a temporary file renamed over the old one, so a crash mid-write leaves the
//! old record or the new one, never a torn one.

use std::io;
use std::path::{Path, PathBuf};

use protocol::Position;
use tracing::warn;

/// This run's record on disk.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Reads the previous run's record and replaces it with `running <epoch>`. Returns the
    /// run this one follows, if it ended gracefully. A path that cannot be written is
    /// reported and then ignored: busd serves without a chain (clients see gaps on restart).
    pub fn start(path: &Path, epoch: u64) -> (Option<Position>, Option<StateFile>) {
        let follows = match std::fs::read_to_string(path) {
            Ok(text) => parse(&text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                warn!(path = %path.display(), %err, "cannot read the state file");
                None
            }
        };
        let file = StateFile {
            path: path.to_owned(),
        };
        match file.write(&format!("running {epoch}\n")) {
            Ok(()) => (follows, Some(file)),
            Err(err) => {
                warn!(
                    path = %path.display(),
                    %err,
                    "cannot write the state file; clients will report a gap after every restart"
                );
                (follows, None)
            }
        }
    }

    /// Records a graceful end: every subscriber has been sent everything up to `last_seq`.
    pub fn finish(&self, epoch: u64, last_seq: u64) {
        if let Err(err) = self.write(&format!("ended {epoch} {last_seq}\n")) {
            warn!(path = %self.path.display(), %err, "cannot record the shutdown in the state file");
        }
    }

    fn write(&self, text: &str) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// `ended <epoch> <last_seq>` names a run to follow; anything else (a crashed `running`
/// run, garbage) names none.
fn parse(text: &str) -> Option<Position> {
    let mut words = text.split_whitespace();
    if words.next()? != "ended" {
        return None;
    }
    let epoch = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    words.next().is_none().then_some(Position { epoch, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graceful_end_is_followed_and_a_crash_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busd.state");
        let (follows, first) = StateFile::start(&path, 10);
        assert_eq!(follows, None, "nothing before the first run");
        first.unwrap().finish(10, 42);
        let (follows, second) = StateFile::start(&path, 20);
        assert_eq!(follows, Some(Position { epoch: 10, seq: 42 }));
        drop(second); // a crash: no finish
        let (follows, _) = StateFile::start(&path, 30);
        assert_eq!(follows, None, "run 20 crashed, so run 30 follows nothing");
    }

    #[test]
    fn garbage_names_nothing() {
        for text in [
            "",
            "ended",
            "ended 1",
            "ended x 2",
            "ended 1 2 3",
            "running 5",
            "ENDED 1 2",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
        assert_eq!(parse("ended 1 2\n"), Some(Position { epoch: 1, seq: 2 }));
    }

    #[test]
    fn an_unwritable_path_serves_without_a_chain() {
        let (follows, file) = StateFile::start(Path::new("/nonexistent-dir/busd.state"), 1);
        assert_eq!(follows, None);
        assert!(file.is_none());
    }
}
