//! The bus client behind `busctl`: its commands as a library, so that integration tests and
//! the fuzz targets reach the same code the binary runs (the watcher's handling of every
//! frame busd can send included, through [`watch::replay`]).

#![warn(missing_docs)]

pub mod aggregate;
pub mod cli;
pub mod doctor;
pub mod output;
pub mod publish;
pub mod render;
pub mod session;
pub mod stats;
pub mod status;
pub mod watch;
