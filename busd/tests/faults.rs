//! Bad peers against the real busd: each gets its Error frame or a close, and busd keeps
//! serving everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use futures::SinkExt;
use protocol::{ClientFrame, ErrorCode, Event, Filter, FrameCodec, Role, ServerFrame};
use testkit::bus::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// A publisher and a subscriber can still exchange an event.
async fn assert_still_serving(addr: SocketAddr) {
    let (mut sub, _) = subscriber(addr, accounts(&[424242]), None).await;
    let (mut publisher, _, _) = join(addr, Role::Publisher, "").await;
    publish(&mut publisher, 1, vec![event(424242, "still here")]).await;
    let (got, _) = collect(&mut sub, 1).await;
    assert_eq!(got[0].1.data, "still here");
}

#[tokio::test]
async fn a_reader_that_stalls_does_not_slow_others_and_gets_an_exact_gap() {
    let busd = Busd::start(&["--queue-events", "100"]);
    let mut slow = tiny_window_subscriber(busd.addr, Filter::All).await;
    let (mut healthy, _) = subscriber(busd.addr, Filter::All, None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let total = 20_000usize;
    let data = "y".repeat(1000);
    // Lock-step: each batch must reach the healthy subscriber while the slow one reads nothing.
    for batch in 0..(total / 100) as u64 {
        publish(
            &mut publisher,
            batch + 1,
            (0..100).map(|_| event(1, &data)).collect(),
        )
        .await;
        let (events, gaps) = collect(&mut healthy, 100).await;
        assert_eq!(events.len(), 100);
        assert!(gaps.is_empty(), "the healthy subscriber lost nothing");
    }

    let stats = stats(&mut publisher).await;
    let slow_stats = stats.subscribers.iter().find(|s| s.name == "slow").unwrap();
    assert!(
        slow_stats.dropped > 0,
        "the slow queue dropped its oldest events"
    );

    let mut delivered = 0u64;
    let mut missed = 0u64;
    let mut last_seq = 0;
    while last_seq < total as u64 {
        match next(&mut slow).await {
            ServerFrame::Events(events) => {
                for (seq, _) in events {
                    assert!(seq > last_seq, "in order, never twice");
                    last_seq = seq;
                    delivered += 1;
                }
            }
            ServerFrame::Gap {
                from_seq,
                to_seq,
                missed: n,
            } => {
                assert!(from_seq > last_seq && to_seq >= from_seq);
                last_seq = to_seq;
                missed += n;
            }
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        delivered + missed,
        total as u64,
        "every event delivered or counted in a gap"
    );
    assert_eq!(missed, slow_stats.dropped);
}

/// The same with events from 1 byte to 16 KiB on three accounts, of which the stalled
/// subscriber takes two: busd queues its events of a batch as runs, and the full queue cuts
/// them event by event. What arrives is each event whole, in order, once; the rest is
/// counted in gaps, exactly as many as busd says it dropped.
#[tokio::test]
async fn a_stalled_filtered_reader_gets_whole_events_of_every_size_and_an_exact_gap() {
    let busd = Busd::start(&["--queue-events", "100"]);
    let mut slow = tiny_window_subscriber(busd.addr, accounts(&[1, 2])).await;
    let (mut healthy, _) = subscriber(busd.addr, Filter::All, None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let mut random = random_below(0x9e37_79b9_7f4a_7c15);
    let mut sent = std::collections::HashMap::new();
    let mut matching = 0u64;
    for batch in 1..=100u64 {
        let events: Vec<Event> = (0..32)
            .map(|_| {
                let account = 1 + random(3);
                let len = 1usize << random(15);
                let fill = char::from(b'a' + random(26) as u8);
                event(account, &fill.to_string().repeat(len))
            })
            .collect();
        for e in &events {
            matching += u64::from(e.account_id != 3);
            sent.insert(e.id, (e.account_id, e.data.clone()));
        }
        publish(&mut publisher, batch, events).await;
        let (got, gaps) = collect(&mut healthy, 32).await;
        assert_eq!(got.len(), 32);
        assert!(gaps.is_empty(), "the healthy subscriber lost nothing");
    }

    let stats = stats(&mut publisher).await;
    let slow_stats = stats.subscribers.iter().find(|s| s.name == "slow").unwrap();
    assert!(slow_stats.dropped > 0, "the slow queue dropped events");
    let (mut delivered, mut missed, mut last_seq) = (0u64, 0u64, 0u64);
    while delivered + missed < matching {
        match next(&mut slow).await {
            ServerFrame::Events(events) => {
                for (seq, event) in events {
                    assert!(seq > last_seq, "in order, never twice");
                    last_seq = seq;
                    let expected = sent.get(&event.id).expect("an event that was sent");
                    assert_eq!(
                        (&event.account_id, &event.data),
                        (&expected.0, &expected.1),
                        "event {} arrives whole",
                        event.id
                    );
                    assert_ne!(event.account_id, 3, "only the accounts asked for");
                    delivered += 1;
                }
            }
            ServerFrame::Gap {
                from_seq,
                to_seq,
                missed: n,
            } => {
                assert!(from_seq > last_seq && to_seq >= from_seq);
                last_seq = to_seq;
                missed += n;
            }
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        delivered + missed,
        matching,
        "delivered or counted, no more"
    );
    assert_eq!(missed, slow_stats.dropped);
}

#[tokio::test]
async fn the_disconnect_policy_closes_a_slow_reader_with_an_error() {
    let busd = Busd::start(&["--queue-events", "50", "--slow-policy", "disconnect"]);
    let mut slow = tiny_window_subscriber(busd.addr, Filter::All).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let data = "z".repeat(1000);
    for batch in 0..100u64 {
        publish(
            &mut publisher,
            batch + 1,
            (0..50).map(|_| event(1, &data)).collect(),
        )
        .await;
    }
    let error = loop {
        match next_or_closed(&mut slow).await {
            Some(ServerFrame::Events(_)) => {}
            Some(ServerFrame::Error { code, .. }) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(error, ErrorCode::SlowConsumer);
    assert_still_serving(busd.addr).await;
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused_naming_both() {
    let busd = Busd::start(&[]);
    let mut conn = connect(busd.addr).await;
    let hello = ClientFrame::Hello {
        version: 99,
        role: Role::Subscriber,
        name: "old".into(),
        token: None,
        instance: 0,
    };
    conn.send(hello).await.unwrap();
    let message = expect_error(&mut conn, ErrorCode::VersionMismatch).await;
    assert!(
        message.contains("99") && message.contains(&protocol::PROTOCOL_VERSION.to_string()),
        "{message}"
    );

    // A future Hello that does not even decode as ours still learns about the version.
    let mut raw = TcpStream::connect(busd.addr).await.unwrap();
    raw.write_all(&[0, 0, 0, 4, ClientFrame::HELLO_TAG, 7, 0xff, 0xff])
        .await
        .unwrap();
    let mut conn = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());
    expect_error(&mut conn, ErrorCode::VersionMismatch).await;
    assert_still_serving(busd.addr).await;
}

#[tokio::test]
async fn no_hello_before_the_deadline_is_refused() {
    let busd = Busd::start(&["--hello-timeout", "300ms"]);
    let mut silent = connect(busd.addr).await;
    let start = tokio::time::Instant::now();
    expect_error(&mut silent, ErrorCode::HelloTimeout).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_still_serving(busd.addr).await;
}

#[tokio::test]
async fn the_first_frame_must_be_hello() {
    let busd = Busd::start(&[]);
    let mut conn = connect(busd.addr).await;
    conn.send(ClientFrame::Ping).await.unwrap();
    expect_error(&mut conn, ErrorCode::ExpectedHello).await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused() {
    let busd = Busd::start(&["--max-frame", "64KiB"]);
    let (conn, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let mut raw = conn.into_inner();
    raw.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    raw.write_all(&[2; 1000]).await.unwrap();
    let mut conn = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());
    let message = expect_error(&mut conn, ErrorCode::FrameTooLarge).await;
    assert!(
        message.contains("1048576") && message.contains("65536"),
        "{message}"
    );
    assert_still_serving(busd.addr).await;
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let busd = Busd::start(&[]);
    // An HTTP request sent to the bus port by mistake reads as a huge length prefix.
    let mut raw = TcpStream::connect(busd.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut conn = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());
    expect_error(&mut conn, ErrorCode::FrameTooLarge).await;
    // A plausible length with nonsense inside is malformed.
    let mut raw = TcpStream::connect(busd.addr).await.unwrap();
    raw.write_all(&[0, 0, 0, 3, 0xee, 0xff, 0xff])
        .await
        .unwrap();
    let mut conn = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());
    expect_error(&mut conn, ErrorCode::Malformed).await;
    // So is a Publish whose events do not parse, after a valid Hello.
    let (conn, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let mut raw = conn.into_inner();
    raw.write_all(&[0, 0, 0, 4, ClientFrame::PUBLISH_TAG, 1, 1, 0x80])
        .await
        .unwrap();
    let mut conn = Framed::new(raw, FrameCodec::<ServerFrame, ClientFrame>::default());
    expect_error(&mut conn, ErrorCode::Malformed).await;
    assert_still_serving(busd.addr).await;
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_frame_harms_nobody() {
    let busd = Busd::start(&[]);
    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    let (conn, _, _) = join(busd.addr, Role::Publisher, "cut").await;
    let mut raw = conn.into_inner();
    let mut frame = bytes::BytesMut::new();
    let batch = ClientFrame::Publish {
        batch_id: 1,
        events: vec![event(1, "never")],
    };
    protocol::encode_frame(&batch, &mut frame, usize::MAX).unwrap();
    raw.write_all(&frame[..frame.len() - 3]).await.unwrap();
    drop(raw);
    assert_still_serving(busd.addr).await;
    // The cut batch was never published.
    let (got, _) = collect(&mut sub, 1).await;
    assert_eq!(got[0].1.data, "still here");
    let stats = stats(&mut sub).await;
    assert_eq!(stats.published, 1);
}

#[tokio::test]
async fn roles_are_enforced() {
    let busd = Busd::start(&[]);
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    publisher
        .send(ClientFrame::Subscribe {
            filter: Filter::All,
            resume_after: None,
        })
        .await
        .unwrap();
    expect_error(&mut publisher, ErrorCode::NotPermitted).await;

    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    sub.send(ClientFrame::Publish {
        batch_id: 1,
        events: vec![event(1, "sneaky")],
    })
    .await
    .unwrap();
    expect_error(&mut sub, ErrorCode::NotPermitted).await;

    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    assert_still_serving(busd.addr).await;
    let (got, _) = collect(&mut sub, 1).await;
    assert_eq!(
        got[0].1.data, "still here",
        "the refused Publish was not published"
    );
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    let busd = Busd::start(&["--token", "s3cret"]);
    let mut conn = connect(busd.addr).await;
    conn.send(hello(Role::Subscriber, "s", Some("guess")))
        .await
        .unwrap();
    expect_error(&mut conn, ErrorCode::Unauthorized).await;
    let mut conn = connect(busd.addr).await;
    conn.send(hello(Role::Subscriber, "s", None)).await.unwrap();
    expect_error(&mut conn, ErrorCode::Unauthorized).await;
    let mut conn = connect(busd.addr).await;
    conn.send(hello(Role::Subscriber, "s", Some("s3cret")))
        .await
        .unwrap();
    assert!(matches!(next(&mut conn).await, ServerFrame::Welcome { .. }));
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let busd = Busd::start(&["--max-connections", "2"]);
    let (mut first, _, _) = join(busd.addr, Role::Subscriber, "a").await;
    let (_second, _, _) = join(busd.addr, Role::Subscriber, "b").await;
    // Accepted (publishers have slots of their own), but refused once it says Subscriber.
    let mut third = connect(busd.addr).await;
    third
        .send(hello(Role::Subscriber, "c", None))
        .await
        .unwrap();
    let message = expect_error(&mut third, ErrorCode::TooManyConnections).await;
    assert!(message.contains("2 subscribers"), "{message}");
    settle(&mut first).await;
}

#[tokio::test]
async fn a_filter_over_the_limit_is_refused() {
    let busd = Busd::start(&["--max-filter", "10"]);
    let (mut sub, _, _) = join(busd.addr, Role::Subscriber, "s").await;
    let filter = Filter::Accounts((0..11).collect());
    sub.send(ClientFrame::Subscribe {
        filter,
        resume_after: None,
    })
    .await
    .unwrap();
    expect_error(&mut sub, ErrorCode::FilterTooLarge).await;
    assert_still_serving(busd.addr).await;
}

#[tokio::test]
async fn bad_flags_exit_with_usage_errors() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_busd"))
        .args(["--queue-events", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--queue-events"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_busd"))
        .args(["--listen", "256.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "not an address: a bad argument"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_busd"))
        .args(["--listen", &addr, "--state-file", ""])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "taken: cannot serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_empty_token_means_no_token() {
    // As an unset variable in a compose file passes it.
    let busd = Busd::start(&["--token", ""]);
    let mut conn = connect(busd.addr).await;
    conn.send(hello(Role::Subscriber, "s", None)).await.unwrap();
    assert!(matches!(next(&mut conn).await, ServerFrame::Welcome { .. }));
}

/// A publisher that pipelines batches and never reads its acks, with a tiny receive
/// buffer: once busd's acks to it back up, busd stops reading it, and every event busd
/// took from it before that still reaches the subscribers.
#[tokio::test]
async fn a_publisher_that_never_reads_its_acks_holds_back_no_subscriber() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let busd = Busd::start(&["--queue-events", "10000000"]);
    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    let (received, missed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counting = {
        let (received, missed) = (received.clone(), missed.clone());
        tokio::spawn(async move {
            while let Some(frame) = next_or_closed(&mut sub).await {
                match frame {
                    ServerFrame::Events(events) => received.fetch_add(events.len() as u64, Relaxed),
                    ServerFrame::Gap { missed: n, .. } => missed.fetch_add(n, Relaxed),
                    _ => 0,
                };
            }
        })
    };
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(busd.addr).await.unwrap();
    let mut deaf = Framed::new(stream, FrameCodec::default());
    deaf.send(hello(Role::Publisher, "deaf", None))
        .await
        .unwrap();
    assert!(matches!(next(&mut deaf).await, ServerFrame::Welcome { .. }));
    // Until busd stops taking batches (its acks fill both socket buffers) or 20 s.
    let started = std::time::Instant::now();
    let mut batch_id = 0;
    while started.elapsed() < Duration::from_secs(20) {
        batch_id += 1;
        let frame = ClientFrame::Publish {
            batch_id,
            events: vec![event(batch_id % 7, "z")],
        };
        if tokio::time::timeout(Duration::from_secs(1), deaf.send(frame))
            .await
            .is_err()
        {
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "busd kept reading a publisher that reads no acks ({batch_id} batches)"
    );
    let (mut watcher, _, _) = join(busd.addr, Role::Subscriber, "").await;
    let published = stats(&mut watcher).await.published;
    assert!(published > 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.load(Relaxed) < published && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (received.load(Relaxed), missed.load(Relaxed)),
        (published, 0),
        "every event busd took from the publisher reaches the subscriber"
    );
    counting.abort();
}
