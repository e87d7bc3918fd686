//! The faults that used to lose accepted events silently, against real processes: a backlog
//! larger than one frame, events as large as `--max-data`, a frozen busd, a busd that
//! refuses ingest, a buffer bounded in bytes, and a shutdown that could not drain.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::{Filter, Position, Role, ServerFrame};
use support::*;
use testkit::bus::{Busd, join, next, subscriber};
use testkit::free_port;
use testkit::http::{Client, get};

/// Data of `len` bytes that starts with a unique `tag`, made of unreserved characters.
fn data(tag: usize, len: usize) -> String {
    let mut data = format!("{tag}-");
    let filler = len.saturating_sub(data.len());
    data.extend(std::iter::repeat_n('x', filler));
    data
}

/// Sends every `(account, data)` pipelined 64 at a time over `connections` connections;
/// returns the data answered 202. A 503 is left out; any other status fails the test.
async fn blast(at: SocketAddr, events: Vec<(u64, String)>, connections: usize) -> Vec<String> {
    let chunk = events.len().div_ceil(connections).max(1);
    let tasks: Vec<_> = events
        .chunks(chunk)
        .map(|part| tokio::spawn(pipeline(at, part.to_vec())))
        .collect();
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.expect("sender"));
    }
    accepted
}

async fn pipeline(at: SocketAddr, events: Vec<(u64, String)>) -> Vec<String> {
    let mut client = Client::connect(at).await;
    let mut accepted = Vec::new();
    for group in events.chunks(64) {
        let mut requests = String::new();
        for (account, data) in group {
            requests.push_str(&format!(
                "GET /{account}?data={data} HTTP/1.1\r\nHost: t\r\n\r\n"
            ));
        }
        client.send_raw(requests.as_bytes()).await;
        for (_, data) in group {
            let reply = client.read_reply(false).await.expect("a reply");
            match reply.status {
                202 => accepted.push(data.clone()),
                503 => {}
                other => panic!("unexpected {other}: {}", reply.body),
            }
        }
    }
    accepted
}

/// Reads events from `sub` until every one of `wanted` arrived; fails on a gap, a copy or
/// silence.
async fn expect_all(sub: &mut testkit::bus::Conn, wanted: &[String]) {
    let mut left: HashMap<&str, ()> = wanted.iter().map(|d| (d.as_str(), ())).collect();
    while !left.is_empty() {
        match next(sub).await {
            ServerFrame::Events(events) => {
                for (_, event) in events {
                    assert!(
                        left.remove(event.data.as_str()).is_some(),
                        "an event not expected, or twice: {:.40}",
                        event.data
                    );
                }
            }
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("expected events, got {other:?} with {} left", left.len()),
        }
    }
}

