//! Where a subscriber stands in the stream, as an opaque value.
//!
//! A caller keeps a [`Resume`] and hands it back to carry on after the last event it took;
//! what is inside belongs to the bus. For busd it is a run's epoch and a seq within that
//! run; another bus keeps another kind of position behind the same type, so a program
//! written against it does not change when the bus does.

use protocol::Position;

/// A point in the stream to resume after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume(pub(crate) Position);

impl std::fmt::Display for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq {} (epoch {})", self.0.seq, self.0.epoch)
    }
}
