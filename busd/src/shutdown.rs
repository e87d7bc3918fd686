//! Graceful shutdown in two stages (the signals that start it are `plumbing::signal`).
//!
//! First every connection stops reading, so no new batch is accepted; then the bus is closed
//! and its final seq known; only then do subscriber writers flush their queues and send
//! `Goodbye { last_seq }`. Doing it in this order is what makes `last_seq` true: nothing can
//! be published after a subscriber was told it has seen everything.

use tokio_util::sync::CancellationToken;

/// The stages a connection task watches.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop reading frames (stage one).
    pub stop_reading: CancellationToken,
    /// The bus is closed: flush, say goodbye, close (stage two).
    pub goodbye: CancellationToken,
}
