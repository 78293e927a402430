//! SIP message model and parser (RFC 3261 section 7, 18.3 and 25).
//!
//! Hand-written rather than taken from a crate: `rsip` 0.4 cannot carry a multi-device
//! registrar (it rejects `+sip.instance="<urn:...>"` Contacts, `algorithm=SHA-256`,
//! unknown methods and compact header forms, and parses `nc` as decimal), and
//! `ezk-sip-types` 0.6 accepts any Unicode alphanumeric as a token character, needs the
//! header section as `&str` up front without size limits, reports errors through
//! `anyhow`, and leaves Content-Length stream framing to its transport crate. What we
//! need is small: a borrowing, allocation-light parser with RFC 3261 token rules,
//! compact forms, folding, strict scalar checks for RFC 4475, stream framing and hard
//! limits. It never panics on wire input (see the lint below and the tests that feed it
//! random, truncated and bit-flipped input).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::fmt::Write as _;

use super::grammar::{self, trim_ws};

/// Most header fields in one message.
pub const MAX_HEADERS: usize = 128;

/// Why a message could not be parsed or fails RFC 3261 request validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("no empty line ends the header section")]
    NoHeaderEnd,
    #[error("header section is not UTF-8")]
    NotUtf8,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed header field line")]
    HeaderLine,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("bad Content-Length")]
    ContentLength,
    #[error("body shorter than Content-Length")]
    Truncated,
    #[error("missing {0} header field")]
    Missing(&'static str),
    #[error("malformed {0} header field")]
    Malformed(&'static str),
    #[error("{0} header field appears more than once")]
    Repeated(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMethod,
    #[error("top Via has no RFC 3261 branch")]
    Branch,
}

impl ParseError {
    /// Status code and reason to answer a request that failed with this error
    /// (RFC 3261 8.2.2 / 21.4.1 / 21.5.6).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ParseError::Version => (505, "Version Not Supported"),
            ParseError::Missing(_) => (400, "Missing Header Field"),
            ParseError::Branch => (400, "Missing RFC 3261 Branch"),
            ParseError::CSeqMethod => (400, "CSeq Method Mismatch"),
            _ => (400, "Bad Request"),
        }
    }
}

/// Header field names we interpret; others are kept as `Other` with their text.
/// Compact forms (RFC 3261 7.3.3) map to the same variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderName<'a> {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    Expires,
    MinExpires,
    MaxForwards,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    UserAgent,
    Supported,
    Require,
    ProxyRequire,
    Route,
    RecordRoute,
    Allow,
    Subject,
    Event,
    Path,
    Other(&'a str),
}

impl<'a> HeaderName<'a> {
    pub fn parse(name: &'a str) -> HeaderName<'a> {
        const TABLE: &[(&str, HeaderName<'static>)] = &[
            ("via", HeaderName::Via),
            ("v", HeaderName::Via),
            ("from", HeaderName::From),
            ("f", HeaderName::From),
            ("to", HeaderName::To),
            ("t", HeaderName::To),
            ("call-id", HeaderName::CallId),
            ("i", HeaderName::CallId),
            ("cseq", HeaderName::CSeq),
            ("contact", HeaderName::Contact),
            ("m", HeaderName::Contact),
            ("content-length", HeaderName::ContentLength),
            ("l", HeaderName::ContentLength),
            ("content-type", HeaderName::ContentType),
            ("c", HeaderName::ContentType),
            ("expires", HeaderName::Expires),
            ("min-expires", HeaderName::MinExpires),
            ("max-forwards", HeaderName::MaxForwards),
            ("authorization", HeaderName::Authorization),
            ("proxy-authorization", HeaderName::ProxyAuthorization),
            ("www-authenticate", HeaderName::WwwAuthenticate),
            ("user-agent", HeaderName::UserAgent),
            ("supported", HeaderName::Supported),
            ("k", HeaderName::Supported),
            ("require", HeaderName::Require),
            ("proxy-require", HeaderName::ProxyRequire),
            ("route", HeaderName::Route),
            ("record-route", HeaderName::RecordRoute),
            ("allow", HeaderName::Allow),
            ("subject", HeaderName::Subject),
            ("s", HeaderName::Subject),
            ("event", HeaderName::Event),
            ("o", HeaderName::Event),
            ("path", HeaderName::Path),
        ];
        TABLE
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, h)| *h)
            .unwrap_or(HeaderName::Other(name))
    }

