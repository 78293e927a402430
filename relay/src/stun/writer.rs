//! STUN encoder writing into a caller-owned buffer.
//!
//! The header's length field is kept current after every attribute, so integrity and
//! fingerprint can be computed over the prefix without a second pass.

use std::net::SocketAddr;

use super::integrity;
use super::{address, attr, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// The output buffer is too small for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output buffer too small for the STUN message")]
pub struct EncodeError;

/// Builds one STUN message in `buf`.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
}

impl<'b> MessageWriter<'b> {
    /// Start a message of type `typ` (see [`super::message_type`]).
    pub fn new(buf: &'b mut [u8], typ: u16, tid: &TransactionId) -> Result<Self, EncodeError> {
        let h = buf.first_chunk_mut::<HEADER_LEN>().ok_or(EncodeError)?;
        h[..2].copy_from_slice(&typ.to_be_bytes());
        h[2..4].copy_from_slice(&[0, 0]);
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h[8..].copy_from_slice(tid);
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
            tid: *tid,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether only the header was written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// The transaction id of the message.
    pub fn transaction_id(&self) -> &TransactionId {
        &self.tid
    }

    /// Append an attribute whose `vlen`-byte value is filled by `fill`; padding is zeroed.
    pub fn attr_with(
        &mut self,
        typ: u16,
        vlen: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), EncodeError> {
        self.put(typ, vlen, |v| {
            fill(v);
            true
        })
    }

    /// Append an attribute whose value is already in the buffer right after where its
    /// header goes (used to wrap a payload in place); only header and padding are written.
    pub fn attr_in_place(&mut self, typ: u16, vlen: usize) -> Result<(), EncodeError> {
        self.put(typ, vlen, |_| true)
    }

    /// Append an attribute: check that it fits (buffer and 16-bit lengths), let `fill`
    /// write the `vlen`-byte value (`false` aborts with nothing committed), then write
    /// the attribute header and zero padding and update the message length field.
    fn put(
        &mut self,
        typ: u16,
        vlen: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<(), EncodeError> {
        let vlen16 = u16::try_from(vlen).map_err(|_| EncodeError)?;
        // vlen <= 0xFFFF, so the padding cannot overflow.
        let padded = (vlen + 3) & !3;
        let end = self.len.checked_add(4 + padded).ok_or(EncodeError)?;
        // self.len >= HEADER_LEN always.
        let body = u16::try_from(end - HEADER_LEN).map_err(|_| EncodeError)?;
        let (header, rest) = self
            .buf
            .get_mut(self.len..end)
            .and_then(|a| a.split_first_chunk_mut::<4>())
            .ok_or(EncodeError)?;
        let (value, padding) = rest.split_at_mut_checked(vlen).ok_or(EncodeError)?;
        if !fill(value) {
            return Err(EncodeError);
        }
        header[..2].copy_from_slice(&typ.to_be_bytes());
        header[2..].copy_from_slice(&vlen16.to_be_bytes());
        padding.fill(0);
        self.buf
            .get_mut(2..4)
            .ok_or(EncodeError)?
            .copy_from_slice(&body.to_be_bytes());
        self.len = end;
        Ok(())
    }

    /// Append an attribute with the given value.
    pub fn attr(&mut self, typ: u16, value: &[u8]) -> Result<(), EncodeError> {
        self.attr_with(typ, value.len(), |v| v.copy_from_slice(value))
    }

    /// Append a 32-bit attribute (LIFETIME, ...).
    pub fn u32_attr(&mut self, typ: u16, v: u32) -> Result<(), EncodeError> {
        self.attr(typ, &v.to_be_bytes())
    }

    /// Append an XOR-*-ADDRESS attribute.
    pub fn xor_address(&mut self, typ: u16, addr: &SocketAddr) -> Result<(), EncodeError> {
        let tid = self.tid;
        self.put(typ, address::encoded_len(addr), |v| {
            address::encode_xor(addr, &tid, v)
        })
    }

    /// Append ERROR-CODE.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), EncodeError> {
        let r = reason.as_bytes();
        self.put(attr::ERROR_CODE, 4 + r.len(), |v| {
            let Some((head, text)) = v.split_first_chunk_mut::<4>() else {
                return false;
            };
            *head = [0, 0, (code / 100) as u8 & 0x07, (code % 100) as u8];
            text.copy_from_slice(r);
            true
        })
    }

    /// Append ADDRESS-ERROR-CODE (RFC 8656 section 18.12): the family (0x01 IPv4,
    /// 0x02 IPv6) a dual Allocate did not get, and the error code saying why.
    pub fn address_error_code(
        &mut self,
        family: u8,
        code: u16,
        reason: &str,
    ) -> Result<(), EncodeError> {
        let r = reason.as_bytes();
        self.put(attr::ADDRESS_ERROR_CODE, 4 + r.len(), |v| {
            let Some((head, text)) = v.split_first_chunk_mut::<4>() else {
                return false;
            };
            *head = [family, 0, (code / 100) as u8 & 0x07, (code % 100) as u8];
            text.copy_from_slice(r);
            true
        })
    }

    /// Append UNKNOWN-ATTRIBUTES.
    pub fn unknown_attributes(&mut self, types: &[u16]) -> Result<(), EncodeError> {
        self.attr_with(attr::UNKNOWN_ATTRIBUTES, types.len() * 2, |v| {
            for (chunk, t) in v.chunks_exact_mut(2).zip(types) {
                chunk.copy_from_slice(&t.to_be_bytes());
            }
        })
    }

    /// Append MESSAGE-INTEGRITY computed with `key`.
    pub fn integrity_sha1(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        // The HMAC covers only what precedes the attribute (with the length field as it
        // will be), so it is computed first and then written like any other value.
        let mac = integrity::hmac_sha1(key, self.buf, self.len).ok_or(EncodeError)?;
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// Append MESSAGE-INTEGRITY-SHA256 (full 32 bytes) computed with `key`.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let mac = integrity::hmac_sha256(key, self.buf, self.len).ok_or(EncodeError)?;
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    /// Append FINGERPRINT; this must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), EncodeError> {
        let crc = integrity::fingerprint(self.buf, self.len).ok_or(EncodeError)?;
        self.u32_attr(attr::FINGERPRINT, crc)
    }

    /// Finish and return the message length.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::super::{message::Message, message_type, method, Class};
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let mut buf = [0u8; 128];
        let tid = [3u8; 12];
        let mut w = MessageWriter::new(
            &mut buf,
            message_type(method::BINDING, Class::Request),
            &tid,
        )
        .unwrap();
        w.attr(attr::USERNAME, b"abcde").unwrap();
        w.integrity_sha1(b"key").unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        let m = Message::decode(&buf[..n]).unwrap();
        let mi = m.get(attr::MESSAGE_INTEGRITY).unwrap();
        assert!(integrity::verify_sha1(&m, &mi, b"key"));
        assert!(!integrity::verify_sha1(&m, &mi, b"kez"));
        let fp = m.get(attr::FINGERPRINT).unwrap();
        assert!(integrity::verify_fingerprint(&m, &fp));
    }

