//! The glue of RFC 6062 TCP allocations ([`crate::turn::tcp`] is the protocol).
//!
//! Per shard, [`TcpGlue`] holds the accept task of each TCP allocation's relayed
//! listening socket and the peer connections waiting for their ConnectionBind. After
//! every core call that may produce them, [`apply`] starts what the core asked for:
//! accept tasks for relayed listeners the core opened ([`RelayTable::open_tcp`]),
//! connects ([`TcpCommand::Connect`], from the relayed address, so the peer sees the
//! address the client was given), and closes ([`TcpCommand::Close`], and the
//! listeners of allocations that ended). Answers for the client (a deferred Connect
//! answer, a ConnectionAttempt indication) go on its control connection's queue,
//! like peer data on the UDP relay path.
//!
//! Once a ConnectionBind succeeds, the client's data connection task (in
//! [`super::stream`]) takes the peer connection from here and runs [`pipe`]: raw bytes
//! both ways through one fixed buffer per direction; a side that does not take what is
//! written to it within the stall timeout is dropped (never buffered without end), and
//! either side closing closes the other.
//!
//! [`RelayTable::open_tcp`]: super::ports::RelayTable

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{lock, now, Inner, Shared, RESPONSE_MAX};
use crate::turn::{AllocationId, ConnectionId, TcpCommand, Transport};

/// Bytes read from one side of a bound connection before they are written to the
/// other (one buffer per direction).
const PIPE_BUFFER: usize = 16 * 1024;

/// Timeouts of the glue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpTimeouts {
    /// Time for a Connect's TCP connection to the peer to be established.
    pub(crate) connect: Duration,
    /// A side of a bound connection that accepts no byte for this long is dropped.
    pub(crate) stall: Duration,
}

/// A peer connection of a TCP allocation.
#[derive(Debug)]
struct PeerConn {
    /// The socket, until a ConnectionBind takes it.
    stream: Option<TcpStream>,
    /// Cancelled when the core closes the connection.
    close: CancellationToken,
}

/// The TCP allocation state of one shard's driver.
#[derive(Debug)]
pub(crate) struct TcpGlue {
    listeners: HashMap<AllocationId, CancellationToken>,
    peers: HashMap<ConnectionId, PeerConn>,
    timeouts: TcpTimeouts,
}

impl TcpGlue {
    pub(crate) fn new(timeouts: TcpTimeouts) -> Self {
        TcpGlue {
            listeners: HashMap::new(),
            peers: HashMap::new(),
            timeouts,
        }
    }

    /// Take the peer side of connection `c` for a bound client data connection:
    /// its socket and the token the core's close cancels.
    pub(crate) fn take_peer(&mut self, c: ConnectionId) -> Option<(TcpStream, CancellationToken)> {
        let p = self.peers.get_mut(&c)?;
        Some((p.stream.take()?, p.close.clone()))
    }

    /// The bound connection `c` ended.
    pub(crate) fn forget(&mut self, c: ConnectionId) {
        if let Some(p) = self.peers.remove(&c) {
            p.close.cancel();
        }
    }

    pub(crate) fn stall_timeout(&self) -> Duration {
        self.timeouts.stall
    }

    /// Close everything (shutdown).
    pub(crate) fn close_all(&mut self) {
        for (_, t) in self.listeners.drain() {
            t.cancel();
        }
        for (_, p) in self.peers.drain() {
            p.close.cancel();
        }
    }
}

/// Queue `bytes` on the client connection of stream `transport`. False when it is
/// gone.
fn to_client(shared: &Shared, transport: Transport, bytes: &[u8]) -> bool {
    match transport {
        Transport::Stream(id) => match shared.streams.get(&id) {
            Some(s) => {
                s.send(bytes);
                true
            }
            None => false,
        },
        Transport::Udp => false,
    }
}

/// Start what the core of shard `index` asked for (see the module documentation).
/// Call with the shard locked, after core calls.
pub(crate) fn apply(inner: &Arc<Inner>, index: usize, shared: &mut Shared) {
    let Shared {
        server,
        relays,
        tcp,
        ..
    } = shared;
    for (id, listener) in relays.take_tcp_opened() {
        let token = CancellationToken::new();
        let l = {
            let _rt = inner.runtime.enter();
            TcpListener::from_std(listener)
        };
        match l {
            Ok(l) => {
                tcp.listeners.insert(id, token.clone());
                inner
                    .runtime
                    .spawn(accept_loop(inner.clone(), index, id, l, token));
            }
            Err(e) => tracing::warn!(error = %e, "cannot serve a relayed TCP listener"),
        }
    }
    for id in relays.take_tcp_closed() {
        if let Some(t) = tcp.listeners.remove(&id) {
            t.cancel();
        }
    }
    while let Some(cmd) = server.poll_tcp() {
        match cmd {
            TcpCommand::Connect {
                connection,
                local,
                peer,
                ..
            } => {
                let timeout = tcp.timeouts.connect;
                inner.runtime.spawn(connect(
                    inner.clone(),
                    index,
                    connection,
                    local,
                    peer,
                    timeout,
                ));
            }
            TcpCommand::Close { connection } => {
                if let Some(p) = tcp.peers.remove(&connection) {
                    p.close.cancel();
                }
            }
        }
    }
}

