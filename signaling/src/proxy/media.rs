//! Media sessions of calls: one relay session per call, tied to the dialog.
//!
//! The proxy stays a proxy (RFC 3261 16): it forwards every request and response, and
//! only the SDP bodies change. For a call that needs the relay, the offer creates a
//! session on a relay of the pool ([`crate::relays`]) and the SDP each side sends is
//! rewritten with the relay's ports of the *other* side's leg (the receiver sends to
//! them), by [`crate::sdp`].
//!
//! ## Calling contract
//! - [`Proxy::media_offer`] on a dialog-creating INVITE (after routing, before the
//!   branches are built): creates the session from the offer, or registers a
//!   late-offer call (no SDP) whose 2xx will carry the offer. Gives back the request
//!   with its body rewritten and a [`MediaRole`] for the call's task.
//! - [`Proxy::media_response`] from the call's task for every 18x/2xx it forwards
//!   upstream with SDP: the answer completes the session (the first answer; a later
//!   one from another forked branch replaces the callee leg), and is rewritten.
//!   One session per call: the branches share it, so the losing branches leave
//!   nothing behind.
//! - [`Proxy::media_in_dialog`] for requests inside the dialog: re-INVITE and UPDATE
//!   offers update the sender's leg; an ACK with SDP answers a late offer; BYE ends
//!   the session. CSeq numbers are tracked for the BYEs we may have to send.
//! - [`Proxy::media_failed`] when the INVITE fails (non-2xx final, CANCEL): the
//!   session is deleted.
//! - [`Proxy::media_events`] runs for the life of the proxy: when a relay ends a
//!   session (inactivity, maximum duration) or stops answering, the call is ended
//!   with a BYE to both sides.
//!
//! Who gets which relay leg: the relay's `caller` leg is the side that made the first
//! offer, which is the SIP caller except for a late offer (INVITE without SDP), where
//! the callee's 2xx carries the offer; `late_offer` swaps the two.
//!
//! Policy: each account says `ice` (default: relay candidates added to ICE SDP, SDP
//! without ICE forced through the relay), `force-relay` (ICE SDP too: only the relay
//! candidate remains) or `off` (SDP untouched). The caller's and the callee's
//! policies combine to the stronger one. When no relay can be had, `ice` calls go on
//! with their SDP untouched (logged); `force-relay` calls and calls that need the
//! relay to bridge SRTP to a plain gateway get 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tandem_control::{LegInfo, UpdateSession};

use super::routing::Hop;
use super::Proxy;
use crate::model::MediaPolicy;
use crate::relays::{Ended, MediaRelays, Placed, RelayError};
use crate::sdp;
use crate::sip::grammar;
use crate::sip::message::{new_tag, HeaderName, Message, ResponseBuilder};
use crate::sip::{Handled, Request};

/// One side of the SIP dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    Caller,
    Callee,
}

impl Party {
    fn other(self) -> Party {
        match self {
            Party::Caller => Party::Callee,
            Party::Callee => Party::Caller,
        }
    }
    fn index(self) -> usize {
        match self {
            Party::Caller => 0,
            Party::Callee => 1,
        }
    }
}

/// How a call's SDP is treated (the stronger of the caller's and callee's policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Effective {
    Off,
    Ice,
    ForceRelay,
}

impl From<MediaPolicy> for Effective {
    fn from(p: MediaPolicy) -> Self {
        match p {
            MediaPolicy::Off => Effective::Off,
            MediaPolicy::Ice => Effective::Ice,
            MediaPolicy::ForceRelay => Effective::ForceRelay,
        }
    }
}

/// What the call's task needs to handle the answer of its request.
#[derive(Clone)]
pub(crate) struct MediaRole {
    pub(crate) call: Arc<tokio::sync::Mutex<CallMedia>>,
    /// Who answers the request this task forwards.
    pub(crate) responder: Party,
    /// The dialog-creating INVITE (its failure ends the session).
    pub(crate) initial: bool,
    /// The request carried an offer: SDP in its responses is the answer. Otherwise
    /// (an INVITE without SDP) the 2xx carries the offer and the ACK the answer.
    pub(crate) request_offer: bool,
}

/// What the dialog's side looks like, for the BYE we may have to send it.
#[derive(Debug, Clone)]
struct Side {
    hop: Hop,
    /// Its Contact URI (the remote target).
    contact: String,
    /// Its own identity header as it sends it (From for the caller, To for the callee),
    /// with its tag.
    header: String,
}

