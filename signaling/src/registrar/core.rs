//! Sans-IO registrar core: authentication state, the failed-auth ban list, the
//! in-memory binding table and its expiry timers.
//!
//! Calling contract: the driver parses the REGISTER, looks up the account and devices
//! in the store (async), then calls [`Registrar::authenticate`] and
//! [`Registrar::register`] with the current Unix time. The core changes memory and
//! returns the store writes and flow closures the driver must perform before it sends
//! the response. [`Registrar::poll_timeout`] tells when the next binding expires;
//! [`Registrar::handle_timeout`] removes expired bindings (a heap, not a scan).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;

use crate::model::{AccountCredentials, AccountId, Binding};
use crate::registrar::digest::{self, AuthFailure, NonceCounts, NonceKey};
use crate::registrar::RegistrarConfig;
use crate::sip::grammar::AuthParams;

/// One Contact of a REGISTER, already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRequest {
    pub uri: String,
    /// `+sip.instance` without quotes and angle brackets.
    pub instance_id: String,
    pub reg_id: u32,
    /// The contact's `expires` parameter.
    pub expires: Option<u32>,
    /// RFC 8599 push parameters (kept for the push notifier).
    pub pn_provider: Option<String>,
    pub pn_prid: Option<String>,
    pub pn_param: Option<String>,
}

/// What the REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactsSpec {
    /// No Contact: fetch the current bindings.
    Fetch,
    /// `Contact: *` (only valid with `Expires: 0`).
    Star,
    List(Vec<ContactRequest>),
}

/// A REGISTER after authentication and device checks.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub account: AccountId,
    pub call_id: String,
    pub cseq: u32,
    pub contacts: ContactsSpec,
    pub expires_header: Option<u32>,
    pub transport: String,
    pub source: String,
    pub local: String,
    pub user_agent: Option<String>,
}

/// A TCP/TLS flow to close (a replaced or revoked binding's connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub transport: String,
    pub remote: String,
}

/// Store writes the driver performs (write-through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Save(Box<Binding>),
    Delete {
        account: AccountId,
        instance_id: String,
        reg_id: u32,
    },
}

/// Result of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOutcome {
    pub code: u16,
    pub reason: &'static str,
    /// For 423.
    pub min_expires: Option<u32>,
    /// Current bindings of the account (for the 200 OK Contact list), with seconds left.
    pub contacts: Vec<(Binding, u32)>,
    pub ops: Vec<StoreOp>,
    pub close: Vec<Flow>,
}

impl RegisterOutcome {
    fn error(code: u16, reason: &'static str) -> RegisterOutcome {
        RegisterOutcome {
            code,
            reason,
            min_expires: None,
            contacts: Vec::new(),
            ops: Vec::new(),
            close: Vec::new(),
        }
    }
}

