//! Hostile input: random, truncated and bit-flipped packets into every decoder and into
//! the server for a bounded time, then the server must still answer. Plus the
//! specific packets and peer addresses the project keeps as regressions.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, RngCore, SeedableRng};
use tandem_relay::stun::attr;
use tandem_relay::stun::{address, integrity, method, ChannelData, Message, MessageWriter};
use tandem_relay::turn::request::{password_algorithms, Request};
use tandem_relay::turn::{
    amplification_budget, ClientOutput, Config, PeerPolicy, Server, PEER_HEADROOM,
};

const BUDGET: Duration = Duration::from_millis(1500);
const MAX_CASES: u64 = 400_000;

fn config() -> Config {
    Config {
        users: vec![("alice".into(), "wonderland".into())],
        ..Config::default()
    }
}

fn udp(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
}

/// Every decoder on one input; must not panic.
fn decode_all(p: &[u8]) {
    if let Ok(m) = Message::decode(p) {
        for a in m.attributes() {
            let _ = address::decode_xor(a.value, m.transaction_id());
            let _ = address::decode_plain(a.value);
            if let Some(it) = password_algorithms(a.value) {
                it.for_each(drop);
            }
            let _ = integrity::verify_sha1(&m, &a, b"k");
            let _ = integrity::verify_sha256(&m, &a, b"k");
            let _ = integrity::verify_fingerprint(&m, &a);
        }
        let r = Request::parse(m);
        let _ = r.peers().count();
    }
    let _ = ChannelData::decode(p);
    // The stream framer: frames it cuts stay inside the input and the maximum.
    let mut rest = p;
    while let Ok(Some(f)) = tandem_relay::stun::framing::next_frame(rest, 1024) {
        assert!(f.len <= f.consumed && f.consumed <= rest.len() && f.consumed <= 1024);
        assert_eq!(f.consumed % 4, 0);
        rest = &rest[f.consumed..];
    }
}

/// Valid packets to mutate.
fn seeds(
    c: &mut Client,
    srv: &mut Server,
    ports: &mut FakePorts,
    now: tandem_relay::turn::Now,
) -> Vec<Vec<u8>> {
    let r = c.request(srv, now, ports, method::ALLOCATE, &udp);
    assert_eq!(error_code(&r), None);
    let mut v = vec![
        c.build(method::BINDING, [1; 12], &|_| {}, false, true),
        c.build(method::ALLOCATE, [2; 12], &udp, true, true),
        c.build(
            method::REFRESH,
            [3; 12],
            &|w| w.u32_attr(attr::LIFETIME, 700).unwrap(),
            true,
            true,
        ),
        c.build(
            method::CREATE_PERMISSION,
            [4; 12],
            &|w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, &"8.8.8.8:1".parse().unwrap())
                    .unwrap()
            },
            true,
            true,
        ),
        c.build(
            method::CHANNEL_BIND,
            [5; 12],
            &|w| {
                w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).unwrap();
                w.xor_address(attr::XOR_PEER_ADDRESS, &"8.8.8.8:1".parse().unwrap())
                    .unwrap();
            },
            true,
            true,
        ),
        vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
        r,
    ];
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::new(&mut buf, 0x0016, &[6; 12]).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, &"8.8.8.8:1".parse().unwrap())
        .unwrap();
    w.attr(attr::DATA, b"payload").unwrap();
    let n = w.finish();
    v.push(buf[..n].to_vec());
    v
}

