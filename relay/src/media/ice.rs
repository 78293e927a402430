//! Authenticating ICE connectivity checks (RFC 8445 section 7.2.2, RFC 8489 section
//! 9.1: short-term credentials) so that a media port latches only a source that knows
//! the call's ICE password, which it can only have learnt from the SDP.
//!
//! A check travels from the sending agent to the receiving agent: its USERNAME is
//! `receiver-ufrag ":" sender-ufrag` and its MESSAGE-INTEGRITY is keyed with the
//! receiver's password. A check that arrives on side X's port was sent by X's device
//! towards the other side's device, so it is verified with the *other* side's
//! credentials. The relay never answers a check; it verifies and forwards it.
//!
//! Wire input never panics here: the datagram is decoded by [`crate::stun`], where
//! every length goes through `get`, and nothing below indexes it.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use crate::stun::message::Message;
use crate::stun::{attr, integrity, method, Class};

/// What a STUN datagram on a media port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stun {
    /// A Binding request whose USERNAME and MESSAGE-INTEGRITY match.
    AuthenticatedCheck,
    /// A Binding request that does not authenticate (no or wrong MESSAGE-INTEGRITY,
    /// wrong USERNAME, or no credentials to check it against).
    UnauthenticatedCheck,
    /// A Binding success or error response, or an indication (consent, keep-alive):
    /// forwarded only from a latched source.
    Other,
    /// Not a STUN message that decodes.
    Malformed,
}

/// The credentials a check arriving on one side must carry.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The receiving agent's username fragment (the other side's `ice-ufrag`).
    pub receiver_ufrag: &'a str,
    /// The receiving agent's password (the other side's `ice-pwd`).
    pub receiver_pwd: &'a str,
    /// The sending agent's username fragment (this side's), when known.
    pub sender_ufrag: Option<&'a str>,
}

/// Classify and, for a Binding request, authenticate `packet` against `expect`.
pub fn check(packet: &[u8], expect: Option<Expect<'_>>) -> Stun {
    let Ok(msg) = Message::decode(packet) else {
        return Stun::Malformed;
    };
    if msg.method() != method::BINDING {
        return Stun::Malformed;
    }
    if msg.class() != Class::Request {
        return Stun::Other;
    }
    let Some(expect) = expect else {
        return Stun::UnauthenticatedCheck;
    };
    if authenticates(&msg, expect) {
        Stun::AuthenticatedCheck
    } else {
        Stun::UnauthenticatedCheck
    }
}

fn authenticates(msg: &Message<'_>, expect: Expect<'_>) -> bool {
    // Only what MESSAGE-INTEGRITY covers counts: USERNAME must come before it.
    let mut username = None;
    let mut mi = None;
    for a in msg.attributes() {
        match a.typ {
            attr::USERNAME if username.is_none() => username = Some(a),
            attr::MESSAGE_INTEGRITY => {
                mi = Some(a);
                break;
            }
            _ => {}
        }
    }
    let (Some(username), Some(mi)) = (username, mi) else {
        return false;
    };
    if !username_matches(username.value, expect) {
        return false;
    }
    integrity::verify_sha1(msg, &mi, expect.receiver_pwd.as_bytes())
}

fn username_matches(value: &[u8], expect: Expect<'_>) -> bool {
    let Some(rest) = value.strip_prefix(expect.receiver_ufrag.as_bytes()) else {
        return false;
    };
    let Some(sender) = rest.strip_prefix(b":") else {
        return false;
    };
    match expect.sender_ufrag {
        Some(s) => sender == s.as_bytes(),
        None => !sender.is_empty(),
    }
}

/// Write a Binding request as an ICE agent sends it: USERNAME, PRIORITY,
/// MESSAGE-INTEGRITY keyed with `pwd`, FINGERPRINT. For tests and the benchmark.
pub fn write_check(
    out: &mut [u8],
    tid: &[u8; 12],
    username: &str,
    pwd: &str,
) -> Result<usize, crate::stun::writer::EncodeError> {
    let mut w = crate::stun::writer::MessageWriter::new(
        out,
        crate::stun::message_type(method::BINDING, Class::Request),
        tid,
    )?;
    w.attr(attr::USERNAME, username.as_bytes())?;
    w.u32_attr(attr::PRIORITY, 0x6e00_1eff)?;
    w.integrity_sha1(pwd.as_bytes())?;
    w.fingerprint()?;
    Ok(w.finish())
}

