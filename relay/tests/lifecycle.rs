//! Allocation lifecycle of the sans-IO core on a virtual clock.

mod common;

use std::net::SocketAddr;

use common::*;
use tandem_relay::stun::attr::{self, algorithm};
use tandem_relay::stun::integrity;
use tandem_relay::stun::{address, method, Class, Message, MessageWriter};
use tandem_relay::turn::auth::rest_password;
use tandem_relay::turn::{ClientOutput, Config, Now, PeerOutput, Quotas, Server, PEER_HEADROOM};

const PEER_A: &str = "8.8.4.4:5000";
const PEER_B: &str = "8.8.8.8:6000";

fn config() -> Config {
    Config {
        users: vec![
            ("alice".into(), "wonderland".into()),
            ("bob".into(), "builder".into()),
        ],
        ..Config::default()
    }
}

fn server(cfg: Config) -> (Server, FakePorts, Now) {
    let now = t0();
    (Server::new(cfg, now, [42; 32]), FakePorts::default(), now)
}

fn udp(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
}

fn peer_attr(peer: &'static str) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
            .unwrap()
    }
}

fn allocate(c: &mut Client, srv: &mut Server, now: Now, ports: &mut FakePorts) -> Vec<u8> {
    c.request(srv, now, ports, method::ALLOCATE, &udp)
}

/// Verify the response integrity with the client's key (SHA-1 or SHA-256).
fn assert_signed(resp: &[u8], c: &Client) {
    let m = Message::decode(resp).unwrap();
    let key = c.creds.key();
    if c.creds.sha256_mi {
        let a = m.get(attr::MESSAGE_INTEGRITY_SHA256).expect("MI-SHA256");
        assert!(integrity::verify_sha256(&m, &a, key.as_slice()));
    } else {
        let a = m.get(attr::MESSAGE_INTEGRITY).expect("MI");
        assert!(integrity::verify_sha1(&m, &a, key.as_slice()));
    }
}

#[test]
fn challenge_then_allocate_refresh_and_expiry() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    // Unauthenticated: 401 with REALM, NONCE (security feature cookie), PASSWORD-ALGORITHMS.
    let tid = c.tid();
    let p = c.build(method::ALLOCATE, tid, &udp, false, true);
    let (_, r) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(error_code(&r), Some(401));
    let m = Message::decode(&r).unwrap();
    assert!(m.get(attr::NONCE).unwrap().value.starts_with(b"obMatJos2"));
    assert_eq!(m.get(attr::REALM).unwrap().value, b"tandem");
    assert_eq!(
        m.get(attr::PASSWORD_ALGORITHMS).unwrap().value,
        [0, 2, 0, 0, 0, 1, 0, 0]
    );
    assert_eq!(
        srv.allocation_count(),
        0,
        "no state for an unauthenticated request"
    );

    let r = allocate(&mut c, &mut srv, now, &mut ports);
    assert_eq!(error_code(&r), None);
    assert_signed(&r, &c);
    assert_eq!(u32_attr(&r, attr::LIFETIME), Some(600));
    assert_eq!(xor_addr(&r, attr::XOR_MAPPED_ADDRESS), Some(c.tuple.client));
    let relayed = xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(srv.allocation_count(), 1);
    assert_eq!(ports.open.values().next(), Some(&relayed));

    // An independent decoder validates the long-term integrity of our response.
    {
        use stun_rs::{
            Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageDecoderBuilder,
        };
        let key = HMACKey::new_long_term(
            "alice",
            "tandem",
            "wonderland",
            Algorithm::from(AlgorithmId::MD5),
        )
        .unwrap();
        let ctx = DecoderContextBuilder::default()
            .with_key(key)
            .with_validation()
            .build();
        let dec = MessageDecoderBuilder::default().with_context(ctx).build();
        dec.decode(&r)
            .expect("stun-rs validates our Allocate response");
    }

    // Lifetimes are clamped to [default, max].
    let lt = |v: u32| move |w: &mut MessageWriter<'_>| w.u32_attr(attr::LIFETIME, v).unwrap();
    let r = c.request(&mut srv, now, &mut ports, method::REFRESH, &lt(1200));
    assert_eq!(u32_attr(&r, attr::LIFETIME), Some(1200));
    let r = c.request(&mut srv, now, &mut ports, method::REFRESH, &lt(99_999));
    assert_eq!(u32_attr(&r, attr::LIFETIME), Some(3600));
    let r = c.request(&mut srv, now, &mut ports, method::REFRESH, &lt(10));
    assert_eq!(u32_attr(&r, attr::LIFETIME), Some(600));

    // Expiry: still there just before, gone after, socket closed.
    let t = now.advance(secs(599));
    srv.handle_timeout(t, &mut ports);
    assert_eq!(srv.allocation_count(), 1);
    assert!(srv.poll_timeout().is_some());
    let t = now.advance(secs(601));
    srv.handle_timeout(t, &mut ports);
    assert_eq!(srv.allocation_count(), 0);
    assert_eq!(ports.closed.len(), 1);
    assert!(ports.open.is_empty());

    // Refresh without an allocation: 437 (after a 438 for the old nonce).
    let r = c.request(&mut srv, t, &mut ports, method::REFRESH, &lt(600));
    assert_eq!(error_code(&r), Some(437));
}

