//! The attributes of a TURN request that the server acts on, read in one pass.
//!
//! Attributes after MESSAGE-INTEGRITY are ignored except MESSAGE-INTEGRITY-SHA256 and
//! FINGERPRINT; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT counts (RFC 8489
//! section 14.5 and 14.6). Nothing here allocates.

use std::net::SocketAddr;
use std::ops::Range;

use crate::stun::attr::{self, is_comprehension_required};
use crate::stun::{address, Attribute, Message};

/// Most XOR-PEER-ADDRESS attributes read from one CreatePermission.
pub const MAX_PEERS: usize = 8;
/// Most unknown comprehension-required attributes reported back.
pub const MAX_UNKNOWN: usize = 8;

/// Parsed view of a request or indication.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub msg: Message<'a>,
    pub username: Option<&'a [u8]>,
    pub userhash: Option<&'a [u8]>,
    pub realm: Option<&'a [u8]>,
    pub nonce: Option<&'a [u8]>,
    pub integrity: Option<Attribute<'a>>,
    pub integrity_sha256: Option<Attribute<'a>>,
    pub fingerprint: Option<Attribute<'a>>,
    pub lifetime: Option<u32>,
    pub requested_transport: Option<u8>,
    pub dont_fragment: bool,
    /// EVEN-PORT present, with its R bit.
    pub even_port: Option<bool>,
    pub reservation_token: Option<[u8; 8]>,
    pub requested_family: Option<u8>,
    pub additional_family: Option<u8>,
    pub channel_number: Option<u16>,
    /// CONNECTION-ID (RFC 6062 section 6.2.1).
    pub connection_id: Option<u32>,
    /// RESPONSE-PORT (RFC 5780 section 7.5): where a Binding answer goes.
    pub response_port: Option<u16>,
    /// Range of the DATA value inside the message.
    pub data: Option<Range<usize>>,
    pub peers: [Option<SocketAddr>; MAX_PEERS],
    pub peer_count: usize,
    pub password_algorithm: Option<u16>,
    pub password_algorithms: Option<&'a [u8]>,
    pub unknown: [u16; MAX_UNKNOWN],
    pub unknown_count: usize,
    /// A known attribute had a malformed value, or there were too many of something.
    pub malformed: bool,
}

