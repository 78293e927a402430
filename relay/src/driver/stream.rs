//! TURN over TCP and TLS (RFC 8656 section 3.1): the client's connection is a stream,
//! the allocation's relayed side stays UDP.
//!
//! One tokio task per accepted connection. It reads the stream into a buffer of at
//! most `stream-max-frame` bytes, cuts it into STUN and ChannelData messages
//! ([`crate::stun::framing`]) and hands each to the same `turn::Server` shard the UDP
//! path uses, under the shard's lock, with a 5-tuple whose transport is
//! [`Transport::Stream`] and the connection's id. Answers go back on the stream;
//! ChannelData and Send indications are sent from the allocation's relayed socket
//! (a duplicate of its descriptor, taken when the Allocate succeeds, so the task sends
//! without going through the worker). Data from peers arrives at the worker that owns
//! the relayed socket; `handle_peer` names the stream transport, and the worker puts
//! a copy of the bytes on the connection's bounded queue (`StreamTx`), which the
//! task writes out. The UDP path is untouched (and still allocates nothing).
//!
//! Bounds: connections in total and per source IP, the TLS handshake time, the time a
//! connection may stay without an allocation and without a byte from the client,
//! the bytes queued towards a client (a slow reader is disconnected, not buffered
//! without end), and the size of a message. Closing a connection deletes its
//! allocation.
//!
//! A connection whose ConnectionBind succeeds (RFC 6062) stops being framed after the
//! answer: it moves to the worker that made the CONNECTION-ID and becomes a raw pipe
//! to its peer connection (`tcp_relay::pipe`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{lock, now, Inner, Shared, RESPONSE_MAX};
use crate::stun::framing::{next_frame, FrameError};
use crate::turn::tcp::{connection_bind_id, connection_core};
use crate::turn::{AllocationId, ClientOutput, ConnectionId, FiveTuple, Transport};

/// Messages queued towards one client before the queue counts as full (the byte cap
/// usually bites first).
const QUEUE_MESSAGES: usize = 256;
/// Size a connection's read buffer starts at; it grows (up to `stream-max-frame`)
/// only for a message that does not fit, so an idle connection stays small.
const READ_START: usize = 512;
/// How often a connection checks that its allocation still exists (to free the
/// duplicate of a relayed socket whose allocation expired) and whether it is idle.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Limits of the TCP and TLS listeners.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Connections open at once over TCP and TLS together.
    pub max_connections: usize,
    /// Connections open at once from one source IP.
    pub max_per_ip: u32,
    /// Time for a TLS handshake to finish.
    pub handshake_timeout: Duration,
    /// A connection without an allocation is closed after this long without a byte
    /// from the client.
    pub idle_timeout: Duration,
    /// Bytes queued towards one client; a connection over it is closed (slow reader).
    pub max_buffered: usize,
    /// Largest STUN or ChannelData message (padding included) read from a client.
    pub max_frame: usize,
}

/// Counters of the stream listeners (exported as metrics).
#[derive(Debug, Default)]
pub struct StreamStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub refused_total_limit: AtomicU64,
    pub refused_per_ip_limit: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_slow_reader: AtomicU64,
    pub closed_bad_frame: AtomicU64,
    pub tls_reloads: AtomicU64,
}

/// Errors of the stream listeners' set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The TLS certificate and key, read from PEM files and read again on
/// [`TlsCertificates::reload`] (SIGHUP in the binary). Connections already open keep
/// the configuration they started with; allocations are not touched.
#[derive(Debug)]
pub struct TlsCertificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stats: Arc<StreamStats>,
}

impl TlsCertificates {
    pub(crate) fn load(
        cert: PathBuf,
        key: PathBuf,
        stats: Arc<StreamStats>,
    ) -> Result<Self, StreamError> {
        let config = server_config(&cert, &key)?;
        Ok(TlsCertificates {
            cert,
            key,
            current: RwLock::new(Arc::new(config)),
            stats,
        })
    }

