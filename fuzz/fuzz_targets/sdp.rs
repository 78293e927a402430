#![no_main]
//! The SDP layer: parse, describe as an offer under each policy, build the relay
//! request, rewrite with a relay leg of the right shape (IPv4 and IPv6), and describe
//! and rewrite the same bytes as the answer. No panic, and every rewrite parses again.

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tandem_control::{CryptoSuite, LegCounters, LegInfo, SrtpCrypto, StreamInfo};
use tandem_signaling::sdp::{
    answer_request, create_request, describe_answer, describe_offer, rewrite, Description, Plan,
    Policy, Sdp, SdpError,
};

fn leg(desc: &Description, ip: IpAddr, base: u16) -> LegInfo {
    LegInfo {
        ice: desc.leg.ice.is_some(),
        learn_first_source: false,
        srtp: Some(SrtpCrypto {
            suite: CryptoSuite::AesCm128HmacSha1_80,
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

fn check(out: Result<Vec<u8>, SdpError>) {
    match out {
        Ok(bytes) => {
            Sdp::parse(&bytes).expect("a rewritten SDP parses");
        }
        Err(SdpError::TooLarge { .. } | SdpError::TooManyLines { .. }) => {}
        Err(e) => panic!("rewrite of a described SDP failed: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = Sdp::parse(data) else { return };
    let policies = [
        Policy::default(),
        Policy {
            force_relay: true,
            ..Policy::default()
        },
        Policy {
            plain_callee: true,
            learn_first_source: true,
            ..Policy::default()
        },
    ];
    for policy in policies {
        let Ok(offer) = describe_offer(&sdp, &policy) else {
            continue;
        };
        let _ = offer.already_relayed();
        let _ = create_request(&offer, "fuzz@example.test").validate();
        let plan = Plan::new(&policy, &offer);
        for ip in [
            IpAddr::from([203, 0, 113, 10]),
            IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10]),
        ] {
            check(rewrite(&sdp, &offer, &leg(&offer, ip, 40000), &plan));
        }
        if let Ok(answer) = describe_answer(&sdp, &offer, &policy) {
            let _ = answer_request(&answer, &offer).validate();
            let plan = Plan::new(&policy, &answer);
            check(rewrite(
                &sdp,
                &answer,
                &leg(&offer, IpAddr::from([203, 0, 113, 10]), 42000),
                &plan,
            ));
        }
    }
});
