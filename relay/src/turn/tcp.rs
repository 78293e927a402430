//! RFC 6062 TCP allocations: the sans-IO state of their peer connections.
//!
//! A TCP allocation (Allocate with REQUESTED-TRANSPORT 6, only from a client on a TCP
//! or TLS connection) has a listening TCP socket as its relayed address, opened by
//! [`super::RelayPorts::open_tcp`]. Each peer connection has a CONNECTION-ID and
//! goes through these states:
//!
//! - `Connecting`: the client sent Connect; the driver was told
//!   ([`TcpCommand::Connect`]) to connect from the relayed address to the peer and
//!   reports the outcome with [`super::Server::tcp_connect_result`], which writes the
//!   deferred answer (CONNECTION-ID, or 447).
//! - `Unbound`: connected (by Connect, or a peer connected to the relayed address and
//!   [`super::Server::tcp_incoming`] wrote the ConnectionAttempt indication), waiting
//!   for the client's ConnectionBind on a new connection. Unbound after
//!   [`TcpLimits::bind_timeout`] it is closed ([`TcpCommand::Close`]).
//! - `Bound`: a ConnectionBind on a new client connection succeeded; after the
//!   answer, that connection is a raw byte pipe to the peer connection, which the
//!   driver runs. When either side closes, the driver calls
//!   [`super::Server::tcp_connection_closed`].
//!
//! Connections count against [`TcpLimits::per_allocation`] and, over every core
//! sharing the counter, [`TcpLimits::total`]. Deleting or expiring the allocation
//! closes all its connections. The driver takes what to do with
//! [`super::Server::poll_tcp`] after every core call.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::cmp::Reverse;

use rand::Rng;

use super::allocation::{AllocationId, FiveTuple, Transport};
use super::auth::Key;
use super::request::Request;
use super::{policy, Auth, ClientOutput, Now, Server, Timer};
use crate::stun::{attr, message_type, method, Class, Message, MessageWriter, TransactionId};

/// Names a peer connection of a TCP allocation (the CONNECTION-ID attribute).
pub type ConnectionId = u32;

/// Limits on TCP allocations' peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Peer connections per allocation (pending and bound).
    pub per_allocation: u32,
    /// Peer connections in total (over every core sharing the counter).
    pub total: u32,
    /// How long a peer connection waits for the client's ConnectionBind (RFC 6062
    /// says 30 s).
    pub bind_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            per_allocation: 32,
            total: 8192,
            bind_timeout: Duration::from_secs(30),
        }
    }
}

/// What the driver must do for TCP allocations, taken with [`Server::poll_tcp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpCommand {
    /// Connect from `local` (the allocation's relayed address) to `peer`; report the
    /// outcome with [`Server::tcp_connect_result`].
    Connect {
        connection: ConnectionId,
        allocation: AllocationId,
        local: SocketAddr,
        peer: SocketAddr,
    },
    /// Close the peer connection (and the client data connection bound to it).
    Close { connection: ConnectionId },
}

/// Why a peer's connection to a relayed TCP address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncomingError {
    #[error("no such TCP allocation")]
    NoAllocation,
    #[error("no permission for the peer")]
    NoPermission,
    #[error("connection limit reached")]
    Limit,
    #[error("the control connection is gone")]
    NoClient,
}

