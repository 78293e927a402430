//! The sans-IO media core: media sessions for calls placed by signaling through the
//! control API (see [`tandem_control`] for the model of sessions, legs and streams).
//!
//! # Calling contract
//!
//! [`Media`] owns no socket, thread or clock. The driver (one per worker; a session
//! lives on one worker):
//! - creates, updates, queries and deletes sessions with [`Media::create`],
//!   [`Media::update`], [`Media::info`] and [`Media::delete`], passing the time and a
//!   [`MediaPorts`] that opens and closes relay ports (the same port machinery as TURN
//!   allocations);
//! - registers each port the core opened in its datapath and tells the core the
//!   handle it will send from with [`Media::attach`]; a port is named by a
//!   [`PortKey`] the driver keeps as the socket's role;
//! - hands every datagram that arrives on a media port to [`Media::handle_packet`],
//!   in place, and sends what it answers: `buf[range]` from the port whose handle it
//!   names to the address it names. Nothing is allocated or copied on the forwarding
//!   path; SRTP bridging writes the transformed packet over the received one, so the
//!   buffer must have room after the datagram for the tag that encryption adds (up
//!   to 16 bytes; the datapath's buffers have far more), else the packet is dropped
//!   as malformed;
//! - sleeps no longer than [`Media::poll_timeout`] and then calls
//!   [`Media::handle_timeout`]; sessions that end there (inactivity, maximum duration)
//!   come out of [`Media::poll_ended`] with their final counters.
//!
//! # Latching (no RTP Bleed)
//!
//! The relay sends to an address only once it is *latched*:
//! - a leg with ICE latches a source that sent a STUN Binding request with a valid
//!   MESSAGE-INTEGRITY for the call's ICE credentials ([`ice`]); up to
//!   [`AUTHENTICATED_SOURCES`] such sources are remembered per port (an agent checks
//!   from several candidates), and the relay sends to the one that was heard from last,
//!   so media settles on the pair the endpoints chose and a later check re-latches
//!   after a network change. Media from any other source is dropped;
//! - a leg without ICE latches the address its SDP announced, or with
//!   `learn_first_source` the first source that sends, once and for all.
//!
//! Checks are forwarded unchanged out of the other leg's port to the other leg's
//! latched address, so ICE stays end to end; a check that arrives before the other
//! leg has latched is dropped (ICE retransmits it).

pub mod ice;
pub mod packet;
pub mod srtp;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use tandem_control::{
    AddressFamily, CreateSession, DropCounters, EndReason, IceCredentials, Invalid, LegCounters,
    LegInfo, LegRequest, SessionInfo, SessionState, SrtpCrypto, StreamInfo, StreamRequest,
    UpdateSession,
};

use crate::turn::{Family, PortError};
use packet::Kind;

/// Sources remembered per port that passed an authenticated ICE check.
pub const AUTHENTICATED_SOURCES: usize = 4;

/// Names a session inside one core; the generation makes a stale key harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub index: u32,
    pub generation: u32,
}

/// The caller's or the callee's side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Caller = 0,
    Callee = 1,
}

/// RTP or RTCP (ICE components 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Rtp = 1,
    Rtcp = 2,
}

/// One relay port of a session: the driver keeps it as the socket's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub session: SessionKey,
    pub side: Side,
    pub stream: u8,
    pub component: Component,
}

/// What the core needs from the driver to open and close relay ports.
pub trait MediaPorts {
    /// Open a port for `first` on an address of `family` and, with `second`, the
    /// next port up too (RTP and RTCP as an even/odd pair, as RFC 3550 section 11
    /// recommends).
    fn open_media(
        &mut self,
        first: PortKey,
        second: Option<PortKey>,
        family: Family,
    ) -> Result<(SocketAddr, Option<SocketAddr>), PortError>;
    /// Close the port of `key`.
    fn close_media(&mut self, key: PortKey);
}

/// Settings of the media core.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// End a session after this long without media from either side.
    pub inactivity_timeout: Duration,
    /// End a session this long after it was created.
    pub max_duration: Duration,
    /// Most sessions in this core (one worker's share).
    pub max_sessions: usize,
    /// The public address of the relay ports when they bind a private one behind a
    /// 1:1 NAT (`external-ip`); applied to ports of the same family.
    pub external_ip: Option<std::net::IpAddr>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            inactivity_timeout: Duration::from_secs(60),
            max_duration: Duration::from_secs(12 * 3600),
            max_sessions: 100_000,
            external_ip: None,
        }
    }
}

/// Why a control operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("invalid request: {0}")]
    Invalid(#[from] Invalid),
    #[error("no relay address of the requested family")]
    Family,
    #[error("no free relay port")]
    PortsExhausted,
    #[error("the session limit is reached")]
    TooManySessions,
    #[error("the relay is draining before it stops")]
    Draining,
    #[error("no such session")]
    NotFound,
    #[error("the session has its answer already")]
    AlreadyAnswered,
    #[error("the session has no answer yet")]
    NotAnswered,
    #[error("the number of streams differs between the legs")]
    StreamCount,
    #[error("unusable SRTP key: {0}")]
    Srtp(#[from] srtp::KeyError),
}

impl From<PortError> for MediaError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Family => MediaError::Family,
            _ => MediaError::PortsExhausted,
        }
    }
}

