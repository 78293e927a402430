//! Relayed UDP sockets for the driver: the port range, EVEN-PORT pairs and
//! reservations.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::turn::{AllocationId, Family, OpenedPort, PortError, PortRequest, RelayPorts};

/// Most bind attempts for one allocation before answering 508.
const MAX_ATTEMPTS: usize = 512;

/// Whether relayed sockets can send with the DF bit set (DONT-FRAGMENT, RFC 8656
/// section 18.8). Where they cannot, DONT-FRAGMENT is answered as an unknown
/// comprehension-required attribute (420), as section 7.2 says.
const DONT_FRAGMENT_SUPPORTED: bool = cfg!(target_os = "linux");

/// Sets the DF bit on every datagram sent from `sock`: path MTU discovery "do"
/// (`IP_MTU_DISCOVER` / `IPV6_MTU_DISCOVER`), through rustix's safe wrapper. The
/// kernel then refuses to fragment, and a datagram larger than the path MTU fails
/// with EMSGSIZE instead of leaving in fragments.
#[cfg(target_os = "linux")]
fn set_dont_fragment(sock: &StdUdpSocket, family: Family) -> std::io::Result<()> {
    use rustix::net::sockopt;
    match family {
        Family::V4 => sockopt::set_ip_mtu_discover(sock, sockopt::Ipv4PathMtuDiscovery::DO)?,
        Family::V6 => sockopt::set_ipv6_mtu_discover(sock, sockopt::Ipv6PathMtuDiscovery::DO)?,
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_dont_fragment(_sock: &StdUdpSocket, _family: Family) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// EVEN-PORT reservations of every worker: the held sockets and their tokens. Locked
/// only by Allocate with EVEN-PORT or RESERVATION-TOKEN and by reservation expiry,
/// never on the relay path.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    sockets: HashMap<SocketAddr, StdUdpSocket>,
    tokens: HashMap<[u8; 8], SocketAddr>,
}

impl Reservations {
    fn take(&mut self, addr: &SocketAddr) -> Option<StdUdpSocket> {
        self.tokens.retain(|_, a| a != addr);
        self.sockets.remove(addr)
    }
}

pub(crate) type SharedReservations = Arc<Mutex<Reservations>>;

fn lock(r: &SharedReservations) -> std::sync::MutexGuard<'_, Reservations> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct RelayTable {
    ips: Vec<IpAddr>,
    min: u16,
    max: u16,
    /// Relayed address of every open allocation.
    open: HashMap<AllocationId, SocketAddr>,
    reserved: SharedReservations,
    used: HashSet<SocketAddr>,
    /// Sockets opened during core calls, for the worker to add to its datapath.
    pending: Vec<(AllocationId, StdUdpSocket)>,
    /// Allocations closed during core calls whose sockets the datapath holds.
    closed: Vec<AllocationId>,
}

