//! `events_roundtrip`: arbitrary `(seq, Event)` lists through busd's hand-built `Events`
//! frames, which must be byte for byte what postcard makes of the same values.
//!
//! Each event takes the path it takes in production: encoded by ingest's
//! [`publish::encode_event`], framed as a `Publish`, split again by busd's
//! [`publish::parse`], prefixed with its seq by [`fanout::encode_entry`] and appended to an
//! [`fanout::EventsFrame`] at the end of a write buffer that may already hold other frames.

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use protocol::codec::decode_body;
use protocol::{Event, ServerFrame, encode_frame, fanout, publish};

/// One entry of an `Events` frame, from arbitrary primitives: protocol's types stay free of
/// fuzzing dependencies.
#[derive(Debug, Arbitrary)]
pub struct Entry {
    pub seq: u64,
    pub account_id: u64,
    pub timestamp_us: u64,
    pub data: String,
    pub origin: String,
    pub id: u64,
}

impl Entry {
    /// The value a subscriber should decode.
    fn event(&self) -> Event {
        Event {
            account_id: self.account_id,
            timestamp_us: self.timestamp_us,
            data: self.data.clone(),
            origin: self.origin.clone(),
            id: self.id,
        }
    }
}

/// A frame to build: what the write buffer already holds, and the entries.
#[derive(Debug, Arbitrary)]
pub struct Input {
    pub before: Vec<u8>,
    /// The count the frame is begun with; the frame must come out the same whatever it is.
    pub expected: u64,
    pub entries: Vec<Entry>,
}

/// The events' bytes as busd holds them: through a `Publish` frame and back out of it.
fn published(entries: &[Entry]) -> Vec<Bytes> {
    let mut events = BytesMut::new();
    for e in entries {
        let start = events.len();
        publish::encode_event(
            &mut events,
            e.account_id,
            e.timestamp_us,
            &e.data,
            &e.origin,
            e.id,
        );
        let theirs = postcard::to_allocvec(&e.event()).expect("an event encodes");
        assert_eq!(
            &events[start..],
            &theirs[..],
            "encode_event differs from postcard"
        );
    }
    let mut frame = BytesMut::new();
    publish::encode_frame(&mut frame, 7, entries.len() as u64, &events);
    let body = frame.freeze().slice(4..);
    assert!(publish::is_publish(&body));
    let raw = publish::parse(&body).expect("our own Publish parses");
    assert_eq!(raw.events.len(), entries.len());
    raw.events.iter().map(|e| raw.body.slice(e.range.clone())).collect()
}

/// The whole check for one input.
pub fn check(input: Input) {
    let values: Vec<(u64, Event)> = input.entries.iter().map(|e| (e.seq, e.event())).collect();
    let mut dst = BytesMut::from(&input.before[..]);
    // The count as the input says, right or not: every room must give the same frame.
    let mut frame = fanout::EventsFrame::begin(&mut dst, input.expected);
    assert!(frame.is_empty());
    for (entry, bytes) in input.entries.iter().zip(published(&input.entries)) {
        let mut encoded = BytesMut::new();
        fanout::encode_entry(&mut encoded, entry.seq, &bytes);
        let len = frame.len(&dst);
        frame.push(&mut dst, &encoded);
        assert_eq!(frame.len(&dst), len + encoded.len());
    }
    assert_eq!(frame.count(), values.len() as u64);
    frame.finish(&mut dst);
    assert_eq!(
        &dst[..input.before.len()],
        &input.before[..],
        "earlier bytes kept"
    );
    if values.is_empty() {
        assert_eq!(dst.len(), input.before.len(), "an empty frame is removed");
        return;
    }
    let ours = dst.split_off(input.before.len());
    let mut theirs = BytesMut::new();
    let frame = ServerFrame::Events(values);
    encode_frame(&frame, &mut theirs, usize::MAX).expect("a frame encodes");
    assert_eq!(ours, theirs, "hand-built frame differs from postcard's");
    let decoded: ServerFrame = decode_body(&ours[4..]).expect("the frame decodes");
    assert_eq!(decoded, frame);
}
