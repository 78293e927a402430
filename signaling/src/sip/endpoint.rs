//! The SIP endpoint: binds UDP, TCP, TLS, WS and WSS listeners, frames streams, runs server
//! transactions and hands what they let through to a [`TransactionUser`]: each new
//! request (retransmissions are absorbed here), each response (for the client
//! transactions the user runs) and each ACK for a 2xx (end to end, no transaction).
//! It knows nothing of what the user is (registrar, proxy).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::metrics::{DropReason, SipMetrics};
use crate::sip::message::{
    frame_stream, new_tag, stamp_via, Framing, HeaderName, Message, Reply, ResponseBuilder,
};
use crate::sip::transaction::{ServerInvite, ServerNonInvite, TimerConfig};
use crate::sip::transport::{Flows, Transport};
use crate::sip::{Origin, SipConfig};

mod ws;

/// Errors starting or running the SIP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {transport} listener on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("server task failed: {0}")]
    Task(String),
}

/// Addresses the listeners are bound to (useful when configured with port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAddrs {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// SIP over WebSocket (RFC 7118).
    pub ws: Option<SocketAddr>,
    /// SIP over secure WebSocket (RFC 7118).
    pub wss: Option<SocketAddr>,
}

/// `udp 127.0.0.1:5060, tcp 127.0.0.1:5060, ws 127.0.0.1:5066`: the transports that
/// listen, for the start-up line.
impl std::fmt::Display for SipAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, a) in [
            ("udp", self.udp),
            ("tcp", self.tcp),
            ("tls", self.tls),
            ("ws", self.ws),
            ("wss", self.wss),
        ] {
            if let Some(a) = a {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                write!(f, "{name} {a}")?;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A new request handed to the [`TransactionUser`], with what it needs to answer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub msg: &'a Message<'a>,
    pub raw: &'a [u8],
    pub origin: Origin,
    /// The top Via with `received`/`rport` filled in (RFC 3261 18.2.1, RFC 3581).
    pub top_via: &'a str,
    /// The key of the server INVITE transaction this request would belong to: a
    /// CANCEL names the INVITE it cancels by it.
    pub invite_key: &'a str,
}

impl Request<'_> {
    /// A response to this request, with a fresh To tag.
    pub fn reply(&self, code: u16, reason: &str) -> ResponseBuilder {
        ResponseBuilder::new(self.msg, code, reason, self.top_via, Some(&new_tag()))
    }
}

/// What the transaction user did with a new request.
pub enum Handled {
    /// Answer now through the server transaction.
    Reply(Reply),
    /// Answer now, then run `then` once the answer has been handed to the transport
    /// (a REGISTER's bindings are announced only after its 200; a CANCEL's INVITE is
    /// cancelled only after the 200 to the CANCEL, so the 487 never overtakes it).
    ReplyThen(Reply, Box<dyn FnOnce() + Send>),
    /// The user took the request and answers later through the [`Upstream`].
    Taken,
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handled::Reply(r) => f.debug_tuple("Reply").field(&r.code).finish(),
            Handled::ReplyThen(r, _) => f.debug_tuple("ReplyThen").field(&r.code).finish(),
            Handled::Taken => f.write_str("Taken"),
        }
    }
}

/// Boxed future of [`TransactionUser::on_request`].
pub type TuFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What sits above the transaction layer (RFC 3261 section 6, "TU").
pub trait TransactionUser: Send + Sync + 'static {
    /// A new request (not a retransmission, not an ACK); answer with [`Handled`].
    fn on_request<'a>(&'a self, req: Request<'a>, upstream: Upstream) -> TuFuture<'a, Handled>;
    /// An ACK that matched no server transaction: the ACK for a 2xx, end to end.
    fn on_ack<'a>(&'a self, msg: &'a Message<'a>, origin: Origin) -> TuFuture<'a, ()>;
    /// A valid response, for a client transaction of the user; false for a stray
    /// (matching none).
    fn on_response(&self, msg: &Message<'_>, raw: &[u8]) -> bool;
}

