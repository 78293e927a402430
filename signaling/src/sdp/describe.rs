//! From a parsed SDP to what the relay needs: the leg's [`LegRequest`], the relayed
//! transports in `m=` order, and facts the proxy decides on.

use std::net::{IpAddr, SocketAddr};

use tandem_control::{
    AddressFamily, CreateSession, CryptoSuite, IceCredentials, LegRequest, SrtpCrypto,
    StreamRequest, UpdateSession, MAX_STREAMS,
};

use super::parse::{Direction, Media, Sdp};
use super::SdpError;

/// What the proxy wants done with a call's media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Only the relay's candidates are offered: the device's host, srflx and prflx
    /// candidates are removed and the default candidate (`c=`, `m=` port, `a=rtcp`)
    /// points at the relay.
    pub force_relay: bool,
    /// The callee is a plain RTP gateway (OFFNET): an SDES-SRTP offer is terminated on
    /// the caller's leg and the offer sent on is plain RTP; a DTLS-SRTP offer is refused
    /// ([`SdpError::DtlsToPlain`]). The default candidate points at the relay, since
    /// a gateway without ICE sends there.
    pub plain_callee: bool,
    /// Legs without ICE latch the first source that sends instead of their announced
    /// address (symmetric-RTP devices behind NAT).
    pub learn_first_source: bool,
}

/// Whether an SDP is an offer or an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Offer,
    Answer,
}

/// Facts about an SDP the proxy may decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Facts {
    /// ICE credentials (`a=ice-ufrag` and `a=ice-pwd`) are present.
    pub ice: bool,
    /// Some section already has an `a=candidate ... typ relay`: the device uses a TURN
    /// server of its own (see [`Description::already_relayed`]).
    pub relay_candidate: bool,
    /// `a=fingerprint` is present (DTLS-SRTP, RFC 8122 / RFC 5763).
    pub dtls: bool,
    /// A relayed section carries `a=crypto` lines (SDES-SRTP, RFC 4568).
    pub sdes: bool,
    /// The address family of the relay ports to ask for: the family of the first
    /// relayed section's connection address.
    pub family: AddressFamily,
    /// Some relayed section is on hold: `a=sendonly` or `a=inactive`, or a connection
    /// address of `0.0.0.0`/`::` in an SDP without ICE.
    pub hold: bool,
    /// Every relayed section is `a=inactive`.
    pub inactive: bool,
    /// Relayed transports (the length of [`LegRequest::streams`]).
    pub streams: usize,
    /// Some `a=group:BUNDLE` groups relayed sections.
    pub bundle: bool,
}

/// The SDES termination of an SRTP offer toward a plain gateway, carried from the offer
/// to its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SrtpBridge {
    /// The suite of the key the caller announced (and of the relay's key).
    pub suite: CryptoSuite,
    /// Per `m=` line of the offer: the tag of the `a=crypto` line chosen there.
    pub tags: Vec<Option<u32>>,
    /// Per `m=` line of the offer: its original transport protocol (`RTP/SAVP`, ...),
    /// which the answer toward the caller gets back.
    pub protos: Vec<String>,
}

/// What an SDP asks of the relay, and how its `m=` lines map to relay streams.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Description {
    pub role: Role,
    /// The leg this SDP describes: the caller's for an offer, the callee's for an
    /// answer.
    pub leg: LegRequest,
    /// Per `m=` line: the index of the relay stream it is carried by, `None` for a
    /// port-0 (rejected or bundle-only) section.
    pub stream_of: Vec<Option<usize>>,
    /// Per relay stream: the `m=` line whose address describes the transport (the
    /// BUNDLE tag section for a bundle group). `None` for a stream the answer rejected.
    pub tag_section: Vec<Option<usize>>,
    pub facts: Facts,
    /// Set when SDES is terminated on the caller's leg (offer toward a plain gateway,
    /// and its answer).
    pub srtp_bridge: Option<SrtpBridge>,
}

impl Description {
    /// The SDP already carries a TURN relay candidate of the device's own. The proxy
    /// may pass such an offer (and its answer) untouched, without a relay session.
    pub fn already_relayed(&self) -> bool {
        self.facts.relay_candidate
    }
}

