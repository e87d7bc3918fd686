//! A pull consumer's messages, with async-nats' missed-heartbeat check made to mean a silent
//! server and nothing else.
//!
//! The server sends a heartbeat every [`HEARTBEAT`] while it has nothing; async-nats reports
//! `MissingHeartbeat` when two go missing. But it arms that timer only when polled, and a
//! poll that takes in a heartbeat leaves it unarmed: a reader that waits on one poll does
//! not notice a server that froze right after a heartbeat. And it checks the timer before
//! reading what has arrived: a reader that stopped polling for a while (its output blocked
//! by a paused pager) gets the error with heartbeats and messages waiting. So the watcher
//! and the group member read through [`Messages`], which polls afresh every heartbeat and
//! skips the error the first poll after an absence finds.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{MessagesErrorKind, Stream};
use futures::{FutureExt, StreamExt};

/// The server sends a heartbeat this often while it has nothing; two missed and the
/// consumer is taken for dead.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// One of the consumer's messages, or why there is none.
pub(crate) type Delivered = <Stream as futures::Stream>::Item;

/// A consumer's messages, and when the reader last stopped polling them.
pub(crate) struct Messages {
    stream: Stream,
    /// Set when a batch has been taken and the reader goes off to hand it out.
    away_since: Option<Instant>,
}

impl Messages {
    /// Wraps the messages of a consumer pulled with heartbeats every [`HEARTBEAT`] (see
    /// `subscriber::pull`, the one place that makes them).
    pub(crate) fn new(stream: Stream) -> Messages {
        Messages {
            stream,
            away_since: None,
        }
    }

    /// The next message, `None` when none came `within` (a `Some(None)` is the end of the
    /// consumer). Cancel-safe.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Option<Delivered>> {
        if let Some(since) = self.away_since.take() {
            match self.stream.next().now_or_never() {
                Some(item) if !stale(&item, since.elapsed()) => return Some(item),
                _ => {}
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(item) = tokio::time::timeout(HEARTBEAT.min(left), self.stream.next()).await {
                return Some(item);
            }
        }
    }

    /// The next message, however long it takes (a silent server ends it with an error).
    pub(crate) async fn next(&mut self) -> Option<Delivered> {
        loop {
            if let Some(item) = self.next_within(HEARTBEAT).await {
                return item;
            }
        }
    }

    /// `first` and every message already there, up to `max` in all, ending at the first
    /// error or the consumer's end; the reader then goes off to hand them out.
    pub(crate) fn batch(&mut self, first: Option<Delivered>, max: usize) -> Vec<Option<Delivered>> {
        let mut batch = vec![first];
        while batch.len() < max && matches!(batch.last(), Some(Some(Ok(_)))) {
            match self.stream.next().now_or_never() {
                Some(item) => batch.push(item),
                None => break,
            }
        }
        self.away_since = Some(Instant::now());
        batch
    }
}

/// Whether `item`, found by the first poll after the reader was `away`, is a
/// missed-heartbeat error that proves nothing: the timer ran while nobody read, for at
/// least one heartbeat of its two. async-nats arms it afresh, so a server that is really
/// gone is noticed two heartbeats later.
fn stale(item: &Option<Delivered>, away: Duration) -> bool {
    let missed =
        matches!(item, Some(Err(err)) if err.kind() == MessagesErrorKind::MissingHeartbeat);
    missed && away >= HEARTBEAT
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::consumer::pull::MessagesError;

    #[test]
    fn a_missed_heartbeat_is_stale_only_after_being_away_a_heartbeat() {
        let missed = Some(Err(MessagesError::new(MessagesErrorKind::MissingHeartbeat)));
        assert!(stale(&missed, HEARTBEAT));
        assert!(
            !stale(&missed, HEARTBEAT / 2),
            "polled for most of the window"
        );
        let other = Some(Err(MessagesError::new(MessagesErrorKind::ConsumerDeleted)));
        assert!(!stale(&other, 10 * HEARTBEAT), "only the heartbeat check");
        assert!(!stale(&None, 10 * HEARTBEAT));
    }
}
