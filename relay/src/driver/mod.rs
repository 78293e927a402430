//! A portable tokio driver for the TURN core.
//!
//! One task per listening socket and one per relayed socket; they share the core behind
//! a mutex that is held only for the core call, never across an await. Buffers are
//! owned here: a client datagram is forwarded as a sub-slice of the receive buffer, and
//! a peer datagram is received at [`PEER_HEADROOM`] so the core can write the
//! ChannelData or Data indication header in front of it. This driver is the reference
//! for the batched io_uring datapath, which runs the same core.

mod metrics;
mod ports;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pii::Pii;
use crate::turn::{
    AllocationId, ClientOutput, FiveTuple, Now, PeerOutput, Server, PEER_HEADROOM, PEER_TAILROOM,
};
use ports::RelayTable;

/// Largest UDP payload handled on a listening socket.
const MAX_DATAGRAM: usize = 65_535;
/// Largest datagram relayed from a peer. Each relayed socket has its own buffer, so
/// this bounds memory per allocation (a full 64 KiB would cost 4 GiB at 65536
/// allocations); larger datagrams are dropped rather than truncated.
const MAX_PEER_DATAGRAM: usize = 4096;
/// Longest sleep of the timer task, so newly scheduled timers are never late by more.
const TIMER_CAP: Duration = Duration::from_millis(250);

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
}

pub(crate) struct Shared {
    pub(crate) server: Server,
    pub(crate) relays: RelayTable,
}

pub(crate) struct Inner {
    pub(crate) shared: Mutex<Shared>,
    listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("listeners", &self.listeners.keys())
            .finish_non_exhaustive()
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

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock is a bug; keep serving rather than cascade.
    inner.shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bound, not yet running relay.
#[derive(Debug)]
pub struct Relay {
    inner: Arc<Inner>,
    metrics: Option<tokio::net::TcpListener>,
    listening: Vec<SocketAddr>,
}

impl Relay {
    /// Bind the listening sockets (and the metrics listener) from `config`.
    pub async fn bind(config: &Config) -> Result<Relay, DriverError> {
        config.validate()?;
        crate::pii::set_show(config.log_addresses);
        let mut listeners = HashMap::new();
        let mut listening = Vec::new();
        for ip in &config.listening_ip {
            let addr = SocketAddr::new(*ip, config.listening_port);
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(|source| DriverError::Bind { addr, source })?;
            let local = sock
                .local_addr()
                .map_err(|source| DriverError::Bind { addr, source })?;
            listening.push(local);
            listeners.insert(local, Arc::new(sock));
        }
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DriverError::Bind { addr, source })?,
            ),
            None => None,
        };
        let core = config.core(&listening);
        let seed: [u8; 32] = rand::random();
        let server = Server::new(core, now(), seed);
        let relays = RelayTable::new(config.relay_ips(), config.min_port, config.max_port);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared { server, relays }),
            listeners,
            shutdown: CancellationToken::new(),
        });
        Ok(Relay {
            inner,
            metrics,
            listening,
        })
    }

    /// The bound listening addresses (useful with port 0).
    pub fn listening_addrs(&self) -> &[SocketAddr] {
        &self.listening
    }

    /// The bound metrics address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` is cancelled, then close every allocation.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        let mut tasks = tokio::task::JoinSet::new();
        for (local, sock) in &inner.listeners {
            tasks.spawn(client_loop(inner.clone(), *local, sock.clone()));
        }
        tasks.spawn(timer_loop(inner.clone()));
        if let Some(l) = self.metrics {
            if let Ok(a) = l.local_addr() {
                tracing::info!(metrics = %a, "serving /metrics and /health");
            }
            tasks.spawn(metrics::serve(inner.clone(), l));
        }
        for l in &self.listening {
            tracing::info!(listen = %l, "tandem-relay serving STUN/TURN over UDP");
        }
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        inner.shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        let mut g = lock(&inner);
        let Shared { server, relays } = &mut *g;
        server.shutdown(relays);
        relays.close_all();
    }
}

/// Run a relay with `config` until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DriverError> {
    Relay::bind(&config).await?.run(shutdown).await;
    Ok(())
}

/// Start the tasks for relayed sockets opened during a core call.
fn spawn_pending(
    inner: &Arc<Inner>,
    pending: Vec<(AllocationId, Arc<UdpSocket>, CancellationToken)>,
) {
    for (id, sock, cancel) in pending {
        tokio::spawn(peer_loop(inner.clone(), id, sock, cancel));
    }
}

async fn client_loop(inner: Arc<Inner>, local: SocketAddr, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = vec![0u8; 1500];
    loop {
        let (n, from) = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some platforms; keep serving.
                    tracing::debug!(error = %e, "recv on listening socket");
                    continue;
                }
            },
        };
        let tuple = FiveTuple {
            local,
            client: from,
        };
        let (action, relay_sock, pending) = {
            let mut g = lock(&inner);
            let Shared { server, relays } = &mut *g;
            let action = server.handle_client(now(), tuple, &buf[..n], &mut out, relays);
            let relay_sock = match &action {
                ClientOutput::Forward { allocation, .. } => relays.socket(*allocation),
                _ => None,
            };
            (action, relay_sock, relays.take_pending())
        };
        spawn_pending(&inner, pending);
        let res = match action {
            ClientOutput::None => Ok(0),
            ClientOutput::Reply { len } => sock.send_to(&out[..len], from).await,
            ClientOutput::Forward { peer, payload, .. } => match relay_sock {
                Some(s) => s.send_to(&buf[payload], peer).await,
                None => Ok(0),
            },
        };
        if let Err(e) = res {
            tracing::debug!(client = %Pii(from), error = %e, "send failed");
        }
    }
}

async fn peer_loop(
    inner: Arc<Inner>,
    id: AllocationId,
    sock: Arc<UdpSocket>,
    cancel: CancellationToken,
) {
    // One spare byte tells a datagram that did not fit from one that filled the buffer.
    let mut buf = vec![0u8; PEER_HEADROOM + MAX_PEER_DATAGRAM + 1 + PEER_TAILROOM];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = inner.shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf[PEER_HEADROOM..PEER_HEADROOM + MAX_PEER_DATAGRAM + 1]) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "recv on relayed socket");
                    continue;
                }
            },
        };
        let action = {
            let mut g = lock(&inner);
            g.server
                .handle_peer(now(), id, from, &mut buf, PEER_HEADROOM..PEER_HEADROOM + n)
        };
        if let PeerOutput::ToClient {
            local,
            client,
            range,
        } = action
        {
            if let Some(l) = inner.listeners.get(&local) {
                if let Err(e) = l.send_to(&buf[range], client).await {
                    tracing::debug!(client = %Pii(client), error = %e, "send to client failed");
                }
            }
        }
    }
}

async fn timer_loop(inner: Arc<Inner>) {
    loop {
        let next = lock(&inner).server.poll_timeout();
        let cap = Instant::now() + TIMER_CAP;
        let at = next.map_or(cap, |t| t.min(cap));
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(at.into()) => {}
        }
        let mut g = lock(&inner);
        let Shared { server, relays } = &mut *g;
        server.handle_timeout(now(), relays);
    }
}
