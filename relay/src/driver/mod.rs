//! The driver: runs the TURN core on UDP sockets through a [`crate::io::Datapath`].
//!
//! A worker thread owns the datapath (io_uring or portable, see [`crate::io`]) with
//! the listening sockets and every relayed socket. Each turn it waits for a batch of
//! datagrams, hands each one to the core in place (a ChannelData packet is forwarded
//! as a sub-slice of its receive buffer; a peer datagram is received at
//! [`crate::turn::PEER_HEADROOM`] so the core writes the ChannelData or Data
//! indication header in front of it), and sends the answers as a batch from the same
//! buffers. The core sits behind a mutex (for the metrics endpoint) that the worker
//! takes once per batch, not per packet. Timers are served between turns.

mod metrics;
mod ports;
pub mod sessions;
pub mod stream;
pub(crate) mod tcp_relay;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::io::{self, Datapath, IoMode, Received, SocketId, Transmit};
use crate::media::{Media, MediaOutput, PortKey};
use crate::turn::{AllocationId, ClientOutput, FiveTuple, Now, PeerOutput, Server, Transport};
use ports::{Owner, RelayTable};

/// Longest wait of a turn, so timers and shutdown are never late by more.
const TURN_CAP: Duration = Duration::from_millis(50);
/// Scratch space for a STUN response (responses are small; see `turn::Server`).
const RESPONSE_MAX: usize = 1500;

/// Errors that stop the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("datapath (`io`): {0}")]
    Io(#[from] io::IoError),
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
}

pub(crate) struct Shared {
    pub(crate) server: Server,
    pub(crate) media: Media,
    pub(crate) relays: RelayTable,
    /// The writer queues of this shard's TURN stream (TCP/TLS) connections, by id.
    pub(crate) streams: HashMap<u64, stream::StreamTx>,
    /// RFC 6062 TCP allocations' listeners and peer connections.
    pub(crate) tcp: tcp_relay::TcpGlue,
}