    /// Read the certificate and key files again. On error the previous ones stay.
    pub fn reload(&self) -> Result<(), StreamError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.stats.tls_reloads.fetch_add(1, Relaxed);
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let c = self.current.read().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(c.clone())
    }
}

/// Whether the certificate chain and key load as they would at start
/// (`--check-config`).
pub fn check_tls_files(cert: &Path, key: &Path) -> Result<(), StreamError> {
    server_config(&cert.to_path_buf(), &key.to_path_buf()).map(|_| ())
}

/// TLS 1.2 and 1.3 with the ring provider, the certificate chain and key from PEM.
fn server_config(cert: &PathBuf, key: &PathBuf) -> Result<rustls::ServerConfig, StreamError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |message: String| StreamError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| StreamError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| StreamError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StreamError::Tls(format!("certificate and key: {e}")))
}

/// The writer side of a connection, kept in its shard (`Shared::streams`) for the
/// worker that receives the allocation's peer data.
#[derive(Debug)]
pub(crate) struct StreamTx {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
    close: CancellationToken,
}

impl StreamTx {
    /// Queue a copy of `bytes` for the client. A connection whose queue would go over
    /// its cap is closed: its reader is too slow for what its peers send.
    pub(crate) fn send(&self, bytes: &[u8]) {
        if self.close.is_cancelled() {
            return;
        }
        let before = self.queued.fetch_add(bytes.len(), Relaxed);
        if before + bytes.len() > self.cap || self.tx.try_send(bytes.to_vec()).is_err() {
            self.queued.fetch_sub(bytes.len(), Relaxed);
            self.close.cancel();
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    inner: Arc<Inner>,
    limits: StreamLimits,
    next_id: AtomicU64,
    next_shard: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    open: AtomicUsize,
    stats: Arc<StreamStats>,
}

impl StreamCtx {
    pub(crate) fn new(inner: Arc<Inner>, limits: StreamLimits, stats: Arc<StreamStats>) -> Self {
        StreamCtx {
            inner,
            limits,
            next_id: AtomicU64::new(1),
            next_shard: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            stats,
        }
    }

    /// Count a new connection from `ip`, or refuse it over a limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        if self.open.fetch_add(1, Relaxed) >= self.limits.max_connections {
            self.open.fetch_sub(1, Relaxed);
            self.stats.refused_total_limit.fetch_add(1, Relaxed);
            return None;
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_ip {
            drop(m);
            self.open.fetch_sub(1, Relaxed);
            self.stats.refused_per_ip_limit.fetch_add(1, Relaxed);
            return None;
        }
        *n += 1;
        self.stats.open.fetch_add(1, Relaxed);
        self.stats.accepted.fetch_add(1, Relaxed);
        Some(Admitted {
            ctx: self.clone(),
            ip,
        })
    }
}

/// A connection counted against the limits; dropping it uncounts it.
struct Admitted {
    ctx: Arc<StreamCtx>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.ctx.open.fetch_sub(1, Relaxed);
        self.ctx.stats.open.fetch_sub(1, Relaxed);
        let mut m = self.ctx.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Accept connections on `listener` until shutdown; `tls` makes it a TLS listener.
pub(crate) async fn accept_loop(
    ctx: Arc<StreamCtx>,
    listener: TcpListener,
    tls: Option<Arc<TlsCertificates>>,
) {
    let shutdown = ctx.inner.shutdown.clone();
    let tracker = tokio_util::task::TaskTracker::new();
    let mut error_logged: Option<tokio::time::Instant> = None;
    let mut refusal_logged: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (sock, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, typically: log at most every 10 s, back off a
                // little so the loop does not spin.
                let t = tokio::time::Instant::now();
                if error_logged.is_none_or(|l| t.duration_since(l) > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "accepting a TURN stream connection failed");
                    error_logged = Some(t);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(admitted) = ctx.admit(from.ip()) else {
            drop(sock);
            // Counted by reason; logged at most every 10 s.
            let t = tokio::time::Instant::now();
            if refusal_logged.is_none_or(|l| t.duration_since(l) > Duration::from_secs(10)) {
                tracing::warn!(
                    client = %crate::pii::Pii(from),
                    max_connections = ctx.limits.max_connections,
                    max_per_ip = ctx.limits.max_per_ip,
                    "TURN stream connection refused: connection limit reached"
                );
                refusal_logged = Some(t);
            }
            continue;
        };
        let local = match sock.local_addr() {
            Ok(l) => l,
            Err(_) => continue,
        };
        let _ = sock.set_nodelay(true);
        let ctx = ctx.clone();
        match &tls {
            None => {
                tracker.spawn(async move {
                    serve(&ctx, sock, local, from).await;
                    drop(admitted);
                });
            }
            Some(certs) => {
                let acceptor = certs.acceptor();
                tracker.spawn(async move {
                    let hs =
                        tokio::time::timeout(ctx.limits.handshake_timeout, acceptor.accept(sock))
                            .await;
                    match hs {
                        Ok(Ok(stream)) => serve(&ctx, stream, local, from).await,
                        Ok(Err(e)) => {
                            ctx.stats.handshake_failed.fetch_add(1, Relaxed);
                            tracing::debug!(client = %crate::pii::Pii(from), error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            ctx.stats.handshake_failed.fetch_add(1, Relaxed);
                            tracing::debug!(client = %crate::pii::Pii(from), "TLS handshake timed out");
                        }
                    }
                    drop(admitted);
                });
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Why a connection ended (for the debug log).
#[derive(Debug, Clone, Copy)]
enum End {
    ClosedByClient,
    ReadError,
    WriteError,
    Idle,
    SlowReader,
    BadFrame(FrameError),
    Shutdown,
    /// A ConnectionBind made this a TCP allocation's data connection (RFC 6062).
    Bound(ConnectionId),
}

/// Serve one connection until it ends, then delete its allocation.
async fn serve<S>(ctx: &Arc<StreamCtx>, io: S, local: SocketAddr, client: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = ctx.next_id.fetch_add(1, Relaxed);
    let tuple = FiveTuple {
        local,
        client,
        transport: Transport::Stream(id),
    };
    let shards = &ctx.inner.shards;
    let index = ctx.next_shard.fetch_add(1, Relaxed) % shards.len().max(1);
    let Some(shard) = shards.get(index) else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE_MESSAGES);
    let queued = Arc::new(AtomicUsize::new(0));
    let close = CancellationToken::new();
    lock(shard).streams.insert(
        id,
        StreamTx {
            tx,
            queued: queued.clone(),
            cap: ctx.limits.max_buffered,
            close: close.clone(),
        },
    );
    let shutdown = ctx.inner.shutdown.clone();
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut conn = Conn {
        tuple,
        buf: vec![0u8; READ_START.min(ctx.limits.max_frame)],
        filled: 0,
        replies: Vec::new(),
        relayed: Vec::new(),
        core: index,
        allocated: false,
        bound: None,
    };
    let mut last_read = tokio::time::Instant::now();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break End::Shutdown,
            _ = close.cancelled() => break End::SlowReader,
            m = rx.recv() => {
                let Some(m) = m else { break End::Shutdown };
                let n = m.len();
                // A write that waits on a slow reader still ends when the worker
                // finds its queue over the cap.
                let w = tokio::select! {
                    r = wr.write_all(&m) => Ok(r.is_ok()),
                    _ = close.cancelled() => Err(End::SlowReader),
                    _ = shutdown.cancelled() => Err(End::Shutdown),
                };
                queued.fetch_sub(n, Relaxed);
                match w {
                    Ok(true) => {}
                    Ok(false) => break End::WriteError,
                    Err(e) => break e,
                }
            }
            _ = sweep.tick() => {
                let Some(shard) = shards.get(conn.core) else { break End::Shutdown };
                let has_allocation = conn.check_allocation(shard);
                if !has_allocation && last_read.elapsed() >= ctx.limits.idle_timeout {
                    break End::Idle;
                }
            }
            r = rd.read(conn.buf.get_mut(conn.filled..).unwrap_or_default()) => {
                match r {
                    Ok(0) => break End::ClosedByClient,
                    Err(_) => break End::ReadError,
                    Ok(n) => {
                        last_read = tokio::time::Instant::now();
                        conn.filled += n;
                        if let Err(e) = conn.handle_frames(ctx) {
                            break End::BadFrame(e);
                        }
                        // A full buffer holds the start of a message longer than it
                        // (never longer than the maximum, which the framer checked).
                        if conn.filled == conn.buf.len() {
                            let grown = (conn.buf.len() * 2).min(ctx.limits.max_frame);
                            conn.buf.resize(grown, 0);
                        }
                        if !conn.replies.is_empty() {
                            let replies = std::mem::take(&mut conn.replies);
                            if wr.write_all(&replies).await.is_err() {
                                break End::WriteError;
                            }
                        }
                        if let Some(c) = conn.bound {
                            break End::Bound(c);
                        }
                    }
                }
            }
        }
    };
    match end {
        End::Idle => ctx.stats.closed_idle.fetch_add(1, Relaxed),
        End::SlowReader => ctx.stats.closed_slow_reader.fetch_add(1, Relaxed),
        End::BadFrame(e) => {
            tracing::debug!(error = %e, "TURN stream framing lost");
            ctx.stats.closed_bad_frame.fetch_add(1, Relaxed)
        }
        _ => 0,
    };
    tracing::debug!(
        client = %crate::pii::Pii(client),
        id,
        reason = ?end,
        "TURN stream connection closed"
    );
    let Some(shard) = shards.get(conn.core) else {
        return;
    };
    let peer = {
        let mut g = lock(shard);
        let Shared {
            server,
            relays,
            streams,
            tcp,
            ..
        } = &mut *g;
        streams.remove(&id);
        server.stream_closed(&tuple, relays);
        let peer = match end {
            End::Bound(c) => tcp.take_peer(c).map(|p| (c, p, tcp.stall_timeout())),
            _ => None,
        };
        super::tcp_relay::apply(&ctx.inner, conn.core, &mut g);
        peer
    };
    match (end, peer) {
        (End::Bound(_), Some((c, (peer, close), stall))) => {
            let io = rd.unsplit(wr);
            let first = conn.buf.get(..conn.filled).unwrap_or_default();
            let how = super::tcp_relay::pipe(
                io,
                peer,
                first,
                close,
                shutdown,
                stall,
                &ctx.stats.closed_slow_reader,
            )
            .await;
            tracing::debug!(id, connection = c, end = ?how, "TCP allocation connection closed");
            let mut g = lock(shard);
            g.server.tcp_connection_closed(c);
            g.tcp.forget(c);
        }
        (End::Bound(c), None) => {
            // Closed by the core between the answer and now.
            lock(shard).server.tcp_connection_closed(c);
            let _ = wr.shutdown().await;
        }
        _ => {
            let _ = wr.shutdown().await;
        }
    }
}

/// The state of one connection's reading side.
struct Conn {
    tuple: FiveTuple,
    /// Bytes read and not yet framed: `buf[..filled]`.
    buf: Vec<u8>,
    filled: usize,
    /// Answers to write once the shard's lock is released (freed after each
    /// write: STUN answers are rare next to data, and an idle connection keeps no
    /// buffer for them).
    replies: Vec<u8>,
    /// The allocation's relayed sockets (duplicate descriptors), once allocated:
    /// one, or two for a dual allocation (one per address family); none for a TCP
    /// allocation (RFC 6062), whose relayed side is the glue's.
    relayed: Vec<(AllocationId, StdUdpSocket)>,
    /// The shard whose core serves this connection: the one it was given, or the
    /// one that made the CONNECTION-ID of its ConnectionBind.
    core: usize,
    /// Whether the connection has an allocation.
    allocated: bool,
    /// Set when a ConnectionBind succeeded: what follows is raw data.
    bound: Option<ConnectionId>,
}

impl Conn {
    /// Hand every complete message in the buffer to the core.
    fn handle_frames(&mut self, ctx: &StreamCtx) -> Result<(), FrameError> {
        let shards = &ctx.inner.shards;
        let mut start = 0;
        let mut guard = None;
        loop {
            if self.bound.is_some() {
                // The rest is data for the peer (piped once the answer is out).
                break;
            }
            let avail = self.buf.get(start..self.filled).unwrap_or_default();
            let Some(frame) = next_frame(avail, ctx.limits.max_frame)? else {
                break;
            };
            let Some(msg) = avail.get(..frame.len) else {
                break;
            };
            let stun = msg.first().is_some_and(|b| b >> 6 == 0);
            if stun && !self.allocated {
                // A ConnectionBind goes to the core that made its CONNECTION-ID; the
                // connection's queue moves with it.
                if let Some(c) = connection_bind_id(msg) {
                    let target = connection_core(c, shards.len());
                    if target != self.core {
                        if let (Some(from), Some(to)) = (shards.get(self.core), shards.get(target))
                        {
                            guard = None;
                            if let Transport::Stream(id) = self.tuple.transport {
                                let tx = lock(from).streams.remove(&id);
                                if let Some(tx) = tx {
                                    lock(to).streams.insert(id, tx);
                                }
                            }
                            self.core = target;
                        }
                    }
                }
            }
            let Some(shard) = shards.get(self.core) else {
                break;
            };
            let g = guard.get_or_insert_with(|| lock(shard));
            let Shared { server, relays, .. } = &mut **g;
            let t = now();
            // The answer is written straight after the ones already waiting; no
            // scratch buffer is kept per connection.
            let at = self.replies.len();
            self.replies.resize(at + RESPONSE_MAX, 0);
            let out = self.replies.get_mut(at..).unwrap_or_default();
            let o = server.handle_client(t, self.tuple, msg, out, relays);
            let kept = match o {
                ClientOutput::Reply { len } | ClientOutput::ReplyTo { len, .. } => len,
                _ => 0,
            };
            self.replies.truncate(at + kept);
            match o {
                ClientOutput::None | ClientOutput::Reply { .. } | ClientOutput::ReplyTo { .. } => {}
                ClientOutput::Forward {
                    allocation,
                    peer,
                    payload,
                } => {
                    let sock = self.relayed.iter().find(|(a, _)| *a == allocation);
                    if let (Some((_, sock)), Some(data)) = (sock, msg.get(payload)) {
                        // Non-blocking: a full socket buffer drops the datagram,
                        // as it would on the UDP path.
                        let _ = sock.send_to(data, peer);
                    }
                }
            }
            if stun {
                self.bound = server.tcp_bound(&self.tuple);
                // An Allocate may have opened the relayed socket: it is still in the
                // table's pending list (the worker takes it under this same lock).
                let current = server.relay_ids_of(&self.tuple);
                self.allocated = current[0].is_some();
                if !self.holds(&current) {
                    self.relayed = current
                        .into_iter()
                        .flatten()
                        .filter_map(|a| {
                            let s = relays.try_clone_pending(a)?;
                            let _ = s.set_nonblocking(true);
                            Some((a, s))
                        })
                        .collect();
                }
            }
            if stun {
                // What a TCP allocation's request asked of the glue.
                super::tcp_relay::apply(&ctx.inner, self.core, g);
            }
            start += frame.consumed;
        }
        drop(guard);
        if start > 0 {
            self.buf.copy_within(start..self.filled, 0);
            self.filled -= start;
        }
        Ok(())
    }

    /// Whether the connection still has an allocation; frees the relayed socket's
    /// duplicate when it does not (so the port can be used again).
    fn check_allocation(&mut self, shard: &Mutex<Shared>) -> bool {
        let current = lock(shard).server.relay_ids_of(&self.tuple);
        if current[0].is_none() || !self.holds(&current) {
            self.relayed = Vec::new();
        }
        current[0].is_some()
    }

    /// Whether the duplicates held are those of the relayed sockets `ids`.
    fn holds(&self, ids: &[Option<AllocationId>; 2]) -> bool {
        let held = self.relayed.iter().map(|(a, _)| Some(*a));
        ids.iter().copied().flatten().count() == self.relayed.len()
            && held.zip(ids.iter().copied()).all(|(h, i)| h == i)
    }
}
