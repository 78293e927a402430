//! The sans-IO TURN server core (RFC 8656, RFC 8489 authentication). Clients reach it
//! over UDP or over a TCP/TLS stream ([`Transport`] in the 5-tuple); relayed sockets
//! are UDP, except for RFC 6062 TCP allocations (see [`tcp`]).
//!
//! # Calling contract
//!
//! The driver owns sockets, buffers and the clock. It calls:
//! - [`Server::handle_client`] for every datagram received on a listening socket (or
//!   every message framed on a stream, see [`crate::stun::framing`]), with
//!   the listening address, the client address, the datagram, and a scratch buffer for
//!   a STUN response. The result says: nothing to do, send `out[..len]` back to the
//!   client, or send `packet[range]` from the allocation's relayed socket to a peer
//!   (the ChannelData header or Send indication is sliced off; nothing is copied).
//! - [`Server::handle_peer`] for every datagram received on a relayed socket. The
//!   driver reads the datagram at offset [`PEER_HEADROOM`] of a buffer that has at
//!   least 3 bytes of room after it; the core writes the ChannelData header (4 bytes)
//!   or the Data indication header (36 or 48 bytes) into the headroom, in place, and
//!   says which sub-range to send to which client from which listening address.
//!   On a stream a ChannelData message's range includes its padding to 4 bytes.
//! - [`Server::stream_closed`] when a client's TCP/TLS connection ends.
//! - [`Server::poll_timeout`] / [`Server::handle_timeout`] for expiry timers, which
//!   are kept in a binary heap (one entry per allocation's next deadline).
//! - For TCP allocations, after every call: [`Server::poll_tcp`] until `None`, and
//!   the calls of [`tcp`] for the outcomes ([`Server::tcp_connect_result`],
//!   [`Server::tcp_incoming`], [`Server::tcp_connection_closed`]).
//!
//! Relayed sockets are opened and closed through the [`RelayPorts`] trait the driver
//! implements; the core never touches a socket. The ChannelData, Send and Data paths
//! do not allocate.

pub mod allocation;
pub mod auth;
pub mod policy;
pub mod request;
pub mod tcp;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

use crate::stun::attr::{self, algorithm, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP};
use crate::stun::channel_data::{self, ChannelData};
use crate::stun::{
    demux, integrity, message_type, method, Class, Kind, Message, MessageWriter, TransactionId,
    HEADER_LEN,
};

use allocation::{AdditionalRelay, Allocation, Bucket, ChannelBinding};
pub use allocation::{AllocationId, FiveTuple, Transport};
use auth::{Credentials, Key, Lookup, NonceCheck, Nonces, RateLimiter};
pub use policy::PeerPolicy;
use request::Request;
pub use tcp::{ConnectionId, TcpCommand, TcpLimits};

/// Bytes a driver must reserve in front of a datagram read from a peer, so that a
/// Data indication header (20 + XOR-PEER-ADDRESS of up to 24 + DATA header 4) fits.
pub const PEER_HEADROOM: usize = 48;
/// Bytes a driver must leave after a datagram read from a peer (DATA padding).
pub const PEER_TAILROOM: usize = 3;
/// How long an EVEN-PORT reservation is held (RFC 8656 section 7.2 suggests 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// The time as the driver sees it: a monotonic instant for timers and the wall
/// clock (UNIX seconds) for REST credential expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_secs: u64,
}

impl Now {
    /// The same moment moved forward by `d` (virtual clocks in tests).
    pub fn advance(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            unix_secs: self.unix_secs + d.as_secs(),
        }
    }
}

/// Quotas and rate limits.
#[derive(Debug, Clone)]
pub struct Quotas {
    /// Allocations per user (0 = unlimited).
    pub allocations_per_user: u32,
    /// Allocations in total (0 = unlimited).
    pub total_allocations: u32,
    pub permissions_per_allocation: u32,
    pub channels_per_allocation: u32,
    /// Relayed bytes per second per allocation, both directions (0 = unlimited).
    pub bytes_per_sec: u64,
    /// 401/438 answers per second per source IP (0 = unlimited), and the burst.
    pub unauthorized_per_sec: u32,
    pub unauthorized_burst: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            allocations_per_user: 64,
            total_allocations: 65_536,
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            bytes_per_sec: 0,
            unauthorized_per_sec: 20,
            unauthorized_burst: 40,
        }
    }
}

/// Core configuration (built from the file/flags by [`crate::config`]).
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    pub users: Vec<(String, String)>,
    pub auth_secrets: Vec<String>,
    /// SOFTWARE attribute value; `None` (the default) sends none.
    pub software: Option<String>,
    /// Advertised instead of the relayed socket's IP (servers behind 1:1 NAT).
    pub external_ip: Option<IpAddr>,
    pub policy: PeerPolicy,
    pub quotas: Quotas,
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// Accept ChannelBind numbers only in RFC 8656's 0x4000-0x4FFF. Off by default:
    /// RFC 5766 allowed 0x4000-0x7FFF, clients in the field (coturn's own among them)
    /// still pick numbers up to 0x7FFF, and the servers operators move from accept
    /// them. Nothing else is demultiplexed on a TURN listening port, so the wider
    /// range collides with no other protocol here (RFC 7983).
    pub strict_channel_numbers: bool,
    /// RFC 6062 TCP allocations' connection limits and bind timeout.
    pub tcp: TcpLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "tandem".into(),
            users: Vec::new(),
            auth_secrets: Vec::new(),
            software: None,
            external_ip: None,
            policy: PeerPolicy::default(),
            quotas: Quotas::default(),
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            strict_channel_numbers: false,
            tcp: TcpLimits::default(),
        }
    }
}

/// Address family of a relayed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Which port the driver should open for a new allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    /// An even port; with `reserve_next` the next port is kept for a later Allocate.
    Even {
        reserve_next: bool,
    },
    /// The port reserved earlier by an `Even { reserve_next: true }` request.
    Reserved(SocketAddr),
}

/// A relayed socket opened by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedPort {
    pub addr: SocketAddr,
    /// The reserved next port, when requested.
    pub reserved: Option<SocketAddr>,
}

/// Why a relayed socket could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    #[error("no relay address of the requested family")]
    Family,
    #[error("no free port")]
    Exhausted,
    #[error("DONT-FRAGMENT is not supported by this driver")]
    DontFragment,
    #[error("this driver has no TCP relayed addresses")]
    Transport,
}

