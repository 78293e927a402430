//! Writes a parsed SDP back with the relay in it. Every line not named here comes out
//! byte for byte, in its place, with its own line ending.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use tandem_control::{LegInfo, StreamInfo};

use super::describe::{Description, Policy, Role};
use super::parse::{Eol, Media, Sdp, MAX_LINES, MAX_SDP_LEN};
use super::SdpError;

/// Local preference of the relay candidates (RFC 8445 §5.1.2.1). We add one relay
/// candidate per component in one address family, so there is nothing to rank among
/// them: IPv4 and IPv6 both use the maximum.
pub const RELAY_LOCAL_PREFERENCE: u32 = 65535;

/// What to do with SDES lines and the transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpPlan {
    /// Leave `a=crypto` and the protocol alone (no termination on this path).
    Keep,
    /// Toward a plain gateway: `RTP/SAVP` becomes `RTP/AVP` (`SAVPF`: `AVPF`) and every
    /// `a=crypto` line goes.
    ToPlain,
    /// Toward the SRTP caller: the offer's protocol comes back and each relayed section
    /// gets one `a=crypto` with the offer's tag and the relay's key
    /// ([`LegInfo::srtp`]).
    ToSdes,
}

/// How to rewrite one SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Remove the device's `host`, `srflx` and `prflx` candidates (force-relay).
    pub remove_device_candidates: bool,
    /// Point the default candidate (`c=`, `m=` port, `a=rtcp`) at the relay even when
    /// the SDP has ICE. Without ICE it always is.
    pub relay_default: bool,
    pub srtp: SrtpPlan,
}

impl Plan {
    /// The plan for an SDP under `policy`: force-relay removes the device's candidates
    /// and moves the default candidate; an offer toward a plain gateway moves the
    /// default candidate (the gateway does not do ICE); SDES termination follows the
    /// description's [`srtp_bridge`](Description::srtp_bridge).
    pub fn new(policy: &Policy, desc: &Description) -> Plan {
        let bridged = desc.srtp_bridge.is_some();
        Plan {
            remove_device_candidates: policy.force_relay,
            relay_default: policy.force_relay || (policy.plain_callee && desc.role == Role::Offer),
            srtp: match (bridged, desc.role) {
                (false, _) => SrtpPlan::Keep,
                (true, Role::Offer) => SrtpPlan::ToPlain,
                (true, Role::Answer) => SrtpPlan::ToSdes,
            },
        }
    }
}

/// A stable ICE foundation for the relay's candidates on one address (RFC 8445
/// §5.1.1.3: same type, base and server, same foundation): FNV-1a over the address.
pub fn relay_foundation(ip: IpAddr) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    b"relay/udp/".iter().for_each(|&b| eat(b));
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().for_each(|&b| eat(b)),
        IpAddr::V6(v6) => v6.octets().iter().for_each(|&b| eat(b)),
    }
    h.to_string()
}

/// The priority of a relay candidate for `component` (RFC 8445 §5.1.2.1, type
/// preference 0).
pub fn relay_priority(component: u32) -> u32 {
    (RELAY_LOCAL_PREFERENCE << 8) | (256 - component.min(256))
}

/// `candidate:...` for a relay address. The related address is `0.0.0.0 0` (`:: 0`),
/// as browsers write it when they do not disclose it; it is informational only
/// (RFC 8839 §5.1).
fn candidate_line(component: u32, addr: SocketAddr) -> Vec<u8> {
    let raddr = if addr.is_ipv4() { "0.0.0.0" } else { "::" };
    format!(
        "a=candidate:{} {} udp {} {} {} typ relay raddr {} rport 0",
        relay_foundation(addr.ip()),
        component,
        relay_priority(component),
        addr.ip(),
        addr.port(),
        raddr
    )
    .into_bytes()
}

fn net(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IN IP4"
    } else {
        "IN IP6"
    }
}

fn c_line(ip: IpAddr) -> Vec<u8> {
    format!("c={} {}", net(ip), ip).into_bytes()
}