/// What to do with a datagram handed to [`Media::handle_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaOutput {
    /// Dropped (and counted).
    None,
    /// Send `buf[range]` from the port attached with `handle` to `to`.
    Forward {
        handle: u32,
        to: SocketAddr,
        range: Range<usize>,
    },
}

/// Counters of the whole core, for metrics (no per-session labels).
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaStats {
    pub sessions_created: u64,
    pub ended_deleted: u64,
    pub ended_inactivity: u64,
    pub ended_max_duration: u64,
    pub ended_shutdown: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub ice_checks: u64,
    pub dropped: DropCounters,
    /// Packets decrypted (SRTP to RTP) and encrypted (RTP to SRTP) by bridging.
    pub srtp_decrypted: u64,
    pub srtp_encrypted: u64,
    pub ports_exhausted: u64,
}

impl MediaStats {
    pub fn merge(&mut self, o: &MediaStats) {
        self.sessions_created += o.sessions_created;
        self.ended_deleted += o.ended_deleted;
        self.ended_inactivity += o.ended_inactivity;
        self.ended_max_duration += o.ended_max_duration;
        self.ended_shutdown += o.ended_shutdown;
        self.packets_forwarded += o.packets_forwarded;
        self.bytes_forwarded += o.bytes_forwarded;
        self.ice_checks += o.ice_checks;
        self.dropped.unauthenticated += o.dropped.unauthenticated;
        self.dropped.bleed += o.dropped.bleed;
        self.dropped.unlatched += o.dropped.unlatched;
        self.dropped.srtp_auth += o.dropped.srtp_auth;
        self.dropped.malformed += o.dropped.malformed;
        self.srtp_decrypted += o.srtp_decrypted;
        self.srtp_encrypted += o.srtp_encrypted;
        self.ports_exhausted += o.ports_exhausted;
    }
}

/// One relay port and what it latched.
#[derive(Debug, Clone)]
struct Port {
    /// The local address (as bound).
    addr: SocketAddr,
    handle: Option<u32>,
    /// Where the relay sends to this side's device.
    latched: Option<SocketAddr>,
    /// Sources that passed an authenticated ICE check (ring, newest at `next - 1`).
    authenticated: [Option<SocketAddr>; AUTHENTICATED_SOURCES],
    next: usize,
}

impl Port {
    fn new(addr: SocketAddr) -> Port {
        Port {
            addr,
            handle: None,
            latched: None,
            authenticated: [None; AUTHENTICATED_SOURCES],
            next: 0,
        }
    }

    fn is_authenticated(&self, from: SocketAddr) -> bool {
        self.authenticated.contains(&Some(from))
    }

    fn remember(&mut self, from: SocketAddr) {
        if !self.is_authenticated(from) {
            if let Some(slot) = self
                .authenticated
                .get_mut(self.next % AUTHENTICATED_SOURCES)
            {
                *slot = Some(from);
            }
            self.next = self.next.wrapping_add(1);
        }
        self.latched = Some(from);
    }

    fn forget(&mut self) {
        self.latched = None;
        self.authenticated = [None; AUTHENTICATED_SOURCES];
        self.next = 0;
    }
}

/// One stream of one leg.
#[derive(Debug, Clone)]
struct Stream {
    rtcp_mux: bool,
    announced_rtp: Option<SocketAddr>,
    announced_rtcp: Option<SocketAddr>,
    rtp: Port,
    rtcp: Option<Port>,
}

impl Stream {
    fn port(&self, c: Component) -> Option<&Port> {
        match c {
            Component::Rtp => Some(&self.rtp),
            Component::Rtcp => self.rtcp.as_ref(),
        }
    }

    fn port_mut(&mut self, c: Component) -> Option<&mut Port> {
        match c {
            Component::Rtp => Some(&mut self.rtp),
            Component::Rtcp => self.rtcp.as_mut(),
        }
    }
}

/// How a leg decides where its device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Latching {
    /// Authenticated ICE checks.
    Ice,
    /// The announced address only.
    Announced,
    /// The first source, once.
    LearnFirst,
}

#[derive(Debug)]
struct Leg {
    /// This side's ICE credentials.
    ice: Option<IceCredentials>,
    learn_first_source: bool,
    srtp: Option<srtp::Termination>,
    /// The key the device announced, which `srtp` decrypts with.
    srtp_device: Option<SrtpCrypto>,
    streams: Vec<Stream>,
    counters: LegCounters,
    last_packet: Option<Instant>,
}

impl Leg {
    fn latching(&self) -> Latching {
        if self.ice.is_some() {
            Latching::Ice
        } else if self.learn_first_source {
            Latching::LearnFirst
        } else {
            Latching::Announced
        }
    }
}

#[derive(Debug)]
struct Session {
    id: String,
    call_id: Option<String>,
    answered: bool,
    created: Instant,
    last_media: Instant,
    inactivity: Duration,
    max_duration: Duration,
    family: Family,
    legs: [Leg; 2],
}

