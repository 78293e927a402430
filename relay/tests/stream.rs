//! TURN over TCP and TLS through the driver, in-process on 127.0.0.1 port 0: an
//! Allocate, a channel and a Send indication to a local UDP peer and back (ChannelData
//! padded to 4 bytes on the stream), the allocation deleted when the connection
//! closes; TLS 1.2 and 1.3 with a certificate made here, reloaded without dropping
//! a connection or its allocation; and the limits (connections per source, framing
//! errors, message size, idle connections, slow readers).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tandem_relay::stun::framing::next_frame;
use tandem_relay::stun::{attr, method, Message, MessageWriter};
use tandem_relay::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A TURN client on a stream: writes messages, reads whole frames.
struct Stream<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    fn new(s: S) -> Self {
        Stream { s, buf: Vec::new() }
    }

    async fn send(&mut self, p: &[u8]) {
        self.s.write_all(p).await.unwrap();
    }

    /// The next frame: (message, bytes it took on the stream with padding).
    async fn recv(&mut self) -> (Vec<u8>, usize) {
        loop {
            if let Some(f) = next_frame(&self.buf, 70_000).unwrap() {
                let msg = self.buf[..f.len].to_vec();
                self.buf.drain(..f.consumed);
                return (msg, f.consumed);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn roundtrip(&mut self, p: &[u8]) -> Vec<u8> {
        self.send(p).await;
        self.recv().await.0
    }

    /// Whether the relay closes the connection (reads until end of stream).
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

fn udp(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
}

/// Allocate over the stream (401 first); returns the relayed address.
async fn allocate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut Stream<S>,
    c: &mut Client,
) -> SocketAddr {
    let r = s
        .roundtrip(&c.build(method::ALLOCATE, [2; 12], &udp, false, false))
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
    let r = s
        .roundtrip(&c.build(method::ALLOCATE, [3; 12], &udp, true, true))
        .await;
    assert_eq!(error_code(&r), None);
    xor_addr(&r, attr::XOR_RELAYED_ADDRESS).unwrap()
}

struct Running {
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    metrics: SocketAddr,
    certs: Option<Arc<tandem_relay::driver::stream::TlsCertificates>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(extra: &str) -> Running {
    let cfg = Config::from_toml(
        &format!(
            r#"
        listening-ip = ["127.0.0.1"]
        listening-port = 0
        tls-listening-port = 0
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
    assert_eq!(
        tcp.port(),
        relay.listening_addrs()[0].port(),
        "TCP on the UDP port"
    );
    let tls = relay.tls_addrs().first().copied();
    let metrics = relay.metrics_addr().unwrap();
    let certs = relay.tls_certificates();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    Running {
        tcp,
        tls,
        metrics,
        certs,
        shutdown,
        task,
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

/// Wait until metric `name` reads `want`.
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

/// Allocate, channel and Send indication both ways on a stream client.
async fn relay_both_ways<S: AsyncRead + AsyncWrite + Unpin>(s: &mut Stream<S>, me: &str) {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = Client::new(me, Creds::md5("alice", "wonderland"));
    let relayed = allocate(s, &mut c).await;

    // Send indication (creates no permission: CreatePermission first).
    let perm = move |w: &mut MessageWriter<'_>| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
    };
    let r = s
        .roundtrip(&c.build(method::CREATE_PERMISSION, [4; 12], &perm, true, true))
        .await;
    assert_eq!(error_code(&r), None);
    let data = move |w: &mut MessageWriter<'_>| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
        w.attr(attr::DATA, b"via send").unwrap();
    };
    let ind = c.build(method::SEND, [5; 12], &data, false, false);
    let mut ind = ind;
    ind[1] = 0x16; // Send indication (class bits of an indication, method 6)
    s.send(&ind).await;
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("peer gets the Send indication's data")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"via send"[..], relayed));
    // Peer -> client without a channel: a Data indication on the stream.
    peer.send_to(b"data ind", relayed).await.unwrap();
    let (m, _) = s.recv().await;
    let m = Message::decode(&m).unwrap();
    assert_eq!(m.get(attr::DATA).unwrap().value, b"data ind");

    // A channel; ChannelData from the client padded to 4 (5 bytes + 3).
    let bind = move |w: &mut MessageWriter<'_>| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x07, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
    };
    let r = s
        .roundtrip(&c.build(method::CHANNEL_BIND, [6; 12], &bind, true, true))
        .await;
    assert_eq!(error_code(&r), None);
    // Two messages in one write, the first padded: the framer must split them.
    let mut two = vec![
        0x40, 0x07, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
    ];
    two.extend_from_slice(&[0x40, 0x07, 0x00, 0x04, b'm', b'o', b'r', b'e']);
    s.send(&two).await;
    for want in [&b"hello"[..], b"more"] {
        let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
            .await
            .expect("peer gets the ChannelData")
            .unwrap();
        assert_eq!((&buf[..n], from), (want, relayed));
    }
    // Peer -> client: ChannelData, padded on the stream (6 bytes of data: 4 + 6 =
    // 10 bytes of message, 12 on the stream).
    peer.send_to(b"world!", relayed).await.unwrap();
    let (m, took) = s.recv().await;
    assert_eq!(
        m,
        [0x40, 0x07, 0x00, 0x06, b'w', b'o', b'r', b'l', b'd', b'!']
    );
    assert_eq!(took, 12);
}

#[tokio::test]
async fn tcp_client_relays_both_ways_and_closing_deletes_the_allocation() {
    let r = start("").await;
    assert!(r.tls.is_none(), "no TLS without cert and pkey");
    let tcp = TcpStream::connect(r.tcp).await.unwrap();
    let me = tcp.local_addr().unwrap().to_string();
    let mut s = Stream::new(tcp);
    // Binding over TCP.
    let c = Client::new(&me, Creds::md5("alice", "wonderland"));
    let resp = s
        .roundtrip(&c.build(method::BINDING, [1; 12], &|_| {}, false, false))
        .await;
    assert_eq!(
        xor_addr(&resp, attr::XOR_MAPPED_ADDRESS),
        Some(me.parse().unwrap())
    );
    relay_both_ways(&mut s, &me).await;
    wait_metric(r.metrics, "tandem_relay_allocations", 1).await;
    wait_metric(r.metrics, "tandem_relay_stream_connections", 1).await;
    drop(s);
    wait_metric(r.metrics, "tandem_relay_allocations", 0).await;
    wait_metric(r.metrics, "tandem_relay_stream_connections", 0).await;
    r.shutdown.cancel();
    r.task.await.unwrap();
}

fn tls_files(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

async fn tls_connect(
    addr: SocketAddr,
    trust: &[u8],
    version: &'static rustls::SupportedProtocolVersion,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trust.to_vec()))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

#[tokio::test]
async fn tls_12_and_13_and_a_reload_that_keeps_connections() {
    let dir = std::env::temp_dir().join(format!("tandem-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, der1) = tls_files(&dir, "first");
    let r = start(&format!(
        "cert = {:?}\npkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ))
    .await;
    let tls = r.tls.expect("TLS listener");
    // TLS 1.2 and 1.3: relay both ways over each.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let t = tls_connect(tls, &der1, v).await.expect("TLS handshake");
        assert_eq!(t.get_ref().1.protocol_version(), Some(v.version));
        let me = t.get_ref().0.local_addr().unwrap().to_string();
        let mut s = Stream::new(t);
        relay_both_ways(&mut s, &me).await;
    }
    // An allocation on a TLS connection survives a reload with a new certificate.
    let t = tls_connect(tls, &der1, &rustls::version::TLS13)
        .await
        .unwrap();
    let me = t.get_ref().0.local_addr().unwrap().to_string();
    let mut s = Stream::new(t);
    let mut c = Client::new(&me, Creds::md5("alice", "wonderland"));
    allocate(&mut s, &mut c).await;
    let (_, _, der2) = tls_files(&dir, "first"); // same paths, new certificate
    r.certs.as_ref().unwrap().reload().unwrap();
    wait_metric(r.metrics, "tandem_relay_tls_reloads_total", 1).await;
    let refresh =
        |w: &mut MessageWriter<'_>| w.attr(attr::LIFETIME, &600u32.to_be_bytes()).unwrap();
    let resp = s
        .roundtrip(&c.build(method::REFRESH, [9; 12], &refresh, true, true))
        .await;
    assert_eq!(
        error_code(&resp),
        None,
        "the old connection and allocation live on"
    );
    // New connections get the new certificate (the old one is no longer trusted).
    assert!(tls_connect(tls, &der1, &rustls::version::TLS13)
        .await
        .is_err());
    tls_connect(tls, &der2, &rustls::version::TLS13)
        .await
        .expect("new certificate served");
    // A broken file keeps the previous certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(r.certs.as_ref().unwrap().reload().is_err());
    tls_connect(tls, &der2, &rustls::version::TLS13)
        .await
        .expect("previous certificate kept");
    r.shutdown.cancel();
    r.task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn limits_per_source_framing_and_message_size() {
    let r = start("stream-max-connections-per-ip = 2\nstream-max-frame = 1024\n").await;
    let a = TcpStream::connect(r.tcp).await.unwrap();
    let b = TcpStream::connect(r.tcp).await.unwrap();
    wait_metric(r.metrics, "tandem_relay_stream_connections", 2).await;
    let mut third = Stream::new(TcpStream::connect(r.tcp).await.unwrap());
    assert!(third.closed().await, "third connection from one IP refused");
    let refused = "tandem_relay_stream_connections_refused_total{reason=\"per_ip_limit\"}";
    wait_metric(r.metrics, refused, 1).await;
    // Neither STUN nor ChannelData: closed.
    let mut a = Stream::new(a);
    a.send(&[0x80, 0, 0, 0, 1, 2, 3, 4]).await;
    assert!(a.closed().await);
    // A message over stream-max-frame: closed before its body arrives.
    let mut b = Stream::new(b);
    b.send(&[0x40, 0x01, 0x10, 0x00]).await;
    assert!(b.closed().await);
    let bad = "tandem_relay_stream_connections_dropped_total{reason=\"bad_frame\"}";
    wait_metric(r.metrics, bad, 2).await;
    wait_metric(r.metrics, "tandem_relay_stream_connections", 0).await;
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test]
async fn no_udp_and_no_tcp_listen_only_where_asked() {
    let cfg = Config::from_toml(
        r#"
        listening-ip = ["127.0.0.1"]
        listening-port = 0
        user = ["alice:wonderland"]
        no-udp = true
        no-dtls = true
        io = "portable"
        "#,
        "inline",
    )
    .unwrap();
    let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
    assert!(relay.listening_addrs().is_empty());
    assert_eq!(relay.tcp_addrs().len(), 1);
    let cfg = Config {
        no_tcp: true,
        no_udp: true,
        ..cfg
    };
    assert!(cfg.validate().unwrap_err().to_string().contains("`no-udp`"));
}

#[tokio::test]
async fn idle_connections_and_slow_readers_are_dropped() {
    let r = start("stream-idle-timeout = 1\nstream-max-buffered = 4096\n").await;
    // Without an allocation and silent: closed after the idle time (checked every
    // few seconds).
    let mut idle = Stream::new(TcpStream::connect(r.tcp).await.unwrap());
    assert!(idle.closed().await, "idle connection closed");
    wait_metric(
        r.metrics,
        "tandem_relay_stream_connections_dropped_total{reason=\"idle\"}",
        1,
    )
    .await;
    // A client that stops reading while its peer keeps sending: once more than
    // stream-max-buffered bytes wait in its queue, the relay drops it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(r.tcp).await.unwrap();
    let me = tcp.local_addr().unwrap().to_string();
    let mut s = Stream::new(tcp);
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = Client::new(&me, Creds::md5("alice", "wonderland"));
    let relayed = allocate(&mut s, &mut c).await;
    let perm = move |w: &mut MessageWriter<'_>| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
    };
    let resp = s
        .roundtrip(&c.build(method::CREATE_PERMISSION, [4; 12], &perm, true, true))
        .await;
    assert_eq!(error_code(&resp), None);
    let slow = "tandem_relay_stream_connections_dropped_total{reason=\"slow_reader\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let payload = [0x55u8; 1200];
    'blast: loop {
        for _ in 0..500 {
            let _ = peer.send_to(&payload, relayed).await;
        }
        if metric(r.metrics, slow).await == Some(1) {
            break 'blast;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow reader never dropped"
        );
        tokio::task::yield_now().await;
    }
    // Its allocation went with it.
    wait_metric(r.metrics, "tandem_relay_allocations", 0).await;
    r.shutdown.cancel();
    r.task.await.unwrap();
}

#[tokio::test]
async fn messages_longer_than_the_first_read_buffer_arrive_whole() {
    // The read buffer starts small and grows for a longer message (up to
    // stream-max-frame); the message may also arrive in pieces.
    let r = start("").await;
    let tcp = TcpStream::connect(r.tcp).await.unwrap();
    let me = tcp.local_addr().unwrap().to_string();
    let mut s = Stream::new(tcp);
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = Client::new(&me, Creds::md5("alice", "wonderland"));
    let relayed = allocate(&mut s, &mut c).await;
    let bind = move |w: &mut MessageWriter<'_>| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x09, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
    };
    let resp = s
        .roundtrip(&c.build(method::CHANNEL_BIND, [6; 12], &bind, true, true))
        .await;
    assert_eq!(error_code(&resp), None);
    let data: Vec<u8> = (0..3001u32).map(|i| i as u8).collect();
    let mut m = vec![0x40, 0x09];
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(&data);
    m.resize(m.len().next_multiple_of(4), 0);
    for piece in m.chunks(700) {
        s.send(piece).await;
        tokio::task::yield_now().await;
    }
    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("peer gets the long ChannelData")
        .unwrap();
    assert_eq!((&buf[..n], from), (&data[..], relayed));
    r.shutdown.cancel();
    r.task.await.unwrap();
}
