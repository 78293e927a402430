//! Building the messages a proxy sends (RFC 3261 16.6, 9.1, 17.1.1.3, 16.7 step 9):
//! the forwarded request, CANCEL and ACK for a branch, and a response with our Via
//! removed. Pure functions over parsed messages; nothing here does I/O.

use std::fmt::Write as _;

use crate::sip::grammar::{self, trim_ws};
use crate::sip::message::{Header, HeaderName, Message, StartLine};

/// The loop-detection part of our branch parameter (RFC 3261 16.6 step 8): a hash of
/// the fields that decide routing, so a request that comes back unchanged is a loop
/// while a spiral (changed Request-URI or Route) is not.
pub fn loop_hash(msg: &Message<'_>) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(msg.request_uri().unwrap_or(""));
    s.push('\n');
    let tag = |na: Option<grammar::NameAddr<'_>>| {
        na.and_then(|n| n.params.value("tag").map(str::to_owned))
            .unwrap_or_default()
    };
    s.push_str(&tag(msg.from()));
    s.push('\n');
    s.push_str(&tag(msg.to()));
    s.push('\n');
    s.push_str(msg.call_id().unwrap_or(""));
    s.push('\n');
    if let Some((n, _)) = msg.cseq() {
        let _ = write!(s, "{n}");
    }
    for name in [HeaderName::Route, HeaderName::ProxyRequire] {
        for h in msg.headers_named(name) {
            s.push('\n');
            s.push_str(&h.value);
        }
    }
    let h = crate::registrar::digest::Algorithm::Sha256.hash_hex(s.as_bytes());
    h.get(..16).unwrap_or(&h).to_owned()
}

fn write_start(out: &mut String, start: &StartLine<'_>) {
    match start {
        StartLine::Request { method, uri } => {
            let _ = write!(out, "{method} {uri} SIP/2.0\r\n");
        }
        StartLine::Response { code, reason } => {
            let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        }
    }
}

fn write_header(out: &mut String, h: &Header<'_>) {
    let _ = write!(out, "{}: {}\r\n", h.raw_name, h.value);
}

fn finish(mut out: String, body: &[u8]) -> Vec<u8> {
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    v
}

/// How to change a request when forwarding it (RFC 3261 16.6).
#[derive(Debug, Clone, Default)]
pub struct Forward<'a> {
    /// New Request-URI (a binding's contact), or `None` to keep it.
    pub request_uri: Option<&'a str>,
    /// Our Via value, put on top.
    pub via: &'a str,
    /// Record-Route values to put on top, in order.
    pub record_route: &'a [String],
    /// How many leading Route values (ours) to remove.
    pub pop_routes: usize,
    /// Max-Forwards value to send.
    pub max_forwards: u32,
    /// Headers to add at the end.
    pub extra: &'a [(&'a str, String)],
    /// Our realm: Proxy-Authorization credentials for it were meant for us and are
    /// consumed here (RFC 3261 22.3), never shown to the next hop (which could run an
    /// offline guess against the caller's digest). Credentials for other realms pass.
    pub consume_realm: Option<&'a str>,
}

/// Whether a Proxy-Authorization value is Digest credentials for `realm`.
fn credentials_for(value: &str, realm: &str) -> bool {
    grammar::AuthParams::parse(value).is_some_and(|a| a.get("realm") == Some(realm))
}

