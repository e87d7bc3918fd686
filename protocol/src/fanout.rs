//! Building `Events` frames from pre-encoded events, for busd's fan-out.
//!
//! Postcard encodes `Vec<(u64, Event)>` as a varint count followed by each `(seq, Event)`
//! back to back, so busd encodes every `(seq, Event)` once ([`encode_entry`]), shares those
//! bytes among all receivers, and assembles a subscriber's frame as length prefix + tag +
//! count + the concatenated entries ([`EventsFrame`]). No event is re-encoded per receiver.

use bytes::{BufMut, BytesMut};

use crate::{ServerFrame, varint};

/// Appends the postcard encoding of `(seq, event)` given the event's own encoding.
pub fn encode_entry(dst: &mut BytesMut, seq: u64, event_bytes: &[u8]) {
    varint::put(dst, seq);
    dst.extend_from_slice(event_bytes);
}

/// An `Events` frame being assembled at the end of a write buffer.
pub struct EventsFrame {
    start: usize,
    count: u64,
}

/// Room reserved for the count varint; the frame is shifted once at the end if it needs less.
const COUNT_ROOM: usize = varint::MAX_LEN;

impl EventsFrame {
    /// Starts a frame at the end of `dst`.
    pub fn begin(dst: &mut BytesMut) -> Self {
        let start = dst.len();
        dst.put_bytes(0, 4 + 1 + COUNT_ROOM);
        EventsFrame { start, count: 0 }
    }

    /// Appends one entry made by [`encode_entry`].
    pub fn push(&mut self, dst: &mut BytesMut, entry: &[u8]) {
        dst.extend_from_slice(entry);
        self.count += 1;
    }

    /// Entries pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes the frame takes so far, prefix included.
    pub fn len(&self, dst: &BytesMut) -> usize {
        dst.len() - self.start
    }

    /// Whether nothing was pushed (such a frame is removed by [`EventsFrame::finish`]).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the prefix, tag and count; an empty frame is removed instead.
    pub fn finish(self, dst: &mut BytesMut) {
        if self.count == 0 {
            dst.truncate(self.start);
            return;
        }
        let mut head = [0u8; 1 + COUNT_ROOM];
        head[0] = ServerFrame::EVENTS_TAG;
        let mut count = &mut head[1..];
        varint::put(&mut count, self.count);
        let head_len = 1 + varint::len(self.count);
        let body_start = self.start + 4 + 1 + COUNT_ROOM;
        let body_len = dst.len() - body_start;
        let unused = COUNT_ROOM + 1 - head_len;
        // Close the hole left by the unused part of the count's room.
        dst.copy_within(self.start + 4 + unused.., self.start + 4);
        dst.truncate(dst.len() - unused);
        let frame_len = (head_len + body_len) as u32;
        dst[self.start..self.start + 4].copy_from_slice(&frame_len.to_be_bytes());
        dst[self.start + 4..self.start + 4 + head_len].copy_from_slice(&head[..head_len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, encode_frame};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_hand_built_frame_decodes_like_one_encoded_from_values(
            events in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<u64>(), ".{0,80}", "[a-z]{0,8}", any::<u64>()), 0..300),
            junk in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let events: Vec<(u64, Event)> = events
                .into_iter()
                .map(|(seq, account_id, timestamp_us, data, origin, id)| {
                    (seq, Event { account_id, timestamp_us, data, origin, id })
                })
                .collect();
            let mut expected = BytesMut::from(&junk[..]);
            encode_frame(&ServerFrame::Events(events.clone()), &mut expected, usize::MAX).unwrap();

            let mut dst = BytesMut::from(&junk[..]);
            let mut frame = EventsFrame::begin(&mut dst);
            for (seq, event) in &events {
                let mut entry = BytesMut::new();
                encode_entry(&mut entry, *seq, &postcard::to_allocvec(event).unwrap());
                frame.push(&mut dst, &entry);
            }
            frame.finish(&mut dst);
            if events.is_empty() {
                prop_assert_eq!(&dst[..], &junk[..]);
            } else {
                prop_assert_eq!(&dst[..], &expected[..]);
            }
        }
    }
}