/// Listeners bound, not serving yet: where they listen is known, so the layers above
/// can be built with it before [`BoundEndpoint::serve`].
pub struct BoundEndpoint {
    cfg: SipConfig,
    flows: Arc<Flows>,
    addrs: SipAddrs,
    udp: Option<(Arc<UdpSocket>, SocketAddr)>,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    ws: Option<TcpListener>,
    wss: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

impl std::fmt::Debug for BoundEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundEndpoint")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// A running SIP endpoint.
#[derive(Debug)]
pub struct Endpoint {
    addrs: SipAddrs,
    tracker: TaskTracker,
}
/// Most requests handled at once (UDP); more are dropped and retransmitted by clients.
const MAX_IN_FLIGHT: usize = 1024;

enum ServerTx {
    NonInvite(ServerNonInvite),
    Invite(ServerInvite),
}

struct TxEntry {
    tx: ServerTx,
    transport: Transport,
    dest: SocketAddr,
    /// The source's key (IPv4 address, IPv6 /64) for its share of the table.
    source: std::net::IpAddr,
}

#[derive(Default)]
struct TxTable {
    entries: HashMap<String, TxEntry>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Transactions held per source key.
    per_source: HashMap<std::net::IpAddr, usize>,
}

impl TxTable {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            if let Some(n) = self.per_source.get_mut(&e.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_source.remove(&e.source);
                }
            }
        }
    }

    /// Schedules `key` at `at`; true when that is now the earliest timer (the timer
    /// task must wake earlier than it planned).
    fn schedule(&mut self, at: Instant, key: String) -> bool {
        let earliest = self
            .timers
            .peek()
            .is_none_or(|Reverse((first, _))| at < *first);
        self.timers.push(Reverse((at, key)));
        earliest
    }
}

/// The server transactions, and the timer task's wake-up for an earlier deadline.
#[derive(Default)]
struct Transactions {
    table: Mutex<TxTable>,
    earlier: Notify,
}

struct Server {
    cfg: SipConfig,
    tu: Arc<dyn TransactionUser>,
    flows: Arc<Flows>,
    txs: Arc<Transactions>,
    metrics: SipMetrics,
    clock: Clock,
    timers: TimerConfig,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// Open connections per source key (IPv4 address, IPv6 /64).
    per_source: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// One place of a source's connection share, given back when dropped.
struct SourceSlot(
    Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    std::net::IpAddr,
);

impl SourceSlot {
    fn take(
        map: &Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
        remote: SocketAddr,
        max: usize,
    ) -> Option<SourceSlot> {
        let key = crate::source::source_key(remote.ip());
        let mut m = map.lock().ok()?;
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(map.clone(), key))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

impl Endpoint {
    /// Binds the configured listeners; `flows` is where responses and requests to
    /// devices go out (shared with the layers above).
    pub async fn bind(cfg: &SipConfig, flows: Arc<Flows>) -> Result<BoundEndpoint, SipError> {
        cfg.validate().map_err(SipError::Config)?;
        let mut addrs = SipAddrs {
            udp: None,
            tcp: None,
            tls: None,
            ws: None,
            wss: None,
        };
        let mut udp = None;
        let mut tcp = None;
        let mut tls = None;
        let mut ws = None;
        let mut wss = None;
        if let Some(addr) = cfg.udp_listen {
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(|source| SipError::Bind {
                    transport: "udp",
                    addr,
                    source,
                })?;
            let local = sock.local_addr().map_err(|source| SipError::Bind {
                transport: "udp",
                addr,
                source,
            })?;
            addrs.udp = Some(local);
            let sock = Arc::new(sock);
            flows.set_udp(sock.clone());
            udp = Some((sock, local));
        }
        if let Some(addr) = cfg.tcp_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| SipError::Bind {
                    transport: "tcp",
                    addr,
                    source,
                })?;
            addrs.tcp = Some(l.local_addr().map_err(|source| SipError::Bind {
                transport: "tcp",
                addr,
                source,
            })?);
            tcp = Some(l);
        }
        if let Some(addr) = cfg.tls_listen {
            let acceptor = tls_acceptor(cfg)?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| SipError::Bind {
                    transport: "tls",
                    addr,
                    source,
                })?;
            addrs.tls = Some(l.local_addr().map_err(|source| SipError::Bind {
                transport: "tls",
                addr,
                source,
            })?);
            tls = Some((l, acceptor));
        }
        if let Some(addr) = cfg.ws_listen {
            let (l, local) = bind_stream("ws", addr).await?;
            addrs.ws = Some(local);
            ws = Some(l);
        }
        if let Some(addr) = cfg.wss_listen {
            let acceptor = tls_acceptor(cfg)?;
            let (l, local) = bind_stream("wss", addr).await?;
            addrs.wss = Some(local);
            wss = Some((l, acceptor));
        }
        Ok(BoundEndpoint {
            cfg: cfg.clone(),
            flows,
            addrs,
            udp,
            tcp,
            tls,
            ws,
            wss,
        })
    }

    pub fn local_addrs(&self) -> SipAddrs {
        self.addrs
    }

    /// Resolves when the endpoint has stopped after shutdown.
    pub async fn wait(self) -> Result<(), SipError> {
        self.tracker.wait().await;
        Ok(())
    }
}

