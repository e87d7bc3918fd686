//! Tracker's benchmark harness: load generators shared by the bench targets.
//!
//! Figures belong here and in `benches/`, never in timed tests.

pub mod bus_load;
pub mod compare;
pub mod icount;
pub mod process;
