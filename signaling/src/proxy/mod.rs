//! Stateful forking proxy (RFC 3261 section 16) on the transaction layer.
//!
//! [`fork::Fork`] is the sans-IO response context (best response, CANCEL fan-out,
//! ring timeout); [`msg`] builds the messages; this module is the async glue: it
//! decides where a request goes, runs one client transaction per branch in a task per
//! forked request, and hands responses upstream through the server transaction.
//!
//! Routing of in-dialog requests uses flow tokens (RFC 5626 5.3) in the user part of
//! our Record-Route URIs: each side of a dialog gets one Record-Route entry naming the
//! flow (transport and address) of that side, with an HMAC so nobody can make us
//! send to an address we did not record. A later request carries both entries as
//! Route; we pop them and send over the flow of the other side, which reaches devices
//! behind NAT where their Contact address would not.

pub mod config;
pub mod dialplan;
pub mod fork;
pub mod msg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::model::{AccountId, Binding};
use crate::registrar::{AuthRole, RegistrarHandle};
use crate::sip::grammar::{self, SipUri};
use crate::sip::message::{new_tag, HeaderName, Message, Reply, ResponseBuilder};
use crate::sip::transaction::{ClientInvite, ClientNonInvite, Event, TimerConfig};
use crate::sip::transport::{Flows, Transport};
use crate::sip::{Handled, Origin, Request, SipAddrs, Upstream, ALLOW};

pub use config::ProxyConfig;
pub use dialplan::DialPlanConfig;
use fork::{Action, CancelReason, Final, Fork, ForkOptions};

/// Max-Forwards we send when the request carried none (RFC 3261 16.6 step 3).
const DEFAULT_MAX_FORWARDS: u32 = 70;
const REASON_COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

/// A request for one of our accounts, as the offline hooks see it.
#[derive(Debug, Clone)]
pub struct ForkedRequest {
    /// The called account.
    pub account: AccountId,
    /// `INVITE` or `MESSAGE`.
    pub method: String,
    pub call_id: String,
    /// The From header value (display name and URI).
    pub from: String,
    pub content_type: Option<String>,
    /// The Date header, when the sender put one.
    pub date: Option<String>,
    pub body: Vec<u8>,
    /// Instances of the devices that got the request live (empty when none did).
    pub live_instances: Vec<String>,
}

/// Boxed future returned by [`OfflineTargets`] hooks.
pub type HookFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where push notifications and deferred messages hook into the proxy. The proxy
/// itself only forks to live bindings; a device that registers while a call rings
/// joins it as a new branch on its own (see `Proxy::registration_loop`).
pub trait OfflineTargets: Send + Sync + 'static {
    /// No device of the account is registered: the status to answer with (for
    /// example 202 after a MESSAGE was stored, or a parked INVITE's final answer).
    fn no_live_binding<'a>(&'a self, req: &'a ForkedRequest)
        -> HookFuture<'a, (u16, &'static str)>;

    /// A MESSAGE was forked to the live devices in `req.live_instances` (called
    /// once, when the fork starts): the place to store it for the devices that are
    /// offline and push them.
    fn forked<'a>(&'a self, req: &'a ForkedRequest) -> HookFuture<'a, ()> {
        let _ = req;
        Box::pin(async {})
    }

    /// Whether [`Self::push_call`] can reach anyone (a push provider is configured).
    /// When it cannot, a call to an account with nobody registered ends at once.
    fn pushes_calls(&self) -> bool {
        false
    }

    /// Pushes `kind` about the call `req` to the devices of the account that have a
    /// push target and are chosen by `to`; returns the instances it was queued for.
    fn push_call<'a>(
        &'a self,
        req: &'a ForkedRequest,
        kind: CallPush,
        to: PushTo,
    ) -> HookFuture<'a, Vec<String>> {
        let _ = (req, kind, to);
        Box::pin(async { Vec::new() })
    }
}

/// The push notifications of a call's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPush {
    /// `incoming_call`: the call is waiting for the device.
    Incoming,
    /// `missed_call`: the caller hung up, or nobody answered in time.
    Missed,
    /// `call_cancelled`: answered or declined on another device.
    Cancelled,
}

/// Which devices of the called account a call push goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTo {
    /// Every device with a push target except these instances.
    AllExcept(Vec<String>),
    /// Only these instances (those that got `incoming_call`).
    Only(Vec<String>),
}

/// The behaviour without push or message storage: 480 Temporarily Unavailable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl OfflineTargets for Unavailable {
    fn no_live_binding<'a>(
        &'a self,
        _req: &'a ForkedRequest,
    ) -> HookFuture<'a, (u16, &'static str)> {
        Box::pin(async { (480, "Temporarily Unavailable") })
    }
}

/// Where a branch goes: a transport and an address, and our local address on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    transport: Transport,
    addr: SocketAddr,
    local: SocketAddr,
}

enum Input {
    Response {
        branch: usize,
        bytes: Vec<u8>,
    },
    Cancel,
    /// A device of the called account registered while the call rings.
    Registered(Box<Binding>),
    /// An `incoming_call` push was queued for these instances.
    Pushed(Vec<String>),
}

/// How many forked requests may be held in all, deciding and finishing, per place of
/// `max_transactions`: finishing ones live up to 32 s, deciding ones mostly a few.
const FINISHING_FACTOR: usize = 8;

/// One place under `max_transactions`, given back when dropped (also if the call's
/// task ends early).
struct DecidingSlot(Arc<AtomicUsize>);

impl DecidingSlot {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        DecidingSlot(count.clone())
    }
}

impl Drop for DecidingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in progress, as the proxy finds it again.
#[derive(Clone)]
struct CallEntry {
    tx: mpsc::Sender<Input>,
    /// The called account, for INVITEs forked to an account's bindings: a device of
    /// it that registers while the call rings becomes a new branch.
    account: Option<AccountId>,
}

/// How to build one more branch of a forked INVITE.
struct BranchTemplate {
    hash: String,
    max_forwards: u32,
    caller: Hop,
}

/// An INVITE to one of our accounts: devices may join, be pushed, and the
/// account's no-answer rule may apply.
struct CallSetup {
    account: AccountId,
    template: BranchTemplate,
    /// The call as the push hooks see it.
    request: Arc<ForkedRequest>,
    /// Devices are pushed (a provider is configured).
    pushes: bool,
    /// The account's no-answer rule.
    forward: Option<String>,
}

