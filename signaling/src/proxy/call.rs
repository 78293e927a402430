//! A forked request in progress: its task, branches (one client transaction each),
//! the sans-IO [`Fork`] that decides, pushes, and the way upstream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::fork::{Action, CancelReason, Final, Fork, ForkOptions, PushOrder, PushPolicy};
use super::media::MediaRole;
use super::offline::{CallPush, ForkedRequest};
use super::routing::Hop;
use super::{msg, Proxy};
use crate::metrics::SipMetrics;
use crate::model::{AccountId, Binding};
use crate::sip::grammar::SipUri;
use crate::sip::message::{new_tag, Message, ResponseBuilder};
use crate::sip::transaction::{ClientInvite, ClientNonInvite, Event};
use crate::sip::{Handled, Request, Upstream};

const REASON_COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

pub(crate) enum Input {
    /// A response to one of our client transactions, with what the endpoint's parse
    /// already told (so the task parses it again only to build an ACK or read
    /// challenges).
    Response {
        branch: usize,
        code: u16,
        /// The response is to our CANCEL of that branch.
        to_cancel: bool,
        bytes: Vec<u8>,
    },
    Cancel,
    /// The server is draining: cancel what rings, answer the caller 503.
    Shutdown,
    /// A device of the called account registered while the call rings.
    Registered(Box<Binding>),
    /// An `incoming_call` push was queued for these instances.
    Pushed(Vec<String>),
    /// A device of the called account was revoked: its branch is cancelled.
    Revoked(String),
}

/// How many forked requests may be held in all, deciding and finishing, per place of
/// `max_transactions`: finishing ones live up to 32 s, deciding ones mostly a few.
const FINISHING_FACTOR: usize = 8;

/// One place under `max_transactions`, given back when dropped (also if the call's
/// task ends early).
pub(crate) struct DecidingSlot(Arc<AtomicUsize>, SipMetrics);

impl DecidingSlot {
    fn take(count: &Arc<AtomicUsize>, metrics: &SipMetrics) -> Self {
        let n = count.fetch_add(1, Ordering::Relaxed);
        metrics.forks(n.saturating_add(1));
        DecidingSlot(count.clone(), metrics.clone())
    }
}

impl Drop for DecidingSlot {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.forks(n.saturating_sub(1));
    }
}

/// A request in progress, as the proxy finds it again.
#[derive(Clone)]
pub(crate) struct CallEntry {
    pub(crate) tx: mpsc::Sender<Input>,
    /// The called account, for INVITEs forked to an account's bindings: a device of
    /// it that registers while the call rings becomes a new branch.
    pub(crate) account: Option<AccountId>,
}

/// The requests in progress by server INVITE transaction key, with an index by
/// called account (a registration or a revocation finds its account's calls
/// without looking at the others).
#[derive(Default)]
pub(crate) struct Calls {
    by_key: std::collections::HashMap<String, CallEntry>,
    by_account: std::collections::HashMap<AccountId, std::collections::HashSet<String>>,
}

impl Calls {
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&CallEntry> {
        self.by_key.get(key)
    }

    pub(crate) fn insert(&mut self, key: String, entry: CallEntry) {
        if let Some(a) = entry.account {
            self.by_account.entry(a).or_default().insert(key.clone());
        }
        if let Some(old) = self.by_key.insert(key.clone(), entry) {
            self.unindex(&key, old.account);
        }
    }

    /// The task of every request in progress.
    pub(crate) fn senders(&self) -> Vec<mpsc::Sender<Input>> {
        self.by_key.values().map(|e| e.tx.clone()).collect()
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            self.unindex(key, old.account);
        }
    }

    fn unindex(&mut self, key: &str, account: Option<AccountId>) {
        let Some(a) = account else { return };
        if let Some(keys) = self.by_account.get_mut(&a) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_account.remove(&a);
            }
        }
    }

    /// The tasks of the calls to `account`.
    pub(crate) fn of_account(&self, account: AccountId) -> Vec<mpsc::Sender<Input>> {
        self.by_account
            .get(&account)
            .into_iter()
            .flatten()
            .filter_map(|k| self.by_key.get(k))
            .map(|e| e.tx.clone())
            .collect()
    }
}

