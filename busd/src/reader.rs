//! Reading a client's frames within bounded memory.
//!
//! A peer announces a frame's length in its first four bytes and may then send the body as
//! slowly as it likes, so buffering what it announces would let a few thousand connections
//! take gigabytes. As Kafka's broker bounds the requests it is reading with
//! `queued.max.request.bytes` and stops reading a socket rather than allocating past it,
//! busd reads each connection into a small buffer of its own ([`SMALL`]) and a frame that does
//! not fit there must first take its size from a [`ReadBudget`] shared by all connections.
//! While the budget is spent the connection is not read, and TCP pushes back on its peer.
//!
//! A frame that has started must arrive whole within the frame timeout, counted from its
//! first byte or, for a frame that waited for budget, from when the budget was granted; a
//! connection idle between frames has no deadline (subscribers are idle most of the time).
//! Before `Hello` a frame may be at most [`SMALL`] bytes, so nothing beyond the connection's
//! own buffer is ever held for a peer that has not said who it is.
//!
//! Between frames the connection holds no buffer at all: it waits for the socket to become
//! readable ([`Readable`]) and only then allocates one. Ten thousand idle subscribers then
//! cost busd no read buffers.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use protocol::CodecError;
use protocol::codec::has_complete_frame;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes of a frame's length prefix.
const PREFIX: usize = 4;

/// A connection's own buffer: frames up to this size, prefix included, take no budget, so a
/// publisher pipelining small frames never touches the shared semaphore.
pub const SMALL: usize = 4 * 1024;

/// The largest body of a connection's first frame. A `Hello` is tens of bytes; anything
/// bigger before the handshake is refused before a byte of it is buffered.
pub const FIRST_FRAME_MAX: usize = SMALL - PREFIX;

/// A socket the reader can wait on without holding a buffer: a buffer of `room` bytes is
/// allocated only once bytes are there to read.
pub trait Readable {
    /// Reads into `buf` (empty, with no capacity) once the socket has bytes, giving it `room`
    /// only then; `Ok(0)` is the end of the stream. Cancel-safe: cancelled, `buf` is empty.
    fn read_idle(
        &mut self,
        buf: &mut BytesMut,
        room: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

impl Readable for OwnedReadHalf {
    async fn read_idle(&mut self, buf: &mut BytesMut, room: usize) -> std::io::Result<usize> {
        loop {
            self.readable().await?;
            buf.reserve(room);
            match self.try_read_buf(buf) {
                // Readiness was stale: give the buffer back and wait again.
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => *buf = BytesMut::new(),
                read => return read,
            }
        }
    }
}

/// Why no frame could be read; each ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Too large for `max_frame`, cut short by the peer, or a socket error.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The first frame announced more than a `Hello` could need.
    #[error("the first frame must be a Hello under 4 KiB; this one announced {len} bytes")]
    FirstFrameTooLarge {
        /// The length the prefix announced.
        len: usize,
    },
    /// A started frame did not arrive whole in time.
    #[error("a frame did not arrive whole within {} of its start", humantime::format_duration(*.0))]
    FrameTimeout(Duration),
    /// The budget's semaphore was closed, which busd never does.
    #[error("the read budget is closed")]
    BudgetClosed,
}

/// Bytes of partly received frames that all connections together may hold
/// (`--read-budget`), so that memory stays bounded whatever peers announce.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl ReadBudget {
    /// A budget of `bytes` (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.min(Semaphore::MAX_PERMITS);
        ReadBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes not held by any connection now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Waits until `bytes` are free and holds them until the permit is dropped.
    async fn hold(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ReadError> {
        // Never more than the whole budget, which could never be granted; busd raises the
        // budget to `max_frame`, so this only guards a misconfigured embedding.
        let n = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(n) {
            return Ok(permit);
        }
        self.bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| ReadError::BudgetClosed)
    }
}

/// What a reader needs to know about the limits it enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame body after `Hello`.
    pub max_frame: usize,
    /// How long a started frame may take (see the module docs).
    pub frame_timeout: Duration,
    /// Shared by all connections, so that their partly received frames stay bounded.
    pub budget: ReadBudget,
}

/// Splits a connection's byte stream into frame bodies within [`Limits`].
pub struct FrameReader<R = OwnedReadHalf> {
    rd: R,
    buf: BytesMut,
    limits: Limits,
    /// Until `Hello` is accepted, frames are limited to [`FIRST_FRAME_MAX`].
    greeted: bool,
    /// Budget for the large frame being received, whose buffer it pays for.
    held: Option<OwnedSemaphorePermit>,
    /// When the frame being received must be complete; `None` between frames.
    deadline: Option<Instant>,
}

/// What the buffer holds at its start.
enum Buffered {
    Nothing,
    /// Part of a frame of this many bytes, prefix included (just the prefix's size while
    /// the prefix itself is incomplete).
    Part(usize),
    /// A whole frame of this many bytes, prefix included.
    Whole(usize),
}

