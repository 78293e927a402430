//! The control API of `tandem-relay`: what signaling sends to place, update, query and
//! end a media session for a call, and what the relay answers. Types only, no I/O: the
//! relay serves them over HTTP (`relay/src/control/`), signaling sends them.
//!
//! # The model
//!
//! A *session* is one call. It has two *legs*: the caller's side and the callee's side.
//! Each leg has one or more *streams* (one per SDP `m=` line that carries media and is
//! not bundled), and each stream has, on each leg, a relay port for RTP and one for
//! RTCP (or only the RTP port when the leg uses `a=rtcp-mux`). A device sends to the
//! ports of its own leg ([`StreamInfo::relay_rtp`]); what arrives there leaves from the
//! other leg's matching port to the other device. So signaling writes the caller leg's
//! addresses into the SDP it sends to the caller (the answer) and the callee leg's into
//! the SDP it sends to the callee (the offer).
//!
//! Where the relay sends is *latched*, never taken from an unauthenticated packet:
//! - a leg with ICE ([`LegRequest::ice`]) latches a source only after that source sent
//!   a STUN connectivity check with a valid MESSAGE-INTEGRITY for the session's ICE
//!   credentials; checks are forwarded end to end, the relay never answers them;
//! - a leg without ICE accepts only the address its SDP announced
//!   ([`StreamRequest::rtp`]), or with [`LegRequest::learn_first_source`] latches the
//!   first source once and for all (symmetric-RTP phones behind NAT).
//!
//! SRTP is forwarded untouched unless a leg asks the relay to terminate SDES SRTP
//! ([`LegRequest::srtp`]): then the relay decrypts what that leg sends and encrypts what
//! it sends to that leg with a key of its own ([`LegInfo::srtp`]), which bridges an SRTP
//! app leg to a plain RTP gateway leg.
//!
//! # Routes
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /sessions` | [`CreateSession`] | 201 [`SessionInfo`] |
//! | `PATCH /sessions/{id}` | [`UpdateSession`] | 200 [`SessionInfo`] |
//! | `GET /sessions/{id}` | | 200 [`SessionInfo`] |
//! | `DELETE /sessions/{id}` | | 200 [`SessionInfo`] (final counters) |
//! | `GET /sessions/ended?after=<seq>` | | 200 [`EndedPage`] |
//! | `GET /load` | | 200 [`Load`] |
//! | `GET /health` | | 200 [`Health`] |
//!
//! Every route needs `Authorization: Bearer <secret>`. Errors are [`ErrorBody`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most streams (unbundled `m=` lines) in one session.
pub const MAX_STREAMS: usize = 8;
/// Longest ICE username fragment and password accepted (RFC 8839 allows 256 bytes).
pub const MAX_ICE_FIELD: usize = 256;
/// Longest `call_id` accepted.
pub const MAX_CALL_ID: usize = 256;

/// Ask for a media session: the caller leg's data from the offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The call this session serves (the SIP Call-ID), for queries and logs; not a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The caller's leg, from the offer.
    pub caller: LegRequest,
    /// The callee's leg as far as known before the answer (usually only whether the
    /// offer proposed rtcp-mux, so the right ports are opened). When absent, the callee
    /// leg gets the caller's stream layout and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callee: Option<LegRequest>,
    /// Address family of the relay ports (default IPv4).
    #[serde(default)]
    pub family: AddressFamily,
    /// End the session after this long without media from either side (default: the
    /// relay's `media-inactivity-timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity_timeout_secs: Option<u32>,
    /// End the session this long after it was created, whatever happens (default: the
    /// relay's `media-max-duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u32>,
}

/// Change a session: the callee's answer (once), or later changes of either leg from
/// a re-INVITE or UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSession {
    /// The callee's answer. Accepted once; a second one is refused (409). When the
    /// answer has no ICE while the offer had it, neither side uses ICE (RFC 8445
    /// section 5.1.3 / RFC 8839): send `caller` along with the answer, without `ice`
    /// and with its announced addresses or `learn_first_source`, or the caller leg
    /// keeps waiting for connectivity checks that will never come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<LegRequest>,
    /// New data for the caller leg (re-INVITE or UPDATE from either side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<LegRequest>,
    /// New data for the callee leg, after the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callee: Option<LegRequest>,
}

