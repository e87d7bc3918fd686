//! `busd_frames`: bytes from a peer through busd's frame decoder, then every body through
//! what busd does with it.
//!
//! Input: one control byte (the read size, 0 for everything at once), then the bytes the
//! peer sent. The stream is split with [`protocol::RawCodec`] at busd's default frame limit;
//! each body goes where busd sends it: the zero-copy [`publish::parse`] when
//! [`publish::is_publish`] says so, postcard's [`decode_body`] otherwise. The fast path must
//! agree with postcard exactly, since subscribers decode what it lets through with postcard.

use bytes::{Bytes, BytesMut};
use protocol::codec::decode_body;
use protocol::frame::peek_hello_version;
use protocol::{ClientFrame, CodecError, DEFAULT_MAX_FRAME, Event, RawCodec, publish};
use tokio_util::codec::Decoder;

/// busd's default frame limit (`busd::config`): what an unauthenticated peer meets.
pub const MAX_FRAME: usize = DEFAULT_MAX_FRAME;

/// The body length the 4-byte prefix at the front of `buf` claims, if there is one.
fn claimed(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Decodes every whole frame buffered; returns `false` when the codec refused the stream
/// (busd closes the connection then).
fn decode_buffered(codec: &mut RawCodec, buf: &mut BytesMut) -> bool {
    loop {
        let (len, capacity, claim) = (buf.len(), buf.capacity(), claimed(buf));
        match codec.decode(buf) {
            Ok(Some(body)) => {
                assert_eq!(Some(body.len()), claim, "the body is what the prefix says");
                assert!(body.len() <= MAX_FRAME);
                assert_eq!(buf.len(), len - 4 - body.len(), "prefix and body consumed");
                handle(&body);
            }
            Ok(None) => {
                assert_eq!(buf.len(), len, "nothing consumed while waiting");
                if let Some(claim) = claim {
                    assert!(claim <= MAX_FRAME, "waiting for a frame over the limit");
                    assert!(len < 4 + claim, "waiting although the frame is whole");
                }
                return true;
            }
            Err(CodecError::FrameTooLarge { len: refused, max }) => {
                assert_eq!((Some(refused), max), (claim, MAX_FRAME));
                assert!(refused > MAX_FRAME);
                // Refused before buffering: no room was reserved for it, nothing consumed.
                assert_eq!((buf.len(), buf.capacity()), (len, capacity));
                return false;
            }
            Err(other) => panic!("the splitter can only refuse a size, not: {other}"),
        }
    }
}

/// What busd does with one body, checking the fast path against postcard on the way.
fn handle(body: &Bytes) {
    let theirs = decode_body::<ClientFrame>(body);
    if theirs.is_err() {
        // busd's first-frame path peeks at the version of what does not decode.
        let _ = peek_hello_version(body);
    }
    if !publish::is_publish(body) {
        assert!(
            !matches!(theirs, Ok(ClientFrame::Publish { .. })),
            "postcard decodes a Publish that is_publish does not see"
        );
        return;
    }
    match (publish::parse(body), theirs) {
        (Ok(raw), Ok(ClientFrame::Publish { batch_id, events })) => {
            assert_eq!(raw.batch_id, batch_id);
            assert_eq!(raw.events.len(), events.len());
            // postcard reads over-long varints (an 0x80 continued by 0x00) as their value, and
            // busd forwards a publisher's bytes as they came: equal to postcard's own encoding
            // when the publisher encoded canonically, as ours do, and always decoding to the
            // same event.
            let frame = ClientFrame::Publish { batch_id, events };
            let canonical = postcard::to_allocvec(&frame).expect("a frame encodes")[..] == body[..];
            let ClientFrame::Publish { events, .. } = frame else {
                unreachable!("built as a Publish just above")
            };
            for (one, event) in raw.events.iter().zip(&events) {
                assert_eq!(one.account_id, event.account_id);
                let bytes = raw.bytes(one);
                let forwarded: Event = decode_body(bytes).expect("forwarded bytes decode");
                assert_eq!(&forwarded, event, "forwarded bytes decode to another event");
                if canonical {
                    let encoded = postcard::to_allocvec(event).expect("an event encodes");
                    assert_eq!(
                        bytes,
                        &encoded[..],
                        "event bytes differ from postcard's"
                    );
                }
            }
        }
        (Ok(raw), theirs) => {
            panic!(
                "the fast path accepts batch {} postcard reads as {theirs:?}",
                raw.batch_id
            )
        }
        (Err(err), Ok(ClientFrame::Publish { batch_id, .. })) => {
            panic!("the fast path refuses batch {batch_id} that postcard accepts: {err}")
        }
        (Err(_), _) => {}
    }
}

/// The whole check for one input; see the module doc for its format.
pub fn check(input: &[u8]) {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let mut codec = RawCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    for read in crate::reads(stream, usize::from(control)) {
        buf.extend_from_slice(read);
        if !decode_buffered(&mut codec, &mut buf) {
            return;
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(None) => assert!(buf.is_empty()),
        Err(CodecError::Truncated(left)) => assert!(left == buf.len() && left > 0),
        other => panic!("at the end, after every whole frame was taken: {other:?}"),
    }
}
