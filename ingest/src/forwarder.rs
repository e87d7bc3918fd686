//! The forwarder: moves batches from the outbox to busd as `Publish` frames and retires them
//! on `PubAck`.
//!
//! On every (re)connection it first sends again every batch busd has not acknowledged, in
//! order and under the same ids: a busd that already has one drops the copy, a new busd
//! (after a restart) takes it. That is what makes a 202 survive a busd restart.
//!
//! A busd that stops answering (frozen, or a half-open connection) is noticed: whenever
//! something is outstanding (a batch, or the ping sent after a quiet second) and busd says
//! nothing for `--bus-timeout`, the link is marked down, `/readyz` turns 503, and the
//! forwarder reconnects and resends. A busd that refuses ingest (wrong token, another
//! ingest with the same `--origin`, a frame limit too small for `--max-data`) marks the link
//! refused: new events get 503 instead of filling a buffer nobody drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use client::session::{self, SessionError};
use futures::StreamExt;
use protocol::publish::FRAME_OVERHEAD;
use protocol::{ClientFrame, ErrorCode, RawCodec, Role, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use plumbing::backoff::Backoff;

use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// How long a connection may stay quiet before the forwarder pings busd to check on it.
const PING_AFTER: Duration = Duration::from_secs(1);

/// What the forwarder needs to reach busd.
pub struct Settings {
    pub bus: String,
    pub token: Option<String>,
    /// Publisher name: the origin, unique per ingest instance.
    pub name: String,
    pub linger: Duration,
    /// Batches sent to busd and not yet acknowledged before the next waits.
    pub max_in_flight: usize,
    /// How long busd may leave a batch or a ping unanswered before it is taken for dead.
    pub timeout: Duration,
    /// The largest batch the outbox cuts: busd's frame limit must hold it.
    pub batch_bytes: usize,
}

/// The state of the link to busd, as the HTTP side sees it.
#[derive(Debug, Default)]
pub struct Link {
    state: AtomicU8,
}

const DOWN: u8 = 0;
const UP: u8 = 1;
const REFUSED: u8 = 2;

impl Link {
    /// Connected, and busd answering in time: `/readyz` is 200.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// busd refuses this ingest: accepting events that cannot be delivered would only
    /// fill the buffer, so they get 503.
    pub fn is_refused(&self) -> bool {
        self.state.load(Ordering::Acquire) == REFUSED
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }
}

/// Why a connection to busd could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach busd at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("busd refused ingest ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error(
        "busd accepts frames of at most {max_frame} bytes, too small for batches of \
         {batch_bytes} bytes (lower --batch-bytes or --max-data, or raise busd's --max-frame)"
    )]
    FrameTooSmall { max_frame: u64, batch_bytes: usize },
}

