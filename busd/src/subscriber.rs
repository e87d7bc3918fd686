//! A subscriber's connection: one task that answers its requests and drains its queue.
//!
//! One task, not a reader and a writer: an idle subscriber then costs one small future and
//! no channel, and holds no buffer ([`Outbound::release`], [`crate::reader`]). A subscriber
//! that stops reading its socket blocks only its own task while a write waits; the bus
//! keeps pushing into its bounded queue, which drops the oldest events (and reports a gap)
//! or disconnects it, per the slow policy.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use protocol::codec::decode_body;
use protocol::fanout::write_frames_sharing;
use protocol::{ClientFrame, ErrorCode, Filter, Role, ServerFrame, publish};
use tokio::time::{Instant, sleep_until};

use crate::bus::Subscriber;
use crate::context::Context;
use crate::filter::{SubKey, origin_matches};
use crate::peer::{Close, Kind, Outbound, Reader, permitted};
use crate::queue::Entry;

/// Most events taken from the queue per write, but for the rest of a run that crosses it
/// (public so the instruction-count guard measures the same drain).
pub const DRAIN_EVENTS: usize = 4096;
/// An `Events` frame is closed at this size, well under any peer's frame limit.
pub const FRAME_BYTES: usize = 256 * 1024;
/// Runs of at least this many bytes are written from the bus's shared buffer in a vectored
/// write rather than copied into the write buffer: a subscriber taking whole batches saves
/// a copy of everything it is sent. Smaller runs (a filtered subscriber's share of a batch)
/// are copied, which measured faster than many small slices.
pub const SHARE_FROM: usize = 16 * 1024;

/// Serves a subscriber until it leaves, breaks the protocol, falls too far behind under the
/// disconnect policy, or busd says `Goodbye`.
pub async fn run(reader: Reader, out: Outbound, ctx: &Arc<Context>, name: String, peer: &str) {
    let (key, sub) = ctx.bus.register(name);
    let mut connection = Connection {
        reader,
        out,
        sub,
        key,
        batch: Vec::new(),
        origins: BTreeSet::new(),
    };
    let ended = connection.serve(ctx).await;
    let Connection { reader, out, .. } = connection;
    // Boxed: the task is as large as its largest state, and the ending should not make
    // every idle subscriber larger.
    Box::pin(end(ended, reader, out, ctx, peer)).await;
    ctx.bus.unregister(key);
}

/// Says goodbye, or why the connection is closed, and lets the peer read it.
async fn end(ended: Ended, reader: Reader, out: Outbound, ctx: &Context, peer: &str) {
    match ended {
        Ended::Goodbye => {
            let goodbye = ServerFrame::Goodbye {
                epoch: ctx.bus.epoch(),
                last_seq: ctx.bus.head(),
            };
            let rd = reader.into_inner();
            out.finish(&goodbye).await;
            // Until the subscriber has read it all and closes (busd waits at most
            // --drain-timeout for every connection anyway).
            crate::peer::linger_for(rd, ctx.config.drain_timeout).await;
        }
        Ended::Close(Close::Refuse(code, message)) => {
            tracing::info!(%peer, ?code, %message, "closing subscriber");
            // The reader's buffer and any budget it holds are not needed while lingering.
            let rd = reader.into_inner();
            out.finish(&ServerFrame::Error { code, message }).await;
            crate::peer::linger(rd).await;
        }
        Ended::Close(quiet) => tracing::debug!(%peer, reason = ?quiet, "subscriber left"),
    }
}

/// How serving a subscriber ended.
enum Ended {
    /// busd is shutting down and the queue is flushed: say `Goodbye`.
    Goodbye,
    Close(Close),
}

impl From<DrainEnd> for Ended {
    fn from(end: DrainEnd) -> Self {
        Ended::Close(match end {
            DrainEnd::Overflowed => Close::refuse(
                ErrorCode::SlowConsumer,
                "subscriber fell behind its queue limit; resume to catch up",
            ),
            DrainEnd::SocketFailed => Close::Quiet("write failed".into()),
        })
    }
}

/// One subscriber's connection and what it holds between wake-ups.
struct Connection {
    reader: Reader,
    out: Outbound,
    sub: Arc<Subscriber>,
    key: SubKey,
    /// Entries taken from the queue: grown by the first drain, kept while busy, freed with
    /// the write buffer when idle.
    batch: Vec<Entry>,
    /// The origins it asked for (`SubscribeWith`); empty: every origin.
    origins: BTreeSet<String>,
}

