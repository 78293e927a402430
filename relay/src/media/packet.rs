//! What a datagram on a media port is, judged from its first two bytes without
//! parsing it (RFC 7983 section 7 for the first byte, RFC 5761 section 4 for RTP
//! versus RTCP on a multiplexed port).
//!
//! Wire input never panics here: every length goes through `get`.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

/// The kinds of datagram a media port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First byte 0-3: STUN (an ICE connectivity check or its answer).
    Stun,
    /// First byte 20-63: DTLS (a DTLS-SRTP handshake), forwarded untouched.
    Dtls,
    /// First byte 128-191, second byte (packet type) 192-223: RTCP or SRTCP.
    Rtcp,
    /// First byte 128-191, any other packet type: RTP or SRTP.
    Rtp,
    /// Anything else (ZRTP, TURN ChannelData, garbage), or too short to tell.
    Other,
}

/// Shortest RTP packet: the 12-byte fixed header (RFC 3550 section 5.1). RTCP's
/// shortest is 8 bytes (a receiver report with no blocks).
const RTP_MIN: usize = 12;
const RTCP_MIN: usize = 8;

/// Classify `packet`.
pub fn classify(packet: &[u8]) -> Kind {
    let (Some(&b0), Some(&b1)) = (packet.first(), packet.get(1)) else {
        return Kind::Other;
    };
    match b0 {
        0..=3 if packet.len() >= crate::stun::HEADER_LEN => Kind::Stun,
        20..=63 => Kind::Dtls,
        128..=191 if (192..=223).contains(&b1) => {
            if packet.len() >= RTCP_MIN {
                Kind::Rtcp
            } else {
                Kind::Other
            }
        }
        128..=191 if packet.len() >= RTP_MIN => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// The SSRC of an RTP packet (bytes 8-11) or of the sender of an RTCP packet
/// (bytes 4-7); `None` when too short.
pub fn ssrc(kind: Kind, packet: &[u8]) -> Option<u32> {
    let at = match kind {
        Kind::Rtp => 8,
        Kind::Rtcp => 4,
        _ => return None,
    };
    let b: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// The length of a well-formed RTP header (fixed part, CSRCs, header extension), or
/// `None` when the header does not fit in `packet` or an RFC 8285 extension element
/// (one-byte profile 0xBEDE, two-byte profile 0x1000) runs past the extension block.
/// SRTP bridging checks this before a packet reaches the SRTP library, whose header
/// parser trusts those lengths.
pub fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let b0 = *packet.first()?;
    let cc = usize::from(b0 & 0x0f);
    let len = RTP_MIN.checked_add(cc * 4)?;
    if len > packet.len() {
        return None;
    }
    if b0 & 0x10 == 0 {
        return Some(len);
    }
    let ext: [u8; 4] = packet.get(len..len + 4)?.try_into().ok()?;
    let profile = u16::from_be_bytes([ext[0], ext[1]]);
    let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    let start = len + 4;
    let end = start.checked_add(words * 4)?;
    let block = packet.get(start..end)?;
    let fits = match profile {
        0xBEDE => one_byte_elements_fit(block),
        0x1000 => two_byte_elements_fit(block),
        _ => true,
    };
    fits.then_some(end)
}

fn one_byte_elements_fit(block: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = block.get(i) {
        i += 1;
        if b == 0 {
            continue; // padding
        }
        if b >> 4 == 0x0f {
            return true; // the reserved id ends the walk
        }
        i += usize::from(b & 0x0f) + 1;
        if i > block.len() {
            return false;
        }
    }
    true
}

fn two_byte_elements_fit(block: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = block.get(i) {
        i += 1;
        if b == 0 {
            continue; // padding
        }
        let Some(&n) = block.get(i) else {
            return false;
        };
        i += 1 + usize::from(n);
        if i > block.len() {
            return false;
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0x60; // PT 96, no marker
        assert_eq!(classify(&rtp), Kind::Rtp);
        rtp[1] = 0x80; // marker set, PT 0
        assert_eq!(classify(&rtp), Kind::Rtp);
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x80;
        rtcp[1] = 200; // SR
        assert_eq!(classify(&rtcp), Kind::Rtcp);
        assert_eq!(classify(&rtcp[..7]), Kind::Other);
        assert_eq!(classify(&rtp[..11]), Kind::Other);
        assert_eq!(classify(&[0x16, 0xfe, 0xfd]), Kind::Dtls);
        let mut stun = [0u8; 20];
        stun[1] = 1;
        assert_eq!(classify(&stun), Kind::Stun);
        assert_eq!(classify(&stun[..19]), Kind::Other);
        assert_eq!(classify(&[0x40, 0, 0, 0]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[0x80]), Kind::Other);
    }

    #[test]
    fn rtp_header_lengths() {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(rtp_header_len(&p), Some(12));
        p[0] = 0x81; // one CSRC, missing
        assert_eq!(rtp_header_len(&p), None);
        p.extend_from_slice(&[0, 0, 0, 2]);
        assert_eq!(rtp_header_len(&p), Some(16));
        // One-byte extension: id 1 with 2 bytes, padding; one word.
        let mut e = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xBE, 0xDE, 0, 1];
        e.extend_from_slice(&[0x11, 0xaa, 0xbb, 0x00]);
        assert_eq!(rtp_header_len(&e), Some(20));
        e[16] = 0x13; // 4 bytes claimed, 3 left
        assert_eq!(rtp_header_len(&e), None);
        // Two-byte extension: id 1, 255 bytes claimed in one word.
        let mut t = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0x00, 0, 1];
        t.extend_from_slice(&[0x01, 0xff, 0, 0]);
        assert_eq!(rtp_header_len(&t), None);
        t[17] = 2;
        assert_eq!(rtp_header_len(&t), Some(20));
        // An extension block longer than the packet.
        t[15] = 9;
        assert_eq!(rtp_header_len(&t), None);
        // Another profile: opaque.
        let o = [0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x12, 0x34, 0, 0];
        assert_eq!(rtp_header_len(&o), Some(16));
    }

    #[test]
    fn ssrc_of_each_kind() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        assert_eq!(ssrc(Kind::Rtp, &rtp), Some(0xdead_beef));
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x80;
        rtcp[1] = 201;
        rtcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(ssrc(Kind::Rtcp, &rtcp), Some(7));
        assert_eq!(ssrc(Kind::Stun, &rtcp), None);
        assert_eq!(ssrc(Kind::Rtp, &rtp[..10]), None);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        for len in 0..40 {
            for b0 in [0u8, 3, 20, 63, 64, 127, 128, 191, 192, 255] {
                for b1 in [0u8, 191, 192, 200, 223, 224] {
                    let mut p = vec![0u8; len];
                    if let Some(x) = p.get_mut(0) {
                        *x = b0;
                    }
                    if let Some(x) = p.get_mut(1) {
                        *x = b1;
                    }
                    let k = classify(&p);
                    let _ = ssrc(k, &p);
                }
            }
        }
    }
}