impl<R: AsyncRead + Readable + Unpin> FrameReader<R> {
    /// A reader for a connection that has yet to say `Hello`.
    pub fn new(rd: R, limits: Limits) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::new(),
            limits,
            greeted: false,
            held: None,
            deadline: None,
        }
    }

    /// Lifts the first-frame limit once `Hello` has been accepted.
    pub fn hello_accepted(&mut self) {
        self.greeted = true;
    }

    /// Whether another whole frame is already buffered, so a caller can put off flushing
    /// its replies until it has handled that one too.
    pub fn has_frame(&self) -> bool {
        has_complete_frame(&self.buf)
    }

    /// Gives back the socket, dropping the buffer and any budget held.
    pub fn into_inner(self) -> R {
        self.rd
    }

    /// The next frame body; `None` when the peer closed between frames.
    ///
    /// Cancel-safe: whatever was read or granted stays with the reader for the next call.
    pub async fn next(&mut self) -> Option<Result<Bytes, ReadError>> {
        self.next_frame().await.transpose()
    }

    async fn next_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            match self.buffered()? {
                Buffered::Whole(total) => return Ok(Some(self.take(total))),
                Buffered::Nothing => {
                    self.deadline = None;
                    // Idle: no buffer until there is something to read.
                    self.buf = BytesMut::new();
                    let read = self.rd.read_idle(&mut self.buf, SMALL).await;
                    if read.map_err(CodecError::Io)? == 0 {
                        return Ok(None);
                    }
                    continue;
                }
                Buffered::Part(total) => self.make_room(total).await?,
            }
            if self.fill().await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    unread => Err(CodecError::Truncated(unread).into()),
                };
            }
        }
    }

    fn buffered(&self) -> Result<Buffered, ReadError> {
        let Some(prefix) = self.buf.get(..PREFIX) else {
            return Ok(match self.buf.len() {
                0 => Buffered::Nothing,
                _ => Buffered::Part(PREFIX),
            });
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        self.check(len)?;
        let total = PREFIX + len;
        Ok(if self.buf.len() >= total {
            Buffered::Whole(total)
        } else {
            Buffered::Part(total)
        })
    }

    /// Refuses a length over the limit before anything is buffered for it.
    fn check(&self, len: usize) -> Result<(), ReadError> {
        if !self.greeted && len > FIRST_FRAME_MAX {
            return Err(ReadError::FirstFrameTooLarge { len });
        }
        let max = self.limits.max_frame;
        if len > max {
            return Err(CodecError::FrameTooLarge { len, max }.into());
        }
        Ok(())
    }

    /// Hands out the whole frame at the buffer's start; a large frame takes its buffer along
    /// and gives back its budget, and the connection goes on with a small buffer again.
    fn take(&mut self, total: usize) -> Bytes {
        let mut frame = self.buf.split_to(total);
        frame.advance(PREFIX);
        self.deadline = None;
        if self.held.take().is_some() {
            let rest = self.buf.split();
            self.buf = BytesMut::with_capacity(SMALL.max(rest.len()));
            self.buf.extend_from_slice(&rest);
        }
        frame.freeze()
    }

    /// Makes room for the partly received frame of `total` bytes, starting its clock.
    async fn make_room(&mut self, total: usize) -> Result<(), ReadError> {
        if total <= SMALL {
            let timeout = self.limits.frame_timeout;
            self.deadline
                .get_or_insert_with(|| Instant::now() + timeout);
            self.keep_small_room();
        } else if self.held.is_none() {
            // Waiting for budget is busd's doing, not the peer's: no clock meanwhile.
            self.deadline = None;
            let permit = self.limits.budget.hold(total - PREFIX).await?;
            self.held = Some(permit);
            self.deadline = Some(Instant::now() + self.limits.frame_timeout);
            self.grow(total);
        }
        Ok(())
    }

    /// Gives the small buffer its full size again, moving a partial frame to its front.
    fn keep_small_room(&mut self) {
        let len = self.buf.len();
        if self.buf.capacity() >= SMALL || self.buf.try_reclaim(SMALL - len) {
            return;
        }
        let mut fresh = BytesMut::with_capacity(SMALL);
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
    }

    /// Replaces the small buffer with one of exactly `total` bytes, paid for by the budget,
    /// so that no read goes past the frame's end.
    fn grow(&mut self, total: usize) {
        let mut grown = BytesMut::with_capacity(total);
        grown.extend_from_slice(&self.buf);
        self.buf = grown;
    }

    /// Reads once into the buffer's spare room, within the current frame's deadline.
    async fn fill(&mut self) -> Result<usize, ReadError> {
        let read = self.rd.read_buf(&mut self.buf);
        let read = match self.deadline {
            None => read.await,
            Some(deadline) => tokio::time::timeout_at(deadline, read)
                .await
                .map_err(|_| ReadError::FrameTimeout(self.limits.frame_timeout))?,
        };
        read.map_err(|err| CodecError::Io(err).into())
    }
}

#[cfg(test)]
mod tests;