#[test]
fn refresh_zero_deletes_and_retransmit_and_mismatch() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let r = allocate(&mut c, &mut srv, now, &mut ports);
    assert_eq!(error_code(&r), None);
    // Retransmission of the same Allocate (same transaction id) gets the same answer.
    let tid = [7u8; 12];
    let mut t = [0u8; 12];
    t.copy_from_slice(&Message::decode(&r).unwrap().transaction_id()[..]);
    let p = c.build(method::ALLOCATE, t, &udp, true, true);
    let (_, r2) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(error_code(&r2), None);
    assert_eq!(
        xor_addr(&r2, attr::XOR_RELAYED_ADDRESS),
        xor_addr(&r, attr::XOR_RELAYED_ADDRESS)
    );
    // A new Allocate on the same 5-tuple: 437.
    let p = c.build(method::ALLOCATE, tid, &udp, true, true);
    let (_, r3) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(error_code(&r3), Some(437));
    // Another user on the same 5-tuple: 441.
    let mut bob = Client::new("198.51.100.1:40000", Creds::md5("bob", "builder"));
    bob.nonce = c.nonce.clone();
    let r = bob.request(&mut srv, now, &mut ports, method::REFRESH, &|_| {});
    assert_eq!(error_code(&r), Some(441));
    // Refresh 0 deletes.
    let r = c.request(&mut srv, now, &mut ports, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(u32_attr(&r, attr::LIFETIME), Some(0));
    assert_eq!(srv.allocation_count(), 0);
    assert!(ports.open.is_empty());
}

#[test]
fn transport_and_attribute_errors() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]).unwrap()
    });
    assert_eq!(error_code(&r), Some(442));
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|_| {});
    assert_eq!(error_code(&r), Some(400));
    // Unknown comprehension-required attribute: 420 listing it.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        udp(w);
        w.attr(0x0031, &[1, 2, 3, 4]).unwrap();
    });
    assert_eq!(error_code(&r), Some(420));
    let m = Message::decode(&r).unwrap();
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES).unwrap().value, [0x00, 0x31]);
    // DONT-FRAGMENT when the driver cannot set DF: 420 naming DONT-FRAGMENT.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        udp(w);
        w.attr(attr::DONT_FRAGMENT, &[]).unwrap();
    });
    assert_eq!(error_code(&r), Some(420));
    assert_eq!(
        Message::decode(&r)
            .unwrap()
            .get(attr::UNKNOWN_ATTRIBUTES)
            .unwrap()
            .value,
        [0x00, 0x1A]
    );
    // IPv6 relay not offered by this driver: 440.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        udp(w);
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(error_code(&r), Some(440));
    // No ports: 508.
    ports.exhausted = true;
    let r = allocate(&mut c, &mut srv, now, &mut ports);
    assert_eq!(error_code(&r), Some(508));
    assert_eq!(srv.allocation_count(), 0);
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let (mut srv, mut ports, now) = server(config());
    for creds in [Creds::md5("alice", "wrong"), Creds::md5("mallory", "x")] {
        let mut c = Client::new("198.51.100.1:40000", creds);
        let _ = allocate(&mut c, &mut srv, now, &mut ports); // fetch nonce
        let tid = c.tid();
        let p = c.build(method::ALLOCATE, tid, &udp, true, false);
        let (_, r) = c.send(&mut srv, now, &mut ports, &p);
        assert_eq!(error_code(&r), Some(401));
    }
    assert_eq!(srv.allocation_count(), 0);
    assert!(srv.stats().auth_failures >= 2);
}

#[test]
fn stale_nonce_is_438_and_reauthentication_works() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&allocate(&mut c, &mut srv, now, &mut ports)),
        None
    );
    let old_nonce = c.nonce.clone().unwrap();
    let later = now.advance(secs(601));
    let tid = c.tid();
    let p = c.build(method::REFRESH, tid, &|_| {}, true, false);
    let (_, r) = c.send(&mut srv, later, &mut ports, &p);
    assert_eq!(error_code(&r), Some(438));
    let new_nonce = Message::decode(&r)
        .unwrap()
        .get(attr::NONCE)
        .unwrap()
        .value
        .to_vec();
    assert_ne!(new_nonce, old_nonce);
    c.nonce = Some(new_nonce);
    let tid = c.tid();
    let p = c.build(method::REFRESH, tid, &|_| {}, true, false);
    let (_, r) = c.send(&mut srv, later, &mut ports, &p);
    assert_eq!(error_code(&r), None);
    // A nonce minted for another client address is not accepted.
    let mut other = Client::new("198.51.100.2:40000", Creds::md5("alice", "wonderland"));
    other.nonce = c.nonce.clone();
    let tid = other.tid();
    let p = other.build(method::ALLOCATE, tid, &udp, true, false);
    let (_, r) = other.send(&mut srv, later, &mut ports, &p);
    assert_eq!(error_code(&r), Some(401));
}