/// What the SDP of one side says about its media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegRequest {
    /// ICE credentials of this side (`a=ice-ufrag`, `a=ice-pwd`). With them, this leg
    /// latches only sources that pass an authenticated connectivity check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice: Option<IceCredentials>,
    /// For a leg without ICE: latch the first source that sends and keep it (for
    /// symmetric-RTP devices behind NAT, whose announced address is not reachable).
    #[serde(default, skip_serializing_if = "is_false")]
    pub learn_first_source: bool,
    /// Terminate SDES SRTP on this leg: the `a=crypto` this side announced (the key it
    /// sends with). The relay decrypts what this leg sends and encrypts what it sends
    /// to this leg with a key of its own, given back in [`LegInfo::srtp`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<SrtpCrypto>,
    /// One entry per media stream, in `m=` line order (default: one stream).
    #[serde(default = "one_stream")]
    pub streams: Vec<StreamRequest>,
}

impl Default for LegRequest {
    fn default() -> Self {
        LegRequest {
            ice: None,
            learn_first_source: false,
            srtp: None,
            streams: one_stream(),
        }
    }
}

fn one_stream() -> Vec<StreamRequest> {
    vec![StreamRequest::default()]
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One media stream of a leg.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    /// RTP and RTCP share one port (`a=rtcp-mux`).
    #[serde(default)]
    pub rtcp_mux: bool,
    /// Where this side receives RTP, as its SDP announced it (`c=` and the `m=` port).
    /// A leg without ICE and without `learn_first_source` accepts media only from here.
    #[schema(value_type = Option<String>, example = "198.51.100.7:4000")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp: Option<SocketAddr>,
    /// Where this side receives RTCP (`a=rtcp`, else the RTP port plus one).
    #[schema(value_type = Option<String>, example = "198.51.100.7:4001")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtcp: Option<SocketAddr>,
}

/// ICE credentials of one side (RFC 8839 `a=ice-ufrag`, `a=ice-pwd`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

/// An SDES key (RFC 4568 `a=crypto`): the suite and the `inline:` key-salt, base64,
/// without lifetime or MKI.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SrtpCrypto {
    pub suite: CryptoSuite,
    /// base64 of the master key followed by the master salt.
    pub key: String,
}

impl std::fmt::Debug for SrtpCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpCrypto")
            .field("suite", &self.suite)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// SRTP crypto suites the relay can terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum CryptoSuite {
    #[serde(rename = "AES_CM_128_HMAC_SHA1_80")]
    AesCm128HmacSha1_80,
    #[serde(rename = "AES_CM_128_HMAC_SHA1_32")]
    AesCm128HmacSha1_32,
    #[serde(rename = "AEAD_AES_128_GCM")]
    AeadAes128Gcm,
}

impl CryptoSuite {
    /// The suite's name as `a=crypto` writes it.
    pub fn sdp_name(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            CryptoSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite named `name` in an `a=crypto` line.
    pub fn from_sdp_name(name: &str) -> Option<CryptoSuite> {
        [
            CryptoSuite::AesCm128HmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32,
            CryptoSuite::AeadAes128Gcm,
        ]
        .into_iter()
        .find(|s| s.sdp_name() == name)
    }

    /// Bytes of master key and master salt (RFC 4568 section 6.2, RFC 7714 section 12).
    pub fn key_salt_len(self) -> (usize, usize) {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 | CryptoSuite::AesCm128HmacSha1_32 => (16, 14),
            CryptoSuite::AeadAes128Gcm => (16, 12),
        }
    }
}

/// Address family of a session's relay ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    #[default]
    Ipv4,
    Ipv6,
}

/// A session as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// The relay's name for the session (opaque; use it in the URL).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub state: SessionState,
    /// Why the session ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Seconds since the session was created.
    pub age_secs: u64,
    pub caller: LegInfo,
    pub callee: LegInfo,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Created from the offer; the callee's answer has not come.
    Offered,
    /// The answer came; media flows as soon as both sides latch.
    Answered,
    /// Ended (deleted, timed out, or the relay is shutting down); its ports are free.
    Ended,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `DELETE /sessions/{id}`.
    Deleted,
    /// No media from either side for the inactivity timeout.
    Inactivity,
    /// The hard maximum duration passed.
    MaxDuration,
    /// The relay shut down.
    Shutdown,
}

/// One leg of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LegInfo {
    /// Whether this leg latches by ICE checks.
    pub ice: bool,
    pub learn_first_source: bool,
    /// When the relay terminates SRTP on this leg: the key the relay sends to this
    /// side with, for the `a=crypto` line of the SDP sent to this side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<SrtpCrypto>,
    pub streams: Vec<StreamInfo>,
    pub counters: LegCounters,
}