/// How to build one more branch of a forked INVITE.
pub(crate) struct BranchTemplate {
    pub(crate) hash: String,
    pub(crate) max_forwards: u32,
    pub(crate) caller: Hop,
}

/// An INVITE to one of our accounts: devices may join, be pushed, and the
/// account's no-answer rule may apply.
pub(crate) struct CallSetup {
    pub(crate) account: AccountId,
    pub(crate) template: BranchTemplate,
    /// The call as the push hooks see it.
    pub(crate) request: Arc<ForkedRequest>,
    /// Devices are pushed (a provider is configured).
    pub(crate) pushes: bool,
    /// The account's no-answer rule.
    pub(crate) forward: Option<String>,
}

/// What kind of forked request to start.
pub(crate) struct Forking {
    pub(crate) invite: bool,
    /// Call-ID counted against the caller's outgoing call limit.
    pub(crate) outgoing_call: Option<String>,
    /// Set for INVITEs to one of our accounts.
    pub(crate) setup: Option<CallSetup>,
    /// The call's media session, when its SDP goes through a relay.
    pub(crate) media: Option<MediaRole>,
}

/// One branch to start: where, its Via branch, the request bytes, and the device
/// instance for branches to bindings.
pub(crate) struct NewBranch {
    pub(crate) hop: Hop,
    pub(crate) id: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) instance: Option<String>,
}

/// A caller's CANCEL matched an INVITE in progress; [`PendingCancel::fire`] hands
/// it to the INVITE's task.
pub(crate) struct PendingCancel(pub(crate) mpsc::Sender<Input>);

impl PendingCancel {
    pub(crate) fn fire(self) {
        let _ = self.0.try_send(Input::Cancel);
    }
}

/// `Retry-After` (seconds) of the 503s a draining server answers.
pub(crate) const DRAIN_RETRY_AFTER: &str = "5";

