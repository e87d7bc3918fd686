//! What identifies an event: the test's data carries its own identity, so a watcher's line
//! can be matched to the request that sent it without trusting anything the system adds.
//!
//! Data of [`ID_LEN`] bytes or more is `{id:010x}-` followed by filler derived from the id,
//! so each such event is unique and its content can be checked byte for byte. Shorter data
//! cannot hold a unique id; it is compared as a value (see the checker's multiset rule).

use std::fmt;

/// Only unreserved URL characters, so data needs no percent-encoding and no JSON escaping.
pub const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

/// The shortest data that carries an id: ten hex digits, a dash and at least one filler byte.
pub const ID_LEN: usize = 12;

/// Longest data that is compared by value.
pub const SHORT_MAX: usize = ID_LEN - 1;

/// What identifies an event's data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// Data of [`ID_LEN`] bytes or more, unique per request.
    Id(u64),
    /// Shorter data, by value.
    Short(Short),
}

/// Up to [`SHORT_MAX`] bytes, stored inline so millions of them stay cheap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Short {
    len: u8,
    bytes: [u8; SHORT_MAX],
}

impl Short {
    /// `None` if `data` is too long to be short data.
    pub fn new(data: &str) -> Option<Short> {
        let raw = data.as_bytes();
        if raw.len() > SHORT_MAX {
            return None;
        }
        let mut bytes = [0; SHORT_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Short {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("<not utf-8>")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Id(id) => write!(f, "{id:010x}-..."),
            Key::Short(short) => write!(f, "{:?}", short.as_str()),
        }
    }
}

impl fmt::Debug for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The data for request `id` of `len` bytes (`len >= ID_LEN`).
pub fn long_data(id: u64, len: usize) -> String {
    debug_assert!(len >= ID_LEN);
    let mut data = format!("{id:010x}-");
    data.extend(filler(id, len - data.len()));
    data
}

fn filler(id: u64, n: usize) -> impl Iterator<Item = char> {
    let start = (id % ALPHABET.len() as u64) as usize;
    (0..n).map(move |i| char::from(ALPHABET[(start + i) % ALPHABET.len()]))
}

/// What a watcher printed as `data`, identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub key: Key,
    pub len: u32,
    /// The bytes are exactly what the request with this key sent (for ids: the filler
    /// matches; short data is its own key, so always).
    pub intact: bool,
}

/// Identifies delivered data; `None` if it is long but does not start with an id (data
/// this test never sent).
pub fn identify(data: &str) -> Option<Seen> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if let Some(short) = Short::new(data) {
        return Some(Seen {
            key: Key::Short(short),
            len,
            intact: true,
        });
    }
    let (hex, rest) = (data.get(..10)?, data.get(10..)?);
    if !rest.starts_with('-') || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    let intact = rest[1..].chars().eq(filler(id, rest.len() - 1));
    Some(Seen {
        key: Key::Id(id),
        len,
        intact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_data_round_trips_and_detects_damage() {
        let data = long_data(0xabc, 40);
        assert_eq!(data.len(), 40);
        assert!(data.starts_with("0000000abc-"));
        let seen = identify(&data).expect("an id");
        assert_eq!(
            (seen.key, seen.len, seen.intact),
            (Key::Id(0xabc), 40, true)
        );
        let mut damaged = data.clone();
        damaged.replace_range(20..21, "!");
        assert!(!identify(&damaged).expect("still an id").intact);
        assert!(identify(&data[..30]).expect("truncated").intact);
    }

    #[test]
    fn short_data_is_its_own_key() {
        let seen = identify("hello").expect("short");
        assert_eq!(seen.key, Key::Short(Short::new("hello").expect("short")));
        assert_eq!(format!("{:?}", seen.key), "\"hello\"");
        assert!(identify(&long_data(1, ID_LEN)).is_some());
        assert!(identify("not-an-id-at-all").is_none());
    }
}
