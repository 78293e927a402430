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
        let h = buf.get_mut(..HEADER_LEN).ok_or(EncodeError)?;
        h[..2].copy_from_slice(&typ.to_be_bytes());
        h[2..4].copy_from_slice(&[0, 0]);
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(tid);
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
        let padded = (vlen + 3) & !3;
        let end = self.len + 4 + padded;
        if vlen > usize::from(u16::MAX) || end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(EncodeError);
        }
        let a = self.buf.get_mut(self.len..end).ok_or(EncodeError)?;
        a[..2].copy_from_slice(&typ.to_be_bytes());
        a[2..4].copy_from_slice(&(vlen as u16).to_be_bytes());
        fill(&mut a[4..4 + vlen]);
        a[4 + vlen..].fill(0);
        self.len = end;
        let body = ((end - HEADER_LEN) as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&body);
        Ok(())
    }

    /// Append an attribute whose value is already in the buffer right after where its
    /// header goes (used to wrap a payload in place); only header and padding are written.
    pub fn attr_in_place(&mut self, typ: u16, vlen: usize) -> Result<(), EncodeError> {
        let padded = (vlen + 3) & !3;
        let end = self.len + 4 + padded;
        if vlen > usize::from(u16::MAX) || end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(EncodeError);
        }
        let a = self.buf.get_mut(self.len..end).ok_or(EncodeError)?;
        a[..2].copy_from_slice(&typ.to_be_bytes());
        a[2..4].copy_from_slice(&(vlen as u16).to_be_bytes());
        a[4 + vlen..].fill(0);
        self.len = end;
        let body = ((end - HEADER_LEN) as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&body);
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
        self.attr_with(typ, address::encoded_len(addr), |v| {
            address::encode_xor(addr, &tid, v)
        })
    }

    /// Append ERROR-CODE.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), EncodeError> {
        let r = reason.as_bytes();
        self.attr_with(attr::ERROR_CODE, 4 + r.len(), |v| {
            v[0] = 0;
            v[1] = 0;
            v[2] = (code / 100) as u8 & 0x07;
            v[3] = (code % 100) as u8;
            v[4..].copy_from_slice(r);
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
        let off = self.len;
        // Reserve first so the length field and bounds are right.
        self.attr_with(attr::MESSAGE_INTEGRITY, 20, |_| {})?;
        let mac = integrity::hmac_sha1(key, self.buf, off);
        self.buf[off + 4..off + 24].copy_from_slice(&mac);
        Ok(())
    }

    /// Append MESSAGE-INTEGRITY-SHA256 (full 32 bytes) computed with `key`.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let off = self.len;
        self.attr_with(attr::MESSAGE_INTEGRITY_SHA256, 32, |_| {})?;
        let mac = integrity::hmac_sha256(key, self.buf, off);
        self.buf[off + 4..off + 36].copy_from_slice(&mac);
        Ok(())
    }

    /// Append FINGERPRINT; this must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), EncodeError> {
        let off = self.len;
        self.attr_with(attr::FINGERPRINT, 4, |_| {})?;
        let crc = integrity::fingerprint(self.buf, off);
        self.buf[off + 4..off + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// Finish and return the message length.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
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
    }
}
