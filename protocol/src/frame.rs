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
    /// The account the event belongs to: what subscribers filter on.
    pub account_id: u64,
    /// Microseconds since the Unix epoch (UTC) when ingest accepted the request.
    pub timestamp_us: u64,
    /// The request's `data`, percent-decoded: valid UTF-8 by construction.
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
    /// Sends `Publish` batches and gets `PubAck`s.
    Publisher,
    /// Sends `Subscribe` and gets `Events`, `Gap`s and heartbeats.
    Subscriber,
}

/// Which events a subscriber wants. Evaluated by busd, so unwanted events never cross the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// Every event.
    All,
    /// Only the events of these accounts.
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
    /// The busd run: its start time in microseconds since the Unix epoch.
    pub epoch: u64,
    /// The sequence number within that run.
    pub seq: u64,
}

/// Frames a publisher or subscriber sends to busd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Must be the first frame; busd answers `Welcome` or `Error`.
    Hello {
        /// The protocol version the sender speaks on this connection: the oldest that has
        /// every frame it will send (at most [`crate::PROTOCOL_VERSION`]); first, so any
        /// version can read it.
        version: u32,
        /// What the connection is for, for its whole life.
        role: Role,
        /// The publisher's name (batch ids are per name) or a label for `busctl stats`.
        name: String,
        /// busd's shared secret, when it has one.
        token: Option<String>,
        /// Random per publisher process: a reconnection of the same process (same `name`
        /// and `instance`) takes over its old connection, another process with a live name
        /// is refused with `NameInUse`.
        instance: u64,
    },
    /// Sets (or replaces) the subscriber's filter; `resume_after` asks for what was missed.
    Subscribe {
        /// The events wanted from now on.
        filter: Filter,
        /// The last position already seen: busd replays what matches after it from its
        /// ring (or says `Gap`). `None` starts at the head.
        resume_after: Option<Position>,
    },
    /// A batch of events; `batch_id` grows per publisher so a resent batch is recognised.
    Publish {
        /// Grows per publisher instance; a batch at or below the last one is a resend.
        batch_id: u64,
        /// The events, in the order they were accepted.
        events: Vec<Event>,
    },
    /// Asks for a `Pong`: a client checks that busd is still there.
    Ping,
    /// Asks for `Stats`.
    StatsRequest,
    /// `Subscribe` with a start in the past and an origin filter (protocol 3): sets (or
    /// replaces) the filter, queues the history `start` asks for from the replay ring (a
    /// `Gap` first when the ring no longer reaches back that far), then live events.
    SubscribeWith {
        /// The accounts wanted from now on.
        filter: Filter,
        /// Only events from these origins; empty means every origin. busd applies it as
        /// it writes to this subscriber, so it costs other subscribers nothing.
        origins: BTreeSet<String>,
        /// Where the subscription starts.
        start: Start,
    },
    /// Asks for `PublisherStats` (protocol 3).
    PublisherStatsRequest,
    /// Joins the consumer group `group` instead of subscribing (protocol 3): busd hands each event that
    /// matches `filter` to one member of the group, every event of an account to the same
    /// member while the membership stays the same. A member starts live (no resume: the
    /// group, not the member, holds the position).
    Join {
        /// The group's name; members of one group share the work.
        group: String,
        /// The events this member takes its share of.
        filter: Filter,
    },
    /// A group member has handed the event `seq`, and every event busd wrote it before that
    /// one, to its application. busd writes a
    /// member at most [`crate::MAX_UNACKED`] events ahead of its acknowledgements; when a
    /// member leaves, what it was sent and never acknowledged is reported as a gap to the
    /// members taking over its accounts.
    Ack {
        /// The seq of the last event handed to the application.
        seq: u64,
    },
}

/// Where a [`ClientFrame::SubscribeWith`] starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// New events only, as a `Subscribe` without `resume_after`.
    Head,
    /// After this position, as `Subscribe`'s `resume_after`.
    After(Position),
    /// The last N matching events the ring holds, then live.
    Last(u64),
    /// The events accepted at or after this time (µs since the Unix epoch), then live.
    Since(u64),
    /// Every matching event the ring holds, then live.
    Beginning,
}