impl BoundEndpoint {
    pub fn local_addrs(&self) -> SipAddrs {
        self.addrs
    }

    /// Starts serving: requests go to `tu` until `shutdown` is cancelled.
    pub fn serve(
        self,
        tu: Arc<dyn TransactionUser>,
        metrics: SipMetrics,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Endpoint {
        let tracker = TaskTracker::new();
        let addrs = self.addrs;
        let server = Arc::new(Server {
            cfg: self.cfg.clone(),
            tu,
            flows: self.flows.clone(),
            txs: Arc::new(Transactions::default()),
            metrics,
            clock,
            timers: TimerConfig::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            connections: Arc::new(Semaphore::new(self.cfg.max_connections)),
            per_source: Arc::new(std::sync::Mutex::new(HashMap::new())),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        if let Some((sock, local)) = self.udp {
            tracker.spawn(server.clone().udp_loop(sock, local));
        }
        if let Some(l) = self.tcp {
            tracker.spawn(server.clone().accept_loop(l, None));
        }
        if let Some((l, acceptor)) = self.tls {
            tracker.spawn(server.clone().accept_loop(l, Some(acceptor)));
        }
        if let Some(l) = self.ws {
            tracker.spawn(server.clone().ws_accept_loop(l, None));
        }
        if let Some((l, acceptor)) = self.wss {
            tracker.spawn(server.clone().ws_accept_loop(l, Some(acceptor)));
        }
        tracker.spawn(server.clone().transaction_timer_loop());
        self.flows
            .set_connector(Arc::new(Outbound(Arc::downgrade(&server))));
        tracker.close();
        tracing::info!(listen = %addrs, "SIP listening");
        Endpoint { addrs, tracker }
    }
}

/// How long an outbound TCP connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Outbound connections of the endpoint (held weakly: the flows outlive no server).
struct Outbound(std::sync::Weak<Server>);

impl crate::sip::transport::Connector for Outbound {
    fn connect(
        &self,
        t: Transport,
        remote: SocketAddr,
    ) -> crate::sip::transport::ConnectFuture<'_> {
        Box::pin(async move {
            let Some(server) = self.0.upgrade() else {
                return false;
            };
            server.connect(t, remote).await
        })
    }
}

/// Binds a stream listener; returns it and the address it got.
async fn bind_stream(
    transport: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), SipError> {
    let err = |source| SipError::Bind {
        transport,
        addr,
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

/// Whether the certificate and key of the TLS and WSS listeners load as they would
/// at start (`--check-config`); `Ok` when neither listener is configured.
pub fn check_tls_files(cfg: &SipConfig) -> Result<(), SipError> {
    if cfg.tls_listen.is_some() || cfg.wss_listen.is_some() {
        tls_acceptor(cfg)?;
    }
    Ok(())
}

fn tls_acceptor(cfg: &SipConfig) -> Result<tokio_rustls::TlsAcceptor, SipError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Err(SipError::Config(
            "sip.tls_listen: needs sip.tls_cert and sip.tls_key".into(),
        ));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| SipError::Tls(format!("sip.tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(SipError::Tls(format!(
            "sip.tls_cert {}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| SipError::Tls(format!("sip.tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SipError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| SipError::Tls(format!("sip.tls_cert/sip.tls_key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl Server {
    async fn udp_loop(self: Arc<Self>, sock: Arc<UdpSocket>, local: SocketAddr) {
        let mut buf = vec![0u8; self.cfg.max_message_size + 1];
        loop {
            let (n, src) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive error");
                        continue;
                    }
                },
            };
            if n > self.cfg.max_message_size {
                // RFC 3261 18.1.1 / 21.5.8: too large for us; the head of it is
                // usually enough to say so.
                self.metrics.drop(DropReason::Oversized);
                let head = buf.get(..self.cfg.max_message_size).unwrap_or(&[]);
                let origin = Origin {
                    transport: Transport::Udp,
                    source: src,
                    local,
                };
                self.refuse_unreadable(head, origin, 513, "Message Too Large")
                    .await;
                continue;
            }
            let Some(data) = buf.get(..n) else { continue };
            // RFC 5626 4.4.2 / 8.4: STUN Binding keep-alives share the port; the
            // first byte tells them from SIP.
            if super::stun::is_stun(data) {
                let mut out = [0u8; super::stun::MAX_ANSWER];
                if let Some(len) = super::stun::answer_binding(data, src, &mut out) {
                    if let Some(answer) = out.get(..len) {
                        let _ = sock.send_to(answer, src).await;
                    }
                } else {
                    self.metrics.drop(DropReason::Unparseable);
                }
                continue;
            }
            // Keep-alive CRLFs on UDP (RFC 5626 4.4.1 uses STUN there; tolerate CRLF).
            if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
                continue;
            }
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                // Too much in flight: shed at once with a way back, counted. (A
                // retransmission would only add to the load.)
                self.metrics.drop(DropReason::InFlightFull);
                let origin = Origin {
                    transport: Transport::Udp,
                    source: src,
                    local,
                };
                self.refuse_unreadable_with(data, origin, (503, "Service Unavailable"), Some("5"))
                    .await;
                continue;
            };
            let data = data.to_vec();
            let me = self.clone();
            self.tracker.spawn(async move {
                me.handle(
                    &data,
                    Origin {
                        transport: Transport::Udp,
                        source: src,
                        local,
                    },
                )
                .await;
                drop(permit);
            });
        }
    }

    /// A place for a new connection from `remote` in its source's share and in the
    /// total (every stream transport counts in both), or `None`, counted: the caller
    /// closes the connection at once.
    fn admit(&self, remote: SocketAddr) -> Option<(SourceSlot, tokio::sync::OwnedSemaphorePermit)> {
        let Some(source_slot) = SourceSlot::take(
            &self.per_source,
            remote,
            self.cfg.max_connections_per_source,
        ) else {
            self.metrics.drop(DropReason::SourceConnectionsFull);
            return None;
        };
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.metrics.drop(DropReason::ConnectionsFull);
            tracing::debug!("connection limit reached, closing new connection");
            return None;
        };
        Some((source_slot, permit))
    }

    async fn accept_loop(self: Arc<Self>, l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        loop {
            let (stream, remote) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let Some((source_slot, permit)) = self.admit(remote) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(remote);
            let me = self.clone();
            let tls = tls.clone();
            self.tracker.spawn(async move {
                match tls {
                    None => me.stream_loop(stream, transport, remote, local).await,
                    Some(acc) => {
                        let hs = Duration::from_secs(me.cfg.tls_handshake_timeout_secs);
                        match tokio::time::timeout(hs, acc.accept(stream)).await {
                            Ok(Ok(s)) => me.stream_loop(s, transport, remote, local).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
                drop(source_slot);
            });
        }
    }

    /// Opens a TCP connection to `remote` and serves it as a flow, like an accepted
    /// one (same limits, same idle timer). TLS needs the device's certificate name,
    /// which a registration does not give: not opened, logged.
    async fn connect(self: Arc<Self>, t: Transport, remote: SocketAddr) -> bool {
        if t != Transport::Tcp {
            tracing::info!(
                transport = t.as_str(),
                "no open flow to the device and outbound connections are TCP only: not reached"
            );
            return false;
        }
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.metrics.drop(DropReason::ConnectionsFull);
            return false;
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "outbound TCP connection to a device failed");
                return false;
            }
            Err(_) => {
                tracing::info!("outbound TCP connection to a device timed out");
                return false;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(remote);
        tracing::info!("outbound TCP connection opened to a device");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        self.tracker.spawn(async move {
            me.stream_loop_ready(stream, t, remote, local, Some(ready_tx))
                .await;
            drop(permit);
        });
        ready_rx.await.is_ok()
    }

    async fn stream_loop<S>(
        self: Arc<Self>,
        stream: S,
        transport: Transport,
        remote: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.stream_loop_ready(stream, transport, remote, local, None)
            .await
    }

    /// Serves one connection; `ready` hears when its flow is registered.
    async fn stream_loop_ready<S>(
        self: Arc<Self>,
        stream: S,
        transport: Transport,
        remote: SocketAddr,
        local: SocketAddr,
        ready: Option<tokio::sync::oneshot::Sender<()>>,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let close = self.shutdown.child_token();
        let id = self.flows.add(transport, remote, tx.clone(), close.clone());
        if let Some(r) = ready {
            let _ = r.send(());
        }
        let writer_close = close.clone();
        let mut writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = writer_close.cancelled() => break,
                    m = rx.recv() => match m {
                        Some(bytes) => {
                            if wr.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            let _ = wr.shutdown().await;
        });
        let max = self.cfg.max_message_size;
        let idle = self.cfg.idle_timeout();
        let message_timeout = Duration::from_secs(self.cfg.message_timeout_secs);
        // When the first byte of the message being read arrived.
        let mut started: Option<Instant> = None;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut answered_before_close = false;
        'conn: loop {
            // Frame everything already buffered.
            loop {
                match frame_stream(&buf, max) {
                    Framing::Incomplete => break,
                    Framing::Ping(n) => {
                        buf.drain(..n);
                        // RFC 5626 4.4.1: answer a double-CRLF ping with a single CRLF.
                        let _ = tx.try_send(b"\r\n".to_vec());
                    }
                    Framing::Skip(n) => {
                        buf.drain(..n);
                    }
                    Framing::Message(n) => {
                        let msg: Vec<u8> = buf.drain(..n).collect();
                        started = None;
                        self.handle(
                            &msg,
                            Origin {
                                transport,
                                source: remote,
                                local,
                            },
                        )
                        .await;
                    }
                    Framing::Invalid => {
                        // Answer what can be answered (513 over the size limit, 400
                        // for a missing or bad Content-Length), then close: the
                        // stream cannot be framed past this point.
                        let (code, reason) = stream_error(&buf, max);
                        self.metrics.drop(if code == 513 {
                            DropReason::Oversized
                        } else {
                            DropReason::Unparseable
                        });
                        let origin = Origin {
                            transport,
                            source: remote,
                            local,
                        };
                        answered_before_close =
                            self.refuse_unreadable(&buf, origin, code, reason).await;
                        tracing::debug!(
                            transport = transport.as_str(),
                            code,
                            answered = answered_before_close,
                            "unframeable stream, closing"
                        );
                        break 'conn;
                    }
                }
            }
            if buf.capacity() - buf.len() < 2048 {
                buf.reserve(4096);
            }
            let now = self.clock.now();
            if buf.is_empty() {
                started = None;
            } else if started.is_none() {
                started = Some(now);
            }
            let wait = match started {
                Some(t) => (t + message_timeout)
                    .saturating_duration_since(now)
                    .min(idle),
                None => idle,
            };
            let read = tokio::select! {
                _ = close.cancelled() => break,
                r = tokio::time::timeout(wait, rd.read_buf(&mut buf)) => r,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) if started.is_some() => {
                    self.metrics.drop(DropReason::SlowMessage);
                    tracing::debug!("message not complete in time, connection closed");
                    break;
                }
                Err(_) => {
                    tracing::debug!("idle connection closed");
                    break;
                }
            }
        }
        self.flows.remove(transport, remote, id);
        if answered_before_close {
            // Let the writer send the answer before the connection closes: it ends
            // once every sender is gone (bounded, in case the peer does not read).
            drop(tx);
            if tokio::time::timeout(Duration::from_secs(2), &mut writer)
                .await
                .is_err()
            {
                close.cancel();
                let _ = writer.await;
            }
            close.cancel();
            return;
        }
        close.cancel();
        let _ = writer.await;
    }

    /// Drives server transaction timers (G, H, I, J) from a heap, sleeping until the
    /// earliest deadline (woken sooner when an earlier one is scheduled).
    async fn transaction_timer_loop(self: Arc<Self>) {
        loop {
            let next = self
                .txs
                .table
                .lock()
                .ok()
                .and_then(|t| t.timers.peek().map(|Reverse((at, _))| *at));
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.txs.earlier.notified() => continue,
                _ = sleep => {}
            }
            let now = self.clock.now();
            let mut sends = Vec::new();
            if let Ok(mut t) = self.txs.table.lock() {
                while let Some(Reverse((at, _))) = t.timers.peek() {
                    if *at > now {
                        break;
                    }
                    let Some(Reverse((_, key))) = t.timers.pop() else {
                        break;
                    };
                    let mut done = false;
                    let mut next = None;
                    if let Some(e) = t.entries.get_mut(&key) {
                        let (out, term, nt) = drive(&mut e.tx, |tx| match tx {
                            ServerTx::NonInvite(x) => x.handle_timeout(now),
                            ServerTx::Invite(x) => x.handle_timeout(now),
                        });
                        for b in out {
                            sends.push((e.transport, e.dest, b));
                        }
                        done = term;
                        next = nt;
                    }
                    if done {
                        t.remove(&key);
                    } else if let Some(n) = next {
                        t.timers.push(Reverse((n, key)));
                    }
                }
                self.metrics.transactions(t.entries.len());
            }
            for (tr, dest, b) in sends {
                self.flows.send(tr, dest, b).await;
            }
        }
    }

