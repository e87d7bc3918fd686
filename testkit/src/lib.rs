//! Test support shared by the crates' integration tests: start the real binaries on free
//! loopback ports (or on hosts of their own, [`netns`]), read what they print, signal them,
//! and speak the bus protocol to them.
//! Test code: it panics with a message instead of returning errors.

pub mod bus;
pub mod chromium;
pub mod http;
pub mod nats;
pub mod netns;
pub mod postgres;
pub mod process;

pub use process::{Proc, binary, free_port};
