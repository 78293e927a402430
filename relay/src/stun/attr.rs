//! Attribute type codes (RFC 8489 section 18.3, RFC 8656 section 18).

pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
pub const USERHASH: u16 = 0x001E;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const RESERVATION_TOKEN: u16 = 0x0022;
pub const PRIORITY: u16 = 0x0024;
pub const USE_CANDIDATE: u16 = 0x0025;
pub const PADDING: u16 = 0x0026;
pub const RESPONSE_PORT: u16 = 0x0027;
pub const CONNECTION_ID: u16 = 0x002A;
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// ADDITIONAL-ADDRESS-FAMILY under the code point of the draft before RFC 8656, which
/// coturn's clients up to 4.6 still send (comprehension-optional, read as the same).
pub const ADDITIONAL_ADDRESS_FAMILY_DRAFT: u16 = 0x8032;
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
pub const ICMP: u16 = 0x8004;
pub const SOFTWARE: u16 = 0x8022;
pub const ALTERNATE_SERVER: u16 = 0x8023;
pub const TRANSACTION_TRANSMIT_COUNTER: u16 = 0x8025;
pub const CACHE_TIMEOUT: u16 = 0x8027;
pub const FINGERPRINT: u16 = 0x8028;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;
pub const RESPONSE_ORIGIN: u16 = 0x802B;
pub const OTHER_ADDRESS: u16 = 0x802C;

/// Comprehension-required attributes are those in 0x0000-0x7FFF.
pub fn is_comprehension_required(typ: u16) -> bool {
    typ < 0x8000
}

/// Password algorithm numbers (RFC 8489 section 18.5).
pub mod algorithm {
    pub const MD5: u16 = 0x0001;
    pub const SHA256: u16 = 0x0002;
}

/// TURN transport protocol numbers for REQUESTED-TRANSPORT.
pub const PROTO_UDP: u8 = 17;
/// TCP, for RFC 6062 TCP allocations.
pub const PROTO_TCP: u8 = 6;

/// Address families in STUN address attributes.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;