/// The media state of one call.
pub(crate) struct CallMedia {
    call_id: String,
    /// Its entry in [`MediaCalls`] (a later INVITE with the same Call-ID has another).
    serial: u64,
    caller_tag: String,
    policy: Effective,
    /// OFFNET call whose SDES-SRTP caller is bridged to a plain gateway.
    bridge: bool,
    /// OFFNET call: the callee is a plain RTP gateway.
    offnet: bool,
    session: Option<Placed>,
    late_offer: bool,
    /// The session's first answer reached the relay (later ones update a leg).
    answered: bool,
    /// The latest offer: who made it and how it was read (answers are read against
    /// it).
    offer: Option<(Party, sdp::Description)>,
    /// Last SDP received from each party, and what it became.
    last: [Option<(Vec<u8>, Vec<u8>)>; 2],
    sides: [Option<Side>; 2],
    /// Highest CSeq seen in requests of each party.
    cseq: [u32; 2],
    ended: bool,
}

impl CallMedia {
    /// The relay leg that carries `p`'s media.
    fn relay_is_caller(&self, p: Party) -> bool {
        (p == Party::Caller) != self.late_offer
    }

    fn leg_info(&self, p: Party) -> Option<&LegInfo> {
        let s = &self.session.as_ref()?.session;
        Some(if self.relay_is_caller(p) {
            &s.caller
        } else {
            &s.callee
        })
    }
}

/// A call's media state, shared by its tasks.
type CallHandle = Arc<tokio::sync::Mutex<CallMedia>>;

/// The media calls in progress, by Call-ID, and the relay pool.
pub(crate) struct MediaCalls {
    relays: Arc<dyn MediaRelays>,
    /// By Call-ID: the caller's tag (checked without taking the call's lock), the
    /// entry's serial (so a call only ever removes its own entry), the call.
    by_call: Mutex<HashMap<String, (String, u64, CallHandle)>>,
    serials: std::sync::atomic::AtomicU64,
    by_session: Mutex<HashMap<String, String>>,
}

impl MediaCalls {
    pub(crate) fn new(relays: Arc<dyn MediaRelays>) -> Self {
        MediaCalls {
            relays,
            by_call: Mutex::new(HashMap::new()),
            serials: std::sync::atomic::AtomicU64::new(1),
            by_session: Mutex::new(HashMap::new()),
        }
    }

    fn find(
        &self,
        call_id: &str,
        tags: [Option<&str>; 2],
    ) -> Option<Arc<tokio::sync::Mutex<CallMedia>>> {
        let (tag, _, c) = self.by_call.lock().ok()?.get(call_id).cloned()?;
        // The caller's tag must be one of the request's tags (a stray request with
        // another call's Call-ID does not touch it).
        tags.iter().flatten().any(|x| *x == tag).then_some(c)
    }

    fn forget(&self, m: &CallMedia) {
        if let Ok(mut b) = self.by_call.lock() {
            if b.get(&m.call_id)
                .is_some_and(|(_, serial, _)| *serial == m.serial)
            {
                b.remove(&m.call_id);
            }
        }
        if let (Some(p), Ok(mut s)) = (&m.session, self.by_session.lock()) {
            s.remove(&p.session.id);
        }
    }
}

/// Why a request cannot go on (answered by the proxy).
pub(crate) struct Refused {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) warning: Option<&'static str>,
}

/// Whether the body of `msg` is an SDP (Content-Type application/sdp, non-empty).
fn sdp_body<'m>(msg: &'m Message<'_>) -> Option<&'m [u8]> {
    if msg.body.is_empty() {
        return None;
    }
    let ct = msg.header(HeaderName::ContentType)?;
    let media = ct.split(';').next().unwrap_or("").trim();
    media
        .eq_ignore_ascii_case("application/sdp")
        .then_some(msg.body)
}

/// `msg` (a request or response) with `body` in place of its body.
pub(crate) fn with_body(msg: &Message<'_>, body: &[u8]) -> Vec<u8> {
    super::msg::replace_body(msg, body)
}

impl Proxy {
    /// Media goes through `relays` from now on; calls whose session the relay ends
    /// are ended with BYE (until `shutdown`).
    pub(crate) fn set_relays(
        self: &Arc<Self>,
        relays: Arc<dyn MediaRelays>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let ended = relays.subscribe_ended();
        if self.media.set(MediaCalls::new(relays)).is_ok() {
            tokio::spawn(self.clone().media_events(ended, shutdown));
        }
    }