/// Accept peers on a TCP allocation's relayed address until the allocation ends.
async fn accept_loop(
    inner: Arc<Inner>,
    index: usize,
    allocation: AllocationId,
    listener: TcpListener,
    token: CancellationToken,
) {
    let Some(shard) = inner.shards.get(index) else {
        return;
    };
    let mut out = vec![0u8; RESPONSE_MAX];
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            _ = inner.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "accept on a relayed TCP address failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let mut g = lock(shard);
        match g.server.tcp_incoming(now(), allocation, peer, &mut out) {
            Ok((c, tuple, len)) => {
                let sent = out
                    .get(..len)
                    .is_some_and(|b| to_client(&g, tuple.transport, b));
                if sent {
                    g.tcp.peers.insert(
                        c,
                        PeerConn {
                            stream: Some(sock),
                            close: CancellationToken::new(),
                        },
                    );
                } else {
                    g.server.tcp_connection_closed(c);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %crate::pii::Pii(peer), error = %e, "peer connection refused");
            }
        }
    }
}

/// A TCP socket bound to `local` (the relayed address; its listener shares the port
/// through SO_REUSEPORT) connected to `peer`.
async fn connect_from(local: SocketAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    #[cfg(unix)]
    sock.set_reuseport(true)?;
    sock.bind(local)?;
    sock.connect(peer).await
}

/// Run a Connect and hand the outcome to the core.
async fn connect(
    inner: Arc<Inner>,
    index: usize,
    c: ConnectionId,
    local: SocketAddr,
    peer: SocketAddr,
    timeout: Duration,
) {
    let Some(shard) = inner.shards.get(index) else {
        return;
    };
    let r = tokio::select! {
        r = tokio::time::timeout(timeout, connect_from(local, peer)) => r.ok().and_then(|r| r.ok()),
        _ = inner.shutdown.cancelled() => None,
    };
    if r.is_none() {
        tracing::debug!(peer = %crate::pii::Pii(peer), "Connect to a peer failed");
    }
    let mut out = vec![0u8; RESPONSE_MAX];
    let mut g = lock(shard);
    let Some((tuple, len)) = g.server.tcp_connect_result(now(), c, r.is_some(), &mut out) else {
        return; // nobody waits any more: the socket is dropped
    };
    let sent = out
        .get(..len)
        .is_some_and(|b| to_client(&g, tuple.transport, b));
    match r {
        Some(s) if sent => {
            let _ = s.set_nodelay(true);
            g.tcp.peers.insert(
                c,
                PeerConn {
                    stream: Some(s),
                    close: CancellationToken::new(),
                },
            );
        }
        Some(_) => g.server.tcp_connection_closed(c),
        None => {}
    }
}

/// Why a bound connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PipeEnd {
    Closed,
    SlowReader,
    Cancelled,
}

/// Copy one direction: read into a fixed buffer, write it out; a write that takes
/// longer than `stall` ends the pipe.
async fn copy<R, W>(rd: &mut R, wr: &mut W, stall: Duration) -> PipeEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PIPE_BUFFER];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return PipeEnd::Closed,
            Ok(n) => n,
        };
        let Some(chunk) = buf.get(..n) else {
            return PipeEnd::Closed;
        };
        match tokio::time::timeout(stall, wr.write_all(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return PipeEnd::Closed,
            Err(_) => return PipeEnd::SlowReader,
        }
    }
}

/// Relay raw bytes between a bound client data connection and its peer connection,
/// `first` (bytes the client sent after its ConnectionBind, already read) going to
/// the peer first. Ends when either side closes or stalls, or `close` is cancelled.
pub(crate) async fn pipe<C>(
    client: C,
    mut peer: TcpStream,
    first: &[u8],
    close: CancellationToken,
    shutdown: CancellationToken,
    stall: Duration,
    slow_readers: &std::sync::atomic::AtomicU64,
) -> PipeEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() {
        match tokio::time::timeout(stall, peer.write_all(first)).await {
            Ok(Ok(())) => {}
            _ => return PipeEnd::Closed,
        }
    }
    let (mut crd, mut cwr) = tokio::io::split(client);
    let (mut prd, mut pwr) = peer.split();
    let end = tokio::select! {
        e = copy(&mut crd, &mut pwr, stall) => e,
        e = copy(&mut prd, &mut cwr, stall) => e,
        _ = close.cancelled() => PipeEnd::Cancelled,
        _ = shutdown.cancelled() => PipeEnd::Cancelled,
    };
    if end == PipeEnd::SlowReader {
        slow_readers.fetch_add(1, Relaxed);
    }
    let _ = pwr.shutdown().await;
    let _ = cwr.shutdown().await;
    end
}
