//! `busctl publish`: events by hand, delivered at least once to busd and never twice.
//!
//! Batches are pipelined and kept until acknowledged; after a reconnect the unacknowledged
//! ones are sent again under the same publisher name and batch ids, so busd drops any it
//! already had.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, Event, Role, ServerFrame};
use tokio::time::Instant;

use crate::cli::{PublishArgs, exit};
use crate::session::{self, Conn, SessionError};
use crate::status;
use plumbing::backoff::Backoff;

/// Events per Publish frame, and a byte budget that keeps frames under busd's 1 MiB default.
const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;
/// Unacknowledged batches in flight: also all `publish` ever holds, whatever `--repeat` says.
const WINDOW: usize = 16;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch: its id and its events.
type Batch = (u64, Vec<Event>);

/// Runs `busctl publish`; returns the exit code.
pub async fn run(args: PublishArgs) -> i32 {
    // Unique per run: busd drops batch ids it has seen from a publisher of the same name,
    // and subscribers drop event ids they have seen from the same origin.
    let name = format!("busctl-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let mut source = Batches::new(&args, &name);
    let mut unacked = VecDeque::new();
    let mut backoff = Backoff::default();
    let mut down_since: Option<Instant> = None;
    loop {
        let opened = session::open(
            &args.bus.bus,
            Role::Publisher,
            &name,
            args.bus.token.as_deref(),
        )
        .await;
        let reason = match opened {
            Ok((mut conn, welcome)) => {
                if let Some(size) = oversized(&source, welcome.max_frame) {
                    status!(
                        "a batch of {size} bytes is over busd's frame limit of {} bytes: \
                         use smaller --data",
                        welcome.max_frame
                    );
                    return exit::ERROR;
                }
                backoff.reset();
                down_since = None;
                match send(&mut conn, &mut source, &mut unacked).await {
                    None => {
                        status!("published {} events to {}", args.repeat, args.bus.bus);
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
            let acked = source.made_batches() - unacked.len() as u64;
            status!(
                "giving up after {}s: {reason}; {acked} of {} batches acknowledged",
                down.as_secs(),
                source.total_batches()
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

/// The batches of one run, made as they are needed, so `--repeat 20000000` holds a window
/// of batches rather than every event at once.
struct Batches {
    template: Event,
    per_batch: u64,
    left: u64,
    made: u64,
}

impl Batches {
    fn new(args: &PublishArgs, origin: &str) -> Self {
        let template = Event {
            account_id: args.account,
            timestamp_us: plumbing::clock::now_us(),
            data: args.data.clone(),
            origin: origin.into(),
            id: 0,
        };
        let per_batch = (BATCH_BYTES / (args.data.len() + 32)).clamp(1, BATCH_EVENTS) as u64;
        Batches {
            template,
            per_batch,
            left: args.repeat,
            made: 0,
        }
    }

    /// The next batch: ids count from 1, event ids grow across batches.
    fn next_batch(&mut self) -> Option<Batch> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(self.per_batch);
        let first_id = self.made * self.per_batch + 1;
        let events = (0..n)
            .map(|i| Event {
                id: first_id + i,
                ..self.template.clone()
            })
            .collect();
        self.left -= n;
        self.made += 1;
        Some((self.made, events))
    }

    fn made_batches(&self) -> u64 {
        self.made
    }

    fn total_batches(&self) -> u64 {
        self.made + self.left.div_ceil(self.per_batch)
    }
}

/// The encoded size of a full batch, if busd would refuse it as too large.
fn oversized(source: &Batches, max_frame: u64) -> Option<u64> {
    let frame = ClientFrame::Publish {
        batch_id: u64::MAX,
        events: vec![source.template.clone(); source.per_batch as usize],
    };
    let mut buf = bytes::BytesMut::new();
    let size = protocol::encode_frame(&frame, &mut buf, usize::MAX)
        .map_or(u64::MAX, |()| buf.len() as u64 - 4);
    (size > max_frame).then_some(size)
}

/// Sends what `unacked` holds again, then new batches from `source`, up to [`WINDOW`] in
/// flight, retiring each on its `PubAck`; returns why it stopped early, if it did.
async fn send(
    conn: &mut Conn,
    source: &mut Batches,
    unacked: &mut VecDeque<Batch>,
) -> Option<SessionError> {
    for (batch_id, events) in unacked.iter() {
        if let Err(err) = conn.feed(publish_frame(*batch_id, events)).await {
            return Some(SessionError::Lost(err.to_string()));
        }
    }
    loop {
        while unacked.len() < WINDOW {
            let Some((batch_id, events)) = source.next_batch() else {
                break;
            };
            if let Err(err) = conn.feed(publish_frame(batch_id, &events)).await {
                unacked.push_back((batch_id, events));
                return Some(SessionError::Lost(err.to_string()));
            }
            unacked.push_back((batch_id, events));
        }
        if let Err(err) = conn.flush().await {
            return Some(SessionError::Lost(err.to_string()));
        }
        // Nothing left in flight and nothing more to make: all acknowledged.
        let &(oldest, _) = unacked.front()?;
        match next_ack(conn).await {
            Ok(batch_id) if batch_id == oldest => {
                unacked.pop_front();
            }
            Ok(_) => {}
            Err(err) => return Some(err),
        }
    }
}

fn publish_frame(batch_id: u64, events: &[Event]) -> ClientFrame {
    ClientFrame::Publish {
        batch_id,
        events: events.to_vec(),
    }
}

/// The next `PubAck`'s batch id (other frames give 0), or why the connection is no use.
async fn next_ack(conn: &mut Conn) -> Result<u64, SessionError> {
    let lost = |reason: &str| SessionError::Lost(reason.into());
    match tokio::time::timeout(ACK_TIMEOUT, conn.next()).await {
        Ok(Some(Ok(ServerFrame::PubAck { batch_id }))) => Ok(batch_id),
        Ok(Some(Ok(ServerFrame::Error { code, message }))) => {
            Err(SessionError::Refused { code, message })
        }
        Ok(Some(Ok(ServerFrame::Goodbye { .. }))) => Err(lost("busd is shutting down")),
        Ok(Some(Ok(_))) => Ok(0),
        Ok(Some(Err(err))) => Err(SessionError::Lost(err.to_string())),
        Ok(None) => Err(lost("busd closed the connection")),
        Err(_) => Err(lost("no acknowledgement in time")),
    }
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
        let mut source = Batches::new(&args, "o");
        assert_eq!(source.total_batches(), 3);
        let batches: Vec<Batch> = std::iter::from_fn(|| source.next_batch()).collect();
        let sizes: Vec<usize> = batches.iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(
            batches.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let ids: Vec<u64> = batches
            .iter()
            .flat_map(|(_, e)| e.iter().map(|e| e.id))
            .collect();
        assert_eq!(ids, (1..=2500).collect::<Vec<_>>(), "event ids grow by one");
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
        let mut source = Batches::new(&args, "o");
        assert!(std::iter::from_fn(|| source.next_batch()).all(|(_, e)| e.len() <= 2));
    }
}
