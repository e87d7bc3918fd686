//! Plumbing shared by Tracker's programs (`busd`, `ingest`, `busctl`) that is not the bus
//! itself: how flags read their environment variables, and the checks that flags of the
//! same kind get in every program, so that each is done one way.

pub mod args;
pub mod env;