fn mutate(rng: &mut rand::rngs::StdRng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    match rng.random_range(0..5) {
        0 => {
            let n = rng.random_range(0..=p.len());
            p.truncate(n);
        }
        1 => {
            for _ in 0..rng.random_range(1..4) {
                if p.is_empty() {
                    break;
                }
                let i = rng.random_range(0..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
            }
        }
        2 => {
            // Corrupt a length field (header or an attribute's).
            if p.len() >= 4 {
                let i = (rng.random_range(0..p.len() / 4)) * 4 + 2;
                if i + 1 < p.len() {
                    p[i] = rng.random();
                    p[i + 1] = rng.random();
                }
            }
        }
        3 => {
            let extra = rng.random_range(1..16);
            for _ in 0..extra {
                p.push(rng.random());
            }
        }
        _ => {
            let n = rng.random_range(0..96);
            p = vec![0; n];
            rng.fill_bytes(&mut p);
            if n > 0 && rng.random_bool(0.5) {
                p[0] &= 0x3F; // looks like STUN
                if n >= 8 {
                    p[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
                }
            }
        }
    }
    p
}

#[test]
fn decoders_survive_random_truncated_and_flipped_input() {
    let (mut srv, mut ports, now) = (
        Server::new(config(), t0(), [1; 32]),
        FakePorts::default(),
        t0(),
    );
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let seeds = seeds(&mut c, &mut srv, &mut ports, now);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7A4D);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < BUDGET && n < MAX_CASES {
        let s = &seeds[rng.random_range(0..seeds.len())];
        let p = mutate(&mut rng, s);
        decode_all(&p);
        n += 1;
    }
    assert!(n > 1000, "ran {n} cases");
    eprintln!("decoders: {n} cases in {:?}", start.elapsed());
}

#[test]
fn server_survives_hostile_packets_and_keeps_answering() {
    let now = t0();
    let (mut srv, mut ports) = (Server::new(config(), now, [1; 32]), FakePorts::default());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let seeds = seeds(&mut c, &mut srv, &mut ports, now);
    let id = srv.allocation_of(&c.tuple).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xBAD);
    let start = Instant::now();
    let mut n = 0u64;
    let mut out = vec![0u8; 1500];
    let mut pb = vec![0u8; PEER_HEADROOM + 2048];
    while start.elapsed() < BUDGET && n < MAX_CASES {
        let s = &seeds[rng.random_range(0..seeds.len())];
        let p = mutate(&mut rng, s);
        // Same tuple as the allocation, or a stranger.
        let tuple = if rng.random_bool(0.7) {
            c.tuple
        } else {
            tandem_relay::turn::FiveTuple {
                local: c.tuple.local,
                client: format!("198.51.100.7:{}", rng.random_range(1..65535u32))
                    .parse()
                    .unwrap(),
                transport: tandem_relay::turn::Transport::Udp,
            }
        };
        let t = now.advance(Duration::from_millis(n % 5000));
        let o = srv.handle_client(t, tuple, &p, &mut out, &mut ports);
        match o {
            ClientOutput::Reply { len } | ClientOutput::ReplyTo { len, .. } => {
                assert!(len <= out.len())
            }
            ClientOutput::Forward { payload, .. } => assert!(payload.end <= p.len()),
            ClientOutput::None => {}
        }
        // And from the peer side.
        let len = rng.random_range(0..200usize);
        rng.fill_bytes(&mut pb[PEER_HEADROOM..PEER_HEADROOM + len]);
        let _ = srv.handle_peer(
            t,
            id,
            "8.8.8.8:1".parse().unwrap(),
            &mut pb,
            PEER_HEADROOM..PEER_HEADROOM + len,
        );
        srv.handle_timeout(t, &mut ports);
        n += 1;
    }
    eprintln!("server: {n} cases in {:?}", start.elapsed());
    // Still answering a Binding and a fresh authenticated Allocate.
    let later = now.advance(Duration::from_secs(5));
    let b = c.build(method::BINDING, [9; 12], &|_| {}, false, false);
    let (_, r) = c.send(&mut srv, later, &mut ports, &b);
    assert_eq!(error_code(&r), None);
    let mut d = Client::new("198.51.100.2:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&d.request(&mut srv, later, &mut ports, method::ALLOCATE, &udp)),
        None
    );
}

#[test]
fn twenty_nine_byte_binding_with_unpadded_username() {
    let mut p = vec![0x00, 0x01, 0x00, 0x09, 0x21, 0x12, 0xA4, 0x42];
    p.extend_from_slice(&[0xAB; 12]);
    p.extend_from_slice(&[0x00, 0x06, 0x00, 0x05, b'a', b'l', b'i', b'c', b'e']);
    assert_eq!(p.len(), 29);
    decode_all(&p);
    let now = t0();
    let (mut srv, mut ports) = (Server::new(config(), now, [1; 32]), FakePorts::default());
    let c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(c.send(&mut srv, now, &mut ports, &p).0, ClientOutput::None);
    // Also with the header claiming the padded length (a truncated datagram).
    p[3] = 12;
    assert_eq!(c.send(&mut srv, now, &mut ports, &p).0, ClientOutput::None);
    let b = c.build(method::BINDING, [9; 12], &|_| {}, false, false);
    assert_eq!(error_code(&c.send(&mut srv, now, &mut ports, &b).1), None);
}

fn permission_code(policy: PeerPolicy, peer: &str) -> (Option<u16>, Option<u16>) {
    let now = t0();
    let cfg = Config { policy, ..config() };
    let (mut srv, mut ports) = (Server::new(cfg, now, [1; 32]), FakePorts::default());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&c.request(&mut srv, now, &mut ports, method::ALLOCATE, &udp)),
        None
    );
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    let r1 = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &move |w| w.xor_address(attr::XOR_PEER_ADDRESS, &peer).unwrap(),
    );
    let r2 = c.request(&mut srv, now, &mut ports, method::CHANNEL_BIND, &move |w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer).unwrap();
    });
    (error_code(&r1), error_code(&r2))
}