impl Session {
    fn leg(&self, s: Side) -> &Leg {
        &self.legs[s as usize]
    }

    fn deadline(&self) -> Instant {
        (self.created + self.max_duration).min(self.last_media + self.inactivity)
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    session: Option<Session>,
}

/// The media sessions of one worker. See the module documentation for the contract.
#[derive(Debug)]
pub struct Media {
    config: MediaConfig,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// One entry per session: its next deadline (re-pushed when it moved).
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    ended: Vec<SessionInfo>,
    stats: MediaStats,
    rng: rand::rngs::StdRng,
}

impl Media {
    /// A core with `config`; `seed` feeds the SRTP keys the relay makes.
    pub fn new(config: MediaConfig, seed: [u8; 32]) -> Media {
        Media {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
            ended: Vec::new(),
            stats: MediaStats::default(),
            rng: rand::rngs::StdRng::from_seed(seed),
        }
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.live
    }

    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }

    fn get(&self, key: SessionKey) -> Option<&Session> {
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.session.as_ref()
    }

    fn get_mut(&mut self, key: SessionKey) -> Option<&mut Session> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.session.as_mut()
    }

    /// Create a session named `id` from the caller's offer. The callee leg gets
    /// ports at once (the offer sent to the callee carries them).
    pub fn create(
        &mut self,
        now: Instant,
        id: String,
        req: &CreateSession,
        ports: &mut dyn MediaPorts,
    ) -> Result<(SessionKey, SessionInfo), MediaError> {
        req.validate()?;
        if self.live >= self.config.max_sessions {
            return Err(MediaError::TooManySessions);
        }
        let family = match req.family {
            AddressFamily::Ipv4 => Family::V4,
            AddressFamily::Ipv6 => Family::V6,
        };
        let callee_req = req.callee.clone().unwrap_or_else(|| LegRequest {
            streams: req
                .caller
                .streams
                .iter()
                .map(|s| StreamRequest {
                    rtcp_mux: s.rtcp_mux,
                    rtp: None,
                    rtcp: None,
                })
                .collect(),
            ..LegRequest::default()
        });
        if callee_req.streams.len() != req.caller.streams.len() {
            return Err(MediaError::StreamCount);
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).map_err(|_| MediaError::TooManySessions)?;
                self.slots.push(Slot::default());
                i
            }
        };
        let generation = self.slots[index as usize].generation;
        let key = SessionKey { index, generation };
        let caller = match self.new_leg(key, Side::Caller, family, &req.caller, ports) {
            Ok(l) => l,
            Err(e) => {
                self.free.push(index);
                return Err(self.count_error(e));
            }
        };
        let callee = match self.new_leg(key, Side::Callee, family, &callee_req, ports) {
            Ok(l) => l,
            Err(e) => {
                close_leg(key, Side::Caller, &caller, ports);
                self.free.push(index);
                return Err(self.count_error(e));
            }
        };
        let inactivity = req
            .inactivity_timeout_secs
            .map_or(self.config.inactivity_timeout, |s| {
                Duration::from_secs(u64::from(s.max(1)))
            });
        let max_duration = req.max_duration_secs.map_or(self.config.max_duration, |s| {
            Duration::from_secs(u64::from(s.max(1)))
        });
        let session = Session {
            id,
            call_id: req.call_id.clone(),
            answered: false,
            created: now,
            last_media: now,
            inactivity,
            max_duration,
            family,
            legs: [caller, callee],
        };
        self.timers
            .push(Reverse((session.deadline(), index, generation)));
        self.slots[index as usize].session = Some(session);
        self.live += 1;
        self.stats.sessions_created += 1;
        let info = self.info(now, key).ok_or(MediaError::NotFound)?;
        Ok((key, info))
    }

    fn count_error(&mut self, e: MediaError) -> MediaError {
        if e == MediaError::PortsExhausted {
            self.stats.ports_exhausted += 1;
        }
        e
    }

    fn new_leg(
        &mut self,
        key: SessionKey,
        side: Side,
        family: Family,
        req: &LegRequest,
        ports: &mut dyn MediaPorts,
    ) -> Result<Leg, MediaError> {
        let srtp = match &req.srtp {
            Some(device) => {
                let mut random = [0u8; 32];
                self.rng.fill_bytes(&mut random);
                Some(srtp::Termination::new(
                    device,
                    srtp::new_key(device.suite, &random),
                )?)
            }
            None => None,
        };
        let mut leg = Leg {
            ice: req.ice.clone(),
            learn_first_source: req.learn_first_source,
            srtp,
            srtp_device: req.srtp.clone(),
            streams: Vec::with_capacity(req.streams.len()),
            counters: LegCounters::default(),
            last_packet: None,
        };
        for (i, s) in req.streams.iter().enumerate() {
            match open_stream(key, side, i, family, s, ports) {
                Ok(st) => leg.streams.push(st),
                Err(e) => {
                    close_leg(key, side, &leg, ports);
                    return Err(e.into());
                }
            }
        }
        leg.apply_latching();
        Ok(leg)
    }

    /// Apply the answer or a later change (re-INVITE, UPDATE).
    pub fn update(
        &mut self,
        now: Instant,
        key: SessionKey,
        req: &UpdateSession,
        ports: &mut dyn MediaPorts,
    ) -> Result<SessionInfo, MediaError> {
        req.validate()?;
        let answered = self.get(key).ok_or(MediaError::NotFound)?.answered;
        if req.answer.is_some() && answered {
            return Err(MediaError::AlreadyAnswered);
        }
        if req.callee.is_some() && !answered {
            return Err(MediaError::NotAnswered);
        }
        // A fresh key for each leg that may need one: two legs never share a key.
        let mut random = [[0u8; 32]; 2];
        for r in &mut random {
            self.rng.fill_bytes(r);
        }
        let session = self.get_mut(key).ok_or(MediaError::NotFound)?;
        let family = session.family;
        let changes = [
            (Side::Caller, req.caller.as_ref()),
            (Side::Callee, req.answer.as_ref().or(req.callee.as_ref())),
        ];
        // Check the keys, then open every port the change needs, before changing
        // anything: a bad key or ports that run out leave the session as it was.
        for (side, r) in changes {
            if let Some(device) = r.and_then(|r| r.srtp.as_ref()) {
                srtp::Termination::new(
                    device,
                    srtp::new_key(device.suite, &random[side as usize]),
                )?;
            }
        }
        let mut prepared = Prepared::open(key, family, plan(session, &changes), ports)?;
        for (side, r) in changes {
            let Some(r) = r else { continue };
            let leg = &mut session.legs[side as usize];
            update_leg(
                key,
                side,
                family,
                leg,
                r,
                &random[side as usize],
                &mut prepared,
            )?;
        }
        // Both legs carry the same streams: a stream added on one side gets ports on
        // the other.
        let n = session
            .legs
            .iter()
            .map(|l| l.streams.len())
            .max()
            .unwrap_or(1);
        for side in [Side::Caller, Side::Callee] {
            let leg = &mut session.legs[side as usize];
            while leg.streams.len() < n {
                let i = leg.streams.len();
                let mux = leg.streams.last().is_some_and(|s| s.rtcp_mux);
                let st = open_stream(
                    key,
                    side,
                    i,
                    family,
                    &StreamRequest {
                        rtcp_mux: mux,
                        ..StreamRequest::default()
                    },
                    &mut prepared,
                )?;
                leg.streams.push(st);
            }
        }
        prepared.commit(ports);
        // A change is activity: a call that rang a long time keeps its session.
        session.last_media = session.last_media.max(now);
        if req.answer.is_some() {
            session.answered = true;
        }
        self.info(now, key).ok_or(MediaError::NotFound)
    }

    /// The session's state and counters.
    pub fn info(&self, now: Instant, key: SessionKey) -> Option<SessionInfo> {
        let s = self.get(key)?;
        Some(describe(&self.config, now, s, None))
    }

    /// End the session at once, free its ports and give its final counters.
    pub fn delete(
        &mut self,
        now: Instant,
        key: SessionKey,
        ports: &mut dyn MediaPorts,
    ) -> Option<SessionInfo> {
        self.end(now, key, EndReason::Deleted, ports)
    }

    fn end(
        &mut self,
        now: Instant,
        key: SessionKey,
        reason: EndReason,
        ports: &mut dyn MediaPorts,
    ) -> Option<SessionInfo> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let session = slot.session.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index);
        self.live -= 1;
        for side in [Side::Caller, Side::Callee] {
            close_leg(key, side, session.leg(side), ports);
        }
        match reason {
            EndReason::Deleted => self.stats.ended_deleted += 1,
            EndReason::Inactivity => self.stats.ended_inactivity += 1,
            EndReason::MaxDuration => self.stats.ended_max_duration += 1,
            EndReason::Shutdown => self.stats.ended_shutdown += 1,
        }
        Some(describe(&self.config, now, &session, Some(reason)))
    }

    /// The driver registered `key`'s socket and sends from it with `handle`.
    pub fn attach(&mut self, key: PortKey, handle: u32) {
        if let Some(p) = self.port_mut(key) {
            p.handle = Some(handle);
        }
    }

    fn port_mut(&mut self, key: PortKey) -> Option<&mut Port> {
        self.get_mut(key.session)?.legs[key.side as usize]
            .streams
            .get_mut(usize::from(key.stream))?
            .port_mut(key.component)
    }

    /// The earliest deadline of any session.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// End the sessions whose inactivity timeout or maximum duration has passed.
    pub fn handle_timeout(&mut self, now: Instant, ports: &mut dyn MediaPorts) {
        while let Some(Reverse((t, index, generation))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let key = SessionKey { index, generation };
            let Some(s) = self.get(key) else { continue };
            let due = s.deadline();
            if due > now {
                self.timers.push(Reverse((due, index, generation)));
                continue;
            }
            let reason = if now >= s.created + s.max_duration {
                EndReason::MaxDuration
            } else {
                EndReason::Inactivity
            };
            if let Some(info) = self.end(now, key, reason, ports) {
                self.ended.push(info);
            }
        }
    }

    /// A session that ended by itself (timeout), with its final counters.
    pub fn poll_ended(&mut self) -> Option<SessionInfo> {
        self.ended.pop()
    }

    /// End every session (the relay is stopping).
    pub fn shutdown(&mut self, now: Instant, ports: &mut dyn MediaPorts) {
        for index in 0..self.slots.len() {
            let Ok(i) = u32::try_from(index) else { break };
            let generation = self.slots[index].generation;
            if self.slots[index].session.is_some() {
                self.end(
                    now,
                    SessionKey {
                        index: i,
                        generation,
                    },
                    EndReason::Shutdown,
                    ports,
                );
            }
        }
        self.timers.clear();
    }

    /// Handle a datagram that arrived on port `at` from `from`: the datagram is
    /// `buf[payload]`. See the module documentation.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        at: PortKey,
        from: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> MediaOutput {
        let Media { slots, stats, .. } = self;
        let Some(slot) = slots.get_mut(at.session.index as usize) else {
            return MediaOutput::None;
        };
        if slot.generation != at.session.generation {
            return MediaOutput::None;
        }
        let Some(session) = slot.session.as_mut() else {
            return MediaOutput::None;
        };
        let Some(packet) = buf.get(payload.clone()) else {
            return MediaOutput::None;
        };
        let answered = session.answered;
        let [caller, callee] = &mut session.legs;
        let (this, other) = match at.side {
            Side::Caller => (caller, callee),
            Side::Callee => (callee, caller),
        };
        let stream = usize::from(at.stream);
        let kind = packet::classify(packet);
        let latching = if at.side == Side::Callee && !answered && other.ice.is_some() {
            // Before the answer the callee's mode is unknown; a callee that checks
            // with the caller's credentials is doing ICE.
            Latching::Ice
        } else {
            this.latching()
        };

        let mut latch_after_auth = false;
        // Where it came from: accept, latch, or drop.
        match kind {
            Kind::Stun if latching == Latching::Ice => {
                let expect = other.ice.as_ref().map(|o| ice::Expect {
                    receiver_ufrag: &o.ufrag,
                    receiver_pwd: &o.pwd,
                    sender_ufrag: this.ice.as_ref().map(|t| t.ufrag.as_str()),
                });
                let Some(port) = this
                    .streams
                    .get_mut(stream)
                    .and_then(|s| s.port_mut(at.component))
                else {
                    return MediaOutput::None;
                };
                match ice::check(packet, expect) {
                    ice::Stun::AuthenticatedCheck => {
                        port.remember(from);
                        this.counters.ice_checks += 1;
                        stats.ice_checks += 1;
                    }
                    ice::Stun::UnauthenticatedCheck => {
                        this.counters.dropped.unauthenticated += 1;
                        stats.dropped.unauthenticated += 1;
                        return MediaOutput::None;
                    }
                    ice::Stun::Other => {
                        if !port.is_authenticated(from) {
                            this.counters.dropped.bleed += 1;
                            stats.dropped.bleed += 1;
                            return MediaOutput::None;
                        }
                    }
                    ice::Stun::Malformed => {
                        this.counters.dropped.malformed += 1;
                        stats.dropped.malformed += 1;
                        return MediaOutput::None;
                    }
                }
            }
            Kind::Other => {
                this.counters.dropped.malformed += 1;
                stats.dropped.malformed += 1;
                return MediaOutput::None;
            }
            _ => {
                let Some(port) = this
                    .streams
                    .get_mut(stream)
                    .and_then(|s| s.port_mut(at.component))
                else {
                    return MediaOutput::None;
                };
                let ok = match latching {
                    Latching::Ice => {
                        if port.latched == Some(from) {
                            true
                        } else if port.is_authenticated(from) {
                            // The device moved its media to another checked pair.
                            port.latched = Some(from);
                            true
                        } else {
                            false
                        }
                    }
                    Latching::Announced => port.latched == Some(from),
                    Latching::LearnFirst => match port.latched {
                        Some(l) => l == from,
                        None => {
                            if this.srtp.is_some() && matches!(kind, Kind::Rtp | Kind::Rtcp) {
                                // Only a source that knows the SRTP key: latched below,
                                // once the packet authenticates.
                                latch_after_auth = true;
                            } else {
                                port.latched = Some(from);
                            }
                            true
                        }
                    },
                };
                if !ok {
                    this.counters.dropped.bleed += 1;
                    stats.dropped.bleed += 1;
                    return MediaOutput::None;
                }
            }
        }

        // SRTP terminated on this leg: authenticate and decrypt in place.
        let bridged = this.srtp.is_some() || other.srtp.is_some();
        let mut range = payload.clone();
        if kind == Kind::Dtls && bridged {
            // A bridged leg speaks SDES; DTLS has no place on it.
            this.counters.dropped.malformed += 1;
            stats.dropped.malformed += 1;
            return MediaOutput::None;
        }
        let media = matches!(kind, Kind::Rtp | Kind::Rtcp);
        if media && this.srtp.is_some() {
            match decrypt_in_place(kind, this, buf, range.clone(), stats) {
                Some(r) => range = r,
                None => return MediaOutput::None,
            }
        }
        if latch_after_auth {
            if let Some(p) = this
                .streams
                .get_mut(stream)
                .and_then(|s| s.port_mut(at.component))
            {
                p.latched = Some(from);
            }
        }

        // Where it goes: the other leg's port for the same stream and component.
        let out_component = match (kind, at.component) {
            // RTCP that arrived multiplexed goes to the other side's RTCP port when
            // that side does not multiplex.
            (Kind::Rtcp, _) => Component::Rtcp,
            (_, c) => c,
        };
        let Some(dest) = other.streams.get(stream).and_then(|s| {
            s.port(out_component)
                .or_else(|| s.port(Component::Rtp))
                .filter(|p| p.latched.is_some())
        }) else {
            this.counters.dropped.unlatched += 1;
            stats.dropped.unlatched += 1;
            return MediaOutput::None;
        };
        let (Some(handle), Some(to)) = (dest.handle, dest.latched) else {
            this.counters.dropped.unlatched += 1;
            stats.dropped.unlatched += 1;
            return MediaOutput::None;
        };

        // SRTP terminated on the other leg: encrypt for it in place.
        if media && other.srtp.is_some() {
            match encrypt_in_place(kind, this, other, buf, range.clone(), stats) {
                Some(r) => range = r,
                None => return MediaOutput::None,
            }
        }

        let n = (range.end - range.start) as u64;
        let in_len = (payload.end - payload.start) as u64;
        this.counters.packets_in += 1;
        this.counters.bytes_in += in_len;
        this.last_packet = Some(now);
        other.counters.packets_out += 1;
        other.counters.bytes_out += n;
        stats.packets_forwarded += 1;
        stats.bytes_forwarded += n;
        session.last_media = now;
        MediaOutput::Forward { handle, to, range }
    }
}

