//! Golden files for the SDP layer (`tests/sdp/<case>/`): each case's input SDP (an
//! offer, and for some an answer) goes through describe, the request to the relay, a
//! fixed fake relay answer and the rewrite; every product is compared byte for byte
//! with the file of the same name. `TANDEM_UPDATE_GOLDEN=1` writes them instead.
//!
//! Products: `offer.facts.txt` (the description), `create.json`, `session.json` (the
//! fake relay's answer), `offer.out.sdp` (what the callee gets); with an answer:
//! `answer.facts.txt`, `update.json`, `answer.out.sdp` (what the caller gets); a
//! refused offer: `error.txt`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;
use tandem_control::{
    AddressFamily, CreateSession, LegCounters, LegInfo, LegRequest, SessionInfo, SessionState,
    SrtpCrypto, StreamInfo,
};
use tandem_signaling::sdp::{
    answer_request, create_request, describe_answer, describe_offer, rewrite, Plan, Policy, Sdp,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdp")
}

/// The fake relay: callee leg ports from 40000, caller leg ports from 42000, ten apart
/// per stream, RTCP on the next port unless rtcp-mux; a fixed key where SRTP is
/// terminated.
fn fake_relay(req: &CreateSession) -> SessionInfo {
    let ip: IpAddr = match req.family {
        AddressFamily::Ipv4 => "203.0.113.10".parse().unwrap(),
        AddressFamily::Ipv6 => "2001:db8::10".parse().unwrap(),
    };
    let leg = |r: &LegRequest, base: u16| LegInfo {
        ice: r.ice.is_some(),
        learn_first_source: r.learn_first_source,
        srtp: r.srtp.as_ref().map(|c| {
            let (k, s) = c.suite.key_salt_len();
            let bytes: Vec<u8> = (0..(k + s) as u8).map(|b| b.wrapping_mul(7)).collect();
            SrtpCrypto {
                suite: c.suite,
                key: base64::engine::general_purpose::STANDARD.encode(bytes),
            }
        }),
        streams: r
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let port = base + 10 * i as u16;
                StreamInfo {
                    relay_rtp: SocketAddr::new(ip, port),
                    relay_rtcp: (!s.rtcp_mux).then(|| SocketAddr::new(ip, port + 1)),
                    rtcp_mux: s.rtcp_mux,
                    latched_rtp: None,
                    latched_rtcp: None,
                }
            })
            .collect(),
        counters: LegCounters::default(),
    };
    let callee = req.callee.clone().unwrap_or_else(|| req.caller.clone());
    SessionInfo {
        id: "s-0001".into(),
        call_id: req.call_id.clone(),
        state: SessionState::Offered,
        end_reason: None,
        age_secs: 0,
        caller: leg(&req.caller, 42000),
        callee: leg(&callee, 40000),
    }
}

fn policy_for(case: &str) -> Policy {
    let mut p = Policy::default();
    match case {
        "force_relay" => p.force_relay = true,
        "sdes_offnet" | "dtls_to_plain" => p.plain_callee = true,
        "gateway_plain" => p.learn_first_source = true,
        _ => {}
    }
    p
}

/// Runs one case and returns its products by file name.
fn run_case(case: &Path) -> BTreeMap<String, Vec<u8>> {
    let name = case.file_name().unwrap().to_str().unwrap();
    let policy = policy_for(name);
    let mut out = BTreeMap::new();
    let offer_bytes = std::fs::read(case.join("offer.sdp")).unwrap();
    let offer = Sdp::parse(&offer_bytes).unwrap();
    let od = match describe_offer(&offer, &policy) {
        Ok(d) => d,
        Err(e) => {
            out.insert("error.txt".into(), format!("{e}\n").into_bytes());
            return out;
        }
    };
    out.insert("offer.facts.txt".into(), format!("{od:#?}\n").into_bytes());
    if od.already_relayed() {
        // The proxy passes it untouched; nothing more to show.
        return out;
    }
    let create = create_request(&od, "call-1@tandem.test");
    create.validate().unwrap();
    out.insert("create.json".into(), json(&create));
    let info = fake_relay(&create);
    out.insert("session.json".into(), json(&info));
    let to_callee = rewrite(&offer, &od, &info.callee, &Plan::new(&policy, &od)).unwrap();
    Sdp::parse(&to_callee).expect("the rewritten offer parses");
    out.insert("offer.out.sdp".into(), to_callee);

    let Ok(answer_bytes) = std::fs::read(case.join("answer.sdp")) else {
        return out;
    };
    let answer = Sdp::parse(&answer_bytes).unwrap();
    let ad = describe_answer(&answer, &od, &policy).unwrap();
    out.insert("answer.facts.txt".into(), format!("{ad:#?}\n").into_bytes());
    let update = answer_request(&ad, &od);
    update.validate().unwrap();
    out.insert("update.json".into(), json(&update));
    let to_caller = rewrite(&answer, &ad, &info.caller, &Plan::new(&policy, &ad)).unwrap();
    Sdp::parse(&to_caller).expect("the rewritten answer parses");
    out.insert("answer.out.sdp".into(), to_caller);
    out
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    s.into_bytes()
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn golden() {
    let update = std::env::var_os("TANDEM_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for case in cases() {
        for (file, got) in run_case(&case) {
            let path = case.join(&file);
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            match std::fs::read(&path) {
                Ok(want) if want == got => {}
                Ok(want) => failures.push(format!(
                    "{}: differs\n--- want\n{}\n--- got\n{}",
                    path.display(),
                    String::from_utf8_lossy(&want),
                    String::from_utf8_lossy(&got)
                )),
                Err(_) => failures.push(format!("{}: missing", path.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden files differ (TANDEM_UPDATE_GOLDEN=1 regenerates):\n{}",
        failures.join("\n")
    );
}

/// Every case is there, so a lost directory does not pass silently.
#[test]
fn golden_cases_present() {
    let names: Vec<String> = cases()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "bundle_av_mux",
        "chrome_offer",
        "dtls_to_plain",
        "force_relay",
        "gateway_plain",
        "hold",
        "inactive",
        "ipv6",
        "mobile_host_srflx",
        "port_zero",
        "relay_candidate",
        "sdes_offnet",
        "trickle_eoc",
    ] {
        assert!(names.iter().any(|n| n == want), "case {want} missing");
    }
}

/// Lines the rewrite does not own come out byte for byte and in order: the output with
/// the relay's lines removed is the input with the lines it replaced or dropped removed.
#[test]
fn untouched_lines_are_byte_identical() {
    for case in cases() {
        let Ok(input) = std::fs::read(case.join("offer.sdp")) else {
            continue;
        };
        let Ok(output) = std::fs::read(case.join("offer.out.sdp")) else {
            continue;
        };
        let owned = |l: &[u8]| {
            l.starts_with(b"c=")
                || l.starts_with(b"m=")
                || l.starts_with(b"a=rtcp:")
                || l.starts_with(b"a=candidate:")
                || l.starts_with(b"a=crypto:")
        };
        let keep = |b: &[u8]| -> Vec<Vec<u8>> {
            b.split_inclusive(|&c| c == b'\n')
                .filter(|l| !owned(l))
                .map(<[u8]>::to_vec)
                .collect()
        };
        assert_eq!(keep(&input), keep(&output), "{}", case.display());
    }
}
