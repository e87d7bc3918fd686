//! What every connection task shares: the bus, the settings, the shutdown stages, the
//! slots, names and read budget that keep one client from starving the others.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use protocol::Position;

use crate::bus::Bus;
use crate::config::Config;
use crate::publishers::Publishers;
use crate::reader::ReadBudget;
use crate::shutdown::Shutdown;
use crate::slots::Slots;

/// What every connection task shares.
pub struct Context {
    /// The bus every connection publishes to or reads from.
    pub bus: Arc<Bus>,
    /// The daemon's settings.
    pub config: Config,
    /// The stages of a graceful stop the connection watches.
    pub shutdown: Shutdown,
    /// The publisher names connected now.
    pub publishers: Publishers,
    /// The run this one follows, named in every `Welcome` (see [`crate::state`]).
    pub follows: Option<Position>,
    /// Numbers connections, so a publisher's name claim knows whose it is.
    pub connections: AtomicU64,
    /// Subscriber and publisher slots, taken after `Hello`.
    pub slots: Slots,
    /// Bytes of partly received frames all connections may hold together.
    pub budget: ReadBudget,
}

impl Context {
    /// The answer to `PublisherStatsRequest`: the bus's counts per publisher name, each
    /// marked connected or not by the names held now.
    pub fn publisher_stats(&self) -> protocol::ServerFrame {
        let publishers = self
            .bus
            .publisher_stats(|name| self.publishers.is_live(name));
        protocol::ServerFrame::PublisherStats(publishers)
    }
}
