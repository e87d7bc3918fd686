//! Writes the seed corpora under `fuzz/corpus/<target>/`, from the inputs the tests use:
//! requests (pipelined, percent-encoded, HEAD, refused), client frames and server frames.
//!
//! Run from the repository root: `cargo run --manifest-path fuzz/Cargo.toml --bin seeds`.
//! The output is deterministic, so running it again changes nothing unless this file did.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use bytes::BytesMut;
use protocol::{
    ClientFrame, ErrorCode, Event, Filter, PROTOCOL_VERSION, Position, Role, ServerFrame, Stats,
    SubscriberStats, encode_frame, publish,
};

/// The control byte of the stream targets: every byte in one read.
const WHOLE: u8 = 0;
/// The control byte for one byte per read (`http_read` keeps the stopping flag in bit 0).
const HTTP_BYTEWISE: u8 = 1 << 1;
const HTTP_STOPPING: u8 = 1;
const FRAMES_BYTEWISE: u8 = 1;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write_all(&root.join("http_read"), http_seeds())?;
    write_all(&root.join("busd_frames"), busd_seeds())?;
    write_all(&root.join("client_frames"), client_seeds())?;
    write_all(&root.join("events_roundtrip"), events_seeds())?;
    Ok(())
}

/// Replaces the seeds in `dir` with `seeds`, one file each, named after what they hold.
fn write_all(dir: &Path, seeds: Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    for (name, bytes) in &seeds {
        fs::write(dir.join(name), bytes)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

/// A seed of a stream target: the control byte, then the stream.
fn seed(name: &str, control: u8, stream: &[u8]) -> (String, Vec<u8>) {
    let mut bytes = vec![control];
    bytes.extend_from_slice(stream);
    (name.to_owned(), bytes)
}

/// The entry of `list` called `name`, so variants can refer to a seed by its name.
fn named<'a, T>(list: &'a [(&str, T)], name: &str) -> &'a T {
    &list
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a seed of that name")
        .1
}

