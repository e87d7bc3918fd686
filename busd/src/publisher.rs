//! A publisher's connection: batches in, `PubAck`s out.
//!
//! Acks for every frame that has already arrived are written together: while the read buffer
//! holds another whole frame, replies wait, so a pipelining publisher costs one write per
//! read rather than one per batch. The subscriber writers its batches reach are woken once
//! no further frame can be read without waiting (or after [`Wakes::MAX_BATCHES`]), so a
//! subscriber gets the events of batches that arrived back to back in one write.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use protocol::codec::decode_body;
use protocol::{ClientFrame, ErrorCode, Role, ServerFrame, publish};

use crate::bus::{Published, Wakes};
use crate::context::Context;
use crate::peer::{Close, Kind, Outbound, Reader, close, permitted};
use crate::publishers::Claim;
use crate::reader::ReadError;

/// Serves a publisher that holds `claim` on its name until it leaves, breaks the protocol,
/// is replaced by a newer connection of its own process, or busd shuts down.
pub async fn run(
    mut reader: Reader,
    mut out: Outbound,
    ctx: &Context,
    claim: &Claim<'_>,
    instance: u64,
    peer: &str,
) {
    ctx.bus.counters.publishers.fetch_add(1, Relaxed);
    let ended = serve(&mut reader, &mut out, ctx, claim, instance).await;
    ctx.bus.counters.publishers.fetch_sub(1, Relaxed);
    match ended {
        Some(reason) => close(reader, out, reason, peer).await,
        None => {
            drop(reader);
            let goodbye = ServerFrame::Goodbye {
                epoch: ctx.bus.epoch(),
                last_seq: ctx.bus.head(),
            };
            out.finish(&goodbye).await;
        }
    }
}

/// Returns `None` when stopped for shutdown.
async fn serve(
    reader: &mut Reader,
    out: &mut Outbound,
    ctx: &Context,
    claim: &Claim<'_>,
    instance: u64,
) -> Option<Close> {
    let name = claim.name();
    let mut wakes = Wakes::default();
    loop {
        // Acks go out as soon as no whole frame is buffered, so the publisher's window
        // keeps moving while this connection publishes what else is at hand.
        if !reader.has_frame() {
            let mut flush = std::pin::pin!(out.flush());
            let flushed = match ready_now(flush.as_mut()) {
                Some(flushed) => flushed,
                // The publisher is not reading its acks: the subscribers its batches
                // reached must not wait with it.
                None => {
                    wakes.wake();
                    flush.await
                }
            };
            if let Err(err) = flushed {
                return Some(Close::Quiet(err.to_string()));
            }
        }
        let next = match at_hand(reader, &wakes) {
            Some(next) => next,
            None => {
                // Nothing more to publish without waiting: wake the writers the batches
                // reached, then wait.
                wakes.wake();
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.stop_reading.cancelled() => return None,
                    _ = claim.replaced.cancelled() => {
                        let message = "replaced by a newer connection of the same publisher";
                        return Some(Close::refuse(ErrorCode::NameInUse, message));
                    }
                    next = reader.next() => next,
                }
            }
        };
        let body = match next {
            None => return Some(Close::Quiet("publisher closed".into())),
            Some(Err(err)) => return Some(err.into()),
            Some(Ok(body)) => body,
        };
        if let Err(reason) = handle(&body, out, ctx, name, instance, &mut wakes) {
            return Some(reason);
        }
    }
}

/// The next frame if it can be had without waiting (already buffered, or whole in the
/// socket), while `wakes` may hold more batches; `None` when reading it would wait.
fn at_hand(reader: &mut Reader, wakes: &Wakes) -> Option<Option<Result<Bytes, ReadError>>> {
    if wakes.full() {
        return None;
    }
    // The reader is cancel-safe: what it read stays in its buffer.
    ready_now(std::pin::pin!(reader.next()))
}

/// Polls `future` once, with a waker that does nothing: its output if it is ready. Whoever
/// polls it (or a new one) again registers the real waker.
fn ready_now<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    match future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

fn handle(
    body: &Bytes,
    out: &mut Outbound,
    ctx: &Context,
    name: &str,
    instance: u64,
    wakes: &mut Wakes,
) -> Result<(), Close> {
    if publish::is_publish(body) {
        let batch =
            publish::parse(body).map_err(|e| Close::refuse(ErrorCode::Malformed, e.to_string()))?;
        let batch_id = batch.batch_id;
        let published = ctx.bus.publish_deferring(name, instance, batch, wakes);
        wakes.count_batch();
        return match published {
            Ok(Published::Accepted { .. } | Published::Duplicate) => {
                out.push(&ServerFrame::PubAck { batch_id });
                Ok(())
            }
            Err(closed) => Err(Close::refuse(ErrorCode::ShuttingDown, closed.to_string())),
        };
    }
    let frame = decode_body::<ClientFrame>(body)?;
    permitted(Role::Publisher, Kind::of(&frame))?;
    match frame {
        ClientFrame::Ping => out.push(&ServerFrame::Pong),
        ClientFrame::StatsRequest => out.push(&ServerFrame::Stats(ctx.bus.stats())),
        ClientFrame::PublisherStatsRequest => out.push(&ctx.publisher_stats()),
        // The fast path above reads every Publish postcard reads; one that only postcard
        // reads would be busd's bug, not the peer's, but is refused all the same.
        ClientFrame::Publish { .. } => {
            return Err(Close::refuse(
                ErrorCode::Malformed,
                "unexpected Publish encoding",
            ));
        }
        // Refused by `permitted` above.
        ClientFrame::Hello { .. }
        | ClientFrame::Subscribe { .. }
        | ClientFrame::SubscribeWith { .. }
        | ClientFrame::Join { .. }
        | ClientFrame::Ack { .. } => {}
    }
    Ok(())
}
