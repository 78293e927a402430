//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256, FINGERPRINT and the
//! long-term credential keys of RFC 8489 section 9.2.2.
//!
//! Integrity is computed in place over the received prefix: the HMAC is fed the
//! header with the length field rewritten as the RFC requires, then the bytes up to the
//! integrity attribute. Nothing is copied.

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::message::{Attribute, Message};
use super::HEADER_LEN;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// XOR constant of FINGERPRINT.
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The bytes integrity and FINGERPRINT cover when the attribute starts at `offset`
/// and its value is `value_len` bytes (already padded to 4): the message type, the
/// length field the message has when it ends with that attribute, and everything from
/// the magic cookie up to `offset`. `None` when `msg` is shorter than `offset`, `offset`
/// is inside the header, or the length does not fit the 16-bit field.
fn covered(msg: &[u8], offset: usize, value_len: usize) -> Option<([u8; 2], [u8; 2], &[u8])> {
    if offset < HEADER_LEN {
        return None;
    }
    let (head, rest) = msg.get(..offset)?.split_first_chunk::<4>()?;
    // Checked add; the subtraction cannot underflow since offset >= HEADER_LEN.
    let len = u16::try_from(offset.checked_add(4 + value_len)? - HEADER_LEN).ok()?;
    Some(([head[0], head[1]], len.to_be_bytes(), rest))
}

fn feed<M: Mac>(mac: &mut M, msg: &[u8], offset: usize, value_len: usize) -> bool {
    let Some((typ, len, rest)) = covered(msg, offset, value_len) else {
        return false;
    };
    mac.update(&typ);
    mac.update(&len);
    mac.update(rest);
    true
}

/// HMAC-SHA1 of `msg[..offset]` as if the message ended with a 20-byte
/// MESSAGE-INTEGRITY at `offset`. `None` unless `HEADER_LEN <= offset <= msg.len()`
/// (and the message with the attribute fits the 16-bit length field).
pub fn hmac_sha1(key: &[u8], msg: &[u8], offset: usize) -> Option<[u8; 20]> {
    // HMAC accepts keys of any length (longer ones are hashed), so this never fails.
    let mut mac = match HmacSha1::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return None,
    };
    if !feed(&mut mac, msg, offset, 20) {
        return None;
    }
    Some(mac.finalize().into_bytes().into())
}

/// HMAC-SHA256 of `msg[..offset]` as if the message ended with a 32-byte
/// MESSAGE-INTEGRITY-SHA256 at `offset`. `None` as for [`hmac_sha1`].
pub fn hmac_sha256(key: &[u8], msg: &[u8], offset: usize) -> Option<[u8; 32]> {
    // HMAC accepts keys of any length (longer ones are hashed), so this never fails.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return None,
    };
    if !feed(&mut mac, msg, offset, 32) {
        return None;
    }
    Some(mac.finalize().into_bytes().into())
}

/// CRC-32 of `msg[..offset]` XOR 0x5354554e, as if FINGERPRINT were at `offset`.
/// `None` as for [`hmac_sha1`].
pub fn fingerprint(msg: &[u8], offset: usize) -> Option<u32> {
    let (typ, len, rest) = covered(msg, offset, 4)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&typ);
    h.update(&len);
    h.update(rest);
    Some(h.finalize() ^ FINGERPRINT_XOR)
}

/// Check a MESSAGE-INTEGRITY attribute of a received message (constant time).
pub fn verify_sha1(msg: &Message<'_>, attr: &Attribute<'_>, key: &[u8]) -> bool {
    if attr.value.len() != 20 {
        return false;
    }
    let bytes = msg.as_bytes();
    // HMAC accepts keys of any length, so `new_from_slice` never fails.
    let Ok(mut mac) = HmacSha1::new_from_slice(key) else {
        return false;
    };
    if !feed(&mut mac, bytes, attr.offset, 20) {
        return false;
    }
    mac.verify_slice(attr.value).is_ok()
}

/// Check a MESSAGE-INTEGRITY-SHA256 attribute (which may be truncated to 16..=32 bytes,
/// a multiple of 4; RFC 8489 section 14.6), in constant time.
pub fn verify_sha256(msg: &Message<'_>, attr: &Attribute<'_>, key: &[u8]) -> bool {
    let n = attr.value.len();
    if !(16..=32).contains(&n) || n % 4 != 0 {
        return false;
    }
    let bytes = msg.as_bytes();
    // HMAC accepts keys of any length, so `new_from_slice` never fails.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    if !feed(&mut mac, bytes, attr.offset, n) {
        return false;
    }
    mac.verify_truncated_left(attr.value).is_ok()
}

/// Check a FINGERPRINT attribute.
pub fn verify_fingerprint(msg: &Message<'_>, attr: &Attribute<'_>) -> bool {
    let Ok(v) = <[u8; 4]>::try_from(attr.value) else {
        return false;
    };
    fingerprint(msg.as_bytes(), attr.offset) == Some(u32::from_be_bytes(v))
}

/// Long-term key with PASSWORD-ALGORITHM MD5: MD5(username ":" realm ":" password).
///
/// RFC 8489 asks for OpaqueString (RFC 8265) preparation of realm and password; as in
/// coturn, the strings are used as given (identical for ASCII credentials).
pub fn long_term_key_md5(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password);
    h.finalize().into()
}

/// Long-term key with PASSWORD-ALGORITHM SHA-256.
pub fn long_term_key_sha256(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password);
    h.finalize().into()
}

/// USERHASH value: SHA-256(username ":" realm) (RFC 8489 section 14.4).
pub fn userhash(username: &[u8], realm: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn offsets_outside_the_message_or_the_length_field_are_refused() {
        let msg = [0u8; 24];
        assert!(hmac_sha1(b"k", &msg, HEADER_LEN - 1).is_none());
        assert!(hmac_sha1(b"k", &msg, 25).is_none());
        assert!(hmac_sha1(b"k", &msg, 24).is_some());
        assert!(hmac_sha256(b"k", &msg, 3).is_none());
        assert!(hmac_sha256(b"", &msg, HEADER_LEN).is_some());
        assert!(fingerprint(&msg, 0).is_none());
        assert!(fingerprint(&msg, usize::MAX).is_none());
        assert!(fingerprint(&msg, HEADER_LEN).is_some());
        // The message with the attribute must fit the 16-bit length field.
        let big = vec![0u8; 70_000];
        assert!(hmac_sha1(b"k", &big, 65_531).is_some());
        assert!(hmac_sha1(b"k", &big, 65_532).is_none());
        assert!(fingerprint(&big, 65_547).is_some());
        assert!(fingerprint(&big, 65_548).is_none());
    }
}