impl Proxy {
    /// Starts draining (the process is about to stop): new out-of-dialog requests get
    /// 503 with `Retry-After`, and every request still deciding is ended
    /// ([`Input::Shutdown`]: its branches cancelled, the caller answered 503).
    /// In-dialog requests (ACK, BYE, re-INVITE) still pass. Returns how many requests
    /// were told to end.
    pub(crate) fn drain(&self) -> usize {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let senders = self.calls.lock().map(|c| c.senders()).unwrap_or_default();
        for tx in &senders {
            let _ = tx.try_send(Input::Shutdown);
        }
        senders.len()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests (forked or finishing) still held.
    pub(crate) fn requests_in_progress(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Forked requests whose final response has not gone upstream yet.
    pub(crate) fn requests_deciding(&self) -> usize {
        self.deciding.load(Ordering::Relaxed)
    }

    /// Starts the task of a forked request with its first `branches`.
    pub(crate) fn start_fork(
        self: &Arc<Self>,
        req: &Request<'_>,
        upstream: Upstream,
        branches: Vec<NewBranch>,
        how: Forking,
    ) -> Handled {
        let Request {
            msg,
            raw,
            top_via,
            invite_key,
            ..
        } = *req;
        let Forking {
            invite,
            outgoing_call,
            setup,
            media,
        } = how;
        let (tx, rx) = mpsc::channel(64);
        let refuse = |code: u16, reason: &str, retry_after: Option<&str>| {
            let mut r = req.reply(code, reason);
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
                self.metrics.drop(crate::metrics::DropReason::ForksFull);
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
            DecidingSlot::take(&self.deciding, &self.metrics)
        };
        if let Ok(mut r) = self.routes.lock() {
            for (i, b) in branches.iter().enumerate() {
                r.insert(b.id.clone(), (tx.clone(), i));
            }
        }
        let now = self.clock.now();
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
            media,
            pushes: pushes
                .then(|| PushPolicy::new(Duration::from_secs(self.cfg.park_timeout_secs))),
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
            let trying = ResponseBuilder::new(msg, 100, "Trying", top_via, None).finish();
            tokio::spawn(async move {
                call_upstream.respond(100, trying).await;
                call.run().await;
            });
        } else {
            tokio::spawn(call.run());
        }
        Handled::Taken
    }
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
    /// The call's media session: answers are rewritten, a failure deletes it.
    media: Option<MediaRole>,
    /// The push side of the call (when devices are pushed): who was pushed, the
    /// park, who hears of the end.
    pushes: Option<PushPolicy>,
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
        let give_up = self.proxy.clock.now()
            + Duration::from_secs(self.proxy.cfg.ring_timeout_secs) * rings
            + self.proxy.timers.t1 * 64
            + Duration::from_secs(32);
        let live = self
            .setup
            .as_ref()
            .map(|c| c.request.live_instances.clone())
            .unwrap_or_default();
        // Devices that are not registered hear of the call at the moment the
        // registered ones get the INVITE.
        let order = self.pushes.as_mut().map(|p| p.start(live));
        self.queue(order);
        self.pump(self.proxy.clock.now()).await;
        loop {
            if self.fork.is_answered() && self.pushes.as_ref().is_none_or(PushPolicy::settled) {
                self.deciding = None;
                if self.all_terminated() {
                    break;
                }
            }
            let now = self.proxy.clock.now();
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
                    Some(Input::Response { branch, code, to_cancel, bytes }) => {
                        self.on_response(self.proxy.clock.now(), branch, (code, to_cancel), bytes)
                    }
                    Some(Input::Cancel) => self.fork.handle_cancel(self.proxy.clock.now()),
                    Some(Input::Shutdown) => self.fork.handle_shutdown(self.proxy.clock.now()),
                    Some(Input::Registered(b)) => self.add_binding(self.proxy.clock.now(), &b),
                    Some(Input::Pushed(list)) => self.on_pushed(self.proxy.clock.now(), list),
                    Some(Input::Revoked(instance)) => self.revoke(self.proxy.clock.now(), &instance),
                    None => break,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = self.proxy.clock.now();
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
            self.pump(self.proxy.clock.now()).await;
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
        let Some(hop) = self.proxy.binding_hop(b) else {
            return;
        };
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

    /// Cancels the branches of a revoked device.
    fn revoke(&mut self, now: Instant, instance: &str) {
        let hit: Vec<usize> = self
            .branches
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.instance
                    .as_deref()
                    .is_some_and(|i| i.eq_ignore_ascii_case(instance))
            })
            .map(|(i, _)| i)
            .collect();
        for i in hit {
            self.fork.cancel_branch(now, i);
        }
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
            self.proxy
                .routing
                .record_route(hop, (hop.transport, hop.addr)),
            self.proxy
                .routing
                .record_route(t.caller, (t.caller.transport, t.caller.addr)),
        ];
        let bytes = msg::forward_request(
            &req,
            &msg::Forward {
                request_uri: Some(request_uri),
                via: &self.proxy.routing.via(hop, &id),
                record_route: &rr,
                pop_routes: 0,
                max_forwards: t.max_forwards,
                extra: &[],
                consume_realm: Some(self.proxy.routing.realm()),
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

    /// Queues a call push the policy ordered; the instances an `incoming_call`
    /// reached come back as [`Input::Pushed`].
    fn queue(&mut self, order: Option<PushOrder>) {
        let (Some(PushOrder { kind, to }), Some(setup)) = (order, self.setup.as_ref()) else {
            return;
        };
        let hooks = self.proxy.offline();
        let req = setup.request.clone();
        if kind == CallPush::Incoming {
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

    /// An `incoming_call` push went to `list` (see [`PushPolicy::pushed`]).
    fn on_pushed(&mut self, now: Instant, list: Vec<String>) {
        let order = match &mut self.pushes {
            Some(p) => p.pushed(now, list, &mut self.fork),
            None => None,
        };
        self.queue(order);
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
                self.proxy.routing.udp_hop(u.host, port, caller.local).await
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

    fn on_response(
        &mut self,
        now: Instant,
        i: usize,
        (code, to_cancel): (u16, bool),
        bytes: Vec<u8>,
    ) {
        let Some(b) = self.branches.get_mut(i) else {
            return;
        };
        if to_cancel {
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
        // Parsed again only when the response itself is needed: the ACK for a
        // non-2xx final, or the challenges of a 401/407.
        let needs_parse =
            code == 401 || code == 407 || (code >= 300 && matches!(b.tx, ClientTx::Invite(_)));
        let resp = if needs_parse {
            Message::parse(&bytes).ok()
        } else {
            None
        };
        match &mut b.tx {
            ClientTx::Invite(t) => {
                let ack = match (&resp, code >= 300) {
                    (Some(resp), true) => Message::parse(&b.request)
                        .ok()
                        .map(|sent| msg::ack_for(&sent, resp)),
                    _ => None,
                };
                t.handle_response(now, code, ack);
            }
            ClientTx::NonInvite(t) => t.handle_response(now, code),
        }
        if let (Some(resp), true) = (&resp, code == 401 || code == 407) {
            b.challenges = msg::challenges(resp);
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
                    let by = self.branches.get(branch).and_then(|b| b.instance.clone());
                    let forwarded = self.fork.is_forwarded();
                    let order = self
                        .pushes
                        .as_mut()
                        .and_then(|p| p.forwarded(code, by.as_deref(), forwarded));
                    self.queue(order);
                    // A call answered, not the 200 to a forwarded BYE or MESSAGE.
                    if (200..300).contains(&code) && !self.answered_2xx && self.fork.is_invite() {
                        tracing::info!(
                            call_id = %self.call_ref(),
                            branch,
                            instance = %by.as_deref().map(crate::registrar::redact_instance).unwrap_or_default(),
                            code,
                            "answered"
                        );
                    }
                    self.answered_2xx |= (200..300).contains(&code);
                    let bytes = self.forward_bytes(branch, code).await;
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
                        CancelReason::DeviceRevoked => None,
                        CancelReason::ServerShutdown => {
                            Some("SIP;cause=503;text=\"Server shutting down\"".to_owned())
                        }
                    };
                    tracing::info!(
                        call_id = %self.call_ref(),
                        branch,
                        reason = ?reason,
                        "branch cancelled"
                    );
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
                    let order = self.pushes.as_mut().map(PushPolicy::push_all);
                    self.queue(order);
                }
                Action::NoAnswer => self.start_forward(now).await,
                Action::Respond(f) => {
                    let order = self.pushes.as_mut().and_then(PushPolicy::responded);
                    self.queue(order);
                    let (code, bytes) = self.final_bytes(f);
                    if code >= 300 {
                        if let Some(m) = &self.media {
                            self.proxy.media_failed(m).await;
                        }
                    }
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
                    .send_or_connect(b.hop.transport, b.hop.addr, bytes)
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

    /// The call's Call-ID for the log.
    fn call_ref(&self) -> String {
        Message::parse(&self.request)
            .ok()
            .and_then(|m| m.call_id().map(|c| super::media::call_ref(c).to_owned()))
            .unwrap_or_default()
    }

    /// The bytes of branch `branch`'s latest response as it goes upstream, its SDP
    /// rewritten when the call's media goes through a relay.
    async fn forward_bytes(&self, branch: usize, code: u16) -> Option<Vec<u8>> {
        let b = self.branches.get(branch)?;
        let m = Message::parse(b.last.as_ref()?).ok()?;
        if let Some(role) = &self.media {
            if code >= 300 {
                self.proxy.media_failed(role).await;
            } else if code > 100 {
                if let Some(body) = self.proxy.media_response(role, b.hop, &m).await {
                    return Some(msg::response_upstream_with_body(&m, None, &[], &body));
                }
            }
        }
        Some(msg::response_upstream(&m, None, &[]))
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
                        let b = ResponseBuilder::new(
                            &m,
                            code,
                            reason,
                            &self.top_via,
                            Some(&self.to_tag),
                        );
                        // A 503 we generate means this server is going away (drain):
                        // the caller may try again at once elsewhere.
                        let b = if code == 503 {
                            b.header("Retry-After", DRAIN_RETRY_AFTER)
                        } else {
                            b
                        };
                        b.finish()
                    })
                    .unwrap_or_default();
                (code, bytes)
            }
        }
    }
}
