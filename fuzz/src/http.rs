//! `http_read`: bytes from a client through ingest's real request path, read by read.
//!
//! Input: one control byte (bit 0: the server is stopping; bits 1-7: the read size, 0 for
//! everything at once), then the bytes the client sent. Each read is appended to the buffer
//! and answered with [`ingest::connection::answer_buffered`], the function a connection
//! calls, against an accounts index of a few accounts and an outbox drained after every read.

use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use client::outbox::{self, Outbox};
use client::publisher::Link;
use data::{Accounts, Status};
use ingest::connection::answer_buffered;
use ingest::metrics::Metrics;
use ingest::request::{self, Limits, Method};
use ingest::route::App;
use protocol::Event;

/// Smaller than ingest's defaults (8 KiB, 32 headers) so that inputs of a few hundred bytes
/// reach every limit; the code paths are the same.
pub const LIMITS: Limits = Limits {
    max_head: 1024,
    max_headers: 8,
};

/// Smaller than ingest's default (4096) for the same reason.
pub const MAX_DATA: usize = 64;

/// Accounts `1..=SEEDED` exist, every tenth inactive (the seed's rule), plus [`BIG_ACCOUNT`].
pub const SEEDED: u64 = 20;

/// The largest id the store takes, so the top of the id range is exercised.
pub const BIG_ACCOUNT: u64 = i64::MAX as u64;

/// An account with a write key the dictionary holds (`http.dict`), so keyed requests are
/// accepted as well as refused.
pub const KEYED_ACCOUNT: u64 = 3;

/// That key.
const FUZZ_KEY: &[u8] = b"trk_fuzz";

/// An account whose key is random and in no input: no event for it may ever be accepted,
/// whatever the headers look like.
pub const LOCKED_ACCOUNT: u64 = 4;

/// The one origin whose pages may call this app, so preflights and CORS headers are reached
/// (`http.dict` has it).
const CORS_ORIGIN: &str = "https://a.example";

/// The origin accepted events carry.
const ORIGIN: &str = "fuzz:0";

/// One app for the whole run: building an accounts index takes SQLite, far too slow per input.
static APP: LazyLock<App> = LazyLock::new(app);

/// An app as ingest builds one, without sockets: the index loaded from a throwaway database
/// (the index keeps no connection), a link that is down, an outbox large enough never to fill.
fn app() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let (conn, _) = data::schema::open_seeded(&dir.path().join("accounts.db"), SEEDED)
        .expect("accounts database");
    data::admin::add(&conn, BIG_ACCOUNT, "big", true).expect("big account");
    let fuzz_key = data::key::KeyHash::of(FUZZ_KEY);
    data::admin::set_key(&conn, KEYED_ACCOUNT, Some(&fuzz_key)).expect("keyed account");
    let (_, random) = data::key::generate().expect("a random key");
    data::admin::set_key(&conn, LOCKED_ACCOUNT, Some(&random)).expect("locked account");
    let accounts = Arc::new(Accounts::default());
    accounts.load(&conn).expect("load accounts");
    App {
        accounts,
        outbox: Arc::new(Outbox::new(
            outbox::Limits {
                events: 1 << 20,
                bytes: 1 << 30,
                batch_events: 64,
                batch_bytes: 64 * 1024,
            },
            1,
        )),
        link: Arc::new(Link::default()),
        metrics: Arc::new(Metrics::default()),
        origin: ORIGIN.into(),
        max_data: MAX_DATA,
        cors_origins: vec![CORS_ORIGIN.into()],
        ack_timeout: None,
    }
}

/// What the connection loop must do with a buffer, worked out one head at a time.
#[derive(Debug)]
struct Expected {
    /// Per response, whether it answers HEAD (and so has no body).
    head_only: Vec<bool>,
    /// Bytes taken off the front when the loop stops without closing.
    consumed: usize,
    close: bool,
}

