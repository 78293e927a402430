//! The line-preserving parser: every line is kept as a range of the input with what it
//! ended with; only the lines the relay needs are read (RFC 8866 §5, RFC 3605,
//! RFC 5761, RFC 8839, RFC 8843, RFC 4568, RFC 8122).

use std::net::IpAddr;

use super::SdpError;

/// Largest SDP accepted, in bytes.
pub const MAX_SDP_LEN: usize = 64 * 1024;
/// Most lines accepted.
pub const MAX_LINES: usize = 4096;
/// Most `m=` lines accepted (bundled and rejected ones included; the relayed streams
/// are further capped by [`tandem_control::MAX_STREAMS`]).
pub const MAX_MEDIA: usize = 64;

/// What a line ended with. Kept per line so untouched lines come out byte-identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eol {
    /// `\r\n`, as RFC 8866 writes it.
    CrLf,
    /// A bare `\n`, which RFC 8866 §5 asks parsers to accept.
    Lf,
    /// Nothing: the last line of an SDP without a final line ending.
    None,
}

impl Eol {
    /// The bytes of this line ending.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::None => b"",
        }
    }
}

/// One line: `input[start..end]` is `<type>=<value>` without its line ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub start: usize,
    pub end: usize,
    pub eol: Eol,
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// A `c=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connection {
    /// Index of the line.
    pub line: usize,
    /// The address, when it is an IP address of the family the line names (`None` for a
    /// host name).
    pub addr: Option<IpAddr>,
}

impl Connection {
    /// `0.0.0.0` or `::`: hold in an SDP without ICE (RFC 3264 §8.4, the legacy form),
    /// "no default candidate yet" with trickle ICE (RFC 8840 §4.1.1).
    pub fn unspecified(&self) -> bool {
        self.addr.is_some_and(|a| a.is_unspecified())
    }
}

/// An `a=rtcp` line (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rtcp {
    pub line: usize,
    pub port: u16,
    /// The address when the line carries one (`a=rtcp:53021 IN IP4 192.0.2.1`).
    pub addr: Option<IpAddr>,
}

/// An `a=candidate` line (RFC 8839 §5.1). Only what the rewrite needs is read; a line
/// that does not parse keeps `None` fields and is still a candidate line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate<'a> {
    pub line: usize,
    pub component: Option<u16>,
    /// `host`, `srflx`, `prflx`, `relay` or an extension.
    pub typ: Option<&'a str>,
}

/// An `a=crypto` line (RFC 4568 §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Crypto<'a> {
    pub line: usize,
    pub tag: Option<u32>,
    pub suite: &'a str,
    /// The base64 key and salt of the first `inline:` key, when the line is one the
    /// relay can terminate: one key, no MKI, no session parameters. A lifetime is
    /// allowed and ignored.
    pub key: Option<&'a str>,
}

/// One media section: its `m=` line up to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Media<'a> {
    /// Index of the `m=` line.
    pub line: usize,
    /// Index one past the section's last line.
    pub end: usize,
    /// `audio`, `video`, `application`, ...
    pub media: &'a str,
    pub port: u16,
    /// The transport protocol (`RTP/AVP`, `UDP/TLS/RTP/SAVPF`, ...).
    pub proto: &'a str,
    /// Byte ranges in the input of the port token (with any `/count`) and of `proto`.
    pub port_span: (usize, usize),
    pub proto_span: (usize, usize),
    /// The media-level `c=` line (the first one).
    pub connection: Option<Connection>,
    pub rtcp: Option<Rtcp>,
    pub rtcp_mux: bool,
    pub mid: Option<&'a str>,
    pub ice_ufrag: Option<&'a str>,
    pub ice_pwd: Option<&'a str>,
    pub candidates: Vec<Candidate<'a>>,
    /// Index of the `a=end-of-candidates` line.
    pub end_of_candidates: Option<usize>,
    pub crypto: Vec<Crypto<'a>>,
    /// `a=fingerprint` in this section (DTLS-SRTP, RFC 8122).
    pub fingerprint: bool,
    pub direction: Option<Direction>,
    /// `a=bundle-only` (RFC 8843 §6).
    pub bundle_only: bool,
}

