//! Address families through the driver, in-process on loopback: a relay with the
//! relay addresses 127.0.0.1 and ::1 grants a dual allocation (RFC 8656 section 7.2,
//! ADDITIONAL-ADDRESS-FAMILY) over UDP and over TCP, reaches a peer on ::1 through
//! the IPv6 relayed address and a peer on 127.0.0.1 through the IPv4 one, both ways;
//! a relay with 127.0.0.1 only answers 440 / ADDRESS-ERROR-CODE and 443.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem_relay::stun::framing::next_frame;
use tandem_relay::stun::{address, attr, method, Message, MessageWriter};
use tandem_relay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// How the test client reaches the relay.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

impl Link {
    async fn send(&mut self, p: &[u8]) {
        match self {
            Link::Udp(s) => {
                s.send(p).await.unwrap();
            }
            Link::Tcp(s, _) => s.write_all(p).await.unwrap(),
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        match self {
            Link::Udp(s) => {
                let mut b = vec![0u8; 2048];
                let n = tokio::time::timeout(WAIT, s.recv(&mut b))
                    .await
                    .expect("an answer in time")
                    .unwrap();
                b.truncate(n);
                b
            }
            Link::Tcp(s, buf) => loop {
                if let Some(f) = next_frame(buf, 70_000).unwrap() {
                    let m = buf[..f.len].to_vec();
                    buf.drain(..f.consumed);
                    return m;
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                    .await
                    .expect("a frame in time")
                    .unwrap();
                assert!(n > 0, "connection closed");
                buf.extend_from_slice(&chunk[..n]);
            },
        }
    }

    async fn roundtrip(&mut self, p: &[u8]) -> Vec<u8> {
        self.send(p).await;
        self.recv().await
    }

    fn local(&self) -> SocketAddr {
        match self {
            Link::Udp(s) => s.local_addr().unwrap(),
            Link::Tcp(s, _) => s.local_addr().unwrap(),
        }
    }
}

struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(relay_ips: &str) -> Running {
    let cfg = Config::from_toml(
        &format!(
            r#"
        listening-ip = ["127.0.0.1"]
        listening-port = 0
        relay-ip = [{relay_ips}]
        user = ["alice:wonderland"]
        allow-loopback-peers = true
        io = "portable"
        workers = 2
        "#
        ),
        "inline",
    )
    .unwrap();
    let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
    let udp = relay.listening_addrs()[0];
    let tcp = relay.tcp_addrs()[0];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    Running {
        udp,
        tcp,
        shutdown,
        task,
    }
}

impl Running {
    async fn connect_udp(&self) -> Link {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(self.udp).await.unwrap();
        Link::Udp(s)
    }

    async fn connect_tcp(&self) -> Link {
        Link::Tcp(TcpStream::connect(self.tcp).await.unwrap(), Vec::new())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// A signed request over `link` (the 401 round first when there is no nonce yet).
async fn request(
    link: &mut Link,
    c: &mut Client,
    m: u16,
    attrs: &dyn Fn(&mut MessageWriter<'_>),
) -> Vec<u8> {
    if c.nonce.is_none() {
        let tid = c.tid();
        let r = link.roundtrip(&c.build(m, tid, attrs, false, false)).await;
        assert_eq!(error_code(&r), Some(401));
        let nonce = Message::decode(&r).unwrap().get(attr::NONCE).unwrap().value;
        c.nonce = Some(nonce.to_vec());
    }
    let tid = c.tid();
    link.roundtrip(&c.build(m, tid, attrs, true, true)).await
}

fn dual(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    w.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
        .unwrap();
}

fn relayed(resp: &[u8]) -> Vec<SocketAddr> {
    let m = Message::decode(resp).unwrap();
    m.attributes()
        .filter(|a| a.typ == attr::XOR_RELAYED_ADDRESS)
        .map(|a| address::decode_xor(a.value, m.transaction_id()).unwrap())
        .collect()
}

fn send_indication(c: &mut Client, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tid = c.tid();
    let mut ind = c.build(
        method::SEND,
        tid,
        &|w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer).unwrap();
            w.attr(attr::DATA, data).unwrap();
        },
        false,
        false,
    );
    ind[1] = 0x16; // Send indication
    ind
}

async fn peer_recv(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut b = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut b))
        .await
        .expect("the peer gets the data")
        .unwrap();
    b.truncate(n);
    (b, from)
}

/// Dual allocation over `link`; each family's peer is reached through its own
/// relayed address, both ways.
async fn dual_both_ways(mut link: Link) {
    let mut c = Client::new(&link.local().to_string(), Creds::md5("alice", "wonderland"));
    let r = request(&mut link, &mut c, method::ALLOCATE, &dual).await;
    assert_eq!(error_code(&r), None, "dual Allocate succeeds");
    let a = relayed(&r);
    assert_eq!(a.len(), 2, "two XOR-RELAYED-ADDRESS");
    let (r4, r6) = (a[0], a[1]);
    assert_eq!(r4.ip().to_string(), "127.0.0.1");
    assert_eq!(r6.ip().to_string(), "::1");

    let p4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let (a4, a6) = (p4.local_addr().unwrap(), p6.local_addr().unwrap());
    let r = request(&mut link, &mut c, method::CREATE_PERMISSION, &|w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &a4).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &a6).unwrap();
    })
    .await;
    assert_eq!(error_code(&r), None);

    // Client -> peers: each through the relayed address of its family.
    link.send(&send_indication(&mut c, a6, b"to six")).await;
    assert_eq!(peer_recv(&p6).await, (b"to six".to_vec(), r6));
    link.send(&send_indication(&mut c, a4, b"to four")).await;
    assert_eq!(peer_recv(&p4).await, (b"to four".to_vec(), r4));

    // Peers -> client: Data indications naming each peer.
    p6.send_to(b"from six", r6).await.unwrap();
    let m = link.recv().await;
    let m = Message::decode(&m).unwrap();
    assert_eq!(m.get(attr::DATA).unwrap().value, b"from six");
    assert_eq!(
        address::decode_xor(
            m.get(attr::XOR_PEER_ADDRESS).unwrap().value,
            m.transaction_id()
        ),
        Some(a6)
    );

    // A channel to the v4 peer, one to the v6 peer.
    for (n, p) in [(0x4001u16, a4), (0x4002, a6)] {
        let r = request(&mut link, &mut c, method::CHANNEL_BIND, &|w| {
            w.u32_attr(attr::CHANNEL_NUMBER, u32::from(n) << 16)
                .unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, &p).unwrap();
        })
        .await;
        assert_eq!(error_code(&r), None);
    }
    link.send(&[0x40, 0x02, 0, 4, b'c', b'h', b'6', b'!']).await;
    assert_eq!(peer_recv(&p6).await, (b"ch6!".to_vec(), r6));
    link.send(&[0x40, 0x01, 0, 4, b'c', b'h', b'4', b'!']).await;
    assert_eq!(peer_recv(&p4).await, (b"ch4!".to_vec(), r4));
    p4.send_to(b"back", r4).await.unwrap();
    assert_eq!(
        link.recv().await,
        [0x40, 0x01, 0, 4, b'b', b'a', b'c', b'k']
    );
    p6.send_to(b"back", r6).await.unwrap();
    assert_eq!(
        link.recv().await,
        [0x40, 0x02, 0, 4, b'b', b'a', b'c', b'k']
    );

    // LIFETIME 0 deletes the allocation, both addresses.
    let r = request(&mut link, &mut c, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0).unwrap();
    })
    .await;
    assert_eq!(error_code(&r), None);
}