/// Requests from ingest's tests, and one of each outcome `route` can give.
fn http_seeds() -> Vec<(String, Vec<u8>)> {
    let long_uri = format!("GET /5?data={} HTTP/1.1\r\n\r\n", "a".repeat(1100));
    let long_header = format!("GET /5?data=x HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1100));
    let many_headers = format!("GET /5?data=x HTTP/1.1\r\n{}\r\n", "a: 1\r\n".repeat(9));
    let too_long_data = format!("GET /5?data={} HTTP/1.1\r\n\r\n", "d".repeat(65));
    let max_data_encoded = format!("GET /5?data={} HTTP/1.1\r\n\r\n", "%41".repeat(64));
    let requests: Vec<(&str, String)> = vec![
        ("get", "GET /5?data=hello HTTP/1.1\r\nHost: a\r\n\r\n".into()),
        ("get_plus_percent", "GET /5?data=caf%C3%A9+au+lait+%E2%82%AC HTTP/1.1\r\nHost: ingest\r\n\r\n".into()),
        ("get_second_param", "GET /1?x=1&data=%E2%82%AC%2B HTTP/1.1\r\n\r\n".into()),
        ("get_data_twice", "GET /1?data=first&data=second HTTP/1.1\r\n\r\n".into()),
        ("get_empty_data", "GET /1?data HTTP/1.1\r\n\r\n".into()),
        ("get_not_utf8", "GET /1?data=%FF HTTP/1.1\r\n\r\n".into()),
        ("get_cut_utf8", "GET /1?data=%C3 HTTP/1.1\r\n\r\n".into()),
        ("get_missing_data", "GET /1?dat=1 HTTP/1.1\r\n\r\n".into()),
        ("get_data_too_long", too_long_data),
        ("get_data_max_encoded", max_data_encoded),
        ("get_inactive", "GET /10?data=x HTTP/1.1\r\n\r\n".into()),
        ("get_unknown", "GET /999?data=x HTTP/1.1\r\n\r\n".into()),
        ("get_big_account", "GET /9223372036854775807?data=x HTTP/1.1\r\n\r\n".into()),
        ("get_id_overflow", "GET /18446744073709551616?data=x HTTP/1.1\r\n\r\n".into()),
        ("get_bad_id", "GET /%31?data=x HTTP/1.1\r\n\r\n".into()),
        ("get_leading_zeros", "GET /007?data=x HTTP/1.1\r\n\r\n".into()),
        ("head", "HEAD /5?data=x HTTP/1.1\r\n\r\n".into()),
        ("head_root", "HEAD / HTTP/1.1\r\n\r\n".into()),
        ("delete", "DELETE / HTTP/1.1\r\n\r\n".into()),
        ("post_chunked", "POST /1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
        ("content_length_3", "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".into()),
        ("content_length_x", "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".into()),
        ("content_length_0", "GET /5?data=x HTTP/1.1\r\nContent-Length: 0\r\n\r\n".into()),
        ("transfer_encoding", "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into()),
        ("http10", "GET /1?data=x HTTP/1.0\r\n\r\n".into()),
        ("http10_keep_alive", "GET /1?data=x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2?data=y HTTP/1.0\r\n\r\n".into()),
        ("connection_close", "GET /1?data=x HTTP/1.1\r\nConnection: close\r\n\r\nGET /1?data=y HTTP/1.1\r\n\r\n".into()),
        ("connection_list", "GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n".into()),
        ("healthz", "GET /healthz HTTP/1.1\r\n\r\n".into()),
        ("readyz", "GET /readyz HTTP/1.1\r\n\r\n".into()),
        ("metrics", "GET /metrics HTTP/1.1\r\n\r\n".into()),
        ("pipelined", "GET /5?data=a HTTP/1.1\r\nHost: a\r\n\r\nHEAD /6?data=b HTTP/1.1\r\n\r\nGET /7?data=c+d HTTP/1.1\r\n\r\nGET /6".into()),
        ("pipelined_then_bad", "GET /5?data=a HTTP/1.1\r\n\r\nDELETE / HTTP/1.1\r\n\r\n\u{1}garbage\r\n\r\n".into()),
        ("partial", "GET /5 HTTP/1.1\r\nHost:".into()),
        ("long_uri", long_uri),
        ("long_header", long_header),
        ("many_headers", many_headers),
        ("garbage", "\u{1}garbage\r\n\r\n".into()),
    ];
    let mut seeds = Vec::new();
    for (name, request) in &requests {
        seeds.push(seed(name, WHOLE, request.as_bytes()));
    }
    for name in ["pipelined", "partial", "get_plus_percent", "long_header"] {
        let request = named(&requests, name);
        seeds.push(seed(
            &format!("{name}_bytewise"),
            HTTP_BYTEWISE,
            request.as_bytes(),
        ));
    }
    let pipelined = named(&requests, "pipelined");
    seeds.push(seed(
        "pipelined_stopping",
        HTTP_STOPPING,
        pipelined.as_bytes(),
    ));
    seeds
}

/// One event per interesting shape of the strings and numbers.
fn events() -> Vec<Event> {
    let event = |account_id, timestamp_us, data: &str, origin: &str, id| Event {
        account_id,
        timestamp_us,
        data: data.into(),
        origin: origin.into(),
        id,
    };
    vec![
        event(5, 1_795_341_600_123_456, "hello world", "ingest-1", 1),
        event(1, 0, "", "", 0),
        event(
            u64::MAX,
            u64::MAX,
            "a \"quoted\" é €",
            "127.0.0.1:8080",
            u64::MAX,
        ),
        event(
            127,
            128,
            "line\nbreak\r\t\u{0}\u{7f}\u{85}\u{2028}",
            "o",
            16_384,
        ),
        event(
            42,
            253_402_300_799_999_999,
            "{\"json\":[1,2]}",
            "ingest-2",
            2,
        ),
    ]
}

/// Frames with their length prefixes, back to back.
fn stream<T: serde::Serialize>(frames: &[T]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for frame in frames {
        encode_frame(frame, &mut out, usize::MAX).expect("a seed frame encodes");
    }
    out.to_vec()
}

/// What publishers and subscribers send busd, as the tests send it.
fn busd_seeds() -> Vec<(String, Vec<u8>)> {
    let hello = |role, token: Option<&str>| ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role,
        name: "ingest-1".into(),
        token: token.map(str::to_owned),
        instance: 0x1234_5678_9abc_def0,
    };
    let publish = |batch_id, events: Vec<Event>| ClientFrame::Publish { batch_id, events };
    let subscribe = ClientFrame::Subscribe {
        filter: Filter::Accounts(BTreeSet::from([1, 5, u64::MAX])),
        resume_after: Some(Position { epoch: 7, seq: 42 }),
    };
    let frames: Vec<(&str, Vec<ClientFrame>)> = vec![
        ("hello_publisher", vec![hello(Role::Publisher, None)]),
        (
            "hello_subscriber_token",
            vec![hello(Role::Subscriber, Some("secret"))],
        ),
        (
            "subscribe_all",
            vec![ClientFrame::Subscribe {
                filter: Filter::All,
                resume_after: None,
            }],
        ),
        ("subscribe_accounts", vec![subscribe.clone()]),
        ("publish_empty", vec![publish(1, vec![])]),
        ("publish_one", vec![publish(2, events()[..1].to_vec())]),
        ("publish_all", vec![publish(u64::MAX, events())]),
        ("ping", vec![ClientFrame::Ping]),
        ("stats_request", vec![ClientFrame::StatsRequest]),
        (
            "publisher_session",
            vec![
                hello(Role::Publisher, None),
                publish(1, events()),
                publish(2, events()[2..].to_vec()),
                ClientFrame::Ping,
                ClientFrame::StatsRequest,
            ],
        ),
        (
            "subscriber_session",
            vec![hello(Role::Subscriber, None), subscribe, ClientFrame::Ping],
        ),
    ];
    let mut seeds = Vec::new();
    for (name, frames) in &frames {
        seeds.push(seed(name, WHOLE, &stream(frames)));
    }
    seeds.push(seed(
        "publisher_session_bytewise",
        FRAMES_BYTEWISE,
        &stream(named(&frames, "publisher_session").as_slice()),
    ));
    // A batch as ingest's outbox encodes it, by hand.
    let mut events_bytes = BytesMut::new();
    for e in events() {
        publish::encode_event(
            &mut events_bytes,
            e.account_id,
            e.timestamp_us,
            &e.data,
            &e.origin,
            e.id,
        );
    }
    let mut hand = BytesMut::new();
    publish::encode_frame(&mut hand, 9, events().len() as u64, &events_bytes);
    seeds.push(seed("publish_hand_encoded", WHOLE, &hand));
    let mut old_hello = stream(&[hello(Role::Publisher, None)]);
    old_hello[5] = 1;
    seeds.push(seed("hello_old_version", WHOLE, &old_hello));
    let whole = stream(&[publish(3, events())]);
    seeds.push(seed("publish_truncated", WHOLE, &whole[..whole.len() - 3]));
    seeds.push(seed("over_the_limit", WHOLE, &[0, 0x10, 0, 1, 2]));
    seeds.push(seed("at_the_limit", WHOLE, &[0, 0x10, 0, 0, 2]));
    seeds
}

/// What busd sends busctl, as the tests see it.
fn client_seeds() -> Vec<(String, Vec<u8>)> {
    let welcome = |follows| ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
        epoch: 1_795_341_600,
        head_seq: 41,
        max_frame: 1 << 20,
        follows,
    };
    let numbered: Vec<(u64, Event)> = events()
        .into_iter()
        .zip(42..)
        .map(|(e, s)| (s, e))
        .collect();
    let stats = ServerFrame::Stats(Stats {
        epoch: 3,
        head_seq: 99,
        connections: 2,
        subscribers: vec![SubscriberStats {
            id: 1,
            name: "busctl-watch-7".into(),
            accounts: Some(2),
            queue_depth: 0,
            delivered: 10,
            dropped: 1,
        }],
        ..Stats::default()
    });
    let gap = ServerFrame::Gap {
        from_seq: 10,
        to_seq: 19,
        missed: 4,
    };
    let error = |code| ServerFrame::Error {
        code,
        message: "refused\nfor a reason".into(),
    };
    let frames: Vec<(&str, Vec<ServerFrame>)> = vec![
        ("welcome", vec![welcome(None)]),
        (
            "welcome_follows",
            vec![welcome(Some(Position { epoch: 1, seq: 40 }))],
        ),
        ("events", vec![ServerFrame::Events(numbered.clone())]),
        ("gap", vec![gap.clone()]),
        (
            "gap_extremes",
            vec![ServerFrame::Gap {
                from_seq: 0,
                to_seq: u64::MAX,
                missed: u64::MAX,
            }],
        ),
        ("pub_ack", vec![ServerFrame::PubAck { batch_id: 7 }]),
        (
            "heartbeat_pong",
            vec![ServerFrame::Heartbeat { head_seq: 41 }, ServerFrame::Pong],
        ),
        ("stats", vec![stats]),
        (
            "goodbye",
            vec![ServerFrame::Goodbye {
                epoch: 1_795_341_600,
                last_seq: 46,
            }],
        ),
        ("error_version", vec![error(ErrorCode::VersionMismatch)]),
        ("error_slow", vec![error(ErrorCode::SlowConsumer)]),
        ("error_name", vec![error(ErrorCode::FrameTimeout)]),
        (
            "watch_session",
            vec![
                welcome(None),
                ServerFrame::Events(numbered[..2].to_vec()),
                ServerFrame::Heartbeat { head_seq: 43 },
                gap,
                ServerFrame::Events(numbered[2..].to_vec()),
                ServerFrame::Goodbye {
                    epoch: 1_795_341_600,
                    last_seq: 46,
                },
            ],
        ),
    ];
    let mut seeds = Vec::new();
    for (name, frames) in &frames {
        seeds.push(seed(name, WHOLE, &stream(frames)));
    }
    seeds.push(seed(
        "watch_session_bytewise",
        FRAMES_BYTEWISE,
        &stream(named(&frames, "watch_session").as_slice()),
    ));
    seeds.push(seed("over_the_limit", WHOLE, &[4, 0, 0, 1, 1]));
    seeds
}

/// Raw bytes for the structured target: `arbitrary` reads any bytes, and these give it the
/// varints and strings of real events to start from.
fn events_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (i, event) in events().iter().enumerate() {
        let bytes = postcard::to_allocvec(event).expect("an event encodes");
        seeds.push((format!("event_{i}"), bytes));
    }
    let all: Vec<(u64, Event)> = events().into_iter().zip(1..).map(|(e, s)| (s, e)).collect();
    seeds.push((
        "events".into(),
        postcard::to_allocvec(&all).expect("events encode"),
    ));
    seeds.push(("empty".into(), Vec::new()));
    seeds
}
