//! What the fuzz targets check, kept out of the targets themselves so each target stays a
//! one-line `fuzz_target!` and the seed generator can reuse the input formats.
//!
//! Every stream target reads its input the same way: the first byte says how the rest
//! arrives ([`reads`]), the rest is the bytes a peer sent.

pub mod busd;
pub mod client;
pub mod events;
pub mod http;

/// Splits `stream` into the reads a socket might deliver: all at once when `size` is 0, else
/// `size` bytes at a time, so heads and frames that straddle reads are exercised too.
pub fn reads(stream: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let size = if size == 0 { stream.len().max(1) } else { size };
    stream.chunks(size)
}