/// Authenticate and decrypt SRTP or SRTCP from `this` leg's device, writing the plain
/// packet over it in `buf`. `None` when it is dropped (and counted).
fn decrypt_in_place(
    kind: Kind,
    this: &mut Leg,
    buf: &mut [u8],
    range: Range<usize>,
    stats: &mut MediaStats,
) -> Option<Range<usize>> {
    let t = this.srtp.as_mut()?;
    let packet = buf.get(range.clone())?;
    match t.decrypt(kind, packet) {
        Ok(plain) => {
            stats.srtp_decrypted += 1;
            write_over(buf, range.start, &plain, this, stats)
        }
        Err(srtp::Refused::Auth) => {
            this.counters.dropped.srtp_auth += 1;
            stats.dropped.srtp_auth += 1;
            None
        }
        Err(srtp::Refused::Malformed) => {
            this.counters.dropped.malformed += 1;
            stats.dropped.malformed += 1;
            None
        }
    }
}

/// Encrypt plain RTP or RTCP for `other` leg's device, writing the SRTP packet over it
/// in `buf` (the tailroom after it holds the tag). Drops count on `this` leg, where
/// the packet came from.
fn encrypt_in_place(
    kind: Kind,
    this: &mut Leg,
    other: &mut Leg,
    buf: &mut [u8],
    range: Range<usize>,
    stats: &mut MediaStats,
) -> Option<Range<usize>> {
    let t = other.srtp.as_mut()?;
    let packet = buf.get(range.clone())?;
    match t.encrypt(kind, packet) {
        Ok(enc) => {
            stats.srtp_encrypted += 1;
            write_over(buf, range.start, &enc, this, stats)
        }
        Err(_) => {
            this.counters.dropped.malformed += 1;
            stats.dropped.malformed += 1;
            None
        }
    }
}