/// The relayed transports of an SDP: per `m=` line its stream, and per stream its tag
/// section. Port-0 sections carry nothing; the sections of one BUNDLE group share one
/// stream, described by the group's first listed mid with a port (RFC 8843 §7.2.1).
fn layout(sdp: &Sdp<'_>) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut stream_of = vec![None; sdp.media.len()];
    let mut tags: Vec<usize> = Vec::new();
    let mut group_stream: Vec<Option<usize>> = vec![None; sdp.bundle_groups.len()];
    for (i, m) in sdp.media.iter().enumerate() {
        if m.port == 0 {
            continue;
        }
        let group = m
            .mid
            .and_then(|mid| sdp.bundle_groups.iter().position(|g| g.contains(&mid)));
        let s = match group.and_then(|g| group_stream.get(g).copied().flatten()) {
            Some(s) => s,
            None => {
                let s = tags.len();
                let tag = group
                    .and_then(|g| sdp.bundle_groups.get(g))
                    .and_then(|g| {
                        g.iter().find_map(|mid| {
                            sdp.media
                                .iter()
                                .position(|x| x.mid == Some(*mid) && x.port != 0)
                        })
                    })
                    .unwrap_or(i);
                tags.push(tag);
                if let Some(slot) = group.and_then(|g| group_stream.get_mut(g)) {
                    *slot = Some(s);
                }
                s
            }
        };
        if let Some(slot) = stream_of.get_mut(i) {
            *slot = Some(s);
        }
    }
    (stream_of, tags)
}

/// Where a section receives: its connection address (media-level over session-level)
/// and `m=` port, and RTCP from `a=rtcp` (with its own address when given), else the
/// next port; nothing for RTCP with rtcp-mux. An unspecified or host-name address
/// announces nothing.
fn stream_request(sdp: &Sdp<'_>, m: &Media<'_>) -> StreamRequest {
    let addr = sdp
        .connection_of(m)
        .and_then(|c| c.addr)
        .filter(|a| !a.is_unspecified());
    let rtp = addr.map(|a| SocketAddr::new(a, m.port));
    let rtcp = if m.rtcp_mux {
        None
    } else {
        match m.rtcp {
            Some(r) => r
                .addr
                .or(addr)
                .filter(|a| !a.is_unspecified())
                .map(|a| SocketAddr::new(a, r.port)),
            None => rtp.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p))),
        }
    };
    StreamRequest {
        rtcp_mux: m.rtcp_mux,
        rtp,
        rtcp,
    }
}

fn family_of(sdp: &Sdp<'_>, m: Option<&Media<'_>>) -> AddressFamily {
    match m
        .and_then(|m| sdp.connection_of(m))
        .or(sdp.connection)
        .and_then(|c| c.addr)
    {
        Some(IpAddr::V6(_)) => AddressFamily::Ipv6,
        _ => AddressFamily::Ipv4,
    }
}

fn ice_of(sdp: &Sdp<'_>, first: Option<&Media<'_>>) -> Option<IceCredentials> {
    let (ufrag, pwd) = match first {
        Some(m) => sdp.ice_of(m)?,
        None => (sdp.ice_ufrag?, sdp.ice_pwd?),
    };
    Some(IceCredentials {
        ufrag: ufrag.to_owned(),
        pwd: pwd.to_owned(),
    })
}

fn facts(sdp: &Sdp<'_>, stream_of: &[Option<usize>], streams: usize, ice: bool) -> Facts {
    let relayed = || {
        sdp.media
            .iter()
            .zip(stream_of)
            .filter(|(_, s)| s.is_some())
            .map(|(m, _)| m)
    };
    let first = relayed().next();
    let held = |m: &Media<'_>| {
        matches!(
            sdp.direction_of(m),
            Direction::SendOnly | Direction::Inactive
        ) || (!ice && sdp.connection_of(m).is_some_and(|c| c.unspecified()))
    };
    Facts {
        ice,
        relay_candidate: sdp
            .media
            .iter()
            .any(|m| m.candidates.iter().any(|c| c.typ == Some("relay"))),
        dtls: sdp.fingerprint || sdp.media.iter().any(|m| m.fingerprint),
        sdes: relayed().any(|m| !m.crypto.is_empty()),
        family: family_of(sdp, first),
        hold: relayed().any(held),
        inactive: first.is_some() && relayed().all(|m| sdp.direction_of(m) == Direction::Inactive),
        streams,
        bundle: relayed().any(|m| {
            m.mid
                .is_some_and(|mid| sdp.bundle_groups.iter().any(|g| g.contains(&mid)))
        }),
    }
}

