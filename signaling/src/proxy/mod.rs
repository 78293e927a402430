//! Stateful forking proxy (RFC 3261 section 16) on the transaction layer.
//!
//! This module decides where a new request goes (caller authentication, the
//! outgoing call limit, ONNET/OFFNET); [`routing`] knows our addresses, Record-Route
//! and flow tokens; [`call`] runs a forked request (one client transaction per branch,
//! the sans-IO [`fork::Fork`] deciding); [`own`] sends requests we originate;
//! [`offline`] is the interface push and deferred messages plug into; [`msg`] builds
//! the messages.

pub mod call;
pub mod config;
pub mod dialplan;
pub mod fork;
pub(crate) mod media;
pub mod msg;
pub mod offline;
pub mod own;
pub mod routing;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::metrics::SipMetrics;
use crate::model::AccountId;
use crate::registrar::{AuthRole, RegistrarHandle};
use crate::sip::grammar::SipUri;
use crate::sip::message::{new_tag, Message, Reply, ResponseBuilder};
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::Flows;
use crate::sip::{Handled, Origin, Request, SipAddrs, Upstream, ALLOW};

use call::{BranchTemplate, CallSetup, Calls, Forking, Input, NewBranch, PendingCancel};
pub use config::ProxyConfig;
pub use dialplan::DialPlanConfig;
use offline::forked_request;
pub use offline::{CallPush, ForkedRequest, HookFuture, OfflineTargets, PushTo, Unavailable};
pub use own::{RequestSender, SendFuture};
use routing::{max_forwards, Hop, Routing};

/// The proxy shared by every connection of the SIP server.
pub struct Proxy {
    cfg: ProxyConfig,
    dialplan: DialPlanConfig,
    routing: Routing,
    registrar: RegistrarHandle,
    flows: Arc<Flows>,
    timers: TimerConfig,
    offline: std::sync::RwLock<Arc<dyn OfflineTargets>>,
    /// Our branch parameter -> the task of its forked request and the branch index.
    routes: Mutex<HashMap<String, (mpsc::Sender<Input>, usize)>>,
    /// Server INVITE transaction key -> its task, for the caller's CANCEL.
    calls: Mutex<Calls>,
    /// Forked requests whose final response has not gone upstream yet: what
    /// `max_transactions` bounds. `calls` also holds the ones that only finish
    /// cancelling branches and absorbing retransmissions (Timer B/D/K).
    deciding: Arc<AtomicUsize>,
    /// Outgoing calls of authenticated callers, for the per-account limit.
    outgoing: Mutex<Outgoing>,
    metrics: SipMetrics,
    clock: Clock,
    /// Media sessions of calls, once relays are configured.
    media: std::sync::OnceLock<media::MediaCalls>,
    /// Set by [`Proxy::drain`]: no new out-of-dialog requests.
    draining: std::sync::atomic::AtomicBool,
}

/// Rebinds `$req` to the same request with other bytes (`$bytes: Option<Vec<u8>>`: an
/// SDP rewritten for the relay, our own Route entries removed), parsed again; `$req`
/// stays as it was when there are none or they do not parse.
macro_rules! with_bytes {
    ($req:ident, $bytes:expr) => {
        let parsed = $bytes
            .as_deref()
            .and_then(|b| Message::parse(b).ok().map(|m| (b, m)));
        let changed;
        let $req = match &parsed {
            Some((raw, m)) => {
                changed = Request {
                    msg: m,
                    raw,
                    ..*$req
                };
                &changed
            }
            None => $req,
        };
    };
}

/// How a new request goes on once routed: its loop hash, Max-Forwards, the outgoing
/// call it counts as, its media session, and whether the sender is one of ours.
struct Onward<'a> {
    hash: &'a str,
    max_forwards: u32,
    counted_call: Option<String>,
    media: Option<media::MediaRole>,
    local_sender: bool,
}

/// Outgoing calls per account: counted from the INVITE until a non-2xx final
/// response, or until the BYE of the established call passes through. Indexed by
/// account, so admitting a call looks at that account's calls only (not every call
/// in progress).
#[derive(Default)]
struct Outgoing {
    by_call: HashMap<String, AccountId>,
    by_account: HashMap<AccountId, HashMap<String, Instant>>,
    /// Calls admitted; every [`SWEEP_EVERY`] of them, all accounts are swept.
    admitted: u64,
}

/// How often (in admitted calls) every account's forgotten calls are dropped, so
/// that accounts that stop calling do not keep old entries.
const SWEEP_EVERY: u64 = 1024;

