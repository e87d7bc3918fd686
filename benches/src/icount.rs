//! Deterministic workloads whose instruction counts guard the hot paths against regressions.
//!
//! Wall-clock benchmarks on a shared 2-core machine move by 15% from run to run; the
//! instructions a fixed workload executes do not. `benches/icount/check` runs the `icount`
//! binary under `valgrind --tool=callgrind`, collecting only inside [`counted_requests`] and
//! [`counted_fanout`] (setup, seeding and warm-up stay outside), and compares instructions
//! per operation with the committed baseline.
//!
//! Both workloads are single-threaded, open no sockets, read no clock and use fixed data, so
//! the same binary executes the same instructions every run. The criterion `request` bench
//! drives [`Ingest`] too, so the two always measure the same work.

use std::fmt;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use busd::bus::{Bus, Published, Subscriber};
use busd::queue::Entry;
use busd::subscriber::{DRAIN_EVENTS, FRAME_BYTES};
use bytes::{Buf, BytesMut};
use client::outbox::{self, Outbox};
use client::publisher::Link;
use data::Accounts;
use ingest::metrics::Metrics;
use ingest::request::{self, Limits};
use ingest::route::{self, App};
use protocol::Filter;
use protocol::fanout::write_frames;
use protocol::publish;

/// Why a workload could not run as designed: its count would measure some other path.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Lets a caller that checks a workload's result (the `icount` driver) fail the same way.
impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl Error {
    fn new(message: &str) -> Self {
        Error(message.to_owned())
    }
}

// ---- ingest: one request's work --------------------------------------------------------

/// Accounts the request workload seeds, as many as the criterion `request` bench looks up
/// among, so a lookup costs what it costs there.
pub const ACCOUNTS: u64 = 100_000;

/// The acceptance time every event gets: a constant, so no clock is read while counting.
pub const NOW_US: u64 = 1_795_341_600_000_000;

/// Requests between two batches taken from the outbox and acknowledged, as the publisher
/// would: keeps the outbox from growing without putting a publisher in the measurement.
const RETIRE_EVERY: u64 = 4096;

/// Head limits as ingest's defaults set them.
pub const LIMITS: Limits = Limits {
    max_head: 8192,
    max_headers: 32,
};

/// ingest's request path without sockets: parse the head, validate and decode, look the
/// account up, encode the event into the outbox.
pub struct Ingest {
    /// What ingest's connections share; the outbox is cut by count like ingest's.
    pub app: App,
    handled: u64,
}

impl Ingest {
    /// An app with `accounts` accounts loaded from a fresh SQLite file (seeded as
    /// `ingest accounts seed` does) and an outbox that never refuses.
    pub fn new(accounts: u64) -> Result<Ingest, Error> {
        Ingest::keyed(accounts, None)
    }

    /// The same, and `keyed`'s account (if any) with its key as write key.
    pub fn keyed(accounts: u64, keyed: Option<(u64, &str)>) -> Result<Ingest, Error> {
        let failed = |what: &str, err: &dyn fmt::Display| Error(format!("{what}: {err}"));
        let dir = tempfile::tempdir().map_err(|e| failed("temporary directory", &e))?;
        let (conn, _) =
            data::open(&dir.path().join("accounts.db")).map_err(|e| failed("database", &e))?;
        data::admin::seed(&conn, accounts).map_err(|e| failed("seed", &e))?;
        if let Some((account, key)) = keyed {
            let hash = data::key::KeyHash::of(key.as_bytes());
            data::admin::set_key(&conn, account, Some(&hash)).map_err(|e| failed("key", &e))?;
        }
        let loaded = Arc::new(Accounts::default());
        loaded.load(&conn).map_err(|e| failed("load", &e))?;
        let app = App {
            accounts: loaded,
            outbox: Arc::new(Outbox::new(
                outbox::Limits {
                    events: usize::MAX,
                    bytes: usize::MAX,
                    batch_events: RETIRE_EVERY as usize,
                    batch_bytes: 512 * 1024,
                },
                1,
            )),
            link: Arc::new(Link::default()),
            metrics: Arc::new(Metrics::default()),
            origin: "bench:8080".into(),
            max_data: 4096,
            cors_origins: Vec::new(),
            ack_timeout: None,
        };
        Ok(Ingest { app, handled: 0 })
    }

    /// Handles one request held whole in `raw` and returns its status; every 4096 requests
    /// a batch is taken and acknowledged.
    #[inline]
    pub fn handle(&mut self, raw: &[u8]) -> Result<u16, Error> {
        let (head, _) = request::parse(black_box(raw), LIMITS)
            .map_err(|reject| Error(format!("request refused: {reject:?}")))?
            .ok_or_else(|| Error::new("request incomplete"))?;
        let (response, _, _) = route::handle(&head, &self.app, NOW_US);
        self.handled += 1;
        if self.handled % RETIRE_EVERY == 0 {
            if let Some(batch) = self.app.outbox.take_batch() {
                self.app.outbox.ack(batch.id);
            }
        }
        Ok(black_box(response.status))
    }
}

