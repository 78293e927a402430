//! Address families of relayed addresses (RFC 8656 sections 7.2, 8.2 and 18.11-18.12,
//! RFC 6156): REQUESTED-ADDRESS-FAMILY picks the family, ADDITIONAL-ADDRESS-FAMILY asks
//! for a dual allocation; sans-IO core on a virtual clock with fake ports.

mod common;

use std::net::SocketAddr;

use common::*;
use tandem_relay::stun::attr;
use tandem_relay::stun::{address, method, Class, Message, MessageWriter};
use tandem_relay::turn::{
    AllocationId, ClientOutput, Config, Now, PeerOutput, Quotas, Server, PEER_HEADROOM,
};

const PEER_V4: &str = "8.8.4.4:5000";
const PEER_V6: &str = "[2606:4700::1111]:6000";

fn server(cfg: Config, v4: bool, v6: bool) -> (Server, FakePorts, Now) {
    let now = t0();
    let ports = FakePorts {
        v6,
        no_v4: !v4,
        ..FakePorts::default()
    };
    (Server::new(cfg, now, [42; 32]), ports, now)
}

fn config() -> Config {
    Config {
        users: vec![("alice".into(), "wonderland".into())],
        ..Config::default()
    }
}

fn alice(port: u16) -> Client {
    Client::new(
        &format!("198.51.100.1:{port}"),
        Creds::md5("alice", "wonderland"),
    )
}

fn udp(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
}

fn requested(family: u8) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| {
        udp(w);
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0])
            .unwrap();
    }
}

fn additional(family: u8) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| {
        udp(w);
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family, 0, 0, 0])
            .unwrap();
    }
}

fn peer(p: &'static str) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &p.parse().unwrap())
            .unwrap()
    }
}

/// Every XOR-RELAYED-ADDRESS of a response, in order.
fn relayed(resp: &[u8]) -> Vec<SocketAddr> {
    let m = Message::decode(resp).unwrap();
    m.attributes()
        .filter(|a| a.typ == attr::XOR_RELAYED_ADDRESS)
        .map(|a| address::decode_xor(a.value, m.transaction_id()).unwrap())
        .collect()
}

/// ADDRESS-ERROR-CODE as (family, code).
fn address_error(resp: &[u8]) -> Option<(u8, u16)> {
    let m = Message::decode(resp).unwrap();
    let v = m.get(attr::ADDRESS_ERROR_CODE)?.value;
    Some((v[0], u16::from(v[2] & 7) * 100 + u16::from(v[3])))
}

/// The allocation id whose fake socket is bound to `addr`.
fn socket_id(ports: &FakePorts, addr: SocketAddr) -> AllocationId {
    *ports
        .open
        .iter()
        .find(|(_, a)| **a == addr)
        .expect("an open socket")
        .0
}

#[test]
fn the_family_is_chosen_per_request_and_ipv4_is_the_default() {
    let (mut srv, mut ports, now) = server(config(), true, true);
    let mut c4 = alice(40000);
    let r = c4.request(&mut srv, now, &mut ports, method::ALLOCATE, &udp);
    assert_eq!(error_code(&r), None);
    let a = relayed(&r);
    assert_eq!(a.len(), 1);
    assert!(a[0].is_ipv4(), "no REQUESTED-ADDRESS-FAMILY: IPv4");
    assert_eq!(address_error(&r), None);

    let mut c6 = alice(40001);
    let r = c6.request(&mut srv, now, &mut ports, method::ALLOCATE, &requested(2));
    assert_eq!(error_code(&r), None);
    let a = relayed(&r);
    assert_eq!(a.len(), 1);
    assert!(a[0].is_ipv6());
    // A v6 allocation takes v6 peers and refuses v4 ones with 443.
    let r = c6.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer(PEER_V6),
    );
    assert_eq!(error_code(&r), None);
    let r = c6.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer(PEER_V4),
    );
    assert_eq!(error_code(&r), Some(443));
    // A Refresh naming a family the allocation lacks: 443; its own family: fine.
    let r = c6.request(&mut srv, now, &mut ports, method::REFRESH, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(error_code(&r), Some(443));
    let r = c6.request(&mut srv, now, &mut ports, method::REFRESH, &|w| {
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(error_code(&r), None);

    let mut c = alice(40002);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &requested(1));
    assert_eq!(error_code(&r), None);
    assert!(relayed(&r)[0].is_ipv4());
    assert_eq!(srv.allocation_count(), 3);
}

#[test]
fn a_family_the_relay_lacks_is_440_and_bad_combinations_are_400() {
    let (mut srv, mut ports, now) = server(config(), true, false);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &requested(2));
    assert_eq!(error_code(&r), Some(440));
    // An unknown family value: 440 too.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &requested(3));
    assert_eq!(error_code(&r), Some(440));
    // Both attributes: 400.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        requested(1)(w);
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(error_code(&r), Some(400));
    // ADDITIONAL-ADDRESS-FAMILY IPv4: 400.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &additional(1));
    assert_eq!(error_code(&r), Some(400));
    // A reservation token with a family request: 400.
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        additional(2)(w);
        w.attr(attr::RESERVATION_TOKEN, &[1; 8]).unwrap();
    });
    assert_eq!(error_code(&r), Some(400));
    assert_eq!(srv.allocation_count(), 0);
    assert!(ports.open.is_empty());

    // A relay with IPv6 only: the default (IPv4) is 440, IPv6 on request works.
    let (mut srv, mut ports, now) = server(config(), false, true);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &udp);
    assert_eq!(error_code(&r), Some(440));
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &requested(2));
    assert_eq!(error_code(&r), None);
}