/// One branch to start: where, its Via branch, the request bytes, and the device
/// instance for branches to bindings.
struct NewBranch {
    hop: Hop,
    id: String,
    bytes: Vec<u8>,
    instance: Option<String>,
}

/// The proxy shared by every connection of the SIP server.
pub struct Proxy {
    cfg: ProxyConfig,
    dialplan: DialPlanConfig,
    realm: String,
    registrar: RegistrarHandle,
    flows: Arc<Flows>,
    addrs: SipAddrs,
    timers: TimerConfig,
    token_key: [u8; 32],
    offline: std::sync::RwLock<Arc<dyn OfflineTargets>>,
    /// Our branch parameter -> the task of its forked request and the branch index.
    routes: Mutex<HashMap<String, (mpsc::Sender<Input>, usize)>>,
    /// Server INVITE transaction key -> its task, for the caller's CANCEL.
    calls: Mutex<HashMap<String, CallEntry>>,
    /// Forked requests whose final response has not gone upstream yet: what
    /// `max_transactions` bounds. `calls` also holds the ones that only finish
    /// cancelling branches and absorbing retransmissions (Timer B/D/K).
    deciding: Arc<AtomicUsize>,
    /// Outgoing calls of authenticated callers, for the per-account limit.
    outgoing: Mutex<Outgoing>,
}

/// Outgoing calls per account: counted from the INVITE until a non-2xx final
/// response, or until the BYE of the established call passes through.
#[derive(Default)]
struct Outgoing {
    by_call: HashMap<String, (AccountId, Instant)>,
}

impl Outgoing {
    fn count(&mut self, account: AccountId, now: Instant, max_age: Duration) -> usize {
        self.by_call
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < max_age);
        self.by_call.values().filter(|(a, _)| *a == account).count()
    }
}

/// Who sent a request that starts something (INVITE, MESSAGE, SUBSCRIBE).
enum Caller {
    /// From names no account of ours: a caller from the outside.
    External,
    /// Authenticated as this account, whose country code reads the numbers it dials.
    Account { id: AccountId, country_code: String },
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// A caller's CANCEL matched an INVITE in progress; [`PendingCancel::fire`] hands
/// it to the INVITE's task.
pub(crate) struct PendingCancel(mpsc::Sender<Input>);

impl PendingCancel {
    pub(crate) fn fire(self) {
        let _ = self.0.try_send(Input::Cancel);
    }
}

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
    pub(crate) fn new(
        cfg: ProxyConfig,
        dialplan: DialPlanConfig,
        realm: String,
        registrar: RegistrarHandle,
        flows: Arc<Flows>,
        addrs: SipAddrs,
        timers: TimerConfig,
    ) -> Proxy {
        Proxy {
            cfg,
            dialplan,
            realm,
            registrar,
            flows,
            addrs,
            timers,
            token_key: rand::random(),
            offline: std::sync::RwLock::new(Arc::new(Unavailable)),
            routes: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            deciding: Arc::new(AtomicUsize::new(0)),
            outgoing: Mutex::new(Outgoing::default()),
        }
    }

    /// Digest authentication of a caller that claims one of our accounts in From
    /// (RFC 3261 22.3: 407 with Proxy-Authenticate, credentials in
    /// Proxy-Authorization), with the registrar's nonces, replay and ban rules.
    async fn authenticate_caller(
        &self,
        msg: &Message<'_>,
        origin: Origin,
        top_via: &str,
        tag: &str,
    ) -> Result<Caller, Reply> {
        let Some(from) = msg.from() else {
            return Err(ResponseBuilder::new(msg, 400, "Bad Request", top_via, Some(tag)).reply());
        };
        let Some(uri) = SipUri::parse(from.uri) else {
            return Ok(Caller::External);
        };
        if !self.is_us(uri.host, uri.port, uri.secure, origin.local) {
            return Ok(Caller::External);
        }
        let identity = uri
            .user_decoded()
            .map(|u| u.split(';').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        let a = self
            .registrar
            .authenticate(msg, AuthRole::Proxy, &identity, origin, top_via)
            .await?;
        Ok(Caller::Account {
            id: a.id,
            country_code: a.country_code,
        })
    }

    /// Counts an outgoing call against its account's limit; false beyond the limit.
    fn admit_call(&self, account: AccountId, call_id: &str) -> bool {
        let Ok(mut o) = self.outgoing.lock() else {
            return false;
        };
        let now = Instant::now();
        let max_age = Duration::from_secs(self.cfg.max_call_secs);
        if o.by_call.contains_key(call_id) {
            return true;
        }
        if o.count(account, now, max_age) >= self.cfg.max_outgoing_calls {
            return false;
        }
        o.by_call.insert(call_id.to_owned(), (account, now));
        true
    }

    fn release_call(&self, call_id: &str) {
        if let Ok(mut o) = self.outgoing.lock() {
            o.by_call.remove(call_id);
        }
    }

    /// Installs the push / deferred-message hooks.
    pub(crate) fn set_offline(&self, hooks: Arc<dyn OfflineTargets>) {
        if let Ok(mut g) = self.offline.write() {
            *g = hooks;
        }
    }

    fn offline(&self) -> Arc<dyn OfflineTargets> {
        match self.offline.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether `host:port` names this server.
    fn is_us(&self, host: &str, port: Option<u16>, secure: bool, local: SocketAddr) -> bool {
        let host = host.trim_matches(['[', ']']);
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return host.eq_ignore_ascii_case(&self.realm);
        };
        let port = port.unwrap_or(if secure { 5061 } else { 5060 });
        [self.addrs.udp, self.addrs.tcp, self.addrs.tls]
            .into_iter()
            .flatten()
            .any(|a| {
                a.port() == port && (a.ip() == ip || (a.ip().is_unspecified() && local.ip() == ip))
            })
    }

    /// Our address on `transport`, as others reach it.
    fn local_on(&self, transport: Transport, seen: SocketAddr) -> Option<SocketAddr> {
        let a = match transport {
            Transport::Udp => self.addrs.udp,
            Transport::Tcp => self.addrs.tcp,
            Transport::Tls => self.addrs.tls,
        }?;
        Some(if a.ip().is_unspecified() {
            SocketAddr::new(seen.ip(), a.port())
        } else {
            a
        })
    }

    fn token_mac(&self, data: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.token_key) else {
            return String::new();
        };
        mac.update(data.as_bytes());
        hex::encode(mac.finalize().into_bytes().get(..8).unwrap_or(&[]))
    }

