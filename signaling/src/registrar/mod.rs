//! Multi-device registrar (RFC 3261 section 10, RFC 5626 instances and reg-ids,
//! digest authentication per RFC 7616 / RFC 8760).
//!
//! [`core::Registrar`] is the sans-IO state; this module is the async glue that looks
//! up accounts and devices in the store, writes bindings through, closes replaced
//! flows and builds the responses.

pub mod config;
pub mod core;
pub mod digest;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::SipMetrics;
use crate::model::{AccountCredentials, AccountId, Binding};
use crate::sip::grammar::{self, AuthParams, SipUri};
use crate::sip::message::{new_tag, HeaderName, Message, Reply, ResponseBuilder};
use crate::sip::transport::{Flows, Transport};
use crate::sip::Origin;

use self::core::{AuthDecision, ContactRequest, ContactsSpec, RegisterRequest, Registrar, StoreOp};
pub use config::RegistrarConfig;
pub use store::{RegistrarStore, StoreFailure, StoreFuture};

/// Shows only the network part of an address in logs (personal data), unless the
/// operator turned personal data in logs on.
/// A device instance for the log: its last 6 characters (enough to tell a user's
/// devices apart, not to name one).
pub(crate) fn redact_instance(instance: &str) -> String {
    let tail: String = instance
        .chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// A Call-ID for the log: the part before `@` (which often names a host address),
/// at most 24 characters.
pub(crate) fn call_ref(call_id: &str) -> &str {
    let id = call_id.split('@').next().unwrap_or("");
    let end = id.char_indices().nth(24).map_or(id.len(), |(i, _)| i);
    id.get(..end).unwrap_or("")
}

pub(crate) fn redact(addr: std::net::IpAddr) -> String {
    if crate::log_pii() {
        return addr.to_string();
    }
    match addr {
        std::net::IpAddr::V4(v4) => {
            let [a, b, _, _] = v4.octets();
            format!("{a}.{b}.x.x")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}::x", s[0], s[1])
        }
    }
}

struct Shared {
    realm: String,
    core: Mutex<Registrar>,
    store: Arc<dyn RegistrarStore>,
    flows: Arc<Flows>,
    /// Wakes the expiry task when the earliest expiry may have moved.
    expiry_changed: Notify,
    /// Devices revoked through the API (see [`RegistrarHandle::subscribe_revocations`]).
    revoked: tokio::sync::broadcast::Sender<Revoked>,
    metrics: SipMetrics,
    clock: Clock,
}

/// A device was revoked (its bindings dropped at once): a call ringing it cancels
/// its branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub account: AccountId,
    pub instance_id: String,
}

/// Which digest exchange (RFC 3261 22.2 and 22.3): a registrar's 401 with
/// WWW-Authenticate answered in Authorization, or a proxy's 407 with
/// Proxy-Authenticate answered in Proxy-Authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRole {
    Registrar,
    Proxy,
}

impl AuthRole {
    /// The header that carries the credentials.
    pub fn credentials_header(self) -> HeaderName<'static> {
        match self {
            AuthRole::Registrar => HeaderName::Authorization,
            AuthRole::Proxy => HeaderName::ProxyAuthorization,
        }
    }

    fn label(self) -> &'static str {
        match self {
            AuthRole::Registrar => "registrar",
            AuthRole::Proxy => "proxy",
        }
    }

    fn challenge(self) -> (u16, &'static str, &'static str) {
        match self {
            AuthRole::Registrar => (401, "Unauthorized", "WWW-Authenticate"),
            AuthRole::Proxy => (407, "Proxy Authentication Required", "Proxy-Authenticate"),
        }
    }
}

/// A binding was created or refreshed by a successful REGISTER (see
/// [`RegistrarHandle::subscribe_registrations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub account: AccountId,
    pub instance_id: String,
    pub binding: Binding,
}

/// Handle the HTTP API and tests use to look at and drop bindings.
#[derive(Clone)]
pub struct RegistrarHandle {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for RegistrarHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrarHandle").finish_non_exhaustive()
    }
}

/// Errors starting the registrar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrarError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("loading stored bindings: {0}")]
    Store(String),
}

