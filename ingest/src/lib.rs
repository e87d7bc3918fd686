//! ingest as a library: the HTTP endpoint's parts, so the binary (`main.rs`) stays a thin
//! command line and the benchmarks can measure the request path piece by piece.
//!
//! A request flows [`request`] (parse and limits) -> [`route`] (validate, look up, accept)
//! -> the client library's outbox (encoded, kept until acknowledged) -> its publisher
//! (batches to busd, `client::publisher`);
//! [`connection`] and [`server`] drive the sockets, [`slots`] takes back idle connections'
//! slots when they run out, [`durable`] holds answers until the bus acknowledged their
//! events (`--durable`), and [`serve`] puts it all together. [`accounts`] is the
//! `ingest accounts` command.

pub mod accounts;
pub mod cli;
pub mod connection;
pub mod durable;
pub mod metrics;
pub mod query;
pub mod request;
pub mod response;
pub mod route;
pub mod serve;
pub mod server;
pub mod slots;