/// `GET /<account>?data=<64 bytes>` as a client sends it: the common request.
pub fn plain_request(account: u64) -> String {
    format!(
        "GET /{account}?data={} HTTP/1.1\r\nHost: ingest\r\nUser-Agent: bench\r\n\r\n",
        "d".repeat(64)
    )
}

/// [`plain_request`] with `Authorization: Bearer <key>`, for an account with a write key.
pub fn keyed_request(account: u64, key: &str) -> String {
    format!(
        "GET /{account}?data={} HTTP/1.1\r\nHost: ingest\r\nUser-Agent: bench\r\nAuthorization: Bearer {key}\r\n\r\n",
        "d".repeat(64)
    )
}

/// A request whose data must be percent-decoded, UTF-8 included.
pub fn encoded_request(account: u64) -> String {
    format!("GET /{account}?data=caf%C3%A9+au+lait+%E2%82%AC HTTP/1.1\r\nHost: ingest\r\n\r\n")
}

/// The requests the count cycles through: [`plain_request`] for 1024 active accounts of
/// four digits, so the lookup's cost is an average over many keys rather than one key's
/// luck in the hash table, and every request has the same length.
pub fn request_mix() -> Vec<String> {
    // `data::admin::seed` makes every tenth account inactive.
    (1000..)
        .filter(|id| id % 10 != 0)
        .take(1024)
        .map(plain_request)
        .collect()
}

/// The request workload, ready to count: setup and warm-up are done here, outside the
/// counted function.
pub struct RequestWork {
    ingest: Ingest,
    requests: Vec<String>,
}

impl RequestWork {
    /// Seeds and loads [`ACCOUNTS`] accounts, then handles two outbox batches' worth of
    /// requests so the outbox's buffers have reached their steady size.
    pub fn new() -> Result<RequestWork, Error> {
        let mut work = RequestWork {
            ingest: Ingest::new(ACCOUNTS)?,
            requests: request_mix(),
        };
        run_requests(&mut work, 2 * RETIRE_EVERY)?;
        Ok(work)
    }
}

fn run_requests(work: &mut RequestWork, n: u64) -> Result<u64, Error> {
    let mut accepted = 0;
    for raw in work.requests.iter().cycle().take(n as usize) {
        if work.ingest.handle(raw.as_bytes())? == 202 {
            accepted += 1;
        }
    }
    Ok(accepted)
}

/// Handles `n` requests and returns how many were accepted (all of them, when the workload
/// is right). The function callgrind collects in: never inlined, so its name stays.
#[inline(never)]
pub fn counted_requests(work: &mut RequestWork, n: u64) -> Result<u64, Error> {
    run_requests(work, n)
}

// ---- busd: publish and fan out ---------------------------------------------------------

/// Events per published batch, as the bus bench's publisher sends them.
pub const BATCH: u64 = crate::bus_load::BATCH as u64;

/// Accounts the published events cycle through.
pub const FANOUT_ACCOUNTS: u64 = 1000;

/// Subscribers filtering by account; each names its own hundred of [`FANOUT_ACCOUNTS`].
pub const FILTERED_SUBSCRIBERS: u64 = 10;

/// Replay ring budget: small, so the warm-up fills it and the count sees the steady state
/// (every push also evicts) without spending minutes under valgrind filling 64 MiB.
const RING_BYTES: usize = 4 << 20;

/// busd's publish-and-fan-out path in-process: a `Publish` frame body split and sequenced
/// by the bus, routed to 10 account-filtered subscribers and one that takes everything,
/// and drained from their queues into `Events` frames as each subscriber's writer does.
pub struct Fanout {
    bus: Bus,
    subscribers: Vec<Arc<Subscriber>>,
    /// Two batches' events, encoded back to back as ingest's outbox encodes them; batches
    /// alternate between them so that every filtered subscriber gets traffic.
    templates: [Vec<u8>; 2],
    next_batch: u64,
    /// The publisher's frame being built, then read back as busd's reader hands it over.
    frame: BytesMut,
    /// A subscriber writer's outbound buffer; emptied where the writer would flush it.
    out: BytesMut,
    drained: Vec<Entry>,
}