fn write_over(
    buf: &mut [u8],
    start: usize,
    bytes: &[u8],
    this: &mut Leg,
    stats: &mut MediaStats,
) -> Option<Range<usize>> {
    let end = start.checked_add(bytes.len())?;
    let Some(dst) = buf.get_mut(start..end) else {
        this.counters.dropped.malformed += 1;
        stats.dropped.malformed += 1;
        return None;
    };
    dst.copy_from_slice(bytes);
    Some(start..end)
}

impl Leg {
    /// Set the latched addresses a non-ICE leg starts with (its announced ones).
    fn apply_latching(&mut self) {
        let latching = self.latching();
        for s in &mut self.streams {
            match latching {
                Latching::Announced => {
                    s.rtp.latched = s.announced_rtp;
                    if let Some(p) = s.rtcp.as_mut() {
                        p.latched = s.announced_rtcp;
                    }
                }
                Latching::Ice | Latching::LearnFirst => {}
            }
        }
    }
}

fn open_stream(
    key: SessionKey,
    side: Side,
    index: usize,
    family: Family,
    req: &StreamRequest,
    ports: &mut dyn MediaPorts,
) -> Result<Stream, PortError> {
    let stream = u8::try_from(index).map_err(|_| PortError::Exhausted)?;
    let pk = |component| PortKey {
        session: key,
        side,
        stream,
        component,
    };
    let (rtp, rtcp) = ports.open_media(
        pk(Component::Rtp),
        (!req.rtcp_mux).then(|| pk(Component::Rtcp)),
        family,
    )?;
    Ok(Stream {
        rtcp_mux: req.rtcp_mux,
        announced_rtp: req.rtp,
        announced_rtcp: announced_rtcp(req),
        rtp: Port::new(rtp),
        rtcp: rtcp.map(Port::new),
    })
}

