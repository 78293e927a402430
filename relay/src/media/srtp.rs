//! SDES SRTP termination on one leg (RFC 4568 keys, RFC 3711 SRTP/SRTCP, RFC 7714
//! AES-GCM), for bridging an SRTP leg to a plain RTP leg. The ciphers are the
//! `webrtc-srtp` crate's; this module checks every length before handing it a packet
//! (its SRTCP index look-up indexes without checking) and refuses what it would pass
//! unauthenticated (SRTCP with the E flag clear is returned by the crate without
//! checking its tag; we never negotiate unencrypted SRTCP, so it is dropped).
//!
//! Suites: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM.
//! Replay protection is on for what the device sends (a 64-packet window per SSRC,
//! RFC 3711 section 3.3.2).

use base64::Engine as _;
use tandem_control::{CryptoSuite, SrtpCrypto};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

use super::packet::{self, Kind};

/// Replay window (packets) per SSRC.
const REPLAY_WINDOW: usize = 64;
/// Distinct SSRCs a leg may try: the crate keeps state per SSRC it sees, before the
/// packet authenticates, so a device (or a forger at its latched address) could grow
/// it without end.
const MAX_SSRCS: usize = 16;
/// SRTCP index field (E flag and 31-bit index).
const SRTCP_INDEX_LEN: usize = 4;

/// Why an SRTP key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the SRTP key is not valid base64")]
    Base64,
    #[error("the SRTP key has the wrong length for its suite")]
    Length,
}

/// Why a packet was not transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Failed authentication or replay protection, or too many SSRCs.
    Auth,
    /// Not RTP or RTCP, or too short for the suite.
    Malformed,
}

fn profile(suite: CryptoSuite) -> ProtectionProfile {
    match suite {
        CryptoSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        CryptoSuite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
    }
}

fn context(crypto: &SrtpCrypto, replay: bool) -> Result<(Context, ProtectionProfile), KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(crypto.key.as_bytes())
        .map_err(|_| KeyError::Base64)?;
    let (k, s) = crypto.suite.key_salt_len();
    if bytes.len() != k + s {
        return Err(KeyError::Length);
    }
    let p = profile(crypto.suite);
    let (key, salt) = bytes.split_at(k);
    let ctx = if replay {
        Context::new(
            key,
            salt,
            p,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
    } else {
        Context::new(key, salt, p, None, None)
    }
    .map_err(|_| KeyError::Length)?;
    Ok((ctx, p))
}

/// A fresh key for `suite` from `random` bytes (at least key + salt long).
pub fn new_key(suite: CryptoSuite, random: &[u8; 32]) -> SrtpCrypto {
    let (k, s) = suite.key_salt_len();
    SrtpCrypto {
        suite,
        key: base64::engine::general_purpose::STANDARD.encode(&random[..k + s]),
    }
}

/// SRTP terminated on one leg: what the device sends is decrypted with its key, what
/// the relay sends it is encrypted with the relay's.
pub struct Termination {
    inbound: Context,
    outbound: Context,
    profile: ProtectionProfile,
    /// The key the relay sends with (for the SDP sent to the device).
    pub relay_key: SrtpCrypto,
    ssrcs: Vec<u32>,
}

impl std::fmt::Debug for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Termination")
            .field("suite", &self.relay_key.suite)
            .field("ssrcs", &self.ssrcs.len())
            .finish_non_exhaustive()
    }
}

impl Termination {
    /// `device` is the key the device announced; `relay` the relay's own.
    pub fn new(device: &SrtpCrypto, relay: SrtpCrypto) -> Result<Termination, KeyError> {
        let (inbound, profile) = context(device, true)?;
        let (outbound, _) = context(&relay, false)?;
        Ok(Termination {
            inbound,
            outbound,
            profile,
            relay_key: relay,
            ssrcs: Vec::new(),
        })
    }

    fn admit_ssrc(&mut self, ssrc: u32) -> bool {
        if self.ssrcs.contains(&ssrc) {
            return true;
        }
        if self.ssrcs.len() >= MAX_SSRCS {
            return false;
        }
        self.ssrcs.push(ssrc);
        true
    }

    /// Decrypt and authenticate SRTP or SRTCP from the device into plain RTP or RTCP.
    pub fn decrypt(&mut self, kind: Kind, packet: &[u8]) -> Result<bytes::Bytes, Refused> {
        let ssrc = packet::ssrc(kind, packet).ok_or(Refused::Malformed)?;
        match kind {
            Kind::Rtp => {
                let tag = self.profile.rtp_auth_tag_len() + self.profile.aead_auth_tag_len();
                let header = packet::rtp_header_len(packet).ok_or(Refused::Malformed)?;
                if packet.len() < header + tag {
                    return Err(Refused::Malformed);
                }
                if !self.admit_ssrc(ssrc) {
                    return Err(Refused::Auth);
                }
                self.inbound.decrypt_rtp(packet).map_err(|_| Refused::Auth)
            }
            Kind::Rtcp => {
                let tag = self.profile.rtcp_auth_tag_len() + self.profile.aead_auth_tag_len();
                let min = 8 + tag + SRTCP_INDEX_LEN;
                if packet.len() < min {
                    return Err(Refused::Malformed);
                }
                // The E flag: the first bit of the SRTCP index word, which sits before
                // the HMAC tag (AES-CM) or at the very end (AES-GCM, tag inside).
                let e_at = packet.len() - SRTCP_INDEX_LEN - self.profile.rtcp_auth_tag_len();
                if packet.get(e_at).is_none_or(|b| b & 0x80 == 0) {
                    return Err(Refused::Auth);
                }
                if !self.admit_ssrc(ssrc) {
                    return Err(Refused::Auth);
                }
                self.inbound.decrypt_rtcp(packet).map_err(|_| Refused::Auth)
            }
            _ => Err(Refused::Malformed),
        }
    }

