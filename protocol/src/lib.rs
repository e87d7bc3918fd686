//! Everything that crosses the wire between `ingest`, `busd` and `busctl`.
//!
//! A frame is a 4-byte big-endian length followed by a postcard-encoded [`ClientFrame`] or
//! [`ServerFrame`]. The types live here and only here, so the three programs cannot disagree
//! about the protocol; the hot paths (a publisher's batch in, an `Events` frame out) have
//! hand-written byte-level helpers in [`publish`] and [`fanout`] that tests pin to postcard.

#![warn(missing_docs)]

pub mod codec;
pub mod fanout;
pub mod frame;
pub mod publish;
pub mod varint;

pub use codec::{CodecError, FrameCodec, RawCodec, encode_frame};
pub use frame::{
    ClientFrame, ErrorCode, Event, Filter, Position, PublisherStats, Role, ServerFrame, Start,
    Stats, SubscriberStats,
};

/// Bumped whenever an existing frame changes shape, or a frame is added; peers with a
/// version outside [`OLDEST_VERSION`]`..=PROTOCOL_VERSION` are refused with an `Error`
/// frame naming both versions. Version 3 added `SubscribeWith` (history, origin filter) and
/// `PublisherStatsRequest`/`PublisherStats`.
pub const PROTOCOL_VERSION: u32 = 3;

/// The oldest version busd still serves: every frame of version 2 is unchanged in 3, so a
/// version 2 client works as it did (it never sends what 3 added).
pub const OLDEST_VERSION: u32 = 2;

/// Most events busd writes to a consumer group member beyond its last `Ack`: a member that
/// stops acknowledging stops receiving (its queue then fills, as any subscriber's), and
/// what a member that leaves was sent and never acknowledged is bounded by it.
pub const MAX_UNACKED: usize = 16_384;

/// Longest consumer group name busd accepts, in bytes.
pub const MAX_GROUP_NAME: usize = 128;

/// Default largest frame body, in bytes. Large enough for a big publish batch, small enough
/// that one peer cannot make a server buffer without bound.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
