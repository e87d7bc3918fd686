//! The frames of the protocol, in both directions.
//!
//! Variant order is part of the wire format (postcard encodes the variant index): new variants
//! go at the end, and `Hello` stays first with `version` as its first field so that any future
//! peer can still be told which version it speaks.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One tracked event: what ingest accepted, as every subscriber sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub account_id: u64,
    /// Microseconds since the Unix epoch (UTC) when ingest accepted the request.
    pub timestamp_us: u64,
    pub data: String,
    /// Which ingest instance accepted it, so a scaled-out deployment can be told apart.
    pub origin: String,
    /// Unique per `origin` and growing in the order the origin published, so that
    /// `(origin, id)` names the event: a subscriber drops a copy that a publisher sent again
    /// after a busd crash, which busd itself cannot recognise across epochs.
    pub id: u64,
}

/// What a connection is for; fixed at `Hello` so busd can refuse frames outside the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Which events a subscriber wants. Evaluated by busd, so unwanted events never cross the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    All,
    Accounts(BTreeSet<u64>),
}

impl Filter {
    /// Whether an event for `account_id` passes this filter.
    pub fn matches(&self, account_id: u64) -> bool {
        match self {
            Filter::All => true,
            Filter::Accounts(set) => set.contains(&account_id),
        }
    }
}

/// A point in busd's event history: sequence numbers restart with every busd process
/// (a new `epoch`), so a position names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// Frames a publisher or subscriber sends to busd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Must be the first frame; busd answers `Welcome` or `Error`.
    Hello {
        version: u32,
        role: Role,
        name: String,
        token: Option<String>,
        /// Random per publisher process: a reconnection of the same process (same `name`
        /// and `instance`) takes over its old connection, another process with a live name
        /// is refused with `NameInUse`.
        instance: u64,
    },
    /// Sets (or replaces) the subscriber's filter; `resume_after` asks for what was missed.
    Subscribe {
        filter: Filter,
        resume_after: Option<Position>,
    },
    /// A batch of events; `batch_id` grows per publisher so a resent batch is recognised.
    Publish {
        batch_id: u64,
        events: Vec<Event>,
    },
    Ping,
    StatsRequest,
}

/// Frames busd sends to its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Welcome {
        version: u32,
        epoch: u64,
        head_seq: u64,
        /// busd's largest accepted frame body, so a publisher sizes its batches to fit.
        max_frame: u64,
        /// The run this one directly follows, when it ended with a `Goodbye`: its epoch and
        /// last seq. `None` after a crash or with no record. Only this chain lets a client
        /// that saw that `Goodbye` conclude nothing was missed across the restart.
        follows: Option<Position>,
    },
    /// Events in sequence order, each with its sequence number.
    Events(Vec<(u64, Event)>),
    /// Events this subscriber should have had between `from_seq` and `to_seq` were lost;
    /// `missed` counts them (see DESIGN.md for when it is an upper bound).
    Gap {
        from_seq: u64,
        to_seq: u64,
        missed: u64,
    },
    /// The batch is in busd's replay ring and will not be lost by busd.
    PubAck {
        batch_id: u64,
    },
    /// Sent to an idle subscriber so it can tell a quiet bus from a dead connection.
    Heartbeat {
        head_seq: u64,
    },
    Pong,
    Stats(Stats),
    /// busd is shutting down gracefully; everything up to `last_seq` has been sent.
    Goodbye {
        epoch: u64,
        last_seq: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why busd refused or closed a connection; clients branch on this, people read `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    VersionMismatch,
    Unauthorized,
    HelloTimeout,
    ExpectedHello,
    FrameTooLarge,
    Malformed,
    NotPermitted,
    FilterTooLarge,
    TooManyConnections,
    SlowConsumer,
    ShuttingDown,
    /// Another live publisher process already uses this name; batch ids are only comparable
    /// within one publisher, so sharing a name would make busd drop one's batches.
    NameInUse,
    /// A frame that had started did not finish within the frame deadline.
    FrameTimeout,
}

/// A snapshot of busd's counters, for `busctl stats` and monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub epoch: u64,
    pub head_seq: u64,
    pub connections: u64,
    pub publishers: u64,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicate_batches: u64,
    pub ring_events: u64,
    pub ring_bytes: u64,
    pub subscribers: Vec<SubscriberStats>,
}

/// One subscriber's view in [`Stats`]: a growing `dropped` names the slow reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberStats {
    pub id: u64,
    pub name: String,
    /// `None` means all accounts.
    pub accounts: Option<u64>,
    pub queue_depth: u64,
    pub delivered: u64,
    pub dropped: u64,
}

impl ServerFrame {
    /// The postcard variant index of `Events`, used by [`crate::fanout`] to build the frame
    /// by hand; a test pins it to the derive.
    pub const EVENTS_TAG: u8 = 1;
}

impl ClientFrame {
    /// The postcard variant index of `Hello`.
    pub const HELLO_TAG: u8 = 0;
    /// The postcard variant index of `Publish`, used by [`crate::publish`].
    pub const PUBLISH_TAG: u8 = 2;
}

/// The version a `Hello` body claims, read without decoding the rest, so that a peer of
/// another version (whose `Hello` may not decode as ours) still learns why it was refused.
pub fn peek_hello_version(body: &[u8]) -> Option<u32> {
    let mut pos = 0;
    if crate::varint::take(body, &mut pos)? != u64::from(ClientFrame::HELLO_TAG) {
        return None;
    }
    u32::try_from(crate::varint::take(body, &mut pos)?).ok()
}