#[test]
fn sha256_password_algorithm_and_userhash() {
    let (mut srv, mut ports, now) = server(config());
    let mut creds = Creds::md5("alice", "wonderland");
    creds.algorithm = Some(algorithm::SHA256);
    creds.sha256_mi = true;
    let mut c = Client::new("198.51.100.1:40000", creds.clone());
    let r = allocate(&mut c, &mut srv, now, &mut ports);
    assert_eq!(error_code(&r), None);
    assert_signed(&r, &c);
    assert!(Message::decode(&r)
        .unwrap()
        .get(attr::MESSAGE_INTEGRITY)
        .is_none());

    // SHA-256 key with classic MESSAGE-INTEGRITY also works.
    let mut creds2 = creds.clone();
    creds2.sha256_mi = false;
    let mut c2 = Client::new("198.51.100.1:40001", creds2);
    assert_eq!(
        error_code(&allocate(&mut c2, &mut srv, now, &mut ports)),
        None
    );

    // USERHASH instead of USERNAME.
    let mut creds3 = creds.clone();
    creds3.userhash = true;
    let mut c3 = Client::new("198.51.100.1:40002", creds3);
    let r = allocate(&mut c3, &mut srv, now, &mut ports);
    assert_eq!(error_code(&r), None);
    assert_signed(&r, &c3);

    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS: 400.
    let mut c4 = Client::new("198.51.100.1:40003", Creds::md5("alice", "wonderland"));
    let _ = allocate(&mut c4, &mut srv, now, &mut ports);
    let mut c5 = Client::new("198.51.100.1:40004", Creds::md5("alice", "wonderland"));
    c5.nonce = Some(c4.nonce.clone().unwrap());
    let nonce = c5.nonce.clone().unwrap();
    let key = c5.creds.key();
    let tid = c5.tid();
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(&mut buf, 0x0003, &tid).unwrap();
    udp(&mut w);
    w.attr(attr::USERNAME, b"alice").unwrap();
    w.attr(attr::REALM, b"tandem").unwrap();
    w.attr(attr::NONCE, &nonce).unwrap();
    w.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]).unwrap();
    w.integrity_sha1(key.as_slice()).unwrap();
    let n = w.finish();
    // The nonce was minted for c4's address, so use c4's tuple.
    let (_, r) = c4.send(&mut srv, now, &mut ports, &buf[..n]);
    assert_eq!(error_code(&r), Some(400));
}

#[test]
fn nonce_advertises_userhash_only_when_static_users_exist() {
    // The nonce's security-feature bits (RFC 8489 section 9.2): "password
    // algorithms" always; "username anonymity" only when a USERHASH can name a user.
    for (users, cookie) in [
        (
            vec![("alice".into(), "wonderland".into())],
            &b"obMatJos2wAAA"[..],
        ),
        (Vec::new(), &b"obMatJos2gAAA"[..]),
    ] {
        let cfg = Config {
            users,
            auth_secrets: vec!["secret".into()],
            ..config()
        };
        let (mut srv, mut ports, now) = server(cfg);
        let user = format!("{}:carol", now.unix_secs + 3600);
        let pw = rest_password(b"secret", user.as_bytes());
        let mut c = Client::new("198.51.100.1:40000", Creds::md5(&user, &pw));
        let tid = c.tid();
        let p = c.build(method::ALLOCATE, tid, &udp, false, false);
        let (_, r) = c.send(&mut srv, now, &mut ports, &p);
        assert_eq!(error_code(&r), Some(401));
        let m = Message::decode(&r).unwrap();
        assert!(m.get(attr::NONCE).unwrap().value.starts_with(cookie));
        // REST credentials work under either cookie.
        let r = allocate(&mut c, &mut srv, now, &mut ports);
        assert_eq!(error_code(&r), None);
    }
}

