//! What identifies an event: the test's data carries its own identity, so a watcher's line
//! can be matched to the request that sent it without trusting anything the system adds.
//!
//! Data of [`ID_LEN`] bytes or more is `{id:010x}-` followed by filler derived from the id,
//! so each such event is unique and its content can be checked byte for byte. Shorter data
//! cannot hold a unique id; it is compared as a value (see the checker's multiset rule).
//! Either way the identity fits in a `u64`, so a long run's millions of events stay cheap.

use std::fmt;

/// Filler for long data: only unreserved URL characters, so data needs no percent-encoding
/// and no JSON escaping.
pub const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

/// Characters of short data: 32 unreserved ones, five bits each, so any short data packs
/// into a [`Key`]. Delivered short data with any other character was never sent.
pub const SHORT_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz01-._~";

/// The shortest data that carries an id: ten hex digits, a dash and at least one filler byte.
pub const ID_LEN: usize = 12;

/// Longest data that is compared by value.
pub const SHORT_MAX: usize = ID_LEN - 1;

/// Ids are ten hex digits.
const ID_LIMIT: u64 = 1 << 40;

/// Marks a key as short data (ids stay below [`ID_LIMIT`]).
const SHORT_TAG: u64 = 1 << 63;

/// Where a short key keeps its length (above 11 characters of five bits).
const SHORT_LEN_SHIFT: u32 = 55;

/// What identifies an event's data: a unique id, or short data by value, packed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(u64);

impl Key {
    pub fn id(id: u64) -> Key {
        assert!(id < ID_LIMIT, "id {id:#x} does not fit ten hex digits");
        Key(id)
    }

    /// `None` if `data` is too long for short data or has a character the load never uses.
    pub fn short(data: &str) -> Option<Key> {
        if data.len() > SHORT_MAX {
            return None;
        }
        let mut packed = SHORT_TAG | (data.len() as u64) << SHORT_LEN_SHIFT;
        for (i, byte) in data.bytes().enumerate() {
            let code = SHORT_ALPHABET.iter().position(|&c| c == byte)?;
            packed |= (code as u64) << (5 * i);
        }
        Some(Key(packed))
    }

    /// The id, if this is long data.
    pub fn as_id(self) -> Option<u64> {
        (self.0 & SHORT_TAG == 0).then_some(self.0)
    }

    /// The data, if this is short data.
    pub fn short_data(self) -> Option<String> {
        if self.0 & SHORT_TAG == 0 {
            return None;
        }
        let len = ((self.0 >> SHORT_LEN_SHIFT) & 0xf) as usize;
        let chars = (0..len).map(|i| char::from(SHORT_ALPHABET[(self.0 >> (5 * i)) as usize & 31]));
        Some(chars.collect())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.as_id(), self.short_data()) {
            (Some(id), _) => write!(f, "{id:010x}-..."),
            (None, Some(data)) => write!(f, "{data:?}"),
            (None, None) => unreachable!("a key is an id or short data"),
        }
    }
}

/// The data for request `id` of `len` bytes (`len >= ID_LEN`).
pub fn long_data(id: u64, len: usize) -> String {
    debug_assert!(len >= ID_LEN);
    let mut data = format!("{id:010x}-");
    data.extend(filler(id, len - data.len()));
    data
}

/// Short data of `len` characters, from `pick(32)` choosing each.
pub fn short_data(len: usize, mut pick: impl FnMut(usize) -> usize) -> String {
    debug_assert!(len <= SHORT_MAX);
    (0..len)
        .map(|_| char::from(SHORT_ALPHABET[pick(SHORT_ALPHABET.len())]))
        .collect()
}

fn filler(id: u64, n: usize) -> impl Iterator<Item = char> {
    let start = (id % ALPHABET.len() as u64) as usize;
    (0..n).map(move |i| char::from(ALPHABET[(start + i) % ALPHABET.len()]))
}

/// What a watcher printed as `data`, identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub key: Key,
    /// Bytes, saturating: anything longer than this test sends is wrong anyway.
    pub len: u16,
    /// The bytes are exactly what the request with this key sent (for ids: the filler
    /// matches; short data is its own key, so always).
    pub intact: bool,
}

/// Identifies delivered data; `None` if it cannot be data this test sent (long data not
/// starting with an id, short data with a character the load never uses).
pub fn identify(data: &str) -> Option<Seen> {
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    if data.len() <= SHORT_MAX {
        return Key::short(data).map(|key| Seen {
            key,
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
        key: Key::id(id),
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
            (Key::id(0xabc), 40, true)
        );
        let mut damaged = data.clone();
        damaged.replace_range(20..21, "!");
        assert!(!identify(&damaged).expect("still an id").intact);
        assert!(identify(&data[..30]).expect("truncated").intact);
        assert_eq!(format!("{:?}", seen.key), "0000000abc-...");
    }

    #[test]
    fn short_data_packs_into_its_key() {
        for data in ["", "a", "hello", "~._-10zyxwv", "aaaaaaaaaaa"] {
            let seen = identify(data).expect("short");
            assert_eq!(seen.key.short_data().as_deref(), Some(data));
            assert_eq!(seen.key.as_id(), None);
            assert_eq!(seen.len as usize, data.len());
        }
        assert_ne!(
            Key::short("a"),
            Key::short("aa"),
            "the length is part of the key"
        );
        assert_ne!(Key::short("a"), Some(Key::id(0)));
        assert_eq!(format!("{:?}", Key::short("hi").expect("short")), "\"hi\"");
        assert!(identify("HELLO").is_none(), "never sent: upper case");
        assert!(identify(&long_data(1, ID_LEN)).is_some());
        assert!(identify("not-an-id-at-all").is_none());
    }

    #[test]
    fn short_data_uses_only_its_alphabet() {
        let mut n = 0;
        let data = short_data(SHORT_MAX, |k| {
            n += 7;
            n % k
        });
        assert_eq!(data.len(), SHORT_MAX);
        assert!(Key::short(&data).is_some());
    }
}
