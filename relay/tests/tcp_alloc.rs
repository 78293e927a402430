//! RFC 6062 TCP allocations through the driver, in-process on 127.0.0.1 port 0, with
//! a client written here: Allocate TCP, CreatePermission, Connect to a local TCP peer,
//! ConnectionBind on a second connection and bytes both ways; a peer connecting to
//! the relayed address (ConnectionAttempt, then bind); an unbound connection closed
//! after the (short) bind timeout; refused peers (403, no permission, 447).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem_relay::stun::framing::next_frame;
use tandem_relay::stun::{attr, method, Class, Message, MessageWriter};
use tandem_relay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A TURN client on its own TCP connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    c: Client,
    tid: u8,
}

impl Conn {
    async fn open(relay: SocketAddr) -> Conn {
        let s = TcpStream::connect(relay).await.unwrap();
        let me = s.local_addr().unwrap().to_string();
        Conn {
            s,
            buf: Vec::new(),
            c: Client::new(&me, Creds::md5("alice", "wonderland")),
            tid: 0,
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        loop {
            if let Some(f) = next_frame(&self.buf, 70_000).unwrap() {
                let msg = self.buf[..f.len].to_vec();
                self.buf.drain(..f.consumed);
                return msg;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
                .await
                .expect("a message in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// An authenticated request (the 401 round first on a new connection).
    async fn request(&mut self, m: u16, attrs: Attrs<'_>) -> Vec<u8> {
        loop {
            self.tid += 1;
            let p = self
                .c
                .build(m, [self.tid; 12], attrs, self.c.nonce.is_some(), true);
            self.s.write_all(&p).await.unwrap();
            let r = self.recv().await;
            if error_code(&r) == Some(401) && self.c.nonce.is_none() {
                let n = Message::decode(&r).unwrap().get(attr::NONCE).unwrap().value;
                self.c.nonce = Some(n.to_vec());
                continue;
            }
            return r;
        }
    }

    /// Whether the relay closes the connection.
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn tcp(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]).unwrap();
}

async fn allocate_tcp(c: &mut Conn) -> SocketAddr {
    let r = c.request(method::ALLOCATE, &tcp).await;
    assert_eq!(error_code(&r), None, "TCP Allocate");
    xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap()
}

async fn permit(c: &mut Conn, peer: SocketAddr) {
    let r = c
        .request(method::CREATE_PERMISSION, &move |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer).unwrap()
        })
        .await;
    assert_eq!(error_code(&r), None);
}

async fn connect_req(c: &mut Conn, peer: SocketAddr) -> Vec<u8> {
    c.request(method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer).unwrap()
    })
    .await
}

/// A new connection bound to `id`; answers the bind's response.
async fn bind(relay: SocketAddr, id: u32) -> (Conn, Vec<u8>) {
    let mut d = Conn::open(relay).await;
    let r = d
        .request(method::CONNECTION_BIND, &move |w| {
            w.u32_attr(attr::CONNECTION_ID, id).unwrap()
        })
        .await;
    (d, r)
}

/// Bytes both ways between a bound data connection and the peer's socket.
async fn exchange(data: &mut Conn, peer: &mut TcpStream) {
    // What the client sends right after the bind's answer reaches the peer raw.
    data.s.write_all(b"from the client").await.unwrap();
    let mut got = [0u8; 15];
    tokio::time::timeout(WAIT, peer.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"from the client");
    // Larger than one pipe buffer, both ways.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    peer.write_all(&big).await.unwrap();
    let mut back = vec![0u8; big.len()];
    tokio::time::timeout(WAIT, data.s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, big);
    data.s.write_all(&big).await.unwrap();
    let mut there = vec![0u8; big.len()];
    tokio::time::timeout(WAIT, peer.read_exact(&mut there))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(there, big);
}

