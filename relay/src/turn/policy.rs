//! Which peers an allocation may talk to.
//!
//! Every peer address is normalised first (IPv4-mapped, IPv4-compatible and
//! IPv4-translated IPv6, NAT64 `64:ff9b::/96`), so `::ffff:127.0.0.1` or
//! `64:ff9b::7f00:1` are judged as `127.0.0.1`. Then, in order: the relay's own
//! listening addresses are always refused; an explicit allow entry admits the peer; an
//! explicit deny entry refuses it; the built-in special ranges (loopback unless
//! allowed for tests, unspecified, private, CGNAT, link-local, multicast, broadcast,
//! documentation, benchmarking, reserved; IPv6 unique-local, link-local, site-local,
//! ...) are refused; anything else is allowed. Explicit allow beats deny, as in coturn's
//! `allowed-peer-ip`/`denied-peer-ip`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The peer policy of a relay.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allow_loopback: bool,
    pub allowed: Vec<IpNet>,
    pub denied: Vec<IpNet>,
    /// The relay's own listening (and relayed) addresses, never a valid peer.
    pub own: Vec<SocketAddr>,
}

/// Map IPv6 forms that embed an IPv4 address to that IPv4 address.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
            // ::ffff:a.b.c.d (mapped)
            if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
                return IpAddr::V4(v4);
            }
            // ::ffff:0:a.b.c.d (translated, RFC 2765)
            if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
                return IpAddr::V4(v4);
            }
            // 64:ff9b::/96 (NAT64 well-known prefix)
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return IpAddr::V4(v4);
            }
            // ::a.b.c.d (compatible, deprecated); :: and ::1 stay IPv6.
            if s[..6] == [0, 0, 0, 0, 0, 0]
                && v6 != Ipv6Addr::UNSPECIFIED
                && v6 != Ipv6Addr::LOCALHOST
            {
                return IpAddr::V4(v4);
            }
            ip
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// Loopback after normalisation.
pub fn is_loopback(ip: IpAddr) -> bool {
    match normalize(ip) {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Special-purpose ranges (IANA special registries) a relay must not reach by default.
/// `ip` must be normalised. Loopback is reported separately.
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            const NETS: &[([u8; 4], u32)] = &[
                ([0, 0, 0, 0], 8),       // "this network", unspecified
                ([10, 0, 0, 0], 8),      // private
                ([100, 64, 0, 0], 10),   // CGNAT
                ([169, 254, 0, 0], 16),  // link-local, cloud metadata
                ([172, 16, 0, 0], 12),   // private
                ([192, 0, 0, 0], 24),    // IETF protocol assignments
                ([192, 0, 2, 0], 24),    // documentation
                ([192, 31, 196, 0], 24), // AS112
                ([192, 52, 193, 0], 24), // AMT
                ([192, 88, 99, 0], 24),  // 6to4 relay anycast
                ([192, 168, 0, 0], 16),  // private
                ([192, 175, 48, 0], 24), // AS112
                ([198, 18, 0, 0], 15),   // benchmarking
                ([198, 51, 100, 0], 24), // documentation
                ([203, 0, 113, 0], 24),  // documentation
                ([224, 0, 0, 0], 4),     // multicast
                ([240, 0, 0, 0], 4),     // reserved, broadcast
            ];
            NETS.iter().any(|(n, p)| in_v4(v4, *n, *p))
        }
        IpAddr::V6(v6) => {
            const NETS: &[([u16; 8], u32)] = &[
                ([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
                ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),     // mapped (not normalised)
                ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
                ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
                ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments, Teredo
                ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48),   // benchmarking
                ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
                ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4 (embeds IPv4)
                ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation
                ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // SRv6 SIDs
                ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique-local
                ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
                ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local
                ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
            ];
            NETS.iter().any(|(n, p)| in_v6(v6, *n, *p))
        }
    }
}

impl PeerPolicy {
    /// Whether relaying to/from `peer` is permitted.
    pub fn permits(&self, peer: SocketAddr) -> bool {
        let ip = normalize(peer.ip());
        let norm = SocketAddr::new(ip, peer.port());
        if self.own.iter().any(|o| {
            let oip = normalize(o.ip());
            // A wildcard listener is reachable at least through loopback.
            o.port() == norm.port()
                && (oip == ip || (oip.is_unspecified() && (is_loopback(ip) || ip.is_unspecified())))
        }) {
            return false;
        }
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        if self.denied.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if is_loopback(ip) {
            return self.allow_loopback;
        }
        !is_special(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_special_forms() {
        let pol = PeerPolicy::default();
        for a in [
            "[::ffff:127.0.0.1]:5000",
            "0.0.0.0:5000",
            "[::]:5000",
            "[::1]:5000",
            "[64:ff9b::7f00:1]:5000",
            "169.254.169.254:80",
            "10.1.2.3:1",
            "100.64.0.1:1",
            "192.168.1.1:1",
            "172.31.255.255:1",
            "224.0.0.1:1",
            "255.255.255.255:1",
            "192.0.2.1:1",
            "198.18.0.1:1",
            "[fd00::1]:1",
            "[fe80::1]:1",
            "[fec0::1]:1",
            "[ff02::1]:1",
            "[2001:db8::1]:1",
            "[::127.0.0.1]:1",
            "[::ffff:0:10.0.0.1]:1",
            "[64:ff9b::a9fe:a9fe]:1",
        ] {
            assert!(!pol.permits(p(a)), "{a} must be refused");
        }
        for a in [
            "8.8.8.8:53",
            "[2606:4700::1111]:53",
            "[64:ff9b::808:808]:53",
            "[::ffff:8.8.8.8]:53",
        ] {
            assert!(pol.permits(p(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn loopback_switch_lists_and_own_addresses() {
        let mut pol = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(pol.permits(p("127.0.0.1:5000")));
        assert!(pol.permits(p("[::ffff:127.0.0.1]:5000")));
        assert!(pol.permits(p("[::1]:5000")));
        assert!(!pol.permits(p("0.0.0.0:5000")));
        pol.own.push(p("127.0.0.1:3478"));
        assert!(!pol.permits(p("127.0.0.1:3478")));
        assert!(!pol.permits(p("[::ffff:127.0.0.1]:3478")));
        pol.own.push(p("0.0.0.0:3479"));
        assert!(!pol.permits(p("127.0.0.2:3479")));
        pol.denied.push("127.0.0.0/24".parse().unwrap());
        assert!(!pol.permits(p("127.0.0.1:5000")));
        pol.allowed.push("127.0.0.1/32".parse().unwrap());
        assert!(pol.permits(p("127.0.0.1:5000")));
        pol.allowed.push("10.0.0.0/8".parse().unwrap());
        assert!(pol.permits(p("10.2.3.4:1")));
        pol.denied.push("8.8.8.0/24".parse().unwrap());
        assert!(!pol.permits(p("8.8.8.8:53")));
    }
}