/// What the core needs from the driver to manage relayed sockets.
pub trait RelayPorts {
    /// Open a relayed UDP socket for allocation `id`.
    fn open(
        &mut self,
        id: AllocationId,
        family: Family,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<OpenedPort, PortError>;
    /// Open a listening TCP socket as the relayed address of TCP allocation `id`
    /// (RFC 6062), from the same port range. [`RelayPorts::close`] closes it.
    fn open_tcp(&mut self, id: AllocationId, family: Family) -> Result<OpenedPort, PortError> {
        let _ = (id, family);
        Err(PortError::Transport)
    }
    /// Close the relayed socket of `id`.
    fn close(&mut self, id: AllocationId);
    /// Free a port held for a reservation that expired unused.
    fn release_reservation(&mut self, addr: SocketAddr);
    /// A reservation was made under `token` for `addr`. A driver that runs several
    /// cores (one per worker) publishes it, so an Allocate carrying the token that
    /// reaches another worker (a different 5-tuple may hash elsewhere) finds it.
    fn share_reservation(&mut self, token: [u8; 8], addr: SocketAddr) {
        let _ = (token, addr);
    }
    /// The address reserved under `token` by another core, taken (once).
    fn claim_reservation(&mut self, token: &[u8; 8]) -> Option<SocketAddr> {
        let _ = token;
        None
    }
}

/// Result of [`Server::handle_client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Nothing to send.
    None,
    /// Send `out[..len]` to the client from the listening address it used.
    Reply { len: usize },
    /// Send `out[..len]` from the listening address the client used to `to`: the
    /// client's IP at the port its Binding request named in RESPONSE-PORT (RFC 5780
    /// section 7.5; UDP only, never another IP).
    ReplyTo { len: usize, to: SocketAddr },
    /// Send `packet[payload]` to `peer` from the relayed socket of `allocation`.
    Forward {
        allocation: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    },
}

/// Result of [`Server::handle_peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutput {
    None,
    /// Send `buf[range]` from listening address `local` to `client`, over
    /// `transport` (on a stream, a ChannelData message already carries its padding).
    ToClient {
        local: SocketAddr,
        client: SocketAddr,
        transport: Transport,
        range: Range<usize>,
    },
}

/// Counters exported as metrics (no per-user data).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub binding_requests: u64,
    pub unauthorized: u64,
    pub unauthorized_rate_limited: u64,
    pub auth_failures: u64,
    pub error_responses: u64,
    pub malformed: u64,
    pub peer_refused: u64,
    pub quota_refused: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub dropped_no_permission: u64,
    pub dropped_bandwidth: u64,
    pub amplification_dropped: u64,
    /// RFC 6062: TCP allocations made, Connects that connected and that failed,
    /// peer connections accepted (ConnectionAttempt), Connects and peer connections
    /// refused (no permission, limits), ConnectionBinds that succeeded and failed,
    /// peer connections closed unbound after the bind timeout.
    pub tcp_allocations_created: u64,
    pub tcp_connects: u64,
    pub tcp_connect_failures: u64,
    pub tcp_attempts: u64,
    pub tcp_refused: u64,
    pub tcp_binds: u64,
    pub tcp_bind_refused: u64,
    pub tcp_bind_timeouts: u64,
}

/// Allocation counts per user and in total, which the per-user and total quotas are
/// checked against. One ledger may be shared by several servers (one per worker) so
/// the quotas hold for the whole process; it is locked only by Allocate and by the
/// removal of an allocation, never on the relay path.
#[derive(Debug, Default)]
pub struct QuotaLedger {
    counts: std::sync::Mutex<LedgerCounts>,
}

#[derive(Debug, Default)]
struct LedgerCounts {
    per_user: HashMap<Box<[u8]>, u32>,
    total: u32,
}

impl QuotaLedger {
    fn counts(&self) -> std::sync::MutexGuard<'_, LedgerCounts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count one more allocation of `user`, unless a quota (0 = none) is reached:
    /// then the error code (486 for the user's, 508 for the total).
    fn acquire(&self, user: &[u8], per_user: u32, total: u32) -> Result<(), u16> {
        let mut c = self.counts();
        let n = c.per_user.get(user).copied().unwrap_or(0);
        if per_user != 0 && n >= per_user {
            return Err(486);
        }
        if total != 0 && c.total >= total {
            return Err(508);
        }
        c.total += 1;
        *c.per_user.entry(user.into()).or_insert(0) += 1;
        Ok(())
    }

    fn release(&self, user: &[u8]) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(user);
            }
        }
    }
}

macro_rules! stats_merge {
    ($($f:ident),*) => {
        impl Stats {
            /// Add `other` to these counters (one set per worker, summed for metrics).
            pub fn merge(&mut self, other: &Stats) {
                $(self.$f += other.$f;)*
            }
        }
    };
}

stats_merge!(
    allocations_created,
    allocations_expired,
    allocations_deleted,
    binding_requests,
    unauthorized,
    unauthorized_rate_limited,
    auth_failures,
    error_responses,
    malformed,
    peer_refused,
    quota_refused,
    to_peer_packets,
    to_peer_bytes,
    to_client_packets,
    to_client_bytes,
    dropped_no_permission,
    dropped_bandwidth,
    amplification_dropped,
    tcp_allocations_created,
    tcp_connects,
    tcp_connect_failures,
    tcp_attempts,
    tcp_refused,
    tcp_binds,
    tcp_bind_refused,
    tcp_bind_timeouts
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation(AllocationId),
    Reservation([u8; 8]),
    TcpConnection(ConnectionId),
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
    /// For the second relayed socket of a dual allocation: the allocation's own id
    /// (a peer's datagram on that socket is looked up through it).
    alias: Option<AllocationId>,
}

/// A successful authentication.
#[derive(Debug, Clone)]
struct Auth {
    key: Key,
    username: Vec<u8>,
    sha256_mi: bool,
}

/// Allocations by 5-tuple, looked up for every ChannelData packet and Send indication
/// from a client. SipHash (the std default) cost more than the rest of that look-up;
/// foldhash is several times cheaper on a 5-tuple. The keys are client addresses, which
/// an attacker chooses in part, so the hash must be keyed: foldhash's `RandomState`
/// seeds every map from per-process randomness (FxHash, unkeyed, would let anyone
/// precompute colliding addresses). Only an authenticated Allocate inserts, so building
/// a long collision chain also needs credentials and the per-user quota.
type TupleMap = HashMap<FiveTuple, AllocationId, foldhash::fast::RandomState>;

/// The TURN server state machine. See the module documentation for the contract.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    creds: Credentials,
    nonces: Nonces,
    limiter: RateLimiter,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_tuple: TupleMap,
    quota: std::sync::Arc<QuotaLedger>,
    live: u32,
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    rng: rand::rngs::StdRng,
    stats: Stats,
    tcp: tcp::TcpState,
    /// False while the relay drains before it stops: no new allocations.
    accepting: bool,
}

/// An answer to a request that has not authenticated (a Binding success, a 400 or a
/// 420) is at most this many times the size of the request...
pub const AMPLIFICATION_FACTOR: usize = 3;
/// ...and never more than this many bytes, whatever the request's size.
pub const AMPLIFICATION_CAP: usize = 512;

/// How many bytes an unauthenticated answer to a request of `request_len` bytes may
/// take: the one rule against reflection (a spoofed source gets at most three times
/// what the attacker sent, and never more than [`AMPLIFICATION_CAP`]), loose enough
/// that a short 400 or the 420 RFC 8489 section 6.3.1 requires always goes out
/// (the largest, 8 unknown attributes and FINGERPRINT, is 76 bytes, against a
/// request of at least 24). 401 and 438 challenges are rate-limited per source
/// instead (they carry a nonce and the realm).
pub fn amplification_budget(request_len: usize) -> usize {
    request_len
        .saturating_mul(AMPLIFICATION_FACTOR)
        .min(AMPLIFICATION_CAP)
}