impl ConnectError {
    /// Whether retrying can help without someone changing a setting.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Runs until `stop` is cancelled, reconnecting whenever the bus goes away.
pub async fn run(
    settings: Settings,
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut was_connected = false;
    while !stop.is_cancelled() {
        match connect(&settings).await {
            Ok(stream) => {
                link.set(UP);
                if was_connected {
                    metrics.bus_reconnects.inc();
                }
                was_connected = true;
                info!(bus = %settings.bus, "connected to busd");
                let ended = forward(stream, &settings, &outbox, &stop).await;
                link.set(DOWN);
                if ended.progressed {
                    backoff.reset();
                }
                if !stop.is_cancelled() {
                    let unacknowledged = outbox.depth();
                    warn!(reason = %ended.reason, unacknowledged, "lost busd; reconnecting");
                }
            }
            Err(err) if err.is_refusal() => {
                link.set(REFUSED);
                error!(%err, "new events get 503 until busd accepts this ingest");
            }
            Err(err) => {
                link.set(DOWN);
                warn!(%err, "retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A connection to busd after the handshake: the socket, and whatever busd sent after its
/// `Welcome` that the handshake already read.
pub struct Connected {
    stream: TcpStream,
    read: BytesMut,
}

/// Says Hello with busctl's handshake (`client::session`) and checks that busd takes
/// batches as large as ours.
pub async fn connect(settings: &Settings) -> Result<Connected, ConnectError> {
    let opened = session::open_within(
        &settings.bus,
        Role::Publisher,
        &settings.name,
        settings.token.as_deref(),
        settings.timeout,
    )
    .await;
    let (conn, welcome) = opened.map_err(|err| match err {
        SessionError::Refused { code, message } if refuses_for_good(code) => {
            ConnectError::Refused { code, message }
        }
        other => ConnectError::Unreachable {
            addr: settings.bus.clone(),
            reason: other.to_string(),
        },
    })?;
    if (settings.batch_bytes + FRAME_OVERHEAD) as u64 > welcome.max_frame {
        return Err(ConnectError::FrameTooSmall {
            max_frame: welcome.max_frame,
            batch_bytes: settings.batch_bytes,
        });
    }
    let parts = conn.into_parts();
    Ok(Connected {
        stream: parts.io,
        read: parts.read_buf,
    })
}

/// Refusals that will not go away by retrying: someone has to change a setting.
fn refuses_for_good(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthorized | ErrorCode::VersionMismatch | ErrorCode::NameInUse
    )
}

/// How one connection ended.
struct Ended {
    reason: String,
    /// Whether busd acknowledged anything on it (if not, the backoff keeps growing).
    progressed: bool,
}

/// Forwards until the connection ends or `stop`.
async fn forward(
    connected: Connected,
    settings: &Settings,
    outbox: &Outbox,
    stop: &CancellationToken,
) -> Ended {
    let (rd, mut wr) = connected.stream.into_split();
    let mut frames = FramedRead::new(rd, RawCodec::default());
    frames.read_buffer_mut().extend_from_slice(&connected.read);
    let mut out = BytesMut::with_capacity(256 * 1024);
    for batch in outbox.unacked() {
        protocol::publish::encode_frame(&mut out, batch.id, batch.count, &batch.events);
    }
    let mut session = Session {
        waiting_since: None,
        ping_sent: false,
        quiet_since: Instant::now(),
        progressed: false,
    };
    let reason = loop {
        while outbox.in_flight() < settings.max_in_flight {
            let Some(batch) = outbox.take_batch() else {
                break;
            };
            protocol::publish::encode_frame(&mut out, batch.id, batch.count, &batch.events);
        }
        if !out.is_empty() {
            session.sent();
            if let Err(err) = write(&mut wr, &mut out, settings.timeout).await {
                break err;
            }
        }
        if !session.ping_sent && outbox.in_flight() == 0 {
            session.waiting_since = None;
        }
        let wake = session.next_check(settings.timeout);
        tokio::select! {
            frame = frames.next() => {
                if let Err(reason) = session.on_frame(frame, outbox) {
                    break reason;
                }
            }
            _ = stop.cancelled() => break "stopping".into(),
            _ = outbox.ready.notified() => {
                if !settings.linger.is_zero() && !outbox.batch_ready() {
                    tokio::time::sleep(settings.linger).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Err(reason) = session.on_timer(settings.timeout, &mut out) {
                    break reason;
                }
            }
        }
    };
    Ended {
        reason,
        progressed: session.progressed,
    }
}

/// What the forwarder tracks of one connection to tell a live busd from a dead one.
struct Session {
    /// Since when busd owes an answer (to a batch or a ping) and has said nothing.
    waiting_since: Option<Instant>,
    ping_sent: bool,
    /// Since when nothing was sent or received.
    quiet_since: Instant,
    progressed: bool,
}

impl Session {
    fn sent(&mut self) {
        self.waiting_since.get_or_insert_with(Instant::now);
        self.quiet_since = Instant::now();
    }

    /// When the timer must fire: the answer deadline, or the time to ping a quiet link.
    fn next_check(&self, timeout: Duration) -> Instant {
        match self.waiting_since {
            Some(since) => since + timeout,
            None => self.quiet_since + PING_AFTER,
        }
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<bytes::Bytes, protocol::CodecError>>,
        outbox: &Outbox,
    ) -> Result<(), String> {
        let body = match frame {
            None => return Err("busd closed the connection".into()),
            Some(Err(err)) => return Err(err.to_string()),
            Some(Ok(body)) => body,
        };
        // Any word from busd shows it is alive; whatever is still outstanding gets a
        // fresh deadline.
        self.waiting_since = self.waiting_since.map(|_| Instant::now());
        self.quiet_since = Instant::now();
        match protocol::codec::decode_body::<ServerFrame>(&body) {
            Ok(ServerFrame::PubAck { batch_id }) => {
                self.progressed = true;
                outbox.ack(batch_id);
                Ok(())
            }
            Ok(ServerFrame::Pong) => {
                self.ping_sent = false;
                Ok(())
            }
            Ok(ServerFrame::Goodbye { .. }) => Err("busd said goodbye".into()),
            Ok(ServerFrame::Error { code, message }) => {
                Err(format!("busd error {code:?}: {message}"))
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err.to_string()),
        }
    }

    fn on_timer(&mut self, timeout: Duration, out: &mut BytesMut) -> Result<(), String> {
        if let Some(since) = self.waiting_since {
            if since.elapsed() >= timeout {
                let secs = humantime::format_duration(timeout);
                return Err(format!("busd did not answer for {secs}"));
            }
            return Ok(());
        }
        if protocol::encode_frame(&ClientFrame::Ping, out, usize::MAX).is_ok() {
            self.ping_sent = true;
        }
        Ok(())
    }
}

/// Writes `out` within `timeout`: a busd that stopped reading must not hold the forwarder.
async fn write(
    wr: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, wr.write_all(out)).await {
        Err(_) => Err(format!(
            "busd did not take our data for {}",
            humantime::format_duration(timeout)
        )),
        Ok(Err(err)) => Err(err.to_string()),
        Ok(Ok(())) => {
            out.clear();
            Ok(())
        }
    }
}