#[test]
fn a_dual_allocation_relays_each_family_through_its_own_address() {
    let (mut srv, mut ports, now) = server(config(), true, true);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &additional(2));
    assert_eq!(error_code(&r), None);
    let a = relayed(&r);
    assert_eq!(a.len(), 2, "two XOR-RELAYED-ADDRESS");
    assert!(a[0].is_ipv4() && a[1].is_ipv6());
    assert_eq!(address_error(&r), None);
    assert_eq!(srv.allocation_count(), 1, "one allocation");
    assert_eq!(ports.open.len(), 2, "two relayed sockets");
    let (v4, v6) = (socket_id(&ports, a[0]), socket_id(&ports, a[1]));
    assert_ne!(v4, v6);
    assert_eq!(srv.relayed_address(v4), Some(a[0]));
    assert_eq!(srv.relayed_address(v6), Some(a[1]));

    // Permissions for both families in one request.
    let r = c.request(&mut srv, now, &mut ports, method::CREATE_PERMISSION, &|w| {
        peer(PEER_V4)(w);
        peer(PEER_V6)(w);
    });
    assert_eq!(error_code(&r), None);
    let r = c.request(&mut srv, now, &mut ports, method::CHANNEL_BIND, &|w| {
        w.u32_attr(attr::CHANNEL_NUMBER, 0x4001 << 16).unwrap();
        peer(PEER_V6)(w);
    });
    assert_eq!(error_code(&r), None);

    // ChannelData to the v6 peer leaves from the v6 socket.
    let cd = [0x40, 0x01, 0x00, 0x02, b'h', b'i', 0, 0];
    let (o, _) = c.send(&mut srv, now, &mut ports, &cd);
    assert_eq!(
        o,
        ClientOutput::Forward {
            allocation: v6,
            peer: PEER_V6.parse().unwrap(),
            payload: 4..6,
        }
    );
    // A Send indication to the v4 peer leaves from the v4 socket.
    let tid = c.tid();
    let ind = {
        let mut buf = vec![0u8; 256];
        let mut w = MessageWriter::new(
            &mut buf,
            tandem_relay::stun::message_type(method::SEND, Class::Indication),
            &tid,
        )
        .unwrap();
        peer(PEER_V4)(&mut w);
        w.attr(attr::DATA, b"abcd").unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    };
    let (o, _) = c.send(&mut srv, now, &mut ports, &ind);
    let ClientOutput::Forward {
        allocation,
        peer: to,
        ..
    } = o
    else {
        panic!("Send forwarded: {o:?}");
    };
    assert_eq!((allocation, to), (v4, PEER_V4.parse().unwrap()));

    // From the v6 peer on the v6 socket: ChannelData to the client.
    let mut pb = vec![0u8; PEER_HEADROOM + 16];
    pb[PEER_HEADROOM..PEER_HEADROOM + 2].copy_from_slice(b"yo");
    let o = srv.handle_peer(
        now,
        v6,
        PEER_V6.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 2,
    );
    let PeerOutput::ToClient { client, range, .. } = o else {
        panic!("peer data relayed: {o:?}");
    };
    assert_eq!(client, c.tuple.client);
    assert_eq!(&pb[range], &[0x40, 0x01, 0x00, 0x02, b'y', b'o']);
    // From the v4 peer on the v4 socket: a Data indication.
    let o = srv.handle_peer(
        now,
        v4,
        PEER_V4.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 2,
    );
    let PeerOutput::ToClient { range, .. } = o else {
        panic!("peer data relayed: {o:?}");
    };
    let m = Message::decode(&pb[range]).unwrap();
    assert_eq!(m.method(), method::DATA);
    assert_eq!(m.get(attr::DATA).unwrap().value, b"yo");

    // Refresh keeps both; LIFETIME 0 removes both sockets.
    let r = c.request(&mut srv, now, &mut ports, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0).unwrap();
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(srv.allocation_count(), 0);
    assert!(ports.open.is_empty(), "both sockets closed");
    assert_eq!(ports.closed.len(), 2);
    // Ids of a deleted dual allocation reach nothing.
    let o = srv.handle_peer(
        now,
        v6,
        PEER_V6.parse().unwrap(),
        &mut pb,
        PEER_HEADROOM..PEER_HEADROOM + 2,
    );
    assert_eq!(o, PeerOutput::None);
}

