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
