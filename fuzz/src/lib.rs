//! What the fuzz targets check, kept out of the targets themselves so each target stays a
//! one-line `fuzz_target!` and the seed generator can reuse the input formats.
//!
//! Every stream target reads its input the same way: the first byte says how the rest
//! arrives ([`reads`]), the rest is the bytes a peer sent.

pub mod busd;
pub mod client;
pub mod events;
pub mod http;

/// busctl's command line, compiled from busctl's own source: `render` needs its `Format`.
/// busctl is a binary crate, so its modules cannot be depended on; `#[path]` compiles the
/// very same files instead of a copy.
#[path = "../../client/src/cli.rs"]
#[allow(dead_code)]
pub mod cli;

/// busctl's rendering of events and gaps, compiled from busctl's own source (see [`cli`]).
#[path = "../../client/src/render.rs"]
#[allow(dead_code)]
pub mod render;

/// Splits `stream` into the reads a socket might deliver: all at once when `size` is 0, else
/// `size` bytes at a time, so heads and frames that straddle reads are exercised too.
pub fn reads(stream: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let size = if size == 0 { stream.len().max(1) } else { size };
    stream.chunks(size)
}
