//! A zero-copy view of a `Publish` frame, for busd's hot path.
//!
//! busd never needs an event as Rust values: it routes on `account_id` and forwards the
//! event's postcard bytes unchanged. Walking the body by hand finds each event's bytes
//! without allocating two `String`s per event and encoding them again. It validates exactly
//! what postcard would (varints, lengths, UTF-8), so subscribers can always decode the
//! result; a property test pins it to `postcard::from_bytes::<ClientFrame>`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{ClientFrame, varint};

/// Appends the postcard encoding of an [`crate::Event`] from borrowed parts, so a publisher
/// can encode straight from a request buffer without building `String`s.
pub fn encode_event(
    dst: &mut BytesMut,
    account_id: u64,
    timestamp_us: u64,
    data: &str,
    origin: &str,
    id: u64,
) {
    varint::put(dst, account_id);
    varint::put(dst, timestamp_us);
    varint::put(dst, data.len() as u64);
    dst.extend_from_slice(data.as_bytes());
    varint::put(dst, origin.len() as u64);
    dst.extend_from_slice(origin.as_bytes());
    varint::put(dst, id);
}

/// Bytes a `Publish` frame body takes besides its events: the tag and two varints at most.
pub const FRAME_OVERHEAD: usize = 1 + 2 * varint::MAX_LEN;

/// The most bytes [`encode_event`] can write for `data_len` bytes of data and `origin_len`
/// bytes of origin: what a publisher checks against busd's frame limit.
pub fn max_event_len(data_len: usize, origin_len: usize) -> usize {
    5 * varint::MAX_LEN + data_len + origin_len
}

/// Appends a whole `Publish` frame, length prefix included, around `count` events already
/// encoded back to back by [`encode_event`].
pub fn encode_frame(dst: &mut BytesMut, batch_id: u64, count: u64, events: &[u8]) {
    let body = 1 + varint::len(batch_id) + varint::len(count) + events.len();
    dst.reserve(4 + body);
    dst.put_u32(body as u32);
    dst.put_u8(ClientFrame::PUBLISH_TAG);
    varint::put(dst, batch_id);
    varint::put(dst, count);
    dst.extend_from_slice(events);
}

/// The events [`encode_event`] wrote back to back, as values: what a publisher to a bus
/// other than busd (JetStream, one message per event) needs from a batch.
pub fn decode_events(mut events: &[u8]) -> Result<Vec<crate::Event>, MalformedPublish> {
    let total = events.len();
    let mut out = Vec::new();
    while !events.is_empty() {
        let (event, rest) =
            postcard::take_from_bytes::<crate::Event>(events).map_err(|_| MalformedPublish {
                offset: total - events.len(),
            })?;
        out.push(event);
        events = rest;
    }
    Ok(out)
}

/// One event of a batch: its account, and where its postcard encoding (as in
/// [`crate::Event`]) lies in the frame ([`RawPublish::bytes`]). A range rather than a
/// slice of its own: no reference count is taken and dropped per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// What busd routes on.
    pub account_id: u64,
    /// Where the event's postcard bytes are in the frame's body.
    pub range: std::ops::Range<usize>,
}

/// A `Publish` frame whose events are still bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    /// The publisher's batch id.
    pub batch_id: u64,
    /// The events in order.
    pub events: Vec<RawEvent>,
    /// The frame's body, which holds every event's bytes.
    pub body: Bytes,
}

impl RawPublish {
    /// The postcard bytes of `event`, one of this frame's events.
    pub fn bytes(&self, event: &RawEvent) -> &[u8] {
        &self.body[event.range.clone()]
    }
}

/// The body claims to be a `Publish` frame but is not a valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Publish frame at byte {offset}")]
pub struct MalformedPublish {
    /// Where in the body reading failed, for the error message.
    pub offset: usize,
}

/// Most bytes postcard reads for a variant index, which it takes as a `u32` varint.
const TAG_MAX_LEN: usize = 5;

/// Whether `body` is a `Publish` frame (by its variant index, in no more bytes than postcard
/// allows it).
pub fn is_publish(body: &[u8]) -> bool {
    let mut pos = 0;
    varint::take(body, &mut pos) == Some(u64::from(ClientFrame::PUBLISH_TAG)) && pos <= TAG_MAX_LEN
}

/// Splits a `Publish` frame body into its events; the caller checked [`is_publish`].
pub fn parse(body: &Bytes) -> Result<RawPublish, MalformedPublish> {
    let buf = &body[..];
    let mut pos = 0;
    let fail = |offset| MalformedPublish { offset };
    let _tag = varint::take(buf, &mut pos).ok_or(fail(pos))?;
    let batch_id = varint::take(buf, &mut pos).ok_or(fail(pos))?;
    let count = varint::take(buf, &mut pos).ok_or(fail(pos))?;
    // Every event takes at least 5 bytes, which bounds the allocation a liar can ask for.
    let mut events = Vec::with_capacity((count as usize).min((buf.len() - pos) / 5));
    for _ in 0..count {
        let start = pos;
        let account_id = varint::take(buf, &mut pos).ok_or(fail(pos))?;
        varint::take(buf, &mut pos).ok_or(fail(pos))?;
        skip_str(buf, &mut pos).ok_or(fail(pos))?;
        skip_str(buf, &mut pos).ok_or(fail(pos))?;
        varint::take(buf, &mut pos).ok_or(fail(pos))?;
        events.push(RawEvent {
            account_id,
            range: start..pos,
        });
    }
    if pos != buf.len() {
        return Err(fail(pos));
    }
    Ok(RawPublish {
        batch_id,
        events,
        body: body.clone(),
    })
}