/// Describes an offer (the caller's leg). With `policy.plain_callee` an SDES-SRTP
/// offer gets the caller leg's `srtp` (the first `a=crypto` the relay supports in the
/// first relayed section; every other relayed section with `a=crypto` must offer the
/// same key) and a DTLS-SRTP offer is refused.
pub fn describe_offer(sdp: &Sdp<'_>, policy: &Policy) -> Result<Description, SdpError> {
    let (stream_of, tags) = layout(sdp);
    if tags.is_empty() {
        return Err(SdpError::NoStreams);
    }
    if tags.len() > MAX_STREAMS {
        return Err(SdpError::TooManyStreams { max: MAX_STREAMS });
    }
    let tag_media: Vec<&Media<'_>> = tags.iter().filter_map(|&t| sdp.media.get(t)).collect();
    let ice = ice_of(sdp, tag_media.first().copied());
    let facts = facts(sdp, &stream_of, tags.len(), ice.is_some());
    let mut srtp = None;
    let mut srtp_bridge = None;
    if policy.plain_callee {
        let sdes =
            sdp.media.iter().zip(&stream_of).any(|(m, s)| {
                s.is_some() && !m.crypto.is_empty() && !m.proto.starts_with("UDP/TLS")
            });
        if sdes {
            let (crypto, bridge) = choose_crypto(sdp, &stream_of)?;
            srtp = Some(crypto);
            srtp_bridge = Some(bridge);
        } else if facts.dtls {
            return Err(SdpError::DtlsToPlain);
        }
    }
    let leg = LegRequest {
        learn_first_source: policy.learn_first_source && ice.is_none(),
        ice,
        srtp,
        streams: tag_media.iter().map(|m| stream_request(sdp, m)).collect(),
    };
    leg.validate().map_err(SdpError::Relay)?;
    Ok(Description {
        role: Role::Offer,
        leg,
        stream_of,
        tag_section: tags.into_iter().map(Some).collect(),
        facts,
        srtp_bridge,
    })
}

fn choose_crypto(
    sdp: &Sdp<'_>,
    stream_of: &[Option<usize>],
) -> Result<(SrtpCrypto, SrtpBridge), SdpError> {
    let supported = |m: &Media<'_>| {
        m.crypto
            .iter()
            .filter_map(|c| {
                let suite = CryptoSuite::from_sdp_name(c.suite)?;
                let crypto = SrtpCrypto {
                    suite,
                    key: c.key?.to_owned(),
                };
                let ok = LegRequest {
                    srtp: Some(crypto.clone()),
                    ..LegRequest::default()
                }
                .validate()
                .is_ok();
                Some((c.tag?, crypto)).filter(|_| ok)
            })
            .collect::<Vec<_>>()
    };
    let mut chosen: Option<SrtpCrypto> = None;
    let mut tags = vec![None; sdp.media.len()];
    for ((m, s), tag) in sdp.media.iter().zip(stream_of).zip(tags.iter_mut()) {
        if s.is_none() || m.crypto.is_empty() {
            continue;
        }
        let options = supported(m);
        let pick = match &chosen {
            None => options.into_iter().next(),
            Some(c) => options.into_iter().find(|(_, o)| o == c),
        };
        let Some((t, c)) = pick else {
            return Err(if chosen.is_some() {
                SdpError::CryptoKeysDiffer
            } else {
                SdpError::NoSupportedCrypto
            });
        };
        *tag = Some(t);
        chosen.get_or_insert(c);
    }
    let crypto = chosen.ok_or(SdpError::NoSupportedCrypto)?;
    Ok((
        crypto.clone(),
        SrtpBridge {
            suite: crypto.suite,
            tags,
            protos: sdp.media.iter().map(|m| m.proto.to_owned()).collect(),
        },
    ))
}

