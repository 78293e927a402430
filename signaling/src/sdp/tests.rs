//! Unit tests of the SDP layer: describe and rewrite rules, and bounded random,
//! truncated and bit-flipped input (nothing panics; whatever is rewritten parses
//! again). The golden cases are in `signaling/tests/sdp_golden.rs`.

use std::net::{IpAddr, SocketAddr};

use rand::{Rng, SeedableRng};
use tandem_control::{LegCounters, LegInfo, SrtpCrypto, StreamInfo, MAX_STREAMS};

use super::*;

const CHROME: &[u8] = include_bytes!("../../tests/sdp/chrome_offer/offer.sdp");
const MOBILE: &[u8] = include_bytes!("../../tests/sdp/mobile_host_srflx/offer.sdp");
const GATEWAY: &[u8] = include_bytes!("../../tests/sdp/gateway_plain/offer.sdp");
const SDES: &[u8] = include_bytes!("../../tests/sdp/sdes_offnet/offer.sdp");
const SDES_ANSWER: &[u8] = include_bytes!("../../tests/sdp/sdes_offnet/answer.sdp");
const TRICKLE: &[u8] = include_bytes!("../../tests/sdp/trickle_eoc/offer.sdp");
const PORT_ZERO: &[u8] = include_bytes!("../../tests/sdp/port_zero/offer.sdp");
const BUNDLE_ANSWER: &[u8] = include_bytes!("../../tests/sdp/bundle_av_mux/answer.sdp");
const BUNDLE: &[u8] = include_bytes!("../../tests/sdp/bundle_av_mux/offer.sdp");
const IPV6: &[u8] = include_bytes!("../../tests/sdp/ipv6/offer.sdp");
const HOLD: &[u8] = include_bytes!("../../tests/sdp/hold/offer.sdp");

fn corpus() -> Vec<&'static [u8]> {
    vec![
        CHROME,
        MOBILE,
        GATEWAY,
        SDES,
        SDES_ANSWER,
        TRICKLE,
        PORT_ZERO,
        BUNDLE,
        BUNDLE_ANSWER,
        IPV6,
        HOLD,
    ]
}

/// A relay leg for `streams` streams, the layout taken from the request.
fn leg_for(desc: &Description, ip: IpAddr, base: u16) -> LegInfo {
    LegInfo {
        ice: desc.leg.ice.is_some(),
        learn_first_source: false,
        srtp: Some(SrtpCrypto {
            suite: tandem_control::CryptoSuite::AesCm128HmacSha1_80,
            key: "A".repeat(40),
        }),
        streams: desc
            .leg
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let port = base.wrapping_add(10 * i as u16);
                StreamInfo {
                    relay_rtp: SocketAddr::new(ip, port),
                    relay_rtcp: (!s.rtcp_mux).then(|| SocketAddr::new(ip, port.wrapping_add(1))),
                    rtcp_mux: s.rtcp_mux,
                    latched_rtp: None,
                    latched_rtcp: None,
                }
            })
            .collect(),
        counters: LegCounters::default(),
    }
}

fn v4() -> IpAddr {
    IpAddr::from([203, 0, 113, 10])
}

fn policies() -> [Policy; 4] {
    [
        Policy::default(),
        Policy {
            force_relay: true,
            ..Policy::default()
        },
        Policy {
            plain_callee: true,
            ..Policy::default()
        },
        Policy {
            learn_first_source: true,
            ..Policy::default()
        },
    ]
}

/// Everything the proxy would do with `data`; panics only if a rewrite does not parse
/// again.
fn exercise(data: &[u8]) {
    let Ok(sdp) = Sdp::parse(data) else { return };
    for policy in policies() {
        let Ok(offer) = describe_offer(&sdp, &policy) else {
            continue;
        };
        let _ = create_request(&offer, "c");
        let plan = Plan::new(&policy, &offer);
        for ip in [v4(), IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10])] {
            match rewrite(&sdp, &offer, &leg_for(&offer, ip, 40000), &plan) {
                Ok(out) => {
                    let again = Sdp::parse(&out).expect("a rewritten offer parses");
                    assert_eq!(again.media.len(), sdp.media.len());
                }
                Err(SdpError::TooLarge { .. } | SdpError::TooManyLines { .. }) => {}
                Err(e) => panic!("rewrite failed: {e}"),
            }
        }
        // The same SDP as its own answer.
        if let Ok(answer) = describe_answer(&sdp, &offer, &policy) {
            let _ = answer_request(&answer, &offer);
            let plan = Plan::new(&policy, &answer);
            if let Ok(out) = rewrite(&sdp, &answer, &leg_for(&offer, v4(), 42000), &plan) {
                Sdp::parse(&out).expect("a rewritten answer parses");
            }
        }
    }
}