#[test]
fn rest_credentials_rotation_and_expiry() {
    let cfg = Config {
        auth_secrets: vec!["new-secret".into(), "old-secret".into()],
        ..config()
    };
    let (mut srv, mut ports, now) = server(cfg);
    let user = format!("{}:carol", now.unix_secs + 3600);
    for (i, secret) in ["new-secret", "old-secret"].iter().enumerate() {
        let pw = rest_password(secret.as_bytes(), user.as_bytes());
        let mut c = Client::new(
            &format!("198.51.100.1:{}", 41000 + i),
            Creds::md5(&user, &pw),
        );
        let r = allocate(&mut c, &mut srv, now, &mut ports);
        assert_eq!(error_code(&r), None, "secret {secret}");
    }
    // A secret we do not know: 401.
    let pw = rest_password(b"stolen", user.as_bytes());
    let mut c = Client::new("198.51.100.1:41010", Creds::md5(&user, &pw));
    let _ = allocate(&mut c, &mut srv, now, &mut ports);
    let tid = c.tid();
    let (_, r) = c.send(
        &mut srv,
        now,
        &mut ports,
        &c.build(method::ALLOCATE, tid, &udp, true, false),
    );
    assert_eq!(error_code(&r), Some(401));
    // Expired username: 401 even with the right password.
    let expired = format!("{}:carol", now.unix_secs - 1);
    let pw = rest_password(b"new-secret", expired.as_bytes());
    let mut c = Client::new("198.51.100.1:41011", Creds::md5(&expired, &pw));
    let _ = allocate(&mut c, &mut srv, now, &mut ports);
    let tid = c.tid();
    let (_, r) = c.send(
        &mut srv,
        now,
        &mut ports,
        &c.build(method::ALLOCATE, tid, &udp, true, false),
    );
    assert_eq!(error_code(&r), Some(401));
    // A REST credential also stops working on the allocation once it has expired.
    let short = format!("{}:dave", now.unix_secs + 100);
    let pw = rest_password(b"new-secret", short.as_bytes());
    let mut c = Client::new("198.51.100.1:41012", Creds::md5(&short, &pw));
    assert_eq!(
        error_code(&allocate(&mut c, &mut srv, now, &mut ports)),
        None
    );
    let later = now.advance(secs(200));
    let r = c.request(&mut srv, later, &mut ports, method::REFRESH, &|_| {});
    assert_eq!(error_code(&r), Some(401));
}

#[test]
fn permissions_send_and_data_indications_and_timeout() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&allocate(&mut c, &mut srv, now, &mut ports)),
        None
    );
    let id = srv.allocation_of(&c.tuple).unwrap();
    let send = |peer: &'static str, data: &'static [u8]| {
        move |w: &mut MessageWriter<'_>| {
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
                .unwrap();
            w.attr(attr::DATA, data).unwrap();
        }
    };
    // No permission yet: dropped.
    let tid = c.tid();
    let mut buf = vec![0u8; 256];
    let mut w = MessageWriter::new(&mut buf, 0x0016, &tid).unwrap();
    send(PEER_A, b"hello")(&mut w);
    let n = w.finish();
    let ind = buf[..n].to_vec();
    assert_eq!(
        c.send(&mut srv, now, &mut ports, &ind).0,
        ClientOutput::None
    );

    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer_attr(PEER_A),
    );
    assert_eq!(error_code(&r), None);
    let (o, _) = c.send(&mut srv, now, &mut ports, &ind);
    let ClientOutput::Forward {
        allocation,
        peer,
        payload,
    } = o
    else {
        panic!("{o:?}")
    };
    assert_eq!(allocation, id);
    assert_eq!(peer, PEER_A.parse::<SocketAddr>().unwrap());
    assert_eq!(&ind[payload], b"hello");

    // Peer -> client becomes a Data indication written in place in the headroom.
    let mut pb = vec![0u8; PEER_HEADROOM + 64];
    pb[PEER_HEADROOM..PEER_HEADROOM + 5].copy_from_slice(b"world");
    let o = srv.handle_peer(
        now,
        id,
        PEER_A.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 5,
    );
    let PeerOutput::ToClient {
        local,
        client,
        transport,
        range,
    } = o
    else {
        panic!("{o:?}")
    };
    assert_eq!((local, client), (c.tuple.local, c.tuple.client));
    assert_eq!(transport, tandem_relay::turn::Transport::Udp);
    let m = Message::decode(&pb[range.clone()]).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, method::DATA));
    assert_eq!(m.get(attr::DATA).unwrap().value, b"world");
    assert_eq!(
        address::decode_xor(
            m.get(attr::XOR_PEER_ADDRESS).unwrap().value,
            m.transaction_id()
        ),
        Some(PEER_A.parse().unwrap())
    );
    // Also readable by stun-rs.
    {
        let dec = stun_rs::MessageDecoderBuilder::default().build();
        dec.decode(&pb[range])
            .expect("stun-rs decodes our Data indication");
    }
    // Another peer IP has no permission.
    let o = srv.handle_peer(
        now,
        id,
        PEER_B.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 5,
    );
    assert_eq!(o, PeerOutput::None);

    // Permission times out after 300 s.
    let t = now.advance(secs(301));
    srv.handle_timeout(t, &mut ports);
    assert_eq!(c.send(&mut srv, t, &mut ports, &ind).0, ClientOutput::None);
    let o = srv.handle_peer(
        t,
        id,
        PEER_A.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 5,
    );
    assert_eq!(o, PeerOutput::None);
}

