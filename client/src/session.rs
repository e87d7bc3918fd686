//! Opening a connection to busd: connect, `Hello`, `Welcome`.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, ErrorCode, FrameCodec, OLDEST_VERSION, Position, Role, ServerFrame};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A connection to busd after the handshake: typed frames both ways.
pub type Conn = Framed<TcpStream, FrameCodec<ServerFrame, ClientFrame>>;

/// Largest frame busctl accepts: generous, since busd bounds its own frames.
const MAX_FRAME: usize = 64 << 20;
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// busd's answer to `Hello`.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    /// The busd run.
    pub epoch: u64,
    /// The last seq it has given out.
    pub head_seq: u64,
    /// busd's largest accepted frame body.
    pub max_frame: u64,
    /// The run this busd directly follows, if that run ended with a `Goodbye`.
    pub follows: Option<Position>,
}

/// Random per process: busd tells a reconnection of this process from another process
/// that uses the same publisher name.
fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(|| fastrand::u64(..))
}

/// Why a connection to busd could not be had or kept.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Nothing answered at the address.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// busd answered with an `Error` frame.
    #[error("busd refused: {message}")]
    Refused {
        /// busd's code, which decides whether retrying can help.
        code: ErrorCode,
        /// busd's words.
        message: String,
    },
    /// The connection broke, or busd said something out of turn.
    #[error("connection lost: {0}")]
    Lost(String),
}

impl SessionError {
    /// Refusals that retrying cannot fix.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::Refused {
                code: ErrorCode::VersionMismatch
                    | ErrorCode::Unauthorized
                    | ErrorCode::FilterTooLarge
                    | ErrorCode::NotPermitted
                    | ErrorCode::ExpectedHello
                    | ErrorCode::FrameTooLarge
                    | ErrorCode::Malformed
                    | ErrorCode::NameInUse,
                ..
            }
        )
    }
}

/// Connects to busd at `addr` and says `Hello` as `role` under `name`: the one handshake of
/// every busctl command, the publisher and subscriber, and the tests. Returns the connection and busd's
/// `Welcome`.
pub async fn open(
    addr: &str,
    role: Role,
    name: &str,
    token: Option<&str>,
) -> Result<(Conn, Welcome), SessionError> {
    open_within(addr, role, name, token, HANDSHAKE_TIMEOUT).await
}

/// [`open`], allowing `timeout` each for the connection and for the `Welcome`.
pub async fn open_within(
    addr: &str,
    role: Role,
    name: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(Conn, Welcome), SessionError> {
    open_speaking(addr, role, name, token, timeout, OLDEST_VERSION).await
}

/// [`open_within`], saying protocol `version` in `Hello`: the oldest version that has
/// every frame this connection will send, so a busd of that version or newer serves it
/// (a subscriber asking for history says 3; everything else says 2 and works with busd 2).
pub async fn open_speaking(
    addr: &str,
    role: Role,
    name: &str,
    token: Option<&str>,
    timeout: Duration,
    version: u32,
) -> Result<(Conn, Welcome), SessionError> {
    let connect_error = |reason: String| SessionError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(crate::bus::busd_addr(addr)))
        .await
        .map_err(|_| connect_error("timed out".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, FrameCodec::new(MAX_FRAME));
    let hello = ClientFrame::Hello {
        version,
        role,
        name: name.to_owned(),
        token: token.filter(|t| !t.is_empty()).map(str::to_owned),
        instance: instance(),
    };
    conn.send(hello)
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    let answer = tokio::time::timeout(timeout, conn.next())
        .await
        .map_err(|_| SessionError::Lost("no Welcome from busd".into()))?;
    match answer {
        Some(Ok(ServerFrame::Welcome {
            epoch,
            head_seq,
            max_frame,
            follows,
            ..
        })) => Ok((
            conn,
            Welcome {
                epoch,
                head_seq,
                max_frame,
                follows,
            },
        )),
        Some(Ok(ServerFrame::Error { code, message })) => {
            Err(SessionError::Refused { code, message })
        }
        Some(Ok(other)) => Err(SessionError::Lost(format!(
            "expected Welcome, got {other:?}"
        ))),
        Some(Err(e)) => Err(SessionError::Lost(e.to_string())),
        None => Err(SessionError::Lost("busd closed the connection".into())),
    }
}
