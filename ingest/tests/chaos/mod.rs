//! The parts of the fault-injection test: data identity, the checker (plain data, unit
//! tested), the watchers, the load, the processes, the fault schedule, one run, and its report.

pub mod checker;
pub mod cluster;
pub mod ident;
pub mod load;
pub mod report;
pub mod run;
pub mod schedule;
pub mod watcher;