impl<'a> Request<'a> {
    /// Read the attributes of `msg`.
    pub fn parse(msg: Message<'a>) -> Self {
        let tid = msg.transaction_id();
        let mut r = Request {
            msg,
            username: None,
            userhash: None,
            realm: None,
            nonce: None,
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
            lifetime: None,
            requested_transport: None,
            dont_fragment: false,
            even_port: None,
            reservation_token: None,
            requested_family: None,
            additional_family: None,
            channel_number: None,
            connection_id: None,
            response_port: None,
            data: None,
            peers: [None; MAX_PEERS],
            peer_count: 0,
            password_algorithm: None,
            password_algorithms: None,
            unknown: [0; MAX_UNKNOWN],
            unknown_count: 0,
            malformed: false,
        };
        for a in msg.attributes() {
            if r.fingerprint.is_some() {
                // FINGERPRINT must be last.
                r.malformed = true;
                break;
            }
            if r.integrity_sha256.is_some() && a.typ != attr::FINGERPRINT {
                continue;
            }
            if r.integrity.is_some()
                && a.typ != attr::FINGERPRINT
                && a.typ != attr::MESSAGE_INTEGRITY_SHA256
            {
                continue;
            }
            let v = a.value;
            match a.typ {
                attr::USERNAME => r.username = r.username.or(Some(v)),
                attr::USERHASH => {
                    if v.len() != 32 {
                        r.malformed = true;
                    }
                    r.userhash = r.userhash.or(Some(v));
                }
                attr::REALM => r.realm = r.realm.or(Some(v)),
                attr::NONCE => r.nonce = r.nonce.or(Some(v)),
                attr::MESSAGE_INTEGRITY => r.integrity = Some(a),
                attr::MESSAGE_INTEGRITY_SHA256 => r.integrity_sha256 = Some(a),
                attr::FINGERPRINT => r.fingerprint = Some(a),
                attr::LIFETIME => match <[u8; 4]>::try_from(v) {
                    Ok(b) => r.lifetime = r.lifetime.or(Some(u32::from_be_bytes(b))),
                    Err(_) => r.malformed = true,
                },
                attr::REQUESTED_TRANSPORT => match v {
                    [p, _, _, _] => r.requested_transport = r.requested_transport.or(Some(*p)),
                    _ => r.malformed = true,
                },
                attr::DONT_FRAGMENT => r.dont_fragment = true,
                attr::EVEN_PORT => match v {
                    [b] => r.even_port = Some(b & 0x80 != 0),
                    _ => r.malformed = true,
                },
                attr::RESERVATION_TOKEN => match <[u8; 8]>::try_from(v) {
                    Ok(t) => r.reservation_token = Some(t),
                    Err(_) => r.malformed = true,
                },
                attr::REQUESTED_ADDRESS_FAMILY => match v {
                    [f, _, _, _] => r.requested_family = Some(*f),
                    _ => r.malformed = true,
                },
                attr::ADDITIONAL_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT => {
                    match v {
                        [f, _, _, _] => r.additional_family = Some(*f),
                        _ => r.malformed = true,
                    }
                }
                attr::CHANNEL_NUMBER => match v {
                    [a0, a1, _, _] => {
                        r.channel_number = r.channel_number.or(Some(u16::from_be_bytes([*a0, *a1])))
                    }
                    _ => r.malformed = true,
                },
                attr::CONNECTION_ID => match <[u8; 4]>::try_from(v) {
                    Ok(b) => r.connection_id = r.connection_id.or(Some(u32::from_be_bytes(b))),
                    Err(_) => r.malformed = true,
                },
                attr::RESPONSE_PORT => match v {
                    [p0, p1, _, _] => r.response_port = Some(u16::from_be_bytes([*p0, *p1])),
                    _ => r.malformed = true,
                },
                attr::DATA if r.data.is_none() => {
                    let start = a.offset + 4;
                    r.data = Some(start..start + v.len());
                }
                attr::DATA => {}
                attr::XOR_PEER_ADDRESS => match address::decode_xor(v, tid) {
                    Some(p) if r.peer_count < MAX_PEERS => {
                        r.peers[r.peer_count] = Some(p);
                        r.peer_count += 1;
                    }
                    _ => r.malformed = true,
                },
                attr::PASSWORD_ALGORITHM => {
                    // Algorithm (2), parameter length (2), parameters (padded).
                    match v {
                        [a0, a1, l0, l1, rest @ ..]
                            if usize::from(u16::from_be_bytes([*l0, *l1])) == rest.len() =>
                        {
                            r.password_algorithm = Some(u16::from_be_bytes([*a0, *a1]))
                        }
                        _ => r.malformed = true,
                    }
                }
                attr::PASSWORD_ALGORITHMS => r.password_algorithms = Some(v),
                attr::SOFTWARE
                | attr::ICE_CONTROLLED
                | attr::ICE_CONTROLLING
                | attr::PRIORITY
                | attr::USE_CANDIDATE
                | attr::PADDING
                | attr::ICMP => {}
                t if is_comprehension_required(t) && r.unknown_count < MAX_UNKNOWN => {
                    r.unknown[r.unknown_count] = t;
                    r.unknown_count += 1;
                }
                _ => {}
            }
        }
        r
    }

    /// The XOR-PEER-ADDRESS values.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().take(self.peer_count).flatten().copied()
    }

    /// The unknown comprehension-required attribute types.
    pub fn unknown(&self) -> &[u16] {
        &self.unknown[..self.unknown_count]
    }
}

/// Iterate the (algorithm number) entries of a PASSWORD-ALGORITHMS value; `None` if
/// the value is malformed.
pub fn password_algorithms(v: &[u8]) -> Option<impl Iterator<Item = u16> + '_> {
    // Validate first.
    let mut off = 0usize;
    while off < v.len() {
        let h = v.get(off..off + 4)?;
        let plen = usize::from(u16::from_be_bytes([h[2], h[3]]));
        off = off.checked_add(4 + ((plen + 3) & !3))?;
        if off > v.len() {
            return None;
        }
    }
    let mut off = 0usize;
    Some(std::iter::from_fn(move || {
        let h = v.get(off..off + 4)?;
        let plen = usize::from(u16::from_be_bytes([h[2], h[3]]));
        off += 4 + ((plen + 3) & !3);
        Some(u16::from_be_bytes([h[0], h[1]]))
    }))
}