    /// Encrypt plain RTP or RTCP for the device.
    pub fn encrypt(&mut self, kind: Kind, packet: &[u8]) -> Result<bytes::Bytes, Refused> {
        match kind {
            Kind::Rtp if packet::rtp_header_len(packet).is_some() => self
                .outbound
                .encrypt_rtp(packet)
                .map_err(|_| Refused::Malformed),
            Kind::Rtcp if packet.len() >= 8 => self
                .outbound
                .encrypt_rtcp(packet)
                .map_err(|_| Refused::Malformed),
            _ => Err(Refused::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn rtcp_rr() -> Vec<u8> {
        // RR, no report blocks: V=2, PT=201, length 1 (8 bytes), SSRC.
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p
    }

    fn pair(suite: CryptoSuite) -> (Termination, Termination) {
        // A "device" and the relay: the device's outbound is the relay's inbound.
        let dev_key = new_key(suite, &[1; 32]);
        let relay_key = new_key(suite, &[2; 32]);
        let relay = Termination::new(&dev_key, relay_key.clone()).unwrap();
        let device = Termination::new(&relay_key, dev_key).unwrap();
        (device, relay)
    }

    #[test]
    fn round_trip_every_suite() {
        for suite in [
            CryptoSuite::AesCm128HmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32,
            CryptoSuite::AeadAes128Gcm,
        ] {
            let (mut device, mut relay) = pair(suite);
            for seq in 0..5u16 {
                let plain = rtp(seq, b"hello media");
                let enc = device.encrypt(Kind::Rtp, &plain).unwrap();
                assert_ne!(&enc[..], &plain[..]);
                let dec = relay.decrypt(Kind::Rtp, &enc).unwrap();
                assert_eq!(&dec[..], &plain[..], "{suite:?}");
                // The same packet again is a replay.
                assert_eq!(relay.decrypt(Kind::Rtp, &enc), Err(Refused::Auth));
            }
            let rr = rtcp_rr();
            let enc = device.encrypt(Kind::Rtcp, &rr).unwrap();
            let dec = relay.decrypt(Kind::Rtcp, &enc).unwrap();
            assert_eq!(&dec[..], &rr[..], "{suite:?}");
        }
    }

    #[test]
    fn tampered_and_short_packets_are_refused() {
        let (mut device, mut relay) = pair(CryptoSuite::AesCm128HmacSha1_80);
        let enc = device.encrypt(Kind::Rtp, &rtp(1, b"payload")).unwrap();
        let mut bad = enc.to_vec();
        let last = bad.len() - 12;
        bad[last] ^= 1;
        assert_eq!(relay.decrypt(Kind::Rtp, &bad), Err(Refused::Auth));
        for cut in 0..enc.len() {
            let _ = relay.decrypt(Kind::Rtp, &enc[..cut]);
            let _ = relay.decrypt(Kind::Rtcp, &enc[..cut]);
        }
        // SRTCP with the E flag cleared would pass the crate unauthenticated.
        let enc = device.encrypt(Kind::Rtcp, &rtcp_rr()).unwrap();
        let mut clear = enc.to_vec();
        let e_at = clear.len() - 4 - 10;
        clear[e_at] &= 0x7f;
        assert_eq!(relay.decrypt(Kind::Rtcp, &clear), Err(Refused::Auth));
        let (_, mut gcm) = pair(CryptoSuite::AeadAes128Gcm);
        for len in 0..40 {
            let mut p = vec![0x80u8; len];
            if len > 1 {
                p[1] = 200;
            }
            let _ = gcm.decrypt(Kind::Rtcp, &p);
            let _ = gcm.decrypt(Kind::Rtp, &p);
        }
    }

    #[test]
    fn ssrcs_are_bounded() {
        let (_, mut relay) = pair(CryptoSuite::AesCm128HmacSha1_80);
        for ssrc in 0..100u32 {
            let mut p = rtp(1, &[0; 40]);
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            assert_eq!(relay.decrypt(Kind::Rtp, &p), Err(Refused::Auth));
        }
        assert_eq!(relay.ssrcs.len(), MAX_SSRCS);
    }

    #[test]
    fn bad_keys() {
        let bad = SrtpCrypto {
            suite: CryptoSuite::AesCm128HmacSha1_80,
            key: "!!!!".into(),
        };
        let good = new_key(CryptoSuite::AesCm128HmacSha1_80, &[0; 32]);
        assert_eq!(
            Termination::new(&bad, good.clone()).unwrap_err(),
            KeyError::Base64
        );
        let short = SrtpCrypto {
            suite: CryptoSuite::AesCm128HmacSha1_80,
            key: "AAAA".into(),
        };
        assert_eq!(
            Termination::new(&short, good).unwrap_err(),
            KeyError::Length
        );
    }
}