    /// Where responses to this request go (RFC 3261 18.2.2, RFC 3581 4).
    fn response_dest(origin: Origin, via: &crate::sip::grammar::Via<'_>) -> SocketAddr {
        if origin.transport.reliable() || via.params.contains("rport") {
            origin.source
        } else {
            SocketAddr::new(origin.source.ip(), via.port.unwrap_or(5060))
        }
    }

    /// Answers a request we cannot take (unparseable, over the size limit) with
    /// `code` when its header section can be read well enough to route a response
    /// (RFC 3261 21.4.1, 21.5.6, 21.5.8, 8.2.2); otherwise it is dropped. Returns
    /// whether an answer went out.
    async fn refuse_unreadable(
        &self,
        data: &[u8],
        origin: Origin,
        code: u16,
        reason: &str,
    ) -> bool {
        self.refuse_unreadable_with(data, origin, (code, reason), None)
            .await
    }

    /// [`Self::refuse_unreadable`] with a Retry-After (for 503).
    async fn refuse_unreadable_with(
        &self,
        data: &[u8],
        origin: Origin,
        (code, reason): (u16, &str),
        retry_after: Option<&str>,
    ) -> bool {
        let Some(msg) = Message::parse_head_for_error(data) else {
            tracing::debug!(code, "unreadable SIP message dropped");
            return false;
        };
        if msg.method() == Some("ACK") {
            return false;
        }
        let Some(top) = msg
            .list(HeaderName::Via)
            .ok()
            .and_then(|l| l.first().copied())
        else {
            tracing::debug!(code, "SIP message without a Via dropped");
            return false;
        };
        let (stamped, dest) = match msg.top_via() {
            Ok(via) => (
                stamp_via(top, &via, origin.source),
                Self::response_dest(origin, &via),
            ),
            // A Via we cannot read (another SIP version): on a connection the answer
            // goes back over it all the same (RFC 3261 18.2.2), with the Via copied.
            Err(_) if origin.transport.reliable() => (top.to_owned(), origin.source),
            Err(_) => {
                tracing::debug!(code, "SIP message without a usable Via dropped");
                return false;
            }
        };
        let mut r = ResponseBuilder::new(&msg, code, reason, &stamped, Some(&new_tag()));
        if let Some(secs) = retry_after {
            r = r.header("Retry-After", secs);
        }
        self.metrics.response(msg.method().unwrap_or(""), code);
        self.flows.send(origin.transport, dest, r.finish()).await
    }

