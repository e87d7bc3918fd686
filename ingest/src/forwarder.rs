//! The forwarder: moves batches from the outbox to busd as `Publish` frames and retires them
//! on `PubAck`.
//!
//! On every (re)connection it first sends again every batch busd has not acknowledged, in
//! order and under the same ids: a busd that already has one drops the copy, a new busd
//! (after a restart) takes it. That is what makes a 202 survive a busd restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, FrameCodec, PROTOCOL_VERSION, RawCodec, Role, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::{Framed, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::outbox::Outbox;

pub struct Settings {
    pub bus: String,
    pub token: Option<String>,
    /// Publisher name: the origin, unique per ingest instance.
    pub name: String,
    /// Random per process: tells busd a reconnection of this process from another one
    /// using the same name.
    pub instance: u64,
    pub linger: Duration,
    /// Batches sent to busd and not yet acknowledged before the next waits.
    pub max_in_flight: usize,
}

/// Runs until `stop` is cancelled, reconnecting whenever the bus goes away.
pub async fn run(
    settings: Settings,
    outbox: Arc<Outbox>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    let mut was_connected = false;
    while !stop.is_cancelled() {
        match connect(&settings).await {
            Ok(stream) => {
                delay = Duration::from_millis(50);
                connected.store(true, Ordering::Release);
                if was_connected {
                    metrics.bus_reconnects.inc();
                }
                was_connected = true;
                info!(bus = %settings.bus, "connected to busd");
                let reason = forward(stream, &settings, &outbox, &stop).await;
                connected.store(false, Ordering::Release);
                if !stop.is_cancelled() {
                    warn!(%reason, unacknowledged = outbox.depth(), "lost busd; reconnecting");
                }
            }
            Err(err) => {
                connected.store(false, Ordering::Release);
                warn!(bus = %settings.bus, %err, "cannot reach busd");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn connect(settings: &Settings) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&settings.bus))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::<ServerFrame, ClientFrame>::default());
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Publisher,
        name: settings.name.clone(),
        token: settings.token.clone(),
        instance: settings.instance,
    };
    framed.send(hello).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), framed.next()).await {
        Ok(Some(Ok(ServerFrame::Welcome { .. }))) => Ok(framed.into_inner()),
        Ok(Some(Ok(ServerFrame::Error { message, .. }))) => Err(format!("busd refused: {message}")),
        Ok(other) => Err(format!("no Welcome from busd: {other:?}")),
        Err(_) => Err("no Welcome from busd in time".into()),
    }
}

/// Forwards until the connection ends or `stop`; returns why it ended.
async fn forward(
    stream: TcpStream,
    settings: &Settings,
    outbox: &Arc<Outbox>,
    stop: &CancellationToken,
) -> String {
    let (rd, wr) = stream.into_split();
    let mut acks = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, RawCodec::default());
            while let Some(frame) = frames.next().await {
                match frame.map(|body| protocol::codec::decode_body::<ServerFrame>(&body)) {
                    Ok(Ok(ServerFrame::PubAck { batch_id })) => outbox.ack(batch_id),
                    Ok(Ok(ServerFrame::Goodbye { .. })) => return "busd said goodbye".to_owned(),
                    Ok(Ok(ServerFrame::Error { message, .. })) => {
                        return format!("busd error: {message}");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) | Err(err) => return err.to_string(),
                }
            }
            "busd closed the connection".to_owned()
        })
    };
    let reason = send_batches(wr, settings, outbox, stop, &mut acks).await;
    acks.abort();
    reason
}

async fn send_batches(
    mut wr: OwnedWriteHalf,
    settings: &Settings,
    outbox: &Outbox,
    stop: &CancellationToken,
    acks: &mut tokio::task::JoinHandle<String>,
) -> String {
    let mut out = BytesMut::with_capacity(256 * 1024);
    for batch in outbox.unacked() {
        protocol::publish::encode_frame(&mut out, batch.id, batch.count, &batch.events);
    }
    if let Err(err) = write(&mut wr, &mut out).await {
        return err;
    }
    loop {
        // Holding events while a batch is unacknowledged batches them by the round trip to
        // busd: no timer, no added latency when idle, bigger batches (and fewer syscalls on
        // both sides) under load.
        while outbox.in_flight() < settings.max_in_flight {
            let Some(batch) = outbox.take_batch() else {
                break;
            };
            protocol::publish::encode_frame(&mut out, batch.id, batch.count, &batch.events);
        }
        if let Err(err) = write(&mut wr, &mut out).await {
            return err;
        }
        tokio::select! {
            ended = &mut *acks => return ended.unwrap_or_else(|e| e.to_string()),
            _ = stop.cancelled() => return "stopping".into(),
            _ = outbox.ready.notified() => {
                if !settings.linger.is_zero() && !outbox.batch_ready() {
                    tokio::time::sleep(settings.linger).await;
                }
            }
        }
    }
}

async fn write(wr: &mut OwnedWriteHalf, out: &mut BytesMut) -> Result<(), String> {
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(out).await.map_err(|e| e.to_string())?;
    out.clear();
    Ok(())
}
