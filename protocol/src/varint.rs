//! Postcard's LEB128 varints, by hand, for the byte-level fast paths.
//!
//! Decoding mirrors postcard's own rules exactly (up to 10 bytes, the last one may carry at
//! most one bit), so the fast paths accept precisely what postcard accepts.

use bytes::BufMut;

/// Most bytes a `u64` varint can take.
pub const MAX_LEN: usize = 10;

/// Appends `value` as a varint.
#[inline]
pub fn put(dst: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// Encoded length of `value`.
#[inline]
pub fn len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a varint at `*pos`, advancing it; `None` if truncated or over-long.
#[inline]
pub fn take(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for i in 0..MAX_LEN {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (i < MAX_LEN - 1 || byte <= 1).then_some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_postcard(value: u64) {
            let mut ours = Vec::new();
            put(&mut ours, value);
            prop_assert_eq!(&ours, &postcard::to_allocvec(&value).unwrap());
            prop_assert_eq!(ours.len(), len(value));
            let mut pos = 0;
            prop_assert_eq!(take(&ours, &mut pos), Some(value));
            prop_assert_eq!(pos, ours.len());
        }

        #[test]
        fn rejects_what_postcard_rejects(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut pos = 0;
            let ours = take(&bytes, &mut pos);
            let theirs = postcard::take_from_bytes::<u64>(&bytes).ok().map(|(v, _)| v);
            prop_assert_eq!(ours, theirs);
        }
    }
}
