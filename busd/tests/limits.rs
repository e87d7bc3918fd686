//! busd's limits against the real binary: a small first frame, a deadline for a started
//! frame, a memory budget for partly received frames, publisher slots of their own, and a
//! few KiB per idle subscriber.
//! Whatever clients do, busd's memory stays bounded and publishers keep being served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, ErrorCode, FrameCodec, Role, ServerFrame};
use testkit::bus::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedRead};

type Frames = FramedRead<OwnedReadHalf, FrameCodec<ServerFrame, ClientFrame>>;

/// A field of /proc/<pid>/status, in KiB (VmRSS: resident now; VmHWM: resident at peak).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The code of the next Error frame, or `None` if the connection closed without one.
async fn error_code(frames: &mut Frames) -> Option<ErrorCode> {
    loop {
        match frames.next().await {
            Some(Ok(ServerFrame::Error { code, .. })) => return Some(code),
            Some(Ok(ServerFrame::Heartbeat { .. })) => {}
            _ => return None,
        }
    }
}

/// Publishes one batch on a new publisher connection and waits for its PubAck.
async fn publisher_is_served(addr: std::net::SocketAddr, name: &str) {
    let (mut publisher, _, _) = join(addr, Role::Publisher, name).await;
    publish(&mut publisher, 1, vec![event(1, "served")]).await;
}

#[tokio::test]
async fn an_oversized_first_frame_is_refused() {
    let busd = Busd::start(&[]);
    let mut raw = TcpStream::connect(busd.addr).await.unwrap();
    raw.write_all(&(100u32 * 1024).to_be_bytes()).await.unwrap();
    raw.write_all(&[0; 100]).await.unwrap();
    let mut conn = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());
    let message = expect_error(&mut conn, ErrorCode::FrameTooLarge).await;
    assert!(
        message.contains("first frame must be a Hello under 4 KiB") && message.contains("102400"),
        "{message}"
    );
    publisher_is_served(busd.addr, "p").await;
}

#[tokio::test]
async fn a_stalled_frame_times_out_while_others_keep_publishing() {
    let busd = Busd::start(&["--frame-timeout", "1s"]);
    let (mut idle, _) = subscriber(busd.addr, accounts(&[7]), None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "busy").await;
    let (stalled, _, _) = join(busd.addr, Role::Publisher, "stalled").await;
    let mut raw = stalled.into_inner();
    let mut frame = bytes::BytesMut::new();
    let batch = ClientFrame::Publish {
        batch_id: 1,
        events: vec![event(7, &"x".repeat(200))],
    };
    protocol::encode_frame(&batch, &mut frame, usize::MAX).unwrap();
    raw.write_all(&frame[..frame.len() / 2]).await.unwrap();
    let started = Instant::now();
    let mut stalled = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());

    let timed_out = AtomicBool::new(false);
    let ((message, took), acks) = tokio::join!(
        async {
            let message = expect_error(&mut stalled, ErrorCode::FrameTimeout).await;
            timed_out.store(true, Ordering::Relaxed);
            (message, started.elapsed())
        },
        async {
            let mut acks = 0u64;
            while !timed_out.load(Ordering::Relaxed) {
                publish(&mut publisher, acks + 1, vec![event(1, "meanwhile")]).await;
                acks += 1;
            }
            acks
        },
    );
    assert!(message.contains("1s"), "{message}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "timed out after {took:?}"
    );
    assert!(acks >= 5, "only {acks} PubAcks while the frame was stalled");
    // Connections idle between frames, for longer than the frame timeout, are left alone.
    settle(&mut idle).await;
    publish(&mut publisher, acks + 1, vec![event(7, "after")]).await;
    let (got, _) = collect(&mut idle, 1).await;
    assert_eq!(
        got[0].1.data, "after",
        "the stalled frame was never published"
    );
}

#[tokio::test]
async fn partly_received_frames_stay_within_the_read_budget() {
    let busd = Busd::start(&[
        "--read-budget",
        "2MiB",
        "--max-frame",
        "1MiB",
        "--frame-timeout",
        "500ms",
    ]);
    let pid = busd.proc.id();
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "normal").await;
    publish(&mut publisher, 1, vec![event(1, "before")]).await;
    let before = status_kib(pid, "VmRSS");

    // Each announces a 1 MiB frame and sends all of it but the last byte.
    let mut stalled = Vec::new();
    let mut writers = Vec::new();
    for i in 0..20 {
        let (conn, _, _) = join(busd.addr, Role::Publisher, &format!("stalled-{i}")).await;
        let (rd, mut wr) = conn.into_inner().into_split();
        writers.push(tokio::spawn(async move {
            let _ = wr.write_all(&(1u32 << 20).to_be_bytes()).await;
            let _ = wr.write_all(&vec![2u8; (1 << 20) - 1]).await;
            wr // kept open: the frame stalls rather than ends
        }));
        stalled.push(Frames::new(rd, FrameCodec::default()));
    }
    // Small frames arrive whole and need no budget, however much the stalled ones hold.
    publish(&mut publisher, 2, vec![event(1, "meanwhile")]).await;

    let codes = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join_all(stalled.iter_mut().map(error_code)),
    )
    .await
    .expect("every stalled frame timed out");
    assert!(
        codes.iter().all(|c| *c == Some(ErrorCode::FrameTimeout)),
        "{codes:?}"
    );
    publish(&mut publisher, 3, vec![event(1, "after")]).await;

    let peak = status_kib(pid, "VmHWM");
    eprintln!("busd resident: {before} KiB before, {peak} KiB at peak");
    assert!(peak < 64 * 1024, "peak resident {peak} KiB");
    assert!(
        peak < before + 12 * 1024,
        "20 stalled 1 MiB frames took busd from {before} KiB to {peak} KiB"
    );
    drop(writers);
}