    async fn handle(self: &Arc<Self>, data: &[u8], origin: Origin) {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.drop(DropReason::Unparseable);
                let (code, reason) = e.status();
                let reason = if code == 400 && reason == "Bad Request" {
                    format!("Bad Request ({e})")
                } else {
                    reason.to_owned()
                };
                self.refuse_unreadable(data, origin, code, &reason).await;
                return;
            }
        };
        if !msg.is_request() {
            // To the proxy's client transaction it answers; stray ones are dropped.
            match msg.validate_response() {
                Ok(()) => {
                    if !self.tu.on_response(&msg, data) {
                        self.metrics.drop(DropReason::StrayResponse);
                    }
                }
                Err(e) => {
                    self.metrics.drop(DropReason::Unparseable);
                    tracing::debug!(error = %e, "invalid response dropped");
                }
            }
            return;
        }
        // Without a usable top Via we cannot route a response: drop.
        let (top_text, via) = match (msg.list(HeaderName::Via), msg.top_via()) {
            (Ok(list), Ok(v)) => match list.first() {
                Some(t) => ((*t).to_owned(), v),
                None => {
                    self.metrics.drop(DropReason::NoVia);
                    return;
                }
            },
            _ => {
                self.metrics.drop(DropReason::NoVia);
                return;
            }
        };
        let stamped = stamp_via(&top_text, &via, origin.source);
        let dest = Self::response_dest(origin, &via);
        let method = msg.method().unwrap_or("");
        if let Err(e) = msg.validate_request() {
            if method == "ACK" {
                return;
            }
            let (code, reason) = e.status();
            self.metrics.drop(DropReason::Unparseable);
            self.metrics.response(method, code);
            let bytes =
                ResponseBuilder::new(&msg, code, reason, &stamped, Some(&new_tag())).finish();
            self.flows.send(origin.transport, dest, bytes).await;
            return;
        }
        let branch = via.branch().unwrap_or("");
        let tx_method = if method == "ACK" { "INVITE" } else { method };
        let key = format!(
            "{branch}|{}:{}|{}|{}",
            via.host,
            via.port.unwrap_or(0),
            tx_method,
            origin.transport.as_str()
        );

        // Retransmission or ACK for an existing server transaction, or a new one. Looked
        // up and inserted under one lock, so two copies of a request arriving together
        // are never both handed to the TU (a duplicate would replay its nonce-count).
        let reliable = origin.transport.reliable();
        let mut resend = Vec::new();
        let mut ack_2xx = false;
        let mut full = false;
        let mut earlier = false;
        let is_new = match self.txs.table.lock() {
            Ok(mut t) => {
                let source = crate::source::source_key(origin.source.ip());
                // One source gets at most its share of the table (an eighth by
                // default), so a flood from it leaves room for everybody else (it is
                // answered 503 past its share).
                let share = self.cfg.transactions_per_source();
                let at_limit = t.entries.len() >= self.cfg.max_transactions
                    || t.per_source.get(&source).is_some_and(|n| *n >= share);
                match t.entries.get_mut(&key) {
                    Some(e) => {
                        let now = self.clock.now();
                        let (out, _, next) = drive(&mut e.tx, |tx| match tx {
                            ServerTx::NonInvite(x) => x.handle_request_retransmission(),
                            ServerTx::Invite(x) if method == "ACK" => x.handle_ack(now),
                            ServerTx::Invite(x) => x.handle_request_retransmission(),
                        });
                        resend = out;
                        if let Some(n) = next {
                            earlier = t.schedule(n, key.clone());
                        }
                        false
                    }
                    // ACK for a 2xx: end to end, through the proxy statelessly.
                    None if method == "ACK" => {
                        ack_2xx = true;
                        false
                    }
                    None if at_limit => {
                        full = true;
                        false
                    }
                    None => {
                        let tx = if method == "INVITE" {
                            ServerTx::Invite(ServerInvite::new(reliable, self.timers))
                        } else {
                            ServerTx::NonInvite(ServerNonInvite::new(reliable, self.timers))
                        };
                        t.entries.insert(
                            key.clone(),
                            TxEntry {
                                tx,
                                transport: origin.transport,
                                dest,
                                source,
                            },
                        );
                        *t.per_source.entry(source).or_insert(0) += 1;
                        self.metrics.transactions(t.entries.len());
                        true
                    }
                }
            }
            Err(_) => return,
        };
        if earlier {
            self.txs.earlier.notify_one();
        }
        if full {
            // No room for another transaction: shed it with a way back (RFC 3261
            // 21.5.4), counted.
            self.metrics.drop(DropReason::TransactionsFull);
            let bytes =
                ResponseBuilder::new(&msg, 503, "Service Unavailable", &stamped, Some(&new_tag()))
                    .header("Retry-After", "5")
                    .finish();
            self.metrics.response(method, 503);
            self.flows.send(origin.transport, dest, bytes).await;
            return;
        }
        if ack_2xx {
            self.tu.on_ack(&msg, origin).await;
            return;
        }
        if !is_new {
            for b in resend {
                self.flows.send(origin.transport, dest, b).await;
            }
            return;
        }

        self.metrics.request(method);
        let upstream = Upstream {
            txs: self.txs.clone(),
            flows: self.flows.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            method: method.to_owned(),
            key: key.clone(),
            transport: origin.transport,
            dest,
        };
        let invite_key = format!(
            "{branch}|{}:{}|INVITE|{}",
            via.host,
            via.port.unwrap_or(0),
            origin.transport.as_str()
        );
        let req = Request {
            msg: &msg,
            raw: data,
            origin,
            top_via: &stamped,
            invite_key: &invite_key,
        };
        let answer = upstream.clone();
        let (reply, then) = match self.tu.on_request(req, upstream).await {
            Handled::Reply(r) => (r, None),
            Handled::ReplyThen(r, then) => (r, Some(then)),
            Handled::Taken => return,
        };
        let Reply { code, bytes } = reply;
        answer.respond(code, bytes).await;
        if let Some(then) = then {
            then();
        }
    }
}

