//! Where requests go: which addresses are ours, our Via, Record-Route entries with
//! RFC 5626 flow tokens, and the flow an in-dialog request's Route set names.
//!
//! Each side of a dialog gets one Record-Route entry naming the flow (transport and
//! address) of that side, with an HMAC so nobody can make us send to an address we did
//! not record. A later request carries both entries as Route; we pop them and send
//! over the flow of the other side, which reaches devices behind NAT where their
//! Contact address would not.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::Binding;
use crate::sip::grammar::{self, SipUri};
use crate::sip::message::{HeaderName, Message};
use crate::sip::transport::Transport;
use crate::sip::{Origin, SipAddrs};

/// Where a branch goes: a transport and an address, and our local address on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    pub(crate) transport: Transport,
    pub(crate) addr: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// Max-Forwards we send when the request carried none (RFC 3261 16.6 step 3).
const DEFAULT_MAX_FORWARDS: u32 = 70;

/// The request's Max-Forwards (RFC 3261 16.3 step 3), one more than we would send
/// when it carried none.
pub(crate) fn max_forwards(msg: &Message<'_>) -> u32 {
    match msg.header(HeaderName::MaxForwards) {
        Some(v) => grammar::decimal(v, 255).unwrap_or(0) as u32,
        None => DEFAULT_MAX_FORWARDS + 1,
    }
}

pub(crate) fn hop_of(b: &Binding) -> Option<Hop> {
    Some(Hop {
        transport: Transport::parse(&b.transport)?,
        addr: b.source.parse().ok()?,
        local: b.local.parse().ok()?,
    })
}

/// Our addresses and the key of our flow tokens.
pub(crate) struct Routing {
    realm: String,
    addrs: SipAddrs,
    token_key: [u8; 32],
}

/// The Route entries in front of a request that name us.
pub(crate) struct OwnRoutes {
    /// How many (to pop).
    pub(crate) popped: usize,
    /// The flow tokens they carried.
    pub(crate) tokens: Vec<(Transport, SocketAddr)>,
    /// The next Route entry, not ours.
    pub(crate) next: Option<String>,
}

/// Where an in-dialog request goes: the flow the other side's token names, and how
/// many of our Route entries to pop.
pub(crate) struct InDialog {
    pub(crate) hop: Hop,
    pub(crate) popped: usize,
}

impl Routing {
    /// Our digest realm and SIP domain.
    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    pub(crate) fn new(realm: String, addrs: SipAddrs) -> Routing {
        Routing {
            realm,
            addrs,
            token_key: rand::random(),
        }
    }