fn err_reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// What an Allocate success response says (also to a retransmission).
struct Grant {
    first: SocketAddr,
    second: Option<SocketAddr>,
    address_error: Option<(Family, u16)>,
    token: Option<[u8; 8]>,
    lifetime: u32,
}

impl Grant {
    fn write(&self, w: &mut MessageWriter<'_>, client: &SocketAddr) -> Option<()> {
        w.xor_address(attr::XOR_RELAYED_ADDRESS, &self.first).ok()?;
        if let Some(second) = &self.second {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, second).ok()?;
        }
        w.u32_attr(attr::LIFETIME, self.lifetime).ok()?;
        if let Some(t) = self.token {
            w.attr(attr::RESERVATION_TOKEN, &t).ok()?;
        }
        if let Some((family, code)) = self.address_error {
            let f = match family {
                Family::V4 => FAMILY_IPV4,
                Family::V6 => FAMILY_IPV6,
            };
            w.address_error_code(f, code, err_reason(code)).ok()?;
        }
        w.xor_address(attr::XOR_MAPPED_ADDRESS, client).ok()
    }
}

impl Server {
    /// A server starting at `now`. `seed` feeds the nonce key, reservation tokens and
    /// transaction ids (the driver passes OS randomness; tests a fixed value).
    pub fn new(cfg: Config, now: Now, seed: [u8; 32]) -> Self {
        let mut rng = rand::rngs::StdRng::from_seed(seed);
        let mut nonce_key = [0u8; 32];
        rng.fill_bytes(&mut nonce_key);
        Self::with_nonce_key(cfg, now, seed, nonce_key)
    }

    /// As [`Server::new`], with the key of the stateless nonces given: servers that
    /// share it (one per worker) accept each other's nonces.
    pub fn with_nonce_key(cfg: Config, now: Now, seed: [u8; 32], nonce_key: [u8; 32]) -> Self {
        let mut rng = rand::rngs::StdRng::from_seed(seed);
        let mut skip = [0u8; 32];
        rng.fill_bytes(&mut skip);
        let creds = Credentials::new(&cfg.realm, &cfg.users, &cfg.auth_secrets);
        let nonces = Nonces::new(nonce_key, cfg.nonce_lifetime, now.mono, creds.has_users());
        let limiter = RateLimiter::new(
            cfg.quotas.unauthorized_per_sec,
            cfg.quotas.unauthorized_burst,
            now.mono,
        );
        Server {
            cfg,
            creds,
            nonces,
            limiter,
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: TupleMap::default(),
            quota: Default::default(),
            live: 0,
            reservations: HashMap::new(),
            timers: BinaryHeap::new(),
            rng,
            stats: Stats::default(),
            tcp: tcp::TcpState::default(),
            accepting: true,
        }
    }

    /// Count allocations against `ledger` (shared with other servers) for the
    /// per-user and total quotas. Call before the first Allocate.
    pub fn share_quota(&mut self, ledger: std::sync::Arc<QuotaLedger>) {
        self.quota = ledger;
    }

