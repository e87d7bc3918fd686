//! Write keys: an account may carry one, and then only requests that present it
//! (`Authorization: Bearer <key>`) may write events for it.
//!
//! A key is 32 random bytes from the operating system, written as `trk_` and 64 hex digits
//! (the prefix lets secret scanners recognise a leaked one). Only its SHA-256 hash is stored:
//! someone who reads the accounts table cannot write as the account. A fast hash is enough
//! because keys are random, not chosen by people: there is no dictionary to try, and 256 bits
//! cannot be searched. Hashes are compared in constant time, so answer times say nothing
//! about how much of a guess was right.

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
    fn debug_never_shows_the_hash() {
        assert_eq!(format!("{:?}", KeyHash::of(b"k")), "KeyHash(..)");
    }
}