    /// Whether `host:port` names this server.
    pub(crate) fn is_us(
        &self,
        host: &str,
        port: Option<u16>,
        secure: bool,
        local: SocketAddr,
    ) -> bool {
        let host = host.trim_matches(['[', ']']);
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return host.eq_ignore_ascii_case(&self.realm);
        };
        let port = port.unwrap_or(if secure { 5061 } else { 5060 });
        [
            self.addrs.udp,
            self.addrs.tcp,
            self.addrs.tls,
            self.addrs.ws,
            self.addrs.wss,
        ]
        .into_iter()
        .flatten()
        .any(|a| {
            a.port() == port && (a.ip() == ip || (a.ip().is_unspecified() && local.ip() == ip))
        })
    }

    /// Our address on `transport`, as others reach it.
    pub(crate) fn local_on(&self, transport: Transport, seen: SocketAddr) -> Option<SocketAddr> {
        let a = match transport {
            Transport::Udp => self.addrs.udp,
            Transport::Tcp => self.addrs.tcp,
            Transport::Tls => self.addrs.tls,
            Transport::Ws => self.addrs.ws,
            Transport::Wss => self.addrs.wss,
        }?;
        Some(if a.ip().is_unspecified() {
            SocketAddr::new(seen.ip(), a.port())
        } else {
            a
        })
    }

    pub(crate) fn token_mac(&self, data: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.token_key) else {
            return String::new();
        };
        mac.update(data.as_bytes());
        hex::encode(mac.finalize().into_bytes().get(..8).unwrap_or(&[]))
    }

    /// RFC 5626 flow token for a transport and remote address.
    pub(crate) fn flow_token(&self, transport: Transport, addr: SocketAddr) -> String {
        let data = format!("{}-{}", transport.as_str(), hex::encode(addr.to_string()));
        let mac = self.token_mac(&data);
        format!("tf-{data}-{mac}")
    }

    pub(crate) fn parse_token(&self, user: &str) -> Option<(Transport, SocketAddr)> {
        let rest = user.strip_prefix("tf-")?;
        let (data, mac) = rest.rsplit_once('-')?;
        // Constant-time comparison of the MAC.
        let want = self.token_mac(data);
        if want.len() != mac.len()
            || want
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        let (t, addr_hex) = data.split_once('-')?;
        let addr = String::from_utf8(hex::decode(addr_hex).ok()?).ok()?;
        Some((Transport::parse(t)?, addr.parse().ok()?))
    }

    /// The two Record-Route entries of a forwarded dialog-creating request: the
    /// callee-facing one on top, the caller-facing one below (RFC 5658 double
    /// Record-Route, since the two sides may differ in transport or address). Each
    /// carries the flow token of the side it faces.
    pub(crate) fn record_routes(&self, origin: Origin, callee: Hop) -> Vec<String> {
        let caller_local = self
            .local_on(origin.transport, origin.local)
            .unwrap_or(origin.local);
        vec![
            self.record_route(callee, (callee.transport, callee.addr)),
            self.record_route(
                Hop {
                    transport: origin.transport,
                    addr: origin.source,
                    local: caller_local,
                },
                (origin.transport, origin.source),
            ),
        ]
    }

    pub(crate) fn record_route(&self, hop: Hop, token_for: (Transport, SocketAddr)) -> String {
        let token = self.flow_token(token_for.0, token_for.1);
        let host = match hop.local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let scheme = if hop.transport == Transport::Tls {
            "sips"
        } else {
            "sip"
        };
        format!(
            "<{scheme}:{token}@{host}:{};transport={};lr>",
            hop.local.port(),
            hop.transport.as_str()
        )
    }

    pub(crate) fn via(&self, hop: Hop, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            hop.transport.via_name(),
            hop.local
        )
    }

    /// Routes in front of the request that name us: how many, and the flow tokens
    /// they carried.
    pub(crate) fn own_routes(&self, msg: &Message<'_>, local: SocketAddr) -> OwnRoutes {
        let routes = msg.list(HeaderName::Route).unwrap_or_default();
        let mut n = 0;
        let mut tokens = Vec::new();
        for r in &routes {
            let Some(na) = grammar::name_addr(r) else {
                break;
            };
            let Some(u) = SipUri::parse(na.uri) else {
                break;
            };
            if !self.is_us(u.host, u.port, u.secure, local) {
                break;
            }
            n += 1;
            if let Some(t) = u.user.and_then(|user| self.parse_token(user)) {
                tokens.push(t);
            }
        }
        let next = routes
            .get(n)
            .and_then(|r| grammar::name_addr(r))
            .map(|na| na.uri.to_owned());
        OwnRoutes {
            popped: n,
            tokens,
            next,
        }
    }

    /// Where a UDP request to `host:port` goes (a name is resolved; the first
    /// address wins), from our UDP socket of the same family as `seen_local`.
    pub(crate) async fn udp_hop(
        &self,
        host: &str,
        port: u16,
        seen_local: SocketAddr,
    ) -> Option<Hop> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = match tokio::net::lookup_host((host, port)).await {
            Ok(mut it) => it.next()?,
            Err(_) => return None,
        };
        Some(Hop {
            transport: Transport::Udp,
            addr,
            local: self.local_on(Transport::Udp, seen_local)?,
        })
    }

    /// RFC 3261 16.4 / 16.12 loose routing of a request that names us in Route: we
    /// only send where one of our own flow tokens points (anything else would make us
    /// an open relay). `Err` with the status to answer.
    pub(crate) fn in_dialog(
        &self,
        routes: &OwnRoutes,
        origin: Origin,
    ) -> Result<InDialog, (u16, &'static str)> {
        let OwnRoutes {
            popped,
            tokens,
            next: next_route,
        } = routes;
        let popped = *popped;
        if next_route.is_some() {
            return Err((403, "Routing Beyond This Server Not Allowed"));
        }
        let Some(&(transport, addr)) = tokens
            .iter()
            .rev()
            .find(|(t, a)| !(*t == origin.transport && *a == origin.source))
        else {
            return Err((404, "Not Found"));
        };
        let Some(local) = self.local_on(transport, origin.local) else {
            return Err((503, "Service Unavailable"));
        };
        Ok(InDialog {
            hop: Hop {
                transport,
                addr,
                local,
            },
            popped,
        })
    }
}
