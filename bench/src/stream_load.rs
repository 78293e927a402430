//! `stream-load` and `stream-conns`: TURN over a TCP or TLS client connection
//! (RFC 8656 section 3.1), the relayed side UDP.
//!
//! `stream-load`: each allocation is its own connection; after the Allocate and a
//! ChannelBind to an echo peer the generator serves itself (UDP), ChannelData pings of
//! `--size` bytes go out at a fixed offered rate over all connections (round robin),
//! padded to a multiple of 4 as RFC 8656 section 12.5 asks on a stream, and come back
//! the same way. Open loop, as `turn-load`: packet k is due at `start + k / rate`,
//! carries its sequence number and scheduled time. Reports the same figures as
//! `turn-load` (the server's CPU per forwarded packet: 2 per round trip).
//!
//! `stream-conns`: opens `--count` connections (TLS: full handshake) and answers one
//! Binding request on each, bounded in concurrency, then reads the server's RSS:
//! (RSS with every connection open - RSS before) / connections held.
//!
//! Certificates are not checked (the servers use a self-signed one made by the
//! benchmark): this is a load generator on 127.0.0.1, not a client to trust.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_relay::stun::framing::next_frame;
use tandem_relay::stun::{attr, message_type, method, Class, Message, MessageWriter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::client::Credentials;
use crate::load::{LoadReport, MIN_SIZE};
use crate::procstat::{cpu_ns, mono_ns, rss_kib};

const CHANNEL: u16 = 0x4000;
const DRAIN: Duration = Duration::from_millis(1000);
const MAX_PACKETS: u64 = 50_000_000;
const SETUP_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamTransport {
    Tcp,
    Tls,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub server: SocketAddr,
    pub transport: StreamTransport,
    pub creds: Credentials,
    pub allocations: usize,
    pub rate: u64,
    pub size: usize,
    pub duration: Duration,
    pub server_pid: Option<u32>,
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
type Conn = Box<dyn Io>;

/// Accepts any certificate (see the module documentation).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

async fn connect(
    server: SocketAddr,
    transport: StreamTransport,
    tls: &tokio_rustls::TlsConnector,
) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    Ok(match transport {
        StreamTransport::Tcp => Box::new(tcp),
        StreamTransport::Tls => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            Box::new(tls.connect(name, tcp).await?)
        }
    })
}

/// Reads whole frames (STUN or ChannelData with its padding) from a stream.
struct Framer {
    buf: Vec<u8>,
    filled: usize,
}

impl Framer {
    fn new() -> Self {
        Framer {
            buf: vec![0u8; 16384],
            filled: 0,
        }
    }

    /// The next frame's bytes (without padding), copied into `out`.
    async fn next<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        r: &mut R,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<bool> {
        loop {
            if let Some(f) = next_frame(&self.buf[..self.filled], 8192)
                .map_err(|e| anyhow::anyhow!("framing: {e}"))?
            {
                out.clear();
                out.extend_from_slice(&self.buf[..f.len]);
                self.buf.copy_within(f.consumed..self.filled, 0);
                self.filled -= f.consumed;
                return Ok(true);
            }
            if self.filled == self.buf.len() {
                bail!("frame too long");
            }
            let n = r.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.filled += n;
        }
    }
}

/// A STUN client on one stream: long-term credentials (MD5), the 401 exchange.
struct StunSession {
    user: String,
    password: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    tid: u32,
}

impl StunSession {
    fn new(creds: &Credentials) -> Self {
        let (user, password) = creds.resolve();
        StunSession {
            user,
            password,
            realm: Vec::new(),
            nonce: Vec::new(),
            tid: 0,
        }
    }

