//! The side-by-side comparison: Tracker against nginx, may_minihttp and hyper for HTTP and
//! against Redis and NATS for pub/sub, ingest over NATS JetStream against a raw async-nats
//! publisher, ingest's `--durable` against its default, plus end-to-end latency and footprint, written to
//! `benches/RESULTS.md` and `benches/results.json` by `cargo bench -p benches --bench compare`.

pub mod bus;
pub mod durable;
pub mod footprint;
pub mod http;
pub mod jetstream;
pub mod latency;
pub mod nats;
pub mod redis;
pub mod report;
pub mod rounds;
pub mod tools;

/// How long each measured run lasts, how many rounds the HTTP and pub/sub rows get (see
/// [`rounds`]), and whether this is CI's smoke run.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub seconds: u32,
    pub rounds: u32,
    pub smoke: bool,
}
