//! A subscriber's connection: a reader for its requests and a writer that drains its queue.
//!
//! The two halves run as separate tasks so a subscriber that stops reading its socket only
//! blocks its own writer; the bus keeps pushing into its bounded queue, which drops the
//! oldest events (and reports a gap) or disconnects it, per the slow policy.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use protocol::codec::decode_body;
use protocol::fanout::EventsFrame;
use protocol::{ClientFrame, ErrorCode, Filter, Role, ServerFrame, publish};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::bus::Subscriber;
use crate::context::Context;
use crate::filter::SubKey;
use crate::peer::{Close, Kind, Outbound, Reader, permitted};
use crate::queue::Entry;

/// Most events taken from the queue per write.
const DRAIN_EVENTS: usize = 4096;
/// An `Events` frame is closed at this size, well under any peer's frame limit.
const FRAME_BYTES: usize = 256 * 1024;

/// What the reader asks the writer to send.
enum Control {
    Frame(ServerFrame),
    /// Send this, close, and stop.
    Fatal(ServerFrame),
}

/// Serves a subscriber until it leaves, breaks the protocol, falls too far behind under the
/// disconnect policy, or busd says `Goodbye`.
pub async fn run(reader: Reader, out: Outbound, ctx: &Arc<Context>, name: String, peer: &str) {
    let ctx_writer = ctx.clone();
    let (key, sub) = ctx.bus.register(name);
    let (control, requests) = mpsc::channel(64);
    let writer = tokio::spawn(write_loop(out, sub, requests, ctx_writer));
    let mut reader = reader;
    let ended = read_loop(&mut reader, ctx, key, &control).await;
    // The reader's buffer and any budget it holds are not needed while the writer finishes.
    let rd = reader.into_inner();
    match ended {
        Ended::Stopped => {
            // Keep `control` open: the writer flushes and says goodbye once the bus closes.
            let _ = writer.await;
        }
        Ended::Close(Close::Refuse(code, message)) => {
            tracing::info!(%peer, ?code, %message, "closing subscriber");
            let _ = control
                .send(Control::Fatal(ServerFrame::Error { code, message }))
                .await;
            drop(control);
            let _ = writer.await;
            crate::peer::linger(rd).await;
        }
        Ended::Close(quiet) => {
            drop(control);
            let _ = writer.await;
            tracing::debug!(%peer, reason = ?quiet, "subscriber left");
        }
    }
    ctx.bus.unregister(key);
}

enum Ended {
    Stopped,
    Close(Close),
}

async fn read_loop(
    reader: &mut Reader,
    ctx: &Context,
    key: SubKey,
    control: &mpsc::Sender<Control>,
) -> Ended {
    loop {
        let next = tokio::select! {
            biased;
            _ = ctx.shutdown.stop_reading.cancelled() => return Ended::Stopped,
            _ = control.closed() => return Ended::Close(Close::Quiet("writer ended".into())),
            next = reader.next() => next,
        };
        let body = match next {
            None => return Ended::Close(Close::Quiet("subscriber closed".into())),
            Some(Err(err)) => return Ended::Close(err.into()),
            Some(Ok(body)) => body,
        };
        let reply = match request(&body, ctx, key) {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(reason) => return Ended::Close(reason),
        };
        if control.send(Control::Frame(reply)).await.is_err() {
            return Ended::Close(Close::Quiet("writer ended".into()));
        }
    }
}