impl Outgoing {
    /// Counts `account`'s calls younger than `max_age` (older ones are forgotten:
    /// a BYE that never passed through us must not hold the place forever).
    fn count(&mut self, account: AccountId, now: Instant, max_age: Duration) -> usize {
        let Some(calls) = self.by_account.get_mut(&account) else {
            return 0;
        };
        let before = calls.len();
        let mut stale = Vec::new();
        calls.retain(|call, since| {
            let keep = now.saturating_duration_since(*since) < max_age;
            if !keep {
                stale.push(call.clone());
            }
            keep
        });
        let n = calls.len();
        if n == 0 {
            self.by_account.remove(&account);
        }
        if n != before {
            for c in stale {
                self.by_call.remove(&c);
            }
        }
        n
    }

    fn insert(&mut self, account: AccountId, call_id: &str, now: Instant, max_age: Duration) {
        self.admitted = self.admitted.wrapping_add(1);
        if self.admitted % SWEEP_EVERY == 0 {
            let accounts: Vec<AccountId> = self.by_account.keys().copied().collect();
            for a in accounts {
                self.count(a, now, max_age);
            }
        }
        self.by_call.insert(call_id.to_owned(), account);
        self.by_account
            .entry(account)
            .or_default()
            .insert(call_id.to_owned(), now);
    }

    fn remove(&mut self, call_id: &str) {
        let Some(account) = self.by_call.remove(call_id) else {
            return;
        };
        if let Some(calls) = self.by_account.get_mut(&account) {
            calls.remove(call_id);
            if calls.is_empty() {
                self.by_account.remove(&account);
            }
        }
    }
}

/// Who sent a request that starts something (INVITE, MESSAGE, SUBSCRIBE).
enum Caller {
    /// From names no account of ours: a caller from the outside.
    External,
    /// Authenticated as this account, whose country code reads the numbers it dials.
    Account {
        id: AccountId,
        country_code: String,
        media: crate::model::MediaPolicy,
    },
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// What the proxy needs from the SIP layer below it.
#[derive(Debug, Clone)]
pub struct SipSide {
    /// Our domain and digest realm.
    pub realm: String,
    /// Where the endpoint listens.
    pub addrs: SipAddrs,
    /// Where requests and responses go out.
    pub flows: Arc<Flows>,
    pub timers: TimerConfig,
    pub metrics: SipMetrics,
    /// Where the proxy's tasks read the time.
    pub clock: Clock,
}

impl Proxy {
    pub(crate) fn new(
        cfg: ProxyConfig,
        dialplan: DialPlanConfig,
        registrar: RegistrarHandle,
        sip: SipSide,
    ) -> Proxy {
        let SipSide {
            realm,
            addrs,
            flows,
            timers,
            metrics,
            clock,
        } = sip;
        Proxy {
            cfg,
            dialplan,
            routing: Routing::new(realm, addrs),
            registrar,
            flows,
            timers,
            offline: std::sync::RwLock::new(Arc::new(Unavailable)),
            routes: Mutex::new(HashMap::new()),
            calls: Mutex::new(Calls::default()),
            deciding: Arc::new(AtomicUsize::new(0)),
            outgoing: Mutex::new(Outgoing::default()),
            metrics,
            clock,
            media: std::sync::OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
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
        if !self
            .routing
            .is_us(uri.host, uri.port, uri.secure, origin.local)
        {
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
            media: a.media,
        })
    }

    /// Counts an outgoing call against its account's limit; false beyond the limit.
    fn admit_call(&self, account: AccountId, call_id: &str) -> bool {
        let Ok(mut o) = self.outgoing.lock() else {
            return false;
        };
        let now = self.clock.now();
        let max_age = Duration::from_secs(self.cfg.max_call_secs);
        if o.by_call.contains_key(call_id) {
            return true;
        }
        if o.count(account, now, max_age) >= self.cfg.max_outgoing_calls {
            return false;
        }
        o.insert(account, call_id, now, max_age);
        true
    }