    /// Same header field, compared case-insensitively for `Other`.
    pub fn same(&self, other: &HeaderName<'_>) -> bool {
        match (self, other) {
            (HeaderName::Other(a), HeaderName::Other(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

/// One header field line, unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: HeaderName<'a>,
    /// Name as sent.
    pub raw_name: &'a str,
    /// Value with folding replaced by a single space and outer LWS trimmed.
    pub value: Cow<'a, str>,
}

/// Request line or status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

/// A parsed SIP message borrowing from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    pub headers: Vec<Header<'a>>,
    pub body: &'a [u8],
}

/// Outcome of looking for one message at the front of a stream buffer (RFC 3261 18.3,
/// RFC 5626 3.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Need more bytes.
    Incomplete,
    /// A double-CRLF keep-alive ping of this many bytes: answer with one CRLF.
    Ping(usize),
    /// A single CRLF (a pong, or stray line end) of this many bytes: skip it.
    Skip(usize),
    /// A whole message of this many bytes is at the front.
    Message(usize),
    /// The stream cannot be framed (no or bad Content-Length, over the size limit):
    /// close the connection.
    Invalid,
}

/// Finds the end of the header section: index just past the empty line.
fn header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0usize;
    while let Some(rel) = buf
        .get(i..)
        .and_then(|b| b.iter().position(|&c| c == b'\n'))
    {
        let nl = i + rel;
        // The line after this newline is empty if it is "\r\n" or "\n".
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            (Some(b'\n'), _) => return Some(nl + 2),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// Frames one message at the front of a stream buffer.
pub fn frame_stream(buf: &[u8], max_size: usize) -> Framing {
    if buf.starts_with(b"\r\n\r\n") {
        return Framing::Ping(4);
    }
    if buf.starts_with(b"\r\n") {
        return if buf.len() < 4 && b"\r\n\r\n".starts_with(buf) {
            Framing::Incomplete
        } else {
            Framing::Skip(2)
        };
    }
    if buf == b"\r" {
        return Framing::Incomplete;
    }
    let Some(head_len) = header_end(buf) else {
        return if buf.len() >= max_size {
            Framing::Invalid
        } else {
            Framing::Incomplete
        };
    };
    let Some(head) = buf.get(..head_len) else {
        return Framing::Invalid;
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return Framing::Invalid;
    };
    let Ok(lines) = unfold(head) else {
        return Framing::Invalid;
    };
    let mut content_length = None;
    for (name, value) in lines.iter().skip(1) {
        if HeaderName::parse(name) == HeaderName::ContentLength {
            if content_length.is_some() {
                return Framing::Invalid;
            }
            match grammar::decimal(value, max_size as u64) {
                Some(n) => content_length = Some(n as usize),
                None => return Framing::Invalid,
            }
        }
    }
    // Content-Length is mandatory on stream transports (RFC 3261 18.3).
    let Some(cl) = content_length else {
        return Framing::Invalid;
    };
    let Some(total) = head_len.checked_add(cl) else {
        return Framing::Invalid;
    };
    if total > max_size {
        Framing::Invalid
    } else if buf.len() < total {
        Framing::Incomplete
    } else {
        Framing::Message(total)
    }
}

/// Splits the header section into (name, unfolded value) pairs; the first entry is the
/// start line with an empty value.
fn unfold(head: &str) -> Result<Vec<(&str, Cow<'_, str>)>, ParseError> {
    let mut out: Vec<(&str, Cow<'_, str>)> = Vec::new();
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().ok_or(ParseError::StartLine)?;
    out.push((start, Cow::Borrowed("")));
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation: folded into the previous header's value (RFC 3261 7.3.1).
            if out.len() < 2 {
                return Err(ParseError::HeaderLine);
            }
            let Some((_, value)) = out.last_mut() else {
                return Err(ParseError::HeaderLine);
            };
            let cont = trim_ws(line);
            if !cont.is_empty() {
                let v = value.to_mut();
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(cont);
            }
            continue;
        }
        // NUL may appear inside quoted strings as a quoted-pair (RFC 4475 3.1.1.2); a
        // bare CR inside a line never may.
        if line.bytes().any(|b| b == b'\r') {
            return Err(ParseError::HeaderLine);
        }
        let colon = line.find(':').ok_or(ParseError::HeaderLine)?;
        let name = trim_ws(line.get(..colon).ok_or(ParseError::HeaderLine)?);
        if !grammar::is_token(name) {
            return Err(ParseError::HeaderLine);
        }
        let value = trim_ws(line.get(colon + 1..).ok_or(ParseError::HeaderLine)?);
        if out.len() > MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        out.push((name, Cow::Borrowed(value)));
    }
    Ok(out)
}

impl<'a> Message<'a> {
    /// Parses one message. For datagrams the body runs to the end of `buf` unless
    /// Content-Length says less (RFC 3261 18.3: extra octets are ignored); a
    /// Content-Length larger than what is there is an error.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        Self::parse_with(buf, false)
    }

    /// The header section of a request that [`Message::parse`] refused or that is
    /// too large, read leniently (any SIP version, Content-Length not checked, no
    /// body), only to answer it with an error response (400, 505, 513).
    pub fn parse_head_for_error(buf: &'a [u8]) -> Option<Message<'a>> {
        Self::parse_with(buf, true).ok().filter(|m| m.is_request())
    }

    fn parse_with(buf: &'a [u8], lenient: bool) -> Result<Message<'a>, ParseError> {
        let head_len = header_end(buf).ok_or(ParseError::NoHeaderEnd)?;
        let head = buf.get(..head_len).ok_or(ParseError::NoHeaderEnd)?;
        let head = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
        let rest = buf.get(head_len..).unwrap_or(&[]);
        let lines = unfold(head)?;
        let mut iter = lines.into_iter();
        let (start_text, _) = iter.next().ok_or(ParseError::StartLine)?;
        let start = match parse_start_line(start_text) {
            Err(ParseError::Version) if lenient => {
                let mut parts = start_text.split(' ');
                match (parts.next(), parts.next()) {
                    (Some(method), Some(uri)) if grammar::is_token(method) => {
                        StartLine::Request { method, uri }
                    }
                    _ => return Err(ParseError::StartLine),
                }
            }
            r => r?,
        };
        let mut headers = Vec::new();
        let mut content_length = None;
        for (name, value) in iter {
            let hn = HeaderName::parse(name);
            if hn == HeaderName::ContentLength && !lenient {
                if content_length.is_some() {
                    return Err(ParseError::ContentLength);
                }
                content_length = Some(
                    grammar::decimal(&value, u32::MAX as u64).ok_or(ParseError::ContentLength)?
                        as usize,
                );
            }
            headers.push(Header {
                name: hn,
                raw_name: name,
                value,
            });
        }
        let body = match content_length {
            _ if lenient => &[],
            Some(cl) => rest.get(..cl).ok_or(ParseError::Truncated)?,
            None => rest,
        };
        Ok(Message {
            start,
            headers,
            body,
        })
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header field line with this name, in order.
    pub fn headers_named<'s>(
        &'s self,
        name: HeaderName<'s>,
    ) -> impl Iterator<Item = &'s Header<'a>> + 's {
        self.headers.iter().filter(move |h| h.name.same(&name))
    }

    /// The value of the only (or first) header field with this name.
    pub fn header(&self, name: HeaderName<'_>) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.same(&name))
            .map(|h| h.value.as_ref())
    }

    /// The single value of a header that must not repeat.
    pub fn single(
        &self,
        name: HeaderName<'_>,
        label: &'static str,
    ) -> Result<Option<&str>, ParseError> {
        let mut it = self.headers.iter().filter(|h| h.name.same(&name));
        let first = it.next();
        if it.next().is_some() {
            return Err(ParseError::Repeated(label));
        }
        Ok(first.map(|h| h.value.as_ref()))
    }

    /// All comma-separated elements of every header field with this name, in order.
    pub fn list(&self, name: HeaderName<'_>) -> Result<Vec<&str>, ParseError> {
        let mut out = Vec::new();
        for h in self.headers.iter().filter(|h| h.name.same(&name)) {
            let parts = grammar::split_top_level(&h.value, b',').ok_or(ParseError::HeaderLine)?;
            for p in parts {
                let p = trim_ws(p);
                if p.is_empty() {
                    return Err(ParseError::HeaderLine);
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Every Via element, top first.
    pub fn vias(&self) -> Result<Vec<grammar::Via<'_>>, ParseError> {
        self.list(HeaderName::Via)?
            .into_iter()
            .map(|v| grammar::Via::parse(v).ok_or(ParseError::Malformed("Via")))
            .collect()
    }

    pub fn top_via(&self) -> Result<grammar::Via<'_>, ParseError> {
        self.vias()?
            .into_iter()
            .next()
            .ok_or(ParseError::Missing("Via"))
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header(HeaderName::CallId)
    }

    pub fn cseq(&self) -> Option<(u32, &str)> {
        self.header(HeaderName::CSeq).and_then(grammar::cseq)
    }

    pub fn from(&self) -> Option<grammar::NameAddr<'_>> {
        self.header(HeaderName::From).and_then(grammar::name_addr)
    }

    pub fn to(&self) -> Option<grammar::NameAddr<'_>> {
        self.header(HeaderName::To).and_then(grammar::name_addr)
    }

    /// Checks what RFC 3261 8.2 and 16.3 require of any request before it is processed:
    /// one each of To, From, Call-ID, CSeq (matching the method), at most one
    /// Max-Forwards (at most 255) and Expires (32 bits), a well-formed Via stack whose
    /// top carries an RFC 3261 branch, and well-formed Contacts.
    pub fn validate_request(&self) -> Result<(), ParseError> {
        let StartLine::Request { method, .. } = self.start else {
            return Err(ParseError::StartLine);
        };
        let to = self
            .single(HeaderName::To, "To")?
            .ok_or(ParseError::Missing("To"))?;
        grammar::name_addr(to).ok_or(ParseError::Malformed("To"))?;
        let from = self
            .single(HeaderName::From, "From")?
            .ok_or(ParseError::Missing("From"))?;
        grammar::name_addr(from).ok_or(ParseError::Malformed("From"))?;
        let call_id = self
            .single(HeaderName::CallId, "Call-ID")?
            .ok_or(ParseError::Missing("Call-ID"))?;
        if call_id.is_empty() || call_id.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ParseError::Malformed("Call-ID"));
        }
        let cseq = self
            .single(HeaderName::CSeq, "CSeq")?
            .ok_or(ParseError::Missing("CSeq"))?;
        let (_, cseq_method) = grammar::cseq(cseq).ok_or(ParseError::Malformed("CSeq"))?;
        if cseq_method != method {
            return Err(ParseError::CSeqMethod);
        }
        if let Some(mf) = self.single(HeaderName::MaxForwards, "Max-Forwards")? {
            grammar::decimal(mf, 255).ok_or(ParseError::Malformed("Max-Forwards"))?;
        }
        if let Some(e) = self.single(HeaderName::Expires, "Expires")? {
            grammar::decimal(e, u32::MAX as u64).ok_or(ParseError::Malformed("Expires"))?;
        }
        let vias = self.vias()?;
        let top = vias.first().ok_or(ParseError::Missing("Via"))?;
        match top.branch() {
            Some(b) if b.starts_with("z9hG4bK") && b.len() > 7 => {}
            _ => return Err(ParseError::Branch),
        }
        for c in self.list(HeaderName::Contact)? {
            if c != "*" {
                grammar::name_addr(c).ok_or(ParseError::Malformed("Contact"))?;
            }
        }
        Ok(())
    }

