//! The bus client: the library every Tracker program speaks to the bus through, and the
//! commands of `busctl` built on it.
//!
//! - [`publisher`]: accepted events kept in an [`outbox`] until the bus acknowledges them,
//!   sent again under the same ids after any reconnect. ingest, `busctl publish`
//!   and the tests use it.
//! - [`subscriber`]: a filter's events across reconnects and bus restarts, each once, with
//!   every loss reported as a gap and a resume [`position`] the caller can keep.
//! - [`bus`]: which bus an address names; [`jetstream`]: the JetStream halves of both.
//! - [`session`]: the one handshake; [`reconnect`]: the one reconnect loop's bookkeeping.
//!
//! The commands live here too, so that integration tests and the fuzz targets reach the
//! same code the binary runs (the watcher's handling of every frame busd can send included,
//! through [`watch::replay`]).

#![warn(missing_docs)]

pub mod aggregate;
pub mod bus;
pub mod cli;
pub mod dashboard;
pub mod doctor;
pub mod event_line;
pub mod jetstream;
pub mod outbox;
pub mod output;
pub mod position;
pub mod publish;
pub mod publisher;
pub mod reconnect;
pub mod render;
pub mod session;
pub mod stats;
pub mod status;
pub mod subscriber;
pub mod template;
pub mod watch;