impl Fanout {
    /// A bus with busd's default queue size and slow policy, its subscribers, and a warm-up
    /// that runs until the ring evicts, plus a few batches more.
    pub fn new() -> Result<Fanout, Error> {
        let config = busd::Config::default();
        let bus = Bus::new(
            1,
            RING_BYTES,
            config.queue_events,
            config.slow_policy.when_full(),
        );
        let per = FANOUT_ACCOUNTS / FILTERED_SUBSCRIBERS;
        let filters = (0..FILTERED_SUBSCRIBERS)
            .map(|i| Filter::Accounts((i * per..(i + 1) * per).collect()))
            .chain([Filter::All]);
        let mut subscribers = Vec::new();
        for (i, filter) in filters.enumerate() {
            let (key, sub) = bus.register(format!("icount-{i}"));
            bus.subscribe(key, filter, None);
            subscribers.push(sub);
        }
        let mut work = Fanout {
            bus,
            subscribers,
            templates: [template(0), template(BATCH)],
            next_batch: 1,
            frame: BytesMut::new(),
            out: BytesMut::new(),
            drained: Vec::with_capacity(DRAIN_EVENTS),
        };
        while work.bus.stats().ring_events >= work.bus.head() {
            work.publish_and_fan_out()?;
        }
        for _ in 0..16 {
            work.publish_and_fan_out()?;
        }
        Ok(work)
    }

    /// Publishes one batch and drains every subscriber; returns the events delivered.
    fn publish_and_fan_out(&mut self) -> Result<u64, Error> {
        let batch_id = self.next_batch;
        self.next_batch += 1;
        let events = &self.templates[(batch_id % 2) as usize];
        publish::encode_frame(&mut self.frame, batch_id, BATCH, events);
        // busd's reader: the whole frame split off its buffer, the length prefix skipped.
        let mut frame = self.frame.split();
        frame.advance(4);
        let body = frame.freeze();
        if !publish::is_publish(&body) {
            return Err(Error::new("encoded frame is not a Publish"));
        }
        let batch = publish::parse(&body).map_err(|e| Error(e.to_string()))?;
        match self.bus.publish("icount", 1, batch) {
            Ok(Published::Accepted { .. }) => {}
            Ok(Published::Duplicate) => return Err(Error::new("batch dropped as a duplicate")),
            Err(closed) => return Err(Error(closed.to_string())),
        }
        let mut delivered = 0;
        for sub in &self.subscribers {
            delivered += drain(sub, &self.bus, &mut self.out, &mut self.drained)?;
        }
        Ok(delivered)
    }
}

/// What busd's subscriber writer does when woken: take the queue in chunks, write a `Gap`
/// if there is one (here: fail, since the count should not include one), build `Events`
/// frames of bounded size from the shared bytes, count, and flush.
fn drain(
    sub: &Subscriber,
    bus: &Bus,
    out: &mut BytesMut,
    batch: &mut Vec<Entry>,
) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let drained = sub.queue.drain_into(DRAIN_EVENTS, batch);
        if drained.overflowed || drained.gap.is_some() {
            return Err(Error::new("a subscriber queue overflowed"));
        }
        let taken: u64 = batch.iter().map(|e| e.count).sum();
        // Counted first, so each frame's count is written in place, never moved.
        write_frames(out, batch, FRAME_BYTES, |e| &e.bytes, |e| e.count);
        batch.clear();
        sub.delivered.fetch_add(taken, Relaxed);
        bus.counters.delivered.fetch_add(taken, Relaxed);
        // The socket write: what the writer's flush leaves behind is an empty buffer.
        black_box(&out[..]);
        out.clear();
        total += taken;
        if taken < DRAIN_EVENTS as u64 {
            return Ok(total);
        }
    }
}

/// One batch's events, encoded as ingest's outbox encodes them: accounts `offset..` (mod
/// [`FANOUT_ACCOUNTS`]), 64 bytes of data, fixed timestamps and ids.
fn template(offset: u64) -> Vec<u8> {
    let data = "d".repeat(64);
    let mut events = BytesMut::new();
    for i in 0..BATCH {
        let n = offset + i;
        publish::encode_event(
            &mut events,
            n % FANOUT_ACCOUNTS,
            NOW_US + n,
            &data,
            "bench:8080",
            n + 1,
        );
    }
    events.to_vec()
}

/// Publishes `batches` batches, fanning each out, and returns the events delivered to all
/// subscribers together. The function callgrind collects in: never inlined, so its name
/// stays.
#[inline(never)]
pub fn counted_fanout(work: &mut Fanout, batches: u64) -> Result<u64, Error> {
    let mut delivered = 0;
    for _ in 0..batches {
        delivered += work.publish_and_fan_out()?;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_request_is_accepted() {
        let mut work = RequestWork::new().expect("setup");
        assert_eq!(counted_requests(&mut work, 3000).expect("runs"), 3000);
    }

    #[test]
    fn every_event_reaches_its_filtered_subscriber_and_the_catch_all() {
        let mut work = Fanout::new().expect("setup");
        let batches = 10;
        assert_eq!(
            counted_fanout(&mut work, batches).expect("runs"),
            2 * batches * BATCH
        );
    }

    #[test]
    fn the_warm_up_reaches_the_evicting_ring() {
        let work = Fanout::new().expect("setup");
        let stats = work.bus.stats();
        assert!(stats.ring_events < stats.head_seq);
    }
}
