//! RFC 3261 section 25 grammar pieces used on header values: tokens, quoted strings,
//! generic parameters, name-addr / addr-spec, SIP URIs, Via, CSeq and digest
//! credentials. Everything borrows from the message; unescaping allocates only when a
//! quoted string actually carries a quoted-pair.
//!
//! Input here is a header value after unfolding (LWS already reduced to SP/HT).
//! Every function returns `None` or an error on malformed input and never panics:
//! slicing goes through `str::get`, enforced by the lint below.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

/// `token` characters (RFC 3261 25.1).
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

pub fn trim_ws(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Splits `s` at top-level occurrences of `sep`: not inside a quoted string (with
/// quoted-pair escapes) and not inside `<...>`. Returns `None` when a quote or an angle
/// bracket is left open.
pub fn split_top_level(s: &str, sep: u8) -> Option<Vec<&str>> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        if in_quote {
            match b {
                b'\\' => i += 1,
                b'"' => in_quote = false,
                _ => {}
            }
        } else if in_angle {
            if b == b'>' {
                in_angle = false;
            }
        } else if b == b'"' {
            in_quote = true;
        } else if b == b'<' {
            in_angle = true;
        } else if b == sep {
            out.push(s.get(start..i)?);
            start = i + 1;
        }
        i += 1;
    }
    if in_quote || in_angle {
        return None;
    }
    out.push(s.get(start..)?);
    Some(out)
}

/// Parses a quoted-string starting at the first byte of `s` (which must be `"`).
/// Returns the unescaped content and the rest after the closing quote.
pub fn quoted_string(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1usize;
    let mut escaped = false;
    loop {
        match *bytes.get(i)? {
            b'"' => break,
            b'\\' => {
                // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                let next = *bytes.get(i + 1)?;
                if next == b'\n' || next == b'\r' || next > 0x7f {
                    return None;
                }
                escaped = true;
                i += 2;
            }
            b'\r' | b'\n' => return None,
            _ => i += 1,
        }
    }
    let inner = s.get(1..i)?;
    let rest = s.get(i + 1..)?;
    if !escaped {
        return Some((Cow::Borrowed(inner), rest));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next()?);
        } else {
            out.push(c);
        }
    }
    Some((Cow::Owned(out), rest))
}

/// One `;name[=value]` parameter; the value is unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Option<Cow<'a, str>>,
}

/// A `;`-separated generic-param list (RFC 3261 25.1), in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params<'a> {
    pub items: Vec<Param<'a>>,
}

impl<'a> Params<'a> {
    /// Value of the first parameter named `name` (case-insensitive): `Some(None)` when it
    /// is present without a value.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.items
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_deref())
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Characters allowed in a parameter value that is not a quoted string: token plus the
/// characters `host` and IPv6 references need.
fn is_param_value_char(b: u8) -> bool {
    is_token_char(b) || b == b':' || b == b'[' || b == b']'
}

/// Parses `*( SEMI generic-param )` from `s`, which starts with `;` or is empty (after
/// optional whitespace). Stops at `stop` (e.g. `,` is handled by the caller's split).
pub fn params(s: &str) -> Option<Params<'_>> {
    let mut items = Vec::new();
    let mut rest = trim_ws(s);
    while !rest.is_empty() {
        rest = trim_ws(rest.strip_prefix(';')?);
        let name_len = rest.bytes().take_while(|&b| is_token_char(b)).count();
        if name_len == 0 {
            return None;
        }
        let name = rest.get(..name_len)?;
        rest = trim_ws(rest.get(name_len..)?);
        let mut value = None;
        if let Some(after_eq) = rest.strip_prefix('=') {
            let after_eq = trim_ws(after_eq);
            if after_eq.starts_with('"') {
                let (v, r) = quoted_string(after_eq)?;
                value = Some(v);
                rest = trim_ws(r);
            } else {
                let len = after_eq
                    .bytes()
                    .take_while(|&b| is_param_value_char(b))
                    .count();
                if len == 0 {
                    return None;
                }
                value = Some(Cow::Borrowed(after_eq.get(..len)?));
                rest = trim_ws(after_eq.get(len..)?);
            }
        }
        items.push(Param { name, value });
        if !rest.is_empty() && !rest.starts_with(';') {
            return None;
        }
    }
    Some(Params { items })
}