/// The way back to the caller for a request the user answers later: responses go
/// through its server transaction (retransmitted by it on UDP); a 2xx to an INVITE
/// after the transaction ended (further 2xx of a fork, RFC 3261 16.7 step 5) is sent
/// directly.
#[derive(Clone)]
pub struct Upstream {
    txs: Arc<Transactions>,
    flows: Arc<Flows>,
    metrics: SipMetrics,
    clock: Clock,
    /// The request's method (for the response metrics).
    method: String,
    key: String,
    transport: Transport,
    dest: SocketAddr,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub async fn respond(&self, code: u16, bytes: Vec<u8>) {
        self.metrics.response(&self.method, code);
        let mut out = Vec::new();
        let mut earlier = false;
        if let Ok(mut t) = self.txs.table.lock() {
            let now = self.clock.now();
            let mut remove = false;
            let mut next = None;
            match t.entries.get_mut(&self.key) {
                // A 2xx racing a final already sent (a device answered as the caller
                // cancelled): forwarded all the same (RFC 3261 16.7 step 5), the caller
                // ACKs and hangs up.
                Some(TxEntry {
                    tx: ServerTx::Invite(x),
                    ..
                }) if (200..300).contains(&code)
                    && x.state() != crate::sip::transaction::State::Proceeding =>
                {
                    out.push(bytes)
                }
                Some(e) => {
                    let (o, term, nt) = drive(&mut e.tx, |tx| match tx {
                        ServerTx::NonInvite(x) => x.send_response(now, code, bytes),
                        ServerTx::Invite(x) => x.send_response(now, code, bytes),
                    });
                    out = o;
                    remove = term;
                    next = nt;
                }
                None if (200..300).contains(&code) => out.push(bytes),
                None => {}
            }
            if remove {
                t.remove(&self.key);
                self.metrics.transactions(t.entries.len());
            } else if let Some(n) = next {
                earlier = t.schedule(n, self.key.clone());
            }
        }
        if earlier {
            self.txs.earlier.notify_one();
        }
        for b in out {
            self.flows.send(self.transport, self.dest, b).await;
        }
    }
}