    /// Checks a response before it is matched to a client transaction; invalid ones are
    /// dropped (RFC 4475 3.1.2.5).
    pub fn validate_response(&self) -> Result<(), ParseError> {
        if self.is_request() {
            return Err(ParseError::StartLine);
        }
        self.single(HeaderName::CallId, "Call-ID")?
            .ok_or(ParseError::Missing("Call-ID"))?;
        let cseq = self
            .single(HeaderName::CSeq, "CSeq")?
            .ok_or(ParseError::Missing("CSeq"))?;
        grammar::cseq(cseq).ok_or(ParseError::Malformed("CSeq"))?;
        let to = self
            .single(HeaderName::To, "To")?
            .ok_or(ParseError::Missing("To"))?;
        grammar::name_addr(to).ok_or(ParseError::Malformed("To"))?;
        let from = self
            .single(HeaderName::From, "From")?
            .ok_or(ParseError::Missing("From"))?;
        grammar::name_addr(from).ok_or(ParseError::Malformed("From"))?;
        if let Some(e) = self.single(HeaderName::Expires, "Expires")? {
            grammar::decimal(e, u32::MAX as u64).ok_or(ParseError::Malformed("Expires"))?;
        }
        self.top_via()?;
        for c in self.list(HeaderName::Contact)? {
            if c != "*" {
                grammar::name_addr(c).ok_or(ParseError::Malformed("Contact"))?;
            }
        }
        Ok(())
    }
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let (version, rest) = rest.split_once(' ').ok_or(ParseError::StartLine)?;
        if version != "2.0" {
            return Err(ParseError::Version);
        }
        let (code, reason) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::StartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::StartLine)?;
        if !(100..=699).contains(&code) || reason.bytes().any(|b| b < b' ' && b != b'\t') {
            return Err(ParseError::StartLine);
        }
        return Ok(StartLine::Response { code, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (single spaces, RFC 3261 7.1)
    let mut parts = line.split(' ');
    let method = parts.next().ok_or(ParseError::StartLine)?;
    let uri = parts.next().ok_or(ParseError::StartLine)?;
    let version = parts.next().ok_or(ParseError::StartLine)?;
    if parts.next().is_some() || !grammar::is_token(method) {
        return Err(ParseError::StartLine);
    }
    let Some(colon) = uri.find(':') else {
        return Err(ParseError::StartLine);
    };
    let scheme = uri.get(..colon).unwrap_or("");
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        || uri
            .bytes()
            .any(|b| b <= b' ' || b == b'<' || b == b'>' || b == b'"' || b == 0x7f)
    {
        return Err(ParseError::StartLine);
    }
    let Some(v) = grammar::strip_prefix_ci(version, "SIP/") else {
        return Err(ParseError::StartLine);
    };
    if v != "2.0" {
        return Err(ParseError::Version);
    }
    Ok(StartLine::Request { method, uri })
}

/// Builds a response to `req` (RFC 3261 8.2.6): copies Via (the top one with
/// `received`/`rport` when given), From, To (adding `to_tag` when the To has none),
/// Call-ID and CSeq; `extra` headers follow; Content-Length is 0.
#[derive(Debug)]
pub struct ResponseBuilder {
    code: u16,
    out: String,
}

/// A response we built, with its status code, so nobody parses it back to learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub bytes: Vec<u8>,
}

