//! `--durable`: a read's answers are written only once the bus has acknowledged the events
//! they accept, so a 202 means "stored by the bus" and survives an ingest crash.
//!
//! The requests of one read are answered into the output buffer as always; each 202 that
//! gave the outbox an event is also noted here ([`Held`]): where its bytes sit and the event
//! id it promises. Event ids grow in acceptance order and the bus acknowledges batches in
//! order, so the whole read waits for one thing: the acknowledgement of its last event
//! ([`Outbox::acknowledged`], woken once per batch ack, so every connection waiting on one
//! round trip is answered by it). The answers then go out in one write, in request order,
//! as pipelining requires. When `--ack-timeout` passes first, each 202 whose event is still
//! unacknowledged is rewritten in place as a 503 (its event may yet be delivered: it stays
//! in the outbox, and a client that retries may make a copy that consumers drop by
//! `origin` and `id`).
//!
//! Nothing here runs without `--durable`: the default answer path only skips a no-op.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::time::Instant;

use crate::metrics::Outcome;
use crate::response::{self, Cors, Response};
use crate::route::App;
use client::outbox::Outbox;

/// The body of a 202 the bus did not acknowledge in time: the same error as a full buffer's,
/// with the reason, so a client can tell that the event may still arrive.
pub const ACK_TIMEOUT_BODY: &str = r#"{"error":"bus_unavailable","reason":"ack_timeout"}"#;

/// The 202s of one read that wait for the bus, in request order.
#[derive(Default)]
pub struct Held {
    promises: Vec<Promise>,
}

/// One 202 in the output: where it is, the event it promises, and what a 503 in its place
/// must keep (its CORS headers, and whether it closes the connection).
struct Promise {
    at: Range<usize>,
    event: u64,
    cors: Option<Cors>,
    close: bool,
    /// Rewritten as a 503: its event was not acknowledged in time.
    refused: bool,
}

impl Held {
    /// Notes the 202 just written at `at` for event `event`; takes the response's CORS
    /// headers, in case it must be written again as a 503.
    pub fn hold(&mut self, event: u64, at: Range<usize>, response: &mut Response) {
        self.promises.push(Promise {
            at,
            event,
            cors: response.cors.take(),
            close: response.close,
            refused: false,
        });
    }

    /// Whether no 202 waits.
    pub fn is_empty(&self) -> bool {
        self.promises.is_empty()
    }

    /// Waits until the bus has acknowledged every held event, or `timeout`; then rewrites
    /// the 202s still unacknowledged as 503 in `out` and counts each held request's outcome.
    pub async fn settle(&mut self, out: &mut BytesMut, app: &App, timeout: Duration) {
        let Some(last) = self.promises.last().map(|p| p.event) else {
            return;
        };
        let deadline = Instant::now() + timeout;
        if !app.outbox.acknowledged(last, deadline).await {
            self.refuse_unacknowledged(out, &app.outbox);
        }
        for promise in self.promises.drain(..) {
            let outcome = if promise.refused {
                Outcome::AckTimeout
            } else {
                Outcome::Accepted
            };
            app.metrics.count(outcome);
        }
    }

    /// Rebuilds `out` with a 503 in place of every held 202 whose event is unacknowledged.
    fn refuse_unacknowledged(&mut self, out: &mut BytesMut, outbox: &Outbox) {
        let old = out.split();
        let mut copied = 0;
        response::with_date(SystemTime::now(), |date| {
            for promise in &mut self.promises {
                if outbox.is_acknowledged(promise.event) {
                    continue;
                }
                out.extend_from_slice(&old[copied..promise.at.start]);
                let mut refusal =
                    Response::json(503, ACK_TIMEOUT_BODY).with_header("Retry-After", "1");
                refusal.cors = promise.cors.clone();
                refusal.close = promise.close;
                refusal.write(out, false, date);
                promise.refused = true;
                copied = promise.at.end;
            }
        });
        out.extend_from_slice(&old[copied..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::outbox::Limits;

    fn outbox() -> Outbox {
        Outbox::new(
            Limits {
                events: 100,
                bytes: usize::MAX,
                batch_events: 100,
                batch_bytes: usize::MAX,
            },
            1,
        )
    }

    /// Writes `response` to `out` and, if `event`, holds it, as the answer loop does.
    fn answer(out: &mut BytesMut, held: &mut Held, mut response: Response, event: Option<u64>) {
        let start = out.len();
        response.write(out, false, "d");
        if let Some(event) = event {
            held.hold(event, start..out.len(), &mut response);
        }
    }

    fn statuses(out: &BytesMut) -> Vec<&str> {
        std::str::from_utf8(out)
            .unwrap()
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|r| &r[..3])
            .collect()
    }

    #[test]
    fn only_unacknowledged_202s_become_503_in_place() {
        let outbox = outbox();
        let first = outbox.push(1, 2, "a", "o").unwrap();
        let batch = outbox.take_batch().unwrap();
        let second = outbox.push(1, 2, "b", "o").unwrap();
        outbox.ack(batch.id);
        let mut out = BytesMut::new();
        let mut held = Held::default();
        let accepted = || Response::json(202, r#"{"status":"accepted"}"#);
        answer(&mut out, &mut held, accepted(), Some(first));
        answer(&mut out, &mut held, Response::json(404, "{}"), None);
        let mut last = accepted().closing();
        last.cors = Some(Cors {
            origin: "https://app.example".into(),
            preflight: false,
        });
        answer(&mut out, &mut held, last, Some(second));
        held.refuse_unacknowledged(&mut out, &outbox);
        assert_eq!(statuses(&out), ["202", "404", "503"]);
        let text = std::str::from_utf8(&out).unwrap();
        let refusal = &text[text.rfind("HTTP/1.1 503").unwrap()..];
        assert!(refusal.contains("\r\nRetry-After: 1\r\n"), "{refusal}");
        assert!(refusal.contains("\r\nConnection: close\r\n"), "{refusal}");
        assert!(refusal.contains("Access-Control-Allow-Origin: https://app.example"));
        assert!(refusal.ends_with(ACK_TIMEOUT_BODY), "{refusal}");
    }
}
