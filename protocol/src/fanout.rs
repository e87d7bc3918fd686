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

/// The fields of an entry made by [`encode_entry`] that busd reads to serve a history
/// request or an origin filter, without decoding the event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead<'a> {
    /// When the event was accepted, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// Who published it.
    pub origin: &'a str,
}

/// Reads an entry's timestamp and origin (`None` for bytes that are no entry).
pub fn entry_head(entry: &[u8]) -> Option<EntryHead<'_>> {
    let mut pos = 0;
    varint::take(entry, &mut pos)?; // seq
    varint::take(entry, &mut pos)?; // account_id
    let timestamp_us = varint::take(entry, &mut pos)?;
    let skip = |pos: &mut usize| -> Option<&[u8]> {
        let len = usize::try_from(varint::take(entry, pos)?).ok()?;
        let bytes = entry.get(*pos..pos.checked_add(len)?)?;
        *pos += len;
        Some(bytes)
    };
    skip(&mut pos)?; // data
    let origin = std::str::from_utf8(skip(&mut pos)?).ok()?;
    Some(EntryHead {
        timestamp_us,
        origin,
    })
}

/// Reads the account and the length of the first entry in `run` (entries made by
/// [`encode_entry`] back to back): how busd cuts a run of entries into single ones.
/// `None` for bytes that start with no entry.
pub fn first_entry(run: &[u8]) -> Option<(u64, usize)> {
    let mut pos = 0;
    varint::take(run, &mut pos)?; // seq
    let account_id = varint::take(run, &mut pos)?;
    varint::take(run, &mut pos)?; // timestamp
    for _ in 0..2 {
        // data, origin
        let len = usize::try_from(varint::take(run, &mut pos)?).ok()?;
        pos = pos.checked_add(len).filter(|end| *end <= run.len())?;
    }
    varint::take(run, &mut pos)?; // id
    Some((account_id, pos))
}

/// An `Events` frame being assembled at the end of a write buffer.
pub struct EventsFrame {
    start: usize,
    count: u64,
    /// Bytes of the frame's body written from elsewhere ([`write_frames_sharing`]).
    elsewhere: usize,
    /// Bytes reserved for the count's varint.
    count_room: usize,
}

/// Bytes before the first entry: length prefix and tag (the count's room comes on top).
const HEAD: usize = 4 + 1;

/// Appends `Events` frames holding every entry (each made by [`encode_entry`], or a run of
/// such entries back to back, reached through `bytes`; `events` says how many entries it
/// holds), as many per frame as fit in `limit` bytes and at least one. Each frame's events
/// are counted before it is built, so its count is written in place and the frame is never
/// moved: busd's fan-out, and what the instruction-count guard measures.
pub fn write_frames<E>(
    dst: &mut BytesMut,
    entries: &[E],
    limit: usize,
    bytes: impl Fn(&E) -> &[u8],
    events: impl Fn(&E) -> u64,
) {
    let never = |_: &BytesMut, _: &E| unreachable!("nothing is shared");
    write_frames_sharing(dst, entries, limit, bytes, events, usize::MAX, never);
}

/// [`write_frames`], except that an entry of `share_from` bytes or more is not copied into
/// `dst`: `share(dst, entry)` is called where its bytes belong (at `dst.len()`), and the
/// caller writes them from there itself, in a vectored write. The frames' lengths count
/// them. A subscriber taking whole batches then gets the bus's shared buffer handed to the
/// kernel as it is, rather than copied once more per subscriber.
pub fn write_frames_sharing<E>(
    dst: &mut BytesMut,
    entries: &[E],
    limit: usize,
    bytes: impl Fn(&E) -> &[u8],
    events: impl Fn(&E) -> u64,
    share_from: usize,
    mut share: impl FnMut(&BytesMut, &E),
) {
    let mut rest = entries;
    while !rest.is_empty() {
        let count = frame_count(rest.iter().map(|e| bytes(e).len()), limit);
        let taken = &rest[..count];
        let mut frame = EventsFrame::begin(dst, taken.iter().map(&events).sum());
        for entry in taken {
            let run = bytes(entry);
            if run.len() >= share_from {
                share(dst, entry);
                frame.elsewhere += run.len();
                frame.count += events(entry);
            } else {
                frame.push_run(dst, run, events(entry));
            }
        }
        frame.finish(dst);
        rest = &rest[count..];
    }
}