/// A fresh To tag (or any random token of 16 hex digits).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl ResponseBuilder {
    pub fn new(
        req: &Message<'_>,
        code: u16,
        reason: &str,
        top_via: &str,
        to_tag: Option<&str>,
    ) -> ResponseBuilder {
        let mut out = String::with_capacity(512);
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        let mut first = true;
        for h in req.headers_named(HeaderName::Via) {
            if first {
                let _ = write!(out, "Via: {top_via}\r\n");
                first = false;
                // The rest of this header line (if it held several comma-separated
                // values) is copied after the replaced top element.
                if let Some(parts) = grammar::split_top_level(&h.value, b',') {
                    for p in parts.iter().skip(1) {
                        let _ = write!(out, "Via: {}\r\n", trim_ws(p));
                    }
                }
            } else {
                let _ = write!(out, "Via: {}\r\n", h.value);
            }
        }
        if let Some(f) = req.header(HeaderName::From) {
            let _ = write!(out, "From: {f}\r\n");
        }
        if let Some(t) = req.header(HeaderName::To) {
            let has_tag = grammar::name_addr(t).is_some_and(|na| na.params.contains("tag"));
            match to_tag {
                Some(tag) if !has_tag => {
                    let _ = write!(out, "To: {t};tag={tag}\r\n");
                }
                _ => {
                    let _ = write!(out, "To: {t}\r\n");
                }
            }
        }
        if let Some(c) = req.header(HeaderName::CallId) {
            let _ = write!(out, "Call-ID: {c}\r\n");
        }
        if let Some(c) = req.header(HeaderName::CSeq) {
            let _ = write!(out, "CSeq: {c}\r\n");
        }
        ResponseBuilder { code, out }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        let _ = write!(self.out, "{name}: {value}\r\n");
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out
            .push_str("Server: tandem-signaling\r\nContent-Length: 0\r\n\r\n");
        self.out.into_bytes()
    }

    /// As [`Self::finish`], keeping the status code with the bytes.
    pub fn reply(self) -> Reply {
        let code = self.code;
        Reply {
            code,
            bytes: self.finish(),
        }
    }
}

