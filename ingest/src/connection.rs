//! One HTTP connection: read, answer every complete request in the buffer, write the
//! answers at once, repeat.
//!
//! Pipelined requests that arrive in one read are answered with one write. A request head
//! that has started must finish within the header timeout (a slow drip does not reset it);
//! an idle keep-alive connection is closed after the idle timeout, or sooner when its slot
//! is reclaimed for a newcomer (see [`crate::slots`]). With `--durable` the answers of a
//! read wait, before that one write, for the bus to acknowledge the events they accept
//! ([`crate::durable`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::durable::Held;
use crate::metrics::Outcome;
use crate::request::{self, Limits, Method, Reject};
use crate::response::{self, Response};
use crate::route::{self, App};
use crate::slots::Lease;

/// How long a connection may take over a request head, and stay idle between requests.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a head's first byte to its end (a slow drip does not reset it).
    pub header: Duration,
    /// Between requests on a keep-alive connection.
    pub idle: Duration,
}

/// Serves one HTTP connection until the client leaves, a response closes it, it is
/// reclaimed while idle, or `stop`.
pub async fn handle(
    mut stream: TcpStream,
    app: Arc<App>,
    limits: Limits,
    timeouts: Timeouts,
    stop: CancellationToken,
    lease: Lease,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(BUFFER);
    let mut out = BytesMut::with_capacity(BUFFER);
    let mut head_started: Option<Instant> = None;
    let mut held = Held::default();
    // One timer for the connection's life, armed for the current deadline or an earlier
    // one: see `read_until`.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now() + timeouts.idle));
    // Made once and kept, like the timer: registering a waiter with each and removing it
    // again on every read took a lock each way.
    let mut stopped = std::pin::pin!(stop.cancelled());
    let mut reclaimed = std::pin::pin!(lease.reclaimed());
    loop {
        let stopping = stop.is_cancelled();
        let close = match app.ack_timeout {
            None => answer_buffered(&mut buf, &mut out, &app, limits, stopping),
            Some(_) => answer_durable(&mut buf, &mut out, &app, limits, stopping, &mut held),
        };
        // Read before the write: once the response is out the client may go on at once, so
        // this is when the connection went quiet, and idle times keep the order of events.
        let now = Instant::now();
        if buf.is_empty() {
            head_started = None;
        } else if head_started.is_none() {
            head_started = Some(now);
        }
        if let (Some(timeout), false) = (app.ack_timeout, held.is_empty()) {
            held.settle(&mut out, &app, timeout).await;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            return linger(stream).await;
        }
        throttle(&app).await;
        // Nothing buffered and nothing being written: the slot may be reclaimed meanwhile,
        // and then the connection closes quietly, owing no response.
        let idle = head_started.is_none();
        if idle && !lease.idle(now.into_std()) {
            return;
        }
        let deadline = head_started.map_or(now + timeouts.idle, |t| t + timeouts.header);
        let read = tokio::select! {
            read = read_until(&mut stream, &mut buf, timer.as_mut(), deadline) => read,
            () = stopped.as_mut(), if idle => return,
            () = reclaimed.as_mut(), if idle => return,
        };
        if idle && !lease.busy() {
            return;
        }
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(TimedOut) if head_started.is_some() => {
                app.metrics.count(Outcome::Timeout);
                Response::json(408, r#"{"error":"request_timeout"}"#)
                    .closing()
                    .write_now(&mut out);
                let _ = stream.write_all(&out).await;
                return linger(stream).await;
            }
            Err(_) => return,
        }
    }
}

/// The deadline passed before the read completed.
struct TimedOut;

/// What a connection's read and write buffers start with.
const BUFFER: usize = 4096;

/// The least room a read is given while part of a request waits in the buffer.
const MIN_READ: usize = 1024;

/// Gives the next read the room it should have: all of the buffer once everything in it was
/// answered, and at least [`MIN_READ`] otherwise.
///
/// Answered requests are consumed from the front, and a `BytesMut` only takes that space
/// back when asked to. Without this each read got what the ones before had left at the end
/// (a pipelined burst of 1,792 bytes arrived as 1,408, then 64, then 512 and so on), so one
/// burst took two reads and two writes a third of the time. Taking the space back moves only
/// the unanswered bytes, and none when the buffer is empty; it allocates only when a request
/// head outgrows the buffer.
fn make_room(buf: &mut BytesMut) {
    buf.reserve(if buf.is_empty() { BUFFER } else { MIN_READ });
}