    /// A dialog-creating INVITE: decides whether the call goes through a relay and, if
    /// so, creates the session and rewrites the offer. `Ok(None)`: nothing to do.
    pub(crate) async fn media_offer(
        &self,
        req: &Request<'_>,
        policy: Effective,
        offnet: bool,
    ) -> Result<Option<(Option<Vec<u8>>, MediaRole)>, Refused> {
        let Some(media) = self.media.get() else {
            return Ok(None);
        };
        let msg = req.msg;
        if policy == Effective::Off || msg.method() != Some("INVITE") {
            return Ok(None);
        }
        let (Some(call_id), Some(from)) = (msg.call_id(), msg.from()) else {
            return Ok(None);
        };
        let Some(caller_tag) = from.params.value("tag").map(str::to_owned) else {
            return Ok(None);
        };
        let caller_side = Side {
            hop: Hop {
                transport: req.origin.transport,
                addr: req.origin.source,
                local: self
                    .routing
                    .local_on(req.origin.transport, req.origin.local)
                    .unwrap_or(req.origin.local),
            },
            contact: contact_uri(msg).unwrap_or_default(),
            header: msg.header(HeaderName::From).unwrap_or("").to_owned(),
        };
        let serial = media
            .serials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut call = CallMedia {
            call_id: call_id.to_owned(),
            serial,
            caller_tag,
            policy,
            bridge: false,
            offnet,
            session: None,
            late_offer: false,
            answered: false,
            offer: None,
            last: [None, None],
            sides: [Some(caller_side), None],
            cseq: [msg.cseq().map(|c| c.0).unwrap_or(0), 0],
            ended: false,
        };
        let mut rewritten = None;
        let request_offer = !msg.body.is_empty();
        if let Some(body) = sdp_body(msg) {
            let Ok(parsed) = sdp::Sdp::parse(body) else {
                tracing::debug!("offer SDP does not parse: passed on untouched");
                return Ok(None);
            };
            let pol = sdp_policy(&call, Party::Caller, &parsed, req.origin.source);
            let desc = match sdp::describe_offer(&parsed, &pol) {
                Ok(d) => d,
                Err(sdp::SdpError::DtlsToPlain) => {
                    tracing::info!(
                        call_id = %call_ref(call_id),
                        "488: DTLS-SRTP offer to a gateway that speaks plain RTP"
                    );
                    return Err(Refused {
                        code: 488,
                        reason: "Not Acceptable Here",
                        warning: Some("DTLS-SRTP cannot be bridged to the gateway's plain RTP"),
                    });
                }
                Err(e) => {
                    tracing::info!(
                        call_id = %call_ref(call_id),
                        error = %e,
                        "offer SDP not relayed: passed on untouched"
                    );
                    return Ok(None);
                }
            };
            if desc.already_relayed() && policy == Effective::Ice {
                // The client brought its own TURN relay: nothing to add.
                return Ok(None);
            }
            call.bridge = desc.srtp_bridge.is_some();
            let needs_relay = policy == Effective::ForceRelay || call.bridge;
            let placed = match media
                .relays
                .create(sdp::create_request(&desc, call_id))
                .await
            {
                Ok(p) => p,
                Err(e) => return relay_unavailable(e, needs_relay),
            };
            let plan = sdp::Plan::new(&pol, &desc);
            let out = match sdp::rewrite(&parsed, &desc, &placed.session.callee, &plan) {
                Ok(o) => o,
                Err(e) => {
                    let relays = media.relays.clone();
                    let (relay, id) = (placed.relay, placed.session.id.clone());
                    tokio::spawn(async move { relays.delete(relay, &id).await });
                    tracing::warn!(error = %e, "the relay's session does not fit the offer");
                    return if needs_relay {
                        Err(Refused {
                            code: 500,
                            reason: "Server Internal Error",
                            warning: None,
                        })
                    } else {
                        Ok(None)
                    };
                }
            };
            tracing::info!(
                call_id = %call_ref(call_id),
                relay = ?placed.relay,
                streams = desc.facts.streams,
                ice = desc.facts.ice,
                bridge = call.bridge,
                "media session created"
            );
            call.last[Party::Caller.index()] = Some((body.to_vec(), out.clone()));
            call.offer = Some((Party::Caller, desc));
            if let Ok(mut s) = media.by_session.lock() {
                s.insert(placed.session.id.clone(), call_id.to_owned());
            }
            call.session = Some(placed);
            rewritten = Some(with_body(msg, &out));
        } else if request_offer {
            // Not SDP (multipart and others): not ours to touch.
            return Ok(None);
        } else {
            call.late_offer = true;
        }
        let tag = call.caller_tag.clone();
        let call = Arc::new(tokio::sync::Mutex::new(call));
        if let Ok(mut b) = media.by_call.lock() {
            if let Some((_, _, old)) = b.insert(call_id.to_owned(), (tag, serial, call.clone())) {
                // A new INVITE with the Call-ID of an earlier one (after a challenge
                // from a device, say): the earlier session goes.
                let relays = media.relays.clone();
                tokio::spawn(async move {
                    let old = old.lock().await;
                    if let Some(p) = &old.session {
                        let _ = relays.delete(p.relay, &p.session.id).await;
                    }
                });
            }
        }
        Ok(Some((
            rewritten,
            MediaRole {
                call,
                responder: Party::Callee,
                initial: true,
                request_offer,
            },
        )))
    }

