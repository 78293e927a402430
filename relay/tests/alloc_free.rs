//! The steady-state relay path does not allocate per packet: a counting global
//! allocator (`tandem_relay::io::alloc_count`) wraps the system one, the real driver runs in-process on 127.0.0.1 with
//! each datapath, and the number of allocations made while N ChannelData packets go
//! client -> peer and back (and Data indications peer -> client) must not grow with N.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use tandem_relay::io::alloc_count::CountingAlloc;
use tandem_relay::io::IoMode;
use tandem_relay::stun::{attr, method, Message, MessageWriter};
use tandem_relay::Config;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

/// The allocation count is process-wide: the tests here run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn roundtrip(sock: &UdpSocket, to: SocketAddr, p: &[u8]) -> Vec<u8> {
    sock.send_to(p, to).unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("answer within 5 s");
    buf.truncate(n);
    buf
}

struct Path {
    server: SocketAddr,
    relayed: SocketAddr,
    client: UdpSocket,
    peer: UdpSocket,
    peer2: UdpSocket,
}

impl Path {
    /// `n` ChannelData round trips through the relay, and `n / 10` Data indications.
    fn run(&self, n: usize) {
        let mut pkt = [0u8; 4 + 200];
        pkt[..4].copy_from_slice(&[0x40, 0x07, 0x00, 200]);
        let mut buf = [0u8; 512];
        for i in 0..n {
            pkt[4..12].copy_from_slice(&(i as u64).to_be_bytes());
            self.client.send_to(&pkt, self.server).unwrap();
            let (k, _) = self.peer.recv_from(&mut buf).expect("peer receives");
            assert!(k == 200 && buf[..8] == pkt[4..12], "to peer #{i}");
            self.peer.send_to(&buf[..k], self.relayed).unwrap();
            let (k, _) = self.client.recv_from(&mut buf).expect("client receives");
            assert!(k == 204 && buf[..12] == pkt[..12], "to client #{i}");
            if i % 10 == 0 {
                self.peer2.send_to(&pkt[4..], self.relayed).unwrap();
                let (k, _) = self.client.recv_from(&mut buf).expect("Data indication");
                // 20 header + 12 XOR-PEER-ADDRESS (IPv4) + 4 DATA header + 200.
                assert!(
                    k == 236 && buf[0..2] == [0x00, 0x17],
                    "Data indication #{i}"
                );
            }
        }
    }
}

fn setup(rt: &tokio::runtime::Runtime, io: &str) -> (Path, CancellationToken) {
    let cfg = Config::from_toml(
        &format!(
            "listening-ip = [\"127.0.0.1\"]\nlistening-port = 0\nuser = [\"alice:wonderland\"]\n\
             allow-loopback-peers = true\nio = \"{io}\"\n"
        ),
        "inline",
    )
    .unwrap();
    let relay = rt.block_on(tandem_relay::Relay::bind(&cfg)).unwrap();
    let server = relay.listening_addrs()[0];
    let shutdown = CancellationToken::new();
    rt.spawn(relay.run(shutdown.clone()));

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&client, &peer, &peer2] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let peer_addr = peer.local_addr().unwrap();
    let me = client.local_addr().unwrap();
    let mut c = Client::new(&me.to_string(), Creds::md5("alice", "wonderland"));
    let udp =
        |w: &mut MessageWriter<'_>| w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    let r = roundtrip(
        &client,
        server,
        &c.build(method::ALLOCATE, [2; 12], &udp, false, false),
    );
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
        &client,
        server,
        &c.build(method::ALLOCATE, [3; 12], &udp, true, true),
    );
    assert_eq!(error_code(&r), None);
    let relayed = xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap();
    let bind = move |w: &mut MessageWriter<'_>| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x07, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
    };
    let r = roundtrip(
        &client,
        server,
        &c.build(method::CHANNEL_BIND, [4; 12], &bind, true, true),
    );
    assert_eq!(error_code(&r), None);
    (
        Path {
            server,
            relayed,
            client,
            peer,
            peer2,
        },
        shutdown,
    )
}