/// An RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`) for the Date header field
/// (RFC 3261 20.17), from Unix seconds.
pub fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = DAYS
        .get(days.rem_euclid(7) as usize)
        .copied()
        .unwrap_or("Thu");
    let mon = MONTHS
        .get((month - 1).clamp(0, 11) as usize)
        .copied()
        .unwrap_or("Jan");
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The top Via of a received request with `received` and `rport` filled in per
/// RFC 3261 18.2.1 and RFC 3581 4.
pub fn stamp_via(via_text: &str, via: &grammar::Via<'_>, source: std::net::SocketAddr) -> String {
    let mut out = String::with_capacity(via_text.len() + 40);
    let ip = source.ip().to_string();
    let host_is_source = via.host.trim_matches(['[', ']']) == ip;
    // Rebuild: copy the text, then adjust the rport and received params.
    let (head, params) = match via_text.find(';') {
        Some(i) => (
            via_text.get(..i).unwrap_or(via_text),
            via_text.get(i + 1..).unwrap_or(""),
        ),
        None => (via_text, ""),
    };
    out.push_str(trim_ws(head));
    let has_rport = via.params.contains("rport");
    for p in params.split(';') {
        let p = trim_ws(p);
        if p.is_empty() {
            continue;
        }
        let name = trim_ws(p.split('=').next().unwrap_or(p));
        if name.eq_ignore_ascii_case("received") || name.eq_ignore_ascii_case("rport") {
            continue;
        }
        out.push(';');
        out.push_str(p);
    }
    if !host_is_source || has_rport {
        let _ = write!(out, ";received={ip}");
    }
    if has_rport {
        let _ = write!(out, ";rport={}", source.port());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const REG: &[u8] = b"REGISTER sip:tandem.local SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
t: <sip:alice@tandem.local>\r\n\
f: <sip:alice@tandem.local>;tag=1928301774\r\n\
i: a84b4c76e66710\r\n\
CSeq: 314159 REGISTER\r\n\
m: <sip:alice@192.0.2.1:5070>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1\r\n\
Expires: 7200\r\n\
l: 0\r\n\r\n";

    #[test]
    fn compact_forms_parse() {
        let m = Message::parse(REG).unwrap();
        assert_eq!(m.method(), Some("REGISTER"));
        m.validate_request().unwrap();
        assert_eq!(m.call_id(), Some("a84b4c76e66710"));
        assert_eq!(m.cseq(), Some((314159, "REGISTER")));
        let c = m.list(HeaderName::Contact).unwrap();
        assert_eq!(c.len(), 1);
        let na = grammar::name_addr(c[0]).unwrap();
        assert_eq!(
            na.params.value("+sip.instance"),
            Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>")
        );
    }

    #[test]
    fn stream_framing() {
        let mut buf = REG.to_vec();
        buf.extend_from_slice(b"OPTIONS");
        assert_eq!(frame_stream(&buf, 4096), Framing::Message(REG.len()));
        assert_eq!(frame_stream(&REG[..40], 4096), Framing::Incomplete);
        assert_eq!(frame_stream(b"\r\n\r\nREG", 4096), Framing::Ping(4));
        assert_eq!(frame_stream(b"\r\nREG", 4096), Framing::Skip(2));
        assert_eq!(frame_stream(b"\r\n", 4096), Framing::Incomplete);
        assert_eq!(frame_stream(REG, 100), Framing::Invalid);
        let no_cl = b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(frame_stream(no_cl, 4096), Framing::Invalid);
        let body = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(frame_stream(body, 4096), Framing::Incomplete);
    }

    #[test]
    fn via_received_and_rport() {
        let m = Message::parse(REG).unwrap();
        let via = m.top_via().unwrap();
        let text = m.list(HeaderName::Via).unwrap()[0];
        let s = stamp_via(text, &via, "203.0.113.9:40000".parse().unwrap());
        assert_eq!(
            s,
            "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK776asdhds;received=203.0.113.9;rport=40000"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn response_copies_dialog_headers() {
        let m = Message::parse(REG).unwrap();
        let r = ResponseBuilder::new(&m, 200, "OK", "SIP/2.0/UDP x;branch=z9hG4bK1", Some("abc"))
            .header("Expires", "60")
            .finish();
        let p = Message::parse(&r).unwrap();
        assert_eq!(p.status(), Some(200));
        assert_eq!(p.to().unwrap().params.value("tag"), Some("abc"));
        assert_eq!(p.cseq(), Some((314159, "REGISTER")));
        p.validate_response().unwrap();
    }
}
