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

/// The length field value the message has when it ends with an attribute at `offset`
/// whose value is `value_len` bytes (already padded to 4).
fn adjusted_len(offset: usize, value_len: usize) -> [u8; 2] {
    let len = offset + 4 + value_len - HEADER_LEN;
    (len as u16).to_be_bytes()
}

fn feed<M: Mac>(mac: &mut M, msg: &[u8], offset: usize, value_len: usize) {
    mac.update(&msg[..2]);
    mac.update(&adjusted_len(offset, value_len));
    mac.update(&msg[4..offset]);
}

/// HMAC-SHA1 of `msg[..offset]` as if the message ended with a 20-byte
/// MESSAGE-INTEGRITY at `offset`. `msg` must be at least `offset` long and
/// `offset >= HEADER_LEN`.
pub fn hmac_sha1(key: &[u8], msg: &[u8], offset: usize) -> [u8; 20] {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes any key length");
    feed(&mut mac, msg, offset, 20);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 of `msg[..offset]` as if the message ended with a 32-byte
/// MESSAGE-INTEGRITY-SHA256 at `offset`.
pub fn hmac_sha256(key: &[u8], msg: &[u8], offset: usize) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    feed(&mut mac, msg, offset, 32);
    mac.finalize().into_bytes().into()
}

/// CRC-32 of `msg[..offset]` XOR 0x5354554e, as if FINGERPRINT were at `offset`.
pub fn fingerprint(msg: &[u8], offset: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&msg[..2]);
    h.update(&adjusted_len(offset, 4));
    h.update(&msg[4..offset]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Check a MESSAGE-INTEGRITY attribute of a received message (constant time).
pub fn verify_sha1(msg: &Message<'_>, attr: &Attribute<'_>, key: &[u8]) -> bool {
    if attr.value.len() != 20 {
        return false;
    }
    let bytes = msg.as_bytes();
    let Ok(mut mac) = HmacSha1::new_from_slice(key) else {
        return false;
    };
    feed(&mut mac, bytes, attr.offset, 20);
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
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    feed(&mut mac, bytes, attr.offset, n);
    mac.verify_truncated_left(attr.value).is_ok()
}

/// Check a FINGERPRINT attribute.
pub fn verify_fingerprint(msg: &Message<'_>, attr: &Attribute<'_>) -> bool {
    let Ok(v) = <[u8; 4]>::try_from(attr.value) else {
        return false;
    };
    fingerprint(msg.as_bytes(), attr.offset) == u32::from_be_bytes(v)
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
