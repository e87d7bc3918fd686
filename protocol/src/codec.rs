//! Length-prefixed framing: a 4-byte big-endian body length, then a postcard body.
//!
//! [`RawCodec`] only splits the stream into bodies, for busd, which looks at a body's first
//! byte before deciding how to decode it. [`FrameCodec`] adds postcard on top for clients.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder};

use crate::DEFAULT_MAX_FRAME;

const PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Refused from the length prefix alone, before anything was buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length the prefix announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a frame postcard can read.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The body holds more than one frame's worth: a peer that frames wrongly.
    #[error("malformed frame: {0} bytes left over after the frame body")]
    TrailingBytes(usize),
    /// The peer closed mid-frame: the partial frame is dropped, never acted on.
    #[error("connection closed in the middle of a frame ({0} bytes unread)")]
    Truncated(usize),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frame bodies, refusing any body over `max_frame` bytes before
/// buffering it.
#[derive(Debug, Clone, Copy)]
pub struct RawCodec {
    max_frame: usize,
}

impl RawCodec {
    /// A codec refusing bodies over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        RawCodec { max_frame }
    }
}

impl Default for RawCodec {
    fn default() -> Self {
        RawCodec::new(DEFAULT_MAX_FRAME)
    }
}

/// Whether `buf` starts with a whole frame, so a reader can tell if another frame is
/// already buffered (and put off flushing its replies until it has handled it).
pub fn has_complete_frame(buf: &[u8]) -> bool {
    match buf.get(..PREFIX) {
        Some(prefix) => {
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            buf.len() - PREFIX >= len
        }
        None => false,
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some(prefix) = src.get(..PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < PREFIX + len {
            src.reserve(PREFIX + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated(src.len())),
        }
    }
}

impl<T: Serialize> Encoder<&T> for RawCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(frame, dst, self.max_frame)
    }
}

/// Appends `frame` to `dst` with its length prefix; on error `dst` is left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(
    frame: &T,
    dst: &mut BytesMut,
    max_frame: usize,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    let written = postcard::serialize_with_flavor(frame, BytesMutFlavor(dst))
        .map_err(CodecError::from)
        .and_then(|dst| {
            let len = dst.len() - start - PREFIX;
            if len > max_frame {
                Err(CodecError::FrameTooLarge {
                    len,
                    max: max_frame,
                })
            } else {
                Ok(len)
            }
        });
    match written {
        Ok(len) => {
            dst[start..start + PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

/// Decodes one whole frame body, refusing trailing bytes so a frame means one thing only.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (frame, rest) = postcard::take_from_bytes(body)?;
    if rest.is_empty() {
        Ok(frame)
    } else {
        Err(CodecError::TrailingBytes(rest.len()))
    }
}

/// Serializes straight into a `BytesMut`, with no intermediate `Vec`.
struct BytesMutFlavor<'a>(&'a mut BytesMut);

impl<'a> postcard::ser_flavors::Flavor for BytesMutFlavor<'a> {
    type Output = &'a mut BytesMut;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        Ok(self.0)
    }
}

/// A typed codec: decodes `In` frames and encodes `Out` frames. Clients use
/// `FrameCodec<ServerFrame, ClientFrame>`; a test server the reverse.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    raw: RawCodec,
    _frames: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec refusing bodies over `max_frame` bytes either way.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            raw: RawCodec::new(max_frame),
            _frames: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        self.raw
            .decode(src)?
            .map(|body| decode_body(&body))
            .transpose()
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        self.raw
            .decode_eof(src)?
            .map(|body| decode_body(&body))
            .transpose()
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, frame: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&frame, dst, self.raw.max_frame)
    }
}

#[cfg(test)]
mod tests;