impl RelayTable {
    pub(crate) fn new(ips: Vec<IpAddr>, min: u16, max: u16, reserved: SharedReservations) -> Self {
        RelayTable {
            ips,
            min,
            max,
            open: HashMap::new(),
            reserved,
            used: HashSet::new(),
            pending: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// A socket opened but not yet taken by the worker.
    #[cfg(test)]
    pub(crate) fn socket(&self, id: AllocationId) -> Option<&StdUdpSocket> {
        self.pending.iter().find(|(p, _)| *p == id).map(|(_, s)| s)
    }

    /// Whether sockets were opened or closed since the last [`RelayTable::take_changes`].
    pub(crate) fn changed(&self) -> bool {
        !self.pending.is_empty() || !self.closed.is_empty()
    }

    /// Sockets opened and allocations closed since the last call.
    pub(crate) fn take_changes(
        &mut self,
        opened: &mut Vec<(AllocationId, StdUdpSocket)>,
        closed: &mut Vec<AllocationId>,
    ) {
        opened.append(&mut self.pending);
        closed.append(&mut self.closed);
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn close_all(&mut self) {
        for (id, _) in self.open.drain() {
            self.closed.push(id);
        }
        self.pending.clear();
        let mut r = lock(&self.reserved);
        for addr in &self.used {
            r.take(addr);
        }
        drop(r);
        self.used.clear();
    }

    fn bind(&self, addr: SocketAddr) -> Option<StdUdpSocket> {
        if self.used.contains(&addr) {
            return None;
        }
        let s = StdUdpSocket::bind(addr).ok()?;
        s.set_nonblocking(true).ok()?;
        super::enlarge_buffers(&socket2::SockRef::from(&s), super::RELAY_SOCKET_BUFFER);
        Some(s)
    }

    fn find(
        &mut self,
        ip: IpAddr,
        even: bool,
        reserve_next: bool,
    ) -> Option<(StdUdpSocket, Option<(SocketAddr, StdUdpSocket)>)> {
        let span = u32::from(self.max) - u32::from(self.min) + 1;
        let start = rand::rng().random_range(0..span);
        for i in 0..span.min(MAX_ATTEMPTS as u32 * 2) {
            let port = u32::from(self.min) + (start + i) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if even && port % 2 != 0 {
                continue;
            }
            let Some(s) = self.bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            if !reserve_next {
                return Some((s, None));
            }
            if port >= self.max {
                continue;
            }
            let next = SocketAddr::new(ip, port + 1);
            if let Some(r) = self.bind(next) {
                return Some((s, Some((next, r))));
            }
        }
        None
    }
}

impl RelayPorts for RelayTable {
    fn open(
        &mut self,
        id: AllocationId,
        family: Family,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<OpenedPort, PortError> {
        if dont_fragment && !DONT_FRAGMENT_SUPPORTED {
            return Err(PortError::DontFragment);
        }
        let ip = *self
            .ips
            .iter()
            .find(|ip| Family::of(**ip) == family)
            .ok_or(PortError::Family)?;
        let (std_sock, reserved) = match request {
            PortRequest::Reserved(addr) => (
                lock(&self.reserved)
                    .take(&addr)
                    .ok_or(PortError::Exhausted)?,
                None,
            ),
            PortRequest::Any => self.find(ip, false, false).ok_or(PortError::Exhausted)?,
            PortRequest::Even { reserve_next } => self
                .find(ip, true, reserve_next)
                .ok_or(PortError::Exhausted)?,
        };
        if dont_fragment {
            // The socket is dropped (closed) on failure; the client gets 420 as from a
            // server without DF support (RFC 8656 section 7.2).
            set_dont_fragment(&std_sock, family).map_err(|_| PortError::DontFragment)?;
        }
        let addr = std_sock.local_addr().map_err(|_| PortError::Exhausted)?;
        self.used.insert(addr);
        self.open.insert(id, addr);
        self.pending.push((id, std_sock));
        let reserved_addr = reserved.map(|(a, s)| {
            self.used.insert(a);
            lock(&self.reserved).sockets.insert(a, s);
            a
        });
        Ok(OpenedPort {
            addr,
            reserved: reserved_addr,
        })
    }

    fn close(&mut self, id: AllocationId) {
        if let Some(addr) = self.open.remove(&id) {
            self.used.remove(&addr);
            let before = self.pending.len();
            self.pending.retain(|(p, _)| *p != id);
            if self.pending.len() == before {
                self.closed.push(id);
            }
        }
    }

    fn release_reservation(&mut self, addr: SocketAddr) {
        lock(&self.reserved).take(&addr);
        self.used.remove(&addr);
    }

    fn share_reservation(&mut self, token: [u8; 8], addr: SocketAddr) {
        lock(&self.reserved).tokens.insert(token, addr);
    }

    fn claim_reservation(&mut self, token: &[u8; 8]) -> Option<SocketAddr> {
        lock(&self.reserved).tokens.remove(token)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rustix::net::sockopt;

    fn id() -> AllocationId {
        AllocationId {
            index: 0,
            generation: 0,
        }
    }

    #[test]
    fn relayed_sockets_get_a_larger_receive_buffer() {
        let mut table = RelayTable::new(
            vec!["127.0.0.1".parse().unwrap()],
            40000,
            60000,
            SharedReservations::default(),
        );
        table
            .open(id(), Family::V4, PortRequest::Any, false)
            .expect("open");
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
        let sock = table.socket(id()).expect("socket");
        let granted = socket2::SockRef::from(sock).recv_buffer_size().unwrap();
        // Linux grants twice what is asked, capped at net.core.rmem_max, so any cap
        // gives more than the default (rmem_default); where the cap allows 1 MiB, the
        // socket has at least that.
        assert!(granted > default, "granted {granted}, default {default}");
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if max >= super::super::RELAY_SOCKET_BUFFER {
            assert!(
                granted >= super::super::RELAY_SOCKET_BUFFER,
                "granted {granted}"
            );
        }
    }

    #[test]
    fn dont_fragment_sets_path_mtu_discovery_do() {
        let mut table = RelayTable::new(
            vec!["127.0.0.1".parse().unwrap()],
            40000,
            60000,
            SharedReservations::default(),
        );
        let opened = table
            .open(id(), Family::V4, PortRequest::Any, true)
            .expect("open with DF");
        let sock = table.socket(id()).expect("socket");
        assert_eq!(sock.local_addr().unwrap(), opened.addr);
        assert_eq!(
            sockopt::ip_mtu_discover(sock).unwrap(),
            sockopt::Ipv4PathMtuDiscovery::DO
        );
        // Without DONT-FRAGMENT the kernel default stays (not "do").
        let other = AllocationId {
            index: 1,
            generation: 0,
        };
        table
            .open(other, Family::V4, PortRequest::Any, false)
            .unwrap();
        let sock = table.socket(other).unwrap();
        assert_ne!(
            sockopt::ip_mtu_discover(sock).unwrap(),
            sockopt::Ipv4PathMtuDiscovery::DO
        );
    }
}
