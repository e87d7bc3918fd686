//! A connection's two sides and how it ends, the same for publishers and subscribers: the
//! budgeted reader, the buffered writer, the refusal that tells a peer why, and the one
//! table of frames a role may not send.
//!
//! Whatever a peer sends, it ends in one of two ways: a precise `Error` frame and a close
//! ([`Close::Refuse`]), or a quiet close when the peer itself went away ([`Close::Quiet`]).
//! Either way only this connection's task ends; busd keeps serving everyone else.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
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
    /// Large runs of the bus's shared buffer that belong in `buf` at the given offset, in
    /// order, written from where they are rather than copied
    /// ([`protocol::fanout::write_frames_sharing`]).
    pub shared: Vec<(usize, Bytes)>,
    max_frame: usize,
}

/// Most slices handed to one vectored write; what does not fit goes in the next.
const MAX_SLICES: usize = 64;

impl Outbound {
    /// An outgoing side on `wr` that refuses to encode frames over `max_frame`.
    pub fn new(wr: OwnedWriteHalf, max_frame: usize) -> Self {
        Outbound {
            wr,
            buf: BytesMut::new(),
            shared: Vec::new(),
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
        if self.buf.is_empty() && self.shared.is_empty() {
            return Ok(false);
        }
        if self.shared.is_empty() {
            self.wr.write_all(&self.buf).await?;
        } else {
            // Boxed: its slices (1 KiB) would otherwise be part of every subscriber's task,
            // idle ones included, as the largest state of each future that awaits a flush.
            Box::pin(write_spliced(&mut self.wr, &self.buf, &self.shared)).await?;
            self.shared.clear();
        }
        self.buf.clear();
        Ok(true)
    }

    /// Frees the buffer of a connection gone idle, so an idle subscriber holds none; the
    /// next frame allocates one again.
    pub fn release(&mut self) {
        if self.buf.is_empty() && self.shared.is_empty() {
            self.buf = BytesMut::new();
            self.shared = Vec::new();
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

/// Writes `buf` with each of `shared` spliced in at its offset, in vectored writes that
/// resume wherever a partial write stopped.
async fn write_spliced<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &[u8],
    shared: &[(usize, Bytes)],
) -> io::Result<()> {
    let total = buf.len() + shared.iter().map(|(_, b)| b.len()).sum::<usize>();
    let mut written = 0;
    while written < total {
        let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
        let used = slices_after(buf, shared, written, &mut slices);
        let n = wr.write_vectored(&slices[..used]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// Fills `slices` with what comes after the first `skip` bytes of `buf` spliced with
/// `shared`, as far as they reach; returns how many it filled.
fn slices_after<'a>(
    buf: &'a [u8],
    shared: &'a [(usize, Bytes)],
    mut skip: usize,
    slices: &mut [io::IoSlice<'a>],
) -> usize {
    // Each stretch of `buf` from the previous run's offset, then the run (none at the end).
    let froms = std::iter::once(0).chain(shared.iter().map(|(pos, _)| *pos));
    let runs = shared.iter().map(Some).chain(std::iter::once(None));
    let pieces = froms.zip(runs).flat_map(|(from, run)| match run {
        Some((pos, run)) => [&buf[from..*pos], &run[..]],
        None => [&buf[from..], &[][..]],
    });
    let mut used = 0;
    for piece in pieces {
        if skip >= piece.len() {
            skip -= piece.len();
            continue;
        }
        slices[used] = io::IoSlice::new(&piece[skip..]);
        skip = 0;
        used += 1;
        if used == slices.len() {
            break;
        }
    }
    used
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
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;

    use super::*;

    /// A writer that takes at most `most` bytes per write, however many slices it is given.
    struct Trickle {
        got: Vec<u8>,
        most: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(b)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut room = self.most;
            for slice in slices {
                let n = slice.len().min(room);
                self.got.extend_from_slice(&slice[..n]);
                room -= n;
            }
            Poll::Ready(Ok(self.most - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    proptest! {
        /// Whatever the writer takes per call, and however many runs there are (more than
        /// one write's slices included), the bytes written are `buf` with every run spliced
        /// in at its offset, once.
        #[test]
        fn spliced_writes_resume_after_partial_writes(
            buf_len in 0usize..300,
            runs in proptest::collection::vec((0usize..300, 0usize..50), 0..100),
            most in 1usize..200,
        ) {
            let buf: Vec<u8> = (0..buf_len).map(|i| i as u8).collect();
            let mut offsets: Vec<usize> = runs.iter().map(|(at, _)| at % (buf_len + 1)).collect();
            offsets.sort();
            let shared: Vec<(usize, Bytes)> = offsets
                .iter()
                .zip(&runs)
                .enumerate()
                .map(|(i, (at, (_, len)))| (*at, Bytes::from(vec![200 + (i % 50) as u8; *len])))
                .collect();
            let mut expected = Vec::new();
            let mut from = 0;
            for (at, run) in &shared {
                expected.extend_from_slice(&buf[from..*at]);
                expected.extend_from_slice(run);
                from = *at;
            }
            expected.extend_from_slice(&buf[from..]);
            let mut writer = Trickle { got: Vec::new(), most };
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(write_spliced(&mut writer, &buf, &shared)).unwrap();
            prop_assert_eq!(writer.got, expected);
        }
    }

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