/// A parsed SDP. It borrows the input; [`rewrite`](super::rewrite()) writes it back with
/// every untouched line byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sdp<'a> {
    pub input: &'a [u8],
    pub lines: Vec<Line>,
    /// The session-level `c=` line.
    pub connection: Option<Connection>,
    pub ice_ufrag: Option<&'a str>,
    pub ice_pwd: Option<&'a str>,
    /// Session-level `a=fingerprint`.
    pub fingerprint: bool,
    pub direction: Option<Direction>,
    /// The mids of each `a=group:BUNDLE` line, in order.
    pub bundle_groups: Vec<Vec<&'a str>>,
    pub media: Vec<Media<'a>>,
}

impl<'a> Sdp<'a> {
    /// Parses `input`. Accepts CRLF and bare LF line endings (and a last line without
    /// one); refuses input over [`MAX_SDP_LEN`], [`MAX_LINES`] or [`MAX_MEDIA`], lines
    /// that are not `<letter>=<value>` (an empty line is kept), a bare CR, NUL, and
    /// `m=`, `c=` or `a=rtcp` lines the relay cannot read.
    pub fn parse(input: &'a [u8]) -> Result<Sdp<'a>, SdpError> {
        if input.len() > MAX_SDP_LEN {
            return Err(SdpError::TooLarge { max: MAX_SDP_LEN });
        }
        let lines = split_lines(input)?;
        let mut sdp = Sdp {
            input,
            lines: Vec::new(),
            connection: None,
            ice_ufrag: None,
            ice_pwd: None,
            fingerprint: false,
            direction: None,
            bundle_groups: Vec::new(),
            media: Vec::new(),
        };
        match lines.first().map(|l| sdp_bytes(input, l)) {
            Some(b"v=0") => {}
            _ => return Err(SdpError::NoVersion),
        }
        for (i, l) in lines.iter().enumerate() {
            let bytes = sdp_bytes(input, l);
            if bytes.is_empty() {
                continue;
            }
            let kind = bytes.first().copied().unwrap_or(0);
            let value = bytes.get(2..).unwrap_or_default();
            match kind {
                b'm' => {
                    if sdp.media.len() >= MAX_MEDIA {
                        return Err(SdpError::TooManyMedia { max: MAX_MEDIA });
                    }
                    if let Some(prev) = sdp.media.last_mut() {
                        prev.end = i;
                    }
                    let start = l.start.checked_add(2).ok_or(SdpError::bad(i, "m= line"))?;
                    sdp.media.push(parse_m(i, value, start)?);
                }
                b'c' => {
                    let c = parse_c(i, value)?;
                    match sdp.media.last_mut() {
                        Some(m) => {
                            m.connection.get_or_insert(c);
                        }
                        None => {
                            sdp.connection.get_or_insert(c);
                        }
                    }
                }
                b'a' => sdp.attribute(i, value)?,
                _ => {}
            }
        }
        if let Some(m) = sdp.media.last_mut() {
            m.end = lines.len();
        }
        sdp.lines = lines;
        Ok(sdp)
    }

    fn attribute(&mut self, i: usize, value: &'a [u8]) -> Result<(), SdpError> {
        let (name, arg) = match value.iter().position(|&b| b == b':') {
            Some(p) => (
                value.get(..p).unwrap_or_default(),
                Some(value.get(p + 1..).unwrap_or_default()),
            ),
            None => (value, None),
        };
        let text = |b: &'a [u8]| std::str::from_utf8(b).ok();
        let direction = match name {
            b"sendrecv" => Some(Direction::SendRecv),
            b"sendonly" => Some(Direction::SendOnly),
            b"recvonly" => Some(Direction::RecvOnly),
            b"inactive" => Some(Direction::Inactive),
            _ => None,
        };
        let Some(m) = self.media.last_mut() else {
            // Session level.
            match (name, arg) {
                (b"ice-ufrag", Some(v)) => self.ice_ufrag = text(v),
                (b"ice-pwd", Some(v)) => self.ice_pwd = text(v),
                (b"fingerprint", _) => self.fingerprint = true,
                (b"group", Some(v)) => {
                    let v = text(v).ok_or(SdpError::bad(i, "a=group"))?;
                    let mut it = v.split(' ').filter(|t| !t.is_empty());
                    if it.next() == Some("BUNDLE") {
                        self.bundle_groups.push(it.collect());
                    }
                }
                _ => {
                    if direction.is_some() {
                        self.direction = direction;
                    }
                }
            }
            return Ok(());
        };
        match (name, arg) {
            (b"ice-ufrag", Some(v)) => m.ice_ufrag = text(v),
            (b"ice-pwd", Some(v)) => m.ice_pwd = text(v),
            (b"fingerprint", _) => m.fingerprint = true,
            (b"rtcp-mux", _) => m.rtcp_mux = true,
            (b"bundle-only", _) => m.bundle_only = true,
            (b"mid", Some(v)) => m.mid = text(v),
            (b"end-of-candidates", _) => m.end_of_candidates = Some(i),
            (b"rtcp", Some(v)) => {
                if m.rtcp.is_none() {
                    m.rtcp = Some(parse_rtcp(i, v)?);
                }
            }
            (b"candidate", Some(v)) => m.candidates.push(parse_candidate(i, v)),
            (b"crypto", Some(v)) => {
                if let Some(c) = parse_crypto(i, v) {
                    m.crypto.push(c);
                }
            }
            _ => {
                if direction.is_some() {
                    m.direction = direction;
                }
            }
        }
        Ok(())
    }

    /// The bytes of line `i` without its line ending (empty when out of range).
    pub fn line(&self, i: usize) -> &'a [u8] {
        self.lines
            .get(i)
            .map(|l| sdp_bytes(self.input, l))
            .unwrap_or_default()
    }

