//! Full-rate load on ingest: several keep-alive connections, each sending
//! `GET /<account>?data=<data>` back to back, with data of sizes spread from 1 byte to the
//! limit (percent-encoded where needed), every answer checked against the status its
//! account must get.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use testkit::http::Client;
use tokio::task::JoinHandle;

/// Failures kept per connection for the message; the rest are only counted.
const KEEP: usize = 5;

/// A running load; [`Load::stop`] ends it and says how it went.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    connections: Vec<JoinHandle<Failures>>,
}

/// What went wrong on the connections: wrong statuses, missing answers, connection errors.
#[derive(Default, Debug)]
pub struct Failures {
    pub count: u64,
    pub first: Vec<String>,
}

impl Failures {
    fn add(&mut self, failure: String) {
        self.count += 1;
        if self.first.len() < KEEP {
            self.first.push(failure);
        }
    }
}

impl Load {
    /// Starts `connections` connections to `at`, taking turns over `accounts` (account id,
    /// the status it must get), with data of 1 to `max_data` bytes.
    pub fn start(
        at: SocketAddr,
        connections: u64,
        accounts: &'static [(u64, u16)],
        max_data: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let connections = (0..connections)
            .map(|seed| {
                let (stop, answered) = (stop.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut events = Events::new(seed, accounts, max_data);
                    hammer(at, &mut events, &stop, &answered).await
                })
            })
            .collect();
        Load {
            stop,
            answered,
            connections,
        }
    }

    /// Requests answered as expected so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `count` more requests than now are answered as expected.
    pub async fn wait_for(&self, count: u64, within: Duration) {
        let target = self.answered() + count;
        let started = Instant::now();
        while self.answered() < target {
            assert!(
                started.elapsed() < within,
                "only {} of {target} requests answered within {within:?}",
                self.answered()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every connection and returns their failures; a connection that broke down
    /// (the client could not connect or send) counts as one.
    pub async fn stop(self) -> Failures {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Failures::default();
        for (i, connection) in self.connections.into_iter().enumerate() {
            match connection.await {
                Ok(failures) => {
                    all.count += failures.count;
                    all.first.extend(failures.first);
                }
                Err(broken) => all.add(format!("connection {i} broke down: {broken}")),
            }
        }
        all
    }
}

/// One connection's requests until `stop`, a new connection whenever the server closes one.
async fn hammer(
    at: SocketAddr,
    events: &mut Events,
    stop: &AtomicBool,
    answered: &AtomicU64,
) -> Failures {
    let mut failures = Failures::default();
    let mut client = Client::connect(at).await;
    while !stop.load(Ordering::Relaxed) {
        let (target, expected) = events.next();
        client
            .send_raw(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        let Some(reply) = client.read_reply(false).await else {
            failures.add(format!("no answer to {}", shorten(&target)));
            client = Client::connect(at).await;
            continue;
        };
        if reply.status == expected {
            answered.fetch_add(1, Ordering::Relaxed);
        } else {
            failures.add(format!(
                "{} answered {} {}, not {expected}",
                shorten(&target),
                reply.status,
                reply.body
            ));
        }
        if reply.header("connection") == Some("close") {
            client = Client::connect(at).await;
        }
    }
    failures
}

fn shorten(target: &str) -> String {
    match target.char_indices().nth(60) {
        Some((at, _)) => format!("{}... ({} bytes)", &target[..at], target.len()),
        None => target.to_owned(),
    }
}

/// The requests of one connection: accounts in turn, data sizes 1 and `max_data` every 64
/// requests and log-uniform in between (as many short events as long ones), one character
/// in eight one that must be percent-encoded.
struct Events {
    rng: fastrand::Rng,
    accounts: &'static [(u64, u16)],
    max_data: usize,
    sent: usize,
}

/// Characters sent as they are.
const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Characters that must be percent-encoded in a query value (`é` takes two bytes).
const ESCAPED: [&str; 9] = [" ", "&", "%", "=", "+", "#", "/", "?", "é"];

impl Events {
    fn new(seed: u64, accounts: &'static [(u64, u16)], max_data: usize) -> Events {
        Events {
            rng: fastrand::Rng::with_seed(seed),
            accounts,
            max_data,
            sent: 0,
        }
    }

    /// The next request target and the status it must get.
    fn next(&mut self) -> (String, u16) {
        let (account, status) = self.accounts[self.sent % self.accounts.len()];
        let size = match self.sent % 64 {
            0 => 1,
            1 => self.max_data,
            _ => (self.max_data as f64).powf(self.rng.f64()).round() as usize,
        };
        self.sent += 1;
        let data = self.data(size.clamp(1, self.max_data));
        let encoded = utf8_percent_encode(&data, NON_ALPHANUMERIC);
        (format!("/{account}?data={encoded}"), status)
    }

    /// `size` bytes of UTF-8.
    fn data(&mut self, size: usize) -> String {
        let mut data = String::with_capacity(size);
        while data.len() < size {
            if self.rng.u8(..8) == 0 {
                let special = ESCAPED[self.rng.usize(..ESCAPED.len())];
                if data.len() + special.len() <= size {
                    data.push_str(special);
                    continue;
                }
            }
            data.push(char::from(PLAIN[self.rng.usize(..PLAIN.len())]));
        }
        data
    }
}