/// The request as it goes to the next hop.
pub fn forward_request(msg: &Message<'_>, f: &Forward<'_>) -> Vec<u8> {
    let mut out = String::with_capacity(msg.headers.len() * 64 + 128);
    let (method, uri) = match msg.start {
        StartLine::Request { method, uri } => (method, uri),
        StartLine::Response { .. } => ("", ""),
    };
    let _ = write!(out, "{method} {} SIP/2.0\r\n", f.request_uri.unwrap_or(uri));
    let _ = write!(out, "Via: {}\r\n", f.via);
    if !f.record_route.is_empty() {
        // One header line, so that UAs which copy "the" Record-Route header keep both.
        let _ = write!(out, "Record-Route: {}\r\n", f.record_route.join(", "));
    }
    let mut to_pop = f.pop_routes;
    let mut mf_written = false;
    for h in &msg.headers {
        match h.name {
            HeaderName::ContentLength => {}
            HeaderName::MaxForwards => {
                if !mf_written {
                    let _ = write!(out, "Max-Forwards: {}\r\n", f.max_forwards);
                    mf_written = true;
                }
            }
            HeaderName::ProxyAuthorization
                if f.consume_realm
                    .is_some_and(|realm| credentials_for(&h.value, realm)) => {}
            HeaderName::Route if to_pop > 0 => {
                let parts = grammar::split_top_level(&h.value, b',').unwrap_or_default();
                let keep: Vec<&str> = parts.iter().map(|p| trim_ws(p)).skip(to_pop).collect();
                to_pop = to_pop.saturating_sub(parts.len());
                if !keep.is_empty() {
                    let _ = write!(out, "{}: {}\r\n", h.raw_name, keep.join(", "));
                }
            }
            _ => write_header(&mut out, h),
        }
    }
    if !mf_written {
        let _ = write!(out, "Max-Forwards: {}\r\n", f.max_forwards);
    }
    for (n, v) in f.extra {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    finish(out, msg.body)
}

/// CANCEL for a request we sent (RFC 3261 9.1): same Request-URI, Call-ID, To, From,
/// CSeq number and Route, our single Via; plus a Reason header (RFC 3326).
pub fn cancel_for(sent: &Message<'_>, reason: Option<&str>) -> Vec<u8> {
    hop_request(sent, "CANCEL", None, reason)
}

/// ACK for a 300-699 response to an INVITE we sent (RFC 3261 17.1.1.3): the To of the
/// response (with its tag), the rest from the request.
pub fn ack_for(sent: &Message<'_>, response: &Message<'_>) -> Vec<u8> {
    hop_request(sent, "ACK", response.header(HeaderName::To), None)
}

fn hop_request(
    sent: &Message<'_>,
    method: &str,
    to: Option<&str>,
    reason: Option<&str>,
) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    let uri = sent.request_uri().unwrap_or("");
    let _ = write!(out, "{method} {uri} SIP/2.0\r\n");
    if let Ok(list) = sent.list(HeaderName::Via) {
        if let Some(top) = list.first() {
            let _ = write!(out, "Via: {top}\r\n");
        }
    }
    for h in &sent.headers {
        match h.name {
            HeaderName::From | HeaderName::CallId | HeaderName::Route | HeaderName::MaxForwards => {
                write_header(&mut out, h)
            }
            HeaderName::To => match to {
                Some(t) => {
                    let _ = write!(out, "To: {t}\r\n");
                }
                None => write_header(&mut out, h),
            },
            HeaderName::CSeq => {
                let n = sent.cseq().map(|(n, _)| n).unwrap_or(1);
                let _ = write!(out, "CSeq: {n} {method}\r\n");
            }
            _ => {}
        }
    }
    if let Some(r) = reason {
        let _ = write!(out, "Reason: {r}\r\n");
    }
    finish(out, b"")
}

/// A response from downstream as it goes upstream (RFC 3261 16.7 step 9): our top Via
/// removed, the status line replaced when `status` says so, `extra` headers added
/// (aggregated challenges).
pub fn response_upstream(
    resp: &Message<'_>,
    status: Option<(u16, &str)>,
    extra: &[(String, String)],
) -> Vec<u8> {
    response_upstream_with_body(resp, status, extra, resp.body)
}

/// [`response_upstream`] with another body (an SDP rewritten for the relay).
pub fn response_upstream_with_body(
    resp: &Message<'_>,
    status: Option<(u16, &str)>,
    extra: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = String::with_capacity(resp.headers.len() * 64 + 64);
    match status {
        Some((code, reason)) => {
            let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        }
        None => write_start(&mut out, &resp.start),
    }
    let mut first_via = true;
    for h in &resp.headers {
        match h.name {
            HeaderName::ContentLength => {}
            HeaderName::Via if first_via => {
                first_via = false;
                let parts = grammar::split_top_level(&h.value, b',').unwrap_or_default();
                let rest: Vec<&str> = parts.iter().skip(1).map(|p| trim_ws(p)).collect();
                if !rest.is_empty() {
                    let _ = write!(out, "{}: {}\r\n", h.raw_name, rest.join(", "));
                }
            }
            _ => write_header(&mut out, h),
        }
    }
    for (n, v) in extra {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    finish(out, body)
}

/// `msg` with its first `n` Route values removed (ours, RFC 3261 16.4), the rest as
/// it was.
pub fn drop_leading_routes(msg: &Message<'_>, n: usize) -> Vec<u8> {
    let mut out = String::with_capacity(msg.headers.len() * 64 + 64);
    write_start(&mut out, &msg.start);
    let mut to_pop = n;
    for h in &msg.headers {
        match h.name {
            HeaderName::ContentLength => {}
            HeaderName::Route if to_pop > 0 => {
                let parts = grammar::split_top_level(&h.value, b',').unwrap_or_default();
                let keep: Vec<&str> = parts.iter().map(|p| trim_ws(p)).skip(to_pop).collect();
                to_pop = to_pop.saturating_sub(parts.len());
                if !keep.is_empty() {
                    let _ = write!(out, "{}: {}\r\n", h.raw_name, keep.join(", "));
                }
            }
            _ => write_header(&mut out, h),
        }
    }
    finish(out, msg.body)
}

/// `msg` (request or response) as it is, with `body` in place of its body: every
/// header kept in order, Content-Length set to the new body's length.
pub fn replace_body(msg: &Message<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(msg.headers.len() * 64 + 64);
    write_start(&mut out, &msg.start);
    for h in &msg.headers {
        if h.name != HeaderName::ContentLength {
            write_header(&mut out, h);
        }
    }
    finish(out, body)
}

/// Every WWW-Authenticate and Proxy-Authenticate value of a response, for aggregation.
pub fn challenges(resp: &Message<'_>) -> Vec<(String, String)> {
    resp.headers
        .iter()
        .filter(|h| {
            h.name == HeaderName::WwwAuthenticate
                || h.raw_name.eq_ignore_ascii_case("Proxy-Authenticate")
        })
        .map(|h| (h.raw_name.to_owned(), h.value.to_string()))
        .collect()
}