    /// The connection a media section uses: its own `c=`, else the session's.
    pub fn connection_of(&self, m: &Media<'a>) -> Option<Connection> {
        m.connection.or(self.connection)
    }

    /// Whether the section's ICE credentials (its own, else the session's) are present.
    pub fn ice_of(&self, m: &Media<'a>) -> Option<(&'a str, &'a str)> {
        match (m.ice_ufrag.or(self.ice_ufrag), m.ice_pwd.or(self.ice_pwd)) {
            (Some(u), Some(p)) => Some((u, p)),
            _ => None,
        }
    }

    /// The direction of a section: its own attribute, else the session's, else
    /// `sendrecv` (RFC 3264 §5.1).
    pub fn direction_of(&self, m: &Media<'a>) -> Direction {
        m.direction
            .or(self.direction)
            .unwrap_or(Direction::SendRecv)
    }
}

fn sdp_bytes<'a>(input: &'a [u8], l: &Line) -> &'a [u8] {
    input.get(l.start..l.end).unwrap_or_default()
}

fn split_lines(input: &[u8]) -> Result<Vec<Line>, SdpError> {
    let mut lines = Vec::new();
    let mut start = 0usize;
    while start < input.len() {
        if lines.len() >= MAX_LINES {
            return Err(SdpError::TooManyLines { max: MAX_LINES });
        }
        let rest = input.get(start..).unwrap_or_default();
        let (end, eol, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(p) => {
                let nl = start + p;
                if p > 0 && rest.get(p - 1) == Some(&b'\r') {
                    (nl - 1, Eol::CrLf, nl + 1)
                } else {
                    (nl, Eol::Lf, nl + 1)
                }
            }
            None => (input.len(), Eol::None, input.len()),
        };
        let n = lines.len();
        let bytes = input.get(start..end).unwrap_or_default();
        if bytes.iter().any(|&b| b == b'\r' || b == 0) {
            return Err(SdpError::Malformed { line: n + 1 });
        }
        if !bytes.is_empty() {
            match bytes {
                [k, b'=', ..] if k.is_ascii_lowercase() => {}
                _ => return Err(SdpError::Malformed { line: n + 1 }),
            }
        }
        lines.push(Line { start, end, eol });
        start = next;
    }
    Ok(lines)
}

/// Splits on single spaces, giving each token with its offset in `s`.
fn tokens(s: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        while s.get(pos) == Some(&b' ') {
            pos += 1;
        }
        if pos >= s.len() {
            return None;
        }
        let start = pos;
        while s.get(pos).is_some_and(|&b| b != b' ') {
            pos += 1;
        }
        Some((start, s.get(start..pos).unwrap_or_default()))
    })
}