#[test]
fn special_peer_addresses_are_refused_with_403() {
    for p in [
        "[::ffff:127.0.0.1]:5000",
        "0.0.0.0:5000",
        "[::]:5000",
        "[::1]:5000",
        "[64:ff9b::7f00:1]:5000",
        "169.254.169.254:80",
        "127.0.0.1:5000",
        "10.0.0.1:5000",
        "[fe80::1]:5000",
    ] {
        assert_eq!(
            permission_code(PeerPolicy::default(), p),
            (Some(403), Some(403)),
            "{p}"
        );
    }
    // With loopback allowed, loopback forms pass but unspecified and metadata do not.
    let lo = PeerPolicy {
        allow_loopback: true,
        ..Default::default()
    };
    assert_eq!(
        permission_code(lo.clone(), "[::ffff:127.0.0.1]:5000"),
        (None, None)
    );
    assert_eq!(
        permission_code(lo.clone(), "[64:ff9b::7f00:1]:5000"),
        (None, None)
    );
    assert_eq!(
        permission_code(lo.clone(), "0.0.0.0:5000"),
        (Some(403), Some(403))
    );
    assert_eq!(
        permission_code(lo.clone(), "[::]:5000"),
        (Some(403), Some(403))
    );
    assert_eq!(
        permission_code(lo.clone(), "169.254.169.254:80"),
        (Some(403), Some(403))
    );
    // An IPv6 loopback peer on an IPv4 allocation: family mismatch after the policy.
    assert_eq!(
        permission_code(lo.clone(), "[::1]:5000"),
        (Some(443), Some(443))
    );
    // The relay's own listening address is never a peer, even when allowed.
    let own = PeerPolicy {
        allow_loopback: true,
        allowed: vec!["192.0.2.0/24".parse().unwrap()],
        own: vec![LISTEN.parse().unwrap()],
        ..Default::default()
    };
    assert_eq!(permission_code(own.clone(), LISTEN), (Some(403), Some(403)));
    assert_eq!(permission_code(own, "192.0.2.100:5000"), (None, None));
    // A public peer is fine.
    assert_eq!(
        permission_code(PeerPolicy::default(), "8.8.8.8:53"),
        (None, None)
    );
}

#[test]
fn attributes_after_message_integrity_are_ignored() {
    let now = t0();
    let (mut srv, mut ports) = (Server::new(config(), now, [1; 32]), FakePorts::default());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&c.request(&mut srv, now, &mut ports, method::ALLOCATE, &udp)),
        None
    );
    // Refresh whose only LIFETIME (0) comes after MESSAGE-INTEGRITY.
    let key = c.creds.key();
    let nonce = c.nonce.clone().unwrap();
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(&mut buf, 0x0004, &[0x31; 12]).unwrap();
    w.attr(attr::USERNAME, b"alice").unwrap();
    w.attr(attr::REALM, b"tandem").unwrap();
    w.attr(attr::NONCE, &nonce).unwrap();
    w.integrity_sha1(key.as_slice()).unwrap();
    w.u32_attr(attr::LIFETIME, 0).unwrap();
    // And an unknown comprehension-required attribute, also ignored there.
    w.attr(0x0031, &[0; 4]).unwrap();
    let n = w.finish();
    let (_, r) = c.send(&mut srv, now, &mut ports, &buf[..n]);
    assert_eq!(
        error_code(&r),
        None,
        "integrity still verifies over the prefix"
    );
    assert_eq!(
        u32_attr(&r, attr::LIFETIME),
        Some(600),
        "LIFETIME 0 after MI not acted on"
    );
    assert_eq!(srv.allocation_count(), 1);
}

#[test]
fn unauthenticated_answers_stay_within_the_amplification_budget() {
    // Except the Binding success's XOR-MAPPED-ADDRESS (the minimum RFC 8489 answer)
    // and the rate-limited 401/438 challenge that must carry REALM and NONCE.
    let now = t0();
    let (mut srv, mut ports) = (Server::new(config(), now, [1; 32]), FakePorts::default());
    let c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut out = vec![0u8; 1500];
    for i in 0..5000u32 {
        let m = [
            method::BINDING,
            method::ALLOCATE,
            method::REFRESH,
            0x00B,
            0x0FF,
        ][(i % 5) as usize];
        let unknown = rng.random_bool(0.5);
        let malformed = rng.random_bool(0.3);
        let p = c.build(
            m,
            [i as u8; 12],
            &move |w| {
                if unknown {
                    w.attr(0x0031, &[]).unwrap();
                }
                if malformed {
                    w.attr(attr::LIFETIME, &[1]).unwrap();
                }
            },
            false,
            rng.random_bool(0.5),
        );
        let tuple = tandem_relay::turn::FiveTuple {
            local: c.tuple.local,
            client: format!("198.51.100.{}:1", i % 200).parse().unwrap(),
            transport: tandem_relay::turn::Transport::Udp,
        };
        if let ClientOutput::Reply { len } = srv.handle_client(now, tuple, &p, &mut out, &mut ports)
        {
            let r = &out[..len];
            let code = error_code(r);
            let challenge = matches!(code, Some(401) | Some(438));
            let binding_ok = m == method::BINDING && code.is_none();
            if binding_ok {
                assert!(len <= 44);
            } else if !challenge {
                assert!(
                    len <= amplification_budget(p.len()),
                    "answer {len} > budget of request {} (code {code:?})",
                    p.len()
                );
                assert!(len <= 3 * p.len() && len <= 512);
            }
        }
    }
}