/// Acts on one request; returns the reply to send, if any.
fn request(body: &bytes::Bytes, ctx: &Context, key: SubKey) -> Result<Option<ServerFrame>, Close> {
    if publish::is_publish(body) {
        permitted(Role::Subscriber, Kind::Publish)?;
    }
    let frame = decode_body::<ClientFrame>(body)?;
    permitted(Role::Subscriber, Kind::of(&frame))?;
    match frame {
        ClientFrame::Subscribe {
            filter,
            resume_after,
        } => {
            if let Filter::Accounts(accounts) = &filter {
                if accounts.len() > ctx.config.max_filter {
                    let message = format!(
                        "filter names {} accounts; the limit is {}",
                        accounts.len(),
                        ctx.config.max_filter
                    );
                    return Err(Close::refuse(ErrorCode::FilterTooLarge, message));
                }
            }
            ctx.bus.subscribe(key, filter, resume_after);
            Ok(None)
        }
        ClientFrame::Ping => Ok(Some(ServerFrame::Pong)),
        ClientFrame::StatsRequest => Ok(Some(ServerFrame::Stats(ctx.bus.stats()))),
        // Refused by `permitted` above.
        ClientFrame::Hello { .. } | ClientFrame::Publish { .. } => Ok(None),
    }
}

async fn write_loop(
    mut out: Outbound,
    sub: Arc<Subscriber>,
    mut requests: mpsc::Receiver<Control>,
    ctx: Arc<Context>,
) {
    let heartbeat = ctx.config.heartbeat;
    let mut idle_until = Instant::now() + heartbeat;
    let mut batch = Vec::with_capacity(DRAIN_EVENTS);
    loop {
        tokio::select! {
            biased;
            request = requests.recv() => match request {
                Some(Control::Frame(frame)) => out.push(&frame),
                Some(Control::Fatal(frame)) => return out.finish(&frame).await,
                None => return,
            },
            _ = sub.notify.notified() => {
                if let Err(end) = drain(&mut out, &sub, &ctx, &mut batch).await {
                    return finish(out, end).await;
                }
            }
            _ = ctx.shutdown.goodbye.cancelled() => {
                if let Err(end) = drain(&mut out, &sub, &ctx, &mut batch).await {
                    return finish(out, end).await;
                }
                let goodbye = ServerFrame::Goodbye { epoch: ctx.bus.epoch(), last_seq: ctx.bus.head() };
                return out.finish(&goodbye).await;
            }
            _ = sleep_until(idle_until) => {
                out.push(&ServerFrame::Heartbeat { head_seq: ctx.bus.head() });
            }
        }
        match out.flush().await {
            Ok(true) => idle_until = Instant::now() + heartbeat,
            Ok(false) => {}
            Err(_) => return,
        }
    }
}

/// Why draining stopped the writer.
enum DrainEnd {
    Overflowed,
    SocketFailed,
}

async fn finish(out: Outbound, end: DrainEnd) {
    if let DrainEnd::Overflowed = end {
        let error = ServerFrame::Error {
            code: ErrorCode::SlowConsumer,
            message: "subscriber fell behind its queue limit; resume to catch up".into(),
        };
        out.finish(&error).await;
    }
}

/// Writes out everything queued, in frames of bounded size, gaps before the events after them.
async fn drain(
    out: &mut Outbound,
    sub: &Subscriber,
    ctx: &Context,
    batch: &mut Vec<Entry>,
) -> Result<(), DrainEnd> {
    loop {
        let drained = sub.queue.drain_into(DRAIN_EVENTS, batch);
        if drained.overflowed {
            return Err(DrainEnd::Overflowed);
        }
        if let Some(gap) = drained.gap {
            out.push(&ServerFrame::Gap {
                from_seq: gap.from_seq,
                to_seq: gap.to_seq,
                missed: gap.missed,
            });
        }
        let taken = batch.len();
        let mut frame = EventsFrame::begin(&mut out.buf);
        for entry in batch.drain(..) {
            if !frame.is_empty() && frame.len(&out.buf) + entry.bytes.len() > FRAME_BYTES {
                frame.finish(&mut out.buf);
                frame = EventsFrame::begin(&mut out.buf);
            }
            frame.push(&mut out.buf, &entry.bytes);
        }
        frame.finish(&mut out.buf);
        sub.delivered.fetch_add(taken as u64, Relaxed);
        ctx.bus.counters.delivered.fetch_add(taken as u64, Relaxed);
        out.flush().await.map_err(|_| DrainEnd::SocketFailed)?;
        if taken < DRAIN_EVENTS {
            return Ok(());
        }
    }
}
