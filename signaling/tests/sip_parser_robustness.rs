//! Bounded random, truncated and bit-flipped input to every decoder on the SIP wire
//! path (message parser, stream framer, header grammar, digest credentials). Nothing
//! may panic. The same inputs run longer under `cargo fuzz` (fuzz/fuzz_targets/sip_message.rs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tandem_signaling::sip::grammar::{cseq, name_addr, AuthParams, SipUri, Via};
use tandem_signaling::sip::message::{frame_stream, HeaderName, Message};

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rfc4475");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "sip").then(|| std::fs::read(p).unwrap())
        })
        .collect();
    out.push(
        b"REGISTER sip:tandem.local SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5070;rport;branch=z9hG4bKx\r\nTo: <sip:alice@tandem.local>\r\nFrom: <sip:alice@tandem.local>;tag=1\r\nCall-ID: c\r\nCSeq: 2 REGISTER\r\nContact: <sip:alice@192.0.2.1:5070;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-000000000001>\";reg-id=1;pn-provider=apns;pn-prid=abc\r\nAuthorization: Digest username=\"alice\", realm=\"tandem.local\", nonce=\"n\", uri=\"sip:tandem.local\", response=\"0\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"x\"\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    );
    out
}

/// Runs every decoder over `data`; only panics matter.
fn exercise(data: &[u8]) {
    let _ = frame_stream(data, 16 * 1024);
    if let Ok(m) = Message::parse(data) {
        let _ = m.validate_request();
        let _ = m.validate_response();
        let _ = m.vias();
        let _ = m.cseq();
        if let Some(t) = m.to() {
            if let Some(u) = SipUri::parse(t.uri) {
                let _ = u.user_decoded();
            }
        }
        if let Ok(list) = m.list(HeaderName::Contact) {
            for c in list {
                if let Some(na) = name_addr(c) {
                    let _ = SipUri::parse(na.uri);
                }
            }
        }
        for h in &m.headers {
            let _ = AuthParams::parse(&h.value);
            let _ = Via::parse(&h.value);
            let _ = cseq(&h.value);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = name_addr(s);
        let _ = SipUri::parse(s);
        let _ = AuthParams::parse(s);
    }
}

#[test]
fn truncations_of_every_fixture() {
    for msg in corpus() {
        for cut in 0..=msg.len() {
            exercise(&msg[..cut]);
        }
    }
}

#[test]
fn bit_flips_and_random_mutations_bounded() {
    let corpus = corpus();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ec0_4475);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut runs = 0u64;
    while Instant::now() < deadline && runs < 200_000 {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let mut m = base.clone();
        for _ in 0..rng.random_range(1..8) {
            if m.is_empty() {
                break;
            }
            let i = rng.random_range(0..m.len());
            match rng.random_range(0..5) {
                0 => m[i] ^= 1 << rng.random_range(0..8),
                1 => m[i] = rng.random(),
                2 => {
                    m.remove(i);
                }
                3 => {
                    let set = b"\r\n:;,\"<>\\ %";
                    m.insert(i, set[rng.random_range(0..set.len())]);
                }
                _ => m.truncate(i),
            }
        }
        exercise(&m);
        runs += 1;
    }
    assert!(runs > 1000, "only {runs} mutations ran");
}

#[test]
fn random_bytes_bounded() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let len = rng.random_range(0..512);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        exercise(&data);
    }
    // Structured noise: valid start line, random header soup.
    for _ in 0..20_000 {
        let mut data = b"REGISTER sip:a SIP/2.0\r\n".to_vec();
        for _ in 0..rng.random_range(0..40) {
            let set = b"Via:CSeqTo<>\"\\;,= \t\r\nm:l:0123456789%";
            data.push(set[rng.random_range(0..set.len())]);
        }
        data.extend_from_slice(b"\r\n\r\n");
        exercise(&data);
    }
}
