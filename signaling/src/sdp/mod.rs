//! SDP for relay injection: read an offer or answer, tell the relay what it needs
//! (`tandem-control` requests), and rewrite the SDP so media goes through the relay.
//! Sans-IO: bytes in, requests and bytes out; the proxy does the HTTP and the SIP.
//!
//! # How the proxy uses it
//!
//! ```text
//! INVITE with an offer     parse -> describe_offer -> (already_relayed? pass untouched)
//!                          create_request -> POST /sessions -> SessionInfo
//!                          rewrite(offer, .., &info.callee, Plan::new) -> to the callee
//! answer (18x/2xx)         parse -> describe_answer(.., &offer_desc) -> answer_request
//!                          PATCH /sessions/{id} -> SessionInfo
//!                          rewrite(answer, .., &info.caller, Plan::new) -> to the caller
//! ```
//!
//! The offer goes to the callee with the callee leg's relay ports (the callee sends
//! there); the answer goes to the caller with the caller leg's. Errors are typed
//! ([`SdpError`]); the proxy answers 488 to those of the offer.
//!
//! # Why our own parser
//!
//! A relay must change a handful of lines and leave the rest exactly as the device
//! wrote it: codecs, `a=ssrc`, `a=extmap`, vendor attributes, line order, `a=ice-options`
//! and where `a=end-of-candidates` sits. Two Rust SDP crates were reviewed from their
//! source:
//!
//! - `sdp` (webrtc-rs) parses into owned structs and `marshal` prints them back in the
//!   field order of RFC 4566 §5 with CRLF: a bare-LF SDP, a section's `c=` after its
//!   `a=` lines, or spacing it normalises do not survive a round trip. Its parser is a
//!   state machine over that order and refuses lines out of place.
//! - `webrtc-sdp` (Mozilla) parses every attribute into a typed enum and serialises from
//!   those values; attributes it does not know are reported as unsupported and not
//!   kept, and what it keeps is re-formatted.
//!
//! Neither keeps untouched lines byte-identical, and neither borrows its input or has
//! size limits, so this module keeps each line as a range of the input with its own
//! line ending ([`parse::Line`]) and reads only `v=`, `c=`, `m=` and the attributes the
//! relay needs: `ice-ufrag`, `ice-pwd`, `candidate`, `end-of-candidates`, `rtcp`,
//! `rtcp-mux`, `group:BUNDLE`, `mid`, `bundle-only`, `crypto`, `fingerprint` and the
//! direction attributes. A rewrite replaces, drops or inserts whole lines; everything
//! else is copied.
//!
//! # Choices
//!
//! - **Streams.** One relay stream per transport, in `m=` order: a section with port 0
//!   carries none, a BUNDLE group one. An answer's streams follow its offer's order.
//! - **ICE.** With ICE the relay's candidates are added and the device's stay, so ICE
//!   still picks a direct path when the relay is not needed and the relay's latching
//!   checks the pair it picks otherwise; `c=`/`m=` stay unless the plan moves the
//!   default candidate (force-relay, or toward a plain gateway). Candidate priority is
//!   `(0 << 24) | (65535 << 8) | (256 - component)` for both families (one relay
//!   family per session, nothing to rank); the foundation is a hash of the relay
//!   address; `raddr 0.0.0.0 rport 0` (`::` for IPv6).
//! - **Hold.** `c=0.0.0.0` (or `::`) without ICE is kept: the device asked not to be
//!   sent to, and its stream gets no announced address; the port is still rewritten.
//!   `a=inactive`/`a=sendonly` streams are rewritten like the others, so their relay
//!   ports stay the same when the call resumes.
//! - **`o=`** is never changed: the rewrite is a function of the SDP, so a re-offer
//!   changes exactly when the device's version does (RFC 3264 §8).
//! - **SDES toward a plain gateway.** The caller leg terminates SRTP with the first
//!   `a=crypto` the relay supports; the offer sent on is `RTP/AVP(F)` without
//!   `a=crypto`; the answer sent back gets the offer's protocol and one `a=crypto`
//!   with the offer's tag and the relay's key. DTLS-SRTP cannot be bridged this way.

pub mod describe;
pub mod parse;
pub mod rewrite;

#[cfg(test)]
mod tests;

pub use describe::{
    answer_request, create_request, describe_answer, describe_offer, Description, Facts, Policy,
    Role, SrtpBridge,
};
pub use parse::{Sdp, MAX_LINES, MAX_MEDIA, MAX_SDP_LEN};
pub use rewrite::{relay_foundation, relay_priority, rewrite, Plan, SrtpPlan};

/// Why an SDP cannot be read, described or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("SDP has more than {max} lines")]
    TooManyLines { max: usize },
    #[error("SDP has more than {max} m= lines")]
    TooManyMedia { max: usize },
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// Line numbers count from 1.
    #[error("line {line}: not <type>=<value>")]
    Malformed { line: usize },
    #[error("line {line}: unreadable {what}")]
    BadField { line: usize, what: &'static str },
    #[error("no media stream to relay")]
    NoStreams,
    #[error("more than {max} relayed streams")]
    TooManyStreams { max: usize },
    #[error("DTLS-SRTP cannot be bridged to a plain RTP gateway")]
    DtlsToPlain,
    #[error("no a=crypto line the relay can terminate")]
    NoSupportedCrypto,
    #[error("the media sections offer different SRTP keys; the relay takes one per leg")]
    CryptoKeysDiffer,
    #[error("the answer's m= lines do not match the offer's")]
    AnswerMismatch,
    #[error("the relay's session has no stream {0}")]
    RelayStreamMissing(usize),
    #[error("the relay returned no SRTP key for the SDES answer")]
    RelayKeyMissing,
    #[error("not acceptable to the relay: {0}")]
    Relay(tandem_control::Invalid),
}

impl SdpError {
    /// `BadField` for the line at index `i`.
    pub(crate) fn bad(i: usize, what: &'static str) -> SdpError {
        SdpError::BadField {
            line: i.saturating_add(1),
            what,
        }
    }
}