/// Where the device receives RTCP: `a=rtcp`, else the RTP port plus one (RFC 3550
/// section 11), or the RTP address itself with rtcp-mux.
fn announced_rtcp(req: &StreamRequest) -> Option<SocketAddr> {
    if req.rtcp_mux {
        return req.rtp;
    }
    req.rtcp.or_else(|| {
        req.rtp
            .and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)))
    })
}

/// A port an update needs opened: a whole stream (RTP, and RTCP unless muxed) or the
/// RTCP port of a stream that stops multiplexing.
#[derive(Debug, Clone, Copy)]
enum Need {
    Stream { side: Side, index: usize, mux: bool },
    Rtcp { side: Side, index: usize },
}

/// What `update_leg` and the stream growth after it will open, worked out from the
/// session as it is (the same rules, without changing anything).
fn plan(session: &Session, changes: &[(Side, Option<&LegRequest>); 2]) -> Vec<Need> {
    let mut needs = Vec::new();
    let mut muxes: [Vec<bool>; 2] = [Vec::new(), Vec::new()];
    for (side, r) in changes {
        let leg = session.leg(*side);
        let m = &mut muxes[*side as usize];
        *m = leg.streams.iter().map(|s| s.rtcp_mux).collect();
        let Some(r) = r else { continue };
        for (index, sr) in r.streams.iter().enumerate() {
            match m.get_mut(index) {
                Some(mux) => {
                    if *mux != sr.rtcp_mux {
                        let has_rtcp = leg.streams.get(index).is_some_and(|s| s.rtcp.is_some());
                        if !sr.rtcp_mux && !has_rtcp {
                            needs.push(Need::Rtcp { side: *side, index });
                        }
                        *mux = sr.rtcp_mux;
                    }
                }
                None => {
                    needs.push(Need::Stream {
                        side: *side,
                        index,
                        mux: sr.rtcp_mux,
                    });
                    m.push(sr.rtcp_mux);
                }
            }
        }
    }
    let n = muxes.iter().map(Vec::len).max().unwrap_or(1);
    for side in [Side::Caller, Side::Callee] {
        let m = &mut muxes[side as usize];
        while m.len() < n {
            let mux = m.last().copied().unwrap_or(false);
            needs.push(Need::Stream {
                side,
                index: m.len(),
                mux,
            });
            m.push(mux);
        }
    }
    needs
}

