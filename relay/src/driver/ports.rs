//! Relayed UDP sockets for the driver: the port range, EVEN-PORT pairs and
//! reservations.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::media::{MediaPorts, PortKey};
use crate::turn::{AllocationId, Family, OpenedPort, PortError, PortRequest, RelayPorts};

/// Who holds a relay port: a TURN allocation or a port of a media session. Both take
/// ports from the same range on the same relay addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Allocation(AllocationId),
    Media(PortKey),
}

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

/// How often at most the driver logs that the open file limit refused a socket.
const FD_LIMIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) struct RelayTable {
    ips: Vec<IpAddr>,
    /// Where the next allocation starts looking among `ips` (round robin, so several
    /// relay addresses share the load and each adds its port range).
    next_ip: usize,
    /// Allocations refused because the process ran out of file descriptors
    /// (EMFILE/ENFILE), and when that was last logged.
    fd_limit_refusals: u64,
    fd_limit_logged: Option<std::time::Instant>,
    min: u16,
    max: u16,
    /// Address of every open port, by owner.
    open: HashMap<Owner, SocketAddr>,
    reserved: SharedReservations,
    used: HashSet<SocketAddr>,
    /// Sockets opened during core calls, for the worker to add to its datapath.
    pending: Vec<(Owner, StdUdpSocket)>,
    /// Ports closed during core calls whose sockets the datapath holds.
    closed: Vec<Owner>,
    /// Relayed TCP listeners (RFC 6062) opened during core calls, for the glue.
    tcp_pending: Vec<(AllocationId, std::net::TcpListener)>,
    /// TCP allocations closed, whose listeners the glue serves.
    tcp_closed: Vec<AllocationId>,
    /// TCP allocations open.
    tcp_open: HashSet<AllocationId>,
}

/// TCP relayed addresses of the whole process. They are bound with SO_REUSEPORT (so a
/// Connect can leave from the same address), which would let two workers' tables bind
/// the same one: this set keeps them apart.
static TCP_PORTS: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);

fn tcp_ports() -> std::sync::MutexGuard<'static, Option<HashSet<SocketAddr>>> {
    TCP_PORTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A listening TCP socket on `addr` for a TCP allocation.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    #[cfg(unix)]
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    Ok(sock.into())
}

impl RelayTable {
    pub(crate) fn new(ips: Vec<IpAddr>, min: u16, max: u16, reserved: SharedReservations) -> Self {
        RelayTable {
            ips,
            next_ip: 0,
            fd_limit_refusals: 0,
            fd_limit_logged: None,
            min,
            max,
            open: HashMap::new(),
            reserved,
            used: HashSet::new(),
            pending: Vec::new(),
            closed: Vec::new(),
            tcp_pending: Vec::new(),
            tcp_closed: Vec::new(),
            tcp_open: HashSet::new(),
        }
    }

    /// Relayed TCP listeners opened since the last call.
    pub(crate) fn take_tcp_opened(&mut self) -> Vec<(AllocationId, std::net::TcpListener)> {
        std::mem::take(&mut self.tcp_pending)
    }

    /// TCP allocations closed since the last call.
    pub(crate) fn take_tcp_closed(&mut self) -> Vec<AllocationId> {
        std::mem::take(&mut self.tcp_closed)
    }

    /// A socket opened but not yet taken by the worker.
    #[cfg(test)]
    pub(crate) fn socket(&self, id: AllocationId) -> Option<&StdUdpSocket> {
        self.pending
            .iter()
            .find(|(p, _)| *p == Owner::Allocation(id))
            .map(|(_, s)| s)
    }

    /// A duplicate of the descriptor of `id`'s relayed socket while it is still
    /// pending (opened by a core call, not yet taken by the worker): a TURN stream
    /// connection sends its client's data from it.
    pub(crate) fn try_clone_pending(&self, id: AllocationId) -> Option<StdUdpSocket> {
        self.pending
            .iter()
            .find(|(p, _)| *p == Owner::Allocation(id))
            .and_then(|(_, s)| s.try_clone().ok())
    }

    /// Whether sockets were opened or closed since the last [`RelayTable::take_changes`].
    pub(crate) fn changed(&self) -> bool {
        !self.pending.is_empty() || !self.closed.is_empty()
    }

    /// Sockets opened and ports closed since the last call.
    pub(crate) fn take_changes(
        &mut self,
        opened: &mut Vec<(Owner, StdUdpSocket)>,
        closed: &mut Vec<Owner>,
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
        self.tcp_pending.clear();
        let mut r = lock(&self.reserved);
        for addr in &self.used {
            r.take(addr);
        }
        drop(r);
        self.used.clear();
    }