fn skip_str(buf: &[u8], pos: &mut usize) -> Option<()> {
    let len = usize::try_from(varint::take(buf, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let bytes = buf.get(*pos..end)?;
    // Most data is ASCII, which `is_ascii` checks a word at a time; anything else gets
    // the full UTF-8 validation postcard would do.
    if !bytes.is_ascii() {
        std::str::from_utf8(bytes).ok()?;
    }
    *pos = end;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;
    use crate::codec::decode_body;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = Event> {
        (
            any::<u64>(),
            any::<u64>(),
            ".{0,40}",
            "[a-z0-9-]{0,12}",
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

    proptest! {
        #[test]
        fn decode_events_reads_what_encode_event_writes(
            events in proptest::collection::vec(event(), 0..20),
        ) {
            let mut buf = BytesMut::new();
            for e in &events {
                encode_event(&mut buf, e.account_id, e.timestamp_us, &e.data, &e.origin, e.id);
            }
            prop_assert_eq!(decode_events(&buf).unwrap(), events.clone());
            if !buf.is_empty() {
                prop_assert!(decode_events(&buf[..buf.len() - 1]).is_err());
            }
        }

        #[test]
        fn agrees_with_postcard_on_valid_batches(
            batch_id: u64,
            events in proptest::collection::vec(event(), 0..20),
        ) {
            let frame = ClientFrame::Publish { batch_id, events: events.clone() };
            let body = Bytes::from(postcard::to_allocvec(&frame).unwrap());
            prop_assert!(is_publish(&body));
            let raw = parse(&body).unwrap();
            prop_assert_eq!(raw.batch_id, batch_id);
            prop_assert_eq!(raw.events.len(), events.len());
            for (one, event) in raw.events.iter().zip(&events) {
                prop_assert_eq!(one.account_id, event.account_id);
                prop_assert_eq!(raw.bytes(one), &postcard::to_allocvec(event).unwrap()[..]);
            }
        }

        #[test]
        fn accepts_exactly_what_postcard_accepts(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut body = vec![ClientFrame::PUBLISH_TAG];
            body.extend_from_slice(&tail);
            let body = Bytes::from(body);
            let ours = parse(&body).map(|raw| raw.batch_id).ok();
            let theirs = match decode_body::<ClientFrame>(&body) {
                Ok(ClientFrame::Publish { batch_id, .. }) => Some(batch_id),
                _ => None,
            };
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn truncation_is_an_error(
            events in proptest::collection::vec(event(), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let frame = ClientFrame::Publish { batch_id: 7, events };
            let full = postcard::to_allocvec(&frame).unwrap();
            let body = Bytes::copy_from_slice(&full[..cut.index(full.len())]);
            prop_assert!(parse(&body).is_err());
        }
    }

    proptest! {
        #[test]
        fn hand_encoded_batches_match_postcard(batch_id: u64, events in proptest::collection::vec(event(), 0..10)) {
            let mut bytes = BytesMut::new();
            for e in &events {
                encode_event(&mut bytes, e.account_id, e.timestamp_us, &e.data, &e.origin, e.id);
            }
            let mut ours = BytesMut::new();
            encode_frame(&mut ours, batch_id, events.len() as u64, &bytes);
            let mut theirs = BytesMut::new();
            crate::encode_frame(&ClientFrame::Publish { batch_id, events }, &mut theirs, usize::MAX).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_huge_count_does_not_allocate_for_it() {
        let mut body = vec![ClientFrame::PUBLISH_TAG, 1];
        varint::put(&mut body, u64::MAX >> 1);
        assert!(parse(&Bytes::from(body)).is_err());
    }

    /// Found by fuzzing (busd_frames): postcard reads a variant index as a u32 varint, at
    /// most 5 bytes, so this 6-byte encoding of the Publish tag makes no frame at all; the
    /// fast path took it as a Publish and busd accepted a batch postcard refuses.
    #[test]
    fn an_over_long_tag_is_not_a_publish() {
        let body = Bytes::from_static(&[0x82, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00, 0x00]);
        assert!(decode_body::<ClientFrame>(&body).is_err());
        assert!(!is_publish(&body));
        // The longest encoding postcard takes is still a Publish for both.
        let body = Bytes::from_static(&[0x82, 0x80, 0x80, 0x80, 0x00, 0x00, 0x00]);
        assert!(matches!(
            decode_body::<ClientFrame>(&body),
            Ok(ClientFrame::Publish { batch_id: 0, .. })
        ));
        assert!(is_publish(&body));
        assert_eq!(parse(&body).map(|raw| raw.batch_id), Ok(0));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let event = Event {
            account_id: 1,
            timestamp_us: 2,
            data: "ab".into(),
            origin: "o".into(),
            id: 3,
        };
        let frame = ClientFrame::Publish {
            batch_id: 1,
            events: vec![event],
        };
        let mut bytes = postcard::to_allocvec(&frame).unwrap();
        let at = bytes.iter().position(|&b| b == b'a').unwrap();
        bytes[at] = 0xff;
        assert!(parse(&Bytes::from(bytes)).is_err());
    }
}