    /// Hold sources to the 401/438 rate of `limiter` (a clone of one shared with other
    /// servers), so a source gets one rate over every worker.
    pub fn share_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
    }

    /// New long-term credentials (SIGHUP): the realm, static users and REST secrets.
    /// Allocations stay; each later request authenticates against the new ones, so a
    /// user removed here can no longer refresh and its allocation expires.
    pub fn set_credentials(&mut self, realm: &str, users: &[(String, String)], secrets: &[String]) {
        self.creds = Credentials::new(realm, users, secrets);
        self.cfg.realm = realm.to_owned();
        self.cfg.users = users.to_vec();
        self.cfg.auth_secrets = secrets.to_vec();
        self.nonces.set_userhash(self.creds.has_users());
    }

    /// Draining (`false`): every new Allocate is answered 508 Insufficient Capacity,
    /// so the client takes another relay, while existing allocations keep being
    /// refreshed and relayed.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.live as usize
    }

    /// The allocation of a 5-tuple, if any.
    pub fn allocation_of(&self, tuple: &FiveTuple) -> Option<AllocationId> {
        self.by_tuple.get(tuple).copied()
    }

    /// The slot index holding the allocation that `id` names: its own, or for the
    /// second relayed socket of a dual allocation, the allocation's.
    #[inline]
    fn resolve(&self, id: AllocationId) -> Option<usize> {
        let s = self.slots.get(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        Some(s.alias.map_or(id.index, |a| a.index) as usize)
    }

    fn alloc(&self, id: AllocationId) -> Option<&Allocation> {
        let i = self.resolve(id)?;
        self.slots.get(i)?.allocation.as_ref()
    }

    fn alloc_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        let i = self.resolve(id)?;
        self.slots.get_mut(i)?.allocation.as_mut()
    }

    /// Relayed address of the socket `id` names (as bound by the driver): an
    /// allocation's first, or the second of a dual allocation.
    pub fn relayed_address(&self, id: AllocationId) -> Option<SocketAddr> {
        let a = self.alloc(id)?;
        match a.additional {
            Some(r) if r.id == id => Some(r.relayed),
            _ => Some(a.relayed),
        }
    }

    /// The ids of the relayed sockets of `tuple`'s allocation: one, or two for a dual
    /// allocation (a stream connection sends its client's data from them).
    pub fn relay_ids_of(&self, tuple: &FiveTuple) -> [Option<AllocationId>; 2] {
        let Some(a) = self.by_tuple.get(tuple).and_then(|&id| self.alloc(id)) else {
            return [None, None];
        };
        [Some(a.id), a.additional.map(|r| r.id)]
    }

    /// Take a free slot (and so an id) for a relayed socket.
    fn take_slot(&mut self) -> AllocationId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    allocation: None,
                    alias: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[index as usize].generation;
        AllocationId { index, generation }
    }

    /// Give back a slot taken by [`Self::take_slot`] (its id can never name
    /// anything again).
    fn free_slot(&mut self, id: AllocationId) {
        if let Some(s) = self.slots.get_mut(id.index as usize) {
            if s.generation == id.generation {
                s.generation = s.generation.wrapping_add(1);
                s.allocation = None;
                s.alias = None;
                self.free.push(id.index);
            }
        }
    }

    /// When [`Server::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn schedule(&mut self, id: AllocationId) {
        let Some(a) = self.alloc_mut(id) else { return };
        let d = a.next_deadline();
        if a.scheduled.is_none_or(|s| d < s) {
            a.scheduled = Some(d);
            self.timers.push(Reverse((d, Timer::Allocation(id))));
        }
    }

    /// Expire allocations, permissions, channels and reservations due at `now`.
    pub fn handle_timeout(&mut self, now: Now, ports: &mut dyn RelayPorts) {
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now.mono {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Reservation(tok) => {
                    if let Some((addr, exp)) = self.reservations.get(&tok).copied() {
                        if exp <= now.mono {
                            self.reservations.remove(&tok);
                            ports.release_reservation(addr);
                        }
                    }
                }
                Timer::TcpConnection(c) => self.tcp_timeout(now, c),
                Timer::Allocation(id) => {
                    let Some(a) = self.alloc_mut(id) else {
                        continue;
                    };
                    if a.scheduled != Some(t) {
                        continue; // superseded entry
                    }
                    a.scheduled = None;
                    if a.expires <= now.mono {
                        self.stats.allocations_expired += 1;
                        self.remove(id, ports);
                    } else {
                        a.sweep(now.mono);
                        self.schedule(id);
                    }
                }
            }
        }
    }

    /// The TCP or TLS connection of `tuple` closed: its allocation, if any, goes
    /// with it (nothing could reach the client any more). Counted as deleted.
    pub fn stream_closed(&mut self, tuple: &FiveTuple, ports: &mut dyn RelayPorts) {
        if let Some(&id) = self.by_tuple.get(tuple) {
            self.stats.allocations_deleted += 1;
            self.remove(id, ports);
        }
    }

    fn remove(&mut self, id: AllocationId, ports: &mut dyn RelayPorts) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(a) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.by_tuple.remove(&a.tuple);
        self.quota.release(&a.quota_user);
        self.live -= 1;
        self.tcp_allocation_removed(id);
        ports.close(id);
        if let Some(r) = a.additional {
            self.free_slot(r.id);
            ports.close(r.id);
        }
    }

    /// Close every allocation (graceful shutdown).
    pub fn shutdown(&mut self, ports: &mut dyn RelayPorts) {
        let ids: Vec<_> = self.by_tuple.values().copied().collect();
        for id in ids {
            self.remove(id, ports);
        }
        for (_, (addr, _)) in self.reservations.drain() {
            ports.release_reservation(addr);
        }
    }

    // ------------------------------------------------------------------
    // Client side.

    /// Handle a datagram from a client. See the module documentation.
    pub fn handle_client(
        &mut self,
        now: Now,
        tuple: FiveTuple,
        packet: &[u8],
        out: &mut [u8],
        ports: &mut dyn RelayPorts,
    ) -> ClientOutput {
        match demux(packet) {
            Kind::ChannelData => self.client_channel_data(now, tuple, packet),
            Kind::Stun => match Message::decode(packet) {
                Ok(msg) => self.client_stun(now, tuple, msg, out, ports),
                Err(_) => {
                    self.stats.malformed += 1;
                    ClientOutput::None
                }
            },
            Kind::Other => {
                self.stats.malformed += 1;
                ClientOutput::None
            }
        }
    }

    fn client_channel_data(&mut self, now: Now, tuple: FiveTuple, packet: &[u8]) -> ClientOutput {
        let Ok(cd) = ChannelData::decode(packet) else {
            self.stats.malformed += 1;
            return ClientOutput::None;
        };
        let Some(&id) = self.by_tuple.get(&tuple) else {
            return ClientOutput::None;
        };
        let rate = self.cfg.quotas.bytes_per_sec;
        let Some(a) = self.alloc_mut(id) else {
            return ClientOutput::None;
        };
        let Some(ch) = a.channel_by_number(cd.number, now.mono) else {
            return ClientOutput::None;
        };
        let peer = ch.peer;
        if !a.has_permission(peer.ip(), now.mono) {
            self.stats.dropped_no_permission += 1;
            return ClientOutput::None;
        }
        // A channel's peer passed the family check at ChannelBind, so the socket of
        // its family exists.
        let Some(via) = a.relay_for(peer.ip()) else {
            return ClientOutput::None;
        };
        if !a.bucket.take(now.mono, rate, cd.data.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientOutput::None;
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += cd.data.len() as u64;
        let start = channel_data::HEADER_LEN;
        ClientOutput::Forward {
            allocation: via,
            peer,
            payload: start..start + cd.data.len(),
        }
    }

    fn client_stun(
        &mut self,
        now: Now,
        tuple: FiveTuple,
        msg: Message<'_>,
        out: &mut [u8],
        ports: &mut dyn RelayPorts,
    ) -> ClientOutput {
        let req = Request::parse(msg);
        if let Some(fp) = &req.fingerprint {
            if !integrity::verify_fingerprint(&req.msg, fp) {
                self.stats.malformed += 1;
                return ClientOutput::None;
            }
        }
        match (msg.class(), msg.method()) {
            (Class::Indication, method::SEND) => self.send_indication(now, tuple, &req),
            (Class::Request, method::BINDING) => self.binding(tuple, &req, out),
            (
                Class::Request,
                m @ (method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND),
            ) => self.authenticated(now, tuple, m, &req, out, ports),
            (Class::Request, _) => self.unauth_error(tuple, &req, out, 400, &[]),
            _ => ClientOutput::None,
        }
    }

    /// Binding: XOR-MAPPED-ADDRESS, plus FINGERPRINT and SOFTWARE only if the
    /// answer stays within [`amplification_budget`] of the request.
    fn binding(&mut self, tuple: FiveTuple, req: &Request<'_>, out: &mut [u8]) -> ClientOutput {
        let reply = self.binding_reply(tuple, req, out);
        // RESPONSE-PORT is for UDP only (RFC 5780 section 7.5); a stream's answer
        // goes back on the stream.
        let response_port = req.response_port.filter(|_| !tuple.is_stream());
        match (reply, response_port) {
            // RESPONSE-PORT: the answer (success or error) goes to the client's IP at
            // that port; the amplification budget is the same.
            (ClientOutput::Reply { len }, Some(port)) if port != 0 => ClientOutput::ReplyTo {
                len,
                to: SocketAddr::new(tuple.client.ip(), port),
            },
            (o, _) => o,
        }
    }

    fn binding_reply(
        &mut self,
        tuple: FiveTuple,
        req: &Request<'_>,
        out: &mut [u8],
    ) -> ClientOutput {
        self.stats.binding_requests += 1;
        if req.malformed {
            return self.unauth_error(tuple, req, out, 400, &[]);
        }
        if req.unknown_count > 0 {
            return self.unauth_error(tuple, req, out, 420, req.unknown());
        }
        let tid = *req.msg.transaction_id();
        let typ = message_type(method::BINDING, Class::SuccessResponse);
        let budget = amplification_budget(req.msg.as_bytes().len());
        let Ok(mut w) = MessageWriter::new(out, typ, &tid) else {
            return ClientOutput::None;
        };
        if w.xor_address(attr::XOR_MAPPED_ADDRESS, &tuple.client)
            .is_err()
        {
            return ClientOutput::None;
        }
        if let Some(sw) = &self.cfg.software {
            let l = w.len() + 4 + ((sw.len() + 3) & !3);
            if l + if req.fingerprint.is_some() { 8 } else { 0 } <= budget {
                let _ = w.attr(attr::SOFTWARE, sw.as_bytes());
            }
        }
        if req.fingerprint.is_some() && w.len() + 8 <= budget {
            let _ = w.fingerprint();
        }
        ClientOutput::Reply { len: w.finish() }
    }

    /// An error answer to a request that has not authenticated, within
    /// [`amplification_budget`] of the request (the reason phrase goes first, then
    /// the answer is not sent at all).
    fn unauth_error(
        &mut self,
        tuple: FiveTuple,
        req: &Request<'_>,
        out: &mut [u8],
        code: u16,
        unknown: &[u16],
    ) -> ClientOutput {
        // The budget is against reflection; a stream (its source proved by the
        // handshake) gets its answer whatever its size.
        let budget = if tuple.is_stream() {
            usize::MAX
        } else {
            amplification_budget(req.msg.as_bytes().len())
        };
        tracing::debug!(
            code,
            method = req.msg.method(),
            "error response before authentication"
        );
        for reason in [err_reason(code), ""] {
            let n = self.write_error(req, out, code, reason, unknown, None, None);
            if let Some(n) = n {
                if n <= budget {
                    self.stats.error_responses += 1;
                    return ClientOutput::Reply { len: n };
                }
            }
        }
        self.stats.amplification_dropped += 1;
        ClientOutput::None
    }

    #[allow(clippy::too_many_arguments)]
    fn write_error(
        &mut self,
        req: &Request<'_>,
        out: &mut [u8],
        code: u16,
        reason: &str,
        unknown: &[u16],
        auth: Option<&Auth>,
        challenge: Option<&[u8]>,
    ) -> Option<usize> {
        let tid = *req.msg.transaction_id();
        let typ = message_type(req.msg.method(), Class::ErrorResponse);
        let mut w = MessageWriter::new(out, typ, &tid).ok()?;
        w.error_code(code, reason).ok()?;
        if !unknown.is_empty() {
            w.unknown_attributes(unknown).ok()?;
        }
        self.finish_response(w, req, auth, challenge)
    }

    /// Add the realm/nonce challenge, integrity and fingerprint to a response.
    fn finish_response(
        &self,
        mut w: MessageWriter<'_>,
        req: &Request<'_>,
        auth: Option<&Auth>,
        challenge: Option<&[u8]>,
    ) -> Option<usize> {
        if let Some(nonce) = challenge {
            w.attr(attr::REALM, self.cfg.realm.as_bytes()).ok()?;
            w.attr(attr::NONCE, nonce).ok()?;
            w.attr_with(attr::PASSWORD_ALGORITHMS, 8, |v| {
                v.copy_from_slice(&[0, 2, 0, 0, 0, 1, 0, 0]);
            })
            .ok()?;
        }
        if let Some(a) = auth {
            if let Some(sw) = &self.cfg.software {
                w.attr(attr::SOFTWARE, sw.as_bytes()).ok()?;
            }
            if a.sha256_mi {
                w.integrity_sha256(a.key.as_slice()).ok()?;
            } else {
                w.integrity_sha1(a.key.as_slice()).ok()?;
            }
        }
        if req.fingerprint.is_some() {
            w.fingerprint().ok()?;
        }
        Some(w.finish())
    }

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS. These cannot be
    /// made as small as the request, so they are rate-limited per source instead.
    fn challenge(
        &mut self,
        now: Now,
        tuple: FiveTuple,
        req: &Request<'_>,
        out: &mut [u8],
        code: u16,
    ) -> ClientOutput {
        // The limit is against reflection, which a stream cannot carry (its handshake
        // proved the source); and a stream client never retransmits, so a dropped
        // challenge would leave it waiting for good.
        if !tuple.is_stream() && !self.limiter.allow(now.mono, tuple.client.ip()) {
            self.stats.unauthorized_rate_limited += 1;
            return ClientOutput::None;
        }
        self.stats.unauthorized += 1;
        let nonce = self.nonces.make(now.mono, tuple.client);
        match self.write_error(req, out, code, err_reason(code), &[], None, Some(&nonce)) {
            Some(len) => ClientOutput::Reply { len },
            None => ClientOutput::None,
        }
    }

    /// Long-term credential check of RFC 8489 section 9.2.4.
    fn authenticate(
        &mut self,
        now: Now,
        tuple: FiveTuple,
        req: &Request<'_>,
        out: &mut [u8],
    ) -> Result<Auth, ClientOutput> {
        let mi = match (req.integrity_sha256, req.integrity) {
            (Some(a), _) => a,
            (None, Some(a)) => a,
            (None, None) => return Err(self.challenge(now, tuple, req, out, 401)),
        };
        let (Some(nonce), Some(realm)) = (req.nonce, req.realm) else {
            return Err(self.unauth_error(tuple, req, out, 400, &[]));
        };
        if req.username.is_none() && req.userhash.is_none() {
            return Err(self.unauth_error(tuple, req, out, 400, &[]));
        }
        let mut nonce_check = self.nonces.check(nonce, now.mono, tuple.client);
        if !matches!(nonce_check, NonceCheck::Valid) {
            // A ConnectionBind comes on a new connection with the nonce its control
            // connection was given (RFC 6062 clients do so).
            if let Some(control) = self.tcp_bind_control_address(req) {
                nonce_check = self.nonces.check(nonce, now.mono, control);
            }
        }
        match nonce_check {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(self.challenge(now, tuple, req, out, 438)),
            NonceCheck::Invalid => return Err(self.challenge(now, tuple, req, out, 401)),
        }
        // Our nonces always carry the "password algorithms" feature bit.
        let alg = match (req.password_algorithms, req.password_algorithm) {
            (None, None) => algorithm::MD5,
            (Some(list), Some(alg)) => {
                let ours = [0u8, 2, 0, 0, 0, 1, 0, 0];
                let offered_ok = request::password_algorithms(list)
                    .map(|mut it| it.any(|a| a == alg))
                    .unwrap_or(false);
                if list != ours
                    || !offered_ok
                    || !(alg == algorithm::MD5 || alg == algorithm::SHA256)
                {
                    return Err(self.unauth_error(tuple, req, out, 400, &[]));
                }
                alg
            }
            _ => return Err(self.unauth_error(tuple, req, out, 400, &[])),
        };
        if realm != self.cfg.realm.as_bytes() {
            return Err(self.challenge(now, tuple, req, out, 401));
        }
        let username: Vec<u8> = match (req.username, req.userhash) {
            (Some(u), _) => u.to_vec(),
            (None, Some(h)) => match self.creds.username_for_hash(h) {
                Some(u) => u.to_vec(),
                None => {
                    self.stats.auth_failures += 1;
                    return Err(self.challenge(now, tuple, req, out, 401));
                }
            },
            (None, None) => return Err(self.unauth_error(tuple, req, out, 400, &[])),
        };
        let sha256_mi = req.integrity_sha256.is_some();
        let msg = req.msg;
        let (lookup, key) = self.creds.find_key(&username, alg, now.unix_secs, |k| {
            if sha256_mi {
                integrity::verify_sha256(&msg, &mi, k.as_slice())
            } else {
                integrity::verify_sha1(&msg, &mi, k.as_slice())
            }
        });
        match (lookup, key) {
            (Lookup::Found, Some(key)) => Ok(Auth {
                key,
                username,
                sha256_mi,
            }),
            _ => {
                self.stats.auth_failures += 1;
                Err(self.challenge(now, tuple, req, out, 401))
            }
        }
    }

    fn auth_error(
        &mut self,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
        code: u16,
        unknown: &[u16],
    ) -> ClientOutput {
        self.stats.error_responses += 1;
        tracing::debug!(code, method = req.msg.method(), "error response");
        match self.write_error(req, out, code, err_reason(code), unknown, Some(auth), None) {
            Some(len) => ClientOutput::Reply { len },
            None => ClientOutput::None,
        }
    }

    fn auth_success(
        &self,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
        fill: impl FnOnce(&mut MessageWriter<'_>) -> Option<()>,
    ) -> ClientOutput {
        let tid = *req.msg.transaction_id();
        let typ = message_type(req.msg.method(), Class::SuccessResponse);
        let Ok(mut w) = MessageWriter::new(out, typ, &tid) else {
            return ClientOutput::None;
        };
        if fill(&mut w).is_none() {
            return ClientOutput::None;
        }
        match self.finish_response(w, req, Some(auth), None) {
            Some(len) => ClientOutput::Reply { len },
            None => ClientOutput::None,
        }
    }

    fn authenticated(
        &mut self,
        now: Now,
        tuple: FiveTuple,
        m: u16,
        req: &Request<'_>,
        out: &mut [u8],
        ports: &mut dyn RelayPorts,
    ) -> ClientOutput {
        if req.malformed {
            return self.unauth_error(tuple, req, out, 400, &[]);
        }
        let auth = match self.authenticate(now, tuple, req, out) {
            Ok(a) => a,
            Err(o) => return o,
        };
        if req.unknown_count > 0 {
            return self.auth_error(req, out, &auth, 420, req.unknown());
        }
        if m == method::ALLOCATE {
            return self.allocate(now, tuple, req, out, &auth, ports);
        }
        if m == method::CONNECTION_BIND {
            return self.connection_bind(tuple, req, out, &auth);
        }
        let Some(&id) = self.by_tuple.get(&tuple) else {
            return self.auth_error(req, out, &auth, 437, &[]);
        };
        if self
            .alloc(id)
            .is_some_and(|a| *a.username != *auth.username)
        {
            return self.auth_error(req, out, &auth, 441, &[]);
        }
        match m {
            method::REFRESH => self.refresh(now, id, req, out, &auth, ports),
            method::CREATE_PERMISSION => self.create_permission(now, id, req, out, &auth),
            method::CONNECT => self.connect(now, id, req, out, &auth),
            // A TCP allocation relays no datagrams (RFC 6062 section 5).
            _ if self.tcp.is_tcp(id) => self.auth_error(req, out, &auth, 400, &[]),
            _ => self.channel_bind(now, id, req, out, &auth),
        }
    }

    fn lifetime(&self, requested: Option<u32>) -> u32 {
        match requested {
            Some(r) => r.min(self.cfg.max_lifetime).max(self.cfg.default_lifetime),
            None => self.cfg.default_lifetime,
        }
    }

    fn allocate(
        &mut self,
        now: Now,
        tuple: FiveTuple,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
        ports: &mut dyn RelayPorts,
    ) -> ClientOutput {
        if let Some(&id) = self.by_tuple.get(&tuple) {
            let Some(a) = self.alloc(id) else {
                return ClientOutput::None;
            };
            if a.allocate_tid == *req.msg.transaction_id() && *a.username == *auth.username {
                // A retransmission of the Allocate that created it.
                let grant = Grant {
                    first: a.advertised,
                    second: a.additional.map(|r| r.advertised),
                    address_error: a.address_error,
                    token: a.reservation_token,
                    lifetime: a.expires.saturating_duration_since(now.mono).as_secs() as u32,
                };
                return self.auth_success(req, out, auth, |w| grant.write(w, &tuple.client));
            }
            return self.auth_error(req, out, auth, 437, &[]);
        }
        if !self.accepting {
            return self.auth_error(req, out, auth, 508, &[]);
        }
        let tcp = match req.requested_transport {
            None => return self.auth_error(req, out, auth, 400, &[]),
            Some(PROTO_UDP) => false,
            // RFC 6062: only from a client on a TCP or TLS connection, and without
            // the UDP-only port pairing.
            Some(PROTO_TCP) if tuple.is_stream() => {
                if req.even_port.is_some() || req.reservation_token.is_some() {
                    return self.auth_error(req, out, auth, 400, &[]);
                }
                true
            }
            Some(_) => return self.auth_error(req, out, auth, 442, &[]),
        };
        // RFC 8656 section 7.2: a token names a port already chosen, so no other
        // port or family request may come with it; REQUESTED- and
        // ADDITIONAL-ADDRESS-FAMILY exclude each other; the additional family can
        // only be IPv6 (IPv4 is the default one).
        if req.reservation_token.is_some()
            && (req.even_port.is_some()
                || req.requested_family.is_some()
                || req.additional_family.is_some())
        {
            return self.auth_error(req, out, auth, 400, &[]);
        }
        if req.requested_family.is_some() && req.additional_family.is_some() {
            return self.auth_error(req, out, auth, 400, &[]);
        }
        let second = match req.additional_family {
            None => None,
            // A TCP allocation (RFC 6062) has one relayed address.
            Some(_) if tcp => return self.auth_error(req, out, auth, 400, &[]),
            Some(FAMILY_IPV6) => Some(Family::V6),
            Some(_) => return self.auth_error(req, out, auth, 400, &[]),
        };
        let first = match req.requested_family {
            None | Some(FAMILY_IPV4) => Family::V4,
            Some(FAMILY_IPV6) => Family::V6,
            Some(_) => return self.auth_error(req, out, auth, 440, &[]),
        };
        let quota_user: Box<[u8]> = auth::quota_user(&auth.username).into();
        let q = &self.cfg.quotas;
        if let Err(code) =
            self.quota
                .acquire(&quota_user, q.allocations_per_user, q.total_allocations)
        {
            self.stats.quota_refused += 1;
            return self.auth_error(req, out, auth, code, &[]);
        }
        let port_req = if let Some(tok) = req.reservation_token {
            let local = self.reservations.remove(&tok).map(|(addr, _)| addr);
            match local.or_else(|| ports.claim_reservation(&tok)) {
                Some(addr) => PortRequest::Reserved(addr),
                None => {
                    self.quota.release(&quota_user);
                    return self.auth_error(req, out, auth, 508, &[]);
                }
            }
        } else if let Some(r) = req.even_port {
            PortRequest::Even { reserve_next: r }
        } else {
            PortRequest::Any
        };
        // Open the relayed socket of each family asked for, each under its own id.
        // The port request (EVEN-PORT, a reservation) goes to the first socket
        // opened; a dual allocation's other socket is any port. One family failing
        // in a dual allocation leaves the other, with ADDRESS-ERROR-CODE saying why.
        let mut opened: [Option<(AllocationId, OpenedPort)>; 2] = [None, None];
        let mut failed: Option<(Family, PortError)> = None;
        for family in [Some(first), second].into_iter().flatten() {
            let id = self.take_slot();
            let request = match opened[0] {
                None => port_req,
                Some(_) => PortRequest::Any,
            };
            let r = if tcp {
                ports.open_tcp(id, family)
            } else {
                ports.open(id, family, request, req.dont_fragment)
            };
            match r {
                Ok(o) => {
                    let i = usize::from(opened[0].is_some());
                    opened[i] = Some((id, o));
                }
                Err(e) => {
                    self.free_slot(id);
                    failed = Some((family, e));
                }
            }
        }
        let (id, first_port) = match (opened[0], failed) {
            (Some(o), _) => o,
            (None, e) => {
                self.quota.release(&quota_user);
                return match e.map(|(_, e)| e) {
                    Some(PortError::DontFragment) => {
                        self.auth_error(req, out, auth, 420, &[attr::DONT_FRAGMENT])
                    }
                    Some(PortError::Exhausted) => self.auth_error(req, out, auth, 508, &[]),
                    Some(PortError::Transport) => self.auth_error(req, out, auth, 442, &[]),
                    Some(PortError::Family) | None => self.auth_error(req, out, auth, 440, &[]),
                };
            }
        };
        let address_error = failed.map(|(family, e)| {
            let code = match e {
                PortError::Family | PortError::DontFragment => 440,
                PortError::Exhausted => 508,
                PortError::Transport => 442,
            };
            (family, code)
        });
        let token = first_port.reserved.map(|addr| {
            let mut t = [0u8; 8];
            self.rng.fill_bytes(&mut t);
            let exp = now.mono + RESERVATION_LIFETIME;
            self.reservations.insert(t, (addr, exp));
            ports.share_reservation(t, addr);
            self.timers.push(Reverse((exp, Timer::Reservation(t))));
            t
        });
        let lifetime = self.lifetime(req.lifetime);
        let advertised = self.advertise(first_port.addr);
        let additional = opened[1].map(|(sid, o)| AdditionalRelay {
            id: sid,
            relayed: o.addr,
            advertised: self.advertise(o.addr),
        });
        let a = Allocation {
            id,
            tuple,
            relayed: first_port.addr,
            advertised,
            additional,
            address_error,
            username: auth.username.clone().into(),
            quota_user: quota_user.clone(),
            key: auth.key,
            expires: now.mono + Duration::from_secs(u64::from(lifetime)),
            allocate_tid: *req.msg.transaction_id(),
            reservation_token: token,
            lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            scheduled: None,
            bucket: Bucket::full(self.cfg.quotas.bytes_per_sec),
        };
        self.slots[id.index as usize].allocation = Some(a);
        if let Some(r) = additional {
            self.slots[r.id.index as usize].alias = Some(id);
        }
        self.by_tuple.insert(tuple, id);
        self.live += 1;
        self.stats.allocations_created += 1;
        if tcp {
            self.tcp_allocation_created(id);
        }
        self.schedule(id);
        let grant = Grant {
            first: advertised,
            second: additional.map(|r| r.advertised),
            address_error,
            token,
            lifetime,
        };
        self.auth_success(req, out, auth, |w| grant.write(w, &tuple.client))
    }

    /// The address told to the client for a relayed socket bound to `addr`: the
    /// external IP when one of the same family is configured.
    fn advertise(&self, addr: SocketAddr) -> SocketAddr {
        match self.cfg.external_ip {
            Some(ip) if ip.is_ipv4() == addr.is_ipv4() => SocketAddr::new(ip, addr.port()),
            _ => addr,
        }
    }

    fn refresh(
        &mut self,
        now: Now,
        id: AllocationId,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
        ports: &mut dyn RelayPorts,
    ) -> ClientOutput {
        // RFC 8656 section 8.2: a REQUESTED-ADDRESS-FAMILY the allocation has no
        // relayed address of is a mismatch. A Refresh covers the whole allocation
        // (both addresses of a dual one).
        if let Some(f) = req.requested_family {
            let ip: Option<IpAddr> = match f {
                FAMILY_IPV4 => Some(std::net::Ipv4Addr::UNSPECIFIED.into()),
                FAMILY_IPV6 => Some(std::net::Ipv6Addr::UNSPECIFIED.into()),
                _ => None,
            };
            let has =
                ip.is_some_and(|ip| self.alloc(id).is_some_and(|a| a.relay_for(ip).is_some()));
            if !has {
                return self.auth_error(req, out, auth, 443, &[]);
            }
        }
        if req.lifetime == Some(0) {
            self.stats.allocations_deleted += 1;
            self.remove(id, ports);
            return self.auth_success(req, out, auth, |w| w.u32_attr(attr::LIFETIME, 0).ok());
        }
        let lifetime = self.lifetime(req.lifetime);
        if let Some(a) = self.alloc_mut(id) {
            a.expires = now.mono + Duration::from_secs(u64::from(lifetime));
            a.lifetime = lifetime;
        }
        self.schedule(id);
        self.auth_success(req, out, auth, |w| {
            w.u32_attr(attr::LIFETIME, lifetime).ok()
        })
    }

    /// Normalise a peer address and check it against the policy and the allocation's
    /// family. Returns the address to use, or the error code.
    fn check_peer(&mut self, id: AllocationId, peer: SocketAddr) -> Result<SocketAddr, u16> {
        let peer = SocketAddr::new(policy::normalize(peer.ip()), peer.port());
        if !self.cfg.policy.permits(peer) {
            self.stats.peer_refused += 1;
            return Err(403);
        }
        let Some(a) = self.alloc(id) else {
            return Err(437);
        };
        if a.relay_for(peer.ip()).is_none() {
            return Err(443);
        }
        Ok(peer)
    }

    fn create_permission(
        &mut self,
        now: Now,
        id: AllocationId,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
    ) -> ClientOutput {
        if req.peer_count == 0 {
            return self.auth_error(req, out, auth, 400, &[]);
        }
        let mut ips = [None; request::MAX_PEERS];
        for (slot, p) in ips.iter_mut().zip(req.peers()) {
            match self.check_peer(id, p) {
                Ok(p) => *slot = Some(p.ip()),
                Err(code) => return self.auth_error(req, out, auth, code, &[]),
            }
        }
        let limit = self.cfg.quotas.permissions_per_allocation as usize;
        let until = now.mono + self.cfg.permission_lifetime;
        let Some(a) = self.alloc_mut(id) else {
            return ClientOutput::None;
        };
        a.sweep(now.mono);
        let mut new = 0;
        for (i, ip) in ips.iter().flatten().enumerate() {
            let dup = ips[..i].iter().flatten().any(|x| x == ip);
            if !dup && !a.permissions.iter().any(|p| p.ip == *ip) {
                new += 1;
            }
        }
        if a.permissions.len() + new > limit {
            self.stats.quota_refused += 1;
            return self.auth_error(req, out, auth, 508, &[]);
        }
        for ip in ips.iter().flatten() {
            a.permit(*ip, until);
        }
        self.schedule(id);
        self.auth_success(req, out, auth, |_| Some(()))
    }

    fn channel_bind(
        &mut self,
        now: Now,
        id: AllocationId,
        req: &Request<'_>,
        out: &mut [u8],
        auth: &Auth,
    ) -> ClientOutput {
        let (Some(number), Some(peer)) = (req.channel_number, req.peers().next()) else {
            return self.auth_error(req, out, auth, 400, &[]);
        };
        let valid = if self.cfg.strict_channel_numbers {
            channel_data::is_valid_number(number)
        } else {
            channel_data::is_legacy_number(number)
        };
        if !valid || req.peer_count != 1 {
            return self.auth_error(req, out, auth, 400, &[]);
        }
        let peer = match self.check_peer(id, peer) {
            Ok(p) => p,
            Err(code) => return self.auth_error(req, out, auth, code, &[]),
        };
        let ch_limit = self.cfg.quotas.channels_per_allocation as usize;
        let perm_limit = self.cfg.quotas.permissions_per_allocation as usize;
        let ch_until = now.mono + self.cfg.channel_lifetime;
        let perm_until = now.mono + self.cfg.permission_lifetime;
        let Some(a) = self.alloc_mut(id) else {
            return ClientOutput::None;
        };
        a.sweep(now.mono);
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        let code = match (by_number, by_peer) {
            // Refresh of the same binding.
            (Some(i), Some(j)) if i == j => {
                a.channels[i].expires = ch_until;
                0
            }
            // The number is bound to another peer, or the peer to another number.
            (Some(_), _) | (_, Some(_)) => 400,
            (None, None) => {
                let new_perm = !a.permissions.iter().any(|p| p.ip == peer.ip());
                if a.channels.len() >= ch_limit || (new_perm && a.permissions.len() >= perm_limit) {
                    508
                } else {
                    allocation::push_small(
                        &mut a.channels,
                        ChannelBinding {
                            number,
                            peer,
                            expires: ch_until,
                        },
                    );
                    0
                }
            }
        };
        if code != 0 {
            if code == 508 {
                self.stats.quota_refused += 1;
            }
            return self.auth_error(req, out, auth, code, &[]);
        }
        a.permit(peer.ip(), perm_until);
        self.schedule(id);
        self.auth_success(req, out, auth, |_| Some(()))
    }

    fn send_indication(&mut self, now: Now, tuple: FiveTuple, req: &Request<'_>) -> ClientOutput {
        let Some(&id) = self.by_tuple.get(&tuple) else {
            return ClientOutput::None;
        };
        if self.tcp.is_tcp(id) {
            return ClientOutput::None;
        }
        let (Some(peer), Some(data)) = (req.peers().next(), req.data.clone()) else {
            return ClientOutput::None;
        };
        let peer = SocketAddr::new(policy::normalize(peer.ip()), peer.port());
        if self.cfg.policy.own.contains(&peer) || !self.cfg.policy.permits(peer) {
            self.stats.peer_refused += 1;
            return ClientOutput::None;
        }
        let rate = self.cfg.quotas.bytes_per_sec;
        let Some(a) = self.alloc_mut(id) else {
            return ClientOutput::None;
        };
        // No relayed address of the peer's family: an indication gets no 443, it is
        // dropped (RFC 8656 section 11.2).
        let Some(via) = a.relay_for(peer.ip()) else {
            self.stats.peer_refused += 1;
            return ClientOutput::None;
        };
        if !a.has_permission(peer.ip(), now.mono) {
            self.stats.dropped_no_permission += 1;
            return ClientOutput::None;
        }
        if !a.bucket.take(now.mono, rate, data.len()) {
            self.stats.dropped_bandwidth += 1;
            return ClientOutput::None;
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += data.len() as u64;
        ClientOutput::Forward {
            allocation: via,
            peer,
            payload: data,
        }
    }

    // ------------------------------------------------------------------
    // Peer side.

    /// Handle a datagram that arrived from `peer` on the relayed socket of
    /// `allocation`. The payload is `buf[payload]`; `payload.start` must leave
    /// [`PEER_HEADROOM`] bytes in front and `buf` [`PEER_TAILROOM`] bytes after it.
    pub fn handle_peer(
        &mut self,
        now: Now,
        allocation: AllocationId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerOutput {
        let rate = self.cfg.quotas.bytes_per_sec;
        let Some(a) = self.alloc_mut(allocation) else {
            return PeerOutput::None;
        };
        let peer = SocketAddr::new(policy::normalize(peer.ip()), peer.port());
        let len = payload.len();
        if payload.end > buf.len() || len > usize::from(u16::MAX) - 64 {
            return PeerOutput::None;
        }
        if !a.has_permission(peer.ip(), now.mono) {
            self.stats.dropped_no_permission += 1;
            return PeerOutput::None;
        }
        if !a.bucket.take(now.mono, rate, len) {
            self.stats.dropped_bandwidth += 1;
            return PeerOutput::None;
        }
        let (local, client, transport) = (a.tuple.local, a.tuple.client, a.tuple.transport);
        let range = if let Some(ch) = a.channel_by_peer(peer, now.mono) {
            let Some(start) = payload.start.checked_sub(channel_data::HEADER_LEN) else {
                return PeerOutput::None;
            };
            let number = ch.number;
            let Some(h) = buf
                .get_mut(start..payload.start)
                .and_then(|h| h.try_into().ok())
            else {
                return PeerOutput::None;
            };
            ChannelData::write_header(h, number, len as u16);
            if transport == Transport::Udp {
                start..payload.end
            } else {
                // On a stream ChannelData is padded to a multiple of 4 (RFC 8656
                // section 12.5), in the tailroom.
                let pad = crate::stun::framing::stream_padding(len);
                let Some(tail) = buf.get_mut(payload.end..payload.end + pad) else {
                    return PeerOutput::None;
                };
                tail.fill(0);
                start..payload.end + pad
            }
        } else {
            // Data indication: header, XOR-PEER-ADDRESS, DATA header, then padding. Only
            // this path needs a transaction id (a ChannelData header has none).
            let tid = self.next_tid();
            let addr_len = crate::stun::address::encoded_len(&peer);
            let prefix = HEADER_LEN + 4 + addr_len + 4;
            let padded_end = payload.start + ((len + 3) & !3);
            let Some(start) = payload.start.checked_sub(prefix) else {
                return PeerOutput::None;
            };
            let Some(region) = buf.get_mut(start..padded_end) else {
                return PeerOutput::None;
            };
            let typ = message_type(method::DATA, Class::Indication);
            let Ok(mut w) = MessageWriter::new(region, typ, &tid) else {
                return PeerOutput::None;
            };
            if w.xor_address(attr::XOR_PEER_ADDRESS, &peer).is_err()
                || w.attr_in_place(attr::DATA, len).is_err()
            {
                return PeerOutput::None;
            }
            let n = w.finish();
            start..start + n
        };
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += len as u64;
        PeerOutput::ToClient {
            local,
            client,
            transport,
            range,
        }
    }

    fn next_tid(&mut self) -> TransactionId {
        let mut t = [0u8; 12];
        self.rng.fill(&mut t);
        t
    }
}
