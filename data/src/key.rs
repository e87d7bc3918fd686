//! Write keys: an account may carry one, and then only requests that present it
//! (`Authorization: Bearer <key>`) may write events for it.
//!
//! A key is 32 random bytes from the operating system, written as `trk_` and 64 hex digits
//! (the prefix lets secret scanners recognise a leaked one). Only its SHA-256 hash is stored:
//! someone who reads the accounts table cannot write as the account. A fast hash is enough
//! because keys are random, not chosen by people: there is no dictionary to try, and 256 bits
//! cannot be searched. Hashes are compared in constant time, so answer times say nothing
//! about how much of a guess was right.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with.
pub const PREFIX: &str = "trk_";

/// The SHA-256 hash of a key: what the accounts table and the index hold.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of `key` as presented (the bytes after `Bearer `).
    pub fn of(key: &[u8]) -> KeyHash {
        KeyHash(Sha256::digest(key).into())
    }

    /// Reads a hash as stored. A value of another length (written by hand, say) becomes a
    /// hash that no key matches: the account stays locked rather than open.
    pub fn from_stored(bytes: &[u8]) -> KeyHash {
        match <[u8; 32]>::try_from(bytes) {
            Ok(hash) => KeyHash(hash),
            Err(_) => KeyHash::LOCKED,
        }
    }

    /// All zeros: finding a key that hashes to it is as hard as breaking SHA-256.
    const LOCKED: KeyHash = KeyHash([0; 32]);

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `key` is the key this is the hash of, in time independent of where a wrong
    /// key's hash first differs.
    pub fn matches(&self, key: &[u8]) -> bool {
        KeyHash::of(key).0.ct_eq(&self.0).into()
    }
}

/// Never prints the hash: it has no place in logs either.
impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// What the index holds for a keyed account: the stored hash, and the key last seen to match
/// it, so a sender presenting the same key request after request is checked with one
/// constant-time comparison instead of a SHA-256 each time. The key is only kept in this
/// process's memory, which sees it in every request anyway; a new hash (a new key, or a
/// revocation) comes as a new `Lock`, and with it an empty memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    hash: KeyHash,
    opened_by: OnceLock<Box<[u8]>>,
}

impl Lock {
    pub fn new(hash: KeyHash) -> Lock {
        Lock {
            hash,
            opened_by: OnceLock::new(),
        }
    }

    /// Whether `key` is the account's key. A wrong key always costs the full hash.
    pub fn opens(&self, key: &[u8]) -> bool {
        if let Some(known) = self.opened_by.get() {
            if same(known, key) {
                return true;
            }
        }
        let opens = self.hash.matches(key);
        if opens {
            // Another thread may have set it first, with the same key: either is right.
            let _ = self.opened_by.set(key.into());
        }
        opens
    }
}

/// Whether two byte strings are equal, in time that depends on their length only: the bytes'
/// differences are OR-ed together a word at a time with no branch on them, and the result
/// is examined once, through `subtle`. `subtle`'s own slice comparison does the same a byte
/// at a time behind an optimisation barrier each, several times slower for a key.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    let diff = a_words
        .zip(b_words)
        .fold(tail, |acc, (x, y)| acc | (word(x) ^ word(y)));
    diff.ct_eq(&0).into()
}

/// Makes a new key; returns it (to show once) and its hash (to store).
pub fn generate() -> Result<(String, KeyHash), getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut key = String::with_capacity(PREFIX.len() + 64);
    key.push_str(PREFIX);
    for byte in secret {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    let hash = KeyHash::of(key.as_bytes());
    Ok((key, hash))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_matches_its_hash_and_nothing_else() {
        let (key, hash) = generate().unwrap();
        assert!(
            key.starts_with(PREFIX) && key.len() == PREFIX.len() + 64,
            "{key}"
        );
        assert!(key[PREFIX.len()..].bytes().all(|b| HEX.contains(&b)));
        assert!(hash.matches(key.as_bytes()));
        assert!(!hash.matches(&key.as_bytes()[..key.len() - 1]));
        assert!(!hash.matches(b""));
        let (other, _) = generate().unwrap();
        assert_ne!(key, other, "keys are random");
        assert!(!hash.matches(other.as_bytes()));
    }

    #[test]
    fn a_stored_hash_round_trips_and_a_malformed_one_locks() {
        let (key, hash) = generate().unwrap();
        assert_eq!(KeyHash::from_stored(hash.as_bytes()), hash);
        let locked = KeyHash::from_stored(b"not a hash");
        assert!(!locked.matches(key.as_bytes()) && !locked.matches(b""));
    }

    #[test]
    fn the_hash_is_sha256_of_the_key() {
        // echo -n abc | sha256sum
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = KeyHash::of(b"abc")
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn a_lock_opens_for_its_key_only_before_and_after_remembering_it() {
        let (key, hash) = generate().unwrap();
        let lock = Lock::new(hash);
        assert!(!lock.opens(b"trk_wrong"));
        assert!(lock.opens(key.as_bytes()), "first time: hashed");
        assert!(lock.opens(key.as_bytes()), "then: remembered");
        assert!(!lock.opens(&key.as_bytes()[..10]));
        assert!(!lock.opens(b""));
        let (other, _) = generate().unwrap();
        assert!(
            !lock.opens(other.as_bytes()),
            "a remembered key is not any key"
        );
    }

    #[test]
    fn same_compares_every_byte_at_any_length() {
        let key = b"trk_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(same(key, key) && same(b"", b"") && same(b"abc", b"abc"));
        for at in 0..key.len() {
            let mut other = *key;
            other[at] ^= 0x01;
            assert!(!same(key, &other), "a difference at {at}");
        }
        assert!(!same(key, &key[..67]) && !same(b"ab", b"abc"));
    }

    #[test]
    fn debug_never_shows_the_hash() {
        assert_eq!(format!("{:?}", KeyHash::of(b"k")), "KeyHash(..)");
    }
}
