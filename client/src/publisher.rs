//! The publisher: moves batches from an [`Outbox`] to busd as `Publish` frames and retires
//! them on `PubAck` (or, for a `nats://` bus, to JetStream one message per event, retired
//! when JetStream has acknowledged every message of the batch: [`crate::jetstream`]).
//!
//! On every (re)connection it first sends again every batch busd has not acknowledged, in
//! order and under the same ids: a busd that already has one drops the copy, a new busd
//! (after a restart) takes it. That is what makes an accepted event survive a busd restart.
//!
//! A busd that stops answering (frozen, or a half-open connection) is noticed: whenever
//! something is outstanding (a batch, or the ping sent after a quiet second) and busd says
//! nothing for [`Settings::timeout`], the link is marked down and the publisher reconnects
//! and resends. A busd that refuses the publisher (wrong token, another process with the
//! same name, a frame limit too small for the outbox's batches) marks the link refused, so
//! the caller can stop taking events nobody will drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use plumbing::backoff::Backoff;
use protocol::publish::FRAME_OVERHEAD;
use protocol::{ClientFrame, ErrorCode, RawCodec, Role, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::bus::Address;
use crate::jetstream::{self, JetstreamError, Layout};
use crate::outbox::Outbox;
use crate::reconnect::{Outage, Reconnect, Retry};
use crate::session::{self, SessionError};

/// How long a connection may stay quiet before the publisher pings busd to check on it.
pub(crate) const PING_AFTER: Duration = Duration::from_secs(1);

/// What the publisher needs to reach busd.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The bus's address: busd's `host:port`, or `nats://` URLs for JetStream.
    pub bus: String,
    /// The JetStream stream and subjects, when `bus` is JetStream (the stream is created
    /// from it when absent).
    pub layout: Layout,
    /// The token busd asks for, if it asks.
    pub token: Option<String>,
    /// Publisher name: busd keeps one live process per name and drops batch ids it has
    /// seen from it, so it must be unique per publishing program (ingest's origin).
    pub name: String,
    /// How long to let a partly filled batch wait for company before sending it.
    pub linger: Duration,
    /// Batches sent to busd and not yet acknowledged before the next waits.
    pub max_in_flight: usize,
    /// How long busd may leave a batch or a ping unanswered before it is taken for dead.
    pub timeout: Duration,
    /// How long busd may stay unreachable before the publisher gives up; `None` never does.
    pub max_outage: Option<Duration>,
    /// Whether a refusal ends the publisher (a one-shot command) or is retried until
    /// someone fixes busd's settings (a daemon, which answers 503 meanwhile).
    pub refusal_is_final: bool,
}

/// What happened to the link, for the caller to log in its own way.
#[derive(Debug)]
pub enum Report {
    /// Connected (again) to busd.
    Connected,
    /// The connection was lost; the batches busd has not acknowledged wait for the next.
    Lost {
        /// Why.
        reason: String,
        /// Events accepted and not yet acknowledged.
        unacknowledged: usize,
    },
    /// busd refuses this publisher: someone has to change a setting.
    Refused(ConnectError),
    /// Worth a warning, once: the JetStream stream exists with other settings than asked.
    Warning(String),
    /// The next attempt is coming.
    Retrying(Retry),
}

/// Where the publisher's [`Report`]s go.
pub type OnReport = Arc<dyn Fn(Report) + Send + Sync>;

/// Why a publisher stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// busd refused, and [`Settings::refusal_is_final`] said to stop.
    #[error(transparent)]
    Refused(#[from] ConnectError),
    /// busd stayed unreachable past [`Settings::max_outage`].
    #[error(transparent)]
    Outage(#[from] Outage),
}

/// The state of the link to busd, as the accepting side sees it.
#[derive(Debug, Default)]
pub struct Link {
    state: AtomicU8,
    reconnects: AtomicU64,
}

pub(crate) const DOWN: u8 = 0;
pub(crate) const UP: u8 = 1;
pub(crate) const REFUSED: u8 = 2;

impl Link {
    /// Connected, and busd answering in time.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// busd refuses this publisher: accepting events that cannot be delivered would only
    /// fill the outbox.
    pub fn is_refused(&self) -> bool {
        self.state.load(Ordering::Acquire) == REFUSED
    }

    /// Times busd came back after the link was lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }
}

/// A running publisher: the task draining an outbox to busd, and the link it keeps.
pub struct Publisher {
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    stop: CancellationToken,
    /// `None` once [`Publisher::failed`] has seen it end.
    task: Option<JoinHandle<Result<(), PublishError>>>,
}

impl Publisher {
    /// Starts publishing what `outbox` is given, reporting what happens to the link through
    /// `on_report`.
    pub fn start(settings: Settings, outbox: Arc<Outbox>, on_report: OnReport) -> Publisher {
        let link = Arc::new(Link::default());
        let stop = CancellationToken::new();
        let run = run(
            settings,
            outbox.clone(),
            link.clone(),
            on_report,
            stop.clone(),
        );
        Publisher {
            outbox,
            link,
            stop,
            task: Some(tokio::spawn(run)),
        }
    }

    /// The outbox this publisher drains.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The link's state, shared with whoever accepts events.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Resolves when the publisher stops by itself (a final refusal or an outage); never,
    /// while it keeps trying.
    pub async fn failed(&mut self) -> PublishError {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let ended = task.await;
        self.task = None;
        match ended {
            Ok(Err(err)) => err,
            // It returns `Ok` only when stopped, which takes `self`; a panic is a bug.
            Ok(Ok(())) | Err(_) => std::future::pending().await,
        }
    }

    /// Stops the publisher, dropping what busd has not acknowledged.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Why a connection to busd could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answered, or the handshake failed in a way a retry may fix.
    #[error("cannot reach busd at {addr}: {reason}")]
    Unreachable {
        /// busd's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// busd refused the handshake.
    #[error("busd refused this publisher ({code:?}): {message}")]
    Refused {
        /// busd's code.
        code: ErrorCode,
        /// busd's words.
        message: String,
    },
    /// busd's frames are too small for the outbox's batches.
    #[error(
        "busd accepts frames of at most {max_frame} bytes, too small for batches of \
         {batch_bytes} bytes: raise busd's --max-frame, or send smaller batches (ingest's \
         --batch-bytes and --max-data, busctl's --data)"
    )]
    FrameTooSmall {
        /// busd's limit, from its `Welcome`.
        max_frame: u64,
        /// The outbox's largest batch.
        batch_bytes: usize,
    },
    /// JetStream is unreachable, unavailable or refuses (see [`JetstreamError`]).
    #[error(transparent)]
    Jetstream(#[from] JetstreamError),
}

impl ConnectError {
    /// Whether retrying cannot help without someone changing a setting.
    pub fn is_refusal(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } => false,
            ConnectError::Jetstream(err) => err.is_refusal(),
            ConnectError::Refused { .. } | ConnectError::FrameTooSmall { .. } => true,
        }
    }
}