async fn wait_ready(at: SocketAddr, status: u16) {
    let start = Instant::now();
    while get(at, "/readyz").await.status != status {
        assert!(start.elapsed() < WAIT, "/readyz never became {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_backlog_of_many_frames_drains_once_busd_comes() {
    let listen = format!("127.0.0.1:{}", free_port());
    let ingest = Ingest::start(&["--bus", &listen]);
    // About 12 MB, a dozen frames' worth, of events from 1 byte to --max-data.
    let events: Vec<(u64, String)> = (0..6000)
        .map(|i| (1 + (i % 9) as u64, data(i, 1 + (i * 997) % 4096)))
        .collect();
    let accepted = blast(ingest.http, events, 4).await;
    assert_eq!(accepted.len(), 6000, "all buffered while busd is away");

    let busd = Busd::start_on(&listen, &[]);
    let (_, epoch, _) = join(busd.addr, Role::Subscriber, "peek").await;
    let from_start = Some(Position { epoch, seq: 0 });
    let (mut sub, _) = subscriber(busd.addr, Filter::All, from_start).await;
    expect_all(&mut sub, &accepted).await;
    wait_ready(ingest.http, 200).await;
}

#[tokio::test]
async fn events_at_the_size_limit_flow_at_full_rate() {
    let ingest = Ingest::start(&[]);
    let (mut sub, _) = subscriber(ingest.bus.expect("embedded"), Filter::All, None).await;
    let events: Vec<(u64, String)> = (0..5000)
        .map(|i| (1 + (i % 9) as u64, data(i, 4096)))
        .collect();
    let accepted = blast(ingest.http, events, 8).await;
    assert_eq!(accepted.len(), 5000);
    expect_all(&mut sub, &accepted).await;
}

#[tokio::test]
async fn max_data_that_no_batch_can_carry_is_refused_at_start() {
    expect_refused_start(&["--max-data", "2000000"], "--max-data 2000000");
}

#[tokio::test]
async fn a_frozen_busd_is_noticed_and_nothing_is_lost() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let ingest = Ingest::start(&["--bus", &bus, "--bus-timeout", "1s"]);
    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    wait_ready(ingest.http, 200).await;

    busd.signal("STOP");
    let events: Vec<(u64, String)> = (0..500)
        .map(|i| (1 + (i % 9) as u64, data(i, 100)))
        .collect();
    let accepted = blast(ingest.http, events, 2).await;
    wait_ready(ingest.http, 503).await;
    ingest.proc.wait_stderr("busd did not answer for 1s", WAIT);
    let metrics = get(ingest.http, "/metrics").await.body;
    assert!(metrics.contains("tracker_ingest_bus_up 0"), "{metrics}");

    busd.signal("CONT");
    wait_ready(ingest.http, 200).await;
    expect_all(&mut sub, &accepted).await;
}

#[tokio::test]
async fn a_wrong_token_stops_ingest_at_start() {
    let busd = Busd::start(&["--token", "right"]);
    let bus = busd.addr.to_string();
    expect_refused_start(&["--bus", &bus, "--bus-token", "wrong"], "Unauthorized");
}

#[tokio::test]
async fn a_second_ingest_with_the_same_origin_is_refused() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let first = Ingest::start(&["--bus", &bus, "--origin", "twin"]);
    wait_ready(first.http, 200).await;
    expect_refused_start(&["--bus", &bus, "--origin", "twin"], "NameInUse");
    // The first keeps publishing, and nothing of its is taken for a duplicate.
    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    let events: Vec<(u64, String)> = (0..200)
        .map(|i| (1 + (i % 9) as u64, data(i, 10)))
        .collect();
    let accepted = blast(first.http, events, 2).await;
    assert_eq!(accepted.len(), 200);
    expect_all(&mut sub, &accepted).await;
}

#[tokio::test]
async fn the_buffer_is_bounded_in_bytes() {
    let listen = format!("127.0.0.1:{}", free_port());
    let ingest = Ingest::start(&["--bus", &listen, "--buffer-bytes", "1MiB"]);
    let events: Vec<(u64, String)> = (0..1000)
        .map(|i| (1 + (i % 9) as u64, data(i, 4000)))
        .collect();
    let accepted = blast(ingest.http, events, 1).await;
    // 1 MiB holds about 262 events of 4,000 bytes; the rest got 503.
    assert!((250..=270).contains(&accepted.len()), "{}", accepted.len());
    let metrics = get(ingest.http, "/metrics").await.body;
    let bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tracker_ingest_buffer_bytes "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("buffer_bytes in /metrics");
    assert!((1 << 20..(1 << 20) + 8192).contains(&bytes), "{bytes}");

    let busd = Busd::start_on(&listen, &[]);
    let (_, epoch, _) = join(busd.addr, Role::Subscriber, "peek").await;
    let from_start = Some(Position { epoch, seq: 0 });
    let (mut sub, _) = subscriber(busd.addr, Filter::All, from_start).await;
    expect_all(&mut sub, &accepted).await;
}

#[tokio::test]
async fn a_shutdown_that_loses_events_says_so_and_fails() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut ingest = Ingest::start(&["--bus", &listen, "--drain-timeout", "500ms"]);
    let accepted = send(ingest.http, "doomed", 10).await;
    assert_eq!(accepted.len(), 10);
    ingest.proc.signal("TERM");
    let status = ingest.proc.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    ingest
        .proc
        .wait_stderr("10 accepted events were lost", WAIT);
}