/// One stream of a leg: the relay's ports for this side and what it latched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamInfo {
    /// The relay address this side sends RTP to (for the SDP sent to this side).
    #[schema(value_type = String, example = "203.0.113.10:50000")]
    pub relay_rtp: SocketAddr,
    /// The relay address this side sends RTCP to; absent with rtcp-mux.
    #[schema(value_type = Option<String>, example = "203.0.113.10:50001")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// Where the relay sends this side's RTP, once latched.
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latched_rtp: Option<SocketAddr>,
    /// Where the relay sends this side's RTCP, once latched.
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latched_rtcp: Option<SocketAddr>,
}

/// Counters of one leg.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LegCounters {
    /// Datagrams from this side forwarded to the other.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Datagrams sent to this side.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Connectivity checks from this side that authenticated and were forwarded or
    /// latched.
    pub ice_checks: u64,
    /// Milliseconds since the last datagram accepted from this side (absent before
    /// the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    pub dropped: DropCounters,
}

/// Datagrams that arrived on this leg's ports and were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DropCounters {
    /// A STUN check without valid MESSAGE-INTEGRITY or with the wrong username.
    pub unauthenticated: u64,
    /// Media from a source this leg has not latched (RTP Bleed attempts).
    pub bleed: u64,
    /// Nowhere to send: the other side has not latched yet.
    pub unlatched: u64,
    /// SRTP or SRTCP that failed authentication or replay protection.
    pub srtp_auth: u64,
    /// Not something a media port carries (or too short to be).
    pub malformed: u64,
}

impl DropCounters {
    pub fn total(&self) -> u64 {
        self.unauthenticated + self.bleed + self.unlatched + self.srtp_auth + self.malformed
    }
}

/// What placement needs to know about a relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Load {
    /// Live media sessions.
    pub sessions: u64,
    /// Live TURN allocations.
    pub allocations: u64,
    /// Datagrams received per second, averaged over the last few seconds.
    pub packets_per_sec: u64,
    /// Worker threads.
    pub workers: u32,
    /// True while the relay drains and takes no new sessions.
    pub draining: bool,
}

/// `GET /sessions/ended?after=<seq>`: sessions that ended after the cursor `after`,
/// oldest first, so signaling learns of inactivity and maximum-duration ends with one
/// request per relay however many sessions are live.
///
/// Each ended session gets the next number of a sequence that starts at 1 when the
/// relay starts; `epoch` names that start. A client keeps (`epoch`, `next`) and asks
/// with `after=next`; when the epoch it gets differs from the one it kept, the relay
/// restarted and every session the client placed there is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndedPage {
    /// Names this run of the relay; changes when it restarts.
    pub epoch: String,
    /// Ended sessions with a sequence number above `after`, oldest first, at most
    /// [`MAX_ENDED_PAGE`].
    pub sessions: Vec<EndedSession>,
    /// The cursor for the next request: the last sequence number returned, or
    /// `after` when none was (never less than `after`).
    pub next: u64,
    /// True when ended sessions after the cursor were already forgotten (the relay
    /// keeps the last 4,096 for 10 minutes): the client should read the sessions it
    /// still counts as live one by one.
    pub missed: bool,
    /// True when more ended sessions wait after `next`: ask again at once.
    pub more: bool,
}

/// Most entries in one [`EndedPage`].
pub const MAX_ENDED_PAGE: usize = 1000;

/// One ended session in an [`EndedPage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndedSession {
    /// Its place in the relay's sequence of ended sessions.
    pub seq: u64,
    /// The session's id.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub reason: EndReason,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    pub version: String,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: `unauthorized`, `not_found`, `bad_request`,
    /// `already_answered`, `not_answered`, `ports_exhausted`, `draining`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// Why a request is not acceptable, found without asking the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalid {
    NoStreams,
    TooManyStreams,
    IceField,
    CallId,
    SrtpKey,
    BothAnswerAndCallee,
    Empty,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::NoStreams => "a leg needs at least one stream",
            Invalid::TooManyStreams => "too many streams (at most 8)",
            Invalid::IceField => {
                "ICE ufrag and pwd must be 1 to 256 printable characters without ':'"
            }
            Invalid::CallId => "call_id must be at most 256 printable characters",
            Invalid::SrtpKey => "the SRTP key is not base64 of the suite's key and salt length",
            Invalid::BothAnswerAndCallee => "send either answer or callee, not both",
            Invalid::Empty => "nothing to change",
        })
    }
}