pub(crate) struct Inner {
    /// One shard of allocation state per worker. Only that worker and the metrics
    /// endpoint take its lock, so packets never wait for another worker.
    pub(crate) shards: Vec<Mutex<Shared>>,
    /// Public names of media sessions and the final state of recently ended ones.
    /// Taken by control API calls and by a worker whose sessions timed out, never on
    /// the packet path.
    pub(crate) sessions: Mutex<sessions::Registry>,
    /// Datagrams handled by all workers (for the packet rate in `GET /load`).
    pub(crate) packets: std::sync::atomic::AtomicU64,
    /// Counters of the TCP and TLS listeners.
    pub(crate) stream_stats: Arc<stream::StreamStats>,
    /// Where the glue of TCP allocations runs its tasks (also from worker threads).
    pub(crate) runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    /// Set by [`DrainHandle::start`]: `/ready` answers 503, no new allocations or
    /// media sessions.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// The current time as the core wants it.
pub fn now() -> Now {
    let unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Now {
        mono: Instant::now(),
        unix_secs,
    }
}

fn lock(shard: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock is a bug; keep serving rather than cascade.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running relay's controls from outside its workers: reload and drain.
///
/// The drain before a stop: [`DrainHandle::start`] turns `/ready` to 503 and refuses
/// new allocations (508) and media sessions (503 `draining`) while existing ones keep
/// relaying; [`DrainHandle::live`] tells when they are gone. The caller bounds the
/// wait (`drain-timeout`) and then cancels the run.
#[derive(Debug, Clone)]
pub struct DrainHandle(Arc<Inner>);

impl DrainHandle {
    pub fn start(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.draining.store(true, Relaxed);
        for shard in &self.0.shards {
            lock(shard).server.set_accepting(false);
        }
        let (allocations, sessions) = self.live();
        tracing::info!(
            allocations,
            media_sessions = sessions,
            "draining: not ready, new allocations and media sessions refused, existing ones relayed"
        );
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts the credentials of `config` (realm, static users, REST secrets) in force
    /// on every worker (SIGHUP); allocations stay.
    pub fn reload_credentials(&self, config: &Config) {
        let core = config.core(&[]);
        for shard in &self.0.shards {
            lock(shard)
                .server
                .set_credentials(&core.realm, &core.users, &core.auth_secrets);
        }
    }

    /// Live allocations and media sessions over all workers.
    pub fn live(&self) -> (usize, usize) {
        let mut a = 0;
        let mut m = 0;
        for shard in &self.0.shards {
            let g = lock(shard);
            a += g.server.allocation_count();
            m += g.media.session_count();
        }
        (a, m)
    }
}

/// What a registered socket is.
#[derive(Debug, Clone, Copy)]
enum Role {
    Listener(SocketAddr),
    Relay(AllocationId),
    Media(PortKey),
}

/// Relayed socket ids by allocation index (see [`Worker::relay_ids`]).
#[derive(Debug, Default)]
struct RelayIds(Vec<Option<(u32, SocketId)>>);

impl RelayIds {
    fn insert(&mut self, a: AllocationId, sid: SocketId) {
        let i = a.index as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        if let Some(slot) = self.0.get_mut(i) {
            *slot = Some((a.generation, sid));
        }
    }

    fn remove(&mut self, a: AllocationId) -> Option<SocketId> {
        let slot = self.0.get_mut(a.index as usize)?;
        match *slot {
            Some((g, sid)) if g == a.generation => {
                *slot = None;
                Some(sid)
            }
            _ => None,
        }
    }

    fn get(&self, a: AllocationId) -> Option<SocketId> {
        match self.0.get(a.index as usize).copied().flatten() {
            Some((g, sid)) if g == a.generation => Some(sid),
            _ => None,
        }
    }
}

/// One worker: a datapath and the sockets it serves.
struct Worker {
    inner: Arc<Inner>,
    /// Index of this worker's shard in `inner.shards`.
    shard: usize,
    dp: Box<dyn Datapath>,
    /// Listening address and its socket id.
    listeners: Vec<(SocketAddr, SocketId)>,
    roles: Vec<Option<Role>>,
    /// The relayed socket of each allocation, indexed by `AllocationId::index` and
    /// checked against its generation: an array look-up per forwarded packet, not a
    /// hash.
    relay_ids: RelayIds,
    media_ids: HashMap<PortKey, SocketId>,
    response: Vec<u8>,
    opened: Vec<(Owner, StdUdpSocket)>,
    closed: Vec<Owner>,
}

impl Worker {
    fn set_role(&mut self, id: SocketId, role: Option<Role>) {
        if self.roles.len() <= id {
            self.roles.resize(id + 1, None);
        }
        self.roles[id] = role;
    }

    /// Register relayed sockets opened, and remove those closed, by core calls.
    fn apply_changes(&mut self, shared: &mut Shared) {
        shared
            .relays
            .take_changes(&mut self.opened, &mut self.closed);
        for (owner, sock) in std::mem::take(&mut self.opened) {
            match self.dp.add(sock) {
                Ok(sid) => match owner {
                    Owner::Allocation(alloc) => {
                        self.set_role(sid, Some(Role::Relay(alloc)));
                        self.relay_ids.insert(alloc, sid);
                    }
                    Owner::Media(key) => {
                        self.set_role(sid, Some(Role::Media(key)));
                        self.media_ids.insert(key, sid);
                        match u32::try_from(sid) {
                            Ok(h) => shared.media.attach(key, h),
                            Err(_) => tracing::warn!("socket id out of range for a media port"),
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot add a relayed socket to the datapath"),
            }
        }
        for owner in std::mem::take(&mut self.closed) {
            let sid = match owner {
                Owner::Allocation(alloc) => self.relay_ids.remove(alloc),
                Owner::Media(key) => self.media_ids.remove(&key),
            };
            if let Some(sid) = sid {
                self.set_role(sid, None);
                self.dp.remove(sid);
            }
        }
    }

    fn run(mut self) {
        loop {
            if self.inner.shutdown.is_cancelled() {
                break;
            }
            let timeout = {
                let g = lock(&self.inner.shards[self.shard]);
                let next = match (g.server.poll_timeout(), g.media.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                drop(g);
                let t = Instant::now();
                next.map_or(TURN_CAP, |n| n.saturating_duration_since(t).min(TURN_CAP))
            };
            let Worker {
                inner,
                shard,
                dp,
                listeners,
                roles,
                relay_ids,
                response,
                ..
            } = &mut self;
            let mut guard = None;
            let mut at: Option<Now> = None;
            let mut handler = |r: Received<'_>| -> Option<Transmit> {
                let g = guard.get_or_insert_with(|| lock(&inner.shards[*shard]));
                let t = *at.get_or_insert_with(now);
                let Shared {
                    server,
                    media,
                    relays,
                    streams,
                    ..
                } = &mut **g;
                match roles.get(r.socket).copied().flatten()? {
                    Role::Listener(local) => {
                        let tuple = FiveTuple {
                            local,
                            client: r.from,
                            transport: crate::turn::Transport::Udp,
                        };
                        let packet = r.buf.get(r.payload.clone())?;
                        match server.handle_client(t, tuple, packet, response, relays) {
                            ClientOutput::None => None,
                            ClientOutput::Reply { len } => {
                                // STUN answers are written to scratch space; copying
                                // them into the request's buffer lets them leave in
                                // the same batch. (Not on the ChannelData/Send path.)
                                let body = response.get(..len)?;
                                r.buf.get_mut(..len)?.copy_from_slice(body);
                                Some(Transmit {
                                    socket: r.socket,
                                    to: r.from,
                                    range: 0..len,
                                })
                            }
                            ClientOutput::ReplyTo { len, to } => {
                                let body = response.get(..len)?;
                                r.buf.get_mut(..len)?.copy_from_slice(body);
                                Some(Transmit {
                                    socket: r.socket,
                                    to,
                                    range: 0..len,
                                })
                            }
                            ClientOutput::Forward {
                                allocation,
                                peer,
                                payload,
                            } => Some(Transmit {
                                socket: relay_ids.get(allocation)?,
                                to: peer,
                                range: r.payload.start + payload.start
                                    ..r.payload.start + payload.end,
                            }),
                        }
                    }
                    Role::Relay(alloc) => {
                        match server.handle_peer(t, alloc, r.from, r.buf, r.payload) {
                            PeerOutput::None => None,
                            PeerOutput::ToClient {
                                transport: Transport::Stream(id),
                                range,
                                ..
                            } => {
                                // A TCP/TLS client: a copy goes on its connection's
                                // queue (only this path allocates).
                                if let Some(s) = streams.get(&id) {
                                    s.send(r.buf.get(range)?);
                                }
                                None
                            }
                            PeerOutput::ToClient {
                                local,
                                client,
                                range,
                                ..
                            } => {
                                let socket = listeners.iter().find(|(a, _)| *a == local)?.1;
                                Some(Transmit {
                                    socket,
                                    to: client,
                                    range,
                                })
                            }
                        }
                    }
                    Role::Media(key) => {
                        match media.handle_packet(t.mono, key, r.from, r.buf, r.payload) {
                            MediaOutput::None => None,
                            MediaOutput::Forward { handle, to, range } => Some(Transmit {
                                socket: handle as SocketId,
                                to,
                                range,
                            }),
                        }
                    }
                }
            };
            let res = dp.turn(timeout, &mut handler);
            drop(guard);
            if let Ok(n) = res {
                inner
                    .packets
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if let Err(e) = res {
                tracing::warn!(error = %e, "datapath turn failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            let inner = self.inner.clone();
            let mut g = lock(&inner.shards[self.shard]);
            let t = now();
            if g.server.poll_timeout().is_some_and(|d| d <= t.mono) {
                let Shared { server, relays, .. } = &mut *g;
                server.handle_timeout(t, relays);
                tcp_relay::apply(&inner, self.shard, &mut g);
            }
            if g.media.poll_timeout().is_some_and(|d| d <= t.mono) {
                let Shared { media, relays, .. } = &mut *g;
                media.handle_timeout(t.mono, relays);
                let mut ended = Vec::new();
                while let Some(info) = media.poll_ended() {
                    ended.push(info);
                }
                if !ended.is_empty() {
                    let mut reg = sessions::lock(&inner.sessions);
                    for info in ended {
                        sessions::log_end(&info);
                        reg.ended(t.mono, info);
                    }
                }
            }
            if g.relays.changed() {
                self.apply_changes(&mut g);
            }
        }
        let inner = self.inner.clone();
        let mut g = lock(&inner.shards[self.shard]);
        let Shared { server, relays, .. } = &mut *g;
        server.shutdown(relays);
        tcp_relay::apply(&inner, self.shard, &mut g);
        g.tcp.close_all();
        let Shared { media, relays, .. } = &mut *g;
        media.shutdown(Instant::now(), relays);
        relays.close_all();
        self.apply_changes(&mut g);
    }
}

/// A bound, not yet running relay.
#[derive(Debug)]
pub struct Relay {
    inner: Arc<Inner>,
    metrics: Option<tokio::net::TcpListener>,
    /// The control API's listener and the tokens it accepts.
    control: Option<(tokio::net::TcpListener, crate::control::Tokens)>,
    listening: Vec<SocketAddr>,
    /// Listening sockets of each worker (one per listening address).
    sockets: Vec<Vec<StdUdpSocket>>,
    io: io::Choice,
    /// TURN over TCP listeners (on the listening port, like coturn).
    tcp: Vec<tokio::net::TcpListener>,
    /// TURN over TLS listeners (on `tls-listening-port`).
    tls: Vec<tokio::net::TcpListener>,
    certs: Option<Arc<stream::TlsCertificates>>,
    stream_limits: stream::StreamLimits,
}

impl Relay {
    /// Bind the listening sockets (and the metrics and control listeners) from
    /// `config`.
    pub async fn bind(config: &Config) -> Result<Relay, DriverError> {
        config.validate()?;
        crate::pii::set_show(config.log_addresses);
        let io = io::choose(config.io)?;
        let workers = config.worker_count();
        // With port 0 the UDP socket picks a port and TCP takes the same one, which a
        // TCP socket elsewhere may already hold: pick again (tests bind port 0).
        let mut attempt = 0;
        let (sockets, listening, tcp) = loop {
            match bind_udp_and_tcp(config, workers) {
                Err(DriverError::Bind { source, .. })
                    if config.listening_port == 0
                        && source.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < 16 =>
                {
                    attempt += 1;
                }
                r => break r?,
            }
        };
        let stream_stats = Arc::new(stream::StreamStats::default());
        let mut tls = Vec::new();
        let mut certs = None;
        if let (false, Some(cert), Some(key)) = (config.no_tls, &config.cert, &config.pkey) {
            certs = Some(Arc::new(stream::TlsCertificates::load(
                cert.clone(),
                key.clone(),
                stream_stats.clone(),
            )?));
            for ip in &config.listening_ip {
                let addr = SocketAddr::new(*ip, config.tls_listening_port);
                tls.push(
                    bind_stream_listener(addr)
                        .map_err(|source| DriverError::Bind { addr, source })?,
                );
            }
        }
        // The policy's own addresses: every listening address, whatever transport.
        let mut own = listening.clone();
        for l in tcp.iter().chain(&tls) {
            if let Ok(a) = l.local_addr() {
                if !own.contains(&a) {
                    own.push(a);
                }
            }
        }
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DriverError::Bind { addr, source })?,
            ),
            None => None,
        };
        let control = match config.control_listen {
            Some(addr) => {
                let tokens = crate::control::Tokens::new(config.control_secrets()?);
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DriverError::Bind { addr, source })?;
                Some((l, tokens))
            }
            None => None,
        };
        let core = config.core(&own);
        // One count of allocations for all workers, so the quotas hold process-wide.
        let quota = Arc::new(crate::turn::QuotaLedger::default());
        // One nonce key for all workers, so a nonce is good on any of them.
        let nonce_key: [u8; 32] = rand::random();
        let reservations = ports::SharedReservations::default();
        // One 401 rate limiter for all workers (atomic buckets, no lock).
        let limiter = crate::turn::auth::RateLimiter::new(
            core.quotas.unauthorized_per_sec,
            core.quotas.unauthorized_burst,
            Instant::now(),
        );
        // One count of TCP allocations' peer connections for all workers.
        let tcp_total = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shards = (0..workers)
            .map(|index| {
                let mut server =
                    Server::with_nonce_key(core.clone(), now(), rand::random(), nonce_key);
                server.share_quota(quota.clone());
                server.set_core_index(index, workers, tcp_total.clone());
                server.share_rate_limiter(limiter.clone());
                let relays = RelayTable::new(
                    config.relay_ips(),
                    config.min_port,
                    config.max_port,
                    reservations.clone(),
                );
                let media = Media::new(config.media(workers), rand::random());
                Mutex::new(Shared {
                    server,
                    media,
                    relays,
                    streams: HashMap::new(),
                    tcp: tcp_relay::TcpGlue::new(config.tcp_timeouts()),
                })
            })
            .collect();
        let inner = Arc::new(Inner {
            shards,
            sessions: Mutex::new(sessions::Registry::default()),
            packets: std::sync::atomic::AtomicU64::new(0),
            stream_stats,
            runtime: tokio::runtime::Handle::current(),
            shutdown: CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Relay {
            inner,
            metrics,
            control,
            listening,
            sockets,
            io,
            tcp,
            tls,
            certs,
            stream_limits: config.stream_limits(),
        })
    }

    /// The bound TURN over TCP addresses.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound TURN over TLS addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// What stops the relay gracefully (SIGTERM): take it before [`Relay::run`].
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle(self.inner.clone())
    }

    /// The TLS certificate and key, to reload (on SIGHUP) while running.
    pub fn tls_certificates(&self) -> Option<Arc<stream::TlsCertificates>> {
        self.certs.clone()
    }

    /// The bound listening addresses (useful with port 0).
    pub fn listening_addrs(&self) -> &[SocketAddr] {
        &self.listening
    }

    /// Which datapath runs (io_uring or portable), and why.
    pub fn io_mode(&self) -> IoMode {
        self.io.mode
    }

    /// The handle through which media sessions are placed on this relay's workers
    /// (what the control API serves).
    pub fn control(&self) -> sessions::Control {
        sessions::Control::new(self.inner.clone())
    }

    /// The bound metrics address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound control API address, if enabled.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serve until `shutdown` is cancelled, then close every allocation.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        let name = match self.io.mode {
            IoMode::Uring => "uring",
            _ => "portable",
        };
        tracing::info!(io = %name, reason = %self.io.reason, "datapath");
        let workers = self.sockets.len();
        tracing::info!(workers, "starting workers");
        let mut threads = Vec::new();
        for (index, socks) in self.sockets.into_iter().enumerate() {
            match start_worker(&inner, index, socks, &self.listening, self.io.mode) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a worker");
                    inner.shutdown.cancel();
                    break;
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        let api_stats = self
            .control
            .as_ref()
            .map(|_| Arc::new(crate::control::ApiStats::default()));
        if let Some(l) = self.metrics {
            if let Ok(a) = l.local_addr() {
                tracing::info!(metrics = %a, "serving /metrics and /health");
            }
            tasks.spawn(metrics::serve(inner.clone(), api_stats.clone(), l));
        }
        if let (Some((l, tokens)), Some(stats)) = (self.control, api_stats) {
            if let Ok(a) = l.local_addr() {
                tracing::info!(control = %a, "serving the control API");
            }
            let control = Arc::new(sessions::Control::new(inner.clone()));
            tasks.spawn(crate::control::serve(
                control,
                tokens,
                stats,
                l,
                inner.shutdown.clone(),
            ));
        }
        for l in &self.listening {
            tracing::info!(listen = %l, "tandem-relay serving STUN/TURN over UDP");
        }
        let ctx = Arc::new(stream::StreamCtx::new(
            inner.clone(),
            self.stream_limits.clone(),
            inner.stream_stats.clone(),
        ));
        for l in self.tcp {
            if let Ok(a) = l.local_addr() {
                tracing::info!(listen_tcp = %a, "tandem-relay serving STUN/TURN over TCP");
            }
            tasks.spawn(stream::accept_loop(ctx.clone(), l, None));
        }
        for l in self.tls {
            if let Ok(a) = l.local_addr() {
                tracing::info!(listen_tls = %a, "tandem-relay serving STUN/TURN over TLS");
            }
            tasks.spawn(stream::accept_loop(ctx.clone(), l, self.certs.clone()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            // A worker that could not start.
            _ = inner.shutdown.cancelled() => {}
        }
        tracing::info!("shutting down");
        inner.shutdown.cancel();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        while tasks.join_next().await.is_some() {}
    }
}

/// A listening socket; with `reuse_port` several workers bind the same address and
/// the kernel spreads clients over them by a hash of the 4-tuple, so a client's
/// datagrams always reach the same worker.
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<StdUdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    #[cfg(unix)]
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    enlarge_buffers(&sock, LISTEN_SOCKET_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// The UDP listening sockets of every worker, the bound UDP addresses, and the TCP
/// listeners on the same ports (unless `no-udp` / `no-tcp`).
#[allow(clippy::type_complexity)]
fn bind_udp_and_tcp(
    config: &Config,
    workers: usize,
) -> Result<
    (
        Vec<Vec<StdUdpSocket>>,
        Vec<SocketAddr>,
        Vec<tokio::net::TcpListener>,
    ),
    DriverError,
> {
    let mut sockets: Vec<Vec<StdUdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut listening = Vec::new();
    let udp_ips: &[std::net::IpAddr] = if config.no_udp {
        &[]
    } else {
        &config.listening_ip
    };
    for ip in udp_ips {
        let mut addr = SocketAddr::new(*ip, config.listening_port);
        if workers > 1 && addr.port() != 0 {
            // SO_REUSEPORT would let us join another relay's group on this port and
            // the kernel would split the clients between the two. A socket without it
            // cannot bind a port anyone holds: a failure here means the port is taken.
            drop(bind_listener(addr, false).map_err(|source| DriverError::Bind { addr, source })?);
        }
        for (w, per_worker) in sockets.iter_mut().enumerate() {
            let sock = bind_listener(addr, workers > 1)
                .map_err(|source| DriverError::Bind { addr, source })?;
            if w == 0 {
                // The first worker's socket fixes the port (port 0 picks one); the
                // others share it through SO_REUSEPORT.
                addr = sock
                    .local_addr()
                    .map_err(|source| DriverError::Bind { addr, source })?;
                listening.push(addr);
            }
            per_worker.push(sock);
        }
    }
    // TCP on the listening port (the one UDP got, when it was 0).
    let mut tcp = Vec::new();
    if !config.no_tcp {
        for (i, ip) in config.listening_ip.iter().enumerate() {
            let port = listening.get(i).map_or(config.listening_port, |a| a.port());
            let addr = SocketAddr::new(*ip, port);
            tcp.push(
                bind_stream_listener(addr).map_err(|source| DriverError::Bind { addr, source })?,
            );
        }
    }
    Ok((sockets, listening, tcp))
}

/// A TCP listener for TURN over TCP or TLS.
fn bind_stream_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// Receive and send buffer asked for on each listening socket. Every client of a
/// worker shares this queue, so bursts land here; the kernel's default (about 208 KiB)
/// overflows at a few thousand packets per second of burst and the datagrams are
/// dropped before the relay sees them (`UdpRcvbufErrors`). The kernel caps the value
/// at `net.core.rmem_max` / `wmem_max`; raise those on a busy host.
pub(crate) const LISTEN_SOCKET_BUFFER: usize = 4 << 20;
/// The same for each relayed socket, which carries one allocation's peers only.
pub(crate) const RELAY_SOCKET_BUFFER: usize = 1 << 20;

/// Asks for `bytes` of receive and send buffer. Best effort: a kernel that caps or
/// refuses the size leaves the socket working with what it grants.
pub(crate) fn enlarge_buffers(sock: &socket2::Socket, bytes: usize) {
    if let Err(e) = sock.set_recv_buffer_size(bytes) {
        tracing::debug!(error = %e, bytes, "could not enlarge the receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(bytes) {
        tracing::debug!(error = %e, bytes, "could not enlarge the send buffer");
    }
}

/// Start worker `index`'s thread, which creates its datapath (so every io_uring
/// submission comes from the thread that owns the ring) with its listening sockets.
/// A worker that cannot start logs why and stops the relay.
fn start_worker(
    inner: &Arc<Inner>,
    index: usize,
    socks: Vec<StdUdpSocket>,
    listening: &[SocketAddr],
    mode: IoMode,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let inner = inner.clone();
    let listening = listening.to_vec();
    std::thread::Builder::new()
        .name(format!("relay-worker-{index}"))
        .spawn(
            move || match Worker::new(inner.clone(), index, socks, &listening, mode) {
                Ok(w) => w.run(),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a worker");
                    inner.shutdown.cancel();
                }
            },
        )
}

impl Worker {
    fn new(
        inner: Arc<Inner>,
        index: usize,
        socks: Vec<StdUdpSocket>,
        listening: &[SocketAddr],
        mode: IoMode,
    ) -> Result<Worker, String> {
        let mut dp = io::create(mode).map_err(|e| e.to_string())?;
        let mut listeners = Vec::new();
        let mut roles = Vec::new();
        for (sock, local) in socks.into_iter().zip(listening) {
            let sid = dp
                .add(sock)
                .map_err(|e| format!("adding the listening socket: {e}"))?;
            listeners.push((*local, sid));
            if roles.len() <= sid {
                roles.resize(sid + 1, None);
            }
            roles[sid] = Some(Role::Listener(*local));
        }
        Ok(Worker {
            inner,
            shard: index,
            dp,
            listeners,
            roles,
            relay_ids: RelayIds::default(),
            media_ids: HashMap::new(),
            response: vec![0u8; RESPONSE_MAX],
            opened: Vec::new(),
            closed: Vec::new(),
        })
    }
}

/// The process's open file limit (RLIMIT_NOFILE): soft and hard, `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The current open file limit (`None` where it cannot be read).
pub fn nofile_limit() -> Option<NofileLimit> {
    #[cfg(target_os = "linux")]
    {
        let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Some(NofileLimit {
            soft: l.current,
            hard: l.maximum,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Raise the soft open file limit to the hard one, as servers do at start: every
/// allocation holds a relayed socket, and the usual soft limit (1024) would cap a relay
/// at about a thousand allocations. Returns the limit before and after.
pub fn raise_nofile_limit() -> std::io::Result<(NofileLimit, NofileLimit)> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = nofile_limit().unwrap_or(NofileLimit {
            soft: None,
            hard: None,
        });
        if before.soft != before.hard {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: before.hard,
                    maximum: before.hard,
                },
            )?;
        }
        let l = getrlimit(Resource::Nofile);
        Ok((
            before,
            NofileLimit {
                soft: l.current,
                hard: l.maximum,
            },
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Run a relay with `config` until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DriverError> {
    Relay::bind(&config).await?.run(shutdown).await;
    Ok(())
}