#[test]
fn channel_binding_rules_and_expiry() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&allocate(&mut c, &mut srv, now, &mut ports)),
        None
    );
    let id = srv.allocation_of(&c.tuple).unwrap();
    let bind = |n: u16, peer: &'static str| {
        move |w: &mut MessageWriter<'_>| {
            w.attr(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0])
                .unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
                .unwrap();
        }
    };
    let cb = |c: &mut Client,
              srv: &mut Server,
              ports: &mut FakePorts,
              t: Now,
              n: u16,
              p: &'static str| {
        error_code(&c.request(srv, t, ports, method::CHANNEL_BIND, &bind(n, p)))
    };
    assert_eq!(cb(&mut c, &mut srv, &mut ports, now, 0x4000, PEER_A), None);
    // Same number to another peer, or same peer to another number: 400.
    assert_eq!(
        cb(&mut c, &mut srv, &mut ports, now, 0x4000, PEER_B),
        Some(400)
    );
    assert_eq!(
        cb(&mut c, &mut srv, &mut ports, now, 0x4001, PEER_A),
        Some(400)
    );
    // Outside 0x4000-0x7FFF: 400.
    assert_eq!(
        cb(&mut c, &mut srv, &mut ports, now, 0x8000, PEER_B),
        Some(400)
    );
    assert_eq!(
        cb(&mut c, &mut srv, &mut ports, now, 0x3FFF, PEER_B),
        Some(400)
    );

    // ChannelData to the peer: the payload is the datagram minus the 4-byte header.
    let cd = [0x40, 0x00, 0x00, 0x03, b'a', b'b', b'c', 0];
    let (o, _) = c.send(&mut srv, now, &mut ports, &cd);
    assert_eq!(
        o,
        ClientOutput::Forward {
            allocation: id,
            peer: PEER_A.parse().unwrap(),
            payload: 4..7
        }
    );
    // Unbound number: dropped.
    let (o, _) = c.send(&mut srv, now, &mut ports, &[0x40, 0x01, 0, 1, b'x']);
    assert_eq!(o, ClientOutput::None);
    // Peer -> client: ChannelData header written in place in front of the payload.
    let mut pb = vec![0u8; PEER_HEADROOM + 16];
    pb[PEER_HEADROOM..PEER_HEADROOM + 2].copy_from_slice(b"hi");
    let o = srv.handle_peer(
        now,
        id,
        PEER_A.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 2,
    );
    let PeerOutput::ToClient { range, .. } = o else {
        panic!("{o:?}")
    };
    assert_eq!(range, PEER_HEADROOM - 4..PEER_HEADROOM + 2);
    assert_eq!(&pb[range], &[0x40, 0x00, 0x00, 0x02, b'h', b'i']);

    // Rebinding the same pair refreshes (and refreshes the permission): at 500 s the
    // channel still works, at 1101 s (600 s after the refresh + 1) it is gone.
    let t1 = now.advance(secs(500));
    srv.handle_timeout(t1, &mut ports);
    assert_eq!(cb(&mut c, &mut srv, &mut ports, t1, 0x4000, PEER_A), None);
    let r = c.request(&mut srv, t1, &mut ports, method::REFRESH, &|_| {});
    assert_eq!(error_code(&r), None);
    let t2 = now.advance(secs(850));
    srv.handle_timeout(t2, &mut ports);
    // The permission (300 s from t1) has lapsed at t2 even though the channel is bound.
    assert_eq!(c.send(&mut srv, t2, &mut ports, &cd).0, ClientOutput::None);
    let r = c.request(
        &mut srv,
        t2,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer_attr(PEER_A),
    );
    assert_eq!(error_code(&r), None);
    assert!(matches!(
        c.send(&mut srv, t2, &mut ports, &cd).0,
        ClientOutput::Forward { .. }
    ));
    // Let the channel expire (the allocation lives until 1100 s; refresh it).
    let r = c.request(&mut srv, t2, &mut ports, method::REFRESH, &|_| {});
    assert_eq!(error_code(&r), None);
    let t3 = now.advance(secs(1101));
    srv.handle_timeout(t3, &mut ports);
    assert_eq!(c.send(&mut srv, t3, &mut ports, &cd).0, ClientOutput::None);
    // Once expired, the number can be bound to another peer.
    assert_eq!(cb(&mut c, &mut srv, &mut ports, t3, 0x4000, PEER_B), None);
}