/// Describes an answer (the callee's leg) against its offer: the answer's streams are
/// the offer's, in the same order, so the relay matches them by index. A stream whose
/// sections the answer rejected (port 0) is sent without addresses; an answer with a
/// different number of `m=` lines, or one that splits a bundle group of the offer over
/// several transports, is refused ([`SdpError::AnswerMismatch`]).
pub fn describe_answer(
    sdp: &Sdp<'_>,
    offer: &Description,
    policy: &Policy,
) -> Result<Description, SdpError> {
    if sdp.media.len() != offer.stream_of.len() {
        return Err(SdpError::AnswerMismatch);
    }
    let n = offer.tag_section.len();
    let mut tag_section: Vec<Option<usize>> = vec![None; n];
    let mut stream_of = vec![None; sdp.media.len()];
    let (answer_layout, _) = layout(sdp);
    for (s, tag) in tag_section.iter_mut().enumerate() {
        let sections: Vec<usize> = offer
            .stream_of
            .iter()
            .enumerate()
            .filter(|(i, o)| **o == Some(s) && sdp.media.get(*i).is_some_and(|m| m.port != 0))
            .map(|(i, _)| i)
            .collect();
        // The answer's own transports for these sections: all must be one.
        let mut transports = sections
            .iter()
            .filter_map(|&i| answer_layout.get(i).copied().flatten());
        if let Some(first) = transports.next() {
            if transports.any(|t| t != first) {
                return Err(SdpError::AnswerMismatch);
            }
        }
        // The answerer's BUNDLE tag when it bundles, else the only section.
        *tag = sections
            .iter()
            .copied()
            .find(|&i| {
                sdp.media
                    .get(i)
                    .and_then(|m| m.mid)
                    .is_some_and(|mid| sdp.bundle_groups.iter().any(|g| g.first() == Some(&mid)))
            })
            .or(sections.first().copied());
        for i in sections {
            if let Some(slot) = stream_of.get_mut(i) {
                *slot = Some(s);
            }
        }
    }
    let first = tag_section.iter().flatten().find_map(|&i| sdp.media.get(i));
    let ice = ice_of(sdp, first);
    let mut facts = facts(sdp, &stream_of, n, ice.is_some());
    facts.family = offer.facts.family;
    let streams = tag_section
        .iter()
        .zip(&offer.leg.streams)
        .map(|(t, o)| match t.and_then(|i| sdp.media.get(i)) {
            Some(m) => stream_request(sdp, m),
            None => StreamRequest {
                rtcp_mux: o.rtcp_mux,
                rtp: None,
                rtcp: None,
            },
        })
        .collect();
    let leg = LegRequest {
        learn_first_source: policy.learn_first_source && ice.is_none(),
        ice,
        srtp: None,
        streams,
    };
    leg.validate().map_err(SdpError::Relay)?;
    Ok(Description {
        role: Role::Answer,
        leg,
        stream_of,
        tag_section,
        facts,
        srtp_bridge: offer.srtp_bridge.clone(),
    })
}

/// The `POST /sessions` body for an offer: the caller's leg, and the callee's stream
/// layout (rtcp-mux per stream as offered, so the relay opens the RTCP ports the offer
/// sent on must name).
pub fn create_request(offer: &Description, call_id: &str) -> CreateSession {
    CreateSession {
        call_id: Some(call_id.to_owned()),
        caller: offer.leg.clone(),
        callee: Some(LegRequest {
            streams: offer
                .leg
                .streams
                .iter()
                .map(|s| StreamRequest {
                    rtcp_mux: s.rtcp_mux,
                    ..StreamRequest::default()
                })
                .collect(),
            ..LegRequest::default()
        }),
        family: offer.facts.family,
        inactivity_timeout_secs: None,
        max_duration_secs: None,
    }
}

/// The `PATCH /sessions/{id}` body for an answer. When the offer had ICE and the answer
/// has none, neither side uses ICE (RFC 8445 §5.1.3): the caller leg is sent again
/// without ICE and with `learn_first_source`, since an ICE device's announced default
/// candidate is seldom where it can be reached from the relay.
pub fn answer_request(answer: &Description, offer: &Description) -> UpdateSession {
    let caller = (offer.facts.ice && !answer.facts.ice).then(|| LegRequest {
        ice: None,
        learn_first_source: true,
        ..offer.leg.clone()
    });
    UpdateSession {
        answer: Some(answer.leg.clone()),
        caller,
        callee: None,
    }
}
