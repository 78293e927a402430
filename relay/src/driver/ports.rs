//! Relayed UDP sockets for the tokio driver: the port range, EVEN-PORT pairs and
//! reservations.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::turn::{AllocationId, Family, OpenedPort, PortError, PortRequest, RelayPorts};

/// Most bind attempts for one allocation before answering 508.
const MAX_ATTEMPTS: usize = 512;

pub(crate) struct RelayTable {
    ips: Vec<IpAddr>,
    min: u16,
    max: u16,
    open: HashMap<AllocationId, (Arc<UdpSocket>, CancellationToken, SocketAddr)>,
    reserved: HashMap<SocketAddr, StdUdpSocket>,
    used: HashSet<SocketAddr>,
    pending: Vec<(AllocationId, Arc<UdpSocket>, CancellationToken)>,
}

impl RelayTable {
    pub(crate) fn new(ips: Vec<IpAddr>, min: u16, max: u16) -> Self {
        RelayTable {
            ips,
            min,
            max,
            open: HashMap::new(),
            reserved: HashMap::new(),
            used: HashSet::new(),
            pending: Vec::new(),
        }
    }

    pub(crate) fn socket(&self, id: AllocationId) -> Option<Arc<UdpSocket>> {
        self.open.get(&id).map(|(s, _, _)| s.clone())
    }

    pub(crate) fn take_pending(
        &mut self,
    ) -> Vec<(AllocationId, Arc<UdpSocket>, CancellationToken)> {
        std::mem::take(&mut self.pending)
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn close_all(&mut self) {
        for (_, (_, c, _)) in self.open.drain() {
            c.cancel();
        }
        self.reserved.clear();
        self.used.clear();
    }

    fn bind(&self, addr: SocketAddr) -> Option<StdUdpSocket> {
        if self.used.contains(&addr) {
            return None;
        }
        let s = StdUdpSocket::bind(addr).ok()?;
        s.set_nonblocking(true).ok()?;
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
        if dont_fragment {
            // Setting DF needs IP_MTU_DISCOVER, which this portable driver does not use.
            return Err(PortError::DontFragment);
        }
        let ip = *self
            .ips
            .iter()
            .find(|ip| Family::of(**ip) == family)
            .ok_or(PortError::Family)?;
        let (std_sock, reserved) = match request {
            PortRequest::Reserved(addr) => (
                self.reserved.remove(&addr).ok_or(PortError::Exhausted)?,
                None,
            ),
            PortRequest::Any => self.find(ip, false, false).ok_or(PortError::Exhausted)?,
            PortRequest::Even { reserve_next } => self
                .find(ip, true, reserve_next)
                .ok_or(PortError::Exhausted)?,
        };
        let addr = std_sock.local_addr().map_err(|_| PortError::Exhausted)?;
        let sock = UdpSocket::from_std(std_sock).map_err(|_| PortError::Exhausted)?;
        let sock = Arc::new(sock);
        let cancel = CancellationToken::new();
        self.used.insert(addr);
        self.open.insert(id, (sock.clone(), cancel.clone(), addr));
        self.pending.push((id, sock, cancel));
        let reserved_addr = reserved.map(|(a, s)| {
            self.used.insert(a);
            self.reserved.insert(a, s);
            a
        });
        Ok(OpenedPort {
            addr,
            reserved: reserved_addr,
        })
    }

    fn close(&mut self, id: AllocationId) {
        if let Some((_, cancel, addr)) = self.open.remove(&id) {
            cancel.cancel();
            self.used.remove(&addr);
        }
        self.pending.retain(|(p, _, _)| *p != id);
    }

    fn release_reservation(&mut self, addr: SocketAddr) {
        self.reserved.remove(&addr);
        self.used.remove(&addr);
    }
}