/// A name-addr or addr-spec header value (From, To, Contact, Route...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display_name: Option<Cow<'a, str>>,
    /// The URI text exactly as sent (without angle brackets).
    pub uri: &'a str,
    /// Header parameters (after the URI), e.g. `tag`, `expires`, `+sip.instance`.
    pub params: Params<'a>,
}

/// Parses one name-addr / addr-spec element (already split at top-level commas).
pub fn name_addr(s: &str) -> Option<NameAddr<'_>> {
    let s = trim_ws(s);
    if s.starts_with('"') {
        // A quoted display name may itself contain '<'.
        let (display, rest) = quoted_string(s)?;
        let rest = trim_ws(rest);
        let after = rest.strip_prefix('<')?;
        let gt = after.find('>')?;
        let uri = after.get(..gt)?;
        if !is_uri_text(uri) {
            return None;
        }
        let params = params(after.get(gt + 1..)?)?;
        return Some(NameAddr {
            display_name: Some(display),
            uri,
            params,
        });
    }
    if let Some(lt) = s.find('<') {
        let display_raw = trim_ws(s.get(..lt)?);
        let display_name = if display_raw.is_empty() {
            None
        } else if display_raw.starts_with('"') {
            let (v, r) = quoted_string(display_raw)?;
            if !trim_ws(r).is_empty() {
                return None;
            }
            Some(v)
        } else {
            // *(token LWS)
            if !display_raw
                .split([' ', '\t'])
                .filter(|t| !t.is_empty())
                .all(is_token)
            {
                return None;
            }
            Some(Cow::Borrowed(display_raw))
        };
        let after = s.get(lt + 1..)?;
        let gt = after.find('>')?;
        let uri = after.get(..gt)?;
        if !is_uri_text(uri) {
            return None;
        }
        let params = params(after.get(gt + 1..)?)?;
        Some(NameAddr {
            display_name,
            uri,
            params,
        })
    } else {
        // addr-spec: the URI ends at the first ';' (its params are header params).
        let end = s.find(';').unwrap_or(s.len());
        let uri = trim_ws(s.get(..end)?);
        if !is_uri_text(uri) || uri.contains(',') {
            return None;
        }
        let params = params(s.get(end..)?)?;
        Some(NameAddr {
            display_name: None,
            uri,
            params,
        })
    }
}

/// An absolute URI has a scheme, a colon, and no whitespace, quotes or angle brackets.
fn is_uri_text(u: &str) -> bool {
    let Some(colon) = u.find(':') else {
        return false;
    };
    let scheme = u.get(..colon).unwrap_or("");
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        && scheme
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphabetic())
        && u.bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'<' && b != b'>' && b != 0x7f)
}

/// A parsed `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    /// User part as sent (may carry %-escapes and `;` user parameters).
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
    pub headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    pub fn parse(s: &'a str) -> Option<SipUri<'a>> {
        let (secure, rest) = if let Some(r) = strip_prefix_ci(s, "sips:") {
            (true, r)
        } else {
            (false, strip_prefix_ci(s, "sip:")?)
        };
        if !is_uri_text(s) {
            return None;
        }
        // A raw '@' cannot appear in parameters or headers (it must be escaped there),
        // so the first one ends the userinfo.
        let (userinfo, hostpart) = match rest.find('@') {
            Some(at) => (Some(rest.get(..at)?), rest.get(at + 1..)?),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            Some(ui) => {
                // The password follows the first ':' of userinfo.
                let (u, p) = match ui.find(':') {
                    Some(c) => (ui.get(..c)?, Some(ui.get(c + 1..)?)),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return None;
                }
                (Some(u), p)
            }
            None => (None, None),
        };
        let (hostport, after) = match hostpart.find([';', '?']) {
            Some(i) => (hostpart.get(..i)?, hostpart.get(i..)?),
            None => (hostpart, ""),
        };
        let (host, port) = host_port(hostport)?;
        let (param_text, headers) = match after.find('?') {
            Some(q) => (after.get(..q)?, Some(after.get(q + 1..)?)),
            None => (after, None),
        };
        let params = uri_params(param_text)?;
        Some(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// The user part with %-escapes decoded, when it decodes to UTF-8.
    pub fn user_decoded(&self) -> Option<Cow<'a, str>> {
        percent_decode(self.user?)
    }
}

/// URI parameters: like generic params but values are `paramchar`s (escapes allowed).
fn uri_params(s: &str) -> Option<Params<'_>> {
    let mut items = Vec::new();
    if s.is_empty() {
        return Some(Params { items });
    }
    let body = s.strip_prefix(';')?;
    for part in body.split(';') {
        let (name, value) = match part.find('=') {
            Some(eq) => (part.get(..eq)?, Some(Cow::Borrowed(part.get(eq + 1..)?))),
            None => (part, None),
        };
        if name.is_empty() {
            return None;
        }
        items.push(Param { name, value });
    }
    Some(Params { items })
}

