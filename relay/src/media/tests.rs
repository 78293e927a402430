//! The media core driven the way a driver drives it, on a virtual clock (a base
//! `Instant` plus `Duration`s, never a sleep) with fake relay ports that record what
//! was opened and closed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_control::{
    AddressFamily, CreateSession, CryptoSuite, EndReason, IceCredentials, LegRequest, SessionInfo,
    SessionState, StreamRequest, UpdateSession,
};

use super::packet::Kind;
use super::*;
use crate::stun::{attr, message_type, method, Class, MessageWriter};
use crate::turn::{Family, PortError};

/// The relay's address: every port of the fake allocator is on it.
const RELAY_IP: [u8; 4] = [203, 0, 113, 10];
/// Where a datagram sits in the driver's buffer (the core must keep it there).
const OFFSET: usize = 16;

const CALLER_UFRAG: &str = "CALR";
const CALLER_PWD: &str = "callerpassword0123456789";
const CALLEE_UFRAG: &str = "CALE";
const CALLEE_PWD: &str = "calleepassword0123456789";

/// A relay port allocator: RTP even, RTCP odd, all on [`RELAY_IP`].
#[derive(Debug, Default)]
struct FakePorts {
    next: u16,
    open: HashMap<PortKey, SocketAddr>,
    /// Every port ever opened, in order.
    opened: Vec<PortKey>,
    /// Every port ever closed, in order.
    closed: Vec<PortKey>,
    /// Ports left before the allocator runs out (`None`: never).
    left: Option<usize>,
}

impl MediaPorts for FakePorts {
    fn open_media(
        &mut self,
        first: PortKey,
        second: Option<PortKey>,
        family: Family,
    ) -> Result<(SocketAddr, Option<SocketAddr>), PortError> {
        if family != Family::V4 {
            return Err(PortError::Family);
        }
        let need = if second.is_some() { 2 } else { 1 };
        if let Some(left) = self.left.as_mut() {
            if *left < need {
                return Err(PortError::Exhausted);
            }
            *left -= need;
        }
        if self.next == 0 {
            self.next = 40_000;
        }
        let rtp = SocketAddr::from((RELAY_IP, self.next));
        let rtcp = second.map(|_| SocketAddr::from((RELAY_IP, self.next + 1)));
        self.next += 2;
        for (k, a) in std::iter::once((first, rtp)).chain(second.zip(rtcp)) {
            assert!(self.open.insert(k, a).is_none(), "{k:?} opened twice");
            self.opened.push(k);
        }
        Ok((rtp, rtcp))
    }

    fn close_media(&mut self, key: PortKey) {
        assert!(
            self.open.remove(&key).is_some(),
            "close of a port that is not open: {key:?}"
        );
        self.closed.push(key);
    }
}

impl FakePorts {
    /// Every port opened was closed exactly once and nothing is open.
    fn assert_all_closed(&self) {
        assert!(self.open.is_empty(), "still open: {:?}", self.open);
        let opened: HashSet<_> = self.opened.iter().collect();
        let closed: HashSet<_> = self.closed.iter().collect();
        assert_eq!(opened, closed);
        assert_eq!(self.opened.len(), self.closed.len(), "a port closed twice");
    }
}

/// A datagram the relay sent: from which port, to where, what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    from: PortKey,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// One media core, its ports, the virtual clock and the main session under test.
struct World {
    media: Media,
    ports: FakePorts,
    t0: Instant,
    now: Instant,
    key: SessionKey,
    /// What each handle given to `attach` names (the handle is the index).
    handles: Vec<PortKey>,
    buf: Vec<u8>,
}

impl World {
    fn with_config(config: MediaConfig, req: &CreateSession) -> World {
        let t0 = Instant::now();
        let mut w = World {
            media: Media::new(config, [9; 32]),
            ports: FakePorts::default(),
            t0,
            now: t0,
            key: SessionKey {
                index: u32::MAX,
                generation: u32::MAX,
            },
            handles: Vec::new(),
            buf: vec![0; 2048],
        };
        w.key = w.create(req).expect("create");
        w
    }

    fn new(req: &CreateSession) -> World {
        World::with_config(MediaConfig::default(), req)
    }

    /// Create another session and attach its ports.
    fn create(&mut self, req: &CreateSession) -> Result<SessionKey, MediaError> {
        let r = self.media.create(
            self.now,
            format!("s{}", self.ports.opened.len()),
            req,
            &mut self.ports,
        );
        self.attach_all();
        r.map(|(k, info)| {
            assert_eq!(info.state, SessionState::Offered);
            k
        })
    }

    /// Attach every open port that has no handle yet, as a driver registers a socket.
    fn attach_all(&mut self) {
        let mut new: Vec<(u16, PortKey)> = self
            .ports
            .open
            .iter()
            .filter(|(k, _)| !self.handles.contains(k))
            .map(|(k, a)| (a.port(), *k))
            .collect();
        new.sort_by_key(|(p, _)| *p);
        for (_, k) in new {
            let h = u32::try_from(self.handles.len()).unwrap();
            self.handles.push(k);
            self.media.attach(k, h);
        }
    }

    fn at(&self, side: Side, stream: u8, component: Component) -> PortKey {
        PortKey {
            session: self.key,
            side,
            stream,
            component,
        }
    }

    fn rtp_port(&self, side: Side) -> PortKey {
        self.at(side, 0, Component::Rtp)
    }