#[test]
fn channel_number_ranges_default_and_strict() {
    let bind = |n: u16, peer: &'static str| {
        move |w: &mut MessageWriter<'_>| {
            w.attr(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0])
                .unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
                .unwrap();
        }
    };
    // Default: RFC 5766's 0x4000-0x7FFF, as coturn's client uses it.
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&allocate(&mut c, &mut srv, now, &mut ports)),
        None
    );
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CHANNEL_BIND,
        &bind(0x7FFF, PEER_A),
    );
    assert_eq!(error_code(&r), None);
    let cd = [0x7F, 0xFF, 0x00, 0x01, b'z', 0, 0, 0];
    assert!(matches!(
        c.send(&mut srv, now, &mut ports, &cd).0,
        ClientOutput::Forward { .. }
    ));

    // Strict: only RFC 8656's 0x4000-0x4FFF.
    let (mut srv, mut ports, now) = server(Config {
        strict_channel_numbers: true,
        ..config()
    });
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    assert_eq!(
        error_code(&allocate(&mut c, &mut srv, now, &mut ports)),
        None
    );
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CHANNEL_BIND,
        &bind(0x5000, PEER_A),
    );
    assert_eq!(error_code(&r), Some(400));
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CHANNEL_BIND,
        &bind(0x4FFF, PEER_A),
    );
    assert_eq!(error_code(&r), None);
}

#[test]
fn quotas() {
    let cfg = Config {
        quotas: Quotas {
            allocations_per_user: 2,
            total_allocations: 3,
            permissions_per_allocation: 2,
            channels_per_allocation: 1,
            bytes_per_sec: 1000,
            ..Quotas::default()
        },
        ..config()
    };
    let (mut srv, mut ports, now) = server(cfg);
    let mut clients: Vec<Client> = (0..3)
        .map(|i| {
            Client::new(
                &format!("198.51.100.1:{}", 42000 + i),
                Creds::md5("alice", "wonderland"),
            )
        })
        .collect();
    assert_eq!(
        error_code(&allocate(&mut clients[0], &mut srv, now, &mut ports)),
        None
    );
    assert_eq!(
        error_code(&allocate(&mut clients[1], &mut srv, now, &mut ports)),
        None
    );
    assert_eq!(
        error_code(&allocate(&mut clients[2], &mut srv, now, &mut ports)),
        Some(486)
    );
    let mut b1 = Client::new("198.51.100.2:1", Creds::md5("bob", "builder"));
    let mut b2 = Client::new("198.51.100.2:2", Creds::md5("bob", "builder"));
    assert_eq!(
        error_code(&allocate(&mut b1, &mut srv, now, &mut ports)),
        None
    );
    assert_eq!(
        error_code(&allocate(&mut b2, &mut srv, now, &mut ports)),
        Some(508)
    );
    // Freeing one lets the next in.
    let r = clients[0].request(&mut srv, now, &mut ports, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(
        error_code(&allocate(&mut clients[2], &mut srv, now, &mut ports)),
        None
    );

    let c = &mut clients[1];
    let r = c.request(&mut srv, now, &mut ports, method::CREATE_PERMISSION, &|w| {
        for p in ["8.8.4.4:1", "8.8.8.8:1", "9.9.9.9:1"] {
            w.xor_address(attr::XOR_PEER_ADDRESS, &p.parse().unwrap())
                .unwrap();
        }
    });
    assert_eq!(error_code(&r), Some(508), "3 permissions > quota 2");
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer_attr("8.8.4.4:1"),
    );
    assert_eq!(error_code(&r), None);
    let bind = |n: u8, peer: &'static str| {
        move |w: &mut MessageWriter<'_>| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, n, 0, 0]).unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
                .unwrap();
        }
    };
    assert_eq!(
        error_code(&c.request(
            &mut srv,
            now,
            &mut ports,
            method::CHANNEL_BIND,
            &bind(0, "8.8.4.4:1")
        )),
        None
    );
    assert_eq!(
        error_code(&c.request(
            &mut srv,
            now,
            &mut ports,
            method::CHANNEL_BIND,
            &bind(1, "8.8.4.4:2")
        )),
        Some(508)
    );

    // Bandwidth: 1000 bytes/s, burst one second.
    let mut cd = vec![0x40, 0x00, 0x02, 0x58];
    cd.extend_from_slice(&[0u8; 600]);
    assert!(matches!(
        c.send(&mut srv, now, &mut ports, &cd).0,
        ClientOutput::Forward { .. }
    ));
    assert_eq!(c.send(&mut srv, now, &mut ports, &cd).0, ClientOutput::None);
    let t = now.advance(secs(1));
    assert!(matches!(
        c.send(&mut srv, t, &mut ports, &cd).0,
        ClientOutput::Forward { .. }
    ));
    assert!(srv.stats().dropped_bandwidth >= 1);
}

