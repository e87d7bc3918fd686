//! The idle watcher's check that its consumer is not stuck behind the stream.
//!
//! A watcher's consumer is R1, and the server places it on any one of the stream's
//! replicas, where it reads that replica's copy of the stream. A replica that has fallen
//! behind (catching up after a restart, or stalled doing so) keeps the consumer alive,
//! heartbeats and all, while it hands out nothing the replica lacks: nothing looks wrong,
//! and the events never come. So when a consumer has handed out nothing for [`IDLE`], the
//! stream leader is asked whether it holds a message on the consumer's subjects after the
//! last sequence the consumer handed out. One found twice, an [`IDLE`] apart with nothing
//! handed out in between, means the consumer is stuck; it is then made again from the
//! watcher's position, which the server may place on another replica.
//!
//! Idle on an idle stream, the check is one stream-info request per [`IDLE`]. Only when the
//! stream has moved past the consumer is the leader asked for the next message on each
//! filter subject (at most [`super::Layout::max_filter_subjects`] of them).

use std::time::Duration;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};

/// How long a consumer may hand out nothing before the stream leader is asked whether it
/// holds anything for it.
pub(crate) const IDLE: Duration = Duration::from_secs(5);

/// What one look at the stream leader means for a consumer that handed out nothing since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The leader holds nothing for the consumer: it is idle because the stream is.
    Idle,
    /// The leader holds this sequence for the consumer; it may still be on its way.
    Suspect(u64),
    /// The leader held this sequence for the consumer an [`IDLE`] ago and the consumer has
    /// not handed it out: it is stuck.
    Stuck(u64),
}

/// An idle consumer's watch: the message the last look found and the consumer had not
/// handed out.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    suspect: Option<u64>,
}

impl Watchdog {
    /// The consumer handed something out: whatever was suspected may have been it.
    pub(crate) fn handed_out(&mut self) {
        self.suspect = None;
    }

    /// Takes the first sequence the leader holds for the consumer after what it handed
    /// out (`None`: nothing), found an [`IDLE`] after the previous look.
    pub(crate) fn judge(&mut self, found: Option<u64>) -> Verdict {
        let verdict = match (self.suspect, found) {
            (_, None) => Verdict::Idle,
            (Some(suspect), Some(seq)) if seq <= suspect => Verdict::Stuck(seq),
            (_, Some(seq)) => Verdict::Suspect(seq),
        };
        self.suspect = match verdict {
            Verdict::Suspect(seq) => Some(seq),
            Verdict::Idle | Verdict::Stuck(_) => None,
        };
        verdict
    }
}

/// The first sequence after `after` the stream leader holds on any of `subjects`, if any.
/// Asks the leader only: stream info as the leader has it (a replica that knows no leader
/// answers with its own, maybe shorter, copy), then (when the stream holds anything past
/// `after`) the next message on each subject, which `$JS.API.STREAM.MSG.GET` serves from
/// the leader alone, never from a replica that may be behind.
pub(crate) async fn first_after(
    stream: &Stream,
    subjects: &[String],
    after: u64,
) -> Result<Option<u64>, String> {
    let info = super::stream::leader_info(stream)
        .await
        .map_err(|err| err.to_string())?;
    if info.state.last_sequence <= after {
        return Ok(None);
    }
    let mut first: Option<u64> = None;
    for subject in subjects {
        match stream
            .get_first_raw_message_by_subject(subject, after + 1)
            .await
        {
            Ok(message) if message.sequence > after => {
                first = Some(first.map_or(message.sequence, |f| f.min(message.sequence)));
            }
            Ok(_) => {}
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(err) => return Err(format!("next message on {subject}: {err}")),
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_seen_twice_without_delivery_is_stuck() {
        let mut dog = Watchdog::default();
        assert_eq!(dog.judge(Some(41)), Verdict::Suspect(41));
        assert_eq!(dog.judge(Some(41)), Verdict::Stuck(41));
        // Once judged stuck the consumer is made again: the next look starts afresh.
        assert_eq!(dog.judge(Some(41)), Verdict::Suspect(41));
    }

    #[test]
    fn an_idle_stream_is_never_stuck() {
        let mut dog = Watchdog::default();
        for _ in 0..5 {
            assert_eq!(dog.judge(None), Verdict::Idle);
        }
        assert_eq!(dog.judge(Some(7)), Verdict::Suspect(7));
        assert_eq!(dog.judge(None), Verdict::Idle, "evicted meanwhile");
        assert_eq!(dog.judge(Some(9)), Verdict::Suspect(9));
    }

    #[test]
    fn a_delivery_clears_the_suspicion() {
        let mut dog = Watchdog::default();
        assert_eq!(dog.judge(Some(41)), Verdict::Suspect(41));
        dog.handed_out();
        assert_eq!(dog.judge(Some(50)), Verdict::Suspect(50));
    }

    #[test]
    fn a_later_message_is_only_a_new_suspect() {
        // The suspect was evicted and a newer one arrived: it has had no time to come yet.
        let mut dog = Watchdog::default();
        assert_eq!(dog.judge(Some(41)), Verdict::Suspect(41));
        assert_eq!(dog.judge(Some(45)), Verdict::Suspect(45));
        assert_eq!(dog.judge(Some(45)), Verdict::Stuck(45));
    }
}