    /// SDP `body` from `from`, an offer or an answer: the relay learns it, and the
    /// rewritten body comes back. `None`: pass it on untouched.
    async fn media_sdp(
        &self,
        call: &mut CallMedia,
        from: Party,
        offer: bool,
        body: &[u8],
        source: SocketAddr,
    ) -> Option<Vec<u8>> {
        let media = self.media.get()?;
        if call.ended {
            return None;
        }
        if let Some((seen, out)) = &call.last[from.index()] {
            if seen == body {
                // A retransmission, or the 2xx repeating the 18x's SDP.
                return Some(out.clone());
            }
        }
        let parsed = sdp::Sdp::parse(body).ok()?;
        let pol = sdp_policy(call, from, &parsed, source);
        let desc = if offer {
            sdp::describe_offer(&parsed, &pol)
        } else {
            let (_, o) = call.offer.as_ref()?;
            sdp::describe_answer(&parsed, o, &pol)
        };
        let desc = match desc {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(
                    call_id = %call_ref(&call.call_id),
                    error = %e,
                    "SDP not relayed: passed on untouched"
                );
                return None;
            }
        };
        if call.session.is_none() {
            if !offer {
                return None;
            }
            // The offer of a late-offer call, in the callee's 2xx.
            match media
                .relays
                .create(sdp::create_request(&desc, &call.call_id))
                .await
            {
                Ok(p) => {
                    if let Ok(mut s) = media.by_session.lock() {
                        s.insert(p.session.id.clone(), call.call_id.clone());
                    }
                    call.session = Some(p);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no relay for a late offer: SDP passed on untouched");
                    return None;
                }
            }
        } else {
            let update = if !offer && !call.answered {
                // The session's first answer.
                let (_, o) = call.offer.as_ref()?;
                sdp::answer_request(&desc, o)
            } else if call.relay_is_caller(from) {
                UpdateSession {
                    caller: Some(desc.leg.clone()),
                    ..UpdateSession::default()
                }
            } else {
                UpdateSession {
                    callee: Some(desc.leg.clone()),
                    ..UpdateSession::default()
                }
            };
            let p = call.session.as_ref()?;
            match media.relays.update(p.relay, &p.session.id, update).await {
                Ok(info) => {
                    if let Some(p) = call.session.as_mut() {
                        p.session = info;
                    }
                    call.answered |= !offer;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay refused an SDP update: passed on untouched");
                    return None;
                }
            }
        }
        let plan = sdp::Plan::new(&pol, &desc);
        let info = call.leg_info(from.other())?;
        let out = match sdp::rewrite(&parsed, &desc, info, &plan) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "the relay's session does not fit the SDP: passed on untouched");
                return None;
            }
        };
        if offer {
            call.offer = Some((from, desc));
        }
        call.last[from.index()] = Some((body.to_vec(), out.clone()));
        Some(out)
    }

    /// An 18x or 2xx the call's task forwards upstream: its SDP (the answer, or the
    /// offer of a late-offer INVITE) rewritten. `None`: forward it as it is.
    pub(crate) async fn media_response(
        &self,
        role: &MediaRole,
        hop: Hop,
        resp: &Message<'_>,
    ) -> Option<Vec<u8>> {
        let mut call = role.call.lock().await;
        let code = resp.status().unwrap_or(0);
        if role.initial && (200..300).contains(&code) && call.sides[1].is_none() {
            call.sides[1] = Some(Side {
                hop,
                contact: contact_uri(resp).unwrap_or_default(),
                header: resp.header(HeaderName::To).unwrap_or("").to_owned(),
            });
        }
        let body = sdp_body(resp)?;
        self.media_sdp(
            &mut call,
            role.responder,
            !role.request_offer,
            body,
            hop.addr,
        )
        .await
    }

    /// The INVITE failed (or was cancelled): its session goes.
    pub(crate) async fn media_failed(&self, role: &MediaRole) {
        if !role.initial {
            return;
        }
        let mut call = role.call.lock().await;
        self.media_end(&mut call);
    }

    /// Ends the call's session: forgotten now, deleted on the relay in the background
    /// (the request that ended it is not held up by the relay's answer).
    fn media_end(&self, call: &mut CallMedia) {
        let Some(media) = self.media.get() else {
            return;
        };
        if call.ended {
            return;
        }
        call.ended = true;
        media.forget(call);
        if let Some(p) = &call.session {
            let relays = media.relays.clone();
            let (relay, id) = (p.relay, p.session.id.clone());
            tokio::spawn(async move {
                if let Err(e) = relays.delete(relay, &id).await {
                    tracing::warn!(error = %e, "media session delete failed");
                }
            });
        }
    }

    /// A request inside a dialog (or an ACK): tracks CSeq, rewrites SDP offers and
    /// late answers, ends the session on BYE. Returns the request's new bytes when
    /// its body changed, and the role for the task that forwards it.
    pub(crate) async fn media_in_dialog(
        &self,
        msg: &Message<'_>,
        source: SocketAddr,
    ) -> (Option<Vec<u8>>, Option<MediaRole>) {
        let Some(media) = self.media.get() else {
            return (None, None);
        };
        let Some(call_id) = msg.call_id() else {
            return (None, None);
        };
        let from_tag = msg
            .from()
            .and_then(|f| f.params.value("tag").map(str::to_owned));
        let to_tag = msg
            .to()
            .and_then(|f| f.params.value("tag").map(str::to_owned));
        let Some(handle) = media.find(call_id, [from_tag.as_deref(), to_tag.as_deref()]) else {
            return (None, None);
        };
        let mut call = handle.lock().await;
        let from = if from_tag.as_deref() == Some(call.caller_tag.as_str()) {
            Party::Caller
        } else {
            Party::Callee
        };
        let method = msg.method().unwrap_or("");
        if method != "ACK" {
            if let Some((n, _)) = msg.cseq() {
                let slot = &mut call.cseq[from.index()];
                *slot = (*slot).max(n);
            }
        }
        match method {
            "BYE" => {
                self.media_end(&mut call);
                (None, None)
            }
            "INVITE" | "UPDATE" | "ACK" => {
                let body = sdp_body(msg);
                let role = (method != "ACK").then(|| MediaRole {
                    call: handle.clone(),
                    responder: from.other(),
                    initial: false,
                    request_offer: body.is_some(),
                });
                let Some(body) = body else {
                    return (None, role);
                };
                // In a request an SDP is an offer, in an ACK the answer to the 2xx's.
                let out = self
                    .media_sdp(&mut call, from, method != "ACK", body, source)
                    .await;
                (out.map(|b| with_body(msg, &b)), role)
            }
            _ => (None, None),
        }
    }

    /// Ends calls whose relay session ended on the relay's side (inactivity, maximum
    /// duration) or whose relay stopped answering: a BYE to both sides.
    pub(crate) async fn media_events(
        self: Arc<Self>,
        mut ended: tokio::sync::broadcast::Receiver<Ended>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = ended.recv() => match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "ended media sessions lagged: those calls end by BYE or timeout");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            let Some(media) = self.media.get() else {
                return;
            };
            let call_id = media
                .by_session
                .lock()
                .ok()
                .and_then(|s| s.get(&ev.session_id).cloned());
            let Some(call_id) = call_id else { continue };
            let handle = media
                .by_call
                .lock()
                .ok()
                .and_then(|b| b.get(&call_id).map(|(_, _, c)| c.clone()));
            let Some(handle) = handle else { continue };
            let this = self.clone();
            tokio::spawn(async move {
                let mut call = handle.lock().await;
                if call.ended {
                    return;
                }
                call.ended = true;
                if let Some(m) = this.media.get() {
                    m.forget(&call);
                }
                tracing::info!(
                    call_id = %call_ref(&call.call_id),
                    reason = ev.reason.as_str(),
                    "media session ended by the relay: ending the call with BYE"
                );
                let reason = format!(
                    "SIP;cause=503;text=\"Media relay: {}\"",
                    ev.reason.as_str().replace('_', " ")
                );
                let byes = [Party::Caller, Party::Callee]
                    .into_iter()
                    .filter_map(|to| bye_for(&call, to, &reason, &this))
                    .collect::<Vec<_>>();
                drop(call);
                this.release_call(&call_id);
                for (hop, bytes) in byes {
                    let this = this.clone();
                    tokio::spawn(async move {
                        let code = this.send_own_request_to(hop, bytes).await;
                        tracing::debug!(?code, "BYE for an ended media session");
                    });
                }
            });
        }
    }
}