/// The answer to a stream that cannot be framed: 513 when the message is (or claims
/// to be) larger than `max`, 400 otherwise.
fn stream_error(buf: &[u8], max: usize) -> (u16, &'static str) {
    if buf.len() >= max {
        return (513, "Message Too Large");
    }
    let Some(m) = Message::parse_head_for_error(buf) else {
        return (400, "Bad Request");
    };
    let lengths: Vec<&str> = m
        .headers_named(HeaderName::ContentLength)
        .map(|h| h.value.as_ref())
        .collect();
    match lengths.as_slice() {
        [] => (400, "Missing Content-Length"),
        [one] => match crate::sip::grammar::decimal(one, u64::MAX) {
            Some(n) if n > max as u64 => (513, "Message Too Large"),
            Some(_) => (400, "Bad Request"),
            None => (400, "Bad Content-Length"),
        },
        _ => (400, "Repeated Content-Length"),
    }
}

/// Runs `f` on a transaction and collects its output: bytes to send, whether it
/// terminated, and its next timeout.
fn drive(
    tx: &mut ServerTx,
    f: impl FnOnce(&mut ServerTx),
) -> (Vec<Vec<u8>>, bool, Option<Instant>) {
    f(tx);
    let mut out = Vec::new();
    let mut terminated = false;
    match tx {
        ServerTx::NonInvite(x) => {
            while let Some(b) = x.poll_transmit() {
                out.push(b);
            }
            while let Some(e) = x.poll_event() {
                terminated |= e == crate::sip::transaction::Event::Terminated;
            }
            (out, terminated, x.poll_timeout())
        }
        ServerTx::Invite(x) => {
            while let Some(b) = x.poll_transmit() {
                out.push(b);
            }
            while let Some(e) = x.poll_event() {
                terminated |= e == crate::sip::transaction::Event::Terminated;
            }
            (out, terminated, x.poll_timeout())
        }
    }
}