impl Connection {
    async fn serve(&mut self, ctx: &Context) -> Ended {
        let heartbeat = ctx.config.heartbeat;
        let mut idle_until = Instant::now() + heartbeat;
        let mut reading = true;
        loop {
            let mut idle = false;
            tokio::select! {
                biased;
                _ = ctx.shutdown.stop_reading.cancelled(), if reading => reading = false,
                next = self.reader.next(), if reading => {
                    if let Err(ended) = self.on_request(next, ctx) {
                        return ended;
                    }
                }
                _ = ctx.shutdown.goodbye.cancelled() => {
                    // Everything queued goes out before Goodbye, whatever a group member
                    // has acknowledged: Goodbye says the subscriber has it all.
                    return match self.drain(ctx, Cap::None).await {
                        Ok(()) => Ended::Goodbye,
                        Err(end) => end.into(),
                    };
                }
                _ = self.sub.notify.notified() => {
                    if let Err(end) = self.drain(ctx, Cap::Acks).await {
                        return end.into();
                    }
                }
                _ = sleep_until(idle_until) => {
                    self.out.push(&ServerFrame::Heartbeat { head_seq: ctx.bus.head() });
                    idle = true;
                }
            }
            match self.out.flush().await {
                Ok(true) => idle_until = Instant::now() + heartbeat,
                Ok(false) => {}
                Err(err) => return Ended::Close(Close::Quiet(err.to_string())),
            }
            if idle {
                self.out.release();
                self.batch = Vec::new();
            }
        }
    }

    /// Acts on what the reader got: a request's reply is queued for the next flush.
    fn on_request(
        &mut self,
        next: Option<Result<bytes::Bytes, crate::reader::ReadError>>,
        ctx: &Context,
    ) -> Result<(), Ended> {
        let body = match next {
            None => return Err(Ended::Close(Close::Quiet("subscriber closed".into()))),
            Some(Err(err)) => return Err(Ended::Close(err.into())),
            Some(Ok(body)) => body,
        };
        match request(&body, ctx, self.key, &self.sub, &mut self.origins) {
            Ok(Some(reply)) => self.out.push(&reply),
            Ok(None) => {}
            Err(reason) => return Err(Ended::Close(reason)),
        }
        Ok(())
    }

    async fn drain(&mut self, ctx: &Context, cap: Cap) -> Result<(), DrainEnd> {
        drain(
            &mut self.out,
            &self.sub,
            ctx,
            cap,
            &mut self.batch,
            &self.origins,
        )
        .await
    }
}

/// Acts on one request; returns the reply to send, if any. A subscribe sets `origins`.
fn request(
    body: &bytes::Bytes,
    ctx: &Context,
    key: SubKey,
    sub: &Subscriber,
    origins: &mut BTreeSet<String>,
) -> Result<Option<ServerFrame>, Close> {
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
            check_filter(&filter, ctx)?;
            not_a_member(sub)?;
            origins.clear();
            ctx.bus.subscribe(key, filter, resume_after);
            Ok(None)
        }
        ClientFrame::Join { group, filter } => {
            check_filter(&filter, ctx)?;
            if group.is_empty() || group.len() > protocol::MAX_GROUP_NAME {
                let message = format!(
                    "a group name has 1 to {} bytes; this one has {}",
                    protocol::MAX_GROUP_NAME,
                    group.len()
                );
                return Err(Close::refuse(ErrorCode::Malformed, message));
            }
            origins.clear();
            ctx.bus
                .join(key, group, filter)
                .map_err(|e| Close::refuse(ErrorCode::NotPermitted, e.to_string()))?;
            Ok(None)
        }
        ClientFrame::Ack { seq } => {
            ctx.bus.ack(sub, seq);
            Ok(None)
        }
        ClientFrame::SubscribeWith {
            filter,
            origins: wanted,
            start,
        } => {
            check_filter(&filter, ctx)?;
            if wanted.len() > ctx.config.max_filter {
                let message = format!(
                    "filter names {} origins; the limit is {}",
                    wanted.len(),
                    ctx.config.max_filter
                );
                return Err(Close::refuse(ErrorCode::FilterTooLarge, message));
            }
            not_a_member(sub)?;
            ctx.bus.subscribe_with(key, filter, &wanted, start);
            *origins = wanted;
            Ok(None)
        }
        ClientFrame::Ping => Ok(Some(ServerFrame::Pong)),
        ClientFrame::StatsRequest => Ok(Some(ServerFrame::Stats(ctx.bus.stats()))),
        ClientFrame::PublisherStatsRequest => Ok(Some(ctx.publisher_stats())),
        // Refused by `permitted` above.
        ClientFrame::Hello { .. } | ClientFrame::Publish { .. } => Ok(None),
    }
}