/// Write a Binding success response to the request with `tid`, keyed with `pwd`.
/// For tests and the benchmark.
pub fn write_response(
    out: &mut [u8],
    tid: &[u8; 12],
    mapped: std::net::SocketAddr,
    pwd: &str,
) -> Result<usize, crate::stun::writer::EncodeError> {
    let mut w = crate::stun::writer::MessageWriter::new(
        out,
        crate::stun::message_type(method::BINDING, Class::SuccessResponse),
        tid,
    )?;
    w.xor_address(attr::XOR_MAPPED_ADDRESS, &mapped)?;
    w.integrity_sha1(pwd.as_bytes())?;
    w.fingerprint()?;
    Ok(w.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [7; 12];

    fn expect<'a>() -> Expect<'a> {
        Expect {
            receiver_ufrag: "RECV",
            receiver_pwd: "receiverpassword123456",
            sender_ufrag: Some("SEND"),
        }
    }

    fn packet(username: &str, pwd: &str) -> Vec<u8> {
        let mut b = vec![0u8; 200];
        let n = write_check(&mut b, &TID, username, pwd).unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn a_check_with_the_right_credentials_authenticates() {
        let p = packet("RECV:SEND", "receiverpassword123456");
        assert_eq!(check(&p, Some(expect())), Stun::AuthenticatedCheck);
        // The sender's ufrag may be unknown yet (before the answer).
        let e = Expect {
            sender_ufrag: None,
            ..expect()
        };
        assert_eq!(check(&p, Some(e)), Stun::AuthenticatedCheck);
    }

    #[test]
    fn wrong_password_ufrag_or_no_integrity_do_not() {
        let wrong_pwd = packet("RECV:SEND", "someotherpassword12345");
        assert_eq!(
            check(&wrong_pwd, Some(expect())),
            Stun::UnauthenticatedCheck
        );
        let wrong_ufrag = packet("OTHER:SEND", "receiverpassword123456");
        assert_eq!(
            check(&wrong_ufrag, Some(expect())),
            Stun::UnauthenticatedCheck
        );
        let wrong_sender = packet("RECV:MALLORY", "receiverpassword123456");
        assert_eq!(
            check(&wrong_sender, Some(expect())),
            Stun::UnauthenticatedCheck
        );
        let no_colon = packet("RECVSEND", "receiverpassword123456");
        assert_eq!(check(&no_colon, Some(expect())), Stun::UnauthenticatedCheck);
        // No MESSAGE-INTEGRITY at all.
        let mut b = vec![0u8; 100];
        let mut w = crate::stun::writer::MessageWriter::new(
            &mut b,
            crate::stun::message_type(method::BINDING, Class::Request),
            &TID,
        )
        .unwrap();
        w.attr(attr::USERNAME, b"RECV:SEND").unwrap();
        let n = w.finish();
        assert_eq!(check(&b[..n], Some(expect())), Stun::UnauthenticatedCheck);
        // No credentials to check against.
        let good = packet("RECV:SEND", "receiverpassword123456");
        assert_eq!(check(&good, None), Stun::UnauthenticatedCheck);
    }

    #[test]
    fn a_username_after_the_integrity_does_not_count() {
        // MESSAGE-INTEGRITY over an empty message, then a USERNAME it does not cover.
        let mut b = vec![0u8; 100];
        let mut w = crate::stun::writer::MessageWriter::new(
            &mut b,
            crate::stun::message_type(method::BINDING, Class::Request),
            &TID,
        )
        .unwrap();
        w.integrity_sha1(b"receiverpassword123456").unwrap();
        w.attr(attr::USERNAME, b"RECV:SEND").unwrap();
        let n = w.finish();
        assert_eq!(check(&b[..n], Some(expect())), Stun::UnauthenticatedCheck);
    }

    #[test]
    fn responses_and_garbage() {
        let mut b = vec![0u8; 100];
        let n = write_response(&mut b, &TID, "192.0.2.1:9".parse().unwrap(), "pw").unwrap();
        assert_eq!(check(&b[..n], Some(expect())), Stun::Other);
        assert_eq!(check(&b[..n - 1], Some(expect())), Stun::Malformed);
        assert_eq!(check(&[0u8; 20], Some(expect())), Stun::Malformed);
    }

    #[test]
    fn random_and_truncated_input_never_panics() {
        let good = packet("RECV:SEND", "receiverpassword123456");
        for cut in 0..good.len() {
            let _ = check(&good[..cut], Some(expect()));
        }
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            let mut p = good.clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % p.len();
                p[i] ^= (x >> 8) as u8;
            }
            let _ = check(&p, Some(expect()));
        }
    }
}