/// Reads into `buf` until `deadline`, with `timer` armed for it or for an earlier deadline.
///
/// A deadline moves later with every request on a busy connection; moving the timer each
/// time would take it out of tokio's timer wheel and put it back once per read. Instead
/// the timer moves only when the deadline comes sooner, and when it fires before the
/// deadline it is set again: a busy connection touches the wheel about once per idle
/// timeout, not once per read.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    deadline: Instant,
) -> Result<std::io::Result<usize>, TimedOut> {
    if deadline < timer.deadline() {
        timer.as_mut().reset(deadline);
    }
    make_room(buf);
    loop {
        tokio::select! {
            biased;
            read = stream.read_buf(buf) => return Ok(read),
            () = timer.as_mut() => {
                if Instant::now() >= deadline {
                    return Err(TimedOut);
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// Backpressure: while busd is connected but behind (the outbox is over half full), stop
/// reading for up to a second so TCP slows the client down, instead of filling the buffer
/// and answering 503. When busd is away, or stays behind, the buffer fills and the 503s of
/// the contract follow.
async fn throttle(app: &App) {
    if !app.outbox.above_high_water() {
        return;
    }
    let give_up = Instant::now() + Duration::from_secs(1);
    loop {
        // Registered before the check, so an ack in between still wakes us.
        let room = app.outbox.room.notified();
        if !(app.outbox.above_high_water() && app.link.is_up()) {
            return;
        }
        if tokio::time::timeout_at(give_up, room).await.is_err() {
            return;
        }
    }
}

/// Answers every complete request at the front of `buf`; returns whether to close.
///
/// The clock is read once per call, not per request: the pipelined requests of one read are
/// accepted in the same microsecond as far as anyone can tell, and share one Date header.
/// Public so the request path can be driven without a socket, exactly as a connection does.
pub fn answer_buffered(
    buf: &mut BytesMut,
    out: &mut BytesMut,
    app: &App,
    limits: Limits,
    stopping: bool,
) -> bool {
    answer(buf, out, app, limits, stopping, |_, _, _| false)
}

/// [`answer_buffered`] for `--durable`: each 202 that gave the outbox an event is also noted
/// in `held`, whose [`Held::settle`] must run before `out` is written (and counts those
/// requests' outcomes, known only then).
pub fn answer_durable(
    buf: &mut BytesMut,
    out: &mut BytesMut,
    app: &App,
    limits: Limits,
    stopping: bool,
    held: &mut Held,
) -> bool {
    answer(buf, out, app, limits, stopping, |event, at, response| {
        held.hold(event, at, response);
        true
    })
}

/// The answer loop of both modes. `hold` is given each response that accepted an event,
/// with the event's id and where the response sits in `out`; it returns whether it took
/// over counting the request's outcome. The default mode's `hold` does nothing, and is
/// compiled away.
#[inline(always)]
fn answer(
    buf: &mut BytesMut,
    out: &mut BytesMut,
    app: &App,
    limits: Limits,
    stopping: bool,
    mut hold: impl FnMut(u64, Range<usize>, &mut Response) -> bool,
) -> bool {
    if buf.is_empty() {
        return false;
    }
    let started = std::time::Instant::now();
    let now = std::time::SystemTime::now();
    let now_us = plumbing::clock::us_at(now);
    let mut answered = 0;
    let close = response::with_date(now, |date| {
        loop {
            let (mut response, outcome, event, head_only, used) = match request::parse(buf, limits)
            {
                Ok(None) => return false,
                Ok(Some((head, used))) => {
                    let (mut response, outcome, event) = route::handle(&head, app, now_us);
                    response.close |= !head.keep_alive || stopping;
                    (response, outcome, event, head.method == Method::Head, used)
                }
                Err(reject) => {
                    let (response, outcome) = rejection(reject);
                    (response.closing(), outcome, None, false, 0)
                }
            };
            let start = out.len();
            response.write(out, head_only, date);
            let held = event.is_some_and(|id| hold(id, start..out.len(), &mut response));
            if !held {
                app.metrics.count(outcome);
            }
            answered += 1;
            if response.close {
                return true;
            }
            buf.advance(used);
        }
    });
    if answered > 0 {
        app.metrics
            .answer_time
            .observe(started.elapsed().as_secs_f64());
    }
    close
}

fn rejection(reject: Reject) -> (Response, Outcome) {
    match reject {
        Reject::Malformed => (
            Response::json(400, r#"{"error":"bad_request"}"#),
            Outcome::BadRequest,
        ),
        Reject::Body => (
            Response::json(400, r#"{"error":"body_not_allowed"}"#),
            Outcome::BadRequest,
        ),
        Reject::UriTooLong => (
            Response::json(414, r#"{"error":"uri_too_long"}"#),
            Outcome::TooLarge,
        ),
        Reject::HeadTooLarge => (
            Response::json(431, r#"{"error":"header_too_large"}"#),
            Outcome::TooLarge,
        ),
    }
}

/// Half-closes, then reads and drops what the client still sends for a moment, so closing
/// does not reset the connection while our last response is still unread.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0;
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            total += n;
            if total > 1 << 20 {
                break;
            }
        }
    })
    .await;
}

/// Refuses a connection over the limit when no idle connection could make room for it.
pub async fn refuse(mut stream: TcpStream) {
    let mut out = BytesMut::new();
    Response::json(503, r#"{"error":"too_many_connections"}"#)
        .with_header("Retry-After", "1")
        .closing()
        .write_now(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    linger(stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer whose first `answered` bytes were answered and consumed, with `waiting`
    /// bytes of a request still in it.
    fn consumed(answered: usize, waiting: &[u8]) -> BytesMut {
        let mut buf = BytesMut::with_capacity(BUFFER);
        buf.extend_from_slice(&vec![b'x'; answered]);
        buf.extend_from_slice(waiting);
        buf.advance(answered);
        buf
    }

    #[test]
    fn a_read_after_everything_was_answered_gets_the_whole_buffer_back() {
        for answered in [1, 64, 1792, 3000, BUFFER] {
            let mut buf = consumed(answered, b"");
            let start = buf.as_ptr() as usize;
            make_room(&mut buf);
            assert_eq!(buf.capacity(), BUFFER, "after {answered} bytes");
            assert_eq!(start - buf.as_ptr() as usize, answered, "same allocation");
        }
    }

    #[test]
    fn a_read_behind_part_of_a_request_gets_room_and_keeps_that_part() {
        for (answered, waiting) in [(3500, &b"GET /1?da"[..]), (10, b"GET"), (0, b"G")] {
            let mut buf = consumed(answered, waiting);
            make_room(&mut buf);
            assert!(
                buf.capacity() - buf.len() >= MIN_READ,
                "after {answered} bytes"
            );
            assert_eq!(&buf[..], waiting);
        }
    }
}