/// Runs until `stop` is cancelled, reconnecting whenever the bus goes away.
async fn run(
    settings: Settings,
    outbox: Arc<Outbox>,
    link: Arc<Link>,
    on_report: OnReport,
    stop: CancellationToken,
) -> Result<(), PublishError> {
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut reconnect = Reconnect::new(backoff, settings.max_outage);
    let batch_bytes = outbox.limits().batch_bytes;
    let mut warned = false;
    while !stop.is_cancelled() {
        let reason = match connect(&settings, batch_bytes).await {
            Ok(connected) => {
                link.set(UP);
                reconnect.connected();
                link.reconnects
                    .store(reconnect.reconnects(), Ordering::Relaxed);
                on_report(Report::Connected);
                if !warned && !connected.warnings.is_empty() {
                    warned = true;
                    on_report(Report::Warning(connected.warnings.join("; ")));
                }
                let ended = match connected.open {
                    Open::Busd { stream, read } => {
                        forward(stream, read, &settings, &outbox, &stop).await
                    }
                    Open::Jetstream(conn) => {
                        jetstream::publisher::forward(*conn, &settings, &outbox, &stop).await
                    }
                };
                link.set(DOWN);
                if ended.progressed {
                    reconnect.progressed();
                }
                if stop.is_cancelled() {
                    break;
                }
                let unacknowledged = outbox.depth();
                let reason = ended.reason;
                on_report(Report::Lost {
                    reason: reason.clone(),
                    unacknowledged,
                });
                reason
            }
            Err(err) if err.is_refusal() => {
                link.set(REFUSED);
                if settings.refusal_is_final {
                    return Err(err.into());
                }
                let reason = err.to_string();
                on_report(Report::Refused(err));
                reason
            }
            Err(err) => {
                link.set(DOWN);
                err.to_string()
            }
        };
        let (retry, delay) = reconnect.retry(reason)?;
        on_report(Report::Retrying(retry));
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    Ok(())
}

/// A connection to the bus, ready to publish on.
pub struct Connected {
    open: Open,
    /// How the JetStream stream differs from the layout asked for (it is used as it is).
    pub warnings: Vec<String>,
}

enum Open {
    /// busd after the handshake: the socket, and whatever busd sent after its `Welcome`
    /// that the handshake already read.
    Busd { stream: TcpStream, read: BytesMut },
    /// A JetStream client whose stream exists (boxed: it is ten times busd's socket).
    Jetstream(Box<jetstream::Connection>),
}

/// Connects to the bus `settings` names: for busd, says Hello with the one handshake
/// ([`session`]) and checks that busd takes batches of `batch_bytes`; for JetStream,
/// connects and creates the stream when absent. Also what a program calls once before it
/// starts, to refuse to run against a bus that refuses it.
pub async fn connect(settings: &Settings, batch_bytes: usize) -> Result<Connected, ConnectError> {
    if let Ok(Address::Jetstream(servers)) = Address::parse(&settings.bus) {
        let conn = jetstream::connect(
            &servers,
            &settings.name,
            settings.token.as_deref(),
            settings.timeout,
        )
        .await?;
        let (_, warnings) = jetstream::stream::ensure(&conn.js, &settings.layout).await?;
        return Ok(Connected {
            open: Open::Jetstream(Box::new(conn)),
            warnings,
        });
    }
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
    if (batch_bytes + FRAME_OVERHEAD) as u64 > welcome.max_frame {
        return Err(ConnectError::FrameTooSmall {
            max_frame: welcome.max_frame,
            batch_bytes,
        });
    }
    let parts = conn.into_parts();
    Ok(Connected {
        open: Open::Busd {
            stream: parts.io,
            read: parts.read_buf,
        },
        warnings: Vec::new(),
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
pub(crate) struct Ended {
    pub(crate) reason: String,
    /// Whether the bus acknowledged anything on it (if not, the backoff keeps growing).
    pub(crate) progressed: bool,
}

/// Forwards to busd until the connection ends or `stop`.
async fn forward(
    stream: TcpStream,
    read: BytesMut,
    settings: &Settings,
    outbox: &Outbox,
    stop: &CancellationToken,
) -> Ended {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, RawCodec::default());
    frames.read_buffer_mut().extend_from_slice(&read);
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

/// What the publisher tracks of one connection to tell a live busd from a dead one.
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

/// Writes `out` within `timeout`: a busd that stopped reading must not hold the publisher.
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
