//! A JetStream watcher whose consumer is alive but hands out nothing: what a consumer
//! placed on a replica that is behind the stream leader looks like to the client (the
//! chaos run's `W_restarted#3`: heartbeats for seventy seconds and none of its events).
//!
//! A proxy between busctl and a real nats-server passes everything (heartbeats, API
//! replies) except the messages the first consumer delivers, so that consumer stays
//! healthy in every way the client can see from it. The watcher must notice, from the
//! stream leader, that the stream holds its events, make the consumer again, and print
//! every event once, with no gap.
//!
//! Skips (with a message) when the pinned nats-server is not installed.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::jetstream::Layout;
use serde_json::Value;
use testkit::{Proc, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[macro_use]
mod support;
use support::{json, watch};

/// How long the watcher may take to notice and make its consumer again: two idle checks
/// (5 s each) and a reconnect, with room for a slow machine.
const RECOVER: Duration = Duration::from_secs(40);

/// A TCP proxy to a nats-server that swallows every message the first JetStream consumer
/// seen delivers (its `$JS.ACK` reply subject names it) and passes everything else.
struct Proxy {
    port: u16,
    /// Messages swallowed.
    dropped: Arc<AtomicUsize>,
}

/// What the proxy shares between its connections.
#[derive(Clone)]
struct Victim {
    stream: String,
    consumer: Arc<Mutex<Option<String>>>,
    dropped: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(server: u16, stream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let victim = Victim {
            stream: stream.to_owned(),
            consumer: Arc::default(),
            dropped: Arc::default(),
        };
        let dropped = victim.dropped.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let victim = victim.clone();
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(("127.0.0.1", server)).await {
                        relay(client, upstream, victim).await;
                    }
                });
            }
        });
        Proxy { port, dropped }
    }
}

/// Client to server verbatim; server to client one protocol frame at a time, less the
/// victim's deliveries. Ends when either side closes.
async fn relay(client: TcpStream, upstream: TcpStream, victim: Victim) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match up_read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((len, reply)) = frame(&buf[at..]) {
            if !reply.is_some_and(|reply| victim.swallows(&reply)) {
                out.extend_from_slice(&buf[at..at + len]);
            }
            at += len;
        }
        buf.drain(..at);
        if client_write.write_all(&out).await.is_err() {
            break;
        }
    }
    up.abort();
}

impl Victim {
    /// Whether a message with this reply subject is to be swallowed: a delivery of the
    /// first consumer seen (`$JS.ACK.<stream>.<consumer>.…`, with or without a domain
    /// and account hash before the stream).
    fn swallows(&self, reply: &str) -> bool {
        let Some(rest) = reply.strip_prefix("$JS.ACK.") else {
            return false;
        };
        let tokens: Vec<&str> = rest.split('.').collect();
        let Some(at) = tokens.iter().position(|t| *t == self.stream) else {
            return false;
        };
        let Some(consumer) = tokens.get(at + 1) else {
            return false;
        };
        let mut victim = self.consumer.lock().expect("the victim's lock");
        let victim = victim.get_or_insert_with(|| consumer.to_string());
        if victim == consumer {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// The length of the first whole server frame in `buf` and, for a message, its reply
/// subject; `None` until the frame is whole.
fn frame(buf: &[u8]) -> Option<(usize, Option<String>)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..end]);
    let args: Vec<&str> = line.split_whitespace().collect();
    let head = end + 2;
    let (body, reply) = match args.first().copied() {
        // MSG <subject> <sid> [reply] <bytes>
        Some("MSG") => (
            args.last()?.parse::<usize>().ok()? + 2,
            args.get(3).filter(|_| args.len() == 5),
        ),
        // HMSG <subject> <sid> [reply] <header bytes> <total bytes>
        Some("HMSG") => (
            args.last()?.parse::<usize>().ok()? + 2,
            args.get(3).filter(|_| args.len() == 6),
        ),
        _ => (0, None),
    };
    let len = head + body;
    (buf.len() >= len).then(|| (len, reply.map(|r| r.to_string())))
}

/// A single JetStream nats-server on `port` (no cluster: the client learns no other
/// address to go to behind the proxy's back).
fn jetstream_nats(program: &std::path::Path, port: u16, store: &std::path::Path) -> Proc {
    let proc = Proc::spawn(
        "nats",
        Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

/// Publishes event `i` of `count` to account `account_of(i)`, straight to the stream.
async fn publish(
    conn: &client::jetstream::Connection,
    count: usize,
    account_of: impl Fn(usize) -> u64,
) {
    for i in 0..count {
        support::publish_to_stream(conn, account_of(i), &format!("e-{i}"), i as u64 + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_hands_out_nothing_is_made_again() {
    let program = nats_or_skip!();
    let store = tempfile::tempdir().expect("a store");
    let port = free_port();
    let _server = jetstream_nats(&program, port, store.path());
    let layout = Layout::default();
    let direct = vec![format!("nats://127.0.0.1:{port}")];
    let conn = client::jetstream::connect(&direct, "test", None, Duration::from_secs(5))
        .await
        .expect("connected");
    client::jetstream::stream::ensure(&conn.js, &layout)
        .await
        .expect("the stream");
    let proxy = Proxy::start(port, &layout.stream).await;
    let bus = format!("nats://127.0.0.1:{}", proxy.port);
    let watcher = watch(&bus, &["--accounts", "1,2"]);

    // Accounts 1, 2 and 3 in turn: the watcher's are two of every three.
    let count = 30;
    publish(&conn, count, |i| 1 + (i % 3) as u64).await;
    let expected: Vec<(u64, String)> = (0..count)
        .filter(|i| i % 3 != 2)
        .map(|i| (i as u64 + 1, format!("e-{i}")))
        .collect();

    let lines = watcher.stdout_lines(expected.len(), RECOVER);
    let printed: Vec<(u64, String)> = lines
        .iter()
        .map(|line| {
            let item: Value = json(line);
            assert!(item.get("gap").is_none(), "no gap: {lines:?}");
            let seq = item["seq"].as_u64().expect("a seq");
            (seq, item["data"].as_str().expect("data").to_owned())
        })
        .collect();
    assert_eq!(printed, expected, "each of its events once, in order");
    assert!(
        proxy.dropped.load(Ordering::Relaxed) > 0,
        "the first consumer's deliveries were swallowed"
    );
    let log = watcher.stderr_log();
    assert!(log.contains("making it again"), "said why: {log}");
    assert!(
        log.contains("resumed after seq 0"),
        "from where it was: {log}"
    );
    // Nothing more: no copy of any event.
    let more = watcher.stdout.recv_timeout(Duration::from_secs(2));
    assert!(more.is_err(), "nothing more: {more:?}");
}