    /// Allocations refused so far because the open file limit was reached.
    pub(crate) fn fd_limit_refusals(&self) -> u64 {
        self.fd_limit_refusals
    }

    fn bind(&self, addr: SocketAddr) -> Result<StdUdpSocket, Bind> {
        if self.used.contains(&addr) {
            return Err(Bind::Taken);
        }
        let s = StdUdpSocket::bind(addr).map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => Bind::NoFiles,
            _ => Bind::Taken,
        })?;
        s.set_nonblocking(true).map_err(|_| Bind::Taken)?;
        super::enlarge_buffers(&socket2::SockRef::from(&s), super::RELAY_SOCKET_BUFFER);
        Ok(s)
    }

    /// A free port on `ip` (an even one, and the next one held, as asked).
    fn find(
        &mut self,
        ip: IpAddr,
        even: bool,
        reserve_next: bool,
    ) -> Result<(StdUdpSocket, Option<(SocketAddr, StdUdpSocket)>), Bind> {
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
            let s = match self.bind(SocketAddr::new(ip, port)) {
                Ok(s) => s,
                Err(Bind::NoFiles) => return Err(Bind::NoFiles),
                Err(Bind::Taken) => continue,
            };
            if !reserve_next {
                return Ok((s, None));
            }
            if port >= self.max {
                continue;
            }
            let next = SocketAddr::new(ip, port + 1);
            match self.bind(next) {
                Ok(r) => return Ok((s, Some((next, r)))),
                Err(Bind::NoFiles) => return Err(Bind::NoFiles),
                Err(Bind::Taken) => {}
            }
        }
        Err(Bind::Taken)
    }

    /// [`Self::find`] over the relay addresses of `family`, starting at the next one in
    /// turn; an address whose range is full passes the request on to the next.
    fn find_any(
        &mut self,
        family: Family,
        even: bool,
        reserve_next: bool,
    ) -> Result<(StdUdpSocket, Option<(SocketAddr, StdUdpSocket)>), PortError> {
        let n = self.ips.len();
        let mut any = false;
        for k in 0..n {
            let i = (self.next_ip + k) % n;
            let ip = self.ips[i];
            if Family::of(ip) != family {
                continue;
            }
            any = true;
            match self.find(ip, even, reserve_next) {
                Ok(found) => {
                    self.next_ip = (i + 1) % n;
                    return Ok(found);
                }
                Err(Bind::NoFiles) => {
                    self.fd_limit_hit();
                    return Err(PortError::Exhausted);
                }
                Err(Bind::Taken) => {}
            }
        }
        Err(if any {
            PortError::Exhausted
        } else {
            PortError::Family
        })
    }

    fn fd_limit_hit(&mut self) {
        self.fd_limit_refusals += 1;
        let now = std::time::Instant::now();
        if self
            .fd_limit_logged
            .is_none_or(|t| now.duration_since(t) >= FD_LIMIT_LOG_EVERY)
        {
            self.fd_limit_logged = Some(now);
            tracing::warn!(
                open = self.open.len(),
                refused = self.fd_limit_refusals,
                limit = ?super::nofile_limit(),
                "the open file limit (RLIMIT_NOFILE) caps allocations: Allocate answered 508; \
                 raise the hard limit (ulimit -Hn, systemd LimitNOFILE)"
            );
        }
    }
}

impl RelayTable {
    fn register(&mut self, owner: Owner, addr: SocketAddr, sock: StdUdpSocket) {
        self.used.insert(addr);
        self.open.insert(owner, addr);
        self.pending.push((owner, sock));
    }

    fn unregister(&mut self, owner: Owner) {
        if let Some(addr) = self.open.remove(&owner) {
            self.used.remove(&addr);
            let before = self.pending.len();
            self.pending.retain(|(p, _)| *p != owner);
            if self.pending.len() == before {
                self.closed.push(owner);
            }
        }
    }
}

impl MediaPorts for RelayTable {
    fn open_media(
        &mut self,
        first: PortKey,
        second: Option<PortKey>,
        family: Family,
    ) -> Result<(SocketAddr, Option<SocketAddr>), PortError> {
        if !self.ips.iter().any(|ip| Family::of(*ip) == family) {
            return Err(PortError::Family);
        }
        let (sock, next) = self.find_any(family, second.is_some(), second.is_some())?;
        let addr = sock.local_addr().map_err(|_| PortError::Exhausted)?;
        self.register(Owner::Media(first), addr, sock);
        let second_addr = match (second, next) {
            (Some(key), Some((a, s))) => {
                self.register(Owner::Media(key), a, s);
                Some(a)
            }
            _ => None,
        };
        Ok((addr, second_addr))
    }

