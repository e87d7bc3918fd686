//! Connection slots after `Hello`, one pool per role.
//!
//! With one pool for everyone, ten thousand idle subscribers left a reconnecting ingest no
//! way in. As Kafka reserves connections for its inter-broker listener, busd keeps
//! publishers' slots apart: `--max-connections` bounds subscribers (and, through the accept
//! loop, connections still in their handshake), `--max-publishers` bounds publishers.

use std::sync::Arc;

use protocol::Role;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The free slots of each role.
pub struct Slots {
    subscribers: Pool,
    publishers: Pool,
}

struct Pool {
    free: Arc<Semaphore>,
    max: usize,
}

/// A connection's place in its role's pool, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Every slot of the role is taken; the message names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("busd is at its limit of {max} {role}")]
pub struct Full {
    role: &'static str,
    max: usize,
}

impl Pool {
    fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Pool {
            free: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl Slots {
    /// Pools of `max_subscribers` and `max_publishers` slots.
    pub fn new(max_subscribers: usize, max_publishers: usize) -> Self {
        Slots {
            subscribers: Pool::new(max_subscribers),
            publishers: Pool::new(max_publishers),
        }
    }

    /// Takes a slot for a connection that said `Hello` as `role`, if one is free.
    pub fn take(&self, role: Role) -> Result<Slot, Full> {
        let (pool, name) = match role {
            Role::Subscriber => (&self.subscribers, "subscribers"),
            Role::Publisher => (&self.publishers, "publishers"),
        };
        pool.free
            .clone()
            .try_acquire_owned()
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| Full {
                role: name,
                max: pool.max,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_has_its_own_slots() {
        let slots = Slots::new(2, 1);
        let _s1 = slots.take(Role::Subscriber).unwrap();
        let s2 = slots.take(Role::Subscriber).unwrap();
        let full = slots.take(Role::Subscriber).unwrap_err();
        assert_eq!(full.to_string(), "busd is at its limit of 2 subscribers");
        let p1 = slots.take(Role::Publisher).unwrap();
        let full = slots.take(Role::Publisher).unwrap_err();
        assert_eq!(full.to_string(), "busd is at its limit of 1 publishers");
        drop(s2);
        drop(p1);
        assert!(slots.take(Role::Subscriber).is_ok());
        assert!(slots.take(Role::Publisher).is_ok());
    }
}