    #[test]
    fn small_buffer_is_an_error() {
        let mut buf = [0u8; 24];
        let tid = [3u8; 12];
        let mut w = MessageWriter::new(&mut buf, 1, &tid).unwrap();
        assert_eq!(w.attr(attr::USERNAME, b"abcde"), Err(EncodeError));
        assert!(MessageWriter::new(&mut [0u8; 10], 1, &tid).is_err());
        // Integrity, fingerprint and addresses that do not fit leave the message as it was.
        let mut buf = [0u8; 40];
        let mut w = MessageWriter::new(&mut buf, 1, &tid).unwrap();
        assert_eq!(w.integrity_sha1(b"key"), Err(EncodeError));
        assert_eq!(w.integrity_sha256(b"key"), Err(EncodeError));
        let v6 = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(w.xor_address(attr::XOR_PEER_ADDRESS, &v6), Err(EncodeError));
        assert_eq!(
            w.error_code(400, "Bad Request, twice over"),
            Err(EncodeError)
        );
        assert_eq!(w.len(), HEADER_LEN);
        w.fingerprint().unwrap();
        assert_eq!(w.finish(), HEADER_LEN + 8);
        assert_eq!(&buf[2..4], &[0, 8]);
    }

    #[test]
    fn error_code_layout() {
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, 0x0111, &[1; 12]).unwrap();
        w.error_code(401, "Nope").unwrap();
        let n = w.finish();
        assert_eq!(n, HEADER_LEN + 4 + 8);
        assert_eq!(
            &buf[HEADER_LEN..n],
            &[0, 9, 0, 8, 0, 0, 4, 1, b'N', b'o', b'p', b'e']
        );
    }
}
