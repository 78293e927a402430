//! Requests we originate (deferred MESSAGEs): a non-INVITE client transaction to a
//! registered device, its responses routed back by the top Via branch.

use tokio::sync::mpsc;

use super::call::Input;
use super::routing::{hop_of, Hop};
use super::Proxy;
use crate::model::Binding;
use crate::sip::message::Message;
use crate::sip::transaction::{ClientNonInvite, Event};

/// Boxed future of [`RequestSender::send_request`].
pub type SendFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<u16>> + Send + 'a>>;

/// Sends a complete non-INVITE request to a registered device over its flow (RFC 5626)
/// as a client transaction, resolving with the final response's status code, or
/// `None` when there was none (flow gone, Timer F). Responses are matched by the top
/// Via branch of `request`, which is unique. The proxy implements it (requests we
/// originate, such as deferred messages); tests put a fake in its place.
pub trait RequestSender: Send + Sync + 'static {
    fn send_request<'a>(&'a self, binding: &'a Binding, request: Vec<u8>) -> SendFuture<'a>;
}

impl Proxy {
    /// Sends a request of our own to a registered device as a non-INVITE client
    /// transaction (RFC 3261 17.1.2) over the flow it registered on (RFC 5626), with
    /// responses routed here by the top Via branch like the forks' branches. Resolves
    /// with the final status, or `None` when the flow is gone or Timer F fired.
    pub(crate) async fn send_own_request(
        &self,
        binding: &Binding,
        request: Vec<u8>,
    ) -> Option<u16> {
        let hop = self.binding_hop(binding)?;
        self.own_transaction(hop, request).await
    }

    /// Sends a request of our own over the flow `hop` names (a BYE to a side of a
    /// call), as [`Proxy::send_own_request`] does to a binding.
    pub(crate) async fn send_own_request_to(&self, hop: Hop, request: Vec<u8>) -> Option<u16> {
        self.own_transaction(hop, request).await
    }

    async fn own_transaction(&self, hop: Hop, request: Vec<u8>) -> Option<u16> {
        let branch = Message::parse(&request)
            .ok()?
            .top_via()
            .ok()?
            .branch()?
            .to_owned();
        let (tx, mut rx) = mpsc::channel(16);
        {
            let mut routes = self.routes.lock().ok()?;
            if routes.contains_key(&branch) {
                return None;
            }
            routes.insert(branch.clone(), (tx, 0));
        }
        // The route goes away however this future ends (also when dropped).
        struct RouteGuard<'p>(&'p Proxy, String);
        impl Drop for RouteGuard<'_> {
            fn drop(&mut self) {
                if let Ok(mut r) = self.0.routes.lock() {
                    r.remove(&self.1);
                }
            }
        }
        let _guard = RouteGuard(self, branch);
        let mut t = ClientNonInvite::new(
            self.clock.now(),
            request,
            hop.transport.reliable(),
            self.timers,
        );
        loop {
            while let Some(bytes) = t.poll_transmit() {
                if !self
                    .flows
                    .send_or_connect(hop.transport, hop.addr, bytes)
                    .await
                {
                    return None;
                }
            }
            while let Some(ev) = t.poll_event() {
                match ev {
                    // Retransmitted finals (Timer K) are dropped as strays once the
                    // route is gone, which is all absorbing them means here.
                    Event::Final(code) => return Some(code),
                    Event::Timeout | Event::Terminated => return None,
                    Event::Provisional(_) => {}
                }
            }
            let wake = t.poll_timeout()?;
            tokio::select! {
                input = rx.recv() => match input {
                    Some(Input::Response { code, .. }) => {
                        t.handle_response(self.clock.now(), code);
                    }
                    Some(_) => {}
                    None => return None,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    t.handle_timeout(self.clock.now());
                }
            }
        }
    }
}

impl Proxy {
    /// Where a request to binding `b` goes. Over UDP, and over TCP/TLS while the
    /// connection it registered on is open: that flow (RFC 5626 connection reuse).
    /// A TCP binding registered without `outbound` (reg-id 0) whose connection is gone
    /// (the device closed it, or we restarted) is reached as RFC 3261 18.1.1 says: a
    /// new connection to its Contact's address. An outbound binding whose flow is gone
    /// is not (RFC 5626 5.3: the device opens a new flow and registers it; it is
    /// pushed meanwhile when it has a token), nor is a TLS one (no name to check the
    /// device's certificate against), nor a WS/WSS one (RFC 7118: a browser cannot
    /// accept connections, its Contact host is a made-up `.invalid` name); all are
    /// logged.
    pub(crate) fn binding_hop(&self, b: &Binding) -> Option<Hop> {
        let hop = hop_of(b)?;
        if !hop.transport.reliable() || self.flows.is_open(hop.transport, hop.addr) {
            return Some(hop);
        }
        if b.reg_id > 0 || hop.transport != crate::sip::transport::Transport::Tcp {
            tracing::info!(
                account = b.account_id,
                instance = %crate::registrar::redact_instance(&b.instance_id),
                transport = hop.transport.as_str(),
                outbound = b.reg_id > 0,
                "the device's connection is gone: not reached until it registers again"
            );
            return None;
        }
        let uri = crate::sip::grammar::SipUri::parse(&b.contact_uri)?;
        let ip: std::net::IpAddr = uri.host.trim_matches(['[', ']']).parse().ok()?;
        let addr = std::net::SocketAddr::new(ip, uri.port.unwrap_or(5060));
        Some(Hop { addr, ..hop })
    }
}

impl RequestSender for Proxy {
    fn send_request<'a>(&'a self, binding: &'a Binding, request: Vec<u8>) -> SendFuture<'a> {
        Box::pin(self.send_own_request(binding, request))
    }
}