    fn rtcp_port(&self, side: Side) -> PortKey {
        self.at(side, 0, Component::Rtcp)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Hand `packet` from `from` to the core on port `at`; what the relay sends.
    fn send(&mut self, at: PortKey, from: SocketAddr, packet: &[u8]) -> Option<Sent> {
        self.buf.fill(0xee);
        let end = OFFSET + packet.len();
        self.buf[OFFSET..end].copy_from_slice(packet);
        match self
            .media
            .handle_packet(self.now, at, from, &mut self.buf, OFFSET..end)
        {
            MediaOutput::None => None,
            MediaOutput::Forward { handle, to, range } => {
                assert_eq!(range.start, OFFSET, "the packet moved in the buffer");
                let from = *self
                    .handles
                    .get(handle as usize)
                    .expect("a handle the driver attached");
                assert!(
                    self.ports.open.contains_key(&from),
                    "sent from a closed port {from:?}"
                );
                Some(Sent {
                    from,
                    to,
                    bytes: self.buf[range].to_vec(),
                })
            }
        }
    }

    fn update(&mut self, req: &UpdateSession) -> Result<SessionInfo, MediaError> {
        let r = self.media.update(self.now, self.key, req, &mut self.ports);
        self.attach_all();
        r
    }

    fn answer(&mut self, leg: LegRequest) -> SessionInfo {
        let info = self
            .update(&UpdateSession {
                answer: Some(leg),
                ..UpdateSession::default()
            })
            .expect("answer");
        assert_eq!(info.state, SessionState::Answered);
        info
    }

    fn info(&self) -> SessionInfo {
        self.media
            .info(self.now, self.key)
            .expect("the session is live")
    }

    fn timeout(&mut self) {
        self.media.handle_timeout(self.now, &mut self.ports);
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn plus(a: SocketAddr, n: u16) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port() + n)
}

fn creds(ufrag: &str, pwd: &str) -> Option<IceCredentials> {
    Some(IceCredentials {
        ufrag: ufrag.into(),
        pwd: pwd.into(),
    })
}

fn stream(rtcp_mux: bool, rtp: Option<SocketAddr>) -> StreamRequest {
    StreamRequest {
        rtcp_mux,
        rtp,
        rtcp: None,
    }
}

fn ice_leg(ufrag: &str, pwd: &str, rtcp_mux: bool) -> LegRequest {
    LegRequest {
        ice: creds(ufrag, pwd),
        streams: vec![stream(rtcp_mux, None)],
        ..LegRequest::default()
    }
}

fn caller_ice(rtcp_mux: bool) -> LegRequest {
    ice_leg(CALLER_UFRAG, CALLER_PWD, rtcp_mux)
}

fn callee_ice(rtcp_mux: bool) -> LegRequest {
    ice_leg(CALLEE_UFRAG, CALLEE_PWD, rtcp_mux)
}

fn announced(rtp: SocketAddr, rtcp_mux: bool) -> LegRequest {
    LegRequest {
        streams: vec![stream(rtcp_mux, Some(rtp))],
        ..LegRequest::default()
    }
}

fn offer(caller: LegRequest) -> CreateSession {
    CreateSession {
        call_id: Some("a84b4c76e66710@pc33.example.test".into()),
        caller,
        callee: None,
        family: AddressFamily::Ipv4,
        inactivity_timeout_secs: None,
        max_duration_secs: None,
    }
}

/// An RTP packet with payload type 96.
fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// An RTCP packet of type `pt` with no report blocks (8 bytes).
fn rtcp(pt: u8, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// A connectivity check as an ICE agent sends it.
fn check(tid: u8, username: &str, pwd: &str) -> Vec<u8> {
    let mut b = [0u8; 256];
    let n = ice::write_check(&mut b, &[tid; 12], username, pwd).unwrap();
    b[..n].to_vec()
}

/// A check the caller's device sends to the callee's (it arrives on the caller leg).
fn caller_check(tid: u8) -> Vec<u8> {
    check(tid, "CALE:CALR", CALLEE_PWD)
}

/// A check the callee's device sends to the caller's (it arrives on the callee leg).
fn callee_check(tid: u8) -> Vec<u8> {
    check(tid, "CALR:CALE", CALLER_PWD)
}

fn check_without_integrity(tid: u8, username: &str) -> Vec<u8> {
    let mut b = [0u8; 128];
    let mut w = MessageWriter::new(
        &mut b,
        message_type(method::BINDING, Class::Request),
        &[tid; 12],
    )
    .unwrap();
    w.attr(attr::USERNAME, username.as_bytes()).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    b[..n].to_vec()
}

fn response(tid: u8, mapped: SocketAddr, pwd: &str) -> Vec<u8> {
    let mut b = [0u8; 256];
    let n = ice::write_response(&mut b, &[tid; 12], mapped, pwd).unwrap();
    b[..n].to_vec()
}

const CALLER_A: &str = "198.51.100.1:4000";
const CALLER_A2: &str = "198.51.100.2:4100";
const CALLEE_B: &str = "192.0.2.50:6000";
const ATTACKER: &str = "233.252.0.66:5555";

/// An answered call, both legs ICE, rtcp-mux on both.
fn ice_call() -> World {
    let mut w = World::new(&offer(caller_ice(true)));
    w.answer(callee_ice(true));
    w
}

/// `ice_call` with both sides latched: the caller at `CALLER_A`, the callee at
/// `CALLEE_B`.
fn latched_ice_call() -> World {
    let mut w = ice_call();
    let (a, b) = (addr(CALLER_A), addr(CALLEE_B));
    assert_eq!(w.send(w.rtp_port(Side::Caller), a, &caller_check(1)), None);
    let s = w.send(w.rtp_port(Side::Callee), b, &callee_check(2));
    assert_eq!(
        s.map(|s| (s.from, s.to)),
        Some((w.rtp_port(Side::Caller), a))
    );
    w
}

// ---------------------------------------------------------------------------
// Latching with ICE

#[test]
fn a_check_before_the_other_side_latched_is_dropped_as_unlatched_but_latches_its_side() {
    let mut w = ice_call();
    let a = addr(CALLER_A);
    let info = w.info();
    assert_eq!(info.caller.streams[0].latched_rtp, None);

    assert_eq!(w.send(w.rtp_port(Side::Caller), a, &caller_check(1)), None);

    let info = w.info();
    assert_eq!(info.caller.streams[0].latched_rtp, Some(a));
    assert_eq!(info.callee.streams[0].latched_rtp, None);
    assert_eq!(info.caller.counters.ice_checks, 1);
    assert_eq!(info.caller.counters.dropped.unlatched, 1);
    assert_eq!(info.caller.counters.dropped.unauthenticated, 0);
    assert_eq!(info.caller.counters.packets_in, 0);
    assert_eq!(w.media.stats().ice_checks, 1);
    assert_eq!(w.media.stats().dropped.unlatched, 1);
}

#[test]
fn checks_that_do_not_authenticate_do_not_latch() {
    let mut w = ice_call();
    let at = w.rtp_port(Side::Caller);
    let a = addr(CALLER_A);
    let bad = [
        // Wrong password.
        check(1, "CALE:CALR", "notthecalleepassword0000"),
        // Wrong receiver ufrag.
        check(2, "XXXX:CALR", CALLEE_PWD),
        // Wrong sender ufrag.
        check(3, "CALE:MALL", CALLEE_PWD),
        // The caller's own credentials (a check for the other direction).
        check(4, "CALR:CALE", CALLER_PWD),
        // No MESSAGE-INTEGRITY.
        check_without_integrity(5, "CALE:CALR"),
    ];
    for p in &bad {
        assert_eq!(w.send(at, a, p), None);
    }
    let info = w.info();
    assert_eq!(info.caller.streams[0].latched_rtp, None);
    assert_eq!(info.caller.counters.dropped.unauthenticated, 5);
    assert_eq!(info.caller.counters.ice_checks, 0);
    assert_eq!(w.media.stats().dropped.unauthenticated, 5);
    // Media from that source is not accepted either.
    assert_eq!(w.send(at, a, &rtp(1, 7, 20)), None);
    assert_eq!(w.info().caller.counters.dropped.bleed, 1);
}

#[test]
fn a_caller_check_before_the_answer_does_not_authenticate() {
    // Without the callee's credentials nothing can authenticate on the caller leg.
    let mut w = World::new(&offer(caller_ice(true)));
    let at = w.rtp_port(Side::Caller);
    assert_eq!(w.send(at, addr(CALLER_A), &caller_check(1)), None);
    let info = w.info();
    assert_eq!(info.caller.streams[0].latched_rtp, None);
    assert_eq!(info.caller.counters.dropped.unauthenticated, 1);
}

#[test]
fn once_both_latched_checks_are_forwarded_unchanged() {
    let mut w = ice_call();
    let (a, b) = (addr(CALLER_A), addr(CALLEE_B));
    assert_eq!(w.send(w.rtp_port(Side::Caller), a, &caller_check(1)), None);

    let c = callee_check(2);
    let s = w.send(w.rtp_port(Side::Callee), b, &c).expect("forwarded");
    assert_eq!(s.from, w.rtp_port(Side::Caller));
    assert_eq!(s.to, a);
    assert_eq!(s.bytes, c);

    let c = caller_check(3);
    let s = w.send(w.rtp_port(Side::Caller), a, &c).expect("forwarded");
    assert_eq!(s.from, w.rtp_port(Side::Callee));
    assert_eq!(s.to, b);
    assert_eq!(s.bytes, c);

    let info = w.info();
    assert_eq!(info.caller.counters.ice_checks, 2);
    assert_eq!(info.callee.counters.ice_checks, 1);
    assert_eq!(info.callee.streams[0].latched_rtp, Some(b));
    assert_eq!(w.media.stats().ice_checks, 3);
    assert_eq!(w.media.stats().packets_forwarded, 2);
}

#[test]
fn a_later_check_from_a_new_address_relatches_and_media_follows() {
    let mut w = latched_ice_call();
    let (a, a2, b) = (addr(CALLER_A), addr(CALLER_A2), addr(CALLEE_B));
    // The caller's network changed: it checks from a new address.
    let s = w.send(w.rtp_port(Side::Caller), a2, &caller_check(3));
    assert_eq!(s.map(|s| s.to), Some(b));
    assert_eq!(w.info().caller.streams[0].latched_rtp, Some(a2));
    // Media from the callee goes to the new address.
    let m = rtp(1, 0xb0b, 40);
    let s = w.send(w.rtp_port(Side::Callee), b, &m).expect("forwarded");
    assert_eq!((s.from, s.to), (w.rtp_port(Side::Caller), a2));
    assert_eq!(s.bytes, m);
    assert_ne!(s.to, a);
}

#[test]
fn media_from_an_authenticated_source_that_is_not_current_switches_the_latch() {
    let mut w = latched_ice_call();
    let (a, a2, b) = (addr(CALLER_A), addr(CALLER_A2), addr(CALLEE_B));
    w.send(w.rtp_port(Side::Caller), a2, &caller_check(3))
        .expect("forwarded");
    assert_eq!(w.info().caller.streams[0].latched_rtp, Some(a2));
    // The device settles media on the first pair (it was authenticated).
    let m = rtp(1, 0xa, 20);
    let s = w.send(w.rtp_port(Side::Caller), a, &m).expect("forwarded");
    assert_eq!((s.to, s.bytes), (b, m));
    assert_eq!(w.info().caller.streams[0].latched_rtp, Some(a));
    let s = w
        .send(w.rtp_port(Side::Callee), b, &rtp(1, 0xb, 20))
        .expect("forwarded");
    assert_eq!(s.to, a);
}

#[test]
fn media_from_an_unauthenticated_source_on_an_ice_leg_is_bleed() {
    let mut w = latched_ice_call();
    let x = addr(ATTACKER);
    assert_eq!(w.send(w.rtp_port(Side::Caller), x, &rtp(1, 1, 20)), None);
    assert_eq!(w.send(w.rtp_port(Side::Callee), x, &rtcp(200, 1)), None);
    let info = w.info();
    assert_eq!(info.caller.counters.dropped.bleed, 1);
    assert_eq!(info.callee.counters.dropped.bleed, 1);
    assert_eq!(info.caller.streams[0].latched_rtp, Some(addr(CALLER_A)));
    assert_eq!(info.callee.streams[0].latched_rtp, Some(addr(CALLEE_B)));
}

#[test]
fn without_rtcp_mux_each_ice_component_latches_on_its_own() {
    let mut w = World::new(&offer(caller_ice(false)));
    w.answer(callee_ice(false));
    let (a, b) = (addr(CALLER_A), addr(CALLEE_B));
    let (a1, b1) = (plus(a, 1), plus(b, 1));
    // Component 1 latched on both sides, component 2 not yet.
    assert_eq!(w.send(w.rtp_port(Side::Caller), a, &caller_check(1)), None);
    assert!(w
        .send(w.rtp_port(Side::Callee), b, &callee_check(2))
        .is_some());
    assert_eq!(w.info().caller.streams[0].latched_rtcp, None);
    // RTCP has nowhere to go, and from an RTCP source not checked it is bleed.
    assert_eq!(w.send(w.rtp_port(Side::Caller), a, &rtcp(200, 1)), None);
    assert_eq!(w.info().caller.counters.dropped.unlatched, 2);
    assert_eq!(w.send(w.rtcp_port(Side::Caller), a1, &rtcp(200, 1)), None);
    assert_eq!(w.info().caller.counters.dropped.bleed, 1);
    // Component 2 checks.
    assert_eq!(
        w.send(w.rtcp_port(Side::Caller), a1, &caller_check(3)),
        None
    );
    let c = callee_check(4);
    let s = w
        .send(w.rtcp_port(Side::Callee), b1, &c)
        .expect("forwarded");
    assert_eq!(
        s,
        Sent {
            from: w.rtcp_port(Side::Caller),
            to: a1,
            bytes: c,
        }
    );
    let info = w.info();
    assert_eq!(info.caller.streams[0].latched_rtcp, Some(a1));
    assert_eq!(info.callee.streams[0].latched_rtcp, Some(b1));
    assert_eq!(info.caller.streams[0].latched_rtp, Some(a));
    // RTCP flows between the RTCP ports, RTP between the RTP ports.
    let s = w.send(w.rtcp_port(Side::Caller), a1, &rtcp(201, 1));
    assert_eq!(
        s.map(|s| (s.from, s.to)),
        Some((w.rtcp_port(Side::Callee), b1))
    );
    let s = w.send(w.rtp_port(Side::Callee), b, &rtp(1, 2, 10));
    assert_eq!(
        s.map(|s| (s.from, s.to)),
        Some((w.rtp_port(Side::Caller), a))
    );
    // A source checked on component 1 is not authenticated on component 2.
    assert_eq!(w.send(w.rtcp_port(Side::Caller), a, &rtcp(201, 1)), None);
    assert_eq!(w.info().caller.counters.dropped.bleed, 2);
}

#[test]
fn stun_responses_from_unlatched_sources_are_bleed() {
    let mut w = latched_ice_call();
    let (a, b, x) = (addr(CALLER_A), addr(CALLEE_B), addr(ATTACKER));
    let r = response(2, b, CALLEE_PWD);
    assert_eq!(w.send(w.rtp_port(Side::Caller), x, &r), None);
    assert_eq!(w.info().caller.counters.dropped.bleed, 1);
    // From the authenticated source it is forwarded unchanged.
    let s = w.send(w.rtp_port(Side::Caller), a, &r).expect("forwarded");
    assert_eq!((s.from, s.to, s.bytes), (w.rtp_port(Side::Callee), b, r));
    assert_eq!(w.info().caller.counters.dropped.bleed, 1);
}

#[test]
fn callee_checks_before_the_answer_latch_until_the_answer_forgets_them() {
    // Before the answer the callee leg authenticates checks with the caller's
    // credentials (any sender ufrag). The answer brings the callee's credentials and
    // the leg starts over, so a losing fork that checked first keeps nothing.
    let mut w = World::new(&offer(caller_ice(true)));
    let b = addr(CALLEE_B);
    assert_eq!(w.send(w.rtp_port(Side::Callee), b, &callee_check(1)), None);
    let info = w.info();
    assert_eq!(info.callee.streams[0].latched_rtp, Some(b));
    assert_eq!(info.callee.counters.ice_checks, 1);
    assert_eq!(info.callee.counters.dropped.unlatched, 1);
    // A check with a wrong password does not authenticate before the answer either.
    let wrong = check(2, "CALR:CALE", "notthecallerpassword0000");
    assert_eq!(
        w.send(w.rtp_port(Side::Callee), addr(ATTACKER), &wrong),
        None
    );
    assert_eq!(w.info().callee.counters.dropped.unauthenticated, 1);

    let info = w.answer(callee_ice(true));
    assert_eq!(info.callee.streams[0].latched_rtp, None);
    // ICE retransmits: the next check latches again.
    assert_eq!(w.send(w.rtp_port(Side::Callee), b, &callee_check(3)), None);
    assert_eq!(w.info().callee.streams[0].latched_rtp, Some(b));
}

// ---------------------------------------------------------------------------
// Latching without ICE

const CALLER_P: &str = "198.51.100.20:5000";
const CALLEE_Q: &str = "192.0.2.60:7000";

/// An answered call, both legs announcing addresses, without ICE.
fn announced_call(caller_mux: bool, callee_mux: bool) -> World {
    let mut w = World::new(&offer(announced(addr(CALLER_P), caller_mux)));
    w.answer(announced(addr(CALLEE_Q), callee_mux));
    w
}

#[test]
fn an_announced_leg_is_latched_from_the_start() {
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let mut w = World::new(&offer(announced(p, false)));
    let info = w.info();
    assert_eq!(info.caller.streams[0].latched_rtp, Some(p));
    // RTCP: the RTP port plus one by default.
    assert_eq!(info.caller.streams[0].latched_rtcp, Some(plus(p, 1)));
    assert_eq!(info.callee.streams[0].latched_rtp, None);
    w.answer(announced(q, false));
    // The caller has sent nothing yet; media to it goes to its announced address.
    let m = rtp(1, 0x51, 30);
    let s = w.send(w.rtp_port(Side::Callee), q, &m).expect("forwarded");
    assert_eq!((s.from, s.to, s.bytes), (w.rtp_port(Side::Caller), p, m));
    let r = rtcp(201, 0x51);
    let s = w
        .send(w.rtcp_port(Side::Callee), plus(q, 1), &r)
        .expect("forwarded");
    assert_eq!(
        (s.from, s.to, s.bytes),
        (w.rtcp_port(Side::Caller), plus(p, 1), r)
    );
}

#[test]
fn an_announced_leg_drops_media_from_any_other_source() {
    let mut w = announced_call(false, false);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let x = addr(ATTACKER);
    assert_eq!(w.send(w.rtp_port(Side::Caller), x, &rtp(1, 1, 20)), None);
    // The right host, the wrong port.
    assert_eq!(
        w.send(w.rtp_port(Side::Caller), plus(p, 2), &rtp(2, 1, 20)),
        None
    );
    // RTP from the RTCP source on the RTP port.
    assert_eq!(
        w.send(w.rtp_port(Side::Caller), plus(p, 1), &rtp(3, 1, 20)),
        None
    );
    assert_eq!(w.send(w.rtcp_port(Side::Callee), q, &rtcp(200, 2)), None);
    let info = w.info();
    assert_eq!(info.caller.counters.dropped.bleed, 3);
    assert_eq!(info.callee.counters.dropped.bleed, 1);
    assert_eq!(info.caller.counters.packets_in, 0);
    // Nothing moved.
    assert_eq!(info.caller.streams[0].latched_rtp, Some(p));
    assert_eq!(info.callee.streams[0].latched_rtcp, Some(plus(q, 1)));
    // And the right source still works.
    let s = w.send(w.rtp_port(Side::Caller), p, &rtp(4, 1, 20));
    assert_eq!(s.map(|s| s.to), Some(q));
}

#[test]
fn an_explicit_rtcp_address_is_used_instead_of_rtp_plus_one() {
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let rtcp_at = addr("198.51.100.21:7777");
    let mut caller = announced(p, false);
    caller.streams[0].rtcp = Some(rtcp_at);
    let mut w = World::new(&offer(caller));
    w.answer(announced(q, false));
    assert_eq!(w.info().caller.streams[0].latched_rtcp, Some(rtcp_at));
    let s = w
        .send(w.rtcp_port(Side::Callee), plus(q, 1), &rtcp(200, 9))
        .expect("forwarded");
    assert_eq!((s.from, s.to), (w.rtcp_port(Side::Caller), rtcp_at));
    // RTP port plus one is not the caller's RTCP source.
    assert_eq!(
        w.send(w.rtcp_port(Side::Caller), plus(p, 1), &rtcp(200, 9)),
        None
    );
    let s = w.send(w.rtcp_port(Side::Caller), rtcp_at, &rtcp(201, 9));
    assert_eq!(s.map(|s| s.to), Some(plus(q, 1)));
}

#[test]
fn learn_first_source_latches_the_first_source_for_good() {
    let q = addr(CALLEE_Q);
    let (l, m) = (addr("198.51.100.30:3000"), addr("198.51.100.31:3000"));
    let mut w = World::new(&offer(LegRequest {
        learn_first_source: true,
        streams: vec![stream(true, Some(addr(CALLER_P)))],
        ..LegRequest::default()
    }));
    w.answer(announced(q, true));
    assert_eq!(w.info().caller.streams[0].latched_rtp, None);
    // Nowhere to send before the caller sent.
    assert_eq!(w.send(w.rtp_port(Side::Callee), q, &rtp(1, 2, 10)), None);
    assert_eq!(w.info().callee.counters.dropped.unlatched, 1);
    // The first source latches.
    let s = w.send(w.rtp_port(Side::Caller), l, &rtp(1, 1, 10));
    assert_eq!(s.map(|s| s.to), Some(q));
    assert_eq!(w.info().caller.streams[0].latched_rtp, Some(l));
    // A second source is bleed, and the latch does not move.
    assert_eq!(w.send(w.rtp_port(Side::Caller), m, &rtp(2, 1, 10)), None);
    assert_eq!(w.send(w.rtp_port(Side::Caller), m, &rtp(3, 1, 10)), None);
    assert_eq!(w.info().caller.counters.dropped.bleed, 2);
    assert_eq!(w.info().caller.streams[0].latched_rtp, Some(l));
    // Media to the caller goes to the learnt source, not the announced address.
    let s = w.send(w.rtp_port(Side::Callee), q, &rtp(2, 2, 10));
    assert_eq!(s.map(|s| s.to), Some(l));
    let s = w.send(w.rtp_port(Side::Caller), l, &rtp(4, 1, 10));
    assert_eq!(s.map(|s| s.to), Some(q));
}

// ---------------------------------------------------------------------------
// Forwarding

#[test]
fn media_is_forwarded_both_ways_from_the_other_legs_port() {
    let mut w = latched_ice_call();
    let (a, b) = (addr(CALLER_A), addr(CALLEE_B));
    for seq in 0..3u16 {
        let m = rtp(seq, 0xa, 100 + usize::from(seq));
        let s = w.send(w.rtp_port(Side::Caller), a, &m).expect("forwarded");
        assert_eq!(
            s,
            Sent {
                from: w.rtp_port(Side::Callee),
                to: b,
                bytes: m,
            }
        );
        let m = rtp(seq, 0xb, 50);
        let s = w.send(w.rtp_port(Side::Callee), b, &m).expect("forwarded");
        assert_eq!(
            s,
            Sent {
                from: w.rtp_port(Side::Caller),
                to: a,
                bytes: m,
            }
        );
    }
}

#[test]
fn rtcp_on_its_own_port_goes_to_the_other_rtcp_port() {
    let mut w = announced_call(false, false);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let r = rtcp(200, 1);
    let s = w
        .send(w.rtcp_port(Side::Caller), plus(p, 1), &r)
        .expect("forwarded");
    assert_eq!(
        s,
        Sent {
            from: w.rtcp_port(Side::Callee),
            to: plus(q, 1),
            bytes: r,
        }
    );
    let r = rtcp(201, 2);
    let s = w
        .send(w.rtcp_port(Side::Callee), plus(q, 1), &r)
        .expect("forwarded");
    assert_eq!(
        s,
        Sent {
            from: w.rtcp_port(Side::Caller),
            to: plus(p, 1),
            bytes: r,
        }
    );
    // RTP stays on the RTP ports.
    let s = w
        .send(w.rtp_port(Side::Caller), p, &rtp(1, 1, 10))
        .expect("forwarded");
    assert_eq!((s.from, s.to), (w.rtp_port(Side::Callee), q));
}

#[test]
fn with_rtcp_mux_rtcp_rides_the_rtp_port() {
    let mut w = announced_call(true, true);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    assert_eq!(w.info().caller.streams[0].relay_rtcp, None);
    assert_eq!(w.info().caller.streams[0].latched_rtcp, None);
    for pt in 200..=204u8 {
        let r = rtcp(pt, 1);
        assert_eq!(packet::classify(&r), Kind::Rtcp);
        let s = w.send(w.rtp_port(Side::Caller), p, &r).expect("forwarded");
        assert_eq!(
            s,
            Sent {
                from: w.rtp_port(Side::Callee),
                to: q,
                bytes: r,
            }
        );
        let r = rtcp(pt, 2);
        let s = w.send(w.rtp_port(Side::Callee), q, &r).expect("forwarded");
        assert_eq!((s.from, s.to), (w.rtp_port(Side::Caller), p));
    }
    assert_eq!(w.info().caller.counters.packets_in, 5);
}

#[test]
fn a_mux_leg_sends_rtcp_to_a_non_mux_legs_rtcp_port() {
    let mut w = announced_call(true, false);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    // Multiplexed RTCP from the caller leaves from the callee's RTCP port.
    let r = rtcp(201, 1);
    let s = w.send(w.rtp_port(Side::Caller), p, &r).expect("forwarded");
    assert_eq!(
        s,
        Sent {
            from: w.rtcp_port(Side::Callee),
            to: plus(q, 1),
            bytes: r,
        }
    );
    // RTP from the caller goes to the callee's RTP port.
    let s = w
        .send(w.rtp_port(Side::Caller), p, &rtp(1, 1, 10))
        .expect("forwarded");
    assert_eq!((s.from, s.to), (w.rtp_port(Side::Callee), q));
    // RTCP from the callee's RTCP port is multiplexed onto the caller's RTP port.
    let r = rtcp(200, 2);
    let s = w
        .send(w.rtcp_port(Side::Callee), plus(q, 1), &r)
        .expect("forwarded");
    assert_eq!(
        s,
        Sent {
            from: w.rtp_port(Side::Caller),
            to: p,
            bytes: r,
        }
    );
}

// ---------------------------------------------------------------------------
// Updates

#[test]
fn the_answer_is_accepted_once() {
    let mut w = World::new(&offer(caller_ice(true)));
    assert_eq!(w.info().state, SessionState::Offered);
    let info = w.answer(callee_ice(true));
    assert!(info.callee.ice);
    assert_eq!(
        w.update(&UpdateSession {
            answer: Some(callee_ice(true)),
            ..UpdateSession::default()
        }),
        Err(MediaError::AlreadyAnswered)
    );
    assert_eq!(w.info().state, SessionState::Answered);
}

#[test]
fn a_callee_update_before_the_answer_is_refused() {
    let mut w = World::new(&offer(caller_ice(true)));
    assert_eq!(
        w.update(&UpdateSession {
            callee: Some(callee_ice(true)),
            ..UpdateSession::default()
        }),
        Err(MediaError::NotAnswered)
    );
    assert_eq!(w.info().state, SessionState::Offered);
    assert!(!w.info().callee.ice);
    // Both at once is invalid; nothing at all too.
    assert_eq!(
        w.update(&UpdateSession {
            answer: Some(callee_ice(true)),
            callee: Some(callee_ice(true)),
            ..UpdateSession::default()
        }),
        Err(MediaError::Invalid(
            tandem_control::Invalid::BothAnswerAndCallee
        ))
    );
    assert_eq!(
        w.update(&UpdateSession::default()),
        Err(MediaError::Invalid(tandem_control::Invalid::Empty))
    );
    // After the answer a callee update is fine.
    w.answer(callee_ice(true));
    let info = w
        .update(&UpdateSession {
            callee: Some(callee_ice(false)),
            ..UpdateSession::default()
        })
        .expect("callee update");
    assert!(!info.callee.streams[0].rtcp_mux);
}

#[test]
fn a_reinvite_switching_rtcp_mux_off_opens_an_rtcp_port_and_on_closes_it() {
    let mut w = announced_call(true, true);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let rtcp_key = w.rtcp_port(Side::Caller);
    assert!(!w.ports.open.contains_key(&rtcp_key));
    let opened = w.ports.opened.len();

    let info = w
        .update(&UpdateSession {
            caller: Some(announced(p, false)),
            ..UpdateSession::default()
        })
        .expect("mux off");
    assert_eq!(w.ports.opened.len(), opened + 1);
    assert_eq!(w.ports.opened.last(), Some(&rtcp_key));
    let relay_rtcp = w.ports.open[&rtcp_key];
    assert_eq!(info.caller.streams[0].relay_rtcp, Some(relay_rtcp));
    assert!(!info.caller.streams[0].rtcp_mux);
    assert_eq!(info.caller.streams[0].latched_rtcp, Some(plus(p, 1)));
    // RTCP from the callee now goes out of the new port to RTP + 1.
    let s = w
        .send(w.rtp_port(Side::Callee), q, &rtcp(200, 5))
        .expect("forwarded");
    assert_eq!((s.from, s.to), (rtcp_key, plus(p, 1)));

    let info = w
        .update(&UpdateSession {
            caller: Some(announced(p, true)),
            ..UpdateSession::default()
        })
        .expect("mux on");
    assert_eq!(w.ports.closed, vec![rtcp_key]);
    assert!(!w.ports.open.contains_key(&rtcp_key));
    assert_eq!(info.caller.streams[0].relay_rtcp, None);
    assert!(info.caller.streams[0].rtcp_mux);
    // A packet for the closed port does nothing.
    assert_eq!(w.send(rtcp_key, plus(p, 1), &rtcp(200, 1)), None);
    // RTCP from the callee rides the caller's RTP port again.
    let s = w
        .send(w.rtp_port(Side::Callee), q, &rtcp(200, 6))
        .expect("forwarded");
    assert_eq!((s.from, s.to), (w.rtp_port(Side::Caller), p));
}

#[test]
fn adding_a_stream_opens_ports_on_both_legs() {
    let mut w = announced_call(false, false);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let (p2, q2) = (addr("198.51.100.20:5010"), addr("192.0.2.60:7010"));
    assert_eq!(w.ports.open.len(), 4);
    let mut caller = announced(p, false);
    caller.streams.push(stream(false, Some(p2)));
    let info = w
        .update(&UpdateSession {
            caller: Some(caller),
            ..UpdateSession::default()
        })
        .expect("add a stream");
    assert_eq!(info.caller.streams.len(), 2);
    assert_eq!(info.callee.streams.len(), 2);
    assert_eq!(w.ports.open.len(), 8);
    for side in [Side::Caller, Side::Callee] {
        for c in [Component::Rtp, Component::Rtcp] {
            assert!(
                w.ports.open.contains_key(&w.at(side, 1, c)),
                "{side:?} {c:?}"
            );
        }
    }
    assert_eq!(info.caller.streams[1].latched_rtp, Some(p2));
    // The callee's new stream has no address until its side says so.
    assert_eq!(info.callee.streams[1].latched_rtp, None);
    assert_eq!(
        w.send(w.at(Side::Caller, 1, Component::Rtp), p2, &rtp(1, 1, 10)),
        None
    );
    assert_eq!(w.info().caller.counters.dropped.unlatched, 1);

    let mut callee = announced(q, false);
    callee.streams.push(stream(false, Some(q2)));
    w.update(&UpdateSession {
        callee: Some(callee),
        ..UpdateSession::default()
    })
    .expect("callee adds the stream");
    assert_eq!(w.ports.open.len(), 8);
    let s = w
        .send(w.at(Side::Caller, 1, Component::Rtp), p2, &rtp(2, 1, 10))
        .expect("forwarded");
    assert_eq!((s.from, s.to), (w.at(Side::Callee, 1, Component::Rtp), q2));
    let s = w
        .send(
            w.at(Side::Callee, 1, Component::Rtcp),
            plus(q2, 1),
            &rtcp(201, 1),
        )
        .expect("forwarded");
    assert_eq!(
        (s.from, s.to),
        (w.at(Side::Caller, 1, Component::Rtcp), plus(p2, 1))
    );
    // Stream 0 is untouched.
    let s = w.send(w.rtp_port(Side::Callee), q, &rtp(3, 1, 10));
    assert_eq!(
        s.map(|s| (s.from, s.to)),
        Some((w.rtp_port(Side::Caller), p))
    );
}

#[test]
fn an_answer_without_ice_needs_the_caller_leg_updated_too() {
    // An answer without ICE means neither device runs ICE (RFC 8445 section 6.1.1):
    // the caller's device sends from the default candidate it announced. The core
    // keeps the caller leg's ICE until signaling sends the caller leg without it.
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let mut w = World::new(&offer(LegRequest {
        ice: creds(CALLER_UFRAG, CALLER_PWD),
        streams: vec![stream(true, Some(p))],
        ..LegRequest::default()
    }));
    w.answer(announced(q, true));
    assert_eq!(w.send(w.rtp_port(Side::Caller), p, &rtp(1, 1, 10)), None);
    assert_eq!(w.info().caller.counters.dropped.bleed, 1);
    let info = w
        .update(&UpdateSession {
            caller: Some(announced(p, true)),
            ..UpdateSession::default()
        })
        .expect("caller without ICE");
    assert!(!info.caller.ice);
    assert_eq!(info.caller.streams[0].latched_rtp, Some(p));
    let s = w.send(w.rtp_port(Side::Caller), p, &rtp(2, 1, 10));
    assert_eq!(s.map(|s| s.to), Some(q));
}

// ---------------------------------------------------------------------------
// Timers

#[test]
fn inactivity_ends_a_session_after_60_s_by_default() {
    let mut w = announced_call(true, true);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    assert_eq!(w.media.poll_timeout(), Some(w.t0 + Duration::from_secs(60)));
    w.advance(Duration::from_secs(59));
    // Dropped packets are no activity.
    assert_eq!(
        w.send(w.rtp_port(Side::Caller), addr(ATTACKER), &rtp(1, 1, 10)),
        None
    );
    w.advance(Duration::from_millis(999));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    assert_eq!(w.media.poll_ended(), None);
    w.advance(Duration::from_millis(1));
    w.timeout();
    assert_eq!(w.media.session_count(), 0);
    let ended = w.media.poll_ended().expect("ended");
    assert_eq!(ended.state, SessionState::Ended);
    assert_eq!(ended.end_reason, Some(EndReason::Inactivity));
    assert_eq!(ended.age_secs, 60);
    assert_eq!(ended.caller.counters.dropped.bleed, 1);
    assert_eq!(ended.caller.counters.packets_in, 0);
    assert_eq!(w.media.poll_ended(), None);
    assert_eq!(w.media.stats().ended_inactivity, 1);
    assert_eq!(w.media.info(w.now, w.key), None);
    w.ports.assert_all_closed();
    // The ports are gone from the core too.
    assert_eq!(w.send(w.rtp_port(Side::Callee), q, &rtp(1, 2, 10)), None);
    assert_eq!(w.send(w.rtp_port(Side::Caller), p, &rtp(1, 2, 10)), None);
}

#[test]
fn a_session_can_set_its_own_inactivity_timeout() {
    let mut req = offer(announced(addr(CALLER_P), true));
    req.inactivity_timeout_secs = Some(5);
    let mut w = World::new(&req);
    assert_eq!(w.media.poll_timeout(), Some(w.t0 + Duration::from_secs(5)));
    w.advance(Duration::from_millis(4_999));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    w.advance(Duration::from_millis(1));
    w.timeout();
    assert_eq!(w.media.session_count(), 0);
    let ended = w.media.poll_ended().expect("ended");
    assert_eq!(ended.end_reason, Some(EndReason::Inactivity));
    assert_eq!(ended.age_secs, 5);
}

#[test]
fn media_keeps_a_session_alive() {
    let mut w = announced_call(true, true);
    let p = addr(CALLER_P);
    w.advance(Duration::from_secs(50));
    w.send(w.rtp_port(Side::Caller), p, &rtp(1, 1, 10))
        .expect("forwarded");
    w.advance(Duration::from_secs(10));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    // The next deadline is 60 s after the last media.
    assert_eq!(
        w.media.poll_timeout(),
        Some(w.t0 + Duration::from_secs(110))
    );
    w.advance(Duration::from_secs(49));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    w.advance(Duration::from_secs(1));
    w.timeout();
    assert_eq!(w.media.session_count(), 0);
    let ended = w.media.poll_ended().expect("ended");
    assert_eq!(ended.end_reason, Some(EndReason::Inactivity));
    assert_eq!(ended.caller.counters.packets_in, 1);
}

#[test]
fn the_maximum_duration_ends_a_session_even_with_media() {
    let mut req = offer(announced(addr(CALLER_P), true));
    req.max_duration_secs = Some(100);
    let mut w = World::new(&req);
    w.answer(announced(addr(CALLEE_Q), true));
    let p = addr(CALLER_P);
    for _ in 0..9 {
        w.advance(Duration::from_secs(10));
        w.send(w.rtp_port(Side::Caller), p, &rtp(1, 1, 10))
            .expect("forwarded");
        w.timeout();
        assert_eq!(w.media.session_count(), 1);
    }
    assert_eq!(
        w.media.poll_timeout(),
        Some(w.t0 + Duration::from_secs(100))
    );
    w.advance(Duration::from_secs(10));
    w.timeout();
    assert_eq!(w.media.session_count(), 0);
    let ended = w.media.poll_ended().expect("ended");
    assert_eq!(ended.end_reason, Some(EndReason::MaxDuration));
    assert_eq!(ended.caller.counters.packets_in, 9);
    assert_eq!(ended.callee.counters.packets_out, 9);
    assert_eq!(w.media.stats().ended_max_duration, 1);
    w.ports.assert_all_closed();
}

#[test]
fn poll_timeout_is_the_next_deadline_of_any_session() {
    let mut req = offer(announced(addr(CALLER_P), true));
    req.inactivity_timeout_secs = Some(30);
    let mut w = World::new(&req);
    w.advance(Duration::from_secs(1));
    let mut req2 = offer(announced(addr("198.51.100.99:5000"), true));
    req2.inactivity_timeout_secs = Some(10);
    let second = w.create(&req2).expect("second session");
    assert_eq!(w.media.poll_timeout(), Some(w.t0 + Duration::from_secs(11)));
    w.advance(Duration::from_secs(10));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    assert_eq!(w.media.info(w.now, second), None);
    assert_eq!(
        w.media.poll_ended().map(|i| i.end_reason),
        Some(Some(EndReason::Inactivity))
    );
    assert_eq!(w.media.poll_timeout(), Some(w.t0 + Duration::from_secs(30)));
    w.advance(Duration::from_secs(19));
    w.timeout();
    assert_eq!(w.media.session_count(), 0);
    assert_eq!(w.media.poll_timeout(), None);
    w.ports.assert_all_closed();
}

#[test]
fn a_call_answered_after_a_long_ring_keeps_its_session() {
    let mut w = World::new(&offer(caller_ice(true)));
    w.advance(Duration::from_secs(59));
    w.timeout();
    w.answer(callee_ice(true));
    w.advance(Duration::from_secs(2));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    assert_eq!(w.media.poll_ended(), None);
}

#[test]
fn the_session_limit_refuses_create_without_opening_ports() {
    let req = offer(announced(addr(CALLER_P), false));
    let mut w = World::with_config(
        MediaConfig {
            max_sessions: 1,
            ..MediaConfig::default()
        },
        &req,
    );
    let opened = w.ports.opened.len();
    assert_eq!(w.create(&req), Err(MediaError::TooManySessions));
    assert_eq!(w.ports.opened.len(), opened);
    assert_eq!(w.media.session_count(), 1);
    w.media.delete(w.now, w.key, &mut w.ports).expect("deleted");
    w.create(&req).expect("room again");
}

// ---------------------------------------------------------------------------
// Delete, stale keys, ports

#[test]
fn delete_frees_every_port_and_the_key_goes_stale() {
    let mut caller = announced(addr(CALLER_P), false);
    caller
        .streams
        .push(stream(false, Some(addr("198.51.100.20:5010"))));
    let mut w = World::new(&offer(caller));
    let mut callee = announced(addr(CALLEE_Q), false);
    callee
        .streams
        .push(stream(true, Some(addr("192.0.2.60:7010"))));
    w.answer(callee);
    assert_eq!(w.ports.open.len(), 7);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    w.send(w.rtp_port(Side::Caller), p, &rtp(1, 1, 10))
        .expect("forwarded");
    w.advance(Duration::from_secs(3));

    let old = w.key;
    let ended = w.media.delete(w.now, old, &mut w.ports).expect("deleted");
    assert_eq!(ended.state, SessionState::Ended);
    assert_eq!(ended.end_reason, Some(EndReason::Deleted));
    assert_eq!(ended.age_secs, 3);
    assert_eq!(ended.caller.counters.packets_in, 1);
    assert_eq!(ended.caller.counters.bytes_in, 22);
    assert_eq!(ended.callee.counters.packets_out, 1);
    w.ports.assert_all_closed();
    // Seven open, and the callee's second RTCP port closed by the answer (rtcp-mux).
    assert_eq!(w.ports.closed.len(), 8);
    assert_eq!(w.media.session_count(), 0);
    assert_eq!(w.media.stats().ended_deleted, 1);

    // The old key does nothing any more.
    assert_eq!(w.media.info(w.now, old), None);
    assert_eq!(w.media.delete(w.now, old, &mut w.ports), None);
    assert_eq!(
        w.update(&UpdateSession {
            caller: Some(announced(p, true)),
            ..UpdateSession::default()
        }),
        Err(MediaError::NotFound)
    );
    assert_eq!(w.send(w.rtp_port(Side::Callee), q, &rtp(1, 2, 10)), None);
    // Deleting it did not end it a second time in poll_ended.
    assert_eq!(w.media.poll_ended(), None);

    // A new session reuses the slot with a new generation.
    let new = w
        .create(&offer(announced(addr(CALLER_P), true)))
        .expect("new session");
    assert_eq!(new.index, old.index);
    assert_ne!(new.generation, old.generation);
    w.media
        .update(
            w.now,
            new,
            &UpdateSession {
                answer: Some(announced(q, true)),
                ..UpdateSession::default()
            },
            &mut w.ports,
        )
        .expect("answer");
    // A packet for a port of the old key on the new session's slot does nothing...
    assert_eq!(w.send(w.rtp_port(Side::Callee), q, &rtp(2, 2, 10)), None);
    assert_eq!(w.media.info(w.now, old), None);
    // ...while the new key works.
    w.key = new;
    let s = w.send(w.rtp_port(Side::Callee), q, &rtp(3, 2, 10));
    assert_eq!(s.map(|s| s.to), Some(p));
    // The stale timer of the deleted session ends nothing.
    w.advance(Duration::from_secs(57));
    w.timeout();
    assert_eq!(w.media.session_count(), 1);
    assert_eq!(w.media.poll_ended(), None);
}

#[test]
fn ports_exhausted_fails_create_and_leaks_no_port() {
    // Two streams without rtcp-mux per leg: eight ports. Any fewer fails.
    let mut caller = announced(addr(CALLER_P), false);
    caller
        .streams
        .push(stream(false, Some(addr("198.51.100.20:5010"))));
    let req = offer(caller);
    for left in 0..8 {
        let mut m = Media::new(MediaConfig::default(), [1; 32]);
        let mut ports = FakePorts {
            left: Some(left),
            ..FakePorts::default()
        };
        let r = m.create(Instant::now(), "s".into(), &req, &mut ports);
        assert_eq!(
            r.map(|_| ()),
            Err(MediaError::PortsExhausted),
            "left {left}"
        );
        ports.assert_all_closed();
        assert_eq!(ports.opened.len(), left - left % 2, "left {left}");
        assert_eq!(m.session_count(), 0);
        assert_eq!(m.stats().ports_exhausted, 1);
        assert_eq!(m.stats().sessions_created, 0);
        // Ports again: the next create works.
        ports.left = None;
        let (key, info) = m
            .create(Instant::now(), "s".into(), &req, &mut ports)
            .expect("create");
        assert_eq!(key.index, 0);
        assert_eq!(info.callee.streams.len(), 2);
        assert_eq!(ports.open.len(), 8);
    }
    let mut m = Media::new(MediaConfig::default(), [1; 32]);
    let mut ports = FakePorts {
        left: Some(8),
        ..FakePorts::default()
    };
    m.create(Instant::now(), "s".into(), &req, &mut ports)
        .expect("eight ports are enough");
}

#[test]
fn a_refused_update_leaves_no_half_added_stream() {
    // Adding a stream needs ports on both legs; when the callee's cannot be opened,
    // the update fails.
    let mut w = announced_call(true, true);
    w.ports.left = Some(1);
    let mut caller = announced(addr(CALLER_P), true);
    caller
        .streams
        .push(stream(true, Some(addr("198.51.100.20:5010"))));
    let r = w.update(&UpdateSession {
        caller: Some(caller),
        ..UpdateSession::default()
    });
    assert_eq!(r.map(|_| ()), Err(MediaError::PortsExhausted));
    let info = w.info();
    assert_eq!(
        (info.caller.streams.len(), info.callee.streams.len()),
        (1, 1),
        "the session changed although the update was refused"
    );
    assert_eq!(w.ports.open.len(), 2);
}

// ---------------------------------------------------------------------------
// SRTP bridging

/// A call whose caller speaks SDES SRTP (the relay terminates it) and whose callee
/// speaks plain RTP, both without ICE; and the caller's device as a Termination
/// (inbound: the relay's key, outbound: the device's).
fn srtp_call(suite: CryptoSuite) -> (World, srtp::Termination) {
    let device_key = srtp::new_key(suite, &[0x42; 32]);
    let mut w = World::new(&offer(LegRequest {
        srtp: Some(device_key.clone()),
        streams: vec![stream(false, Some(addr(CALLER_P)))],
        ..LegRequest::default()
    }));
    w.answer(announced(addr(CALLEE_Q), false));
    let relay_key = w.info().caller.srtp.expect("the relay's key");
    assert_eq!(relay_key.suite, suite);
    assert_ne!(relay_key.key, device_key.key);
    assert_eq!(w.info().callee.srtp, None);
    let device = srtp::Termination::new(&relay_key, device_key).unwrap();
    (w, device)
}

const SUITES: [CryptoSuite; 3] = [
    CryptoSuite::AesCm128HmacSha1_80,
    CryptoSuite::AesCm128HmacSha1_32,
    CryptoSuite::AeadAes128Gcm,
];

#[test]
fn srtp_from_the_caller_arrives_at_the_callee_as_the_exact_rtp() {
    for suite in SUITES {
        let (mut w, mut device) = srtp_call(suite);
        let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
        for seq in 0..5u16 {
            let plain = rtp(seq, 0x5e5e, 160);
            let enc = device.encrypt(Kind::Rtp, &plain).unwrap();
            assert_ne!(&enc[..], &plain[..]);
            let s = w
                .send(w.rtp_port(Side::Caller), p, &enc)
                .expect("forwarded");
            assert_eq!(
                s,
                Sent {
                    from: w.rtp_port(Side::Callee),
                    to: q,
                    bytes: plain,
                },
                "{suite:?}"
            );
        }
        let rr = rtcp(201, 0x5e5e);
        let enc = device.encrypt(Kind::Rtcp, &rr).unwrap();
        let s = w
            .send(w.rtcp_port(Side::Caller), plus(p, 1), &enc)
            .expect("forwarded");
        assert_eq!(
            s,
            Sent {
                from: w.rtcp_port(Side::Callee),
                to: plus(q, 1),
                bytes: rr,
            },
            "{suite:?}"
        );
        assert_eq!(w.media.stats().srtp_decrypted, 6);
        assert_eq!(w.media.stats().srtp_encrypted, 0);
    }
}

#[test]
fn rtp_from_the_callee_arrives_at_the_caller_as_srtp() {
    for suite in SUITES {
        let (mut w, mut device) = srtp_call(suite);
        let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
        for seq in 0..5u16 {
            let plain = rtp(seq, 0xca11, 160);
            let s = w
                .send(w.rtp_port(Side::Callee), q, &plain)
                .expect("forwarded");
            assert_eq!((s.from, s.to), (w.rtp_port(Side::Caller), p));
            assert_ne!(s.bytes, plain);
            assert!(s.bytes.len() > plain.len());
            let dec = device
                .decrypt(Kind::Rtp, &s.bytes)
                .expect("the device decrypts it");
            assert_eq!(&dec[..], &plain[..], "{suite:?}");
        }
        let rr = rtcp(201, 0xca11);
        let s = w
            .send(w.rtcp_port(Side::Callee), plus(q, 1), &rr)
            .expect("forwarded");
        assert_eq!((s.from, s.to), (w.rtcp_port(Side::Caller), plus(p, 1)));
        let dec = device.decrypt(Kind::Rtcp, &s.bytes).expect("decrypts");
        assert_eq!(&dec[..], &rr[..], "{suite:?}");
        assert_eq!(w.media.stats().srtp_encrypted, 6);
    }
}

#[test]
fn tampered_srtp_is_dropped_as_srtp_auth() {
    let (mut w, mut device) = srtp_call(CryptoSuite::AesCm128HmacSha1_80);
    let p = addr(CALLER_P);
    let enc = device.encrypt(Kind::Rtp, &rtp(1, 0x77, 100)).unwrap();
    for i in [20, enc.len() - 1] {
        let mut bad = enc.to_vec();
        bad[i] ^= 0x01;
        assert_eq!(w.send(w.rtp_port(Side::Caller), p, &bad), None);
    }
    let info = w.info();
    assert_eq!(info.caller.counters.dropped.srtp_auth, 2);
    assert_eq!(info.caller.counters.packets_in, 0);
    assert_eq!(info.callee.counters.packets_out, 0);
    assert_eq!(w.media.stats().dropped.srtp_auth, 2);
    // The genuine packet still passes (a forgery does not burn its index).
    let s = w.send(w.rtp_port(Side::Caller), p, &enc);
    assert_eq!(s.map(|s| s.bytes), Some(rtp(1, 0x77, 100)));
}

#[test]
fn replayed_srtp_is_dropped_as_srtp_auth() {
    let (mut w, mut device) = srtp_call(CryptoSuite::AeadAes128Gcm);
    let p = addr(CALLER_P);
    let enc = device.encrypt(Kind::Rtp, &rtp(1, 0x77, 100)).unwrap();
    assert!(w.send(w.rtp_port(Side::Caller), p, &enc).is_some());
    assert_eq!(w.send(w.rtp_port(Side::Caller), p, &enc), None);
    let r = device.encrypt(Kind::Rtcp, &rtcp(201, 0x77)).unwrap();
    assert!(w.send(w.rtcp_port(Side::Caller), plus(p, 1), &r).is_some());
    assert_eq!(w.send(w.rtcp_port(Side::Caller), plus(p, 1), &r), None);
    let info = w.info();
    assert_eq!(info.caller.counters.dropped.srtp_auth, 2);
    assert_eq!(info.caller.counters.packets_in, 2);
    // Plain RTP on the SRTP leg does not authenticate.
    assert_eq!(
        w.send(w.rtp_port(Side::Caller), p, &rtp(2, 0x77, 100)),
        None
    );
    assert_eq!(w.info().caller.counters.dropped.srtp_auth, 3);
}

/// A session refresh (RFC 4028) repeats the SDP. Before the fix the relay made a new
/// termination: its key changed and the inbound rollover counter restarted at 0, so
/// after 65536 packets the device's SRTP no longer authenticated, and packets from
/// before the re-INVITE could be replayed.
#[test]
fn a_reinvite_with_the_same_srtp_key_keeps_the_termination() {
    let suite = CryptoSuite::AesCm128HmacSha1_80;
    let (mut w, mut device) = srtp_call(suite);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let relay_key = w.info().caller.srtp;
    // The device's sequence numbers wrap: its rollover counter becomes 1.
    for seq in (65_530..=65_535u16).chain(0..5) {
        let enc = device.encrypt(Kind::Rtp, &rtp(seq, 0x5e5e, 20)).unwrap();
        let s = w.send(w.rtp_port(Side::Caller), p, &enc);
        assert_eq!(s.map(|s| s.bytes), Some(rtp(seq, 0x5e5e, 20)), "seq {seq}");
    }
    let replayed = device.encrypt(Kind::Rtp, &rtp(5, 0x5e5e, 20)).unwrap();
    assert!(w.send(w.rtp_port(Side::Caller), p, &replayed).is_some());
    // A session refresh: the same SDP, the same key.
    let info = w
        .update(&UpdateSession {
            caller: Some(LegRequest {
                srtp: Some(srtp::new_key(suite, &[0x42; 32])),
                streams: vec![stream(false, Some(p))],
                ..LegRequest::default()
            }),
            ..UpdateSession::default()
        })
        .expect("re-INVITE");
    assert_eq!(info.caller.srtp, relay_key, "the relay's key changed");
    // The device goes on with its context.
    let enc = device.encrypt(Kind::Rtp, &rtp(6, 0x5e5e, 20)).unwrap();
    let s = w.send(w.rtp_port(Side::Caller), p, &enc);
    assert_eq!(s.map(|s| s.bytes), Some(rtp(6, 0x5e5e, 20)));
    // A packet from before the re-INVITE is still a replay.
    assert_eq!(w.send(w.rtp_port(Side::Caller), p, &replayed), None);
    // And the device still decrypts what the relay sends it.
    let s = w
        .send(w.rtp_port(Side::Callee), q, &rtp(1, 0xca11, 20))
        .expect("forwarded");
    assert!(device.decrypt(Kind::Rtp, &s.bytes).is_ok());
}

#[test]
fn a_reinvite_with_a_new_srtp_key_makes_a_new_termination() {
    let suite = CryptoSuite::AesCm128HmacSha1_80;
    let (mut w, _) = srtp_call(suite);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let old_relay_key = w.info().caller.srtp;
    let new_device_key = srtp::new_key(suite, &[0x43; 32]);
    let info = w
        .update(&UpdateSession {
            caller: Some(LegRequest {
                srtp: Some(new_device_key.clone()),
                streams: vec![stream(false, Some(p))],
                ..LegRequest::default()
            }),
            ..UpdateSession::default()
        })
        .expect("re-INVITE");
    let relay_key = info.caller.srtp.expect("a relay key");
    assert_ne!(Some(&relay_key), old_relay_key.as_ref());
    let mut device = srtp::Termination::new(&relay_key, new_device_key).unwrap();
    let enc = device.encrypt(Kind::Rtp, &rtp(1, 0x5e5e, 20)).unwrap();
    let s = w.send(w.rtp_port(Side::Caller), p, &enc);
    assert_eq!(s.map(|s| s.bytes), Some(rtp(1, 0x5e5e, 20)));
    let s = w
        .send(w.rtp_port(Side::Callee), q, &rtp(1, 0xca11, 20))
        .expect("forwarded");
    let dec = device.decrypt(Kind::Rtp, &s.bytes).expect("decrypts");
    assert_eq!(&dec[..], &rtp(1, 0xca11, 20)[..]);
    // SRTP off: plain both ways.
    let info = w
        .update(&UpdateSession {
            caller: Some(announced(p, false)),
            ..UpdateSession::default()
        })
        .expect("re-INVITE without SRTP");
    assert_eq!(info.caller.srtp, None);
    let s = w.send(w.rtp_port(Side::Caller), p, &rtp(2, 0x5e5e, 20));
    assert_eq!(s.map(|s| s.bytes), Some(rtp(2, 0x5e5e, 20)));
}

#[test]
fn learn_first_with_srtp_latches_only_a_source_that_authenticates() {
    let suite = CryptoSuite::AesCm128HmacSha1_80;
    let device_key = srtp::new_key(suite, &[0x42; 32]);
    let mut w = World::new(&offer(LegRequest {
        learn_first_source: true,
        srtp: Some(device_key.clone()),
        streams: vec![stream(true, None)],
        ..LegRequest::default()
    }));
    let q = addr(CALLEE_Q);
    w.answer(announced(q, true));
    let relay_key = w.info().caller.srtp.expect("relay key");
    let mut device = srtp::Termination::new(&relay_key, device_key).unwrap();
    // A stranger that knows the port sends something RTP-shaped first.
    let x = addr(ATTACKER);
    assert_eq!(
        w.send(w.rtp_port(Side::Caller), x, &rtp(1, 0x5e5e, 40)),
        None
    );
    assert_eq!(w.info().caller.counters.dropped.srtp_auth, 1);
    assert_eq!(
        w.info().caller.streams[0].latched_rtp,
        None,
        "a forgery latched"
    );
    // The device then latches, and media to the caller goes to it.
    let l = addr("198.51.100.30:3000");
    let enc = device.encrypt(Kind::Rtp, &rtp(1, 0x5e5e, 40)).unwrap();
    let s = w.send(w.rtp_port(Side::Caller), l, &enc);
    assert_eq!(s.map(|s| s.to), Some(q));
    let s = w.send(w.rtp_port(Side::Callee), q, &rtp(1, 0xca11, 40));
    assert_eq!(s.map(|s| s.to), Some(l));
}

/// RTP whose RFC 8285 two-byte header extension (profile 0x1000) has an element that
/// claims 255 bytes where 2 remain, then `tag` bytes standing for an authentication
/// tag.
fn rtp_with_overlong_extension_element(tag: usize) -> Vec<u8> {
    let mut p = rtp(1, 0x5e5e, 0);
    p[0] |= 0x10; // X: a header extension follows
    p.extend_from_slice(&[0x10, 0x00, 0x00, 0x01]); // profile 0x1000, one word
    p.extend_from_slice(&[0x01, 0xff, 0x00, 0x00]); // id 1, length 255
    p.extend(std::iter::repeat_n(0xab, tag));
    p
}

#[test]
fn srtp_with_an_overlong_header_extension_is_dropped_not_a_panic() {
    let (mut w, _) = srtp_call(CryptoSuite::AesCm128HmacSha1_80);
    let p = addr(CALLER_P);
    let bad = rtp_with_overlong_extension_element(10);
    assert_eq!(packet::classify(&bad), Kind::Rtp);
    assert_eq!(w.send(w.rtp_port(Side::Caller), p, &bad), None);
    let dropped = w.info().caller.counters.dropped;
    assert_eq!(dropped.malformed + dropped.srtp_auth, 1);
}

#[test]
fn plain_rtp_with_an_overlong_header_extension_is_dropped_not_a_panic() {
    let (mut w, _) = srtp_call(CryptoSuite::AesCm128HmacSha1_80);
    let q = addr(CALLEE_Q);
    let bad = rtp_with_overlong_extension_element(0);
    assert_eq!(w.send(w.rtp_port(Side::Callee), q, &bad), None);
    assert_eq!(w.info().callee.counters.dropped.malformed, 1);
}

// ---------------------------------------------------------------------------
// Counters

#[test]
fn counters_match_what_was_sent() {
    let mut w = announced_call(false, false);
    let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
    let mut caller_bytes = 0;
    for i in 0..5u16 {
        let m = rtp(i, 1, 100 + usize::from(i));
        caller_bytes += m.len() as u64;
        w.send(w.rtp_port(Side::Caller), p, &m).expect("forwarded");
    }
    for i in 0..3u8 {
        w.send(w.rtcp_port(Side::Callee), plus(q, 1), &rtcp(200 + i, 2))
            .expect("forwarded");
    }
    // Dropped packets count as dropped only.
    assert_eq!(
        w.send(w.rtp_port(Side::Caller), addr(ATTACKER), &rtp(9, 1, 500)),
        None
    );
    assert_eq!(w.send(w.rtp_port(Side::Callee), q, &[0x40; 30]), None);
    w.advance(Duration::from_millis(1500));
    let info = w.info();
    let c = &info.caller.counters;
    assert_eq!(
        (c.packets_in, c.bytes_in, c.packets_out, c.bytes_out),
        (5, caller_bytes, 3, 24)
    );
    assert_eq!(caller_bytes, 5 * 12 + 100 + 101 + 102 + 103 + 104);
    assert_eq!(c.dropped.bleed, 1);
    assert_eq!(c.dropped.total(), 1);
    assert_eq!(c.idle_ms, Some(1500));
    let c = &info.callee.counters;
    assert_eq!(
        (c.packets_in, c.bytes_in, c.packets_out, c.bytes_out),
        (3, 24, 5, caller_bytes)
    );
    assert_eq!(c.dropped.malformed, 1);
    assert_eq!(c.dropped.total(), 1);
    let st = w.media.stats();
    assert_eq!(st.packets_forwarded, 8);
    assert_eq!(st.bytes_forwarded, caller_bytes + 24);
    assert_eq!(st.dropped.bleed, 1);
    assert_eq!(st.dropped.malformed, 1);
    assert_eq!(st.sessions_created, 1);
}

// ---------------------------------------------------------------------------
// Property tests: an attacker that knows the relay ports

/// Who sends in a property test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    Caller,
    Callee,
    Attacker,
}

/// The legitimate devices of a property test.
struct Devices {
    /// Per side: the sources a device sends RTP (index 0) and RTCP (index 1) from.
    sources: [[Vec<SocketAddr>; 2]; 2],
    /// With ICE: each side's check bytes are made by this.
    ice: bool,
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// What a legitimate device or the attacker sends in one step.
fn random_packet(
    rng: &mut StdRng,
    actor: Actor,
    devices: &Devices,
    captured_checks: &[Vec<u8>],
    captured_other: &[Vec<u8>],
) -> Vec<u8> {
    let any_of = |rng: &mut StdRng, v: &[Vec<u8>]| -> Option<Vec<u8>> {
        (!v.is_empty()).then(|| v[rng.random_range(0..v.len())].clone())
    };
    let tid: u8 = rng.random();
    match rng.random_range(0..10) {
        0..=2 => rtp(rng.random(), rng.random(), rng.random_range(0..300)),
        3 => rtcp(rng.random_range(192..=223), rng.random()),
        4 => match actor {
            Actor::Caller if devices.ice => caller_check(tid),
            Actor::Callee if devices.ice => callee_check(tid),
            // Guessed passwords, right usernames.
            _ => {
                let pwd: String = (0..24)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect();
                let user = if rng.random_bool(0.5) {
                    "CALE:CALR"
                } else {
                    "CALR:CALE"
                };
                check(tid, user, &pwd)
            }
        },
        5 => {
            let mapped = SocketAddr::from(([192, 0, 2, rng.random()], rng.random()));
            response(
                tid,
                mapped,
                if rng.random_bool(0.5) {
                    CALLER_PWD
                } else {
                    "guess"
                },
            )
        }
        6 => {
            // Garbage with a first byte in every demultiplexing range.
            let len = rng.random_range(0..120);
            let mut g = random_bytes(rng, len);
            if let Some(b) = g.first_mut() {
                *b = [0u8, 1, 3, 20, 63, 64, 127, 128, 191, 192, 255][rng.random_range(0..11)];
            }
            g
        }
        7 => {
            // Something seen on the wire, truncated.
            let mut p = any_of(rng, captured_checks)
                .or_else(|| any_of(rng, captured_other))
                .unwrap_or_else(|| caller_check(tid));
            let cut = rng.random_range(0..p.len());
            p.truncate(cut);
            p
        }
        8 => {
            // A captured check with a bit flipped where MESSAGE-INTEGRITY covers
            // it (the FINGERPRINT after it is not covered: changing it is a replay).
            let mut p = any_of(rng, captured_checks).unwrap_or_else(|| caller_check(tid));
            let i = rng.random_range(0..p.len() - 8);
            p[i] ^= 1 << rng.random_range(0..8);
            p
        }
        _ => {
            // A replay of captured media, a response or garbage (not of a check).
            any_of(rng, captured_other).unwrap_or_else(|| rtp(1, 1, 10))
        }
    }
}

/// Drive `w` with random traffic from the two devices and an attacker; check that
/// nothing the attacker sends leaves the relay and nothing is ever sent to it.
fn attacker_property(mut w: World, devices: Devices, answer: LegRequest, seed: u64) {
    let x = addr(ATTACKER);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut captured_checks: Vec<Vec<u8>> = Vec::new();
    let mut captured_other: Vec<Vec<u8>> = Vec::new();
    let mut forwarded = [0u32; 2];
    let mut attacker_sent = 0u32;
    let legit: HashSet<SocketAddr> = devices
        .sources
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    assert!(!legit.contains(&x));
    for step in 0..4000 {
        if step == 200 {
            w.answer(answer.clone());
        }
        w.advance(Duration::from_millis(rng.random_range(0..40)));
        if step % 50 == 0 {
            w.timeout();
            assert_eq!(w.media.session_count(), 1, "the session ended at {step}");
        }
        let actor = match rng.random_range(0..3) {
            0 => Actor::Caller,
            1 => Actor::Callee,
            _ => Actor::Attacker,
        };
        let side = match actor {
            Actor::Caller => Side::Caller,
            Actor::Callee => Side::Callee,
            Actor::Attacker => {
                if rng.random_bool(0.5) {
                    Side::Caller
                } else {
                    Side::Callee
                }
            }
        };
        let mut component = if rng.random_bool(0.5) {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        if !w.ports.open.contains_key(&w.at(side, 0, component)) {
            component = Component::Rtp;
        }
        let at = w.at(side, 0, component);
        let from = match actor {
            Actor::Attacker => x,
            _ => {
                let s = &devices.sources[side as usize][component as usize - 1];
                s[rng.random_range(0..s.len())]
            }
        };
        let p = random_packet(&mut rng, actor, &devices, &captured_checks, &captured_other);
        let is_check = matches!(
            ice::check(&p, None),
            ice::Stun::AuthenticatedCheck | ice::Stun::UnauthenticatedCheck
        );
        if actor == Actor::Attacker {
            attacker_sent += 1;
            // The attacker never sends a legitimate device's check bytes as they are.
            assert!(
                !captured_checks.contains(&p),
                "step {step}: the test let the attacker replay a check"
            );
        }
        let sent = w.send(at, from, &p);
        if let Some(s) = &sent {
            assert_ne!(
                actor,
                Actor::Attacker,
                "step {step}: the attacker's packet left the relay: {s:?}"
            );
            assert_ne!(s.to, x, "step {step}: sent to the attacker");
            assert!(legit.contains(&s.to), "step {step}: sent to {}", s.to);
            assert_ne!(
                s.from.side, side,
                "step {step}: sent back out of its own leg"
            );
            assert_eq!(s.bytes, p, "step {step}: changed on the way");
            forwarded[side as usize] += 1;
        }
        // What the devices send can be captured on the way.
        if actor != Actor::Attacker && !p.is_empty() {
            if is_check && devices.ice {
                captured_checks.push(p);
            } else {
                captured_other.push(p);
            }
        }
    }
    // Not vacuous: both directions carried traffic and the attacker tried hard.
    assert!(forwarded[0] > 100, "caller to callee: {}", forwarded[0]);
    assert!(forwarded[1] > 100, "callee to caller: {}", forwarded[1]);
    assert!(attacker_sent > 1000);
    let info = w.info();
    let dropped = info.caller.counters.dropped.total() + info.callee.counters.dropped.total();
    assert!(dropped >= u64::from(attacker_sent));
}

#[test]
fn property_an_attacker_without_the_ice_passwords_gets_and_injects_nothing() {
    for seed in [1, 2, 3] {
        let w = World::new(&offer(caller_ice(false)));
        let devices = Devices {
            sources: [
                [
                    vec![addr(CALLER_A), addr(CALLER_A2)],
                    vec![plus(addr(CALLER_A), 1), plus(addr(CALLER_A2), 1)],
                ],
                [vec![addr(CALLEE_B)], vec![addr(CALLEE_B)]],
            ],
            ice: true,
        };
        attacker_property(w, devices, callee_ice(true), seed);
    }
}

#[test]
fn property_an_attacker_gets_and_injects_nothing_on_announced_legs() {
    for seed in [4, 5, 6] {
        let (p, q) = (addr(CALLER_P), addr(CALLEE_Q));
        let w = World::new(&offer(announced(p, false)));
        let devices = Devices {
            sources: [[vec![p], vec![plus(p, 1)]], [vec![q], vec![q]]],
            ice: false,
        };
        attacker_property(w, devices, announced(q, true), seed);
    }
}