/// Walks `buf` head by head with the same parser: every complete head (or the first refused
/// one) is owed exactly one response, and the walk stops at a close or an incomplete head.
fn expect(buf: &[u8], stopping: bool) -> Expected {
    let mut head_only = Vec::new();
    let mut at = 0;
    loop {
        match request::parse(&buf[at..], LIMITS) {
            Ok(None) => {
                return Expected {
                    head_only,
                    consumed: at,
                    close: false,
                };
            }
            Ok(Some((head, used))) => {
                assert!(used > 0, "a complete head takes at least one byte");
                head_only.push(head.method == Method::Head);
                if !head.keep_alive || stopping {
                    return Expected {
                        head_only,
                        consumed: at + used,
                        close: true,
                    };
                }
                at += used;
            }
            Err(_) => {
                head_only.push(false);
                return Expected {
                    head_only,
                    consumed: at,
                    close: true,
                };
            }
        }
    }
}

/// One response read back from the output: its status and whether it closes.
#[derive(Debug)]
struct Answer {
    status: u16,
    close: bool,
}

/// Reads back every response in `out`, one per entry of `head_only`, and checks that they
/// fill it exactly: the framing a client relies on (Content-Length, no body for HEAD).
fn answers(out: &[u8], head_only: &[bool]) -> Vec<Answer> {
    let mut at = 0;
    let mut found = Vec::new();
    for &head_only in head_only {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&out[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("response {} is not whole HTTP: {other:?}", found.len()),
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).expect("ASCII header value"))
        };
        let status = response.code.expect("a status code");
        // RFC 9110 8.6: a 204 has no Content-Length and no body; every other one has both.
        let body: usize = match header("content-length") {
            None if status == 204 => 0,
            length => {
                assert_ne!(status, 204, "a 204 with a Content-Length");
                length
                    .expect("every response but a 204 has a Content-Length")
                    .parse()
                    .expect("a numeric Content-Length")
            }
        };
        let close = header("connection") == Some("close");
        assert_eq!(
            header("cache-control"),
            Some("no-store"),
            "every response forbids caching"
        );
        at += len + if head_only { 0 } else { body };
        assert!(at <= out.len(), "a body runs past the output");
        found.push(Answer { status, close });
    }
    assert_eq!(at, out.len(), "more output than responses owed");
    found
}

/// Takes every accepted event out of the outbox and checks it; returns how many there were.
fn drain_accepted(app: &App) -> usize {
    let mut accepted = 0;
    while let Some(batch) = app.outbox.take_batch() {
        let mut rest = &batch.events[..];
        for _ in 0..batch.count {
            let (event, tail): (Event, &[u8]) =
                postcard::take_from_bytes(rest).expect("an accepted event decodes");
            rest = tail;
            // `String` decoding has already checked UTF-8.
            assert!(event.data.len() <= MAX_DATA, "data over max_data accepted");
            assert_eq!(event.origin, ORIGIN);
            assert_eq!(
                app.accounts.check(event.account_id, Some(FUZZ_KEY)),
                Status::Active,
                "event accepted for account {} that is not active",
                event.account_id
            );
            assert_ne!(
                event.account_id, LOCKED_ACCOUNT,
                "event accepted without the account's key"
            );
            accepted += 1;
        }
        assert!(rest.is_empty(), "a batch holds more bytes than its events");
        app.outbox.ack(batch.id);
    }
    accepted
}

/// The whole check for one input; see the module doc for its format.
pub fn check(input: &[u8]) {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let stopping = control & 1 == 1;
    let app = &*APP;
    drain_accepted(app);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    for read in crate::reads(stream, usize::from(control >> 1)) {
        buf.extend_from_slice(read);
        let before = buf.clone();
        let expected = expect(&before, stopping);
        let close = answer_buffered(&mut buf, &mut out, app, LIMITS, stopping);
        assert_eq!(close, expected.close, "close decision for {expected:?}");
        let answers = answers(&out, &expected.head_only);
        if let Some((last, earlier)) = answers.split_last() {
            assert_eq!(
                last.close, close,
                "only a closing answer says Connection: close"
            );
            assert!(
                earlier.iter().all(|a| !a.close),
                "a close before the last answer"
            );
        }
        if !close {
            // Progress: whatever the loop left is exactly an incomplete head.
            assert_eq!(&buf[..], &before[expected.consumed..], "bytes consumed");
            assert!(matches!(request::parse(&buf, LIMITS), Ok(None)));
        }
        let accepted = answers
            .iter()
            .zip(&expected.head_only)
            .filter(|(a, head_only)| a.status == 202 && !**head_only)
            .count();
        assert_eq!(drain_accepted(app), accepted, "one event per 202 to a GET");
        out.clear();
        if close {
            return;
        }
    }
}
