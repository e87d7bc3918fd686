//! busd, Tracker's pub/sub daemon, as a library so that `ingest` can run it in-process.
//!
//! Publishers send batches of events; busd numbers them, keeps the recent ones in a replay
//! ring, and fans each out to the subscribers whose filter matches, through a bounded queue
//! per subscriber so one slow reader never slows the rest. [`serve`] runs it on a listener.
//!
//! Under `--cfg loom` only [`queue`] is built: it is what the loom tests model, and tokio
//! leaves out its networking in that configuration.

#![warn(missing_docs)]

#[cfg(not(loom))]
pub mod bus;
#[cfg(not(loom))]
pub mod config;
#[cfg(not(loom))]
pub mod connection;
#[cfg(not(loom))]
pub mod context;
#[cfg(not(loom))]
pub mod filter;
#[cfg(not(loom))]
pub mod group;
#[cfg(not(loom))]
pub mod peer;
#[cfg(not(loom))]
pub mod publisher;
#[cfg(not(loom))]
pub mod publishers;
pub mod queue;
#[cfg(not(loom))]
pub mod reader;

#[cfg(not(loom))]
pub mod ring;
#[cfg(not(loom))]
pub mod runs;
#[cfg(not(loom))]
pub mod server;
#[cfg(not(loom))]
pub mod shutdown;
#[cfg(not(loom))]
pub mod slots;
#[cfg(not(loom))]
pub mod state;
#[cfg(not(loom))]
pub mod subscriber;

#[cfg(not(loom))]
pub use config::{Config, SlowPolicy};
#[cfg(not(loom))]
pub use server::serve;