#[test]
fn corpus_round_trips() {
    for c in corpus() {
        exercise(c);
    }
}

#[test]
fn truncated_input_never_panics() {
    // Every line boundary and a byte either side, and every 13th byte.
    for c in corpus() {
        let mut cuts: Vec<usize> = (0..=c.len()).step_by(13).collect();
        for (i, _) in c.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            cuts.extend([i, i + 1, i + 2]);
        }
        for n in cuts {
            if let Some(prefix) = c.get(..n) {
                exercise(prefix);
            }
        }
    }
}

#[test]
fn random_and_bit_flipped_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5d9);
    let corpus = corpus();
    for round in 0..3000 {
        let base = corpus.get(round % corpus.len()).unwrap();
        let mut data = base.to_vec();
        match round % 3 {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..data.len());
                    if let Some(b) = data.get_mut(i) {
                        *b ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            1 => {
                // Splice a line of one SDP into another.
                let other = corpus.get(rng.random_range(0..corpus.len())).unwrap();
                let lines: Vec<&[u8]> = other.split_inclusive(|&b| b == b'\n').collect();
                let line = lines.get(rng.random_range(0..lines.len())).unwrap();
                let at = rng.random_range(0..data.len());
                let at = data
                    .get(at..)
                    .and_then(|r| r.iter().position(|&b| b == b'\n'))
                    .map_or(data.len(), |p| at + p + 1);
                data.splice(at..at, line.iter().copied());
            }
            _ => {
                let len = rng.random_range(0..256);
                data = b"v=0\r\n".to_vec();
                data.extend((0..len).map(|_| {
                    *b"cma=: 0123456789IPN/\r\n"
                        .get(rng.random_range(0..22))
                        .unwrap()
                }));
            }
        }
        exercise(&data);
    }
}

#[test]
fn priority_and_foundation() {
    assert_eq!(relay_priority(1), 16_777_215);
    assert_eq!(relay_priority(2), 16_777_214);
    let a = relay_foundation(v4());
    assert_eq!(a, relay_foundation(v4()));
    assert_ne!(a, relay_foundation(IpAddr::from([203, 0, 113, 11])));
    assert!(a.len() <= 32 && a.bytes().all(|b| b.is_ascii_digit()));
}

#[test]
fn too_many_streams_and_none() {
    let mut sdp = b"v=0\r\nc=IN IP4 192.0.2.1\r\n".to_vec();
    for i in 0..=MAX_STREAMS {
        sdp.extend_from_slice(format!("m=audio {} RTP/AVP 0\r\n", 5000 + 2 * i).as_bytes());
    }
    let s = Sdp::parse(&sdp).unwrap();
    assert_eq!(
        describe_offer(&s, &Policy::default()),
        Err(SdpError::TooManyStreams { max: MAX_STREAMS })
    );
    let s = Sdp::parse(b"v=0\r\nm=audio 0 RTP/AVP 0\r\n").unwrap();
    assert_eq!(
        describe_offer(&s, &Policy::default()),
        Err(SdpError::NoStreams)
    );
}

#[test]
fn sdes_sections_with_different_keys_are_refused() {
    let key2 = "B".repeat(40);
    let sdp = format!(
        "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\nm=video 5002 RTP/SAVP 96\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
        "A".repeat(40),
        key2
    );
    let s = Sdp::parse(sdp.as_bytes()).unwrap();
    let plain = Policy {
        plain_callee: true,
        ..Policy::default()
    };
    assert_eq!(describe_offer(&s, &plain), Err(SdpError::CryptoKeysDiffer));
    // Only an MKI key: nothing the relay can take.
    let s = Sdp::parse(
        b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA|2^20|1:4\r\n",
    )
    .unwrap();
    assert_eq!(describe_offer(&s, &plain), Err(SdpError::NoSupportedCrypto));
    // Without plain_callee SDES passes untouched, key and all.
    let d = describe_offer(&s, &Policy::default()).unwrap();
    assert!(d.facts.sdes && d.leg.srtp.is_none() && d.srtp_bridge.is_none());
}