/// Frames busd sends to its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to an accepted `Hello`.
    Welcome {
        /// busd's protocol version.
        version: u32,
        /// This busd run.
        epoch: u64,
        /// The last seq given out so far: where a fresh subscription starts.
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
    /// `missed` counts them (an upper bound after falling out of the replay ring).
    Gap {
        /// The first seq of the loss.
        from_seq: u64,
        /// The last seq of the loss.
        to_seq: u64,
        /// How many events matching the filter were lost, or (after falling out of the
        /// ring) an upper bound: every seq in the range.
        missed: u64,
    },
    /// The batch is in busd's replay ring and will not be lost by busd.
    PubAck {
        /// The batch acknowledged, and with it every earlier one.
        batch_id: u64,
    },
    /// Sent to an idle subscriber so it can tell a quiet bus from a dead connection.
    Heartbeat {
        /// The last seq given out, so a subscriber sees how far the bus is.
        head_seq: u64,
    },
    /// The answer to `Ping`.
    Pong,
    /// The answer to `StatsRequest`.
    Stats(Stats),
    /// busd is shutting down gracefully; everything up to `last_seq` has been sent.
    Goodbye {
        /// The run that is ending.
        epoch: u64,
        /// Its final seq: nothing more will be published in this epoch.
        last_seq: u64,
    },
    /// A refusal; busd closes the connection after it.
    Error {
        /// What a client branches on.
        code: ErrorCode,
        /// What a person reads.
        message: String,
    },
    /// The answer to `PublisherStatsRequest` (protocol 3): every publisher name this busd
    /// run has had batches from. A frame of its own, so `Stats` keeps its version 2 shape.
    PublisherStats(Vec<PublisherStats>),
}

/// Why busd refused or closed a connection; clients branch on this, people read `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client speaks another protocol version; the message names both.
    VersionMismatch,
    /// The token is missing or wrong.
    Unauthorized,
    /// No `Hello` within busd's deadline.
    HelloTimeout,
    /// The first frame was not a `Hello`.
    ExpectedHello,
    /// A frame over busd's limit (or a first frame over 4 KiB).
    FrameTooLarge,
    /// A frame that does not decode.
    Malformed,
    /// A frame outside the connection's role (a subscriber publishing, say).
    NotPermitted,
    /// A filter naming more accounts than busd allows.
    FilterTooLarge,
    /// busd has no slot left for this role.
    TooManyConnections,
    /// A subscriber too slow for its queue, under the disconnect policy.
    SlowConsumer,
    /// busd is stopping.
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
    /// The busd run these figures belong to.
    pub epoch: u64,
    /// The last seq given out.
    pub head_seq: u64,
    /// Open connections, of every role and in the handshake.
    pub connections: u64,
    /// Connected publishers.
    pub publishers: u64,
    /// Events published since start.
    pub published: u64,
    /// Event deliveries to subscribers since start (one event to two subscribers is two).
    pub delivered: u64,
    /// Events dropped from subscriber queues since start.
    pub dropped: u64,
    /// Resent batches recognised and not published again.
    pub duplicate_batches: u64,
    /// Events in the replay ring now.
    pub ring_events: u64,
    /// Bytes in the replay ring now.
    pub ring_bytes: u64,
    /// Every connection that has subscribed.
    pub subscribers: Vec<SubscriberStats>,
}

/// One subscriber's view in [`Stats`]: a growing `dropped` names the slow reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberStats {
    /// busd's number for the connection.
    pub id: u64,
    /// The name it gave in `Hello`.
    pub name: String,
    /// How many accounts its filter names; `None` means all accounts.
    pub accounts: Option<u64>,
    /// Events waiting in its queue.
    pub queue_depth: u64,
    /// Events delivered to it.
    pub delivered: u64,
    /// Events dropped from its queue because it read too slowly.
    pub dropped: u64,
}

/// One publisher in [`ServerFrame::PublisherStats`]: its name is the origin its events
/// carry (ingest's `--origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherStats {
    /// The name from its `Hello`.
    pub name: String,
    /// Whether a connection under this name is open now.
    pub connected: bool,
    /// Batches published (duplicates not counted).
    pub batches: u64,
    /// Events published.
    pub events: u64,
    /// Resent batches recognised and dropped.
    pub duplicate_batches: u64,
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
