use std::collections::BTreeSet;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::*;

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        any::<u64>(),
        ".{0,64}",
        ".{0,16}",
        any::<u64>(),
    )
        .prop_map(|(account_id, timestamp_us, data, origin, id)| Event {
            account_id,
            timestamp_us,
            data,
            origin,
            id,
        })
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let filter = prop_oneof![
        Just(Filter::All),
        proptest::collection::btree_set(any::<u64>(), 0..50).prop_map(Filter::Accounts),
    ];
    let position = (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Position { epoch, seq });
    prop_oneof![
        (
            any::<u32>(),
            any::<bool>(),
            ".{0,20}",
            proptest::option::of(".{0,20}"),
            any::<u64>(),
        )
            .prop_map(
                |(version, publisher, name, token, instance)| ClientFrame::Hello {
                    version,
                    role: if publisher {
                        Role::Publisher
                    } else {
                        Role::Subscriber
                    },
                    name,
                    token,
                    instance,
                }
            ),
        (filter, proptest::option::of(position)).prop_map(|(filter, resume_after)| {
            ClientFrame::Subscribe {
                filter,
                resume_after,
            }
        }),
        (any::<u64>(), proptest::collection::vec(event(), 0..20))
            .prop_map(|(batch_id, events)| ClientFrame::Publish { batch_id, events }),
        Just(ClientFrame::Ping),
        Just(ClientFrame::StatsRequest),
        (
            filter_again(),
            proptest::collection::btree_set(".{0,10}", 0..4),
            prop_oneof![
                Just(Start::Head),
                (any::<u64>(), any::<u64>())
                    .prop_map(|(epoch, seq)| Start::After(Position { epoch, seq })),
                any::<u64>().prop_map(Start::Last),
                any::<u64>().prop_map(Start::Since),
                Just(Start::Beginning),
            ],
        )
            .prop_map(|(filter, origins, start)| ClientFrame::SubscribeWith {
                filter,
                origins,
                start
            }),
        Just(ClientFrame::PublisherStatsRequest),
    ]
}

fn filter_again() -> impl Strategy<Value = Filter> {
    prop_oneof![
        Just(Filter::All),
        proptest::collection::btree_set(any::<u64>(), 0..50).prop_map(Filter::Accounts),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let code = prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::FrameTooLarge),
        Just(ErrorCode::SlowConsumer),
        Just(ErrorCode::ShuttingDown),
        Just(ErrorCode::NameInUse),
        Just(ErrorCode::FrameTimeout),
    ];
    let subscriber = (
        any::<u64>(),
        ".{0,10}",
        proptest::option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(|(id, name, accounts, queue_depth)| SubscriberStats {
            id,
            name,
            accounts,
            queue_depth,
            delivered: id ^ queue_depth,
            dropped: queue_depth / 2,
        });
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of((any::<u64>(), any::<u64>()))
        )
            .prop_map(|(version, epoch, head_seq, max_frame, follows)| {
                ServerFrame::Welcome {
                    version,
                    epoch,
                    head_seq,
                    max_frame,
                    follows: follows.map(|(epoch, seq)| Position { epoch, seq }),
                }
            }),
        proptest::collection::vec((any::<u64>(), event()), 0..20).prop_map(ServerFrame::Events),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(from_seq, to_seq, missed)| {
            ServerFrame::Gap {
                from_seq,
                to_seq,
                missed,
            }
        }),
        any::<u64>().prop_map(|batch_id| ServerFrame::PubAck { batch_id }),
        any::<u64>().prop_map(|head_seq| ServerFrame::Heartbeat { head_seq }),
        Just(ServerFrame::Pong),
        (any::<u64>(), proptest::collection::vec(subscriber, 0..4)).prop_map(
            |(published, subscribers)| ServerFrame::Stats(Stats {
                published,
                subscribers,
                ..Stats::default()
            })
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(epoch, last_seq)| ServerFrame::Goodbye { epoch, last_seq }),
        (code, ".{0,40}").prop_map(|(code, message)| ServerFrame::Error { code, message }),
        proptest::collection::vec((".{0,10}", any::<bool>(), any::<u64>()), 0..4).prop_map(
            |publishers| ServerFrame::PublisherStats(
                publishers
                    .into_iter()
                    .map(|(name, connected, events)| PublisherStats {
                        name,
                        connected,
                        batches: events / 3,
                        events,
                        duplicate_batches: events % 5,
                    })
                    .collect()
            )
        ),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(frames in proptest::collection::vec(client_frame(), 1..8)) {
        let mut codec = FrameCodec::<ClientFrame, ClientFrame>::default();
        let mut buf = BytesMut::new();
        for frame in &frames {
            codec.encode(frame.clone(), &mut buf).unwrap();
        }
        for frame in &frames {
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame.clone()));
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn server_frames_round_trip(frames in proptest::collection::vec(server_frame(), 1..8)) {
        let mut codec = FrameCodec::<ServerFrame, ServerFrame>::default();
        let mut buf = BytesMut::new();
        for frame in &frames {
            codec.encode(frame.clone(), &mut buf).unwrap();
        }
        for frame in &frames {
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame.clone()));
        }
    }

    #[test]
    fn truncated_input_waits_then_errors_at_eof(frame in client_frame(), cut in any::<prop::sample::Index>()) {
        let mut whole = BytesMut::new();
        encode_frame(&frame, &mut whole, DEFAULT_MAX_FRAME).unwrap();
        let cut = cut.index(whole.len());
        let mut buf = BytesMut::from(&whole[..cut]);
        let mut codec = FrameCodec::<ClientFrame, ClientFrame>::default();
        prop_assert!(codec.decode(&mut buf).unwrap().is_none());
        let at_eof = codec.decode_eof(&mut buf);
        if cut == 0 {
            prop_assert!(at_eof.unwrap().is_none());
        } else {
            prop_assert!(matches!(at_eof, Err(CodecError::Truncated(n)) if n == cut));
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut client = FrameCodec::<ClientFrame, ClientFrame>::new(128);
        while let Ok(Some(_)) = client.decode(&mut buf) {}
        let mut buf = BytesMut::from(&bytes[..]);
        let mut server = FrameCodec::<ServerFrame, ServerFrame>::new(128);
        while let Ok(Some(_)) = server.decode(&mut buf) {}
    }

    #[test]
    fn bodies_with_garbage_are_errors_not_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        let mut codec = FrameCodec::<ClientFrame, ClientFrame>::default();
        // Either a frame or a typed error; the property is that this returns at all.
        let _ = codec.decode(&mut buf);
    }
}

