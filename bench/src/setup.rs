//! The forwarder's setup exchange, which stands in for TURN's Allocate, ChannelBind
//! and Refresh (see the design comment in `forwarder.rs`): datagrams starting with
//! 0xFF, a first byte no STUN or ChannelData message has. The client side builds and
//! parses it here; the forwarder answers it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Parse the answer to `FF 'A'`.
pub fn parse_alloc_reply(d: &[u8]) -> Option<SocketAddr> {
    let b: &[u8; 8] = d.get(..8)?.try_into().ok()?;
    if b[..2] != [0xFF, b'A'] {
        return None;
    }
    let ip = Ipv4Addr::new(b[2], b[3], b[4], b[5]);
    Some(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be_bytes([b[6], b[7]]),
    )))
}

/// Build `FF 'B' channel ip4 port`.
pub fn bind_request(channel: u16, peer: SocketAddr) -> Option<[u8; 10]> {
    let SocketAddr::V4(p) = peer else { return None };
    let mut r = [0u8; 10];
    r[0] = 0xFF;
    r[1] = b'B';
    r[2..4].copy_from_slice(&channel.to_be_bytes());
    r[4..8].copy_from_slice(&p.ip().octets());
    r[8..10].copy_from_slice(&p.port().to_be_bytes());
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_messages() {
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let b = bind_request(0x4001, peer).unwrap();
        assert_eq!(&b[..4], &[0xFF, b'B', 0x40, 0x01]);
        assert_eq!(&b[4..], &[127, 0, 0, 1, 0xC3, 0x50]);
        assert!(bind_request(1, "[::1]:1".parse().unwrap()).is_none());
        let reply = [0xFF, b'A', 127, 0, 0, 1, 0xC3, 0x50];
        assert_eq!(parse_alloc_reply(&reply), Some(peer));
        assert_eq!(parse_alloc_reply(&reply[..7]), None);
        assert_eq!(parse_alloc_reply(&[0xFF, b'B', 0, 0, 0, 0, 0, 0]), None);
    }
}
