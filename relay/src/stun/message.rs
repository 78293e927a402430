//! Borrowing STUN message decoder.
//!
//! [`Message::decode`] checks the header and walks every attribute once, so that the
//! iterator afterwards cannot run past the end of the buffer. All lengths from the wire
//! are checked with `get`/checked arithmetic; no input makes this code panic.

use super::{split_type, Class, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Why a datagram is not a valid STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("first two bits are not zero")]
    NotStun,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("message length is not a multiple of 4")]
    BadLength,
    #[error("message length does not match the datagram")]
    LengthMismatch,
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("ChannelData number outside 0x4000-0x4FFF")]
    BadChannelNumber,
}

/// A STUN message borrowed from a received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    typ: u16,
    tid: &'a TransactionId,
}

/// One attribute: its type, its value (without padding) and where its header starts
/// inside the message (needed to check MESSAGE-INTEGRITY and FINGERPRINT in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    pub offset: usize,
}

impl<'a> Message<'a> {
    /// Decode a whole datagram as one STUN message (UDP framing: the message length
    /// must account for every byte of the datagram).
    pub fn decode(packet: &'a [u8]) -> Result<Self, DecodeError> {
        let (fixed, rest) = packet
            .split_first_chunk::<8>()
            .ok_or(DecodeError::TooShort)?;
        let (tid, body) = rest
            .split_first_chunk::<12>()
            .ok_or(DecodeError::TooShort)?;
        let [t0, t1, l0, l1, c0, c1, c2, c3] = *fixed;
        if t0 & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let typ = u16::from_be_bytes([t0, t1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if u32::from_be_bytes([c0, c1, c2, c3]) != MAGIC_COOKIE {
            return Err(DecodeError::BadCookie);
        }
        if len % 4 != 0 {
            return Err(DecodeError::BadLength);
        }
        if body.len() != len {
            return Err(DecodeError::LengthMismatch);
        }
        // Walk the attributes once so the iterator never meets a bad length.
        let mut rest = body;
        while !rest.is_empty() {
            let (h, after) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::TruncatedAttribute)?;
            let vlen = usize::from(u16::from_be_bytes([h[2], h[3]]));
            // At most 0xFFFF + 3: no overflow.
            let padded = (vlen + 3) & !3;
            rest = after.get(padded..).ok_or(DecodeError::TruncatedAttribute)?;
        }
        Ok(Message {
            buf: packet,
            typ,
            tid,
        })
    }

    /// The raw 14-bit message type.
    pub fn typ(&self) -> u16 {
        self.typ
    }

    pub fn method(&self) -> u16 {
        split_type(self.typ).0
    }

    pub fn class(&self) -> Class {
        split_type(self.typ).1
    }

    pub fn transaction_id(&self) -> &'a TransactionId {
        self.tid
    }

    /// The whole message as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Iterate over all attributes in wire order.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            off: HEADER_LEN,
        }
    }

    /// The first attribute of type `typ`, if any.
    pub fn get(&self, typ: u16) -> Option<Attribute<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }
}

/// Iterator over the attributes of a [`Message`].
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        let (h, rest) = self.buf.get(self.off..)?.split_first_chunk::<4>()?;
        let typ = u16::from_be_bytes([h[0], h[1]]);
        let vlen = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let value = rest.get(..vlen)?;
        let offset = self.off;
        // `decode` checked every attribute, so this stays within the message.
        self.off = offset + 4 + ((vlen + 3) & !3);
        Some(Attribute { typ, value, offset })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn twenty_nine_byte_binding_with_unpadded_username_is_rejected() {
        // Binding request, length 9 (a 5-byte USERNAME with no padding).
        let mut p = vec![0x00, 0x01, 0x00, 0x09, 0x21, 0x12, 0xA4, 0x42];
        p.extend_from_slice(&[1; 12]);
        p.extend_from_slice(&[0x00, 0x06, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e']);
        assert_eq!(p.len(), 29);
        assert_eq!(Message::decode(&p).unwrap_err(), DecodeError::BadLength);
        // Same with the length field claiming the padded size.
        p[3] = 12;
        assert_eq!(
            Message::decode(&p).unwrap_err(),
            DecodeError::LengthMismatch
        );
        // And the attribute claiming more than there is.
        p.extend_from_slice(&[0, 0, 0]);
        p[23] = 9;
        assert_eq!(
            Message::decode(&p).unwrap_err(),
            DecodeError::TruncatedAttribute
        );
    }

    #[test]
    fn attributes_iterate() {
        let mut p = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xA4, 0x42];
        p.extend_from_slice(&[1; 12]);
        p.extend_from_slice(&[
            0x00, 0x06, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0,
        ]);
        p.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let m = Message::decode(&p).unwrap();
        let v: Vec<_> = m.attributes().collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].value, b"abcde");
        assert_eq!(v[1].offset, 32);
        assert!(v[1].value.is_empty());
    }
}