fn parse_u16(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `m=<media> <port>[/<count>] <proto> <fmt> ...`; `start` is the value's offset in the
/// input.
fn parse_m(i: usize, value: &[u8], start: usize) -> Result<Media<'_>, SdpError> {
    let bad = || SdpError::bad(i, "m= line");
    let mut it = tokens(value);
    let (_, media) = it.next().ok_or_else(bad)?;
    let (port_at, port_tok) = it.next().ok_or_else(bad)?;
    let (proto_at, proto) = it.next().ok_or_else(bad)?;
    let port_digits = port_tok.split(|&b| b == b'/').next().unwrap_or_default();
    let port = parse_u16(port_digits).ok_or_else(bad)?;
    if let Some(count) = port_tok.get(port_digits.len() + 1..) {
        parse_u16(count).ok_or_else(bad)?;
    }
    let span = |at: usize, len: usize| -> Result<(usize, usize), SdpError> {
        let a = start.checked_add(at).ok_or_else(bad)?;
        Ok((a, a.checked_add(len).ok_or_else(bad)?))
    };
    Ok(Media {
        line: i,
        end: i + 1,
        media: std::str::from_utf8(media).map_err(|_| bad())?,
        port,
        proto: std::str::from_utf8(proto).map_err(|_| bad())?,
        port_span: span(port_at, port_tok.len())?,
        proto_span: span(proto_at, proto.len())?,
        connection: None,
        rtcp: None,
        rtcp_mux: false,
        mid: None,
        ice_ufrag: None,
        ice_pwd: None,
        candidates: Vec::new(),
        end_of_candidates: None,
        crypto: Vec::new(),
        fingerprint: false,
        direction: None,
        bundle_only: false,
    })
}

/// `IN IP4 <addr>` / `IN IP6 <addr>`; a multicast TTL or count after `/` is ignored.
fn parse_addr(nettype: &[u8], addrtype: &[u8], addr: &[u8]) -> Option<Option<IpAddr>> {
    if nettype != b"IN" {
        return None;
    }
    let addr = addr.split(|&b| b == b'/').next().unwrap_or_default();
    let ip: Option<IpAddr> = std::str::from_utf8(addr).ok().and_then(|s| s.parse().ok());
    match addrtype {
        b"IP4" => Some(ip.filter(IpAddr::is_ipv4)),
        b"IP6" => Some(ip.filter(IpAddr::is_ipv6)),
        _ => None,
    }
}

fn parse_c(i: usize, value: &[u8]) -> Result<Connection, SdpError> {
    let mut it = tokens(value).map(|(_, t)| t);
    let (Some(n), Some(t), Some(a)) = (it.next(), it.next(), it.next()) else {
        return Err(SdpError::bad(i, "c= line"));
    };
    let addr = parse_addr(n, t, a).ok_or(SdpError::bad(i, "c= line"))?;
    Ok(Connection { line: i, addr })
}

/// `a=rtcp:<port> [IN IP4 <addr>]` (RFC 3605 §2.1).
fn parse_rtcp(i: usize, v: &[u8]) -> Result<Rtcp, SdpError> {
    let bad = || SdpError::bad(i, "a=rtcp");
    let mut it = tokens(v).map(|(_, t)| t);
    let port = it.next().and_then(parse_u16).ok_or_else(bad)?;
    let addr = match (it.next(), it.next(), it.next()) {
        (None, _, _) => None,
        (Some(n), Some(t), Some(a)) => parse_addr(n, t, a).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Rtcp {
        line: i,
        port,
        addr,
    })
}

/// `a=candidate:<foundation> <component> <transport> <priority> <addr> <port> typ <type> ...`
fn parse_candidate(i: usize, v: &[u8]) -> Candidate<'_> {
    let toks: Vec<&[u8]> = tokens(v).map(|(_, t)| t).take(8).collect();
    let component = toks.get(1).and_then(|t| parse_u16(t));
    let typ = match (toks.get(6), toks.get(7)) {
        (Some(&b"typ"), Some(t)) => std::str::from_utf8(t).ok(),
        _ => None,
    };
    Candidate {
        line: i,
        component,
        typ,
    }
}