/// What the deferred answer to a Connect needs.
#[derive(Debug, Clone, Copy)]
struct PendingAnswer {
    tid: TransactionId,
    key: Key,
    sha256_mi: bool,
    fingerprint: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Connecting(PendingAnswer),
    Unbound {
        expires: Instant,
    },
    /// Bound to the client data connection with this stream id.
    Bound {
        data: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Connection {
    allocation: AllocationId,
    peer: SocketAddr,
    state: State,
}

/// The peer connections of one core.
#[derive(Debug)]
pub(crate) struct TcpState {
    conns: HashMap<ConnectionId, Connection>,
    /// TCP allocations and how many connections each has.
    allocations: HashMap<AllocationId, u32>,
    /// Bound connections by the stream id of their client data connection.
    by_data: HashMap<u64, ConnectionId>,
    commands: VecDeque<TcpCommand>,
    total: Arc<AtomicU32>,
    /// Connection ids are `tag` modulo `count`, so a driver running several cores
    /// finds the core of a ConnectionBind from the id alone.
    tag: u32,
    count: u32,
}

impl Default for TcpState {
    fn default() -> Self {
        TcpState {
            conns: HashMap::new(),
            allocations: HashMap::new(),
            by_data: HashMap::new(),
            commands: VecDeque::new(),
            total: Arc::new(AtomicU32::new(0)),
            tag: 0,
            count: 1,
        }
    }
}

impl TcpState {
    pub(crate) fn is_tcp(&self, id: AllocationId) -> bool {
        self.allocations.contains_key(&id)
    }

    fn release(&mut self, c: ConnectionId) -> Option<Connection> {
        let conn = self.conns.remove(&c)?;
        if let Some(n) = self.allocations.get_mut(&conn.allocation) {
            *n = n.saturating_sub(1);
        }
        if let State::Bound { data } = conn.state {
            self.by_data.remove(&data);
        }
        let _ = self
            .total
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
        Some(conn)
    }

    /// Count a new connection of `a`, or refuse it over a limit.
    fn reserve(&mut self, a: AllocationId, limits: &TcpLimits) -> bool {
        let Some(n) = self.allocations.get_mut(&a) else {
            return false;
        };
        if *n >= limits.per_allocation {
            return false;
        }
        if self
            .total
            .fetch_update(Relaxed, Relaxed, |t| (t < limits.total).then_some(t + 1))
            .is_err()
        {
            return false;
        }
        *n += 1;
        true
    }
}

/// The CONNECTION-ID of `packet` if it is a ConnectionBind request (a driver with
/// several cores hands it to the core [`connection_core`] names).
pub fn connection_bind_id(packet: &[u8]) -> Option<ConnectionId> {
    let msg = Message::decode(packet).ok()?;
    if msg.class() != Class::Request || msg.method() != method::CONNECTION_BIND {
        return None;
    }
    let v = msg.get(attr::CONNECTION_ID)?.value;
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// Which of `count` cores (numbered as in [`Server::set_core_index`]) made `id`.
pub fn connection_core(id: ConnectionId, count: usize) -> usize {
    (id as usize) % count.max(1)
}

impl Server {
    /// This core is number `index` of `count` (connection ids encode it), and counts
    /// its TCP peer connections on `total` (shared, for the total limit).
    pub fn set_core_index(&mut self, index: usize, count: usize, total: Arc<AtomicU32>) {
        self.tcp.tag = index as u32;
        self.tcp.count = count.max(1) as u32;
        self.tcp.total = total;
    }

    /// The next thing the driver must do for TCP allocations.
    pub fn poll_tcp(&mut self) -> Option<TcpCommand> {
        self.tcp.commands.pop_front()
    }

    /// Live TCP allocations and peer connections of this core.
    pub fn tcp_counts(&self) -> (usize, usize) {
        (self.tcp.allocations.len(), self.tcp.conns.len())
    }

    /// The connection bound to the client data connection `tuple`, once its
    /// ConnectionBind succeeded: after writing the answer the driver pipes bytes.
    pub fn tcp_bound(&self, tuple: &FiveTuple) -> Option<ConnectionId> {
        match tuple.transport {
            Transport::Stream(s) => self.tcp.by_data.get(&s).copied(),
            Transport::Udp => None,
        }
    }

    /// The allocation of connection `c` and its control connection's 5-tuple.
    pub fn tcp_connection_owner(&self, c: ConnectionId) -> Option<(AllocationId, FiveTuple)> {
        let conn = self.tcp.conns.get(&c)?;
        Some((conn.allocation, self.alloc(conn.allocation)?.tuple))
    }

    /// For a ConnectionBind naming a known connection, the client address of its
    /// allocation's control connection: the nonce given there is good for the bind.
    pub(super) fn tcp_bind_control_address(&self, req: &Request<'_>) -> Option<SocketAddr> {
        if req.msg.method() != method::CONNECTION_BIND {
            return None;
        }
        let conn = self.tcp.conns.get(&req.connection_id?)?;
        Some(self.alloc(conn.allocation)?.tuple.client)
    }

    fn new_connection_id(&mut self) -> ConnectionId {
        let (tag, count) = (self.tcp.tag, self.tcp.count.max(1));
        loop {
            let r: u32 = self.rng.random();
            let id = (r - r % count).wrapping_add(tag);
            if id % count == tag && !self.tcp.conns.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn tcp_allocation_created(&mut self, id: AllocationId) {
        self.tcp.allocations.insert(id, 0);
        self.stats.tcp_allocations_created += 1;
    }

    /// Close every connection of allocation `id` (deleted or expired).
    pub(super) fn tcp_allocation_removed(&mut self, id: AllocationId) {
        if self.tcp.allocations.remove(&id).is_none() {
            return;
        }
        let ids: Vec<ConnectionId> = self
            .tcp
            .conns
            .iter()
            .filter(|(_, c)| c.allocation == id)
            .map(|(k, _)| *k)
            .collect();
        for c in ids {
            self.tcp.release(c);
            self.tcp
                .commands
                .push_back(TcpCommand::Close { connection: c });
        }
    }

    /// Connect (RFC 6062 section 5.2). The answer is deferred to
    /// [`Server::tcp_connect_result`] unless the request is refused at once.
    pub(super) fn connect(
        &mut self,
        now: Now,
        id: AllocationId,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
    ) -> ClientOutput {
        if !self.tcp.is_tcp(id) || req.peer_count != 1 {
            return self.auth_error(req, out, auth, 400, &[]);
        }
        let Some(peer) = req.peers().next() else {
            return self.auth_error(req, out, auth, 400, &[]);
        };
        let peer = match self.check_peer(id, peer) {
            Ok(p) => p,
            Err(code) => return self.auth_error(req, out, auth, code, &[]),
        };
        let Some(a) = self.alloc(id) else {
            return ClientOutput::None;
        };
        if !a.has_permission(peer.ip(), now.mono) {
            self.stats.tcp_refused += 1;
            return self.auth_error(req, out, auth, 403, &[]);
        }
        let local = a.relayed;
        if self
            .tcp
            .conns
            .values()
            .any(|c| c.allocation == id && c.peer == peer)
        {
            return self.auth_error(req, out, auth, 446, &[]);
        }
        let limits = self.cfg.tcp;
        if !self.tcp.reserve(id, &limits) {
            self.stats.tcp_refused += 1;
            self.stats.quota_refused += 1;
            return self.auth_error(req, out, auth, 508, &[]);
        }
        let c = self.new_connection_id();
        let answer = PendingAnswer {
            tid: *req.msg.transaction_id(),
            key: auth.key,
            sha256_mi: auth.sha256_mi,
            fingerprint: req.fingerprint.is_some(),
        };
        self.tcp.conns.insert(
            c,
            Connection {
                allocation: id,
                peer,
                state: State::Connecting(answer),
            },
        );
        self.tcp.commands.push_back(TcpCommand::Connect {
            connection: c,
            allocation: id,
            local,
            peer,
        });
        ClientOutput::None
    }

    /// The driver's connection for a Connect ended: `connected` or not. Writes the
    /// answer to the Connect into `out` and returns the client's 5-tuple (the control
    /// connection) and its length; `None` when nobody is waiting any more (the
    /// allocation went away): the driver then closes the peer connection.
    pub fn tcp_connect_result(
        &mut self,
        now: Now,
        c: ConnectionId,
        connected: bool,
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let conn = *self.tcp.conns.get(&c)?;
        let State::Connecting(answer) = conn.state else {
            return None;
        };
        let tuple = self.alloc(conn.allocation)?.tuple;
        if connected {
            let expires = now.mono + self.cfg.tcp.bind_timeout;
            if let Some(x) = self.tcp.conns.get_mut(&c) {
                x.state = State::Unbound { expires };
            }
            self.timers
                .push(Reverse((expires, Timer::TcpConnection(c))));
            self.stats.tcp_connects += 1;
        } else {
            self.tcp.release(c);
            self.stats.tcp_connect_failures += 1;
            self.stats.error_responses += 1;
        }
        let typ = if connected {
            message_type(method::CONNECT, Class::SuccessResponse)
        } else {
            message_type(method::CONNECT, Class::ErrorResponse)
        };
        let mut w = MessageWriter::new(out, typ, &answer.tid).ok()?;
        if connected {
            w.u32_attr(attr::CONNECTION_ID, c).ok()?;
        } else {
            w.error_code(447, super::err_reason(447)).ok()?;
        }
        if let Some(sw) = &self.cfg.software {
            w.attr(attr::SOFTWARE, sw.as_bytes()).ok()?;
        }
        if answer.sha256_mi {
            w.integrity_sha256(answer.key.as_slice()).ok()?;
        } else {
            w.integrity_sha1(answer.key.as_slice()).ok()?;
        }
        if answer.fingerprint {
            w.fingerprint().ok()?;
        }
        Some((tuple, w.finish()))
    }

    /// A peer connected to the relayed TCP address of `allocation` (RFC 6062
    /// section 5.3). Accepted only from a peer with a permission (and allowed by the
    /// peer policy), within the limits: the ConnectionAttempt indication for the
    /// client is written into `out`. Returns the new connection's id, the control
    /// connection's 5-tuple and the indication's length; on error the driver closes
    /// the peer's connection.
    pub fn tcp_incoming(
        &mut self,
        now: Now,
        allocation: AllocationId,
        peer: SocketAddr,
        out: &mut [u8],
    ) -> Result<(ConnectionId, FiveTuple, usize), IncomingError> {
        let peer = SocketAddr::new(policy::normalize(peer.ip()), peer.port());
        if !self.tcp.is_tcp(allocation) {
            return Err(IncomingError::NoAllocation);
        }
        let Some(a) = self.alloc(allocation) else {
            return Err(IncomingError::NoAllocation);
        };
        let tuple = a.tuple;
        if !self.cfg.policy.permits(peer) || !a.has_permission(peer.ip(), now.mono) {
            self.stats.tcp_refused += 1;
            self.stats.dropped_no_permission += 1;
            return Err(IncomingError::NoPermission);
        }
        let limits = self.cfg.tcp;
        if !self.tcp.reserve(allocation, &limits) {
            self.stats.tcp_refused += 1;
            return Err(IncomingError::Limit);
        }
        let c = self.new_connection_id();
        let tid = self.next_tid();
        let written = (|| {
            let typ = message_type(method::CONNECTION_ATTEMPT, Class::Indication);
            let mut w = MessageWriter::new(out, typ, &tid).ok()?;
            w.u32_attr(attr::CONNECTION_ID, c).ok()?;
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer).ok()?;
            Some(w.finish())
        })();
        let Some(len) = written else {
            let _ = self
                .tcp
                .total
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
            if let Some(n) = self.tcp.allocations.get_mut(&allocation) {
                *n = n.saturating_sub(1);
            }
            return Err(IncomingError::NoClient);
        };
        let expires = now.mono + limits.bind_timeout;
        self.tcp.conns.insert(
            c,
            Connection {
                allocation,
                peer,
                state: State::Unbound { expires },
            },
        );
        self.timers
            .push(Reverse((expires, Timer::TcpConnection(c))));
        self.stats.tcp_attempts += 1;
        Ok((c, tuple, len))
    }

    /// ConnectionBind (RFC 6062 section 5.4) on a new client connection `tuple`,
    /// authenticated with the credentials of the allocation.
    pub(super) fn connection_bind(
        &mut self,
        tuple: FiveTuple,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
    ) -> ClientOutput {
        let Transport::Stream(data) = tuple.transport else {
            return self.auth_error(req, out, auth, 400, &[]);
        };
        // A connection with an allocation or already bound cannot be bound.
        if self.by_tuple.contains_key(&tuple) || self.tcp.by_data.contains_key(&data) {
            return self.auth_error(req, out, auth, 400, &[]);
        }
        let Some(c) = req.connection_id else {
            return self.auth_error(req, out, auth, 400, &[]);
        };
        let Some(conn) = self.tcp.conns.get(&c).copied() else {
            self.stats.tcp_bind_refused += 1;
            return self.auth_error(req, out, auth, 400, &[]);
        };
        if !matches!(conn.state, State::Unbound { .. }) {
            self.stats.tcp_bind_refused += 1;
            return self.auth_error(req, out, auth, 400, &[]);
        }
        if self
            .alloc(conn.allocation)
            .is_none_or(|a| *a.username != *auth.username)
        {
            self.stats.tcp_bind_refused += 1;
            return self.auth_error(req, out, auth, 441, &[]);
        }
        if let Some(x) = self.tcp.conns.get_mut(&c) {
            x.state = State::Bound { data };
        }
        self.tcp.by_data.insert(data, c);
        self.stats.tcp_binds += 1;
        self.auth_success(req, out, auth, |_| Some(()))
    }

    /// The driver closed connection `c` (either side of a bound pipe ended, or the
    /// peer left before the bind).
    pub fn tcp_connection_closed(&mut self, c: ConnectionId) {
        self.tcp.release(c);
    }

    /// Timer of connection `c`: closed if still unbound.
    pub(super) fn tcp_timeout(&mut self, now: Now, c: ConnectionId) {
        let Some(conn) = self.tcp.conns.get(&c) else {
            return;
        };
        if let State::Unbound { expires } = conn.state {
            if expires <= now.mono {
                self.tcp.release(c);
                self.stats.tcp_bind_timeouts += 1;
                self.tcp
                    .commands
                    .push_back(TcpCommand::Close { connection: c });
            }
        }
    }
}