    /// RFC 5626 flow token for a transport and remote address.
    fn flow_token(&self, transport: Transport, addr: SocketAddr) -> String {
        let data = format!("{}-{}", transport.as_str(), hex::encode(addr.to_string()));
        let mac = self.token_mac(&data);
        format!("tf-{data}-{mac}")
    }

    fn parse_token(&self, user: &str) -> Option<(Transport, SocketAddr)> {
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
    fn record_routes(&self, origin: Origin, callee: Hop) -> Vec<String> {
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

    fn record_route(&self, hop: Hop, token_for: (Transport, SocketAddr)) -> String {
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

    fn via(&self, hop: Hop, branch: &str) -> String {
        let t = match hop.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        format!("SIP/2.0/{t} {};branch={branch};rport", hop.local)
    }

    /// A CANCEL from the caller (RFC 3261 16.10): `Some` when it matched a request
    /// in progress; firing it cancels that request on every branch.
    pub(crate) fn cancel(&self, invite_key: &str) -> Option<PendingCancel> {
        self.calls
            .lock()
            .ok()
            .and_then(|c| c.get(invite_key).map(|e| PendingCancel(e.tx.clone())))
    }

    /// A response arrived: to the branch whose client transaction sent the request.
    pub(crate) fn handle_response(&self, msg: &Message<'_>, bytes: &[u8]) {
        let Ok(via) = msg.top_via() else { return };
        let Some(branch) = via.branch() else { return };
        let entry = self.routes.lock().ok().and_then(|r| r.get(branch).cloned());
        if let Some((tx, idx)) = entry {
            let _ = tx.try_send(Input::Response {
                branch: idx,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Sends a request of our own to a registered device as a non-INVITE client
    /// transaction (RFC 3261 17.1.2) over the flow it registered on (RFC 5626), with
    /// responses routed here by the top Via branch like the forks' branches. Resolves
    /// with the final status, or `None` when the flow is gone or Timer F fired.
    pub(crate) async fn send_own_request(
        &self,
        binding: &Binding,
        request: Vec<u8>,
    ) -> Option<u16> {
        let hop = hop_of(binding)?;
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
            Instant::now(),
            request,
            hop.transport.reliable(),
            self.timers,
        );
        loop {
            while let Some(bytes) = t.poll_transmit() {
                if !self.registrar.send_to(binding, bytes).await {
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
                    Some(Input::Response { bytes, .. }) => {
                        if let Some(code) = Message::parse(&bytes).ok().and_then(|m| m.status()) {
                            t.handle_response(Instant::now(), code);
                        }
                    }
                    Some(_) => {}
                    None => return None,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    t.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Routes in front of the request that name us: how many, and the flow tokens
    /// they carried.
    fn own_routes(
        &self,
        msg: &Message<'_>,
        local: SocketAddr,
    ) -> (usize, Vec<(Transport, SocketAddr)>, Option<String>) {
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
        (n, tokens, next)
    }

    /// A new request the server transaction layer passed on (not REGISTER, OPTIONS to
    /// us, CANCEL or ACK).
    pub(crate) async fn handle_request(
        self: &Arc<Self>,
        req: &Request<'_>,
        upstream: Upstream,
    ) -> Handled {
        let Request {
            msg,
            raw,
            origin,
            top_via,
            invite_key,
        } = *req;
        let method = msg.method().unwrap_or("");
        let tag = new_tag();
        let reply = |code: u16, reason: &str| {
            Handled::Reply(ResponseBuilder::new(msg, code, reason, top_via, Some(&tag)).reply())
        };
        // RFC 3261 16.3 step 3.
        let max_forwards = match msg.header(HeaderName::MaxForwards) {
            Some(v) => grammar::decimal(v, 255).unwrap_or(0) as u32,
            None => DEFAULT_MAX_FORWARDS + 1,
        };
        if max_forwards == 0 {
            return reply(483, "Too Many Hops");
        }
        // RFC 3261 16.3 step 4: our own Via with the same loop hash means the request
        // came back unchanged.
        let hash = msg::loop_hash(msg);
        let marker = format!("z9hG4bK{hash}.");
        if msg.vias().unwrap_or_default().iter().any(|v| {
            self.is_us(v.host, v.port, false, origin.local)
                && v.branch().is_some_and(|b| b.starts_with(&marker))
        }) {
            return reply(482, "Loop Detected");
        }
        let (popped, tokens, next_route) = self.own_routes(msg, origin.local);
        let in_dialog = msg.to().is_some_and(|t| t.params.contains("tag"));

        if in_dialog || popped > 0 {
            if method == "BYE" {
                if let Some(c) = msg.call_id() {
                    self.release_call(c);
                }
            }
            // RFC 3261 16.4 / 16.12: loose routing. We only send where one of our own
            // flow tokens points (anything else would make us an open relay).
            if next_route.is_some() {
                return reply(403, "Routing Beyond This Server Not Allowed");
            }
            let Some(&(transport, addr)) = tokens
                .iter()
                .rev()
                .find(|(t, a)| !(*t == origin.transport && *a == origin.source))
            else {
                return reply(404, "Not Found");
            };
            let Some(local) = self.local_on(transport, origin.local) else {
                return reply(503, "Service Unavailable");
            };
            let hop = Hop {
                transport,
                addr,
                local,
            };
            let branch = format!("z9hG4bK{hash}.{}", new_tag());
            let bytes = msg::forward_request(
                msg,
                &msg::Forward {
                    request_uri: None,
                    via: &self.via(hop, &branch),
                    record_route: &[],
                    pop_routes: popped,
                    max_forwards: max_forwards - 1,
                    extra: &[],
                },
            );
            return self.start_fork(
                raw,
                top_via,
                upstream,
                invite_key,
                method == "INVITE",
                vec![NewBranch {
                    hop,
                    id: branch,
                    bytes,
                    instance: None,
                }],
                None,
                None,
            );
        }

        // Out of dialog: who is calling (RFC 3261 22.3)?
        let mut counted_call = None;
        let mut caller_account = None;
        let mut caller_cc = None;
        if matches!(method, "INVITE" | "MESSAGE" | "SUBSCRIBE") {
            match self.authenticate_caller(msg, origin, top_via, &tag).await {
                Ok(Caller::External) => {}
                Ok(Caller::Account {
                    id: account,
                    country_code,
                }) => {
                    caller_account = Some(account);
                    caller_cc = Some(country_code);
                    if method == "INVITE" {
                        let call_id = msg.call_id().unwrap_or("");
                        if !self.admit_call(account, call_id) {
                            return reply(403, "Outgoing Call Limit Reached");
                        }
                        counted_call = Some(call_id.to_owned());
                    }
                }
                Err(r) => return Handled::Reply(r),
            }
        }
        let release = |h: Handled| {
            if let (Handled::Reply(_), Some(c)) = (&h, &counted_call) {
                self.release_call(c);
            }
            h
        };
        // To an address of record of ours.
        let Some(uri) = msg.request_uri().and_then(SipUri::parse) else {
            return release(reply(416, "Unsupported URI Scheme"));
        };
        if !self.is_us(uri.host, uri.port, uri.secure, origin.local) {
            return release(reply(404, "Not Found"));
        }
        if !matches!(method, "INVITE" | "MESSAGE") {
            return release(Handled::Reply(
                ResponseBuilder::new(msg, 405, "Method Not Allowed", top_via, Some(&tag))
                    .header("Allow", ALLOW)
                    .reply(),
            ));
        }
        let Some(identity) = uri.user_decoded() else {
            return release(reply(404, "Not Found"));
        };
        let identity = identity.split(';').next().unwrap_or("").to_owned();
        // ONNET first (an account of ours), unless the caller marked the number OFFNET.
        let (offnet, _) = dialplan::split_offnet(&self.dialplan, &identity);
        // National numbers are read with the caller's own country code.
        let found = if offnet {
            Ok(None)
        } else {
            self.registrar
                .find_account_dialled(&identity, caller_cc.as_deref())
                .await
        };
        let account = match found {
            Ok(Some(a)) => a,
            Ok(None) => {
                // OFFNET: the dial plan, for our authenticated callers only (anything
                // else would let strangers call out through our gateways).
                if caller_account.is_none() {
                    return release(reply(404, "Not Found"));
                }
                let h = self
                    .route_offnet(
                        msg,
                        raw,
                        origin,
                        top_via,
                        upstream,
                        invite_key,
                        &identity,
                        max_forwards,
                        &hash,
                        counted_call.clone(),
                    )
                    .await;
                return release(h);
            }
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed");
                return release(reply(500, "Server Internal Error"));
            }
        };
        let bindings = self.registrar.bindings(account.id);
        let invite = method == "INVITE";
        let hooks = self.offline();
        let pushes = invite && hooks.pushes_calls();
        let forward = if invite {
            account.no_answer_forward.clone()
        } else {
            None
        };
        let record = invite;
        let mut branches = Vec::with_capacity(bindings.len());
        for b in &bindings {
            let Some(hop) = hop_of(b) else { continue };
            let branch = format!("z9hG4bK{hash}.{}", new_tag());
            let rr = if record {
                self.record_routes(origin, hop)
            } else {
                Vec::new()
            };
            let bytes = msg::forward_request(
                msg,
                &msg::Forward {
                    request_uri: Some(&b.contact_uri),
                    via: &self.via(hop, &branch),
                    record_route: &rr,
                    pop_routes: 0,
                    max_forwards: max_forwards - 1,
                    extra: &[],
                },
            );
            branches.push(NewBranch {
                hop,
                id: branch,
                bytes,
                instance: Some(b.instance_id.clone()),
            });
        }
        // With nobody registered a MESSAGE is stored (202) or refused, and a call
        // ends at once unless devices can be pushed or the no-answer rule applies.
        if branches.is_empty() && !(pushes || forward.is_some()) {
            let req = forked_request(msg, account.id, Vec::new());
            let (code, reason) = hooks.no_live_binding(&req).await;
            return release(reply(code, reason));
        }
        let live: Vec<String> = branches.iter().filter_map(|b| b.instance.clone()).collect();
        let req = forked_request(msg, account.id, live);
        if !invite {
            let outgoing = counted_call.clone();
            tokio::spawn(async move { hooks.forked(&req).await });
            return release(self.start_fork(
                raw, top_via, upstream, invite_key, false, branches, outgoing, None,
            ));
        }
        let outgoing = counted_call.clone();
        let setup = Some(CallSetup {
            account: account.id,
            template: BranchTemplate {
                hash: hash.clone(),
                max_forwards: max_forwards - 1,
                caller: Hop {
                    transport: origin.transport,
                    addr: origin.source,
                    local: self
                        .local_on(origin.transport, origin.local)
                        .unwrap_or(origin.local),
                },
            },
            request: Arc::new(req),
            pushes,
            forward,
        });
        release(self.start_fork(
            raw, top_via, upstream, invite_key, invite, branches, outgoing, setup,
        ))
    }

    /// Devices that register while a call to their account rings join it as new
    /// branches (the park-and-push flow relies on this).
    pub(crate) async fn registration_loop(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<crate::registrar::Registered>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => ev,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "registration events lagged");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let targets: Vec<mpsc::Sender<Input>> = match self.calls.lock() {
                Ok(c) => c
                    .values()
                    .filter(|e| e.account == Some(ev.account))
                    .map(|e| e.tx.clone())
                    .collect(),
                Err(_) => Vec::new(),
            };
            for t in targets {
                let _ = t.try_send(Input::Registered(Box::new(ev.binding.clone())));
            }
        }
    }

    /// Sends a request for a number that is not ours to the gateway or server the dial
    /// plan names (one branch, Record-Route so the dialog stays with us).
    #[allow(clippy::too_many_arguments)]
    async fn route_offnet(
        self: &Arc<Self>,
        msg: &Message<'_>,
        raw: &[u8],
        origin: Origin,
        top_via: &str,
        upstream: Upstream,
        invite_key: &str,
        identity: &str,
        max_forwards: u32,
        hash: &str,
        outgoing: Option<String>,
    ) -> Handled {
        let tag = new_tag();
        let reply = |code: u16, reason: &str| {
            Handled::Reply(ResponseBuilder::new(msg, code, reason, top_via, Some(&tag)).reply())
        };
        let Some(routed) = dialplan::route(&self.dialplan, identity) else {
            return reply(404, "Not Found");
        };
        let Some((host, port)) = routed.route.host_port() else {
            return reply(500, "Server Internal Error");
        };
        let Some(hop) = self.udp_hop(&host, port, origin.local).await else {
            return reply(503, "Service Unavailable");
        };
        let host_text = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let uri = format!("sip:{}@{host_text}:{port}", routed.number);
        let branch = format!("z9hG4bK{hash}.{}", new_tag());
        let rr = if msg.method() == Some("INVITE") {
            self.record_routes(origin, hop)
        } else {
            Vec::new()
        };
        let bytes = msg::forward_request(
            msg,
            &msg::Forward {
                request_uri: Some(&uri),
                via: &self.via(hop, &branch),
                record_route: &rr,
                pop_routes: 0,
                max_forwards: max_forwards - 1,
                extra: &[],
            },
        );
        self.start_fork(
            raw,
            top_via,
            upstream,
            invite_key,
            msg.method() == Some("INVITE"),
            vec![NewBranch {
                hop,
                id: branch,
                bytes,
                instance: None,
            }],
            outgoing,
            None,
        )
    }

    /// Where a UDP request to `host:port` goes (a name is resolved; the first
    /// address wins), from our UDP socket of the same family as `seen_local`.
    async fn udp_hop(&self, host: &str, port: u16, seen_local: SocketAddr) -> Option<Hop> {
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

    #[allow(clippy::too_many_arguments)]
    fn start_fork(
        self: &Arc<Self>,
        raw: &[u8],
        top_via: &str,
        upstream: Upstream,
        invite_key: &str,
        invite: bool,
        branches: Vec<NewBranch>,
        outgoing_call: Option<String>,
        setup: Option<CallSetup>,
    ) -> Handled {
        let (tx, rx) = mpsc::channel(64);
        let refuse = |code: u16, reason: &str, retry_after: Option<&str>| {
            let Ok(m) = Message::parse(raw) else {
                return Handled::Taken;
            };
            let mut r = ResponseBuilder::new(&m, code, reason, top_via, Some(&new_tag()));
            if let Some(secs) = retry_after {
                r = r.header("Retry-After", secs);
            }
            Handled::Reply(r.reply())
        };
        let deciding = {
            let Ok(mut calls) = self.calls.lock() else {
                return refuse(500, "Server Internal Error", None);
            };
            // A forked request counts against `max_transactions` until its final
            // response goes upstream. After that its task lives up to 32 s more on
            // UDP (Timer B/D/K) to cancel late branches and absorb retransmissions;
            // those are bounded apart, so the limit measures calls in progress and
            // not the last half-minute of finished ones.
            let deciding = self.deciding.load(Ordering::Relaxed);
            if deciding >= self.cfg.max_transactions
                || calls.len() >= self.cfg.max_transactions.saturating_mul(FINISHING_FACTOR)
            {
                drop(calls);
                return refuse(503, "Service Unavailable", Some("5"));
            }
            calls.insert(
                invite_key.to_owned(),
                CallEntry {
                    tx: tx.clone(),
                    account: setup.as_ref().map(|c| c.account),
                },
            );
            // Taken under the lock, so concurrent requests cannot both pass the check.
            DecidingSlot::take(&self.deciding)
        };
        if let Ok(mut r) = self.routes.lock() {
            for (i, b) in branches.iter().enumerate() {
                r.insert(b.id.clone(), (tx.clone(), i));
            }
        }
        let now = Instant::now();
        let ring = Duration::from_secs(self.cfg.ring_timeout_secs);
        let pushes = setup.as_ref().is_some_and(|c| c.pushes);
        let opts = ForkOptions {
            // Parked from the start while the first push is on its way; lifted when
            // it reached nobody.
            park_until: pushes.then(|| now + Duration::from_secs(self.cfg.park_timeout_secs)),
            push_at: (pushes && self.cfg.push_after_secs > 0)
                .then(|| now + Duration::from_secs(self.cfg.push_after_secs)),
            forward_on_no_answer: setup.as_ref().is_some_and(|c| c.forward.is_some()),
        };
        let call = Call {
            proxy: self.clone(),
            upstream,
            request: raw.to_vec(),
            top_via: top_via.to_owned(),
            to_tag: new_tag(),
            invite_key: invite_key.to_owned(),
            fork: Fork::with_options(now, branches.len(), invite, ring, opts),
            deciding: Some(deciding),
            outgoing_call,
            answered_2xx: false,
            setup,
            pushed: Vec::new(),
            push_pending: 0,
            ended: None,
            branches: branches
                .into_iter()
                .map(
                    |NewBranch {
                         hop,
                         id,
                         bytes,
                         instance,
                     }| {
                        let reliable = hop.transport.reliable();
                        let tx = if invite {
                            ClientTx::Invite(ClientInvite::new(
                                now,
                                bytes.clone(),
                                reliable,
                                self.timers,
                            ))
                        } else {
                            ClientTx::NonInvite(ClientNonInvite::new(
                                now,
                                bytes.clone(),
                                reliable,
                                self.timers,
                            ))
                        };
                        BranchCtx {
                            hop,
                            id,
                            instance,
                            request: bytes,
                            tx,
                            cancel: None,
                            last: None,
                            challenges: Vec::new(),
                        }
                    },
                )
                .collect(),
            rx,
            self_tx: tx.clone(),
        };
        if invite {
            // RFC 3261 16.2: a stateful proxy answers an INVITE with 100 at once.
            let call_upstream = call.upstream.clone();
            let trying = Message::parse(raw)
                .map(|m| ResponseBuilder::new(&m, 100, "Trying", top_via, None).finish())
                .unwrap_or_default();
            tokio::spawn(async move {
                call_upstream.respond(100, trying).await;
                call.run().await;
            });
        } else {
            tokio::spawn(call.run());
        }
        Handled::Taken
    }

    /// Stateless forwarding of an ACK for a 2xx (RFC 3261 16.11 allows it; the ACK is
    /// end to end and has no transaction here).
    pub(crate) async fn forward_ack(&self, msg: &Message<'_>, origin: Origin) {
        let max_forwards = match msg.header(HeaderName::MaxForwards) {
            Some(v) => grammar::decimal(v, 255).unwrap_or(0) as u32,
            None => DEFAULT_MAX_FORWARDS + 1,
        };
        if max_forwards == 0 {
            return;
        }
        let (popped, tokens, next) = self.own_routes(msg, origin.local);
        if popped == 0 || next.is_some() {
            return;
        }
        let Some(&(transport, addr)) = tokens
            .iter()
            .rev()
            .find(|(t, a)| !(*t == origin.transport && *a == origin.source))
        else {
            return;
        };
        let Some(local) = self.local_on(transport, origin.local) else {
            return;
        };
        // The same ACK always gets the same branch (stateless: RFC 3261 16.11).
        let incoming = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let h = crate::registrar::digest::Algorithm::Sha256.hash_hex(incoming.as_bytes());
        let branch = format!("z9hG4bK{}", h.get(..24).unwrap_or(&h));
        let hop = Hop {
            transport,
            addr,
            local,
        };
        let bytes = msg::forward_request(
            msg,
            &msg::Forward {
                request_uri: None,
                via: &self.via(hop, &branch),
                record_route: &[],
                pop_routes: popped,
                max_forwards: max_forwards - 1,
                extra: &[],
            },
        );
        self.flows.send(transport, addr, bytes).await;
    }
}

fn forked_request(msg: &Message<'_>, account: AccountId, live: Vec<String>) -> ForkedRequest {
    ForkedRequest {
        account,
        method: msg.method().unwrap_or("").to_owned(),
        call_id: msg.call_id().unwrap_or("").to_owned(),
        from: msg.header(HeaderName::From).unwrap_or("").to_owned(),
        content_type: msg.header(HeaderName::ContentType).map(str::to_owned),
        date: msg.header(HeaderName::Other("Date")).map(str::to_owned),
        body: msg.body.to_vec(),
        live_instances: live,
    }
}

impl RequestSender for Proxy {
    fn send_request<'a>(&'a self, binding: &'a Binding, request: Vec<u8>) -> SendFuture<'a> {
        Box::pin(self.send_own_request(binding, request))
    }
}

fn hop_of(b: &Binding) -> Option<Hop> {
    Some(Hop {
        transport: Transport::parse(&b.transport)?,
        addr: b.source.parse().ok()?,
        local: b.local.parse().ok()?,
    })
}

enum ClientTx {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientTx {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            ClientTx::Invite(t) => t.poll_timeout(),
            ClientTx::NonInvite(t) => t.poll_timeout(),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            ClientTx::Invite(t) => t.handle_timeout(now),
            ClientTx::NonInvite(t) => t.handle_timeout(now),
        }
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self {
            ClientTx::Invite(t) => t.poll_transmit(),
            ClientTx::NonInvite(t) => t.poll_transmit(),
        }
    }
    fn poll_event(&mut self) -> Option<Event> {
        match self {
            ClientTx::Invite(t) => t.poll_event(),
            ClientTx::NonInvite(t) => t.poll_event(),
        }
    }
    fn terminated(&self) -> bool {
        let s = match self {
            ClientTx::Invite(t) => t.state(),
            ClientTx::NonInvite(t) => t.state(),
        };
        s == crate::sip::transaction::State::Terminated
    }
}

struct BranchCtx {
    hop: Hop,
    id: String,
    /// The device's instance, for branches to bindings.
    instance: Option<String>,
    request: Vec<u8>,
    tx: ClientTx,
    cancel: Option<ClientNonInvite>,
    /// The latest response (provisional or final) received on this branch.
    last: Option<Vec<u8>>,
    /// Challenges of its 401/407, kept for aggregation.
    challenges: Vec<(String, String)>,
}

/// One forked request: its response context, branches and the way upstream.
struct Call {
    proxy: Arc<Proxy>,
    upstream: Upstream,
    request: Vec<u8>,
    top_via: String,
    to_tag: String,
    invite_key: String,
    fork: Fork,
    /// Held until the final response goes upstream (and the pushes it causes are
    /// queued); dropping it frees a place under `max_transactions`.
    deciding: Option<DecidingSlot>,
    /// Call-ID counted against the caller's outgoing call limit: released unless a
    /// 2xx established the call (then its BYE releases it).
    outgoing_call: Option<String>,
    answered_2xx: bool,
    /// Set for INVITEs to one of our accounts: more branches can join, devices
    /// are pushed, the no-answer rule applies.
    setup: Option<CallSetup>,
    /// Instances that got an `incoming_call` push.
    pushed: Vec<String>,
    /// `incoming_call` pushes queued but not reported yet.
    push_pending: usize,
    /// How the call ended, once decided (pushed devices were told so).
    ended: Option<CallPush>,
    branches: Vec<BranchCtx>,
    rx: mpsc::Receiver<Input>,
    /// Our own input, for the routes of branches added later.
    self_tx: mpsc::Sender<Input>,
}

impl Call {
    async fn run(mut self) {
        // Bound on the life of the task whatever the peers do: the ring time (twice
        // when the no-answer rule may start a second ring) plus Timer B/D slack.
        let rings = if self.setup.as_ref().is_some_and(|c| c.forward.is_some()) {
            2
        } else {
            1
        };
        let give_up = Instant::now()
            + Duration::from_secs(self.proxy.cfg.ring_timeout_secs) * rings
            + self.proxy.timers.t1 * 64
            + Duration::from_secs(32);
        if let Some(live) = self
            .setup
            .as_ref()
            .filter(|c| c.pushes)
            .map(|c| c.request.live_instances.clone())
        {
            // Devices that are not registered hear of the call at the moment the
            // registered ones get the INVITE.
            self.push(CallPush::Incoming, PushTo::AllExcept(live));
        }
        self.pump(Instant::now()).await;
        loop {
            if self.fork.is_answered() && self.push_pending == 0 {
                self.deciding = None;
                if self.all_terminated() {
                    break;
                }
            }
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            let wake = self
                .branches
                .iter()
                .flat_map(|b| {
                    [
                        b.tx.poll_timeout(),
                        b.cancel.as_ref().and_then(|c| c.poll_timeout()),
                    ]
                })
                .flatten()
                .chain(self.fork.poll_timeout())
                .min()
                .unwrap_or(give_up)
                .min(give_up);
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(Input::Response { branch, bytes }) => self.on_response(Instant::now(), branch, bytes),
                    Some(Input::Cancel) => self.fork.handle_cancel(Instant::now()),
                    Some(Input::Registered(b)) => self.add_binding(Instant::now(), &b),
                    Some(Input::Pushed(list)) => self.on_pushed(Instant::now(), list),
                    None => break,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    for i in 0..self.branches.len() {
                        if let Some(b) = self.branches.get_mut(i) {
                            b.tx.handle_timeout(now);
                            if let Some(c) = b.cancel.as_mut() {
                                c.handle_timeout(now);
                            }
                        }
                        self.drain_events(now, i);
                    }
                    self.fork.handle_timeout(now);
                }
            }
            self.pump(Instant::now()).await;
        }
        if let Ok(mut r) = self.proxy.routes.lock() {
            for b in &self.branches {
                r.remove(&b.id);
            }
        }
        if let Ok(mut c) = self.proxy.calls.lock() {
            c.remove(&self.invite_key);
        }
        if let (Some(c), false) = (&self.outgoing_call, self.answered_2xx) {
            self.proxy.release_call(c);
        }
    }

    /// A device of the called account registered while the call rings: it gets the
    /// INVITE as a new branch, unless one of its bindings already has it.
    fn add_binding(&mut self, now: Instant, b: &Binding) {
        if self.setup.is_none() {
            return;
        }
        let Some(hop) = hop_of(b) else { return };
        if self
            .branches
            .iter()
            .any(|x| x.instance.as_deref() == Some(b.instance_id.as_str()) || x.hop == hop)
        {
            return;
        }
        let Some(idx) = self.fork.add_branch() else {
            return;
        };
        let uri = b.contact_uri.clone();
        self.push_invite_branch(now, idx, hop, &uri, Some(b.instance_id.clone()));
    }

    /// Starts branch `idx` of the INVITE to `request_uri` over `hop`, with the
    /// Record-Route pair of this hop and the caller's.
    fn push_invite_branch(
        &mut self,
        now: Instant,
        idx: usize,
        hop: Hop,
        request_uri: &str,
        instance: Option<String>,
    ) {
        let Some(t) = self.setup.as_ref().map(|c| &c.template) else {
            return;
        };
        let Ok(req) = Message::parse(&self.request) else {
            return;
        };
        let id = format!("z9hG4bK{}.{}", t.hash, new_tag());
        let rr = vec![
            self.proxy.record_route(hop, (hop.transport, hop.addr)),
            self.proxy
                .record_route(t.caller, (t.caller.transport, t.caller.addr)),
        ];
        let bytes = msg::forward_request(
            &req,
            &msg::Forward {
                request_uri: Some(request_uri),
                via: &self.proxy.via(hop, &id),
                record_route: &rr,
                pop_routes: 0,
                max_forwards: t.max_forwards,
                extra: &[],
            },
        );
        if let Ok(mut r) = self.proxy.routes.lock() {
            r.insert(id.clone(), (self.self_tx.clone(), idx));
        }
        self.branches.push(BranchCtx {
            hop,
            id,
            instance,
            tx: ClientTx::Invite(ClientInvite::new(
                now,
                bytes.clone(),
                hop.transport.reliable(),
                self.proxy.timers,
            )),
            request: bytes,
            cancel: None,
            last: None,
            challenges: Vec::new(),
        });
    }

    /// Queues a call push; the instances an `incoming_call` reached come back as
    /// [`Input::Pushed`].
    fn push(&mut self, kind: CallPush, to: PushTo) {
        let Some(setup) = self.setup.as_ref().filter(|c| c.pushes) else {
            return;
        };
        let hooks = self.proxy.offline();
        let req = setup.request.clone();
        if kind == CallPush::Incoming {
            self.push_pending += 1;
            let tx = self.self_tx.clone();
            tokio::spawn(async move {
                let pushed = hooks.push_call(&req, kind, to).await;
                let _ = tx.send(Input::Pushed(pushed)).await;
            });
        } else {
            tokio::spawn(async move {
                hooks.push_call(&req, kind, to).await;
            });
        }
    }

    /// An `incoming_call` push went to `list`: the call waits for them to register
    /// (or, when nobody at all could be pushed, stops waiting).
    fn on_pushed(&mut self, now: Instant, list: Vec<String>) {
        self.push_pending = self.push_pending.saturating_sub(1);
        let new: Vec<String> = list
            .into_iter()
            .filter(|i| !self.pushed.iter().any(|p| p.eq_ignore_ascii_case(i)))
            .collect();
        if let Some(kind) = self.ended {
            // The call ended while this push was being queued: these devices hear
            // of the end too.
            if !new.is_empty() {
                self.push(kind, PushTo::Only(new.clone()));
            }
        } else if !new.is_empty() {
            self.fork
                .park(now + Duration::from_secs(self.proxy.cfg.park_timeout_secs));
        } else if self.pushed.is_empty() && self.push_pending == 0 {
            self.fork.unpark(now);
        }
        self.pushed.extend(new);
    }

    /// The call's outcome is known: devices that got `incoming_call` (except the
    /// one that answered) get `kind`.
    fn end_call(&mut self, kind: CallPush, answered_by: Option<&str>) {
        if self.ended.is_some() || self.setup.is_none() {
            return;
        }
        self.ended = Some(kind);
        let to: Vec<String> = self
            .pushed
            .iter()
            .filter(|i| answered_by.is_none_or(|a| !a.eq_ignore_ascii_case(i)))
            .cloned()
            .collect();
        if !to.is_empty() {
            self.push(kind, PushTo::Only(to));
        }
    }

    /// The no-answer rule: the call goes to the account's forward URI as a new
    /// branch over UDP (Record-Route kept, so the dialog stays with us).
    async fn start_forward(&mut self, now: Instant) {
        let target = self.setup.as_ref().and_then(|c| {
            let uri = c.forward.clone()?;
            Some((uri, c.template.caller))
        });
        let Some((uri, caller)) = target else {
            self.fork.forward_failed();
            return;
        };
        let hop = match SipUri::parse(&uri) {
            Some(u) => {
                let port = u.port.unwrap_or(5060);
                self.proxy.udp_hop(u.host, port, caller.local).await
            }
            None => None,
        };
        let Some(hop) = hop else {
            tracing::warn!("the no-answer rule's target cannot be reached");
            self.fork.forward_failed();
            return;
        };
        let Some(idx) = self.fork.add_forward_branch(now) else {
            return;
        };
        self.push_invite_branch(now, idx, hop, &uri, None);
    }

    fn all_terminated(&self) -> bool {
        self.branches.iter().all(|b| {
            b.tx.terminated()
                && b.cancel
                    .as_ref()
                    .is_none_or(|c| c.state() == crate::sip::transaction::State::Terminated)
        })
    }

    fn on_response(&mut self, now: Instant, i: usize, bytes: Vec<u8>) {
        let Ok(resp) = Message::parse(&bytes) else {
            return;
        };
        let Some(code) = resp.status() else { return };
        let Some(b) = self.branches.get_mut(i) else {
            return;
        };
        if resp.cseq().is_some_and(|(_, m)| m == "CANCEL") {
            if let Some(c) = b.cancel.as_mut() {
                c.handle_response(now, code);
            }
            return;
        }
        if b.tx.terminated() {
            // A retransmitted 2xx after the transaction ended: still goes upstream.
            if (200..300).contains(&code) {
                b.last = Some(bytes);
                self.fork.handle_response(now, i, code);
            }
            return;
        }
        match &mut b.tx {
            ClientTx::Invite(t) => {
                let ack = if code >= 300 {
                    Message::parse(&b.request)
                        .ok()
                        .map(|sent| msg::ack_for(&sent, &resp))
                } else {
                    None
                };
                t.handle_response(now, code, ack);
            }
            ClientTx::NonInvite(t) => t.handle_response(now, code),
        }
        if code == 401 || code == 407 {
            b.challenges = msg::challenges(&resp);
        }
        b.last = Some(bytes);
        self.drain_events(now, i);
    }

    /// Client transaction events of branch `i` into the response context.
    fn drain_events(&mut self, now: Instant, i: usize) {
        let Some(b) = self.branches.get_mut(i) else {
            return;
        };
        let mut codes = Vec::new();
        while let Some(e) = b.tx.poll_event() {
            match e {
                Event::Provisional(c) | Event::Final(c) => codes.push(c),
                Event::Timeout => codes.push(408),
                Event::Terminated => {}
            }
        }
        for c in codes {
            self.fork.handle_response(now, i, c);
        }
    }

    /// Carries out the response context's actions and sends what the transactions queued.
    async fn pump(&mut self, now: Instant) {
        while let Some(a) = self.fork.poll_action() {
            match a {
                Action::Forward { branch, code } => {
                    if (200..300).contains(&code) || code >= 600 {
                        // Answered or declined on a device: the pushed ones stop
                        // ringing; answered by the no-answer target: they missed it.
                        let by = self.branches.get(branch).and_then(|b| b.instance.clone());
                        let kind = if by.is_none() && self.fork.is_forwarded() && code < 300 {
                            CallPush::Missed
                        } else {
                            CallPush::Cancelled
                        };
                        self.end_call(kind, by.as_deref());
                    }
                    self.answered_2xx |= (200..300).contains(&code);
                    let bytes = self
                        .branches
                        .get(branch)
                        .and_then(|b| b.last.as_ref())
                        .and_then(|l| {
                            Message::parse(l)
                                .ok()
                                .map(|m| msg::response_upstream(&m, None, &[]))
                        });
                    if let Some(bytes) = bytes {
                        self.upstream.respond(code, bytes).await;
                    }
                }
                Action::Cancel { branch, reason } => {
                    let text = match reason {
                        CancelReason::CompletedElsewhere => {
                            Some(REASON_COMPLETED_ELSEWHERE.to_owned())
                        }
                        CancelReason::GlobalFailure(c) => {
                            Some(format!("SIP;cause={c};text=\"Call declined elsewhere\""))
                        }
                        CancelReason::CallerCancelled => None,
                        CancelReason::RingTimeout => {
                            Some("SIP;cause=408;text=\"No answer\"".to_owned())
                        }
                    };
                    if let Some(b) = self.branches.get_mut(branch) {
                        if let Ok(sent) = Message::parse(&b.request) {
                            let c = msg::cancel_for(&sent, text.as_deref());
                            b.cancel = Some(ClientNonInvite::new(
                                now,
                                c,
                                b.hop.transport.reliable(),
                                self.proxy.timers,
                            ));
                        }
                    }
                }
                Action::PushAll => {
                    let skip = self.pushed.clone();
                    self.push(CallPush::Incoming, PushTo::AllExcept(skip));
                }
                Action::NoAnswer => self.start_forward(now).await,
                Action::Respond(f) => {
                    self.end_call(CallPush::Missed, None);
                    let (code, bytes) = self.final_bytes(f);
                    if !(200..300).contains(&code) {
                        // The call failed: it stops counting against the limit now,
                        // not when the last branch's transaction ends.
                        if let Some(c) = self.outgoing_call.take() {
                            self.proxy.release_call(&c);
                        }
                    }
                    if !bytes.is_empty() {
                        self.upstream.respond(code, bytes).await;
                    }
                }
            }
        }
        for b in &mut self.branches {
            while let Some(bytes) = b.tx.poll_transmit() {
                self.proxy
                    .flows
                    .send(b.hop.transport, b.hop.addr, bytes)
                    .await;
            }
            if let Some(c) = b.cancel.as_mut() {
                while let Some(bytes) = c.poll_transmit() {
                    self.proxy
                        .flows
                        .send(b.hop.transport, b.hop.addr, bytes)
                        .await;
                }
                while c.poll_event().is_some() {}
            }
        }
    }

    fn final_bytes(&self, f: Final) -> (u16, Vec<u8>) {
        match f {
            Final::Branch {
                branch,
                code,
                as_code,
                auth_from,
            } => {
                let extra: Vec<(String, String)> = auth_from
                    .iter()
                    .filter_map(|i| self.branches.get(*i))
                    .flat_map(|b| b.challenges.iter().cloned())
                    .collect();
                let status = (as_code != code).then_some((as_code, "Server Internal Error"));
                let bytes = self
                    .branches
                    .get(branch)
                    .and_then(|b| b.last.as_ref())
                    .and_then(|l| {
                        Message::parse(l)
                            .ok()
                            .map(|m| msg::response_upstream(&m, status, &extra))
                    })
                    .unwrap_or_default();
                (as_code, bytes)
            }
            Final::Generated { code, reason } => {
                let bytes = Message::parse(&self.request)
                    .map(|m| {
                        ResponseBuilder::new(&m, code, reason, &self.top_via, Some(&self.to_tag))
                            .finish()
                    })
                    .unwrap_or_default();
                (code, bytes)
            }
        }
    }
}
