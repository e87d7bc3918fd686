//! `client_frames`: bytes from busd (or whatever answers on its port) through busctl's frame
//! decoder, then every frame through what busctl prints of it.
//!
//! Input: one control byte (the read size, 0 for everything at once), then the bytes busd
//! sent. busctl reads with `FrameCodec<ServerFrame, ClientFrame>` at its own frame limit
//! (`client/src/session.rs`). Every event is rendered as `busctl watch` prints it, in text
//! and JSON, and every gap likewise, with busctl's own `render.rs`. Then the whole stream
//! goes through the watcher's decisions ([`client::watch::replay`]): each `Welcome` starts a
//! connection, so resume points, restart gaps and copies dropped by `(origin, id)` are all
//! exercised, and what it would print must never repeat an event or go back in seq.

use bytes::BytesMut;
use protocol::{ClientFrame, CodecError, Event, FrameCodec, ServerFrame, encode_frame};
use tokio_util::codec::Decoder;

use std::collections::HashSet;
use std::sync::LazyLock;

use clap::Parser as _;
use client::cli::{Cli, Command, Format, WatchArgs};
use client::output::Output;
use client::render::{describe_gap, event_line, gap_line};
use client::session::Welcome;
use client::subscriber::GapReport;

/// busctl's frame limit (`MAX_FRAME` in `client/src/session.rs`, private to the binary).
pub const MAX_FRAME: usize = 64 << 20;

/// Checks one printed line: a line is one record, whatever the peer put in its strings.
fn one_line(line: &str, format: Format) {
    match format {
        // Text prints data with `{:?}`, which escapes every control character.
        Format::Text => assert!(!line.chars().any(char::is_control), "{line:?}"),
        // JSON escapes what would end or break a line.
        Format::Json => assert!(!line.contains(['\n', '\r']), "{line:?}"),
    }
}

/// Renders an event both ways, as `busctl watch` prints it, and reads the JSON back.
fn render_event(epoch: u64, seq: u64, event: &Event) {
    let text = event_line(Format::Text, epoch, seq, event);
    one_line(&text, Format::Text);
    assert!(text.contains(&format!("  seq={seq}  ")));
    let json = event_line(Format::Json, epoch, seq, event);
    one_line(&json, Format::Json);
    let value: serde_json::Value = serde_json::from_str(&json).expect("an event line is JSON");
    assert_eq!(value["seq"], seq);
    assert_eq!(value["epoch"], epoch);
    assert_eq!(value["account_id"], event.account_id);
    assert_eq!(value["timestamp_us"], event.timestamp_us);
    assert_eq!(value["data"], event.data.as_str());
    assert_eq!(value["origin"], event.origin.as_str());
    assert_eq!(value["id"], event.id);
}

/// Renders a gap both ways, as the watcher reports a `Gap` frame (and the unknown-size gap
/// it reports after a restart, from the same numbers).
fn render_gap(from_seq: u64, to_seq: u64, missed: u64) {
    for gap in [
        GapReport {
            from_seq,
            to_seq: Some(to_seq),
            missed: Some(missed),
            epoch: missed,
        },
        GapReport {
            from_seq,
            to_seq: None,
            missed: None,
            epoch: to_seq,
        },
    ] {
        for format in [Format::Text, Format::Json] {
            one_line(&gap_line(format, &gap), format);
        }
        one_line(&describe_gap(&gap), Format::Text);
        let json: serde_json::Value =
            serde_json::from_str(&gap_line(Format::Json, &gap)).expect("a gap line is JSON");
        assert_eq!(json["gap"]["from_seq"], gap.from_seq);
    }
}

/// What busctl does with one decoded frame, plus a round trip through the encoder busd uses.
fn handle(frame: &ServerFrame) {
    let mut encoded = BytesMut::new();
    encode_frame(frame, &mut encoded, usize::MAX).expect("a decoded frame encodes");
    let mut codec = FrameCodec::<ServerFrame, ClientFrame>::new(usize::MAX);
    let again = codec
        .decode(&mut encoded)
        .expect("re-encoded frame decodes");
    assert_eq!(
        again.as_ref(),
        Some(frame),
        "a frame changes through encode and decode"
    );
    match frame {
        ServerFrame::Events(events) => {
            for (seq, event) in events {
                // Any u64 may be an epoch; the timestamp is one the fuzzer controls.
                render_event(event.timestamp_us, *seq, event);
            }
        }
        ServerFrame::Gap {
            from_seq,
            to_seq,
            missed,
        } => render_gap(*from_seq, *to_seq, *missed),
        _ => {}
    }
}

/// `busctl watch --all --format json`, as the watcher is run.
static WATCH: LazyLock<WatchArgs> =
    LazyLock::new(
        || match Cli::try_parse_from(["busctl", "watch", "--all", "--format", "json"]) {
            Ok(Cli {
                command: Command::Watch(args),
            }) => args,
            other => panic!("busctl watch parses: {other:?}"),
        },
    );

/// One runtime for every input: the watcher's decisions are async only to wait on stdout.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

/// The whole check for one input; see the module doc for its format.
pub fn check(input: &[u8]) {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let mut codec = FrameCodec::<ServerFrame, ClientFrame>::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in crate::reads(stream, usize::from(control)) {
        buf.extend_from_slice(read);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    handle(&frame);
                    frames.push(frame);
                }
                Ok(None) => break,
                // busctl drops the connection on any decoding error.
                Err(_) => return watch(frames),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(None) => assert!(buf.is_empty()),
        Err(CodecError::Truncated(left)) => assert!(left == buf.len() && left > 0),
        other => panic!("at the end, after every whole frame was taken: {other:?}"),
    }
    watch(frames);
}

/// The watcher over `frames`, a `Welcome` starting each connection (the first one's
/// `Welcome` is made up if the stream has none yet), and what must hold of its output.
fn watch(frames: Vec<ServerFrame>) {
    let mut sessions: Vec<(Welcome, Vec<ServerFrame>)> = Vec::new();
    for frame in frames {
        match frame {
            ServerFrame::Welcome {
                epoch,
                head_seq,
                max_frame,
                follows,
                ..
            } => sessions.push((
                Welcome {
                    epoch,
                    head_seq,
                    max_frame,
                    follows,
                },
                Vec::new(),
            )),
            frame => match sessions.last_mut() {
                Some((_, session)) => session.push(frame),
                None => sessions.push((first_welcome(), vec![frame])),
            },
        }
    }
    let printed = RUNTIME.block_on(client::watch::replay(WATCH.clone(), sessions));
    let mut seen = HashSet::new();
    let mut last: Option<(u64, u64)> = None;
    for output in printed {
        let Output::Events { epoch, events } = output else {
            continue;
        };
        for (seq, event) in events {
            assert!(
                seen.insert((event.origin.clone(), event.id)),
                "event {}:{} printed twice",
                event.origin,
                event.id
            );
            if let Some((last_epoch, last_seq)) = last {
                assert!(
                    last_epoch != epoch || seq > last_seq,
                    "seq went back within epoch {epoch}: {last_seq} then {seq}"
                );
            }
            last = Some((epoch, seq));
        }
    }
}

fn first_welcome() -> Welcome {
    Welcome {
        epoch: 1,
        head_seq: 0,
        max_frame: MAX_FRAME as u64,
        follows: None,
    }
}