/// Splits `host[:port]`, IPv6 references in brackets included.
pub fn host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port_text) = if s.starts_with('[') {
        let close = s.find(']')?;
        let host = s.get(..=close)?;
        let rest = s.get(close + 1..)?;
        match rest.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if rest.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match s.find(':') {
            Some(c) => (s.get(..c)?, Some(s.get(c + 1..)?)),
            None => (s, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'))
    {
        return None;
    }
    let port = match port_text {
        Some(p) => Some(parse_decimal_u16(p)?),
        None => None,
    };
    Some((host, port))
}

fn parse_decimal_u16(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// Case-insensitive prefix strip (ASCII).
pub fn strip_prefix_ci<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Decodes %HH escapes; `None` on a malformed escape or when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let h = hex_val(*bytes.get(i + 1)?)?;
            let l = hex_val(*bytes.get(i + 2)?)?;
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One Via header value (`via-parm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport as sent (`UDP`, `TCP`, `TLS`, ...), compared case-insensitively.
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parses one `via-parm` (already split at top-level commas). LWS is allowed around
    /// the `/` separators (RFC 4475 3.1.1.1).
    pub fn parse(s: &'a str) -> Option<Via<'a>> {
        let s = trim_ws(s);
        let (name, rest) = s.split_once('/')?;
        if !trim_ws(name).eq_ignore_ascii_case("SIP") {
            return None;
        }
        let (version, rest) = rest.split_once('/')?;
        if trim_ws(version) != "2.0" {
            return None;
        }
        let rest = trim_ws(rest);
        let tlen = rest.bytes().take_while(|&b| is_token_char(b)).count();
        if tlen == 0 {
            return None;
        }
        let transport = rest.get(..tlen)?;
        let rest = rest.get(tlen..)?;
        if !rest.starts_with(is_ws_char) {
            return None;
        }
        let rest = trim_ws(rest);
        let end = rest.find(';').unwrap_or(rest.len());
        let sent_by = trim_ws(rest.get(..end)?);
        // LWS is allowed around the ':' of sent-by.
        let (host, port) = if sent_by.contains([' ', '\t']) {
            let compact: String = sent_by
                .chars()
                .filter(|c| *c != ' ' && *c != '\t')
                .collect();
            let (h, p) = host_port(&compact)?;
            let hl = h.len();
            // Re-borrow the host from the original text (it contains no whitespace).
            (sent_by.get(..hl)?, p)
        } else {
            host_port(sent_by)?
        };
        let params = params(rest.get(end..)?)?;
        Some(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }
}

fn is_ws_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `CSeq: 1*DIGIT LWS Method`; the number must be below 2**31 (RFC 3261 8.1.1.5).
pub fn cseq(s: &str) -> Option<(u32, &str)> {
    let s = trim_ws(s);
    let nlen = s.bytes().take_while(u8::is_ascii_digit).count();
    if nlen == 0 {
        return None;
    }
    let digits = s.get(..nlen)?.trim_start_matches('0');
    if digits.len() > 10 {
        return None;
    }
    let n: u64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    if n >= 1 << 31 {
        return None;
    }
    let rest = s.get(nlen..)?;
    if !rest.starts_with(is_ws_char) {
        return None;
    }
    let method = trim_ws(rest);
    if !is_token(method) {
        return None;
    }
    Some((n as u32, method))
}

/// Non-negative decimal integer with leading zeros allowed, at most `max`.
pub fn decimal(s: &str, max: u64) -> Option<u64> {
    let s = trim_ws(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 19 {
        return None;
    }
    let n: u64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (n <= max).then_some(n)
}

/// Credentials or challenge: `scheme` followed by comma-separated `name=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthParams<'a> {
    pub scheme: &'a str,
    pub params: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> AuthParams<'a> {
    /// Parses an Authorization / Proxy-Authorization value.
    pub fn parse(s: &'a str) -> Option<AuthParams<'a>> {
        let s = trim_ws(s);
        let slen = s.bytes().take_while(|&b| is_token_char(b)).count();
        if slen == 0 {
            return None;
        }
        let scheme = s.get(..slen)?;
        let rest = trim_ws(s.get(slen..)?);
        let mut params = Vec::new();
        if rest.is_empty() {
            return Some(AuthParams { scheme, params });
        }
        for part in split_top_level(rest, b',')? {
            let part = trim_ws(part);
            let (name, value) = part.split_once('=')?;
            let name = trim_ws(name);
            if !is_token(name) {
                return None;
            }
            let value = trim_ws(value);
            let value = if value.starts_with('"') {
                let (v, r) = quoted_string(value)?;
                if !trim_ws(r).is_empty() {
                    return None;
                }
                v
            } else {
                if !is_token(value) {
                    return None;
                }
                Cow::Borrowed(value)
            };
            params.push((name, value));
        }
        Some(AuthParams { scheme, params })
    }

    /// First value of `name` (case-insensitive); a repeated parameter makes the whole
    /// credential invalid, checked by [`AuthParams::has_duplicates`].
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    pub fn has_duplicates(&self) -> bool {
        self.params.iter().enumerate().any(|(i, (n, _))| {
            self.params
                .iter()
                .skip(i + 1)
                .any(|(m, _)| m.eq_ignore_ascii_case(n))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn contact_with_instance_and_reg_id() {
        let na = name_addr(
            r#"<sip:alice@192.0.2.1:5060;transport=tcp;ob>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1;expires=600"#,
        )
        .unwrap();
        assert_eq!(na.uri, "sip:alice@192.0.2.1:5060;transport=tcp;ob");
        assert_eq!(
            na.params.value("+sip.instance"),
            Some("<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>")
        );
        assert_eq!(na.params.value("reg-id"), Some("1"));
        assert_eq!(na.params.value("EXPIRES"), Some("600"));
        let uri = SipUri::parse(na.uri).unwrap();
        assert_eq!(uri.user, Some("alice"));
        assert_eq!(uri.host, "192.0.2.1");
        assert_eq!(uri.port, Some(5060));
        assert!(uri.params.contains("ob"));
    }

    #[test]
    fn quoted_pairs_unescape() {
        let (v, rest) = quoted_string(r#""J Rosenberg \\\"" <x>"#).unwrap();
        assert_eq!(v, r#"J Rosenberg \""#);
        assert_eq!(rest, " <x>");
        assert!(quoted_string(r#""open"#).is_none());
    }

    #[test]
    fn digest_credentials_keep_hex_nc() {
        let a = AuthParams::parse(
            r#"Digest username="bob", realm="r", nonce="n,1", uri="sip:r", response="ab", algorithm=SHA-256, qop=auth, nc=0000000a, cnonce="c""#,
        )
        .unwrap();
        assert_eq!(a.scheme, "Digest");
        assert_eq!(a.get("nonce"), Some("n,1"));
        assert_eq!(a.get("algorithm"), Some("SHA-256"));
        assert_eq!(a.get("nc"), Some("0000000a"));
        assert!(!a.has_duplicates());
    }

    #[test]
    fn via_with_lws_and_rport() {
        let v = Via::parse(
            "SIP  / 2.0  / TCP     spindle.example.com   ;\n branch  =   z9hG4bK9ikj8"
                .replace('\n', " ")
                .as_str(),
        )
        .map(|v| {
            (
                v.transport.to_owned(),
                v.host.to_owned(),
                v.branch().map(str::to_owned),
            )
        })
        .unwrap();
        assert_eq!(
            v,
            (
                "TCP".into(),
                "spindle.example.com".into(),
                Some("z9hG4bK9ikj8".into())
            )
        );
        let v = Via::parse("SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bKx").unwrap();
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.params.get("rport"), Some(None));
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_none());
    }

    #[test]
    fn cseq_limits() {
        assert_eq!(cseq("0009\tINVITE"), Some((9, "INVITE")));
        assert_eq!(cseq("2147483647 REGISTER"), Some((2147483647, "REGISTER")));
        assert_eq!(cseq("2147483648 REGISTER"), None);
        assert_eq!(cseq("36893488147419103232 INVITE"), None);
        assert_eq!(cseq("1REGISTER"), None);
    }

    #[test]
    fn uri_user_decoding() {
        let u = SipUri::parse("sip:%75se%72@example.com").unwrap();
        assert_eq!(u.user_decoded().unwrap(), "user");
        let u = SipUri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        assert!(SipUri::parse("sip:[2001:db8::10]:5070").is_some());
        assert!(SipUri::parse("sip:host:99999").is_none());
    }
}