/// Edits to a line list: per line replaced, dropped, and lines inserted before a given
/// index (`lines.len()` for the end).
#[derive(Default)]
struct Edits {
    replace: BTreeMap<usize, Vec<u8>>,
    drop: std::collections::BTreeSet<usize>,
    insert: BTreeMap<usize, Vec<Vec<u8>>>,
    m_port: BTreeMap<usize, u16>,
    m_proto: BTreeMap<usize, String>,
}

impl Edits {
    fn insert_before(&mut self, at: usize, line: Vec<u8>) {
        self.insert.entry(at).or_default().push(line);
    }
}

/// Rewrites `sdp` for the device that receives it: `leg` is the relay's leg of that
/// device (the callee's for an offer, the caller's for an answer), whose ports the
/// device sends to.
///
/// - With ICE, relay candidates are added (components 1 and, without rtcp-mux, 2) after
///   each transport's existing candidates and before `a=end-of-candidates`: in the
///   BUNDLE tag section, and in every other section of the group that carries
///   candidates of its own (as the device placed them, RFC 8843 §10.1). `c=` and `m=`
///   stay unless `plan.relay_default`.
/// - Without ICE (or with `plan.relay_default`), `c=` (session and media level),
///   the `m=` port and `a=rtcp` (port, and address when it has one) name the relay. A
///   connection address of `0.0.0.0`/`::` in an SDP without ICE is hold and is kept,
///   the port still changes (so resuming only changes `c=`). Port-0 sections are not
///   touched. A stream with `a=inactive` is rewritten like any other, so its ports stay
///   reserved when it resumes.
/// - `o=` is left alone: the same SDP is rewritten the same way every time, so a
///   re-offer changes exactly when the device's own version does (RFC 3264 §8).
/// - Inserted lines end like the SDP's first line.
///
/// Errors: a relay leg with fewer streams than the description
/// ([`SdpError::RelayStreamMissing`]), no relay key for an SDES answer
/// ([`SdpError::RelayKeyMissing`]), or a result over the parser's limits.
pub fn rewrite(
    sdp: &Sdp<'_>,
    desc: &Description,
    leg: &LegInfo,
    plan: &Plan,
) -> Result<Vec<u8>, SdpError> {
    let stream = |s: usize| leg.streams.get(s).ok_or(SdpError::RelayStreamMissing(s));
    for s in desc.stream_of.iter().flatten() {
        stream(*s)?;
    }
    let mut e = Edits::default();
    let ice = desc.facts.ice;
    let to_relay = !ice || plan.relay_default;

    if ice {
        for (i, m) in sdp.media.iter().enumerate() {
            let Some(s) = desc.stream_of.get(i).copied().flatten() else {
                continue;
            };
            if plan.remove_device_candidates {
                for c in &m.candidates {
                    if c.typ != Some("relay") {
                        e.drop.insert(c.line);
                    }
                }
            }
            let is_tag = desc.tag_section.get(s).copied().flatten() == Some(i);
            // The tag section always; the group's other sections only where the device
            // put candidates itself.
            if m.bundle_only || (!is_tag && m.candidates.is_empty()) {
                continue;
            }
            let info = stream(s)?;
            let at = candidate_position(m);
            e.insert_before(at, candidate_line(1, info.relay_rtp));
            if let Some(rtcp) = info.relay_rtcp {
                e.insert_before(at, candidate_line(2, rtcp));
            }
        }
    }

    if to_relay {
        point_at_relay(sdp, desc, leg, ice, &mut e)?;
    }

    match plan.srtp {
        SrtpPlan::Keep => {}
        SrtpPlan::ToPlain => {
            for m in &sdp.media {
                for c in &m.crypto {
                    e.drop.insert(c.line);
                }
                if let Some(plain) = plain_proto(m.proto) {
                    set_m(m, None, Some(plain), &mut e);
                }
            }
        }
        SrtpPlan::ToSdes => {
            let bridge = desc.srtp_bridge.as_ref().ok_or(SdpError::RelayKeyMissing)?;
            let key = leg.srtp.as_ref().ok_or(SdpError::RelayKeyMissing)?;
            for (i, m) in sdp.media.iter().enumerate() {
                for c in &m.crypto {
                    e.drop.insert(c.line);
                }
                if let Some(p) = bridge.protos.get(i).filter(|p| p.as_str() != m.proto) {
                    set_m(m, None, Some(p), &mut e);
                }
                let tag = bridge.tags.get(i).copied().flatten();
                if let (Some(_), Some(tag)) = (desc.stream_of.get(i).copied().flatten(), tag) {
                    let line = format!(
                        "a=crypto:{} {} inline:{}",
                        tag,
                        key.suite.sdp_name(),
                        key.key
                    );
                    e.insert_before(m.end, line.into_bytes());
                }
            }
        }
    }
    m_lines(sdp, &mut e);
    // What we hand out must parse again: the same limits as the parser.
    let inserted: usize = e.insert.values().map(Vec::len).sum();
    if sdp.lines.len().saturating_sub(e.drop.len()) + inserted > MAX_LINES {
        return Err(SdpError::TooManyLines { max: MAX_LINES });
    }
    let out = emit(sdp, &e);
    if out.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge { max: MAX_SDP_LEN });
    }
    Ok(out)
}