#[tokio::test]
async fn idle_subscribers_cannot_lock_out_a_publisher() {
    let busd = Busd::start(&["--max-connections", "5", "--max-publishers", "2"]);
    let mut subscribers = Vec::new();
    for _ in 0..5 {
        subscribers.push(subscriber(busd.addr, accounts(&[1]), None).await.0);
    }
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "ingest").await;
    publish(&mut publisher, 1, vec![event(1, "through")]).await;
    let stats = stats(&mut publisher).await;
    assert_eq!((stats.connections, stats.publishers), (6, 1));

    let mut sixth = connect(busd.addr).await;
    sixth
        .send(hello(Role::Subscriber, "sixth", None))
        .await
        .unwrap();
    let message = expect_error(&mut sixth, ErrorCode::TooManyConnections).await;
    assert!(message.contains("5 subscribers"), "{message}");
    let (got, _) = collect(&mut subscribers[0], 1).await;
    assert_eq!(got[0].1.data, "through");
}

#[tokio::test]
async fn publishers_have_a_limit_of_their_own() {
    let busd = Busd::start(&["--max-connections", "5", "--max-publishers", "2"]);
    let (mut first, _, _) = join(busd.addr, Role::Publisher, "a").await;
    let (mut second, _, _) = join(busd.addr, Role::Publisher, "b").await;
    let mut third = connect(busd.addr).await;
    third.send(hello(Role::Publisher, "c", None)).await.unwrap();
    let message = expect_error(&mut third, ErrorCode::TooManyConnections).await;
    assert!(message.contains("2 publishers"), "{message}");
    publish(&mut first, 1, vec![event(1, "a")]).await;
    publish(&mut second, 1, vec![event(1, "b")]).await;
}

#[tokio::test]
async fn the_accept_cap_counts_subscribers_and_publishers_together() {
    let busd = Busd::start(&["--max-connections", "1", "--max-publishers", "1"]);
    let (_sub, _, _) = join(busd.addr, Role::Subscriber, "s").await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    // Refused before Hello, with nothing sent.
    let mut third = connect(busd.addr).await;
    let message = expect_error(&mut third, ErrorCode::TooManyConnections).await;
    assert!(message.contains("2 connections"), "{message}");
    publish(&mut publisher, 1, vec![event(1, "p")]).await;
}

#[tokio::test]
async fn a_read_budget_below_the_frame_limit_is_raised_and_said() {
    let busd = Busd::start(&["--read-budget", "1KiB", "--max-frame", "64KiB"]);
    busd.proc
        .wait_stderr("raising it to --max-frame", Duration::from_secs(10));
    // A frame of more than the budget asked for still gets through.
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    publish(&mut publisher, 1, vec![event(1, &"x".repeat(20_000))]).await;
}

/// Idle subscribers hold no read or write buffers and a small task each: what lets one busd
/// keep 10,000 of them in a few tens of MiB. A state that holds a large local across an
/// await (a write's slice array, say) grows every subscriber's task and fails this.
#[tokio::test]
async fn an_idle_subscriber_costs_a_few_kib() {
    let busd = Busd::start(&[]);
    // The first ones grow the runtime and allocator once; measure after them.
    let mut subscribers = Vec::new();
    for i in 0..50u64 {
        subscribers.push(subscriber(busd.addr, accounts(&[i]), None).await.0);
    }
    let before = status_kib(busd.proc.id(), "VmRSS");
    let count = 700u64;
    for i in 0..count {
        subscribers.push(subscriber(busd.addr, accounts(&[i % 1000]), None).await.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = (status_kib(busd.proc.id(), "VmRSS") - before) as f64 / count as f64;
    // Fewer than 1,024 sockets in all, the usual open-file limit. About 4 KiB in a debug
    // build (3.6 KiB in release); 6.7 KiB with the slices unboxed.
    assert!(per < 5.0, "{per:.1} KiB per idle subscriber");
}