/// The BYE we send to `to` to end the call: From/To as the other side's dialog has
/// them, CSeq one past the highest the other side used.
fn bye_for(call: &CallMedia, to: Party, reason: &str, proxy: &Proxy) -> Option<(Hop, Vec<u8>)> {
    let target = call.sides[to.index()].as_ref()?;
    let sender = call.sides[to.other().index()].as_ref()?;
    if target.contact.is_empty() {
        return None;
    }
    let branch = format!("z9hG4bK{}", new_tag());
    let cseq = call.cseq[to.other().index()].saturating_add(1).max(1);
    let text = format!(
        "BYE {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {cid}\r\nCSeq: {cseq} BYE\r\nReason: {reason}\r\nContent-Length: 0\r\n\r\n",
        uri = target.contact,
        via = proxy.routing.via(target.hop, &branch),
        from = sender.header,
        to = target.header,
        cid = call.call_id,
    );
    Some((target.hop, text.into_bytes()))
}

/// The Contact URI of a message (first Contact, without brackets or parameters).
fn contact_uri(msg: &Message<'_>) -> Option<String> {
    let v = msg.header(HeaderName::Contact)?;
    let first = grammar::split_top_level(v, b',')?.into_iter().next()?;
    grammar::name_addr(first).map(|n| n.uri.to_owned())
}