#[tokio::test]
async fn dual_allocation_over_udp_and_tcp_on_loopback() {
    let r = start(r#""127.0.0.1", "::1""#).await;
    dual_both_ways(r.connect_udp().await).await;
    dual_both_ways(r.connect_tcp().await).await;
    r.stop().await;
}

#[tokio::test]
async fn ipv4_only_relay_answers_440_and_443() {
    let r = start(r#""127.0.0.1""#).await;
    let mut link = r.connect_udp().await;
    let mut c = Client::new(&link.local().to_string(), Creds::md5("alice", "wonderland"));
    // IPv6 asked for: 440.
    let r6 = request(&mut link, &mut c, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
        w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .unwrap();
    })
    .await;
    assert_eq!(error_code(&r6), Some(440));
    // Dual asked for: IPv4 only, with ADDRESS-ERROR-CODE 440 for IPv6.
    let resp = request(&mut link, &mut c, method::ALLOCATE, &dual).await;
    assert_eq!(error_code(&resp), None);
    let a = relayed(&resp);
    assert_eq!(a.len(), 1);
    assert!(a[0].is_ipv4());
    let m = Message::decode(&resp).unwrap();
    let v = m
        .get(attr::ADDRESS_ERROR_CODE)
        .expect("ADDRESS-ERROR-CODE")
        .value;
    assert_eq!((v[0], v[2], v[3]), (2, 4, 40));
    // A peer on ::1: 443.
    let p6: SocketAddr = "[::1]:5000".parse().unwrap();
    let resp = request(&mut link, &mut c, method::CREATE_PERMISSION, &|w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &p6).unwrap();
    })
    .await;
    assert_eq!(error_code(&resp), Some(443));
    r.stop().await;
}
