//! (XOR-)address attribute values (RFC 8489 sections 14.1 and 14.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::attr::{FAMILY_IPV4, FAMILY_IPV6};
use super::{TransactionId, MAGIC_COOKIE};

/// Encoded length of an address attribute value for this address.
pub fn encoded_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Decode a MAPPED-ADDRESS style value. `None` when malformed.
pub fn decode_plain(value: &[u8]) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    match family {
        FAMILY_IPV4 if value.len() == 8 => {
            let ip: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        FAMILY_IPV6 if value.len() == 20 => {
            let ip: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    mask
}

/// Decode an XOR-*-ADDRESS value. `None` when malformed.
pub fn decode_xor(value: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let plain = decode_plain(value)?;
    let mask = xor_mask(tid);
    let port = plain.port() ^ (MAGIC_COOKIE >> 16) as u16;
    Some(match plain.ip() {
        IpAddr::V4(ip) => {
            let mut o = ip.octets();
            for (b, m) in o.iter_mut().zip(mask.iter()) {
                *b ^= m;
            }
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port)
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            for (b, m) in o.iter_mut().zip(mask.iter()) {
                *b ^= m;
            }
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
        }
    })
}

/// Write an XOR-*-ADDRESS value into `out`, which must be exactly `encoded_len(addr)`
/// bytes long; `false` (and nothing written) when it is not.
pub fn encode_xor(addr: &SocketAddr, tid: &TransactionId, out: &mut [u8]) -> bool {
    let mask = xor_mask(tid);
    let [p0, p1] = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
    match addr.ip() {
        IpAddr::V4(ip) => {
            let Ok(out) = <&mut [u8; 8]>::try_from(out) else {
                return false;
            };
            out[..4].copy_from_slice(&[0, FAMILY_IPV4, p0, p1]);
            xor_into(&mut out[4..], &ip.octets(), &mask);
        }
        IpAddr::V6(ip) => {
            let Ok(out) = <&mut [u8; 20]>::try_from(out) else {
                return false;
            };
            out[..4].copy_from_slice(&[0, FAMILY_IPV6, p0, p1]);
            xor_into(&mut out[4..], &ip.octets(), &mask);
        }
    }
    true
}

/// `out[i] = ip[i] ^ mask[i]` over the shortest of the three.
fn xor_into(out: &mut [u8], ip: &[u8], mask: &[u8; 16]) {
    for ((o, b), m) in out.iter_mut().zip(ip).zip(mask) {
        *o = b ^ m;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn xor_round_trip() {
        let tid = [7u8; 12];
        for a in [
            "192.0.2.1:32853",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut buf = [0u8; 20];
            let n = encoded_len(&a);
            assert!(encode_xor(&a, &tid, &mut buf[..n]));
            assert!(!encode_xor(&a, &tid, &mut buf[..n - 1]));
            assert_eq!(decode_xor(&buf[..n], &tid), Some(a));
        }
        assert_eq!(decode_xor(&[0, 1, 0], &tid), None);
        assert_eq!(decode_xor(&[0, 3, 0, 0, 1, 2, 3, 4], &tid), None);
        assert_eq!(decode_xor(&[0, 2, 0, 0, 1, 2, 3, 4], &tid), None);
    }
}