impl std::error::Error for Invalid {}

impl CreateSession {
    /// Checks what can be checked without the relay's state.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(c) = &self.call_id {
            if c.len() > MAX_CALL_ID || c.chars().any(|ch| ch.is_control()) {
                return Err(Invalid::CallId);
            }
        }
        self.caller.validate()?;
        if let Some(c) = &self.callee {
            c.validate()?;
        }
        Ok(())
    }
}

impl UpdateSession {
    /// Checks what can be checked without the relay's state.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.answer.is_some() && self.callee.is_some() {
            return Err(Invalid::BothAnswerAndCallee);
        }
        if self.answer.is_none() && self.caller.is_none() && self.callee.is_none() {
            return Err(Invalid::Empty);
        }
        for leg in [&self.answer, &self.caller, &self.callee]
            .into_iter()
            .flatten()
        {
            leg.validate()?;
        }
        Ok(())
    }
}

impl LegRequest {
    /// Checks what can be checked without the relay's state.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.streams.is_empty() {
            return Err(Invalid::NoStreams);
        }
        if self.streams.len() > MAX_STREAMS {
            return Err(Invalid::TooManyStreams);
        }
        if let Some(ice) = &self.ice {
            for f in [&ice.ufrag, &ice.pwd] {
                if f.is_empty()
                    || f.len() > MAX_ICE_FIELD
                    || f.bytes().any(|b| !(0x21..0x7f).contains(&b) || b == b':')
                {
                    return Err(Invalid::IceField);
                }
            }
        }
        if let Some(s) = &self.srtp {
            let (k, salt) = s.suite.key_salt_len();
            // base64 of k+salt bytes, padded: 4 * ceil(n / 3) characters.
            let n = k + salt;
            let want = n.div_ceil(3) * 4;
            if s.key.len() != want
                || !s
                    .key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
            {
                return Err(Invalid::SrtpKey);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_create_defaults_to_one_stream_ipv4() {
        let c: CreateSession = serde_json::from_str(r#"{"caller":{}}"#).unwrap();
        assert_eq!(c.caller.streams.len(), 1);
        assert_eq!(c.family, AddressFamily::Ipv4);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<CreateSession>(r#"{"caller":{},"x":1}"#).is_err());
        assert!(
            serde_json::from_str::<LegRequest>(r#"{"ice":{"ufrag":"a","pwd":"b","c":1}}"#).is_err()
        );
    }

    #[test]
    fn suite_names_round_trip() {
        for s in [
            CryptoSuite::AesCm128HmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32,
            CryptoSuite::AeadAes128Gcm,
        ] {
            assert_eq!(CryptoSuite::from_sdp_name(s.sdp_name()), Some(s));
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.sdp_name()));
        }
    }

    #[test]
    fn validation() {
        let mut leg = LegRequest {
            ice: Some(IceCredentials {
                ufrag: "a:b".into(),
                pwd: "x".repeat(22),
            }),
            ..LegRequest::default()
        };
        assert_eq!(leg.validate(), Err(Invalid::IceField));
        leg.ice = None;
        leg.streams = vec![];
        assert_eq!(leg.validate(), Err(Invalid::NoStreams));
        leg.streams = vec![StreamRequest::default(); 9];
        assert_eq!(leg.validate(), Err(Invalid::TooManyStreams));
        leg.streams = vec![StreamRequest::default()];
        // 30 bytes of key and salt: 40 base64 characters.
        leg.srtp = Some(SrtpCrypto {
            suite: CryptoSuite::AesCm128HmacSha1_80,
            key: "A".repeat(40),
        });
        assert_eq!(leg.validate(), Ok(()));
        leg.srtp = Some(SrtpCrypto {
            suite: CryptoSuite::AesCm128HmacSha1_80,
            key: "A".repeat(39),
        });
        assert_eq!(leg.validate(), Err(Invalid::SrtpKey));
        let u = UpdateSession::default();
        assert_eq!(u.validate(), Err(Invalid::Empty));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let ice = IceCredentials {
            ufrag: "u".into(),
            pwd: "secretpassword".into(),
        };
        assert!(!format!("{ice:?}").contains("secretpassword"));
    }
}