    fn build(
        &mut self,
        meth: u16,
        add: &dyn Fn(&mut MessageWriter<'_>),
        out: &mut [u8],
    ) -> anyhow::Result<usize> {
        self.tid += 1;
        let mut tid = [0x5au8; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        tid[4..8].copy_from_slice(&rand::random::<u32>().to_be_bytes());
        let mut w = MessageWriter::new(out, message_type(meth, Class::Request), &tid)
            .map_err(|_| anyhow::anyhow!("encode"))?;
        add(&mut w);
        if !self.nonce.is_empty() {
            let key = md5_key(&self.user, &self.realm, &self.password);
            let enc = |r: Result<(), _>| {
                r.map_err(|_: tandem_relay::stun::EncodeError| anyhow::anyhow!("encode"))
            };
            enc(w.attr(attr::USERNAME, self.user.as_bytes()))?;
            enc(w.attr(attr::REALM, &self.realm))?;
            enc(w.attr(attr::NONCE, &self.nonce))?;
            enc(w.integrity_sha1(&key))?;
        }
        Ok(w.finish())
    }

    /// One request with the 401/438 round; returns the success response.
    async fn transaction(
        &mut self,
        conn: &mut Conn,
        framer: &mut Framer,
        meth: u16,
        add: &dyn Fn(&mut MessageWriter<'_>),
    ) -> anyhow::Result<Vec<u8>> {
        let mut req = [0u8; 512];
        let mut resp = Vec::new();
        for _ in 0..3 {
            let n = self.build(meth, add, &mut req)?;
            conn.write_all(&req[..n]).await?;
            if !framer.next(conn, &mut resp).await? {
                bail!("connection closed");
            }
            let m = Message::decode(&resp).map_err(|_| anyhow::anyhow!("bad response"))?;
            match m.class() {
                Class::SuccessResponse => return Ok(resp),
                Class::ErrorResponse => {
                    let code = m
                        .get(attr::ERROR_CODE)
                        .filter(|a| a.value.len() >= 4)
                        .map(|a| u16::from(a.value[2] & 7) * 100 + u16::from(a.value[3]))
                        .unwrap_or(0);
                    if code == 401 || code == 438 {
                        if let (Some(r), Some(nn)) = (m.get(attr::REALM), m.get(attr::NONCE)) {
                            self.realm = r.value.to_vec();
                            self.nonce = nn.value.to_vec();
                            continue;
                        }
                    }
                    bail!("error {code}");
                }
                _ => bail!("unexpected response class"),
            }
        }
        bail!("could not authenticate")
    }
}

fn md5_key(user: &str, realm: &[u8], password: &str) -> Vec<u8> {
    use md5::Digest as _;
    let mut h = md5::Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().to_vec()
}

/// Connect, Allocate, ChannelBind to `peer`.
async fn setup_one(
    cfg: &StreamConfig,
    tls: &tokio_rustls::TlsConnector,
    peer: SocketAddr,
) -> anyhow::Result<(Conn, Framer)> {
    let mut conn = connect(cfg.server, cfg.transport, tls).await?;
    let mut framer = Framer::new();
    let mut s = StunSession::new(&cfg.creds);
    s.transaction(&mut conn, &mut framer, method::ALLOCATE, &|w| {
        let _ = w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    })
    .await
    .context("allocate")?;
    s.transaction(&mut conn, &mut framer, method::CHANNEL_BIND, &|w| {
        let _ = w.u32_attr(attr::CHANNEL_NUMBER, u32::from(CHANNEL) << 16);
        let _ = w.xor_address(attr::XOR_PEER_ADDRESS, &peer);
    })
    .await
    .context("channel bind")?;
    Ok((conn, framer))
}

struct Stats {
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    hist: Histogram<u64>,
}

impl Stats {
    fn record(&mut self, seq: u64, sched: u64, now: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        let Some(word) = self.seen.get_mut(w) else {
            return;
        };
        if *word & (1 << b) != 0 {
            self.duplicates += 1;
            return;
        }
        *word |= 1 << b;
        self.received += 1;
        self.hist
            .saturating_record(now.saturating_sub(sched).max(1));
    }
}

/// Run one stream load (blocking; its own single-threaded runtime).
pub fn run(cfg: &StreamConfig) -> anyhow::Result<LoadReport> {
    if cfg.size < MIN_SIZE || cfg.size > 1400 {
        bail!("--size must be {MIN_SIZE}..=1400 bytes");
    }
    if cfg.allocations == 0 || cfg.rate == 0 {
        bail!("--allocations and --rate must be positive");
    }
    crate::sock::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(cfg))
}

async fn run_async(cfg: &StreamConfig) -> anyhow::Result<LoadReport> {
    let tls = tls_connector()?;
    let echo = Rc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let peer = echo.local_addr()?;
    // The echo peer: every datagram straight back to where it came from.
    let echo_task = {
        let echo = echo.clone();
        tokio::task::spawn_local(async move {
            let mut b = vec![0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        })
    };
    let t_setup = std::time::Instant::now();
    let rss0 = cfg.server_pid.and_then(rss_kib);
    let sem = Rc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..cfg.allocations {
        let (cfg, tls, sem) = (cfg.clone(), tls.clone(), sem.clone());
        set.spawn_local(async move {
            let _p = sem.acquire().await;
            anyhow::Ok((i, setup_one(&cfg, &tls, peer).await?))
        });
    }
    let mut conns: Vec<Option<(Conn, Framer)>> = (0..cfg.allocations).map(|_| None).collect();
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(r) = tokio::time::timeout_at(limit, set.join_next())
        .await
        .context("setup timed out")?
    {
        let (i, c) = r??;
        conns[i] = Some(c);
    }
    let setup_s = t_setup.elapsed().as_secs_f64();
    let rss1 = cfg.server_pid.and_then(rss_kib);

    let total =
        ((cfg.rate as f64 * cfg.duration.as_secs_f64()).round() as u64).clamp(1, MAX_PACKETS);
    let stats = Rc::new(RefCell::new(Stats {
        seen: vec![0u64; total.div_ceil(64) as usize],
        received: 0,
        duplicates: 0,
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
    }));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for c in conns.into_iter() {
        let (conn, mut framer) = c.context("all set up")?;
        let (mut rd, wr) = tokio::io::split(conn);
        writers.push(wr);
        let stats = stats.clone();
        readers.push(tokio::task::spawn_local(async move {
            let mut f = Vec::new();
            while let Ok(true) = framer.next(&mut rd, &mut f).await {
                let Some(p) = f.get(4..4 + MIN_SIZE) else {
                    continue;
                };
                if f[0] & 0xC0 != 0x40 {
                    continue;
                }
                let seq = u64::from_be_bytes(p[4..12].try_into().unwrap_or_default());
                let sched = u64::from_be_bytes(p[12..20].try_into().unwrap_or_default());
                stats.borrow_mut().record(seq, sched, mono_ns());
            }
        }));
    }
    let n = writers.len();
    let padded = (4 + cfg.size + 3) & !3;
    let mut pkt = vec![0u8; padded];
    pkt[..2].copy_from_slice(&CHANNEL.to_be_bytes());
    pkt[2..4].copy_from_slice(&(cfg.size as u16).to_be_bytes());
    let interval = 1e9 / cfg.rate as f64;
    let cpu0 = cfg.server_pid.and_then(cpu_ns);
    let start = mono_ns() + 2_000_000;
    let end_of_sends = start + (total as f64 * interval) as u64;
    let hard_end = end_of_sends + DRAIN.as_nanos() as u64;
    let (mut k, mut sent, mut send_errors, mut unsent) = (0u64, 0u64, 0u64, 0u64);
    while k < total {
        let now = mono_ns();
        if now >= hard_end {
            unsent = total - k;
            break;
        }
        let mut burst = 0;
        while k < total && start + (k as f64 * interval) as u64 <= now && burst < 256 {
            let sched = start + (k as f64 * interval) as u64;
            let i = (k % n as u64) as usize;
            pkt[8..16].copy_from_slice(&k.to_be_bytes());
            pkt[16..24].copy_from_slice(&sched.to_be_bytes());
            pkt[24..28].copy_from_slice(&(i as u32).to_be_bytes());
            match writers[i].write_all(&pkt).await {
                Ok(()) => sent += 1,
                Err(_) => send_errors += 1,
            }
            k += 1;
            burst += 1;
        }
        for w in writers.iter_mut() {
            let _ = w.flush().await;
        }
        // Let the readers run; sleep when nothing is due yet.
        let next = start + (k as f64 * interval) as u64;
        let now = mono_ns();
        if next > now + 1_000_000 {
            tokio::time::sleep(Duration::from_nanos(next - now)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    // Drain.
    while mono_ns() < hard_end {
        {
            let s = stats.borrow();
            if s.received + s.duplicates >= sent {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed_ns = mono_ns().saturating_sub(start).max(1);
    let cpu1 = cfg.server_pid.and_then(cpu_ns);
    for r in &readers {
        r.abort();
    }
    for mut w in writers {
        let _ = w.shutdown().await;
    }
    echo_task.abort();
    let s = stats.borrow();
    let run_s = (end_of_sends - start) as f64 / 1e9;
    let forwarded = 2 * s.received;
    let (cpu_per_pkt, util) = match (cpu0, cpu1) {
        (Some(a), Some(b)) if forwarded > 0 => (
            Some((b - a) as f64 / forwarded as f64),
            Some((b - a) as f64 / elapsed_ns as f64),
        ),
        _ => (None, None),
    };
    let lost = sent.saturating_sub(s.received);
    let q = |p: f64| s.hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(LoadReport {
        mode: match cfg.transport {
            StreamTransport::Tcp => "peer-tcp".into(),
            StreamTransport::Tls => "peer-tls".into(),
        },
        allocations: n,
        size: cfg.size,
        duration_s: run_s,
        offered_pps: cfg.rate as f64,
        sent,
        send_errors,
        sent_pps: sent as f64 / run_s.max(1e-9),
        unsent,
        received: s.received,
        duplicates: s.duplicates,
        lost,
        loss_pct: if sent > 0 {
            lost as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
        delivered_pps: s.received as f64 / run_s.max(1e-9),
        forwarded_pps: forwarded as f64 / run_s.max(1e-9),
        rtt_p50_us: q(0.5),
        rtt_p99_us: q(0.99),
        rtt_p999_us: q(0.999),
        rtt_max_us: s.hist.max() as f64 / 1000.0,
        server_cpu_ns_per_packet: cpu_per_pkt,
        server_cpu_util: util,
        server_cpu_other: None,
        server_rss_kib: rss1,
        server_rss_bytes_per_allocation: match (rss0, rss1) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) * 1024.0 / n as f64),
            _ => None,
        },
        setup_s,
    })
}

/// What `stream-conns` measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConnReport {
    pub transport: String,
    pub requested: usize,
    /// Connections open and answering a Binding request at once.
    pub held: usize,
    /// The first failure, if any stopped the count below `requested`.
    pub first_error: Option<String>,
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    /// (RSS held - RSS before) / held, in bytes.
    pub bytes_per_connection: Option<f64>,
}

/// Open `count` connections, a Binding on each, all held at once; read the RSS.
pub fn conns(
    server: SocketAddr,
    transport: StreamTransport,
    count: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<ConnReport> {
    crate::sock::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tls = tls_connector()?;
        let rss0 = server_pid.and_then(rss_kib);
        let sem = Rc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..count {
            let (tls, sem) = (tls.clone(), sem.clone());
            set.spawn_local(async move {
                let _p = sem.acquire().await;
                let mut c = connect(server, transport, &tls).await?;
                let mut f = Framer::new();
                let mut req = [0u8; 64];
                let tid = rand::random::<[u8; 12]>();
                let w = MessageWriter::new(
                    &mut req,
                    message_type(method::BINDING, Class::Request),
                    &tid,
                )
                .map_err(|_| anyhow::anyhow!("encode"))?;
                let n = w.finish();
                c.write_all(&req[..n]).await?;
                let mut resp = Vec::new();
                if !f.next(&mut c, &mut resp).await? {
                    bail!("closed before the Binding answer");
                }
                anyhow::Ok(c)
            });
        }
        let mut held = Vec::new();
        let mut first_error = None;
        let limit = tokio::time::Instant::now() + Duration::from_secs(120);
        while let Ok(Some(r)) = tokio::time::timeout_at(limit, set.join_next()).await {
            match r {
                Ok(Ok(c)) => held.push(c),
                Ok(Err(e)) => {
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        // Let the server settle (buffers of finished handshakes freed).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss1 = server_pid.and_then(rss_kib);
        let n = held.len();
        drop(held);
        Ok(ConnReport {
            transport: match transport {
                StreamTransport::Tcp => "tcp".into(),
                StreamTransport::Tls => "tls".into(),
            },
            requested: count,
            held: n,
            first_error,
            rss_before_kib: rss0,
            rss_held_kib: rss1,
            bytes_per_connection: match (rss0, rss1) {
                (Some(a), Some(b)) if n > 0 => Some((b as f64 - a as f64) * 1024.0 / n as f64),
                _ => None,
            },
        })
    })
}
