//! The JetStream half of [`crate::publisher`]: each batch of the outbox goes out as one
//! message per event, pipelined, with `Nats-Msg-Id` `<origin>:<batch>:<index>`; the batch
//! is retired when JetStream has acknowledged all of them. After any failure (an
//! acknowledgement that does not come within the timeout, a leader election, a lost
//! connection) the reconnect loop sends every unacknowledged batch again under the same
//! ids, and the stream drops the copies it already holds within its duplicate window.

use std::future::IntoFuture;

use async_nats::jetstream::Context;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Connection, Layout, body};
use crate::outbox::{Batch, Outbox};
use crate::publisher::{Ended, PING_AFTER, Settings};

/// A batch's acknowledgements: its id once JetStream has stored every event, or why not.
type BatchAck = BoxFuture<'static, Result<u64, String>>;

/// Batches in flight at least, whatever `--max-in-flight` says: busd acknowledges a batch
/// in one round trip, JetStream message by message after replicating each, so one batch at
/// a time would leave the stream idle while the acknowledgements travel.
const MIN_IN_FLIGHT: usize = 16;

/// Publishes until the connection fails or `stop`.
pub(crate) async fn forward(
    conn: Connection,
    settings: &Settings,
    outbox: &Outbox,
    stop: &CancellationToken,
) -> Ended {
    let mut acks: FuturesOrdered<BatchAck> = FuturesOrdered::new();
    let mut progressed = false;
    let mut connected = conn.connected.clone();
    let mut quiet_since = Instant::now();
    for batch in outbox.unacked() {
        match send(&conn.js, settings, &batch).await {
            Ok(ack) => acks.push_back(ack),
            Err(reason) => return Ended { reason, progressed },
        }
    }
    let reason = 'connection: loop {
        while acks.len() < settings.max_in_flight.max(MIN_IN_FLIGHT) {
            let Some(batch) = outbox.take_batch() else {
                break;
            };
            match send(&conn.js, settings, &batch).await {
                Ok(ack) => acks.push_back(ack),
                Err(reason) => break 'connection reason,
            }
        }
        let idle = acks.is_empty();
        tokio::select! {
            Some(acked) = acks.next(), if !idle => match acked {
                Ok(batch_id) => {
                    outbox.ack(batch_id);
                    progressed = true;
                    quiet_since = Instant::now();
                }
                Err(reason) => break reason,
            },
            _ = stop.cancelled() => break "stopping".into(),
            _ = lost(&mut connected) => break "lost the connection to NATS".into(),
            _ = outbox.ready.notified() => {
                if !settings.linger.is_zero() && !outbox.batch_ready() {
                    tokio::time::sleep(settings.linger).await;
                }
            }
            _ = tokio::time::sleep_until(quiet_since + PING_AFTER), if idle => {
                if let Err(reason) = check_stream(&conn.js, &settings.layout).await {
                    break reason;
                }
                quiet_since = Instant::now();
            }
        }
    };
    Ended { reason, progressed }
}

/// Resolves when the client has lost its connection.
async fn lost(connected: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped at once: it must not live across an await.
    let _ = connected.wait_for(|up| !*up).await.map(|_| ());
}

/// Queues every event of `batch` and returns the future of their acknowledgements.
async fn send(js: &Context, settings: &Settings, batch: &Batch) -> Result<BatchAck, String> {
    let events = protocol::publish::decode_events(&batch.events)
        .map_err(|err| format!("batch {} cannot be read back: {err}", batch.id))?;
    let mut pending = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let subject = settings.layout.subject(event.account_id);
        let id = format!("{}:{}:{index}", settings.name, batch.id);
        let publish = PublishMessage::build()
            .message_id(id)
            .payload(body::encode(event).into());
        let ack = js
            .send_publish(subject, publish)
            .await
            .map_err(|err| format!("JetStream did not take batch {}: {err}", batch.id))?;
        pending.push(ack.into_future());
    }
    let batch_id = batch.id;
    Ok(Box::pin(async move {
        for ack in pending {
            ack.await.map_err(|err| {
                format!("no acknowledgement from JetStream for batch {batch_id}: {err}")
            })?;
        }
        Ok(batch_id)
    }))
}

/// Asks for the stream's info: a quiet link is only up if JetStream answers.
async fn check_stream(js: &Context, layout: &Layout) -> Result<(), String> {
    let stream = js
        .get_stream_no_info(&layout.stream)
        .await
        .map_err(|err| format!("JetStream does not answer: {err}"))?;
    stream
        .get_info()
        .await
        .map(|_| ())
        .map_err(|err| format!("stream {} does not answer: {err}", layout.stream))
}
