//! STUN (RFC 8489) and TURN (RFC 8656) wire format.
//!
//! Written by hand rather than on top of `stun-rs`: that crate decodes into an owned
//! `StunMessage` (a `Vec` of attributes, owned strings), so every packet would allocate,
//! and it verifies MESSAGE-INTEGRITY by re-encoding rather than over the received prefix.
//! The relay needs a decoder that borrows the datagram (`Message<'a>`), validates every
//! length once, never panics on hostile input, and checks integrity in place over the
//! bytes that arrived. `stun-rs` is used in the tests as an independent codec that reads
//! what this module writes.
//!
//! Layout: [`message`] (decoder and attribute iterator), [`writer`] (encoder into a
//! caller-owned buffer), [`integrity`] (MESSAGE-INTEGRITY, -SHA256, FINGERPRINT, keys),
//! [`address`] (MAPPED/XOR-* address attributes), [`channel_data`] and [`demux`],
//! [`framing`] (STUN and ChannelData on a TCP or TLS stream).
//!
//! Wire input never panics here: every length from the wire goes through `get` (or
//! `split_at_checked`/`first_chunk`) and fixed-size arrays, and the lint below keeps it so.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

pub mod address;
pub mod attr;
pub mod channel_data;
pub mod framing;
pub mod integrity;
pub mod message;
pub mod writer;

pub use channel_data::ChannelData;
pub use message::{Attribute, Attributes, DecodeError, Message};
pub use writer::{EncodeError, MessageWriter};

/// The magic cookie of RFC 8489, section 5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN message header.
pub const HEADER_LEN: usize = 20;

/// A STUN transaction id (96 bits).
pub type TransactionId = [u8; 12];

/// Message class (the C1/C0 bits of the message type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    SuccessResponse,
    ErrorResponse,
}

/// STUN/TURN methods used by the relay.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    /// RFC 6062 TCP allocations.
    pub const CONNECT: u16 = 0x00A;
    pub const CONNECTION_BIND: u16 = 0x00B;
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

/// Compose a 14-bit message type from method and class (RFC 8489, section 5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::SuccessResponse => 0b10,
        Class::ErrorResponse => 0b11,
    };
    let m = method & 0x0FFF;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// Split a message type into (method, class).
pub fn split_type(typ: u16) -> (u16, Class) {
    let method = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
    let class = match ((typ >> 7) & 0b10) | ((typ >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::SuccessResponse,
        _ => Class::ErrorResponse,
    };
    (method, class)
}

/// What a UDP datagram on a TURN listening port is, judged by its first byte
/// (RFC 8656, section 12: the two most significant bits are 0b00 for STUN and
/// 0b01 for ChannelData).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

/// Classify a datagram without parsing it.
pub fn demux(packet: &[u8]) -> Kind {
    match packet.first() {
        Some(b) if b >> 6 == 0b00 => Kind::Stun,
        Some(b) if b >> 6 == 0b01 => Kind::ChannelData,
        _ => Kind::Other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn type_round_trip() {
        for m in [1u16, 3, 4, 6, 7, 8, 9, 0xABC] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::SuccessResponse,
                Class::ErrorResponse,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
        assert_eq!(
            message_type(method::BINDING, Class::SuccessResponse),
            0x0101
        );
        assert_eq!(message_type(method::ALLOCATE, Class::ErrorResponse), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
    }

    #[test]
    fn demux_first_byte() {
        assert_eq!(demux(&[0x00, 0x01]), Kind::Stun);
        assert_eq!(demux(&[0x40, 0x00]), Kind::ChannelData);
        assert_eq!(demux(&[0x7F]), Kind::ChannelData);
        assert_eq!(demux(&[0x80]), Kind::Other);
        assert_eq!(demux(&[]), Kind::Other);
    }
}