#[test]
fn the_answer_must_match_the_offer() {
    let offer_sdp = Sdp::parse(BUNDLE).unwrap();
    let offer = describe_offer(&offer_sdp, &Policy::default()).unwrap();
    // Fewer m= lines.
    let gw = Sdp::parse(GATEWAY).unwrap();
    assert_eq!(
        describe_answer(&gw, &offer, &Policy::default()),
        Err(SdpError::AnswerMismatch)
    );
    // The bundle accepted as two transports.
    let unbundled = String::from_utf8(BUNDLE_ANSWER.to_vec())
        .unwrap()
        .replace("a=group:BUNDLE a v\r\n", "")
        .replace("m=video 62000", "m=video 62002");
    let s = Sdp::parse(unbundled.as_bytes()).unwrap();
    assert_eq!(
        describe_answer(&s, &offer, &Policy::default()),
        Err(SdpError::AnswerMismatch)
    );
}

#[test]
fn an_answer_without_ice_to_an_ice_offer_resends_the_caller_leg() {
    let offer_sdp = Sdp::parse(SDES).unwrap();
    let offer = describe_offer(&offer_sdp, &Policy::default()).unwrap();
    let answer_sdp = Sdp::parse(SDES_ANSWER).unwrap();
    let answer = describe_answer(&answer_sdp, &offer, &Policy::default()).unwrap();
    let u = answer_request(&answer, &offer);
    let caller = u.caller.unwrap();
    assert!(caller.ice.is_none() && caller.learn_first_source);
    assert_eq!(caller.streams, offer.leg.streams);
    // Both with ICE: the answer alone.
    let chrome = Sdp::parse(CHROME).unwrap();
    let offer = describe_offer(&chrome, &Policy::default()).unwrap();
    let answer = describe_answer(&chrome, &offer, &Policy::default()).unwrap();
    assert!(answer_request(&answer, &offer).caller.is_none());
}

#[test]
fn a_short_relay_answer_is_an_error() {
    let sdp = Sdp::parse(PORT_ZERO).unwrap();
    let d = describe_offer(&sdp, &Policy::default()).unwrap();
    let mut leg = leg_for(&d, v4(), 40000);
    leg.streams.pop();
    assert_eq!(
        rewrite(&sdp, &d, &leg, &Plan::new(&Policy::default(), &d)),
        Err(SdpError::RelayStreamMissing(1))
    );
}

#[test]
fn a_relay_rtcp_port_elsewhere_is_announced() {
    let sdp = Sdp::parse(b"v=0\nc=IN IP4 192.0.2.1\nm=audio 5000 RTP/AVP 0\na=sendrecv").unwrap();
    let d = describe_offer(&sdp, &Policy::default()).unwrap();
    let mut leg = leg_for(&d, v4(), 40000);
    leg.streams[0].relay_rtcp = Some(SocketAddr::new(v4(), 41001));
    let out = rewrite(&sdp, &d, &leg, &Plan::new(&Policy::default(), &d)).unwrap();
    assert_eq!(
        out,
        b"v=0\nc=IN IP4 203.0.113.10\nm=audio 40000 RTP/AVP 0\na=sendrecv\na=rtcp:41001\n"
    );
}

#[test]
fn a_section_on_another_relay_address_gets_its_own_c_line() {
    let sdp = Sdp::parse(
        b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\ni=voice\r\nm=video 5002 RTP/AVP 96\r\n",
    )
    .unwrap();
    let d = describe_offer(&sdp, &Policy::default()).unwrap();
    let mut leg = leg_for(&d, v4(), 40000);
    let other = IpAddr::from([203, 0, 113, 11]);
    leg.streams[1].relay_rtp = SocketAddr::new(other, 40010);
    leg.streams[1].relay_rtcp = Some(SocketAddr::new(other, 40011));
    let out = rewrite(&sdp, &d, &leg, &Plan::new(&Policy::default(), &d)).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "v=0\r\nc=IN IP4 203.0.113.10\r\nm=audio 40000 RTP/AVP 0\r\ni=voice\r\n\
m=video 40010 RTP/AVP 96\r\nc=IN IP4 203.0.113.11\r\n"
    );
}

#[test]
fn facts() {
    let d = describe_offer(&Sdp::parse(HOLD).unwrap(), &Policy::default()).unwrap();
    assert!(d.facts.hold && !d.facts.inactive);
    assert_eq!(d.leg.streams[0].rtp, None);
    let d = describe_offer(&Sdp::parse(IPV6).unwrap(), &Policy::default()).unwrap();
    assert_eq!(d.facts.family, tandem_control::AddressFamily::Ipv6);
    let d = describe_offer(&Sdp::parse(TRICKLE).unwrap(), &Policy::default()).unwrap();
    // 0.0.0.0 with ICE is "no default candidate yet", not hold.
    assert!(d.facts.ice && !d.facts.hold && d.facts.dtls);
    assert!(!d.already_relayed());
}