/// `a=crypto:<tag> <suite> <key-params> [<session-params>]` (RFC 4568 §9.1). `None`
/// when not even the tag and suite are there.
fn parse_crypto(i: usize, v: &[u8]) -> Option<Crypto<'_>> {
    let mut it = tokens(v).map(|(_, t)| t);
    let tag_tok = it.next()?;
    let suite = std::str::from_utf8(it.next()?).ok()?;
    let tag = (tag_tok.len() <= 9 && tag_tok.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(tag_tok).ok()?.parse().ok())
        .flatten();
    let params = it.next();
    let session_params = it.next().is_some();
    let key = params.and_then(|p| {
        // One key only (no `;` list), inline, no MKI (`|n:len` with a colon).
        let p = std::str::from_utf8(p).ok()?;
        let inline = p.strip_prefix("inline:")?;
        if p.contains(';') || session_params {
            return None;
        }
        let mut parts = inline.split('|');
        let key = parts.next()?;
        for extra in parts {
            if extra.contains(':') {
                return None; // MKI
            }
        }
        (!key.is_empty()).then_some(key)
    });
    Some(Crypto {
        line: i,
        tag,
        suite,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_lf_and_no_final_eol_are_kept() {
        let s = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\ns=-\r\nt=0 0").unwrap();
        let eols: Vec<Eol> = s.lines.iter().map(|l| l.eol).collect();
        assert_eq!(eols, [Eol::CrLf, Eol::Lf, Eol::CrLf, Eol::None]);
        assert_eq!(s.line(1), b"o=- 1 1 IN IP4 192.0.2.1");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(Sdp::parse(b""), Err(SdpError::NoVersion));
        assert_eq!(Sdp::parse(b"v=1\r\n"), Err(SdpError::NoVersion));
        assert_eq!(
            Sdp::parse(b"v=0\r\nbogus\r\n"),
            Err(SdpError::Malformed { line: 2 })
        );
        assert_eq!(
            Sdp::parse(b"v=0\r\ns=a\rb\r\n"),
            Err(SdpError::Malformed { line: 2 })
        );
        assert!(matches!(
            Sdp::parse(b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n"),
            Err(SdpError::BadField { line: 2, .. })
        ));
        assert!(matches!(
            Sdp::parse(b"v=0\r\nc=IN IP4\r\n"),
            Err(SdpError::BadField { line: 2, .. })
        ));
        let big = vec![b'a'; MAX_SDP_LEN + 1];
        assert!(matches!(Sdp::parse(&big), Err(SdpError::TooLarge { .. })));
        let mut many = b"v=0\r\n".to_vec();
        for _ in 0..=MAX_MEDIA {
            many.extend_from_slice(b"m=audio 0 RTP/AVP 0\r\n");
        }
        assert!(matches!(
            Sdp::parse(&many),
            Err(SdpError::TooManyMedia { .. })
        ));
    }

    #[test]
    fn reads_the_lines_it_needs() {
        let s = Sdp::parse(
            b"v=0\r\nc=IN IP6 2001:db8::1\r\na=group:BUNDLE a v\r\nm=audio 5004/2 RTP/SAVP 0\r\n\
a=rtcp:5011 IN IP4 192.0.2.9\r\na=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^20\r\n\
a=crypto:8 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^20|1:4\r\na=candidate:1 1 udp 9 192.0.2.1 5 typ host\r\n\
a=end-of-candidates\r\na=sendonly\r\nm=video 0 RTP/AVP 96\r\n",
        )
        .unwrap();
        assert_eq!(s.bundle_groups, vec![vec!["a", "v"]]);
        let m = &s.media[0];
        assert_eq!((m.port, m.proto, m.end), (5004, "RTP/SAVP", 10));
        assert_eq!(m.rtcp.unwrap().port, 5011);
        assert_eq!(m.crypto[0].key, Some("KEY"));
        assert_eq!(m.crypto[1].key, None);
        assert_eq!(m.candidates[0].typ, Some("host"));
        assert_eq!(m.end_of_candidates, Some(8));
        assert_eq!(s.direction_of(m), Direction::SendOnly);
        assert_eq!(&s.input[m.port_span.0..m.port_span.1], b"5004/2");
        assert!(s.connection_of(m).unwrap().addr.unwrap().is_ipv6());
    }
}