/// Decision on a REGISTER's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    Accept,
    /// Answer 401 with fresh challenges (`stale` when the nonce was ours but old).
    Challenge {
        stale: bool,
    },
    /// Answer 401 with a fresh challenge: a wrong password, counted against the source.
    Retry {
        banned: bool,
    },
    /// Answer 403: bad credentials counted against the source; `banned` when this
    /// failure started a ban.
    Forbidden {
        banned: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct FailState {
    window_start: i64,
    count: u32,
    banned_until: i64,
}

type Key = (AccountId, String, u32);

/// Registration events buffered per subscriber before the slowest one lags.
pub const REGISTERED_EVENTS: usize = 1024;

/// The registrar state.
#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    algorithms: Vec<digest::Algorithm>,
    key: NonceKey,
    counts: NonceCounts,
    failures: HashMap<IpAddr, FailState>,
    bindings: HashMap<AccountId, Vec<Binding>>,
    expiry: BinaryHeap<Reverse<(i64, AccountId, String, u32)>>,
    /// RFC 8599 push services that can be used (`None`: not checked, every
    /// `pn-provider` is stored).
    push_providers: Option<Vec<String>>,
    /// Where the driver announces new and refreshed bindings. Kept here, not used by
    /// the core, because the core is what the server hands the driver at start.
    pub(crate) registered: tokio::sync::broadcast::Sender<crate::registrar::Registered>,
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig, realm: String, secret: Vec<u8>) -> Registrar {
        let key = NonceKey::new(secret, realm, cfg.nonce_ttl);
        let counts = NonceCounts::new(cfg.max_tracked_nonces);
        let algorithms = cfg.algorithms();
        Registrar {
            cfg,
            algorithms,
            key,
            counts,
            failures: HashMap::new(),
            bindings: HashMap::new(),
            expiry: BinaryHeap::new(),
            push_providers: None,
            registered: tokio::sync::broadcast::channel(REGISTERED_EVENTS).0,
        }
    }

    /// Sets the RFC 8599 push services that can be used; a REGISTER naming another
    /// in `pn-provider` is refused with 555 ([`Registrar::unsupported_push`]).
    pub fn set_push_providers(&mut self, providers: Option<Vec<String>>) {
        self.push_providers = providers;
    }

    /// The first `pn-provider` of the Contacts that is not a usable push service
    /// (RFC 8599 4.1.2: the REGISTER gets 555 Push Notification Service Not Supported).
    pub fn unsupported_push<'c>(&self, contacts: &'c ContactsSpec) -> Option<&'c str> {
        let (Some(ok), ContactsSpec::List(list)) = (&self.push_providers, contacts) else {
            return None;
        };
        list.iter()
            .filter_map(|c| c.pn_provider.as_deref())
            .find(|p| !ok.iter().any(|s| s.eq_ignore_ascii_case(p)))
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// `WWW-Authenticate` values for a 401.
    pub fn challenges(&self, now: i64, random: [u8; 8], stale: bool) -> Vec<String> {
        digest::challenges(&self.key, &self.algorithms, now, random, stale)
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr, now: i64) -> bool {
        self.failures.get(&ip).is_some_and(|f| f.banned_until > now)
    }

    /// Counts a failed authentication; returns true when it starts a ban.
    pub fn record_failure(&mut self, ip: IpAddr, now: i64) -> bool {
        if !self.failures.contains_key(&ip) && self.failures.len() >= self.cfg.max_tracked_sources {
            // Bounded: forget sources that are neither banned nor inside a window.
            let window = i64::from(self.cfg.auth_fail_window);
            self.failures
                .retain(|_, f| f.banned_until > now || now - f.window_start < window);
            if self.failures.len() >= self.cfg.max_tracked_sources {
                return false;
            }
        }
        let window = i64::from(self.cfg.auth_fail_window);
        let st = self.failures.entry(ip).or_insert(FailState {
            window_start: now,
            count: 0,
            banned_until: 0,
        });
        if now - st.window_start >= window {
            st.window_start = now;
            st.count = 0;
        }
        st.count = st.count.saturating_add(1);
        if st.count >= self.cfg.auth_fail_limit && st.banned_until <= now {
            st.banned_until = now + i64::from(self.cfg.auth_ban_secs);
            st.count = 0;
            st.window_start = now;
            return true;
        }
        false
    }

    /// Checks the Authorization values of a REGISTER against the account the To URI
    /// resolved to (`None` when it resolved to no account).
    pub fn authenticate(
        &mut self,
        authorizations: &[AuthParams<'_>],
        method: &str,
        account: Option<&AccountCredentials>,
        source: IpAddr,
        now: i64,
    ) -> AuthDecision {
        // Pick the credentials for our realm (RFC 3261 22.4: several may be present).
        let ours: Vec<&AuthParams<'_>> = authorizations
            .iter()
            .filter(|a| {
                a.scheme.eq_ignore_ascii_case("Digest") && a.get("realm") == Some(self.key.realm())
            })
            .collect();
        let Some(auth) = ours.first() else {
            return AuthDecision::Challenge { stale: false };
        };
        // An identity that names no account is answered exactly as a wrong password
        // for a real one (same checks, same hash work, challenged again), so the
        // answers do not tell which accounts exist.
        let unknown;
        let creds = match account {
            Some(c) => c,
            None => {
                unknown = AccountCredentials {
                    id: 0,
                    login: auth.get("username").unwrap_or("").to_owned(),
                    ha1_md5: "0".repeat(32),
                    ha1_sha256: "0".repeat(64),
                    country_code: String::new(),
                    no_answer_forward: None,
                    media: Default::default(),
                };
                &unknown
            }
        };
        let verified = digest::verify(
            auth,
            &self.algorithms,
            method,
            creds,
            &self.key,
            &mut self.counts,
            now,
        );
        let verified = match (verified, account) {
            (Ok(()), None) => Err(AuthFailure::WrongPassword),
            (v, _) => v,
        };
        match verified {
            Ok(()) => AuthDecision::Accept,
            Err(AuthFailure::NoCredentials) => AuthDecision::Challenge { stale: false },
            Err(AuthFailure::Stale) => AuthDecision::Challenge { stale: true },
            Err(AuthFailure::UnknownNonce) => AuthDecision::Challenge { stale: false },
            Err(AuthFailure::WrongPassword) => {
                let banned = self.record_failure(source, now);
                if banned {
                    AuthDecision::Forbidden { banned }
                } else {
                    AuthDecision::Retry { banned }
                }
            }
            Err(AuthFailure::Rejected(why)) => {
                tracing::debug!(why, "digest credentials refused");
                let banned = self.record_failure(source, now);
                AuthDecision::Forbidden { banned }
            }
        }
    }

    /// Restores bindings loaded from the store; expired ones are returned for deletion.
    pub fn restore(&mut self, bindings: Vec<Binding>, now: i64) -> Vec<Binding> {
        let mut expired = Vec::new();
        for b in bindings {
            if b.expires_at <= now {
                expired.push(b);
            } else {
                self.insert(b);
            }
        }
        expired
    }

    fn insert(&mut self, b: Binding) {
        self.expiry.push(Reverse((
            b.expires_at,
            b.account_id,
            b.instance_id.clone(),
            b.reg_id,
        )));
        let list = self.bindings.entry(b.account_id).or_default();
        if let Some(slot) = list
            .iter_mut()
            .find(|x| x.instance_id == b.instance_id && x.reg_id == b.reg_id)
        {
            *slot = b;
        } else {
            list.push(b);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Binding> {
        let list = self.bindings.get_mut(&key.0)?;
        let pos = list
            .iter()
            .position(|x| x.instance_id == key.1 && x.reg_id == key.2)?;
        let b = list.swap_remove(pos);
        if list.is_empty() {
            self.bindings.remove(&key.0);
        }
        Some(b)
    }

    /// Live bindings of an account.
    pub fn bindings(&self, account: AccountId, now: i64) -> Vec<Binding> {
        let mut v: Vec<Binding> = self
            .bindings
            .get(&account)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (&a.instance_id, a.reg_id).cmp(&(&b.instance_id, b.reg_id)));
        v
    }

    /// Drops every binding of an instance; returns them (the driver deletes them from
    /// the store and closes their flows).
    pub fn revoke_instance(&mut self, account: AccountId, instance_id: &str) -> Vec<Binding> {
        let keys: Vec<Key> = self
            .bindings
            .get(&account)
            .map(|l| {
                l.iter()
                    .filter(|b| b.instance_id == instance_id)
                    .map(|b| (b.account_id, b.instance_id.clone(), b.reg_id))
                    .collect()
            })
            .unwrap_or_default();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// When the next binding expires (Unix seconds).
    pub fn poll_timeout(&self) -> Option<i64> {
        self.expiry.peek().map(|Reverse((t, ..))| *t)
    }

    /// Removes bindings that expired at or before `now`.
    pub fn handle_timeout(&mut self, now: i64) -> Vec<Binding> {
        let mut out = Vec::new();
        while let Some(Reverse((t, ..))) = self.expiry.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, account, instance, reg_id))) = self.expiry.pop() else {
                break;
            };
            let key = (account, instance, reg_id);
            // Lazy deletion: the heap entry is stale if the binding was refreshed.
            let current = self
                .bindings
                .get(&key.0)
                .and_then(|l| {
                    l.iter()
                        .find(|b| b.instance_id == key.1 && b.reg_id == key.2)
                })
                .map(|b| b.expires_at);
            if current == Some(t) {
                if let Some(b) = self.remove(&key) {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Applies an authenticated REGISTER whose instances the driver has checked are
    /// authorised devices of the account (RFC 3261 10.3 steps 6-8, RFC 5626 6).
    pub fn register(&mut self, req: &RegisterRequest, now: i64) -> RegisterOutcome {
        let mut out = RegisterOutcome::error(200, "OK");
        match &req.contacts {
            ContactsSpec::Fetch => {}
            ContactsSpec::Star => {
                if req.expires_header != Some(0) {
                    return RegisterOutcome::error(400, "Wildcard Contact Needs Expires 0");
                }
                // RFC 3261 10.3 step 6: remove all bindings of the AOR, subject to the
                // Call-ID/CSeq rule.
                let current = self.bindings(req.account, i64::MIN);
                if current
                    .iter()
                    .any(|b| b.call_id == req.call_id && b.cseq >= req.cseq)
                {
                    return RegisterOutcome::error(500, "Request Out Of Order");
                }
                for b in current {
                    if let Some(b) = self.remove(&(b.account_id, b.instance_id.clone(), b.reg_id)) {
                        out.ops.push(StoreOp::Delete {
                            account: b.account_id,
                            instance_id: b.instance_id,
                            reg_id: b.reg_id,
                        });
                    }
                }
            }
            ContactsSpec::List(list) => {
                // First pass: validate everything, so a failing REGISTER changes nothing.
                let mut planned = Vec::with_capacity(list.len());
                for c in list {
                    let asked = c
                        .expires
                        .or(req.expires_header)
                        .unwrap_or(self.cfg.default_expires);
                    if asked != 0 && asked < self.cfg.min_expires {
                        let mut o = RegisterOutcome::error(423, "Interval Too Brief");
                        o.min_expires = Some(self.cfg.min_expires);
                        return o;
                    }
                    let granted = asked.min(self.cfg.max_expires);
                    if let Some(existing) = self.find(req.account, &c.instance_id, c.reg_id) {
                        if existing.call_id == req.call_id && existing.cseq >= req.cseq {
                            return RegisterOutcome::error(500, "Request Out Of Order");
                        }
                    }
                    planned.push((c, granted));
                }
                // Capacity: reg-ids per instance and bindings per account after the change.
                let mut after: Vec<(String, u32)> = self
                    .bindings(req.account, now)
                    .into_iter()
                    .map(|b| (b.instance_id, b.reg_id))
                    .collect();
                for (c, granted) in &planned {
                    after.retain(|(i, r)| {
                        !(i == &c.instance_id && (*r == c.reg_id || c.reg_id == 0 || *r == 0))
                    });
                    if *granted > 0 {
                        after.push((c.instance_id.clone(), c.reg_id));
                    }
                }
                if after.len() > self.cfg.max_bindings_per_account {
                    return RegisterOutcome::error(403, "Too Many Registrations");
                }
                for (inst, _) in &after {
                    if after.iter().filter(|(i, _)| i == inst).count()
                        > self.cfg.max_reg_ids_per_instance
                    {
                        return RegisterOutcome::error(403, "Too Many Flows For Instance");
                    }
                }
                for (c, granted) in planned {
                    // Same instance replaces: the same reg-id, and a reg-id-less binding
                    // replaces (and is replaced by) every binding of that instance.
                    let replaced: Vec<Key> = self
                        .bindings
                        .get(&req.account)
                        .map(|l| {
                            l.iter()
                                .filter(|b| {
                                    b.instance_id == c.instance_id
                                        && (b.reg_id == c.reg_id || c.reg_id == 0 || b.reg_id == 0)
                                })
                                .map(|b| (b.account_id, b.instance_id.clone(), b.reg_id))
                                .collect()
                        })
                        .unwrap_or_default();
                    for k in replaced {
                        if let Some(old) = self.remove(&k) {
                            let same_flow =
                                old.transport == req.transport && old.source == req.source;
                            if !same_flow && old.transport != "udp" {
                                out.close.push(Flow {
                                    transport: old.transport.clone(),
                                    remote: old.source.clone(),
                                });
                            }
                            if old.reg_id != c.reg_id || granted == 0 {
                                out.ops.push(StoreOp::Delete {
                                    account: old.account_id,
                                    instance_id: old.instance_id,
                                    reg_id: old.reg_id,
                                });
                            }
                        }
                    }
                    if granted == 0 {
                        // Unregister of a binding that may not exist: still delete.
                        let del = StoreOp::Delete {
                            account: req.account,
                            instance_id: c.instance_id.clone(),
                            reg_id: c.reg_id,
                        };
                        if !out.ops.contains(&del) {
                            out.ops.push(del);
                        }
                        continue;
                    }
                    let b = Binding {
                        account_id: req.account,
                        instance_id: c.instance_id.clone(),
                        reg_id: c.reg_id,
                        contact_uri: c.uri.clone(),
                        expires_at: now + i64::from(granted),
                        call_id: req.call_id.clone(),
                        cseq: req.cseq,
                        transport: req.transport.clone(),
                        source: req.source.clone(),
                        local: req.local.clone(),
                        user_agent: req.user_agent.clone(),
                        push: match (&c.pn_provider, &c.pn_prid) {
                            (Some(provider), Some(prid)) => Some(crate::model::PushParams {
                                provider: provider.clone(),
                                prid: prid.clone(),
                                param: c.pn_param.clone(),
                            }),
                            _ => None,
                        },
                    };
                    out.ops.push(StoreOp::Save(Box::new(b.clone())));
                    self.insert(b);
                }
            }
        }
        out.contacts = self
            .bindings(req.account, now)
            .into_iter()
            .map(|b| {
                let left = u32::try_from((b.expires_at - now).max(0)).unwrap_or(u32::MAX);
                (b, left)
            })
            .collect();
        out
    }

    fn find(&self, account: AccountId, instance: &str, reg_id: u32) -> Option<&Binding> {
        self.bindings
            .get(&account)?
            .iter()
            .find(|b| b.instance_id == instance && b.reg_id == reg_id)
    }
}