/// How the SDP module is to read and rewrite an SDP from `from`. A side whose SDP
/// names another address than the one its signaling came from is taken to be behind
/// NAT: without ICE its leg latches the first source instead of the announced address.
fn sdp_policy(
    call: &CallMedia,
    from: Party,
    parsed: &sdp::Sdp<'_>,
    source: SocketAddr,
) -> sdp::Policy {
    let announced = parsed
        .media
        .iter()
        .find(|m| m.port != 0)
        .and_then(|m| m.connection.as_ref().or(parsed.connection.as_ref()))
        .and_then(|c| c.addr);
    sdp::Policy {
        force_relay: call.policy == Effective::ForceRelay,
        plain_callee: call.offnet && from == Party::Caller,
        learn_first_source: announced.is_some_and(|ip| ip != source.ip()),
    }
}

fn relay_unavailable<T>(e: RelayError, needed: bool) -> Result<Option<T>, Refused> {
    if needed {
        tracing::warn!(error = %e, "no media relay for a call that needs one: 503");
        Err(Refused {
            code: 503,
            reason: "Service Unavailable",
            warning: Some("no media relay available"),
        })
    } else {
        tracing::warn!(error = %e, "no media relay: the call's SDP goes on untouched");
        Ok(None)
    }
}

impl Refused {
    pub(crate) fn reply(&self, req: &Request<'_>) -> Handled {
        let mut b = ResponseBuilder::new(
            req.msg,
            self.code,
            self.reason,
            req.top_via,
            Some(&new_tag()),
        );
        if let Some(w) = self.warning {
            b = b.header("Warning", &format!("399 tandem \"{w}\""));
        }
        if self.code == 503 {
            b = b.header("Retry-After", "5");
        }
        Handled::Reply(b.reply())
    }
}

/// A Call-ID for the log: the part before `@` (which often names a host address),
/// at most 24 characters.
pub(crate) fn call_ref(call_id: &str) -> &str {
    crate::registrar::call_ref(call_id)
}