#[test]
fn an_oversized_prefix_is_refused_before_buffering() {
    let mut buf = BytesMut::new();
    buf.put_u32(2 * 1024 * 1024);
    buf.put_u8(0);
    let mut codec = RawCodec::default();
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        CodecError::FrameTooLarge {
            len: 2_097_152,
            max: 1_048_576
        }
    ));
}

#[test]
fn an_oversized_frame_is_refused_on_encode_and_leaves_the_buffer_alone() {
    let frame = ClientFrame::Publish {
        batch_id: 1,
        events: vec![Event {
            account_id: 1,
            timestamp_us: 1,
            data: "x".repeat(200),
            origin: String::new(),
            id: 1,
        }],
    };
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = encode_frame(&frame, &mut buf, 100).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { max: 100, .. }));
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn trailing_bytes_in_a_body_are_malformed() {
    let mut body = postcard::to_allocvec(&ClientFrame::Ping).unwrap();
    body.push(0);
    assert!(matches!(
        decode_body::<ClientFrame>(&body),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn variant_tags_match_the_derive() {
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Subscriber,
        name: String::new(),
        token: None,
        instance: 0,
    };
    assert_eq!(
        postcard::to_allocvec(&hello).unwrap()[0],
        ClientFrame::HELLO_TAG
    );
    let publish = ClientFrame::Publish {
        batch_id: 0,
        events: vec![],
    };
    assert_eq!(
        postcard::to_allocvec(&publish).unwrap()[0],
        ClientFrame::PUBLISH_TAG
    );
    let events = ServerFrame::Events(vec![]);
    assert_eq!(
        postcard::to_allocvec(&events).unwrap()[0],
        ServerFrame::EVENTS_TAG
    );
}

#[test]
fn hello_version_is_readable_whatever_follows() {
    let mut body = vec![ClientFrame::HELLO_TAG];
    crate::varint::put(&mut body, 99);
    body.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(crate::frame::peek_hello_version(&body), Some(99));
    let _ = BTreeSet::<u64>::new();
}

#[test]
fn has_complete_frame_needs_the_whole_body() {
    let mut buf = BytesMut::new();
    encode_frame(&ClientFrame::Ping, &mut buf, 16).unwrap();
    assert!(has_complete_frame(&buf));
    assert!(!has_complete_frame(&buf[..buf.len() - 1]));
    assert!(!has_complete_frame(&buf[..3]));
}
