//! The reconnect loop's bookkeeping, written once for the [`Publisher`](crate::publisher) and
//! the [`Subscriber`](crate::subscriber): how long to wait before the next attempt, how long
//! the bus has been gone, and when a caller's `--max-outage` says to stop trying.

use std::time::Duration;

use plumbing::backoff::Backoff;
use tokio::time::Instant;

/// The bus stayed unreachable for longer than the caller allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the bus was unreachable for {}s", .down.as_secs())]
pub struct Outage {
    /// How long it had been gone when the caller gave up.
    pub down: Duration,
}

/// The state between connections: the backoff, since when the bus is gone, how many times it
/// came back.
#[derive(Debug)]
pub struct Reconnect {
    backoff: Backoff,
    max_outage: Option<Duration>,
    down_since: Option<Instant>,
    connected_before: bool,
    reconnects: u64,
}

/// What the loop says before sleeping: enough for a status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Attempts since the bus was last reachable.
    pub attempt: u32,
    /// How long the bus has been gone.
    pub down: Duration,
    /// Why the last attempt or connection failed.
    pub reason: String,
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reconnecting (attempt {}, down {}s): {}",
            self.attempt,
            self.down.as_secs(),
            self.reason
        )
    }
}

impl Reconnect {
    /// Waits grow from `backoff`'s base to its cap; with `max_outage`, [`Reconnect::retry`]
    /// gives up once the bus has been gone that long.
    pub fn new(backoff: Backoff, max_outage: Option<Duration>) -> Self {
        Reconnect {
            backoff,
            max_outage,
            down_since: None,
            connected_before: false,
            reconnects: 0,
        }
    }

    /// A connection was opened: the outage (if any) is over.
    pub fn connected(&mut self) {
        if self.connected_before {
            self.reconnects += 1;
        }
        self.connected_before = true;
        self.down_since = None;
    }

    /// The connection did useful work: the next outage starts from the shortest wait. Kept
    /// apart from [`Reconnect::connected`] so a bus that accepts connections and then drops
    /// them at once is not hammered.
    pub fn progressed(&mut self) {
        self.backoff.reset();
    }

    /// Times the bus came back after being lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// After a failed attempt or a lost connection (`reason`): the retry to announce and the
    /// wait before it, or the [`Outage`] that ends the loop.
    pub fn retry(&mut self, reason: String) -> Result<(Retry, Duration), Outage> {
        let down = self.down_since.get_or_insert_with(Instant::now).elapsed();
        let mut delay = self.backoff.next_delay();
        if let Some(max) = self.max_outage {
            if down >= max {
                return Err(Outage { down });
            }
            delay = delay.min(max - down);
        }
        let retry = Retry {
            attempt: self.backoff.attempt(),
            down,
            reason,
        };
        Ok((retry, delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(4))
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_only_after_max_outage_and_never_sleeps_past_it() {
        let mut reconnect = Reconnect::new(
            Backoff::new(Duration::from_secs(10), Duration::from_secs(10)),
            Some(Duration::from_secs(3)),
        );
        let (retry, delay) = reconnect.retry("refused".into()).unwrap();
        assert_eq!((retry.attempt, retry.down), (1, Duration::ZERO));
        assert!(delay <= Duration::from_secs(3), "{delay:?}");
        tokio::time::advance(Duration::from_secs(3)).await;
        let outage = reconnect.retry("refused".into()).unwrap_err();
        assert_eq!(outage.down, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_ends_the_outage_and_counts_as_a_reconnect() {
        let mut reconnect = Reconnect::new(fast(), Some(Duration::from_secs(1)));
        reconnect.connected();
        assert_eq!(
            reconnect.reconnects(),
            0,
            "the first connection is not a reconnect"
        );
        reconnect.retry("lost".into()).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        reconnect.connected();
        assert_eq!(reconnect.reconnects(), 1);
        assert!(reconnect.retry("lost".into()).is_ok(), "a new outage");
    }

    #[test]
    fn attempts_grow_until_progress() {
        let mut reconnect = Reconnect::new(fast(), None);
        for _ in 0..3 {
            reconnect.retry("x".into()).unwrap();
        }
        reconnect.connected();
        let (retry, _) = reconnect.retry("x".into()).unwrap();
        assert_eq!(
            retry.attempt, 4,
            "connecting alone does not reset the backoff"
        );
        reconnect.progressed();
        let (retry, _) = reconnect.retry("x".into()).unwrap();
        assert_eq!(retry.attempt, 1);
    }
}
