//! One client connection: the `Hello` handshake, then the publisher or subscriber loop.
//!
//! Whatever a peer sends, it ends in one of two ways: a precise `Error` frame and a close
//! ([`Close::Refuse`]), or a quiet close when the peer itself went away ([`Close::Quiet`]).
//! Either way only this connection's task ends; busd keeps serving everyone else.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use protocol::codec::decode_body;
use protocol::frame::peek_hello_version;
use protocol::{ClientFrame, CodecError, ErrorCode, PROTOCOL_VERSION, Position, Role, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{debug, info, warn};

use crate::bus::Bus;
use crate::config::Config;
use crate::publishers::Publishers;
use crate::reader::{FrameReader, Limits, ReadBudget, ReadError};
use crate::shutdown::Shutdown;
use crate::slots::Slots;
use crate::{publisher, subscriber};

/// What every connection task shares.
pub struct Context {
    /// The bus every connection publishes to or reads from.
    pub bus: Arc<Bus>,
    /// The daemon's settings.
    pub config: Config,
    /// The stages of a graceful stop the connection watches.
    pub shutdown: Shutdown,
    /// The publisher names connected now.
    pub publishers: Publishers,
    /// The run this one follows, named in every `Welcome` (see [`crate::state`]).
    pub follows: Option<Position>,
    /// Numbers connections, so a publisher's name claim knows whose it is.
    pub connections: AtomicU64,
    /// Subscriber and publisher slots, taken after `Hello`.
    pub slots: Slots,
    /// Bytes of partly received frames all connections may hold together.
    pub budget: ReadBudget,
}

/// What a client said in its `Hello`.
struct Hello {
    role: Role,
    name: String,
    instance: u64,
}

/// A connection's incoming side.
pub type Reader = FrameReader<OwnedReadHalf>;

/// How long a refused peer gets to read its `Error` frame before the socket is dropped.
const LINGER: Duration = Duration::from_secs(1);

/// Why a connection ends.
#[derive(Debug)]
pub enum Close {
    /// The peer broke the protocol or a limit: tell it why, then close.
    Refuse(ErrorCode, String),
    /// The peer left, or the socket failed: nothing to tell.
    Quiet(String),
}

impl Close {
    /// A refusal with `code` and a message for the peer.
    pub fn refuse(code: ErrorCode, message: impl Into<String>) -> Self {
        Close::Refuse(code, message.into())
    }
}

impl From<CodecError> for Close {
    fn from(err: CodecError) -> Self {
        match err {
            CodecError::FrameTooLarge { .. } => {
                Close::Refuse(ErrorCode::FrameTooLarge, err.to_string())
            }
            CodecError::Malformed(_) | CodecError::TrailingBytes(_) => {
                Close::Refuse(ErrorCode::Malformed, err.to_string())
            }
            CodecError::Truncated(_) | CodecError::Io(_) => Close::Quiet(err.to_string()),
        }
    }
}

impl From<ReadError> for Close {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Codec(err) => err.into(),
            ReadError::FirstFrameTooLarge { .. } => {
                Close::Refuse(ErrorCode::FrameTooLarge, err.to_string())
            }
            ReadError::FrameTimeout(_) => Close::Refuse(ErrorCode::FrameTimeout, err.to_string()),
            ReadError::BudgetClosed => Close::Quiet(err.to_string()),
        }
    }
}

/// A connection's outgoing side: frames are encoded into one buffer and written together.
pub struct Outbound {
    wr: OwnedWriteHalf,
    /// Frames encoded and not yet written; subscribers build `Events` frames straight in it.
    pub buf: BytesMut,
    max_frame: usize,
}

impl Outbound {
    /// An outgoing side on `wr` that refuses to encode frames over `max_frame`.
    pub fn new(wr: OwnedWriteHalf, max_frame: usize) -> Self {
        Outbound {
            wr,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// Queues a frame for the next flush.
    pub fn push(&mut self, frame: &ServerFrame) {
        if let Err(err) = protocol::encode_frame(frame, &mut self.buf, self.max_frame) {
            warn!(%err, "dropping an outgoing frame that cannot be encoded");
        }
    }

    /// Writes everything queued; returns whether there was anything.
    pub async fn flush(&mut self) -> io::Result<bool> {
        if self.buf.is_empty() {
            return Ok(false);
        }
        self.wr.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(true)
    }

    /// Writes what is queued plus `last`, then half-closes, giving a stuck peer a second.
    pub async fn finish(mut self, last: &ServerFrame) {
        self.push(last);
        let _ = tokio::time::timeout(LINGER, async {
            self.flush().await?;
            self.wr.shutdown().await
        })
        .await;
    }
}

/// Reads and discards what a refused peer still sends, so that closing the socket does not
/// reset the connection (and destroy the `Error` frame) while its data is unread.
pub async fn linger(mut rd: OwnedReadHalf) {
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        let mut total = 0usize;
        while let Ok(n @ 1..) = rd.read(&mut sink).await {
            total += n;
            if total > 4 << 20 {
                break;
            }
        }
    })
    .await;
}

/// Ends a connection with an `Error` frame (or quietly), lingering so the frame arrives.
/// The reader's buffer and budget are given up first.
pub async fn close(reader: Reader, out: Outbound, close: Close, peer: &str) {
    let rd = reader.into_inner();
    match close {
        Close::Refuse(code, message) => {
            info!(%peer, ?code, %message, "refusing connection");
            out.finish(&ServerFrame::Error { code, message }).await;
            linger(rd).await;
        }
        Close::Quiet(reason) => debug!(%peer, %reason, "connection closed"),
    }
}