struct Running {
    tcp: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(extra: &str) -> Running {
    let cfg = Config::from_toml(
        &format!(
            r#"
        listening-ip = ["127.0.0.1"]
        listening-port = 0
        user = ["alice:wonderland"]
        allow-loopback-peers = true
        io = "portable"
        workers = 2
        metrics-listen = "127.0.0.1:0"
        {extra}
        "#
        ),
        "inline",
    )
    .unwrap();
    let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
    let tcp = relay.tcp_addrs()[0];
    let metrics = relay.metrics_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    Running {
        tcp,
        metrics,
        shutdown,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

async fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn wait_metric(addr: SocketAddr, name: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if metric(addr, name).await == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {want} (last {:?})",
            metric(addr, name).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connect_then_bind_relays_bytes_both_ways() {
    let r = start("").await;
    let peer_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer_l.local_addr().unwrap();
    let mut ctl = Conn::open(r.tcp).await;
    let relayed = allocate_tcp(&mut ctl).await;
    wait_metric(r.metrics, "tandem_relay_tcp_allocations", 1).await;
    // No permission yet.
    assert_eq!(
        error_code(&connect_req(&mut ctl, peer_addr).await),
        Some(403)
    );
    permit(&mut ctl, peer_addr).await;
    let resp = connect_req(&mut ctl, peer_addr).await;
    assert_eq!(error_code(&resp), None, "Connect succeeds");
    let id = u32_attr(&resp, attr::CONNECTION_ID).expect("CONNECTION-ID");
    let (mut peer, from) = tokio::time::timeout(WAIT, peer_l.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, relayed, "the relay connects from the relayed address");
    // The same peer again while the first connection waits for its bind.
    assert_eq!(
        error_code(&connect_req(&mut ctl, peer_addr).await),
        Some(446)
    );

    let (mut data, resp) = bind(r.tcp, id).await;
    assert_eq!(error_code(&resp), None, "ConnectionBind succeeds");
    exchange(&mut data, &mut peer).await;
    wait_metric(r.metrics, "tandem_relay_tcp_connections", 1).await;
    // The client closing its data connection closes the peer's.
    drop(data);
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(WAIT, peer.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "peer connection closed");
    wait_metric(r.metrics, "tandem_relay_tcp_connections", 0).await;
    // A second ConnectionBind for the same id: gone.
    let (_, resp) = bind(r.tcp, id).await;
    assert_eq!(error_code(&resp), Some(400));
    r.stop().await;
}

#[tokio::test]
async fn peer_connection_attempt_then_bind_and_teardown() {
    let r = start("").await;
    let mut ctl = Conn::open(r.tcp).await;
    let relayed = allocate_tcp(&mut ctl).await;
    // Without a permission the relay closes the peer's connection.
    let mut stranger = TcpStream::connect(relayed).await.unwrap();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(WAIT, stranger.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a peer without permission is closed");

    // The permission names the IP (any port).
    permit(&mut ctl, "127.0.0.1:1".parse().unwrap()).await;
    let mut peer = TcpStream::connect(relayed).await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let ind = ctl.recv().await;
    let m = Message::decode(&ind).unwrap();
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(m.method(), method::CONNECTION_ATTEMPT);
    assert_eq!(xor_addr(&ind, attr::XOR_PEER_ADDRESS), Some(peer_addr));
    let id = u32_attr(&ind, attr::CONNECTION_ID).unwrap();
    // Unknown id.
    let (_, resp) = bind(r.tcp, id ^ 0x0101_0000).await;
    assert_eq!(error_code(&resp), Some(400));
    let (mut data, resp) = bind(r.tcp, id).await;
    assert_eq!(error_code(&resp), None);
    exchange(&mut data, &mut peer).await;
    // The peer closing closes the client's data connection.
    drop(peer);
    assert!(
        data.closed().await,
        "data connection closed with the peer's"
    );

    // A second peer bound, then the allocation deleted: both sides closed.
    let mut peer2 = TcpStream::connect(relayed).await.unwrap();
    let ind = ctl.recv().await;
    let id2 = u32_attr(&ind, attr::CONNECTION_ID).unwrap();
    let (mut data2, resp) = bind(r.tcp, id2).await;
    assert_eq!(error_code(&resp), None);
    let resp = ctl
        .request(method::REFRESH, &|w| w.u32_attr(attr::LIFETIME, 0).unwrap())
        .await;
    assert_eq!(error_code(&resp), None);
    assert!(
        data2.closed().await,
        "data connection closed with the allocation"
    );
    let n = tokio::time::timeout(WAIT, peer2.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    wait_metric(r.metrics, "tandem_relay_tcp_allocations", 0).await;
    wait_metric(r.metrics, "tandem_relay_tcp_connections", 0).await;
    r.stop().await;
}

#[tokio::test]
async fn unbound_attempt_closed_after_bind_timeout() {
    let r = start("tcp-bind-timeout = 1").await;
    let mut ctl = Conn::open(r.tcp).await;
    let relayed = allocate_tcp(&mut ctl).await;
    permit(&mut ctl, "127.0.0.1:1".parse().unwrap()).await;
    let mut peer = TcpStream::connect(relayed).await.unwrap();
    let ind = ctl.recv().await;
    let id = u32_attr(&ind, attr::CONNECTION_ID).unwrap();
    // Nobody binds: the relay closes the peer's connection.
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(WAIT, peer.read(&mut b))
        .await
        .expect("closed within the wait")
        .unwrap_or(0);
    assert_eq!(n, 0);
    wait_metric(
        r.metrics,
        "tandem_relay_tcp_connections_failed_total{reason=\"bind_timeout\"}",
        1,
    )
    .await;
    let (_, resp) = bind(r.tcp, id).await;
    assert_eq!(error_code(&resp), Some(400), "too late");
    r.stop().await;
}

#[tokio::test]
async fn refused_peers_and_failed_connects() {
    let r = start("denied-peer-ip = [\"127.0.0.2/32\"]").await;
    let mut ctl = Conn::open(r.tcp).await;
    allocate_tcp(&mut ctl).await;
    // Denied by the peer policy (here an explicit deny; private ranges by default).
    let denied: SocketAddr = "127.0.0.2:80".parse().unwrap();
    assert_eq!(error_code(&connect_req(&mut ctl, denied).await), Some(403));
    let private: SocketAddr = "10.1.2.3:80".parse().unwrap();
    assert_eq!(error_code(&connect_req(&mut ctl, private).await), Some(403));
    // Nothing listens: 447.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    permit(&mut ctl, gone_addr).await;
    assert_eq!(
        error_code(&connect_req(&mut ctl, gone_addr).await),
        Some(447)
    );
    // A UDP client cannot ask for TCP.
    let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = Client::new(
        &u.local_addr().unwrap().to_string(),
        Creds::md5("alice", "wonderland"),
    );
    u.send_to(
        &c.build(method::ALLOCATE, [9; 12], &tcp, false, false),
        r.tcp,
    )
    .await
    .unwrap();
    let mut b = [0u8; 1500];
    let (n, _) = tokio::time::timeout(WAIT, u.recv_from(&mut b))
        .await
        .unwrap()
        .unwrap();
    c.nonce = Some(
        Message::decode(&b[..n])
            .unwrap()
            .get(attr::NONCE)
            .unwrap()
            .value
            .to_vec(),
    );
    u.send_to(
        &c.build(method::ALLOCATE, [10; 12], &tcp, true, false),
        r.tcp,
    )
    .await
    .unwrap();
    let (n, _) = tokio::time::timeout(WAIT, u.recv_from(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(error_code(&b[..n]), Some(442));
    r.stop().await;
}

#[tokio::test]
async fn a_stalled_reader_is_dropped_not_buffered() {
    let r = start("stream-idle-timeout = 1").await;
    let peer_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer_l.local_addr().unwrap();
    let mut ctl = Conn::open(r.tcp).await;
    allocate_tcp(&mut ctl).await;
    permit(&mut ctl, peer_addr).await;
    let resp = connect_req(&mut ctl, peer_addr).await;
    let id = u32_attr(&resp, attr::CONNECTION_ID).expect("CONNECTION-ID");
    let (mut peer, _) = peer_l.accept().await.unwrap();
    let (data, resp) = bind(r.tcp, id).await;
    assert_eq!(error_code(&resp), None);
    // The client never reads: once the kernel buffers are full, the relay's writes
    // stall and it drops both sides instead of queueing. Bounded: at most 512 MiB or
    // the wait.
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    let ended = tokio::time::timeout(WAIT, async {
        while written < 512 << 20 {
            match peer.write_all(&chunk).await {
                Ok(()) => written += chunk.len(),
                Err(_) => return true,
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        ended,
        "the peer's connection was closed (wrote {written} bytes)"
    );
    wait_metric(
        r.metrics,
        "tandem_relay_stream_connections_dropped_total{reason=\"slow_reader\"}",
        1,
    )
    .await;
    wait_metric(r.metrics, "tandem_relay_tcp_connections", 0).await;
    drop(data);
    r.stop().await;
}