#[test]
fn binding_with_unknown_attribute_gets_its_420_even_when_larger_than_the_request() {
    // The smallest such request: a header and one empty comprehension-required
    // attribute (24 bytes). The 420 with its reason phrase and UNKNOWN-ATTRIBUTES
    // is 56 bytes: more than the request, within three times it.
    let now = t0();
    let (mut srv, mut ports) = (Server::new(config(), now, [1; 32]), FakePorts::default());
    let c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    for (fingerprint, unknown) in [(false, 1usize), (true, 1), (false, 8), (true, 8)] {
        let p = c.build(
            method::BINDING,
            [7; 12],
            &move |w| {
                for t in 0..unknown {
                    w.attr(0x0031 + t as u16, &[]).unwrap();
                }
            },
            false,
            fingerprint,
        );
        let (_, r) = c.send(&mut srv, now, &mut ports, &p);
        assert_eq!(
            error_code(&r),
            Some(420),
            "fp {fingerprint} unknown {unknown}"
        );
        assert!(r.len() > p.len(), "{} vs {}", r.len(), p.len());
        let m = Message::decode(&r).unwrap();
        let listed = m.get(attr::UNKNOWN_ATTRIBUTES).unwrap().value;
        assert_eq!(listed.len(), 2 * unknown);
        assert_eq!(&listed[..2], &[0x00, 0x31]);
        // The reason phrase is kept.
        let ec = m.get(attr::ERROR_CODE).unwrap().value;
        assert_eq!(&ec[4..], b"Unknown Attribute");
        assert_eq!(m.get(attr::FINGERPRINT).is_some(), fingerprint);
    }
    // CHANGE-REQUEST (RFC 5780, 0x0003), which `turnutils_stunclient -f` sends: 420.
    let p = c.build(
        method::BINDING,
        [8; 12],
        &|w| w.attr(0x0003, &[0, 0, 0, 6]).unwrap(),
        false,
        false,
    );
    let (_, r) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(error_code(&r), Some(420));
}

#[test]
fn amplification_budget_is_three_times_capped_at_512() {
    assert_eq!(amplification_budget(20), 60);
    assert_eq!(amplification_budget(24), 72);
    assert_eq!(amplification_budget(170), 510);
    assert_eq!(amplification_budget(171), 512);
    assert_eq!(amplification_budget(65_535), 512);
    assert_eq!(amplification_budget(usize::MAX), 512);
}

#[test]
fn response_port_sends_the_binding_answer_to_that_port_of_the_same_ip() {
    // What `turnutils_stunclient -f` sends second: RESPONSE-PORT and CHANGE-REQUEST;
    // it then listens on the response port only. No alternate address here, so
    // CHANGE-REQUEST gets a 420 (RFC 5780 section 7.2), sent to that port.
    let now = t0();
    let (mut srv, mut ports) = (Server::new(config(), now, [1; 32]), FakePorts::default());
    let c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let mut out = vec![0u8; 1500];
    let p = c.build(
        method::BINDING,
        [9; 12],
        &|w| {
            w.attr(attr::RESPONSE_PORT, &[0x9c, 0x41, 0, 0]).unwrap();
            w.attr(0x0003, &[0, 0, 0, 6]).unwrap();
        },
        false,
        false,
    );
    let ClientOutput::ReplyTo { len, to } =
        srv.handle_client(now, c.tuple, &p, &mut out, &mut ports)
    else {
        panic!("an answer to the response port");
    };
    assert_eq!(to, "198.51.100.1:40001".parse().unwrap());
    assert_eq!(error_code(&out[..len]), Some(420));
    // Without CHANGE-REQUEST: the success, to the response port too.
    let p = c.build(
        method::BINDING,
        [10; 12],
        &|w| w.attr(attr::RESPONSE_PORT, &[0x9c, 0x41, 0, 0]).unwrap(),
        false,
        false,
    );
    let ClientOutput::ReplyTo { len, to } =
        srv.handle_client(now, c.tuple, &p, &mut out, &mut ports)
    else {
        panic!("an answer to the response port");
    };
    assert_eq!(to.port(), 40001);
    assert_eq!(error_code(&out[..len]), None);
}