fn measure(rt: &tokio::runtime::Runtime, io: &str) {
    let before = GLOBAL.count();
    let (path, shutdown) = setup(rt, io);
    // The allocator is installed and counts: setting up allocates.
    assert!(GLOBAL.count() > before, "counting allocator not in use");
    path.run(500); // warm-up: lazily grown tables, first-use allocations
    std::thread::sleep(Duration::from_millis(100));
    let a = GLOBAL.count();
    path.run(1_000);
    let b = GLOBAL.count();
    path.run(10_000);
    let c = GLOBAL.count();
    let (small, large) = (b - a, c - b);
    eprintln!(
        "{io}: {small} allocations for 1000 round trips (2000 ChannelData + 100 Data), \
         {large} for 10000 (20000 + 1000)"
    );
    // Per-packet allocation would show as >= 2000 and >= 20000. Allow a few for
    // unrelated runtime activity (timers, idle threads).
    assert!(
        small <= 32,
        "{io}: {small} allocations for 1000 round trips"
    );
    assert!(
        large <= 32,
        "{io}: {large} allocations for 10000 round trips"
    );
    shutdown.cancel();
}

#[test]
fn relay_path_does_not_allocate_per_packet() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    measure(&rt, "portable");
    match tandem_relay::io::choose(IoMode::Uring) {
        Ok(_) => measure(&rt, "uring"),
        Err(e) => eprintln!("SKIPPED uring: {e}"),
    }
}

/// The media path: RTP from one leg of a media session to the other and back.
fn measure_media(rt: &tokio::runtime::Runtime, io: &str) {
    let cfg = Config::from_toml(
        &format!(
            "listening-ip = [\"127.0.0.1\"]\nlistening-port = 0\nuser = [\"alice:wonderland\"]\n\
             io = \"{io}\"\n"
        ),
        "inline",
    )
    .unwrap();
    let relay = rt.block_on(tandem_relay::Relay::bind(&cfg)).unwrap();
    let control = relay.control();
    let shutdown = CancellationToken::new();
    rt.spawn(relay.run(shutdown.clone()));
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let leg = |s: &UdpSocket| tandem_control::LegRequest {
        streams: vec![tandem_control::StreamRequest {
            rtcp_mux: true,
            rtp: Some(s.local_addr().unwrap()),
            rtcp: None,
        }],
        ..Default::default()
    };
    let now = std::time::Instant::now();
    let info = control
        .create(
            now,
            &tandem_control::CreateSession {
                call_id: None,
                caller: leg(&a),
                callee: None,
                family: Default::default(),
                inactivity_timeout_secs: None,
                max_duration_secs: None,
            },
        )
        .unwrap();
    control
        .update(
            now,
            &info.id,
            &tandem_control::UpdateSession {
                answer: Some(leg(&b)),
                ..Default::default()
            },
        )
        .unwrap();
    let (pa, pb) = (
        info.caller.streams[0].relay_rtp,
        info.callee.streams[0].relay_rtp,
    );
    // The worker registers the new ports at the end of its turn.
    std::thread::sleep(Duration::from_millis(200));
    let run = |n: usize| {
        let mut pkt = [0u8; 12 + 200];
        pkt[0] = 0x80;
        let mut buf = [0u8; 512];
        for i in 0..n {
            pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            pkt[12..20].copy_from_slice(&(i as u64).to_be_bytes());
            a.send_to(&pkt, pa).unwrap();
            let (k, from) = b.recv_from(&mut buf).expect("callee receives");
            assert!(
                k == 212 && buf[..k] == pkt[..] && from == pb,
                "to callee #{i}"
            );
            b.send_to(&buf[..k], pb).unwrap();
            let (k, from) = a.recv_from(&mut buf).expect("caller receives");
            assert!(
                k == 212 && buf[..k] == pkt[..] && from == pa,
                "to caller #{i}"
            );
        }
    };
    run(500);
    std::thread::sleep(Duration::from_millis(100));
    let x = GLOBAL.count();
    run(1_000);
    let y = GLOBAL.count();
    run(10_000);
    let z = GLOBAL.count();
    let (small, large) = (y - x, z - y);
    eprintln!("{io} media: {small} allocations for 2000 RTP packets, {large} for 20000");
    assert!(
        small <= 32,
        "{io} media: {small} allocations for 2000 packets"
    );
    assert!(
        large <= 32,
        "{io} media: {large} allocations for 20000 packets"
    );
    let fin = control.get(std::time::Instant::now(), &info.id).unwrap();
    assert_eq!(fin.caller.counters.packets_in, 11_500);
    assert_eq!(fin.callee.counters.packets_in, 11_500);
    shutdown.cancel();
}

#[test]
fn media_path_does_not_allocate_per_packet() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    measure_media(&rt, "portable");
    match tandem_relay::io::choose(IoMode::Uring) {
        Ok(_) => measure_media(&rt, "uring"),
        Err(e) => eprintln!("SKIPPED uring: {e}"),
    }
}
