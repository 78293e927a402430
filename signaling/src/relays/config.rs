//! `[[relays]]` and `[relay_pool]`: which relays signaling places media on, and how
//! it checks them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One media relay (`[[relays]]`, one table per relay).
///
/// ```toml
/// [[relays]]
/// control_url = "http://10.0.0.5:8081"           # the relay's control-listen
/// secret_file = "/etc/tandem/relay-a.secret"      # its control-secret, first line
/// public_address = "relay-a.example.net"          # what clients send media and TURN to
/// weight = 2                                      # optional, default 1
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The relay's control API, `http://host:port` (its `control-listen`, on a
    /// private network).
    pub control_url: String,
    /// The bearer token (one of the relay's `control-secret`). Prefer
    /// `secret_file`, which keeps the token out of this file; when both are set,
    /// `secret` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file whose first line is the bearer token, read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The host name or IP address clients reach the relay at (TURN URIs,
    /// `turn:<public_address>:3478`), without a port.
    pub public_address: String,
    /// Share of new sessions: placement picks the lowest `sessions / weight`
    /// (1-1000, default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How the pool checks its relays (`[relay_pool]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Seconds between two rounds of `GET /health`, `GET /load` and
    /// `GET /sessions/ended` on every relay.
    pub health_interval_secs: u64,
    /// Failed rounds in a row after which a relay is taken as down: it gets no new
    /// sessions and its live sessions are announced as ended.
    pub down_after_failures: u32,
    /// Milliseconds a control API request may take (connection included).
    pub request_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            health_interval_secs: 2,
            down_after_failures: 2,
            request_timeout_ms: 2000,
        }
    }
}

impl PoolConfig {
    /// Checks the values; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=300).contains(&self.health_interval_secs) {
            return Err("relay_pool.health_interval_secs: must be 1-300".into());
        }
        if !(1..=100).contains(&self.down_after_failures) {
            return Err("relay_pool.down_after_failures: must be 1-100".into());
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err("relay_pool.request_timeout_ms: must be 100-60000".into());
        }
        Ok(())
    }
}

/// Whether `s` is a host name or an IP address (no port, no scheme).
pub(crate) fn is_host(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `public_address` as it goes in a URI: an IPv6 address in brackets.
pub(crate) fn uri_host(s: &str) -> String {
    match s.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{s}]"),
        Err(_) => s.to_owned(),
    }
}

impl RelayConfig {
    /// Checks one `[[relays]]` entry (`index` is its place, for the message).
    pub fn validate(&self, index: usize) -> Result<(), String> {
        let key = |k: &str| format!("relays[{index}].{k}");
        let url = reqwest::Url::parse(&self.control_url)
            .map_err(|e| format!("{}: not a URL: {e}", key("control_url")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "{}: must start with http:// (or https://)",
                key("control_url")
            ));
        }
        if url.host_str().is_none_or(str::is_empty) || url.port_or_known_default().is_none() {
            return Err(format!("{}: must name host:port", key("control_url")));
        }
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(format!(
                "{}: only scheme, host and port (no path, query or user)",
                key("control_url")
            ));
        }
        match (&self.secret, &self.secret_file) {
            (None, None) => {
                return Err(format!(
                    "{}: set secret_file (preferred) or secret to one of the relay's \
                     control-secret",
                    key("secret")
                ))
            }
            (Some(s), _) if s.is_empty() || s.chars().any(char::is_whitespace) => {
                return Err(format!(
                    "{}: must be non-empty, without whitespace",
                    key("secret")
                ))
            }
            _ => {}
        }
        if !is_host(&self.public_address) {
            return Err(format!(
                "{}: must be a host name or an IP address, without port: {:?}",
                key("public_address"),
                self.public_address
            ));
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(format!("{}: must be 1-1000", key("weight")));
        }
        Ok(())
    }

    /// `host:port` of the control URL, the relay's name in metrics and logs.
    pub fn label(&self) -> String {
        reqwest::Url::parse(&self.control_url)
            .ok()
            .and_then(|u| {
                Some(format!(
                    "{}:{}",
                    u.host_str()?.to_owned(),
                    u.port_or_known_default()?
                ))
            })
            .unwrap_or_else(|| self.control_url.clone())
    }
}

/// Every entry valid, and no two naming the same control URL.
pub fn validate_relays(relays: &[RelayConfig]) -> Result<(), String> {
    for (i, r) in relays.iter().enumerate() {
        r.validate(i)?;
        if let Some(j) = relays[..i].iter().position(|o| o.label() == r.label()) {
            return Err(format!(
                "relays[{i}].control_url: the same relay as relays[{j}]"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RelayConfig {
        RelayConfig {
            control_url: "http://10.0.0.5:8081".into(),
            secret: Some("token-0123456789".into()),
            secret_file: None,
            public_address: "relay.example.net".into(),
            weight: 1,
        }
    }

    #[test]
    fn entries_are_checked_naming_the_key() {
        assert_eq!(relay().validate(0), Ok(()));
        type Change = fn(&mut RelayConfig);
        let cases: Vec<(Change, &str)> = vec![
            (
                |r| r.control_url = "10.0.0.5:8081".into(),
                "relays[0].control_url",
            ),
            (
                |r| r.control_url = "ftp://h:1".into(),
                "relays[0].control_url",
            ),
            (
                |r| r.control_url = "http://h:1/x".into(),
                "relays[0].control_url",
            ),
            (|r| r.secret = None, "relays[0].secret"),
            (|r| r.secret = Some("a b".into()), "relays[0].secret"),
            (
                |r| r.public_address = "h:3478".into(),
                "relays[0].public_address",
            ),
            (|r| r.public_address = "".into(), "relays[0].public_address"),
            (|r| r.weight = 0, "relays[0].weight"),
        ];
        for (change, key) in cases {
            let mut r = relay();
            change(&mut r);
            let e = r.validate(0).unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
        let mut r = relay();
        r.public_address = "2001:db8::1".into();
        assert_eq!(r.validate(0), Ok(()));
        assert_eq!(uri_host(&r.public_address), "[2001:db8::1]");
        let e = validate_relays(&[relay(), relay()]).unwrap_err();
        assert!(e.starts_with("relays[1].control_url"), "{e}");
        assert_eq!(relay().label(), "10.0.0.5:8081");
    }
}
