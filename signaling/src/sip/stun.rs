//! STUN keep-alives on the SIP UDP port (RFC 5626 section 4.4.2 and 8.4): a client
//! registered with `outbound` sends STUN Binding requests (RFC 8489) over its flow to
//! learn that the flow (and the NAT binding in front of it) is still alive; we answer
//! with the address we see it from. Pure: borrows the datagram, writes the answer into
//! a buffer the caller owns.
//!
//! Demultiplexing (RFC 5626 section 8.4, RFC 7983): a STUN message starts with two zero
//! bits, a SIP message with a letter, so the first byte tells them apart.
//!
//! Only what a keep-alive needs: Binding requests without authentication, answered
//! with XOR-MAPPED-ADDRESS and FINGERPRINT. Anything else that looks like STUN
//! (indications, responses, other methods, bad lengths) is dropped without an answer.
//! The answer to an IPv4 client is 40 bytes for a request of at least 20: a small,
//! bounded reflection, the same any STUN server gives.

use std::net::SocketAddr;

/// RFC 8489 magic cookie.
const MAGIC: u32 = 0x2112_A442;
const HEADER: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FINGERPRINT: u16 = 0x8028;
/// RFC 8489 14.7: the CRC-32 of the message XOR-ed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Room the longest answer needs (IPv6 address, fingerprint).
pub const MAX_ANSWER: usize = HEADER + 4 + 20 + 8;

/// Whether a datagram on the SIP port is STUN (its first two bits are zero).
pub fn is_stun(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b & 0xC0 == 0)
}

/// The answer to a STUN Binding request from `source`, written into `out`: `Some(n)`
/// with its length, `None` when the datagram is not a well-formed Binding request
/// (nothing is to be sent).
pub fn answer_binding(
    data: &[u8],
    source: SocketAddr,
    out: &mut [u8; MAX_ANSWER],
) -> Option<usize> {
    let head = data.get(..HEADER)?;
    let msg_type = u16::from_be_bytes([head[0], head[1]]);
    let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let cookie = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if msg_type != BINDING_REQUEST
        || cookie != MAGIC
        || length % 4 != 0
        || HEADER.checked_add(length)? != data.len()
    {
        return None;
    }
    let tid = head.get(8..20)?;
    // XOR-MAPPED-ADDRESS (RFC 8489 14.2).
    let port = source.port() ^ (MAGIC >> 16) as u16;
    let mut attr = [0u8; 24];
    let attr_len = match source {
        SocketAddr::V4(a) => {
            let ip = u32::from(*a.ip()) ^ MAGIC;
            attr[..4].copy_from_slice(&[0, 0x01, (port >> 8) as u8, port as u8]);
            attr[4..8].copy_from_slice(&ip.to_be_bytes());
            8
        }
        SocketAddr::V6(a) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            attr[..4].copy_from_slice(&[0, 0x02, (port >> 8) as u8, port as u8]);
            for (i, (b, k)) in a.ip().octets().iter().zip(key).enumerate() {
                attr[4 + i] = b ^ k;
            }
            20
        }
    };
    let body_len = 4 + attr_len + 8;
    let total = HEADER + body_len;
    let o = out.get_mut(..total)?;
    o[..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
    o[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    o[4..8].copy_from_slice(&MAGIC.to_be_bytes());
    o[8..20].copy_from_slice(tid);
    o[20..22].copy_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    o[22..24].copy_from_slice(&(attr_len as u16).to_be_bytes());
    o[24..24 + attr_len].copy_from_slice(&attr[..attr_len]);
    let fp_at = 24 + attr_len;
    o[fp_at..fp_at + 2].copy_from_slice(&FINGERPRINT.to_be_bytes());
    o[fp_at + 2..fp_at + 4].copy_from_slice(&4u16.to_be_bytes());
    let crc = crc32(&o[..fp_at]) ^ FINGERPRINT_XOR;
    o[fp_at + 4..fp_at + 8].copy_from_slice(&crc.to_be_bytes());
    Some(total)
}

/// CRC-32 (ISO-HDLC, the one RFC 8489 FINGERPRINT uses), bitwise: keep-alives are rare.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tid: [u8; 12]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01, 0x00, 0x00];
        r.extend_from_slice(&MAGIC.to_be_bytes());
        r.extend_from_slice(&tid);
        r
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn binding_request_gets_xor_mapped_address_and_fingerprint() {
        let tid = [7u8; 12];
        let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let mut out = [0u8; MAX_ANSWER];
        let n = answer_binding(&request(tid), src, &mut out).unwrap();
        assert_eq!(n, 40);
        let o = &out[..n];
        assert_eq!(&o[..2], &[0x01, 0x01]);
        assert_eq!(u16::from_be_bytes([o[2], o[3]]) as usize, n - 20);
        assert_eq!(&o[8..20], &tid);
        // XOR-MAPPED-ADDRESS decodes back to the source.
        assert_eq!(&o[20..24], &[0x00, 0x20, 0x00, 0x08]);
        let port = u16::from_be_bytes([o[26], o[27]]) ^ 0x2112;
        let ip = u32::from_be_bytes([o[28], o[29], o[30], o[31]]) ^ MAGIC;
        assert_eq!(port, 32853);
        assert_eq!(
            std::net::Ipv4Addr::from(ip),
            "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        // FINGERPRINT over everything before it.
        assert_eq!(&o[32..36], &[0x80, 0x28, 0x00, 0x04]);
        let fp = u32::from_be_bytes([o[36], o[37], o[38], o[39]]);
        assert_eq!(fp, crc32(&o[..32]) ^ FINGERPRINT_XOR);
    }

    #[test]
    fn ipv6_source_is_xored_with_cookie_and_transaction_id() {
        let tid = [0xA5u8; 12];
        let src: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let mut out = [0u8; MAX_ANSWER];
        let n = answer_binding(&request(tid), src, &mut out).unwrap();
        assert_eq!(n, MAX_ANSWER);
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&MAGIC.to_be_bytes());
        key[4..].copy_from_slice(&tid);
        let mut ip = [0u8; 16];
        for i in 0..16 {
            ip[i] = out[28 + i] ^ key[i];
        }
        assert_eq!(
            std::net::Ipv6Addr::from(ip),
            "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn everything_else_gets_no_answer() {
        let src: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let mut out = [0u8; MAX_ANSWER];
        let good = request([1; 12]);
        // Not a request, wrong cookie, length not matching, truncated, SIP text.
        let mut indication = good.clone();
        indication[1] = 0x11;
        let mut cookie = good.clone();
        cookie[4] = 0;
        let mut long = good.clone();
        long.extend_from_slice(&[0; 4]);
        for bad in [
            indication,
            cookie,
            long,
            good[..19].to_vec(),
            b"OPTIONS sip:x SIP/2.0\r\n".to_vec(),
        ] {
            assert_eq!(answer_binding(&bad, src, &mut out), None, "{bad:?}");
        }
        assert!(is_stun(&good));
        assert!(!is_stun(b"REGISTER"));
        assert!(!is_stun(b""));
    }

    #[test]
    fn random_input_never_panics() {
        let src: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let mut out = [0u8; MAX_ANSWER];
        let mut x = 0x1234_5678u32;
        for len in 0..200usize {
            let mut d: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = answer_binding(&d, src, &mut out);
            if len >= 20 {
                d[..2].copy_from_slice(&[0, 1]);
                d[4..8].copy_from_slice(&MAGIC.to_be_bytes());
                let _ = answer_binding(&d, src, &mut out);
            }
        }
    }
}