#[test]
fn a_retransmitted_dual_allocate_gets_the_same_answer() {
    let (mut srv, mut ports, now) = server(config(), true, false);
    let mut c = alice(40000);
    // Fetch a nonce first, then send one Allocate twice.
    let _ = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|_| {});
    let tid = c.tid();
    let p = c.build(method::ALLOCATE, tid, &additional(2), true, true);
    let (_, r1) = c.send(&mut srv, now, &mut ports, &p);
    let (_, r2) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(error_code(&r1), None);
    assert_eq!(relayed(&r1), relayed(&r2));
    assert_eq!(address_error(&r2), Some((2, 440)));
    assert_eq!(srv.allocation_count(), 1);
}

#[test]
fn a_dual_allocation_with_one_family_missing_keeps_the_other() {
    // No IPv6 relay address: IPv4 granted, ADDRESS-ERROR-CODE 440 for IPv6.
    let (mut srv, mut ports, now) = server(config(), true, false);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &additional(2));
    assert_eq!(error_code(&r), None);
    let a = relayed(&r);
    assert_eq!(a.len(), 1);
    assert!(a[0].is_ipv4());
    assert_eq!(address_error(&r), Some((2, 440)));
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer(PEER_V6),
    );
    assert_eq!(error_code(&r), Some(443));
    let r = c.request(&mut srv, now, &mut ports, method::CHANNEL_BIND, &|w| {
        w.u32_attr(attr::CHANNEL_NUMBER, 0x4001 << 16).unwrap();
        peer(PEER_V6)(w);
    });
    assert_eq!(error_code(&r), Some(443));

    // No IPv4 relay address: IPv6 granted, ADDRESS-ERROR-CODE 440 for IPv4.
    let (mut srv, mut ports, now) = server(config(), false, true);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &additional(2));
    assert_eq!(error_code(&r), None);
    let a = relayed(&r);
    assert_eq!(a.len(), 1);
    assert!(a[0].is_ipv6());
    assert_eq!(address_error(&r), Some((1, 440)));

    // Neither: the Allocate fails with 440.
    let (mut srv, mut ports, now) = server(config(), false, false);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &additional(2));
    assert_eq!(error_code(&r), Some(440));
    assert_eq!(srv.allocation_count(), 0);
}

#[test]
fn a_dual_allocation_is_one_against_the_quota_and_expires_whole() {
    let cfg = Config {
        quotas: Quotas {
            allocations_per_user: 1,
            ..Quotas::default()
        },
        ..config()
    };
    let (mut srv, mut ports, now) = server(cfg, true, true);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        additional(2)(w);
        w.u32_attr(attr::LIFETIME, 600).unwrap();
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(relayed(&r).len(), 2);
    let mut other = alice(40001);
    let r = other.request(&mut srv, now, &mut ports, method::ALLOCATE, &udp);
    assert_eq!(error_code(&r), Some(486), "the dual allocation is the one");

    // A refresh moves the expiry of both addresses.
    let t = now.advance(secs(500));
    let r = c.request(&mut srv, t, &mut ports, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 600).unwrap();
    });
    assert_eq!(error_code(&r), None);
    let t = now.advance(secs(700));
    srv.handle_timeout(t, &mut ports);
    assert_eq!(srv.allocation_count(), 1);
    assert_eq!(ports.open.len(), 2);
    // Expiry closes both sockets and frees the quota.
    let t = now.advance(secs(1101));
    srv.handle_timeout(t, &mut ports);
    assert_eq!(srv.allocation_count(), 0);
    assert!(ports.open.is_empty());
    let r = other.request(&mut srv, t, &mut ports, method::ALLOCATE, &udp);
    assert_eq!(error_code(&r), None);
}

#[test]
fn the_draft_code_point_of_additional_address_family_asks_for_the_same() {
    // coturn's clients up to 4.6 send ADDITIONAL-ADDRESS-FAMILY as 0x8032.
    let (mut srv, mut ports, now) = server(config(), true, true);
    let mut c = alice(40000);
    let r = c.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        udp(w);
        w.attr(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT, &[2, 0, 0, 0])
            .unwrap();
    });
    assert_eq!(error_code(&r), None);
    assert_eq!(relayed(&r).len(), 2);
}