/// How many entries, of these sizes, one frame of at most `limit` bytes takes: as many as
/// fit, and at least one.
fn frame_count(sizes: impl IntoIterator<Item = usize>, limit: usize) -> usize {
    let mut len = HEAD + varint::MAX_LEN;
    let mut count = 0;
    for size in sizes {
        if count > 0 && len + size > limit {
            break;
        }
        len += size;
        count += 1;
    }
    count
}

impl EventsFrame {
    /// Starts a frame at the end of `dst` that will hold `expected` entries. Room is
    /// reserved for exactly that count; another count costs one move of the frame's body
    /// in [`EventsFrame::finish`].
    pub fn begin(dst: &mut BytesMut, expected: u64) -> Self {
        let start = dst.len();
        let count_room = varint::len(expected);
        dst.put_bytes(0, HEAD + count_room);
        EventsFrame {
            start,
            count: 0,
            elsewhere: 0,
            count_room,
        }
    }

    /// Appends one entry made by [`encode_entry`].
    pub fn push(&mut self, dst: &mut BytesMut, entry: &[u8]) {
        self.push_run(dst, entry, 1);
    }

    /// Appends `events` entries made by [`encode_entry`], back to back in `run`.
    pub fn push_run(&mut self, dst: &mut BytesMut, run: &[u8], events: u64) {
        dst.extend_from_slice(run);
        self.count += events;
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
        let count_len = varint::len(self.count);
        debug_assert!(
            self.elsewhere == 0 || count_len == self.count_room,
            "a frame with bytes elsewhere is never moved: its count was known"
        );
        let body_start = self.start + HEAD + self.count_room;
        if count_len < self.count_room {
            let unused = self.count_room - count_len;
            dst.copy_within(body_start.., body_start - unused);
            dst.truncate(dst.len() - unused);
        } else if count_len > self.count_room {
            let extra = count_len - self.count_room;
            let end = dst.len();
            dst.put_bytes(0, extra);
            dst.copy_within(body_start..end, body_start + extra);
        }
        let mut head = [0u8; 1 + varint::MAX_LEN];
        head[0] = ServerFrame::EVENTS_TAG;
        let mut count = &mut head[1..];
        varint::put(&mut count, self.count);
        let head_len = 1 + count_len;
        let frame_len = (dst.len() - self.start - 4 + self.elsewhere) as u32;
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
        fn entry_heads_read_what_postcard_wrote(
            seq: u64, account_id: u64, timestamp_us: u64, data in ".{0,80}", origin in ".{0,20}", id: u64,
        ) {
            let event = Event { account_id, timestamp_us, data, origin, id };
            let mut entry = BytesMut::new();
            encode_entry(&mut entry, seq, &postcard::to_allocvec(&event).unwrap());
            let head = entry_head(&entry).unwrap();
            prop_assert_eq!(head, EntryHead { timestamp_us, origin: &event.origin });
            let id_len = crate::varint::len(id);
            let cut = entry.len() - id_len - 1;
            prop_assert!(entry_head(&entry[..cut]).is_none(), "a cut origin is no origin");
        }

        #[test]
        fn a_hand_built_frame_decodes_like_one_encoded_from_values(
            events in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<u64>(), ".{0,80}", "[a-z]{0,8}", any::<u64>()), 0..300),
            junk in proptest::collection::vec(any::<u8>(), 0..8),
            // Right, too small or too large: every count room must give the same frame.
            hint in prop_oneof![Just(None), any::<u64>().prop_map(Some), (0u64..400).prop_map(Some)],
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
            let expected_count = hint.unwrap_or(events.len() as u64);
            let mut frame = EventsFrame::begin(&mut dst, expected_count);
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

    #[test]
    fn frame_count_fills_up_to_the_limit_and_takes_at_least_one() {
        let head = HEAD + varint::MAX_LEN;
        assert_eq!(frame_count([10, 10, 10], head + 20), 2);
        assert_eq!(frame_count([10, 10, 10], head + 30), 3);
        assert_eq!(
            frame_count([1000, 10], head + 20),
            1,
            "an oversized entry goes alone"
        );
        assert_eq!(frame_count([], 100), 0);
    }