#[test]
fn even_port_reservation_token() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        udp(w);
        w.attr(attr::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(error_code(&r), None);
    let relayed = xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.port() % 2, 0);
    let token = Message::decode(&r)
        .unwrap()
        .get(attr::RESERVATION_TOKEN)
        .unwrap()
        .value
        .to_vec();
    assert_eq!(token.len(), 8);
    // Token together with EVEN-PORT: 400.
    let mut c2 = Client::new("198.51.100.1:40001", Creds::md5("alice", "wonderland"));
    let tok = token.clone();
    let r = c2.request(&mut srv, now, &mut ports, method::ALLOCATE, &move |w| {
        udp(w);
        w.attr(attr::EVEN_PORT, &[0]).unwrap();
        w.attr(attr::RESERVATION_TOKEN, &tok).unwrap();
    });
    assert_eq!(error_code(&r), Some(400));
    // The token gets the next port.
    let tok = token.clone();
    let r = c2.request(&mut srv, now, &mut ports, method::ALLOCATE, &move |w| {
        udp(w);
        w.attr(attr::RESERVATION_TOKEN, &tok).unwrap();
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(
        xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        relayed.port() + 1
    );
    // Used once only.
    let mut c3 = Client::new("198.51.100.1:40002", Creds::md5("alice", "wonderland"));
    let tok = token.clone();
    let r = c3.request(&mut srv, now, &mut ports, method::ALLOCATE, &move |w| {
        udp(w);
        w.attr(attr::RESERVATION_TOKEN, &tok).unwrap();
    });
    assert_eq!(error_code(&r), Some(508));
    // An unused reservation is released after 30 s.
    let r = c3.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        udp(w);
        w.attr(attr::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(ports.reserved.len(), 1);
    srv.handle_timeout(now.advance(secs(31)), &mut ports);
    assert!(ports.reserved.is_empty());
    assert_eq!(ports.released.len(), 1);
}

#[test]
fn binding_answers_are_small_and_read_by_stun_rs() {
    let (mut srv, mut ports, now) = server(config());
    let c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let p = c.build(method::BINDING, [1; 12], &|_| {}, false, false);
    assert_eq!(p.len(), 20);
    let (_, r) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(r.len(), 32, "XOR-MAPPED-ADDRESS only");
    assert_eq!(xor_addr(&r, attr::XOR_MAPPED_ADDRESS), Some(c.tuple.client));
    let dec = stun_rs::MessageDecoderBuilder::default().build();
    dec.decode(&r)
        .expect("stun-rs decodes our Binding response");
    // With FINGERPRINT in the request (28 bytes) the answer has one too (40 bytes,
    // within three times the request).
    let p = c.build(method::BINDING, [2; 12], &|_| {}, false, true);
    let (_, r) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(r.len(), 40);
    // A larger request (ICE-style, with padding) gets the FINGERPRINT too.
    let p = c.build(
        method::BINDING,
        [3; 12],
        &|w| w.attr(attr::PADDING, &[0; 16]).unwrap(),
        false,
        true,
    );
    let (_, r) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(r.len(), 40);
    let m = Message::decode(&r).unwrap();
    assert!(integrity::verify_fingerprint(
        &m,
        &m.get(attr::FINGERPRINT).unwrap()
    ));
}

#[test]
fn unauthorized_answers_are_rate_limited_per_source() {
    let (mut srv, mut ports, now) = server(config());
    let c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let mut answered = 0;
    for i in 0..200u8 {
        let p = c.build(method::ALLOCATE, [i; 12], &udp, false, false);
        if !c.send(&mut srv, now, &mut ports, &p).1.is_empty() {
            answered += 1;
        }
    }
    let burst = Quotas::default().unauthorized_burst;
    assert_eq!(answered, burst as usize);
    // Another source is not affected.
    let d = Client::new("198.51.100.9:40000", Creds::md5("alice", "wonderland"));
    let p = d.build(method::ALLOCATE, [1; 12], &udp, false, false);
    assert!(!d.send(&mut srv, now, &mut ports, &p).1.is_empty());
    // And the first source gets answers again a second later.
    let p = c.build(method::ALLOCATE, [1; 12], &udp, false, false);
    assert!(!c
        .send(&mut srv, now.advance(secs(1)), &mut ports, &p)
        .1
        .is_empty());
}

/// Servers that share a `QuotaLedger` (one per worker) enforce the per-user and total
/// quotas together, and a freed allocation on one lets an Allocate in on the other.
#[test]
fn shared_quota_ledger_spans_servers() {
    let cfg = Config {
        quotas: Quotas {
            allocations_per_user: 2,
            total_allocations: 3,
            ..Quotas::default()
        },
        ..config()
    };
    let ledger = std::sync::Arc::new(tandem_relay::turn::QuotaLedger::default());
    let (mut a, mut pa, now) = server(cfg.clone());
    let (mut b, mut pb, _) = server(cfg);
    a.share_quota(ledger.clone());
    b.share_quota(ledger);
    let mut alice: Vec<Client> = (0..3)
        .map(|i| {
            Client::new(
                &format!("198.51.100.1:{}", 42000 + i),
                Creds::md5("alice", "wonderland"),
            )
        })
        .collect();
    assert_eq!(
        error_code(&allocate(&mut alice[0], &mut a, now, &mut pa)),
        None
    );
    assert_eq!(
        error_code(&allocate(&mut alice[1], &mut b, now, &mut pb)),
        None
    );
    assert_eq!(
        error_code(&allocate(&mut alice[2], &mut b, now, &mut pb)),
        Some(486),
        "alice's quota of 2 counts both servers"
    );
    let mut b1 = Client::new("198.51.100.2:1", Creds::md5("bob", "builder"));
    let mut b2 = Client::new("198.51.100.2:2", Creds::md5("bob", "builder"));
    assert_eq!(error_code(&allocate(&mut b1, &mut a, now, &mut pa)), None);
    assert_eq!(
        error_code(&allocate(&mut b2, &mut b, now, &mut pb)),
        Some(508),
        "total of 3 counts both servers"
    );
    let r = alice[0].request(&mut a, now, &mut pa, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(
        error_code(&allocate(&mut alice[2], &mut b, now, &mut pb)),
        None
    );
}

#[test]
fn stream_client_gets_padded_channel_data_and_closing_deletes_the_allocation() {
    // A client on a TCP/TLS connection (RFC 8656 section 3.1): same core, a 5-tuple
    // naming the connection; ChannelData towards it is padded to 4 bytes (section
    // 12.5); the allocation goes when the connection closes.
    let (mut srv, mut ports, now) = server(config());
    let mut c = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    c.tuple.transport = tandem_relay::turn::Transport::Stream(7);
    let r = allocate(&mut c, &mut srv, now, &mut ports);
    assert_eq!(error_code(&r), None);
    let id = srv.allocation_of(&c.tuple).unwrap();
    // The same addresses over UDP (or another connection) are another 5-tuple.
    let mut udp_twin = c.tuple;
    udp_twin.transport = tandem_relay::turn::Transport::Udp;
    assert_eq!(srv.allocation_of(&udp_twin), None);
    udp_twin.transport = tandem_relay::turn::Transport::Stream(8);
    assert_eq!(srv.allocation_of(&udp_twin), None);
    let bind = |w: &mut MessageWriter<'_>| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &PEER_A.parse().unwrap())
            .unwrap();
    };
    let r = c.request(&mut srv, now, &mut ports, method::CHANNEL_BIND, &bind);
    assert_eq!(error_code(&r), None);
    // RESPONSE-PORT is ignored on a stream: the answer goes back on it.
    let p = c.build(
        method::BINDING,
        [3; 12],
        &|w| w.attr(attr::RESPONSE_PORT, &[0x9c, 0x41, 0, 0]).unwrap(),
        false,
        false,
    );
    let (o, _) = c.send(&mut srv, now, &mut ports, &p);
    assert!(matches!(o, ClientOutput::Reply { .. }), "{o:?}");
    for (len, padded) in [(5usize, 12usize), (8, 12), (1, 8), (0, 4)] {
        let mut pb = vec![0xEEu8; PEER_HEADROOM + 64];
        let o = srv.handle_peer(
            now,
            id,
            PEER_A.parse().unwrap(),
            &mut pb,
            PEER_HEADROOM..PEER_HEADROOM + len,
        );
        let PeerOutput::ToClient {
            transport, range, ..
        } = o
        else {
            panic!("{o:?}")
        };
        assert_eq!(transport, tandem_relay::turn::Transport::Stream(7));
        assert_eq!(range.len(), padded, "data {len}");
        let m = &pb[range];
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, len);
        assert!(m[4 + len..].iter().all(|b| *b == 0), "zero padding");
    }
    // 401s are not rate-limited on a stream (no reflection; no retransmission
    // either, so a dropped challenge would hang the client).
    let mut s2 = Client::new("198.51.100.1:40001", Creds::md5("alice", "wonderland"));
    s2.tuple.transport = tandem_relay::turn::Transport::Stream(9);
    for i in 0..200u8 {
        let p = s2.build(method::ALLOCATE, [i; 12], &udp, false, false);
        let (_, r) = s2.send(&mut srv, now, &mut ports, &p);
        assert_eq!(error_code(&r), Some(401), "challenge {i}");
    }
    srv.stream_closed(&c.tuple, &mut ports);
    assert_eq!(srv.allocation_count(), 0);
    assert_eq!(ports.closed, vec![id]);
    assert_eq!(srv.stats().allocations_deleted, 1);
    // Closing again, or a connection without an allocation: nothing.
    srv.stream_closed(&c.tuple, &mut ports);
    assert_eq!(srv.stats().allocations_deleted, 1);
}
