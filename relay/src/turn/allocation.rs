//! Allocation state: permissions, channel bindings, the bandwidth bucket.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::stun::TransactionId;

use super::auth::Key;

/// Identifies an allocation (and its relayed socket) to the driver. The generation
/// makes a stale id from a closed allocation harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AllocationId {
    pub index: u32,
    pub generation: u32,
}

/// Hashed as one 64-bit word (the derived `Hash` makes two 32-bit writes): drivers key
/// per-packet maps by it.
impl Hash for AllocationId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.generation) << 32 | u64::from(self.index));
    }
}

/// How a client reaches the relay (RFC 8656 section 3.1): UDP datagrams, or a TCP or
/// TLS connection. The relayed side is UDP either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Udp,
    /// A TCP or TLS connection, named by an id the driver gives it (never reused in
    /// the process's life, so an allocation of a closed connection cannot be reached
    /// by a new connection from the same address and port).
    Stream(u64),
}

/// The 5-tuple of a client: the transport (and, on a stream, which connection), the
/// relay's address and the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiveTuple {
    /// The relay's listening address the client talks to.
    pub local: SocketAddr,
    /// The client's address as seen by the relay.
    pub client: SocketAddr,
    pub transport: Transport,
}

impl FiveTuple {
    /// A client over UDP.
    pub fn udp(local: SocketAddr, client: SocketAddr) -> Self {
        FiveTuple {
            local,
            client,
            transport: Transport::Udp,
        }
    }

    /// Whether the client is on a TCP or TLS connection.
    pub fn is_stream(&self) -> bool {
        matches!(self.transport, Transport::Stream(_))
    }
}

/// Hashed for the allocation look-up of every ChannelData packet: an IPv4 address and
/// port go in as one 64-bit word (the derived `Hash` makes three narrow writes per
/// address). Each address is written whole and apart, so two tuples can only collide
/// through the keyed hasher, never by construction; equal tuples hash alike (the IPv6
/// flow label and scope, which `Eq` also compares, are left out).
impl Hash for FiveTuple {
    fn hash<H: Hasher>(&self, state: &mut H) {
        fn addr<H: Hasher>(a: &SocketAddr, state: &mut H) {
            match a {
                SocketAddr::V4(a) => {
                    state.write_u64(u64::from(a.ip().to_bits()) << 16 | u64::from(a.port()))
                }
                SocketAddr::V6(a) => {
                    state.write_u128(a.ip().to_bits());
                    state.write_u16(a.port());
                }
            }
        }
        addr(&self.local, state);
        addr(&self.client, state);
        // Nothing more for UDP (the per-packet case); a stream adds its id.
        if let Transport::Stream(id) = self.transport {
            state.write_u64(id);
        }
    }
}

/// A permission for one peer IP (RFC 8656 section 9).
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

/// A channel binding (RFC 8656 section 12).
#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// The second relayed address of a dual allocation (RFC 8656 section 7.2,
/// ADDITIONAL-ADDRESS-FAMILY): its own socket, named to the driver by its own id.
#[derive(Debug, Clone, Copy)]
pub struct AdditionalRelay {
    pub id: AllocationId,
    pub relayed: SocketAddr,
    pub advertised: SocketAddr,
}

/// One TURN allocation.
#[derive(Debug)]
pub struct Allocation {
    pub id: AllocationId,
    pub tuple: FiveTuple,
    /// The address the relayed socket is bound to.
    pub relayed: SocketAddr,
    /// The address told to the client (the external IP when configured).
    pub advertised: SocketAddr,
    /// A dual allocation's relayed address of the other family.
    pub additional: Option<AdditionalRelay>,
    /// The family a dual Allocate asked for and did not get, and why (the
    /// ADDRESS-ERROR-CODE of its answer, repeated to a retransmission).
    pub address_error: Option<(super::Family, u16)>,
    pub username: Box<[u8]>,
    pub quota_user: Box<[u8]>,
    pub key: Key,
    pub expires: Instant,
    /// Transaction id of the Allocate that created it, to answer retransmissions.
    pub allocate_tid: TransactionId,
    pub reservation_token: Option<[u8; 8]>,
    pub lifetime: u32,
    pub permissions: Vec<Permission>,
    pub channels: Vec<ChannelBinding>,
    /// The deadline of the timer entry currently queued for this allocation.
    pub scheduled: Option<Instant>,
    pub bucket: Bucket,
}

impl Allocation {
    /// The id of the relayed socket that reaches peers at `ip` (the one of its
    /// family), if the allocation has one.
    #[inline]
    pub fn relay_for(&self, ip: IpAddr) -> Option<AllocationId> {
        if self.relayed.is_ipv4() == ip.is_ipv4() {
            return Some(self.id);
        }
        self.additional
            .filter(|r| r.relayed.is_ipv4() == ip.is_ipv4())
            .map(|r| r.id)
    }

    pub fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    pub fn channel_by_number(&self, number: u16, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    pub fn channel_by_peer(&self, peer: SocketAddr, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Install or refresh a permission. The caller checked the quota.
    pub fn permit(&mut self, ip: IpAddr, until: Instant) {
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = p.expires.max(until),
            None => push_small(&mut self.permissions, Permission { ip, expires: until }),
        }
    }

    /// The earliest instant at which something in this allocation expires.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.expires;
        for p in &self.permissions {
            d = d.min(p.expires);
        }
        for c in &self.channels {
            d = d.min(c.expires);
        }
        d
    }

    /// Drop expired permissions and channels.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }
}

/// Push onto one of an allocation's short lists (permissions, channels), growing it
/// one entry at a time while it is short: most allocations hold one or two entries,
/// and `Vec`'s first growth to four would keep 100-200 bytes idle per allocation.
pub(crate) fn push_small<T>(v: &mut Vec<T>, x: T) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
    v.push(x);
}

/// Token bucket for the relayed bytes per second of one allocation (both directions).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: u64,
    last: Option<Instant>,
}

impl Bucket {
    pub fn full(rate: u64) -> Self {
        Bucket {
            tokens: rate,
            last: None,
        }
    }

    /// Take `bytes` tokens; `rate` 0 means unlimited. Burst is one second of rate.
    pub fn take(&mut self, now: Instant, rate: u64, bytes: usize) -> bool {
        if rate == 0 {
            return true;
        }
        if let Some(last) = self.last {
            let el = now.saturating_duration_since(last);
            let add =
                (el.as_micros().min(u128::from(u32::MAX)) as u64).saturating_mul(rate) / 1_000_000;
            if add > 0 || el > Duration::from_secs(1) {
                self.tokens = self.tokens.saturating_add(add).min(rate);
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
        let b = bytes as u64;
        if self.tokens >= b {
            self.tokens -= b;
            true
        } else {
            false
        }
    }
}
