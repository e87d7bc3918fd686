//! `testkit::nats::Cluster` against the real pinned nats-server: a 3-node JetStream cluster
//! starts, loses a node and takes it back, and the leader lookups read the servers' `/jsz`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testkit::nats::{Cluster, server};

#[test]
fn three_nodes_lose_one_and_take_it_back() {
    if server().is_none() {
        eprintln!("skipped: the pinned nats-server is not installed (run .ci/nats-server)");
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    eprintln!("3 nodes ready in {:?}", started.elapsed());

    let urls = cluster.urls();
    let urls: Vec<&str> = urls.split(',').collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(*url, cluster.url(i));
        assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
    }
    let meta = cluster
        .meta_leader()
        .expect("start waits for a meta leader");

    // Node 0 unless it leads the meta group: losing a follower must not cost an election
    // (several seconds), which the stream part below pays for once.
    let victim = if meta == 0 { 1 } else { 0 };
    cluster.kill(victim);
    assert!(!cluster.is_running(victim));
    let restarted = Instant::now();
    cluster.restart(victim);
    eprintln!("{} back in {:?}", cluster.name(victim), restarted.elapsed());
    assert!(cluster.is_running(victim));
    assert_eq!(
        cluster.meta_leader(),
        Some(meta),
        "a follower's return keeps the leader"
    );
    assert!(cluster.store_dir(victim).join("jetstream").is_dir());

    create_stream(&cluster.url(1), "ORDERS", 3);
    let leader = cluster.wait_stream_leader("ORDERS", Duration::from_secs(10));
    assert_eq!(cluster.stream_leader("NO_SUCH_STREAM"), None);
    // The survivors elect after a randomised timeout of a few seconds.
    cluster.kill(leader);
    let moved = Instant::now();
    let next = cluster.wait_stream_leader("ORDERS", Duration::from_secs(20));
    eprintln!(
        "stream leader moved from {leader} to {next} in {:?}",
        moved.elapsed()
    );
    assert_ne!(next, leader);
    eprintln!("whole test took {:?}", started.elapsed());
}

#[test]
fn one_server_pauses_stops_and_restarts() {
    if server().is_none() {
        eprintln!("skipped: the pinned nats-server is not installed (run .ci/nats-server)");
        return;
    }
    let mut single = Cluster::start(1);
    assert_eq!(single.urls(), single.url(0));
    assert_eq!(
        single.meta_leader(),
        None,
        "a single server has no meta group"
    );
    create_stream(&single.url(0), "EVENTS", 1);
    assert_eq!(single.stream_leader("EVENTS"), Some(0));

    single.signal(0, "STOP");
    assert!(single.is_running(0));
    assert_eq!(
        single.stream_leader("EVENTS"),
        None,
        "a paused server is not asked"
    );
    single.signal(0, "CONT");
    single.stop(0);
    assert!(!single.is_running(0));
    single.restart(0);
    assert_eq!(
        single.stream_leader("EVENTS"),
        Some(0),
        "the store outlives a restart"
    );
    assert!(single.log(0).contains("Server is ready"));
}

/// Creates a file stream with `replicas` replicas through the JetStream API on the plain NATS
/// protocol, so this test needs no client library: subscribe to an inbox, publish the request
/// with it as the reply subject, read the one reply.
fn create_stream(url: &str, name: &str, replicas: u32) {
    let addr = url.strip_prefix("nats://").expect("a nats:// URL");
    let mut stream = TcpStream::connect(addr).expect("connect to nats-server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone the socket"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("the server's INFO");
    assert!(line.starts_with("INFO "), "{line}");
    let body = format!(
        r#"{{"name":"{name}","subjects":["{name}.>"],"storage":"file","num_replicas":{replicas}}}"#
    );
    let request = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true,\"no_responders\":true}}\r\n\
         SUB _INBOX.create 1\r\n\
         PUB $JS.API.STREAM.CREATE.{name} _INBOX.create {}\r\n{body}\r\n",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("send the create request");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("the server's reply");
        if line.starts_with("PING") {
            stream.write_all(b"PONG\r\n").expect("answer PING");
        } else if line.starts_with("MSG ") || line.starts_with("HMSG ") {
            break;
        } else {
            assert!(!line.starts_with("-ERR"), "{line}");
        }
    }
    let size: usize = line
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a payload size in {line:?}"));
    let mut payload = vec![0; size + 2];
    reader.read_exact(&mut payload).expect("the reply payload");
    let reply = String::from_utf8_lossy(&payload);
    assert!(
        reply.contains("stream_create_response") && !reply.contains("\"error\""),
        "creating {name}: {line}{reply}"
    );
}
