//! A connection's two sides and how it ends, the same for publishers and subscribers: the
//! budgeted reader, the buffered writer, the refusal that tells a peer why, and the one
//! table of frames a role may not send.
//!
//! Whatever a peer sends, it ends in one of two ways: a precise `Error` frame and a close
//! ([`Close::Refuse`]), or a quiet close when the peer itself went away ([`Close::Quiet`]).
//! Either way only this connection's task ends; busd keeps serving everyone else.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use protocol::{ClientFrame, CodecError, ErrorCode, Role, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{debug, info, warn};

use crate::reader::{FrameReader, ReadError};

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
/// The buffer is allocated by the first frame and kept while the connection is busy;
/// [`Outbound::release`] gives it back when the connection goes idle.
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
            buf: BytesMut::new(),
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

    /// Frees the buffer of a connection gone idle, so an idle subscriber holds none; the
    /// next frame allocates one again.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
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
pub async fn linger(rd: OwnedReadHalf) {
    linger_for(rd, LINGER).await;
}

/// [`linger`] for up to `within`, or until the peer closes: after a `Goodbye`, a subscriber
/// still reading what came before it keeps sending (pings, a group member's acks), and a
/// reset would destroy what it has not read yet.
pub async fn linger_for(mut rd: OwnedReadHalf, within: Duration) {
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(within, async {
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

/// A client frame's kind, for [`permitted`]: from a decoded frame, or from its tag when busd
/// does not decode it (a `Publish` on the fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Hello`, which is only ever the first frame.
    Hello,
    /// `Subscribe`, a subscriber's.
    Subscribe,
    /// `Publish`, a publisher's.
    Publish,
    /// `Ping`, `StatsRequest` or `PublisherStatsRequest`, anyone's.
    Any,
}

impl Kind {
    /// The kind of a decoded frame.
    pub fn of(frame: &ClientFrame) -> Kind {
        match frame {
            ClientFrame::Hello { .. } => Kind::Hello,
            ClientFrame::Subscribe { .. }
            | ClientFrame::SubscribeWith { .. }
            | ClientFrame::Join { .. }
            | ClientFrame::Ack { .. } => Kind::Subscribe,
            ClientFrame::Publish { .. } => Kind::Publish,
            ClientFrame::Ping | ClientFrame::StatsRequest | ClientFrame::PublisherStatsRequest => {
                Kind::Any
            }
        }
    }
}

/// The one table of what a connection may send after `Hello`, for both roles: a second
/// `Hello` is malformed, the other role's frame is not permitted.
pub fn permitted(role: Role, kind: Kind) -> Result<(), Close> {
    match (role, kind) {
        (_, Kind::Hello) => Err(Close::refuse(ErrorCode::Malformed, "Hello sent twice")),
        (Role::Publisher, Kind::Subscribe) => Err(Close::refuse(
            ErrorCode::NotPermitted,
            "Subscribe needs the Subscriber role; this connection said Publisher",
        )),
        (Role::Subscriber, Kind::Publish) => Err(Close::refuse(
            ErrorCode::NotPermitted,
            "Publish needs the Publisher role; this connection said Subscriber",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_is_refused_the_other_roles_frame_and_a_second_hello() {
        for role in [Role::Publisher, Role::Subscriber] {
            assert!(permitted(role, Kind::Any).is_ok());
            assert!(matches!(
                permitted(role, Kind::Hello),
                Err(Close::Refuse(ErrorCode::Malformed, _))
            ));
        }
        assert!(permitted(Role::Publisher, Kind::Publish).is_ok());
        assert!(permitted(Role::Subscriber, Kind::Subscribe).is_ok());
        assert!(matches!(
            permitted(Role::Publisher, Kind::Subscribe),
            Err(Close::Refuse(ErrorCode::NotPermitted, _))
        ));
        assert!(matches!(
            permitted(Role::Subscriber, Kind::Publish),
            Err(Close::Refuse(ErrorCode::NotPermitted, _))
        ));
    }
}