    fn release_call(&self, call_id: &str) {
        if let Ok(mut o) = self.outgoing.lock() {
            o.remove(call_id);
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

    /// A CANCEL from the caller (RFC 3261 16.10): `Some` when it matched a request
    /// in progress; firing it cancels that request on every branch.
    pub(crate) fn cancel(&self, invite_key: &str) -> Option<PendingCancel> {
        self.calls
            .lock()
            .ok()
            .and_then(|c| c.get(invite_key).map(|e| PendingCancel(e.tx.clone())))
    }

    /// A response arrived: to the branch whose client transaction sent the request.
    /// False when it matches no branch of ours (a stray).
    pub(crate) fn handle_response(&self, msg: &Message<'_>, bytes: &[u8]) -> bool {
        let Ok(via) = msg.top_via() else {
            return false;
        };
        let Some(branch) = via.branch() else {
            return false;
        };
        let entry = self.routes.lock().ok().and_then(|r| r.get(branch).cloned());
        match entry {
            Some((tx, idx)) => {
                let _ = tx.try_send(Input::Response {
                    branch: idx,
                    code: msg.status().unwrap_or(500),
                    to_cancel: msg.cseq().is_some_and(|(_, m)| m == "CANCEL"),
                    bytes: bytes.to_vec(),
                });
                true
            }
            None => false,
        }
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
            origin,
            top_via,
            ..
        } = *req;
        let method = msg.method().unwrap_or("");
        let tag = new_tag();
        let reply = |code: u16, reason: &str| {
            Handled::Reply(ResponseBuilder::new(msg, code, reason, top_via, Some(&tag)).reply())
        };
        // RFC 3261 16.3 step 3.
        let max_forwards = max_forwards(msg);
        if max_forwards == 0 {
            return reply(483, "Too Many Hops");
        }
        // RFC 3261 16.3 step 4: our own Via with the same loop hash means the request
        // came back unchanged.
        let hash = msg::loop_hash(msg);
        let marker = format!("z9hG4bK{hash}.");
        if msg.vias().unwrap_or_default().iter().any(|v| {
            self.routing.is_us(v.host, v.port, false, origin.local)
                && v.branch().is_some_and(|b| b.starts_with(&marker))
        }) {
            return reply(482, "Loop Detected");
        }
        let routes = self.routing.own_routes(msg, origin.local);
        let in_dialog = msg.to().is_some_and(|t| t.params.contains("tag"));
        // RFC 3261 16.4: a request that is not in a dialog and whose Route names only
        // us, without a flow token of ours (a client's outbound proxy, a pre-loaded
        // route), loses those entries and is routed on its Request-URI like any other.
        let preloaded =
            !in_dialog && routes.popped > 0 && routes.tokens.is_empty() && routes.next.is_none();
        let stripped = preloaded.then(|| msg::drop_leading_routes(msg, routes.popped));
        with_bytes!(req, stripped);
        let msg = req.msg;

        if in_dialog || (routes.popped > 0 && !preloaded) {
            if method == "BYE" {
                if let Some(c) = msg.call_id() {
                    self.release_call(c);
                }
            }
            let route = match self.routing.in_dialog(&routes, origin) {
                Ok(route) => route,
                Err((code, reason)) => return reply(code, reason),
            };
            let (body, role) = self.media_in_dialog(msg, origin.source).await;
            with_bytes!(req, body);
            return self.forward_in_dialog(req, upstream, route, &hash, max_forwards, role);
        }

        // A draining server starts nothing new: the client tries another one.
        if self.is_draining() {
            return Handled::Reply(
                ResponseBuilder::new(msg, 503, "Service Unavailable", top_via, Some(&tag))
                    .header("Retry-After", call::DRAIN_RETRY_AFTER)
                    .reply(),
            );
        }

        // Out of dialog: who is calling (RFC 3261 22.3)?
        let mut counted_call = None;
        let mut caller_account = None;
        let mut caller_cc = None;
        let mut caller_media = None;
        if matches!(method, "INVITE" | "MESSAGE" | "SUBSCRIBE") {
            match self.authenticate_caller(msg, origin, top_via, &tag).await {
                Ok(Caller::External) => {}
                Ok(Caller::Account {
                    id: account,
                    country_code,
                    media,
                }) => {
                    caller_account = Some(account);
                    caller_cc = Some(country_code);
                    caller_media = Some(media);
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
        if !self
            .routing
            .is_us(uri.host, uri.port, uri.secure, origin.local)
        {
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
                let policy = media::Effective::from(caller_media.unwrap_or_default());
                if dialplan::route(&self.dialplan, &identity).is_none() {
                    return release(reply(404, "Not Found"));
                }
                let (raw, role) = match self.media_offer(req, policy, true).await {
                    Ok(Some((raw, role))) => (raw, Some(role)),
                    Ok(None) => (None, None),
                    Err(r) => return release(r.reply(req)),
                };
                with_bytes!(req, raw);
                let h = self
                    .route_offnet(
                        req,
                        upstream,
                        &identity,
                        Onward {
                            hash: &hash,
                            max_forwards,
                            counted_call: counted_call.clone(),
                            media: role.clone(),
                            local_sender: true,
                        },
                    )
                    .await;
                return release(self.media_unless_taken(h, role).await);
            }
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed");
                return release(reply(500, "Server Internal Error"));
            }
        };
        let policy = media::Effective::from(account.media).max(media::Effective::from(
            caller_media.unwrap_or(account.media),
        ));
        let (raw, role) = match self.media_offer(req, policy, false).await {
            Ok(Some((raw, role))) => (raw, Some(role)),
            Ok(None) => (None, None),
            Err(r) => return release(r.reply(req)),
        };
        with_bytes!(req, raw);
        let h = self
            .fork_to_account(
                req,
                upstream,
                &account,
                Onward {
                    hash: &hash,
                    max_forwards,
                    counted_call: counted_call.clone(),
                    media: role.clone(),
                    local_sender: caller_account.is_some(),
                },
            )
            .await;
        release(self.media_unless_taken(h, role).await)
    }

    /// The bytes of a request forwarded in dialog (or an ACK for a 2xx): our Via on
    /// top, our own Route entries removed, Max-Forwards minus one, our realm's
    /// credentials consumed. One place for both paths.
    fn in_dialog_bytes(
        &self,
        msg: &Message<'_>,
        route: &routing::InDialog,
        branch: &str,
        max_forwards: u32,
    ) -> Vec<u8> {
        msg::forward_request(
            msg,
            &msg::Forward {
                request_uri: None,
                via: &self.routing.via(route.hop, branch),
                record_route: &[],
                pop_routes: route.popped,
                max_forwards: max_forwards - 1,
                extra: &[],
                consume_realm: Some(self.routing.realm()),
            },
        )
    }

    /// An in-dialog request (or one routed through us): one branch over the flow the
    /// other side's token names.
    fn forward_in_dialog(
        self: &Arc<Self>,
        req: &Request<'_>,
        upstream: Upstream,
        route: routing::InDialog,
        hash: &str,
        max_forwards: u32,
        media: Option<media::MediaRole>,
    ) -> Handled {
        let msg = req.msg;
        let branch = format!("z9hG4bK{hash}.{}", new_tag());
        let bytes = self.in_dialog_bytes(msg, &route, &branch, max_forwards);
        self.start_fork(
            req,
            upstream,
            vec![NewBranch {
                hop: route.hop,
                id: branch,
                bytes,
                instance: None,
            }],
            Forking {
                invite: msg.method() == Some("INVITE"),
                outgoing_call: None,
                setup: None,
                media,
            },
        )
    }

    /// A request the proxy answered itself after its media session was set up: the
    /// session goes.
    async fn media_unless_taken(&self, h: Handled, role: Option<media::MediaRole>) -> Handled {
        if let (Some(role), false) = (role, matches!(h, Handled::Taken)) {
            self.media_failed(&role).await;
        }
        h
    }

    /// An INVITE or MESSAGE to one of our accounts: one branch per live binding;
    /// with nobody registered, the offline hooks decide (push, park, store).
    async fn fork_to_account(
        self: &Arc<Self>,
        req: &Request<'_>,
        upstream: Upstream,
        account: &crate::model::AccountCredentials,
        onward: Onward<'_>,
    ) -> Handled {
        let Onward {
            hash,
            max_forwards,
            counted_call,
            media,
            local_sender,
        } = onward;
        let Request {
            msg,
            origin,
            top_via,
            ..
        } = *req;
        let method = msg.method().unwrap_or("");
        let reply = |code: u16, reason: &str| {
            Handled::Reply(
                ResponseBuilder::new(msg, code, reason, top_via, Some(&new_tag())).reply(),
            )
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
            let Some(hop) = self.binding_hop(b) else {
                continue;
            };
            let branch = format!("z9hG4bK{hash}.{}", new_tag());
            let rr = if record {
                self.routing.record_routes(origin, hop)
            } else {
                Vec::new()
            };
            let bytes = msg::forward_request(
                msg,
                &msg::Forward {
                    request_uri: Some(&b.contact_uri),
                    via: &self.routing.via(hop, &branch),
                    record_route: &rr,
                    pop_routes: 0,
                    max_forwards: max_forwards - 1,
                    extra: &[],
                    consume_realm: Some(self.routing.realm()),
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
            let forked = forked_request(msg, account.id, Vec::new(), local_sender);
            let (code, reason) = hooks.no_live_binding(&forked).await;
            return reply(code, reason);
        }
        let live: Vec<String> = branches.iter().filter_map(|b| b.instance.clone()).collect();
        tracing::info!(
            call_id = %media::call_ref(msg.call_id().unwrap_or("")),
            method,
            account = account.id,
            devices = branches.len(),
            "forked to the account's registered devices"
        );
        let forked = forked_request(msg, account.id, live, local_sender);
        if !invite {
            let outgoing = counted_call.clone();
            tokio::spawn(async move { hooks.forked(&forked).await });
            return self.start_fork(
                req,
                upstream,
                branches,
                Forking {
                    invite: false,
                    outgoing_call: outgoing,
                    setup: None,
                    media: None,
                },
            );
        }
        let outgoing = counted_call.clone();
        let setup = Some(CallSetup {
            account: account.id,
            template: BranchTemplate {
                hash: hash.to_owned(),
                max_forwards: max_forwards - 1,
                caller: Hop {
                    transport: origin.transport,
                    addr: origin.source,
                    local: self
                        .routing
                        .local_on(origin.transport, origin.local)
                        .unwrap_or(origin.local),
                },
            },
            request: Arc::new(forked),
            pushes,
            forward,
        });
        self.start_fork(
            req,
            upstream,
            branches,
            Forking {
                invite,
                outgoing_call: outgoing,
                setup,
                media,
            },
        )
    }

    /// Devices that register while a call to their account rings join it as new
    /// branches (the park-and-push flow relies on this); devices revoked while it
    /// rings have their branch cancelled.
    pub(crate) async fn registration_loop(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<crate::registrar::Registered>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        let mut revoked = self.registrar.subscribe_revocations();
        loop {
            let (account, input) = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => match ev {
                    Ok(ev) => (ev.account, Input::Registered(Box::new(ev.binding))),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "registration events lagged");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
                ev = revoked.recv() => match ev {
                    Ok(ev) => (ev.account, Input::Revoked(ev.instance_id)),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "revocation events lagged");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            let targets: Vec<mpsc::Sender<Input>> = match self.calls.lock() {
                Ok(c) => c.of_account(account),
                Err(_) => Vec::new(),
            };
            for t in targets {
                let input = match &input {
                    Input::Registered(b) => Input::Registered(b.clone()),
                    Input::Revoked(i) => Input::Revoked(i.clone()),
                    _ => continue,
                };
                let _ = t.try_send(input);
            }
        }
    }

    /// Sends a request for a number that is not ours to the gateway or server the dial
    /// plan names (one branch, Record-Route so the dialog stays with us).
    async fn route_offnet(
        self: &Arc<Self>,
        req: &Request<'_>,
        upstream: Upstream,
        identity: &str,
        onward: Onward<'_>,
    ) -> Handled {
        let Onward {
            hash,
            max_forwards,
            counted_call: outgoing,
            media,
            ..
        } = onward;
        let Request {
            msg,
            origin,
            top_via,
            ..
        } = *req;
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
        let Some(hop) = self.routing.udp_hop(&host, port, origin.local).await else {
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
            self.routing.record_routes(origin, hop)
        } else {
            Vec::new()
        };
        let bytes = msg::forward_request(
            msg,
            &msg::Forward {
                request_uri: Some(&uri),
                via: &self.routing.via(hop, &branch),
                record_route: &rr,
                pop_routes: 0,
                max_forwards: max_forwards - 1,
                extra: &[],
                consume_realm: Some(self.routing.realm()),
            },
        );
        self.start_fork(
            req,
            upstream,
            vec![NewBranch {
                hop,
                id: branch,
                bytes,
                instance: None,
            }],
            Forking {
                invite: msg.method() == Some("INVITE"),
                outgoing_call: outgoing,
                setup: None,
                media,
            },
        )
    }

    /// Stateless forwarding of an ACK for a 2xx (RFC 3261 16.11 allows it; the ACK is
    /// end to end and has no transaction here).
    pub(crate) async fn forward_ack(&self, msg: &Message<'_>, origin: Origin) {
        let max_forwards = max_forwards(msg);
        if max_forwards == 0 {
            return;
        }
        let routes = self.routing.own_routes(msg, origin.local);
        if routes.popped == 0 {
            return;
        }
        let Ok(route) = self.routing.in_dialog(&routes, origin) else {
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
        // The ACK of a late offer carries the answer.
        let (body, _) = self.media_in_dialog(msg, origin.source).await;
        let parsed = body.as_deref().and_then(|b| Message::parse(b).ok());
        let bytes = self.in_dialog_bytes(
            parsed.as_ref().unwrap_or(msg),
            &route,
            &branch,
            max_forwards,
        );
        self.flows
            .send(route.hop.transport, route.hop.addr, bytes)
            .await;
    }
}