/// Refuses a filter naming more accounts than busd allows.
fn check_filter(filter: &Filter, ctx: &Context) -> Result<(), Close> {
    match filter {
        Filter::Accounts(accounts) if accounts.len() > ctx.config.max_filter => {
            let message = format!(
                "filter names {} accounts; the limit is {}",
                accounts.len(),
                ctx.config.max_filter
            );
            Err(Close::refuse(ErrorCode::FilterTooLarge, message))
        }
        _ => Ok(()),
    }
}

/// Refuses a subscription on a connection that joined a consumer group: it would get its
/// share of the group's events and every event besides.
fn not_a_member(sub: &Subscriber) -> Result<(), Close> {
    match sub.member.get() {
        Some(_) => Err(Close::refuse(
            ErrorCode::NotPermitted,
            "this connection joined a consumer group; it cannot subscribe as well",
        )),
        None => Ok(()),
    }
}

/// How far a group member's writer may run ahead of its acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    /// At most `MAX_UNACKED` events past the last `Ack`.
    Acks,
    /// No limit: busd is saying goodbye.
    None,
}

/// Why draining stopped serving.
enum DrainEnd {
    Overflowed,
    SocketFailed,
}

/// Writes out everything queued, in frames of bounded size, gaps before the events after them.
async fn drain(
    out: &mut Outbound,
    sub: &Subscriber,
    ctx: &Context,
    cap: Cap,
    batch: &mut Vec<Entry>,
    origins: &BTreeSet<String>,
) -> Result<(), DrainEnd> {
    loop {
        // A group member is written at most MAX_UNACKED events ahead of its acks; its
        // `Ack` wakes this writer again.
        let max = match (cap, sub.member.get()) {
            (Cap::Acks, Some(member)) => member.room().min(DRAIN_EVENTS),
            _ => DRAIN_EVENTS,
        };
        let drained = sub.queue.drain_into(max, batch);
        if drained.overflowed {
            return Err(DrainEnd::Overflowed);
        }
        if let Some(gap) = drained.gap {
            out.push(&ServerFrame::Gap {
                from_seq: gap.from_seq,
                to_seq: gap.to_seq,
                missed: gap.missed,
            });
            if let Some(member) = sub.member.get() {
                member.record_gap(gap);
            }
        }
        let drained_count = events_in(batch);
        if !origins.is_empty() {
            split_runs(batch);
            batch.retain(|entry| origin_matches(origins, entry));
        }
        let taken = events_in(batch);
        if let Some(member) = sub.member.get() {
            // Its writer is capped by acknowledgements in events, which holds only because
            // the bus gives a member single events (a run is never cut by `drain_into`).
            debug_assert!(batch.iter().all(|e| e.count == 1), "a member got a run");
            split_runs(batch);
            member.record(batch.iter().map(|e| (e.seq, e.account_id)));
        }
        // Counted first, so each frame's count is written in place, never moved; large
        // runs go to the socket from the bus's buffer, not copied.
        let shared = &mut out.shared;
        write_frames_sharing(
            &mut out.buf,
            batch,
            FRAME_BYTES,
            |e| &e.bytes,
            |e| e.count,
            SHARE_FROM,
            |buf, e| shared.push((buf.len(), e.bytes.clone())),
        );
        batch.clear();
        sub.delivered.fetch_add(taken, Relaxed);
        ctx.bus.counters.delivered.fetch_add(taken, Relaxed);
        out.flush().await.map_err(|_| DrainEnd::SocketFailed)?;
        if max == 0 || drained_count < max as u64 {
            return Ok(());
        }
    }
}

/// Events in `batch`, a run counting its length.
fn events_in(batch: &[Entry]) -> u64 {
    batch.iter().map(|e| e.count).sum()
}

/// Cuts every run in `batch` into single events, for what looks at each event (an origin
/// filter, a group member's record; a member's queue holds no runs, so this costs it nothing).
fn split_runs(batch: &mut Vec<Entry>) {
    if batch.iter().all(|e| e.count == 1) {
        return;
    }
    let runs = std::mem::take(batch);
    batch.extend(runs.into_iter().flat_map(Entry::events));
}
