//! Plumbing shared by Tracker's programs (`busd`, `ingest`, `busctl`) that is not the bus
//! itself, so that each of these is done one way: the accept loop with its connection cap,
//! the signals that start a graceful stop, logging set-up, the clock, the reconnection
//! backoff, how flags read their environment variables, and the checks common flags get.

pub mod accept;
pub mod args;
pub mod backoff;
pub mod clock;
pub mod env;
pub mod logging;
pub mod signal;