/// After the section's last candidate, before `a=end-of-candidates`; else before
/// `a=end-of-candidates`, else at the end of the section.
fn candidate_position(m: &Media<'_>) -> usize {
    let after_last = m.candidates.iter().map(|c| c.line + 1).max();
    match (after_last, m.end_of_candidates) {
        (Some(a), Some(eoc)) => a.min(eoc),
        (Some(a), None) => a,
        (None, Some(eoc)) => eoc,
        (None, None) => m.end,
    }
}

/// The plain profile for an SRTP one: `RTP/SAVP` -> `RTP/AVP`, `RTP/SAVPF` ->
/// `RTP/AVPF`.
fn plain_proto(proto: &str) -> Option<&'static str> {
    if proto.starts_with("UDP/TLS") {
        return None;
    }
    if proto.ends_with("/SAVPF") {
        Some("RTP/AVPF")
    } else if proto.ends_with("/SAVP") {
        Some("RTP/AVP")
    } else {
        None
    }
}

/// Sets the port and/or the protocol of an `m=` line; [`m_lines`] writes them.
fn set_m(m: &Media<'_>, port: Option<u16>, proto: Option<&str>, e: &mut Edits) {
    if let Some(p) = port {
        e.m_port.insert(m.line, p);
    }
    if let Some(p) = proto {
        e.m_proto.insert(m.line, p.to_owned());
    }
}

/// The `m=` lines with a new port or protocol, every other byte kept. A port with a
/// `/count` loses it: the relay gives one port.
fn m_lines(sdp: &Sdp<'_>, e: &mut Edits) {
    let input = sdp.input;
    for m in &sdp.media {
        let port = e.m_port.get(&m.line).copied();
        let proto = e.m_proto.get(&m.line).cloned();
        let Some(l) = sdp.lines.get(m.line) else {
            continue;
        };
        if port.is_none() && proto.is_none() {
            continue;
        }
        let slice = |a: usize, b: usize| input.get(a..b).unwrap_or_default();
        let mut out = Vec::new();
        out.extend_from_slice(slice(l.start, m.port_span.0));
        match port {
            Some(p) => out.extend_from_slice(p.to_string().as_bytes()),
            None => out.extend_from_slice(slice(m.port_span.0, m.port_span.1)),
        }
        out.extend_from_slice(slice(m.port_span.1, m.proto_span.0));
        match &proto {
            Some(p) => out.extend_from_slice(p.as_bytes()),
            None => out.extend_from_slice(slice(m.proto_span.0, m.proto_span.1)),
        }
        out.extend_from_slice(slice(m.proto_span.1, l.end));
        e.replace.insert(m.line, out);
    }
}