/// Ports opened ahead of an update, handed out as the update asks for them; closes
/// asked for during the update wait for [`Prepared::commit`].
struct Prepared {
    opened: Vec<(PortKey, SocketAddr)>,
    closes: Vec<PortKey>,
}

impl Prepared {
    /// Open what `needs` says, or nothing: on failure every port opened here is
    /// closed again.
    fn open(
        key: SessionKey,
        family: Family,
        needs: Vec<Need>,
        ports: &mut dyn MediaPorts,
    ) -> Result<Prepared, MediaError> {
        let mut opened = Vec::new();
        for need in needs {
            let pk = |side, index: usize, component| {
                u8::try_from(index).ok().map(|stream| PortKey {
                    session: key,
                    side,
                    stream,
                    component,
                })
            };
            let (first, second) = match need {
                Need::Stream { side, index, mux } => (
                    pk(side, index, Component::Rtp),
                    if mux {
                        None
                    } else {
                        pk(side, index, Component::Rtcp)
                    },
                ),
                Need::Rtcp { side, index } => (pk(side, index, Component::Rtcp), None),
            };
            let result = match first {
                Some(first) => ports.open_media(first, second, family).map(|(a, b)| {
                    opened.push((first, a));
                    if let (Some(k), Some(b)) = (second, b) {
                        opened.push((k, b));
                    }
                }),
                None => Err(PortError::Exhausted),
            };
            if let Err(e) = result {
                for (k, _) in opened {
                    ports.close_media(k);
                }
                return Err(e.into());
            }
        }
        Ok(Prepared {
            opened,
            closes: Vec::new(),
        })
    }

    /// Close what the update let go of, and any port prepared but not taken.
    fn commit(self, ports: &mut dyn MediaPorts) {
        for k in self.closes {
            ports.close_media(k);
        }
        for (k, _) in self.opened {
            ports.close_media(k);
        }
    }

    fn take(&mut self, key: PortKey) -> Option<SocketAddr> {
        let i = self.opened.iter().position(|(k, _)| *k == key)?;
        Some(self.opened.swap_remove(i).1)
    }
}

impl MediaPorts for Prepared {
    fn open_media(
        &mut self,
        first: PortKey,
        second: Option<PortKey>,
        _family: Family,
    ) -> Result<(SocketAddr, Option<SocketAddr>), PortError> {
        let a = self.take(first).ok_or(PortError::Exhausted)?;
        let b = match second {
            Some(k) => Some(self.take(k).ok_or(PortError::Exhausted)?),
            None => None,
        };
        Ok((a, b))
    }

