//! busd's settings, as plain data so the binary and an embedding `ingest` fill them alike.

use std::path::PathBuf;
use std::time::Duration;

use crate::queue::WhenFull;

/// What busd does with a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowPolicy {
    /// Drop its oldest queued events and tell it with a `Gap` frame.
    DropOldest,
    /// Close its connection with a `SlowConsumer` error; it can resume from the ring.
    Disconnect,
}

impl SlowPolicy {
    /// What the queue does when this policy meets a full queue.
    pub fn when_full(self) -> WhenFull {
        match self {
            SlowPolicy::DropOldest => WhenFull::DropOldest,
            SlowPolicy::Disconnect => WhenFull::Refuse,
        }
    }
}

/// Every setting of a busd, as its flags give them (or an embedding ingest's defaults).
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared secret every client must present in `Hello`; `None` lets anyone in.
    pub token: Option<String>,
    /// Events a subscriber's queue holds before the slow policy applies.
    pub queue_events: usize,
    /// Byte budget of the replay ring.
    pub replay_bytes: usize,
    /// What happens to a subscriber whose queue is full.
    pub slow_policy: SlowPolicy,
    /// Most subscribers, and with them connections still in their handshake; publishers
    /// have their own [`Config::max_publishers`] slots on top, so idle subscribers can never
    /// lock out a reconnecting publisher.
    pub max_connections: usize,
    /// Most publishers connected at once, counted apart from [`Config::max_connections`].
    pub max_publishers: usize,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
    /// Most account ids one `Subscribe` may name.
    pub max_filter: usize,
    /// How long a new connection has to send `Hello`.
    pub hello_timeout: Duration,
    /// How long a frame may take to arrive once its first byte has (or, for a frame that
    /// waited for [`Config::read_budget`], once its budget was granted), so that a peer
    /// cannot hold a partly received frame, and its memory, for as long as it likes.
    pub frame_timeout: Duration,
    /// Bytes that partly received frames may take across all connections; a connection
    /// whose frame does not fit waits, unread, until budget frees. Raised to `max_frame`
    /// if lower, so that any frame allowed can be received.
    pub read_budget: usize,
    /// A subscriber that has been sent nothing for this long gets a `Heartbeat`.
    pub heartbeat: Duration,
    /// How long shutdown waits for queues to flush before closing anyway.
    pub drain_timeout: Duration,
    /// Where this run records itself for the next (see [`crate::state`]); `None` keeps no
    /// record, and clients then report a gap of unknown size after every restart.
    pub state_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            queue_events: 65_536,
            replay_bytes: 64 << 20,
            slow_policy: SlowPolicy::DropOldest,
            max_connections: 10_000,
            max_publishers: 1_000,
            max_frame: protocol::DEFAULT_MAX_FRAME,
            max_filter: 100_000,
            hello_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            read_budget: 256 << 20,
            heartbeat: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            state_file: None,
        }
    }
}