    #[test]
    fn write_frames_splits_at_the_limit_and_loses_nothing() {
        let events: Vec<(u64, Event)> = (0..50)
            .map(|i| {
                let event = Event {
                    account_id: i,
                    timestamp_us: i,
                    data: "x".repeat(i as usize * 3),
                    origin: "o".into(),
                    id: i,
                };
                (i + 1, event)
            })
            .collect();
        let entries: Vec<BytesMut> = events
            .iter()
            .map(|(seq, event)| {
                let mut entry = BytesMut::new();
                encode_entry(&mut entry, *seq, &postcard::to_allocvec(event).unwrap());
                entry
            })
            .collect();
        // Runs of one, two and three entries back to back, as busd queues them.
        let mut runs: Vec<(BytesMut, u64)> = Vec::new();
        let mut rest = &entries[..];
        for take in [1, 2, 3].into_iter().cycle() {
            let take = take.min(rest.len());
            if take == 0 {
                break;
            }
            let run = rest[..take].iter().fold(BytesMut::new(), |mut run, e| {
                run.extend_from_slice(e);
                run
            });
            runs.push((run, take as u64));
            rest = &rest[take..];
        }
        let mut dst = BytesMut::new();
        write_frames(&mut dst, &runs, 512, |r| &r.0[..], |r| r.1);
        let mut decoded = Vec::new();
        let mut frames = 0;
        while !dst.is_empty() {
            let len = u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]) as usize;
            let frame = dst.split_to(4 + len);
            assert!(
                frame.len() <= 512,
                "every run fits, so every frame is within the limit"
            );
            let Ok(ServerFrame::Events(batch)) = crate::codec::decode_body(&frame[4..]) else {
                panic!("not an Events frame");
            };
            decoded.extend(batch);
            frames += 1;
        }
        assert!(frames > 1, "the limit split the entries");
        assert_eq!(decoded, events);
    }

    proptest! {
        /// Frames written with some runs left out, and those runs put back where
        /// `write_frames_sharing` said they belong, are byte for byte what `write_frames`
        /// writes: lengths and counts included.
        #[test]
        fn shared_runs_put_back_in_place_make_the_same_frames(
            runs in proptest::collection::vec((1usize..300, 1u64..4), 0..40),
            share_from in 1usize..400,
            limit in 16usize..1024,
            before in 0usize..20,
        ) {
            let runs: Vec<(Vec<u8>, u64)> = runs
                .iter()
                .enumerate()
                .map(|(i, &(len, events))| (vec![i as u8; len], events))
                .collect();
            let mut copied = BytesMut::from(&vec![7u8; before][..]);
            write_frames(&mut copied, &runs, limit, |r| &r.0[..], |r| r.1);
            let mut sharing = BytesMut::from(&vec![7u8; before][..]);
            let mut shared = Vec::new();
            write_frames_sharing(
                &mut sharing,
                &runs,
                limit,
                |r| &r.0[..],
                |r| r.1,
                share_from,
                |dst, r| shared.push((dst.len(), r.0.clone())),
            );
            prop_assert!(shared.iter().all(|(_, run)| run.len() >= share_from));
            let mut spliced = Vec::new();
            let mut at = 0;
            for (pos, run) in &shared {
                spliced.extend_from_slice(&sharing[at..*pos]);
                spliced.extend_from_slice(run);
                at = *pos;
            }
            spliced.extend_from_slice(&sharing[at..]);
            prop_assert_eq!(spliced, copied.to_vec());
        }
    }

    #[test]
    fn first_entry_cuts_a_run_where_postcard_would() {
        let mut run = BytesMut::new();
        let mut lens = Vec::new();
        for i in 0..3u64 {
            let event = Event {
                account_id: 40 + i,
                timestamp_us: 1,
                data: "é".repeat(i as usize * 100),
                origin: "o".into(),
                id: i,
            };
            let before = run.len();
            encode_entry(&mut run, 1000 + i, &postcard::to_allocvec(&event).unwrap());
            lens.push(run.len() - before);
        }
        let mut rest = &run[..];
        for (i, len) in lens.iter().enumerate() {
            assert_eq!(first_entry(rest), Some((40 + i as u64, *len)));
            rest = &rest[*len..];
        }
        assert_eq!(first_entry(rest), None, "nothing left");
        assert_eq!(
            first_entry(&run[..lens[0] - 1]),
            None,
            "a cut entry is none"
        );
    }
}