    fn close_media(&mut self, key: PortKey) {
        self.closes.push(key);
    }
}

fn update_leg(
    key: SessionKey,
    side: Side,
    family: Family,
    leg: &mut Leg,
    req: &LegRequest,
    random: &[u8; 32],
    ports: &mut dyn MediaPorts,
) -> Result<(), MediaError> {
    let before = leg.latching();
    let ice_changed = leg.ice != req.ice;
    leg.ice = req.ice.clone();
    leg.learn_first_source = req.learn_first_source;
    // The same key again (a session refresh, hold) keeps the termination: its
    // rollover counters and replay windows go on, and the relay's key stays.
    let srtp_changed = leg.srtp_device != req.srtp;
    if srtp_changed {
        // A new key from the device (or none): a new termination. The relay's own
        // key changes with it, which the SDP sent to the device carries.
        leg.srtp = match &req.srtp {
            Some(device) => Some(srtp::Termination::new(
                device,
                srtp::new_key(device.suite, random),
            )?),
            None => None,
        };
        leg.srtp_device = req.srtp.clone();
    }
    for (i, r) in req.streams.iter().enumerate() {
        let stream = u8::try_from(i).map_err(|_| MediaError::Invalid(Invalid::TooManyStreams))?;
        match leg.streams.get_mut(i) {
            Some(s) => {
                if s.rtcp_mux != r.rtcp_mux {
                    if r.rtcp_mux {
                        if s.rtcp.take().is_some() {
                            ports.close_media(PortKey {
                                session: key,
                                side,
                                stream,
                                component: Component::Rtcp,
                            });
                        }
                    } else if s.rtcp.is_none() {
                        // Demultiplexing now: the stream needs an RTCP port. It is
                        // not next to the RTP port; the SDP names it (`a=rtcp`).
                        let rtcp = PortKey {
                            session: key,
                            side,
                            stream,
                            component: Component::Rtcp,
                        };
                        let (addr, _) = ports.open_media(rtcp, None, family)?;
                        s.rtcp = Some(Port::new(addr));
                    }
                    s.rtcp_mux = r.rtcp_mux;
                }
                s.announced_rtp = r.rtp;
                s.announced_rtcp = announced_rtcp(r);
            }
            None => leg
                .streams
                .push(open_stream(key, side, i, family, r, ports)?),
        }
    }
    // Streams the request no longer has are kept (an SDP keeps m= lines; a rejected
    // one is port 0, which signaling maps to an unchanged stream).
    let after = leg.latching();
    if before != after || ice_changed {
        for s in &mut leg.streams {
            s.rtp.forget();
            if let Some(p) = s.rtcp.as_mut() {
                p.forget();
            }
        }
    }
    match after {
        Latching::Announced => leg.apply_latching(),
        Latching::Ice | Latching::LearnFirst => {}
    }
    Ok(())
}

fn close_leg(key: SessionKey, side: Side, leg: &Leg, ports: &mut dyn MediaPorts) {
    for (i, s) in leg.streams.iter().enumerate() {
        let Ok(stream) = u8::try_from(i) else { break };
        ports.close_media(PortKey {
            session: key,
            side,
            stream,
            component: Component::Rtp,
        });
        if s.rtcp.is_some() {
            ports.close_media(PortKey {
                session: key,
                side,
                stream,
                component: Component::Rtcp,
            });
        }
    }
}

fn describe(
    config: &MediaConfig,
    now: Instant,
    s: &Session,
    ended: Option<EndReason>,
) -> SessionInfo {
    let public = |a: SocketAddr| match config.external_ip {
        Some(ip) if ip.is_ipv4() == a.is_ipv4() => SocketAddr::new(ip, a.port()),
        _ => a,
    };
    let leg = |l: &Leg| {
        let mut counters = l.counters.clone();
        counters.idle_ms = l.last_packet.map(|t| {
            u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        });
        LegInfo {
            ice: l.ice.is_some(),
            learn_first_source: l.learn_first_source,
            srtp: l.srtp.as_ref().map(|t| t.relay_key.clone()),
            streams: l
                .streams
                .iter()
                .map(|st| StreamInfo {
                    relay_rtp: public(st.rtp.addr),
                    relay_rtcp: st.rtcp.as_ref().map(|p| public(p.addr)),
                    rtcp_mux: st.rtcp_mux,
                    latched_rtp: st.rtp.latched,
                    latched_rtcp: st.rtcp.as_ref().and_then(|p| p.latched),
                })
                .collect(),
            counters,
        }
    };
    SessionInfo {
        id: s.id.clone(),
        call_id: s.call_id.clone(),
        state: match (ended, s.answered) {
            (Some(_), _) => SessionState::Ended,
            (None, true) => SessionState::Answered,
            (None, false) => SessionState::Offered,
        },
        end_reason: ended,
        age_secs: now.saturating_duration_since(s.created).as_secs(),
        caller: leg(s.leg(Side::Caller)),
        callee: leg(s.leg(Side::Callee)),
    }
}

#[cfg(test)]
mod tests;
