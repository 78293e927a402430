// Shared by the media fuzz targets: a relay port allocator that checks every close
// matches an open (a double close or a leak is a bug the fuzzer should report).

use std::collections::HashMap;
use std::net::SocketAddr;

use tandem_relay::media::{MediaPorts, PortKey};
use tandem_relay::turn::{Family, PortError};

#[derive(Debug, Default)]
pub struct Ports {
    pub next: u16,
    pub open: HashMap<PortKey, SocketAddr>,
    /// Ports left before the allocator runs out (`None`: never).
    pub left: Option<usize>,
}

impl MediaPorts for Ports {
    fn open_media(
        &mut self,
        first: PortKey,
        second: Option<PortKey>,
        family: Family,
    ) -> Result<(SocketAddr, Option<SocketAddr>), PortError> {
        if family != Family::V4 {
            return Err(PortError::Family);
        }
        let need = if second.is_some() { 2 } else { 1 };
        if let Some(left) = self.left.as_mut() {
            if *left < need {
                return Err(PortError::Exhausted);
            }
            *left -= need;
        }
        self.next = self.next.wrapping_add(2).max(40_000) & !1;
        let rtp = SocketAddr::from(([203, 0, 113, 10], self.next));
        let rtcp = second.map(|_| SocketAddr::from(([203, 0, 113, 10], self.next + 1)));
        assert!(self.open.insert(first, rtp).is_none(), "opened twice");
        if let (Some(k), Some(a)) = (second, rtcp) {
            assert!(self.open.insert(k, a).is_none(), "opened twice");
        }
        Ok((rtp, rtcp))
    }

    fn close_media(&mut self, key: PortKey) {
        assert!(self.open.remove(&key).is_some(), "close of a port not open");
    }
}