fn point_at_relay(
    sdp: &Sdp<'_>,
    desc: &Description,
    leg: &LegInfo,
    ice: bool,
    e: &mut Edits,
) -> Result<(), SdpError> {
    let stream = |s: usize| -> Result<&StreamInfo, SdpError> {
        leg.streams.get(s).ok_or(SdpError::RelayStreamMissing(s))
    };
    // Hold (0.0.0.0 without ICE) is kept; with ICE it only means "no default yet".
    let keep = |c: &super::parse::Connection| !ice && (c.unspecified() || c.addr.is_none());
    let first_ip = match desc.stream_of.iter().flatten().next() {
        Some(&s) => stream(s)?.relay_rtp.ip(),
        None => return Ok(()),
    };
    // What a section without its own c= inherits after the rewrite.
    let session_ip = match &sdp.connection {
        Some(c) if keep(c) => None,
        Some(c) => {
            e.replace.insert(c.line, c_line(first_ip));
            Some(first_ip)
        }
        None => None,
    };
    let session_held = sdp.connection.as_ref().is_some_and(keep);
    for (i, m) in sdp.media.iter().enumerate() {
        let Some(s) = desc.stream_of.get(i).copied().flatten() else {
            continue;
        };
        let info = stream(s)?;
        let ip = info.relay_rtp.ip();
        set_m(m, Some(info.relay_rtp.port()), None, e);
        match &m.connection {
            Some(c) if keep(c) => {}
            Some(c) => {
                e.replace.insert(c.line, c_line(ip));
            }
            None if session_held || session_ip == Some(ip) => {}
            None => {
                // After m= and an i= line (RFC 8866 §5 order: m, i, c).
                let mut at = m.line + 1;
                if sdp.line(at).starts_with(b"i=") {
                    at += 1;
                }
                e.insert_before(at, c_line(ip));
            }
        }
        let rtcp_at = info.relay_rtcp.unwrap_or(info.relay_rtp);
        match &m.rtcp {
            Some(r) => {
                let held = |a: IpAddr| !ice && a.is_unspecified();
                let text = match r.addr {
                    Some(a) if held(a) => format!("a=rtcp:{} {} {}", rtcp_at.port(), net(a), a),
                    Some(_) => format!(
                        "a=rtcp:{} {} {}",
                        rtcp_at.port(),
                        net(rtcp_at.ip()),
                        rtcp_at.ip()
                    ),
                    None => format!("a=rtcp:{}", rtcp_at.port()),
                };
                e.replace.insert(r.line, text.into_bytes());
            }
            None => {
                // Without a=rtcp the device sends RTCP to the next port; say so when the
                // relay's RTCP port is elsewhere.
                if let Some(rtcp) = info.relay_rtcp {
                    if Some(rtcp.port()) != info.relay_rtp.port().checked_add(1) || rtcp.ip() != ip
                    {
                        let text = if rtcp.ip() == ip {
                            format!("a=rtcp:{}", rtcp.port())
                        } else {
                            format!("a=rtcp:{} {} {}", rtcp.port(), net(rtcp.ip()), rtcp.ip())
                        };
                        e.insert_before(m.end, text.into_bytes());
                    }
                }
            }
        }
    }
    Ok(())
}

fn emit(sdp: &Sdp<'_>, e: &Edits) -> Vec<u8> {
    let dominant = match sdp.lines.first().map(|l| l.eol) {
        Some(Eol::Lf) => Eol::Lf,
        _ => Eol::CrLf,
    };
    let mut out = Vec::with_capacity(sdp.input.len() + 512);
    let mut open = false; // the last line written had no line ending
    let mut put = |out: &mut Vec<u8>, bytes: &[u8], eol: Eol| {
        if open {
            out.extend_from_slice(dominant.bytes());
        }
        out.extend_from_slice(bytes);
        out.extend_from_slice(eol.bytes());
        open = eol == Eol::None;
    };
    let n = sdp.lines.len();
    for i in 0..=n {
        if let Some(lines) = e.insert.get(&i) {
            for l in lines {
                put(&mut out, l, dominant);
            }
        }
        let Some(l) = sdp.lines.get(i) else { break };
        if e.drop.contains(&i) {
            continue;
        }
        match e.replace.get(&i) {
            Some(r) => put(&mut out, r, l.eol),
            None => put(&mut out, sdp.line(i), l.eol),
        }
    }
    out
}
