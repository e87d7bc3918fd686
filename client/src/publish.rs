//! `busctl publish`: events by hand, delivered at least once to busd and never twice.
//!
//! Batches are pipelined and kept until acknowledged; after a reconnect the unacknowledged
//! ones are sent again under the same publisher name and batch ids, so busd drops any it
//! already had.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, Event, Role, ServerFrame};
use tokio::time::Instant;

use crate::cli::{PublishArgs, exit};
use crate::reconnect::Backoff;
use crate::render::now_us;
use crate::session::{self, Conn, SessionError};
use crate::status;

/// Events per Publish frame, and a byte budget that keeps frames under busd's 1 MiB default.
const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;
/// Unacknowledged batches in flight.
const WINDOW: usize = 16;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: PublishArgs) -> i32 {
    // Unique per run: busd drops batch ids it has seen from a publisher of the same name,
    // and subscribers drop event ids they have seen from the same origin.
    let name = format!("busctl-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let batches = batches(&args, &name);
    let total: usize = batches.iter().map(|(_, events)| events.len()).sum();
    let mut acked = 0;
    let mut backoff = Backoff::default();
    let mut down_since: Option<Instant> = None;
    loop {
        let reason = match session::open(
            &args.bus.bus,
            Role::Publisher,
            &name,
            args.bus.token.as_deref(),
        )
        .await
        {
            Ok((mut conn, welcome)) => {
                if let Some(size) = oversized(&batches, welcome.max_frame) {
                    status!(
                        "a batch of {size} bytes is over busd's frame limit of {} bytes: \
                         use smaller --data",
                        welcome.max_frame
                    );
                    return exit::ERROR;
                }
                backoff.reset();
                down_since = None;
                let (newly, failure) = send(&mut conn, &batches[acked..]).await;
                acked += newly;
                match failure {
                    None => {
                        status!("published {total} events to {}", args.bus.bus);
                        return exit::OK;
                    }
                    Some(err) if err.is_fatal() => {
                        status!("{err}");
                        return exit::ERROR;
                    }
                    Some(err) => err.to_string(),
                }
            }
            Err(err) if err.is_fatal() => {
                status!("{err}");
                return exit::ERROR;
            }
            Err(err) => err.to_string(),
        };
        let down = down_since.get_or_insert_with(Instant::now).elapsed();
        if down >= args.max_outage {
            status!(
                "giving up after {}s: {reason}; {acked} of {} batches acknowledged",
                down.as_secs(),
                batches.len()
            );
            return exit::OUTAGE;
        }
        status!(
            "reconnecting (attempt {}, down {}s): {reason}",
            backoff.attempt() + 1,
            down.as_secs()
        );
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The encoded size of the first batch busd would refuse as too large, if any.
fn oversized(batches: &[(u64, Vec<Event>)], max_frame: u64) -> Option<u64> {
    batches.iter().find_map(|(batch_id, events)| {
        let frame = ClientFrame::Publish {
            batch_id: *batch_id,
            events: events.clone(),
        };
        let mut buf = bytes::BytesMut::new();
        let size = protocol::encode_frame(&frame, &mut buf, usize::MAX)
            .map_or(u64::MAX, |()| buf.len() as u64 - 4);
        (size > max_frame).then_some(size)
    })
}

fn batches(args: &PublishArgs, origin: &str) -> Vec<(u64, Vec<Event>)> {
    let mut event = Event {
        account_id: args.account,
        timestamp_us: now_us(),
        data: args.data.clone(),
        origin: origin.into(),
        id: 0,
    };
    let per_batch = (BATCH_BYTES / (args.data.len() + 32)).clamp(1, BATCH_EVENTS) as u64;
    let mut left = args.repeat;
    let mut out = Vec::new();
    while left > 0 {
        let n = left.min(per_batch);
        let events = (0..n)
            .map(|_| {
                event.id += 1;
                event.clone()
            })
            .collect();
        out.push((out.len() as u64 + 1, events));
        left -= n;
    }
    out
}

/// Sends `batches` with up to [`WINDOW`] in flight; returns how many were acknowledged, in
/// order, and why it stopped early.
async fn send(conn: &mut Conn, batches: &[(u64, Vec<Event>)]) -> (usize, Option<SessionError>) {
    let mut sent = 0;
    let mut acked = 0;
    while acked < batches.len() {
        while sent < batches.len() && sent - acked < WINDOW {
            let (batch_id, events) = &batches[sent];
            let frame = ClientFrame::Publish {
                batch_id: *batch_id,
                events: events.clone(),
            };
            if let Err(err) = conn.feed(frame).await {
                return (acked, Some(SessionError::Lost(err.to_string())));
            }
            sent += 1;
        }
        if let Err(err) = conn.flush().await {
            return (acked, Some(SessionError::Lost(err.to_string())));
        }
        match tokio::time::timeout(ACK_TIMEOUT, conn.next()).await {
            Ok(Some(Ok(ServerFrame::PubAck { batch_id }))) if batch_id == batches[acked].0 => {
                acked += 1
            }
            Ok(Some(Ok(ServerFrame::Error { code, message }))) => {
                return (acked, Some(SessionError::Refused { code, message }));
            }
            Ok(Some(Ok(ServerFrame::Goodbye { .. }))) => {
                return (
                    acked,
                    Some(SessionError::Lost("busd is shutting down".into())),
                );
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => return (acked, Some(SessionError::Lost(err.to_string()))),
            Ok(None) => {
                return (
                    acked,
                    Some(SessionError::Lost("busd closed the connection".into())),
                );
            }
            Err(_) => {
                return (
                    acked,
                    Some(SessionError::Lost("no acknowledgement in time".into())),
                );
            }
        }
    }
    (acked, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::BusArgs;

    #[test]
    fn repeats_split_into_numbered_batches() {
        let args = PublishArgs {
            bus: BusArgs {
                bus: String::new(),
                token: None,
            },
            account: 3,
            data: "x".into(),
            repeat: 2500,
            max_outage: Duration::from_secs(1),
        };
        let batches = batches(&args, "o");
        let sizes: Vec<usize> = batches.iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(
            batches.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn large_data_makes_smaller_batches() {
        let args = PublishArgs {
            bus: BusArgs {
                bus: String::new(),
                token: None,
            },
            account: 3,
            data: "x".repeat(200_000),
            repeat: 5,
            max_outage: Duration::from_secs(1),
        };
        assert!(batches(&args, "o").iter().all(|(_, e)| e.len() <= 2));
    }
}