    fn close_media(&mut self, key: PortKey) {
        self.unregister(Owner::Media(key));
    }
}

/// Why a port could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    /// In use (by us or another process), or refused for this address.
    Taken,
    /// The process (EMFILE) or the system (ENFILE) has no file descriptor left.
    NoFiles,
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
        if !self.ips.iter().any(|ip| Family::of(*ip) == family) {
            return Err(PortError::Family);
        }
        let (std_sock, reserved) = match request {
            PortRequest::Reserved(addr) => (
                lock(&self.reserved)
                    .take(&addr)
                    .ok_or(PortError::Exhausted)?,
                None,
            ),
            PortRequest::Any => self.find_any(family, false, false)?,
            PortRequest::Even { reserve_next } => self.find_any(family, true, reserve_next)?,
        };
        if dont_fragment {
            // The socket is dropped (closed) on failure; the client gets 420 as from a
            // server without DF support (RFC 8656 section 7.2).
            set_dont_fragment(&std_sock, family).map_err(|_| PortError::DontFragment)?;
        }
        let addr = std_sock.local_addr().map_err(|_| PortError::Exhausted)?;
        self.register(Owner::Allocation(id), addr, std_sock);
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

    fn open_tcp(&mut self, id: AllocationId, family: Family) -> Result<OpenedPort, PortError> {
        let n = self.ips.len();
        let mut any = false;
        let span = u32::from(self.max) - u32::from(self.min) + 1;
        for k in 0..n {
            let i = (self.next_ip + k) % n;
            let ip = self.ips[i];
            if Family::of(ip) != family {
                continue;
            }
            any = true;
            let start = rand::rng().random_range(0..span);
            for j in 0..span.min(MAX_ATTEMPTS as u32) {
                let Ok(port) = u16::try_from(u32::from(self.min) + (start + j) % span) else {
                    continue;
                };
                let addr = SocketAddr::new(ip, port);
                let mut all = tcp_ports();
                let set = all.get_or_insert_with(HashSet::new);
                if self.used.contains(&addr) || set.contains(&addr) {
                    continue;
                }
                match bind_tcp(addr) {
                    Ok(l) => {
                        set.insert(addr);
                        drop(all);
                        self.next_ip = (i + 1) % n;
                        self.used.insert(addr);
                        self.open.insert(Owner::Allocation(id), addr);
                        self.tcp_open.insert(id);
                        self.tcp_pending.push((id, l));
                        return Ok(OpenedPort {
                            addr,
                            reserved: None,
                        });
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        drop(all);
                        self.fd_limit_hit();
                        return Err(PortError::Exhausted);
                    }
                    Err(_) => {}
                }
            }
        }
        Err(if any {
            PortError::Exhausted
        } else {
            PortError::Family
        })
    }

    fn close(&mut self, id: AllocationId) {
        if self.tcp_open.remove(&id) {
            if let Some(addr) = self.open.remove(&Owner::Allocation(id)) {
                self.used.remove(&addr);
                if let Some(set) = tcp_ports().as_mut() {
                    set.remove(&addr);
                }
            }
            self.tcp_pending.retain(|(p, _)| *p != id);
            self.tcp_closed.push(id);
            return;
        }
        self.unregister(Owner::Allocation(id));
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
    fn allocations_take_the_relay_addresses_in_turn() {
        let ips: Vec<IpAddr> = vec![
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
        ];
        let mut table = RelayTable::new(ips, 40000, 60000, SharedReservations::default());
        let mut got = Vec::new();
        for index in 0..4 {
            let id = AllocationId {
                index,
                generation: 0,
            };
            got.push(
                table
                    .open(id, Family::V4, PortRequest::Any, false)
                    .unwrap()
                    .addr
                    .ip(),
            );
        }
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        assert_eq!(got, [a, b, a, b]);
    }

    #[test]
    fn a_full_relay_address_passes_on_to_the_next() {
        // One port on the first address, taken by someone else: the second address
        // serves every allocation.
        let hold = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = hold.local_addr().unwrap().port();
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        let mut table = RelayTable::new(ips, port, port, SharedReservations::default());
        let first = table
            .open(id(), Family::V4, PortRequest::Any, false)
            .unwrap();
        assert_eq!(
            first.addr,
            SocketAddr::new("127.0.0.3".parse().unwrap(), port)
        );
        let other = AllocationId {
            index: 1,
            generation: 0,
        };
        assert_eq!(
            table.open(other, Family::V4, PortRequest::Any, false),
            Err(PortError::Exhausted)
        );
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