/// Refuses a connection over the connection limit without reading from it.
pub async fn refuse_over_limit(socket: TcpStream, max: usize) {
    let (rd, wr) = socket.into_split();
    let message = format!("busd is at its limit of {max} connections");
    warn!("{message}");
    Outbound::new(wr, usize::MAX)
        .finish(&ServerFrame::Error {
            code: ErrorCode::TooManyConnections,
            message,
        })
        .await;
    linger(rd).await;
}

/// Serves one connection to its end.
pub async fn handle(socket: TcpStream, ctx: Arc<Context>) {
    let peer = socket
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let _ = socket.set_nodelay(true);
    let (rd, wr) = socket.into_split();
    let limits = Limits {
        max_frame: ctx.config.max_frame,
        frame_timeout: ctx.config.frame_timeout,
        budget: ctx.budget.clone(),
    };
    let mut reader = FrameReader::new(rd, limits);
    let mut out = Outbound::new(wr, ctx.config.max_frame);
    let hello = tokio::select! {
        hello = read_hello(&mut reader, &ctx.config) => hello,
        _ = ctx.shutdown.stop_reading.cancelled() => {
            Err(Close::refuse(ErrorCode::ShuttingDown, "busd is shutting down"))
        }
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(reason) => return close(reader, out, reason, &peer).await,
    };
    debug!(%peer, role = ?hello.role, name = %hello.name, "hello");
    let _slot = match ctx.slots.take(hello.role) {
        Ok(slot) => slot,
        Err(full) => {
            let reason = Close::refuse(ErrorCode::TooManyConnections, full.to_string());
            return close(reader, out, reason, &peer).await;
        }
    };
    reader.hello_accepted();
    let connection = ctx.connections.fetch_add(1, Relaxed);
    let claim = match hello.role {
        Role::Subscriber => None,
        Role::Publisher => match ctx
            .publishers
            .claim(&hello.name, hello.instance, connection)
        {
            Ok(claim) => Some(claim),
            Err(_) => {
                let message = format!(
                    "publisher name {:?} is in use by another live connection; \
                     every publisher process needs its own name (ingest --origin)",
                    hello.name
                );
                let reason = Close::refuse(ErrorCode::NameInUse, message);
                return close(reader, out, reason, &peer).await;
            }
        },
    };
    out.push(&ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
        epoch: ctx.bus.epoch(),
        head_seq: ctx.bus.head(),
        max_frame: ctx.config.max_frame as u64,
        follows: ctx.follows,
    });
    // Now, not with the first reply: a client waits for Welcome before it subscribes.
    if let Err(err) = out.flush().await {
        return debug!(%peer, %err, "connection lost after Hello");
    }
    match claim {
        Some(claim) => publisher::run(reader, out, &ctx, &claim, hello.instance, &peer).await,
        None => subscriber::run(reader, out, &ctx, hello.name, &peer).await,
    }
}

async fn read_hello(reader: &mut Reader, config: &Config) -> Result<Hello, Close> {
    let body = match tokio::time::timeout(config.hello_timeout, reader.next()).await {
        Err(_) => {
            let limit = humantime::format_duration(config.hello_timeout);
            return Err(Close::refuse(
                ErrorCode::HelloTimeout,
                format!("no Hello within {limit}"),
            ));
        }
        Ok(None) => return Err(Close::Quiet("closed before Hello".into())),
        Ok(Some(Err(err))) => return Err(err.into()),
        Ok(Some(Ok(body))) => body,
    };
    match decode_body::<ClientFrame>(&body) {
        Ok(ClientFrame::Hello {
            version,
            role,
            name,
            token,
            instance,
        }) => {
            check_version(version)?;
            check_token(config.token.as_deref(), token.as_deref())?;
            Ok(Hello {
                role,
                name,
                instance,
            })
        }
        Ok(_) => Err(Close::refuse(
            ErrorCode::ExpectedHello,
            "the first frame must be Hello",
        )),
        Err(err) => match peek_hello_version(&body) {
            Some(version) => check_version(version).and(Err(err.into())),
            None => Err(err.into()),
        },
    }
}

fn check_version(version: u32) -> Result<(), Close> {
    if version == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Close::refuse(
        ErrorCode::VersionMismatch,
        format!("client speaks protocol version {version}, busd speaks version {PROTOCOL_VERSION}"),
    ))
}

fn check_token(expected: Option<&str>, given: Option<&str>) -> Result<(), Close> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if given.is_some_and(|given| constant_time_eq(expected.as_bytes(), given.as_bytes())) {
        Ok(())
    } else {
        Err(Close::refuse(
            ErrorCode::Unauthorized,
            "missing or wrong token",
        ))
    }
}

/// Compares without an early exit, so response timing does not reveal the token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(check_token(None, None).is_ok());
        assert!(check_token(None, Some("x")).is_ok());
        assert!(check_token(Some("secret"), Some("secret")).is_ok());
        assert!(check_token(Some("secret"), Some("secreT")).is_err());
        assert!(check_token(Some("secret"), Some("secret2")).is_err());
        assert!(check_token(Some("secret"), None).is_err());
    }

    #[test]
    fn a_version_mismatch_names_both_versions() {
        let Err(Close::Refuse(code, message)) = check_version(PROTOCOL_VERSION + 1) else {
            panic!("accepted another version");
        };
        assert_eq!(code, ErrorCode::VersionMismatch);
        assert!(message.contains(&(PROTOCOL_VERSION + 1).to_string()));
        assert!(message.contains(&PROTOCOL_VERSION.to_string()));
    }
}
