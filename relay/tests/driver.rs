//! The tokio driver in-process on 127.0.0.1 port 0: Binding, an authenticated
//! Allocate, a channel to a local UDP peer both ways, Send/Data indications, then
//! graceful shutdown. Run once per datapath (`io = "portable"` and `io = "uring"`;
//! the io_uring run is skipped, with a message, where the kernel does not allow it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem_relay::io::IoMode;
use tandem_relay::stun::{attr, method, Message, MessageWriter};
use tandem_relay::Config;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

async fn roundtrip(sock: &UdpSocket, to: SocketAddr, p: &[u8]) -> Vec<u8> {
    sock.send_to(p, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("answer within 5 s")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn portable_driver_relays_both_ways_and_shuts_down() {
    relays_both_ways_and_shuts_down(IoMode::Portable).await;
}

#[tokio::test]
async fn uring_driver_relays_both_ways_and_shuts_down() {
    if let Err(e) = tandem_relay::io::choose(IoMode::Uring) {
        eprintln!("SKIPPED: {e}");
        return;
    }
    relays_both_ways_and_shuts_down(IoMode::Uring).await;
}

#[tokio::test]
async fn auto_falls_back_or_picks_uring() {
    let choice = tandem_relay::io::choose(IoMode::Auto).unwrap();
    let uring = tandem_relay::io::choose(IoMode::Uring).is_ok();
    assert_eq!(choice.mode == IoMode::Uring, uring, "{choice:?}");
    assert!(choice.reason.starts_with("auto"), "{choice:?}");
}

async fn relays_both_ways_and_shuts_down(io: IoMode) {
    let name = match io {
        IoMode::Uring => "uring",
        _ => "portable",
    };
    let cfg: Config = Config::from_toml(
        &format!(
            r#"
        listening-ip = ["127.0.0.1"]
        listening-port = 0
        user = ["alice:wonderland"]
        allow-loopback-peers = true
        io = "{name}"
        "#
        ),
        "inline",
    )
    .unwrap();
    let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
    assert_eq!(relay.io_mode(), io);
    let server = relay.listening_addrs()[0];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = Client::new(&me.to_string(), Creds::md5("alice", "wonderland"));

    // Binding.
    let r = roundtrip(
        &sock,
        server,
        &c.build(method::BINDING, [1; 12], &|_| {}, false, false),
    )
    .await;
    assert_eq!(xor_addr(&r, attr::XOR_MAPPED_ADDRESS), Some(me));

    // Allocate (401, then with credentials).
    let udp =
        |w: &mut MessageWriter<'_>| w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    let r = roundtrip(
        &sock,
        server,
        &c.build(method::ALLOCATE, [2; 12], &udp, false, false),
    )
    .await;
    assert_eq!(error_code(&r), Some(401));
    c.nonce = Some(
        Message::decode(&r)
            .unwrap()
            .get(attr::NONCE)
            .unwrap()
            .value
            .to_vec(),
    );
    let r = roundtrip(
        &sock,
        server,
        &c.build(method::ALLOCATE, [3; 12], &udp, true, true),
    )
    .await;
    assert_eq!(error_code(&r), None);
    let relayed = xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.ip(), server.ip());

    // Channel to the peer.
    let bind = move |w: &mut MessageWriter<'_>| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x07, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
    };
    let r = roundtrip(
        &sock,
        server,
        &c.build(method::CHANNEL_BIND, [4; 12], &bind, true, true),
    )
    .await;
    assert_eq!(error_code(&r), None);
    sock.send_to(
        &[
            0x40, 0x07, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
        ],
        server,
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], relayed));
    peer.send_to(b"world!", relayed).await.unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, server);
    assert_eq!(
        &buf[..n],
        &[0x40, 0x07, 0x00, 0x06, b'w', b'o', b'r', b'l', b'd', b'!']
    );

    // A second peer without a channel but with a permission (same IP): Data indication.
    let peer2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    peer2.send_to(b"via data", relayed).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!(m.method(), method::DATA);
    assert_eq!(m.get(attr::DATA).unwrap().value, b"via data");

    // The relay's own listening address is never a peer.
    let own =
        move |w: &mut MessageWriter<'_>| w.xor_address(attr::XOR_PEER_ADDRESS, &server).unwrap();
    let r = roundtrip(
        &sock,
        server,
        &c.build(method::CREATE_PERMISSION, [5; 12], &own, true, true),
    )
    .await;
    assert_eq!(error_code(&r), Some(403));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("graceful shutdown")
        .unwrap();
}

/// Authenticated request over UDP: 401 first, then with the nonce.
async fn allocate(
    sock: &UdpSocket,
    server: SocketAddr,
    attrs: &dyn Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    let me = sock.local_addr().unwrap();
    let mut c = Client::new(&me.to_string(), Creds::md5("alice", "wonderland"));
    let r = roundtrip(
        sock,
        server,
        &c.build(method::ALLOCATE, [8; 12], attrs, false, false),
    )
    .await;
    assert_eq!(error_code(&r), Some(401));
    c.nonce = Some(
        Message::decode(&r)
            .unwrap()
            .get(attr::NONCE)
            .unwrap()
            .value
            .to_vec(),
    );
    roundtrip(
        sock,
        server,
        &c.build(method::ALLOCATE, [9; 12], attrs, true, true),
    )
    .await
}

/// Two workers share the listening port; clients on different ports land on either.
/// An EVEN-PORT reservation made through one client is claimed with its token by
/// another client, whichever worker each reaches.
#[tokio::test]
async fn two_workers_share_the_port_and_reservations() {
    let cfg: Config = Config::from_toml(
        r#"
        listening-ip = ["127.0.0.1"]
        listening-port = 0
        user = ["alice:wonderland"]
        allow-loopback-peers = true
        io = "portable"
        workers = 2
        "#,
        "inline",
    )
    .unwrap();
    let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
    let server = relay.listening_addrs()[0];
    assert_eq!(relay.listening_addrs().len(), 1);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    for _ in 0..6 {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let even = |w: &mut MessageWriter<'_>| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
            w.attr(attr::EVEN_PORT, &[0x80]).unwrap();
        };
        let r = allocate(&a, server, &even).await;
        assert_eq!(error_code(&r), None);
        let relayed = xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(relayed.port() % 2, 0);
        let tok = Message::decode(&r)
            .unwrap()
            .get(attr::RESERVATION_TOKEN)
            .expect("token")
            .value
            .to_vec();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let with_token = move |w: &mut MessageWriter<'_>| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
            w.attr(attr::RESERVATION_TOKEN, &tok).unwrap();
        };
        let r = allocate(&b, server, &with_token).await;
        assert_eq!(error_code(&r), None, "token claimed on any worker");
        let second = xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(second.port(), relayed.port() + 1);
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("graceful shutdown")
        .unwrap();
}