impl RegistrarHandle {
    /// Builds the registrar: loads the stored bindings (deleting expired ones) and
    /// starts its expiry task, which runs until `shutdown` is cancelled. `flows` is
    /// where requests to devices go out and replaced flows are closed.
    pub async fn start(
        cfg: &RegistrarConfig,
        realm: &str,
        store: Arc<dyn RegistrarStore>,
        flows: Arc<Flows>,
        metrics: SipMetrics,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Result<(RegistrarHandle, tokio::task::JoinHandle<()>), RegistrarError> {
        cfg.validate().map_err(RegistrarError::Config)?;
        let secret = if cfg.nonce_secret.is_empty() {
            rand::random::<[u8; 32]>().to_vec()
        } else {
            cfg.nonce_secret.as_bytes().to_vec()
        };
        let mut core = Registrar::new(cfg.clone(), realm.to_owned(), secret);
        let stored = store
            .load_bindings()
            .await
            .map_err(|e| RegistrarError::Store(e.to_string()))?;
        let expired = core.restore(stored, clock.unix_now());
        for b in expired {
            store
                .delete_binding(b.account_id, &b.instance_id, b.reg_id)
                .await
                .map_err(|e| RegistrarError::Store(e.to_string()))?;
        }
        let handle = RegistrarHandle {
            inner: Arc::new(Shared {
                realm: realm.to_owned(),
                core: Mutex::new(core),
                store,
                flows,
                expiry_changed: Notify::new(),
                revoked: tokio::sync::broadcast::channel(256).0,
                metrics,
                clock,
            }),
        };
        let task = tokio::spawn(handle.clone().expiry_loop(shutdown));
        Ok((handle, task))
    }

    /// Removes bindings as they expire.
    async fn expiry_loop(self, shutdown: CancellationToken) {
        loop {
            let next = self.expire().await;
            let wait = match next {
                Some(t) => Duration::from_secs(
                    u64::try_from(t - self.inner.clock.unix_now())
                        .unwrap_or(0)
                        .max(1),
                ),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.expiry_changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Events for every binding a successful REGISTER creates or refreshes (not for
    /// unregistrations), sent when the binding is stored and the 200 OK has been
    /// handed to the transport. Use: a parked call's new branch to a device that
    /// registered after its push, delivery of deferred messages. A subscriber that falls more than
    /// [`core::REGISTERED_EVENTS`] behind gets `RecvError::Lagged`.
    pub fn subscribe_registrations(&self) -> tokio::sync::broadcast::Receiver<Registered> {
        match self.inner.core.lock() {
            Ok(c) => c.registered.subscribe(),
            Err(p) => p.into_inner().registered.subscribe(),
        }
    }

    /// Events for every device revoked by [`Self::revoke_instance`].
    pub fn subscribe_revocations(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.inner.revoked.subscribe()
    }

    /// Sets the RFC 8599 push services (`pn-provider` values) the server can use; a
    /// REGISTER naming another gets 555. Unset (the default), any is stored.
    pub fn set_push_providers(&self, providers: &[&str]) {
        if let Ok(mut c) = self.inner.core.lock() {
            c.set_push_providers(Some(providers.iter().map(|p| p.to_string()).collect()));
        }
    }

    /// Live (unexpired) bindings of an account, from memory.
    pub fn bindings(&self, account: AccountId) -> Vec<Binding> {
        match self.inner.core.lock() {
            Ok(c) => c.bindings(account, self.inner.clock.unix_now()),
            Err(_) => Vec::new(),
        }
    }

    /// Drops every binding of that instance at once, deletes them from the store and
    /// closes the TCP/TLS flow it registered over.
    pub async fn revoke_instance(&self, account: AccountId, instance_id: &str) {
        let removed = match self.inner.core.lock() {
            Ok(mut c) => c.revoke_instance(account, instance_id),
            Err(_) => Vec::new(),
        };
        for b in &removed {
            self.close_flow(&b.transport, &b.source);
        }
        // No subscriber is fine.
        let _ = self.inner.revoked.send(Revoked {
            account,
            instance_id: instance_id.to_owned(),
        });
        if let Err(e) = self
            .inner
            .store
            .delete_instance_bindings(account, instance_id)
            .await
        {
            tracing::error!(error = %e, "deleting revoked bindings from the store failed");
        }
        self.inner.expiry_changed.notify_one();
    }

    /// Sends a request to a registered device the way RFC 5626 wants it: over the
    /// TCP/TLS connection the binding was registered on (never a new connection, which
    /// a device behind NAT could not accept), or to the UDP source address. Returns
    /// false when that flow is gone.
    pub async fn send_to(&self, binding: &Binding, bytes: Vec<u8>) -> bool {
        let (Some(t), Ok(addr)) = (
            Transport::parse(&binding.transport),
            binding.source.parse::<SocketAddr>(),
        ) else {
            return false;
        };
        self.inner.flows.send(t, addr, bytes).await
    }

    fn close_flow(&self, transport: &str, remote: &str) {
        if let (Some(t), Ok(addr)) = (Transport::parse(transport), remote.parse::<SocketAddr>()) {
            if t.reliable() {
                self.inner.flows.close(t, addr);
            }
        }
    }

    /// Removes expired bindings (memory and store); returns when the next one expires.
    pub(crate) async fn expire(&self) -> Option<i64> {
        let (expired, next) = match self.inner.core.lock() {
            Ok(mut c) => {
                let e = c.handle_timeout(self.inner.clock.unix_now());
                (e, c.poll_timeout())
            }
            Err(_) => (Vec::new(), None),
        };
        for b in expired {
            tracing::debug!(account = b.account_id, "binding expired");
            if let Err(e) = self
                .inner
                .store
                .delete_binding(b.account_id, &b.instance_id, b.reg_id)
                .await
            {
                tracing::error!(error = %e, "deleting an expired binding failed");
            }
        }
        next
    }

    /// Handles a validated REGISTER; returns the response bytes and the bindings it
    /// saved. `top_via` is the request's top Via with `received`/`rport` filled in.
    /// The caller sends the response first and then hands the bindings to
    /// [`RegistrarHandle::announce`], so that a device never gets a parked call's
    /// INVITE or a deferred MESSAGE before the 200 OK to its REGISTER.
    pub(crate) async fn handle_register(
        &self,
        msg: &Message<'_>,
        origin: Origin,
        top_via: &str,
    ) -> (Reply, Vec<Registered>) {
        let mut saved = Vec::new();
        let bytes = self
            .handle_register_inner(msg, origin, top_via, &mut saved)
            .await;
        (bytes, saved)
    }

    /// Publishes bindings saved by [`Self::handle_register`] to the subscribers of
    /// [`Self::subscribe_registrations`].
    pub(crate) fn announce(&self, saved: Vec<Registered>) {
        if saved.is_empty() {
            return;
        }
        if let Ok(c) = self.inner.core.lock() {
            for ev in saved {
                // No subscriber is fine.
                let _ = c.registered.send(ev);
            }
        }
    }

    async fn handle_register_inner(
        &self,
        msg: &Message<'_>,
        origin: Origin,
        top_via: &str,
        saved: &mut Vec<Registered>,
    ) -> Reply {
        let now = self.inner.clock.unix_now();
        let reply = |code: u16, reason: &str| {
            ResponseBuilder::new(msg, code, reason, top_via, Some(&new_tag()))
        };
        // The AOR: the To URI's user (login, username or phone number).
        let Some(to) = msg.to() else {
            return reply(400, "Bad Request").reply();
        };
        let Some(to_uri) = SipUri::parse(to.uri) else {
            return reply(416, "Unsupported URI Scheme").reply();
        };
        let Some(identity) = to_uri.user_decoded() else {
            return reply(404, "Not Found").reply();
        };
        // User parameters (";...") in the user part are not part of the identity.
        let identity = identity.split(';').next().unwrap_or("").to_owned();
        let account = match self
            .authenticate(msg, AuthRole::Registrar, &identity, origin, top_via)
            .await
        {
            Ok(a) => a,
            Err(r) => return r,
        };

        // Contacts.
        let contacts = match parse_contacts(msg) {
            Ok(c) => c,
            Err((code, reason)) => return reply(code, reason).reply(),
        };
        let unsupported = match self.inner.core.lock() {
            Ok(c) => c.unsupported_push(&contacts).map(str::to_owned),
            Err(_) => return reply(500, "Server Internal Error").reply(),
        };
        if let Some(p) = unsupported {
            tracing::info!(
                account = account.id,
                provider = %p.chars().take(32).collect::<String>(),
                "REGISTER names a push service that is not configured"
            );
            return reply(555, "Push Notification Service Not Supported").reply();
        }
        let expires_header = match msg.header(HeaderName::Expires) {
            Some(e) => match grammar::decimal(e, u32::MAX as u64) {
                Some(v) => Some(v as u32),
                None => return reply(400, "Bad Request").reply(),
            },
            None => None,
        };
        let mut classes: Vec<(String, &'static str)> = Vec::new();
        if let ContactsSpec::List(list) = &contacts {
            let mut checked: Vec<&str> = Vec::new();
            for c in list {
                if checked.contains(&c.instance_id.as_str()) {
                    continue;
                }
                match self
                    .inner
                    .store
                    .find_device(account.id, &c.instance_id)
                    .await
                {
                    Ok(Some(d)) => {
                        checked.push(&c.instance_id);
                        classes.push((c.instance_id.clone(), d.class.as_str()));
                    }
                    Ok(None) => {
                        tracing::info!(
                            account = account.id,
                            "REGISTER from an instance that is not an authorised device"
                        );
                        return reply(403, "Device Not Authorized").reply();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "device lookup failed");
                        return reply(500, "Server Internal Error").reply();
                    }
                }
            }
        }
        let (call_id, cseq) = match (msg.call_id(), msg.cseq()) {
            (Some(c), Some((n, _))) => (c.to_owned(), n),
            _ => return reply(400, "Bad Request").reply(),
        };
        let req = RegisterRequest {
            account: account.id,
            call_id,
            cseq,
            contacts,
            expires_header,
            transport: origin.transport.as_str().to_owned(),
            source: origin.source.to_string(),
            local: origin.local.to_string(),
            user_agent: msg
                .header(HeaderName::UserAgent)
                .map(|u| u.chars().take(200).collect()),
        };
        // The account's flows before this REGISTER, to tell the log whether a binding
        // is new, refreshed (same Call-ID) or replaced (a new one for the flow).
        let (outcome, before) = match self.inner.core.lock() {
            Ok(mut c) => {
                let before: Vec<(String, u32, String)> = c
                    .bindings(account.id, now)
                    .into_iter()
                    .map(|b| (b.instance_id, b.reg_id, b.call_id))
                    .collect();
                (c.register(&req, now), before)
            }
            Err(_) => return reply(500, "Server Internal Error").reply(),
        };
        for op in &outcome.ops {
            let r = match op {
                StoreOp::Save(b) => self.inner.store.save_binding(b).await,
                StoreOp::Delete {
                    account,
                    instance_id,
                    reg_id,
                } => {
                    self.inner
                        .store
                        .delete_binding(*account, instance_id, *reg_id)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "writing a binding to the store failed");
                return reply(500, "Server Internal Error").reply();
            }
            match op {
                StoreOp::Save(b) => tracing::info!(
                    call_id = %call_ref(&b.call_id),
                    account = b.account_id,
                    instance = %redact_instance(&b.instance_id),
                    change = %before
                        .iter()
                        .find(|(i, r, _)| *i == b.instance_id && *r == b.reg_id)
                        .map_or("added", |(_, _, c)| if *c == b.call_id {
                            "refreshed"
                        } else {
                            "replaced"
                        }),
                    reg_id = b.reg_id,
                    transport = %b.transport,
                    source = %redact(origin.source.ip()),
                    expires_in = b.expires_at.saturating_sub(now),
                    "registration saved"
                ),
                StoreOp::Delete {
                    account,
                    instance_id,
                    reg_id,
                } => tracing::info!(
                    call_id = %call_ref(&req.call_id),
                    account,
                    instance = %redact_instance(instance_id),
                    reg_id,
                    "registration removed"
                ),
            }
        }
        // The device's RFC 8599 parameters outlive the binding (it is pushed when
        // offline); a REGISTER without them withdraws them. The caller announces the
        // binding once the 200 OK is sent.
        for op in &outcome.ops {
            if let StoreOp::Save(b) = op {
                if let Err(e) = self
                    .inner
                    .store
                    .set_device_push(b.account_id, &b.instance_id, b.push.as_ref())
                    .await
                {
                    tracing::error!(error = %e, "storing a device's push parameters failed");
                }
                if let Some((_, class)) = classes.iter().find(|(i, _)| *i == b.instance_id) {
                    self.inner.metrics.registration(class);
                }
                saved.push(Registered {
                    account: b.account_id,
                    instance_id: b.instance_id.clone(),
                    binding: (**b).clone(),
                });
            }
        }
        for f in &outcome.close {
            tracing::info!(
                account = account.id,
                "closing the flow of a replaced binding"
            );
            self.close_flow(&f.transport, &f.remote);
        }
        if !outcome.ops.is_empty() {
            self.inner.expiry_changed.notify_one();
        }
        let mut r = reply(outcome.code, outcome.reason);
        if let Some(min) = outcome.min_expires {
            r = r.header("Min-Expires", &min.to_string());
        }
        if outcome.code == 200 {
            // RFC 3261 10.3 step 8: the 200 carries a Date.
            r = r.header("Date", &crate::sip::message::http_date(now));
            let outbound = outcome.contacts.iter().any(|(b, _)| b.reg_id > 0)
                && msg
                    .list(HeaderName::Supported)
                    .unwrap_or_default()
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case("outbound"));
            if outbound {
                r = r.header("Require", "outbound");
                // RFC 5626 5.4: how often the flow is to be kept alive (STUN on UDP,
                // answered on the SIP port; CRLFCRLF on streams). UDP NAT bindings
                // often last only 30 s.
                let secs = if origin.transport.reliable() {
                    "120"
                } else {
                    "29"
                };
                r = r.header("Flow-Timer", secs);
            }
            // RFC 8599 4.1.2: the push service the device asked for is supported.
            if let ContactsSpec::List(list) = &req.contacts {
                if let Some(p) = list
                    .iter()
                    .find_map(|c| c.pn_prid.as_ref().and(c.pn_provider.as_deref()))
                {
                    r = r.header("Feature-Caps", &format!("*;+sip.pns=\"{p}\""));
                }
            }
            for (b, left) in &outcome.contacts {
                let mut v = format!(
                    "<{}>;expires={};+sip.instance=\"<{}>\"",
                    b.contact_uri, left, b.instance_id
                );
                if b.reg_id > 0 {
                    v.push_str(&format!(";reg-id={}", b.reg_id));
                }
                r = r.header("Contact", &v);
            }
        }
        r.reply()
    }

    /// Digest authentication of `identity` (login, username or phone number) for a
    /// request, in the registrar's or the proxy's role: the one place where nonces,
    /// nonce-count replay, failures per source and bans apply. `Ok` with the account
    /// when the credentials for our realm are right; otherwise the response to send
    /// (a challenge, or 403 for a banned source or an exhausted retry).
    pub(crate) async fn authenticate(
        &self,
        msg: &Message<'_>,
        role: AuthRole,
        identity: &str,
        origin: Origin,
        top_via: &str,
    ) -> Result<AccountCredentials, Reply> {
        let now = self.inner.clock.unix_now();
        let ip = origin.source.ip();
        let reply = |code: u16, reason: &str| {
            ResponseBuilder::new(msg, code, reason, top_via, Some(&new_tag())).reply()
        };
        if self
            .inner
            .core
            .lock()
            .map(|c| c.is_banned(ip, now))
            .unwrap_or(false)
        {
            return Err(reply(403, "Forbidden"));
        }
        let auths: Vec<AuthParams<'_>> = msg
            .headers_named(role.credentials_header())
            .filter_map(|h| AuthParams::parse(&h.value))
            .collect();
        // Only credentials for our realm are worth a database lookup.
        let has_ours = auths.iter().any(|a| {
            a.scheme.eq_ignore_ascii_case("Digest")
                && a.get("realm") == Some(self.inner.realm.as_str())
        });
        if !has_ours {
            return Err(self.challenge(msg, role, origin, top_via, now, false));
        }
        let method = msg.method().unwrap_or("");
        let account = match self.inner.store.find_account(identity).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed");
                return Err(reply(500, "Server Internal Error"));
            }
        };
        let decision = match self.inner.core.lock() {
            Ok(mut c) => c.authenticate(&auths, method, account.as_ref(), ip, now),
            Err(_) => return Err(reply(500, "Server Internal Error")),
        };
        match (decision, account) {
            (AuthDecision::Accept, Some(a)) => Ok(a),
            (AuthDecision::Challenge { stale }, _) => {
                Err(self.challenge(msg, role, origin, top_via, now, stale))
            }
            (AuthDecision::Retry { .. }, _) => {
                self.inner.metrics.auth_failure(role.label());
                Err(self.challenge(msg, role, origin, top_via, now, false))
            }
            (AuthDecision::Forbidden { banned }, _) => {
                self.inner.metrics.auth_failure(role.label());
                if banned {
                    self.inner.metrics.ban();
                    tracing::warn!(
                        call_id = %call_ref(msg.call_id().unwrap_or("")),
                        source = %redact(ip),
                        role = ?role,
                        "source banned after repeated digest authentication failures"
                    );
                }
                Err(reply(403, "Forbidden"))
            }
            (AuthDecision::Accept, None) => Err(reply(403, "Forbidden")),
        }
    }

    /// A 401 (407) with one challenge per algorithm, in `digest_algorithms` order
    /// (RFC 8760). Clients on UDP, TCP and TLS (baresip, Linphone, sipp) answer the
    /// first challenge; the browsers' SIP library on WebSocket (JsSIP 3.13 keeps only
    /// the last WWW-Authenticate or Proxy-Authenticate header it parses) the last:
    /// over WS/WSS the list is reversed, so that both kinds read the algorithm listed
    /// first (and a client that reads every challenge has the same choice).
    fn challenge(
        &self,
        msg: &Message<'_>,
        role: AuthRole,
        origin: Origin,
        top_via: &str,
        now: i64,
        stale: bool,
    ) -> Reply {
        let random: [u8; 8] = rand::random();
        let mut challenges = match self.inner.core.lock() {
            Ok(c) => c.challenges(now, random, stale),
            Err(_) => Vec::new(),
        };
        if matches!(origin.transport, Transport::Ws | Transport::Wss) {
            challenges.reverse();
        }
        let (code, reason, header) = role.challenge();
        let mut r = ResponseBuilder::new(msg, code, reason, top_via, Some(&new_tag()));
        for c in &challenges {
            r = r.header(header, c);
        }
        r.reply()
    }

    /// An account by an identity a caller dialled (see
    /// [`RegistrarStore::find_account_dialled`]).
    pub(crate) async fn find_account_dialled(
        &self,
        identity: &str,
        country_code: Option<&str>,
    ) -> Result<Option<AccountCredentials>, StoreFailure> {
        self.inner
            .store
            .find_account_dialled(identity, country_code)
            .await
    }
}

/// An RFC 8599 parameter of a Contact: a SIP URI parameter (RFC 8599 4.1.1, percent
/// decoded) or, from clients that put it there, a Contact header parameter.
fn pn_value(
    na: &grammar::NameAddr<'_>,
    name: &str,
    max: usize,
) -> Result<Option<String>, (u16, &'static str)> {
    let from_uri = SipUri::parse(na.uri).and_then(|u| {
        u.params
            .value(name)
            .map(|v| grammar::percent_decode(v).map(|d| d.into_owned()))
    });
    let v = match from_uri {
        Some(Some(v)) => v,
        Some(None) => return Err((400, "Bad Push Parameter")),
        None => match na.params.value(name) {
            Some(v) => v.to_owned(),
            None => return Ok(None),
        },
    };
    if v.is_empty() || v.len() > max || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err((400, "Bad Push Parameter"));
    }
    Ok(Some(v))
}

/// Reads the Contact list of a REGISTER (RFC 3261 10.3 step 6, RFC 5626 6).
fn parse_contacts(msg: &Message<'_>) -> Result<ContactsSpec, (u16, &'static str)> {
    let list = msg
        .list(HeaderName::Contact)
        .map_err(|_| (400, "Bad Request"))?;
    if list.is_empty() {
        return Ok(ContactsSpec::Fetch);
    }
    if list.contains(&"*") {
        if list.len() != 1 {
            return Err((400, "Wildcard Contact Must Be Alone"));
        }
        return Ok(ContactsSpec::Star);
    }
    if list.len() > 16 {
        return Err((400, "Too Many Contacts"));
    }
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let na = grammar::name_addr(c).ok_or((400, "Bad Request"))?;
        let instance = na
            .params
            .value("+sip.instance")
            .ok_or((403, "Device Not Authorized"))?;
        let instance = instance
            .strip_prefix('<')
            .and_then(|i| i.strip_suffix('>'))
            .unwrap_or(instance);
        // Devices are stored under the canonical form (lower-case UUID).
        let instance =
            crate::store::canonical_instance_id(instance).ok_or((403, "Device Not Authorized"))?;
        let reg_id = match na.params.value("reg-id") {
            Some(r) => match grammar::decimal(r, (1u64 << 31) - 1) {
                Some(v) if v > 0 => v as u32,
                _ => return Err((400, "Bad reg-id")),
            },
            None => 0,
        };
        let expires = match na.params.get("expires") {
            Some(Some(e)) => {
                Some(grammar::decimal(e, u32::MAX as u64).ok_or((400, "Bad Request"))? as u32)
            }
            Some(None) => return Err((400, "Bad Request")),
            None => None,
        };
        if na.uri.len() > 512 {
            return Err((400, "Bad Request"));
        }
        out.push(ContactRequest {
            uri: na.uri.to_owned(),
            instance_id: instance,
            reg_id,
            expires,
            pn_provider: pn_value(&na, "pn-provider", 32)?,
            pn_prid: pn_value(&na, "pn-prid", 4096)?,
            pn_param: pn_value(&na, "pn-param", 256)?,
        });
    }
    Ok(ContactsSpec::List(out))
}
