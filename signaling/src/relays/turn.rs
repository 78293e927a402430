//! TURN REST credentials for apps (`[turn]`), in the scheme coturn calls
//! `use-auth-secret` and `tandem-relay` accepts with `static-auth-secret`: the
//! username is `<expiry>:<account id>` (the Unix time after which the relay refuses
//! it, and the app's own account id: nothing the app does not already know, and no
//! login or phone number in the relay's logs), the password
//! `base64(HMAC-SHA1(secret, username))`. The relay needs nothing but the shared
//! secret; nothing is stored.

use std::path::PathBuf;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use super::config::uri_host;
use super::RelayConfig;
use crate::clock::Clock;
use crate::model::AccountId;

/// `[turn]`. Credentials are minted only when a secret is set (`secret`,
/// `secret_file` or `TANDEM_TURN_SECRET`); otherwise the routes answer 404
/// `turn_not_configured`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// The relays' `static-auth-secret`. Prefer `secret_file` or the environment
    /// variable `TANDEM_TURN_SECRET`, which keep it out of this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file whose first line is the secret (also `TANDEM_TURN_SECRET_FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Seconds a credential is valid (1-604800, default 86400).
    pub ttl_secs: u64,
    /// The TURN URIs handed to apps. Empty (the default): for each `[[relays]]`
    /// entry, `turn:<public_address>:3478?transport=udp` (the relay serves TURN over
    /// UDP; list `?transport=tcp` or `turns:` URIs here once the relays serve them).
    pub uris: Vec<String>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            secret: None,
            secret_file: None,
            ttl_secs: 86_400,
            uris: Vec::new(),
        }
    }
}

impl TurnConfig {
    /// Whether a secret is set (after environment and file were read).
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || self.secret_file.is_some()
    }

    /// Checks the values against the relays; the message starts with the key.
    pub fn validate(&self, relays: &[RelayConfig]) -> Result<(), String> {
        if !(1..=604_800).contains(&self.ttl_secs) {
            return Err("turn.ttl_secs: must be 1-604800".into());
        }
        if let Some(s) = &self.secret {
            if s.len() < 16 || s.chars().any(char::is_whitespace) {
                return Err(
                    "turn.secret: must be at least 16 characters without whitespace".into(),
                );
            }
        }
        for (i, u) in self.uris.iter().enumerate() {
            let ok = ["turn:", "turns:"].iter().any(|p| u.starts_with(p))
                && u.len() > 6
                && !u.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(format!(
                    "turn.uris[{i}]: must be a turn: or turns: URI (RFC 7065): {u:?}"
                ));
            }
        }
        if self.enabled() && self.uris.is_empty() && relays.is_empty() {
            return Err("turn.uris: needed when no [[relays]] entry names a public_address".into());
        }
        Ok(())
    }

    /// The URIs in force: `uris`, or one UDP URI per relay.
    pub fn uris_for(&self, relays: &[RelayConfig]) -> Vec<String> {
        if !self.uris.is_empty() {
            return self.uris.clone();
        }
        relays
            .iter()
            .map(|r| format!("turn:{}:3478?transport=udp", uri_host(&r.public_address)))
            .collect()
    }
}

/// What `POST /me/turn-credentials` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TurnCredentials {
    /// `<expiry unix seconds>:<account id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Seconds from now until the relay refuses the credential.
    pub ttl: u64,
    /// TURN URIs to use them with (RFC 7065).
    pub uris: Vec<String>,
}

/// The minting side of `[turn]`: the secret, the lifetime, the URIs and the clock.
#[derive(Clone)]
pub struct TurnService {
    secret: String,
    ttl_secs: u64,
    uris: Vec<String>,
    clock: Clock,
}

impl std::fmt::Debug for TurnService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnService")
            .field("secret", &"<hidden>")
            .field("ttl_secs", &self.ttl_secs)
            .field("uris", &self.uris)
            .finish()
    }
}

impl TurnService {
    /// From `[turn]` (its secret read: see `SignalingConfig::read_secret_files`) and
    /// the relays; `None` when no secret is set.
    pub fn new(cfg: &TurnConfig, relays: &[RelayConfig], clock: Clock) -> Option<TurnService> {
        Some(TurnService {
            secret: cfg.secret.clone()?,
            ttl_secs: cfg.ttl_secs,
            uris: cfg.uris_for(relays),
            clock,
        })
    }

    /// Credentials for `account`, valid for the configured lifetime from now.
    pub fn mint(&self, account: AccountId) -> TurnCredentials {
        mint(
            self.secret.as_bytes(),
            account,
            self.clock.unix_now(),
            self.ttl_secs,
            self.uris.clone(),
        )
    }
}

/// Credentials for `account` valid `ttl` seconds after `unix_now`.
pub fn mint(
    secret: &[u8],
    account: AccountId,
    unix_now: i64,
    ttl: u64,
    uris: Vec<String>,
) -> TurnCredentials {
    let expiry = u64::try_from(unix_now).unwrap_or(0).saturating_add(ttl);
    let username = format!("{expiry}:{account}");
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials {
        username,
        password,
        ttl,
        uris,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        let c = mint(b"north", 42, 1_700_000_000, 3600, vec![]);
        assert_eq!(c.username, "1700003600:42");
        // HMAC-SHA1("north", "1700003600:42"), computed independently.
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(b"north").unwrap();
        mac.update(b"1700003600:42");
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(c.password, want);
        assert_eq!(c.password.len(), 28);
        assert_eq!(c.ttl, 3600);
    }

    #[test]
    fn default_uris_name_each_relay_over_udp() {
        let relay = |a: &str| RelayConfig {
            control_url: "http://10.0.0.5:8081".into(),
            secret: Some("t".into()),
            secret_file: None,
            public_address: a.into(),
            weight: 1,
        };
        let cfg = TurnConfig {
            secret: Some("x".repeat(16)),
            ..TurnConfig::default()
        };
        assert_eq!(
            cfg.uris_for(&[relay("relay.example.net"), relay("2001:db8::1")]),
            [
                "turn:relay.example.net:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=udp"
            ]
        );
        assert!(cfg.validate(&[]).unwrap_err().starts_with("turn.uris"));
        let bad = TurnConfig {
            uris: vec!["stun:x".into()],
            ..cfg.clone()
        };
        assert!(bad.validate(&[]).unwrap_err().starts_with("turn.uris[0]"));
        let short = TurnConfig {
            secret: Some("short".into()),
            ..cfg
        };
        assert!(short
            .validate(&[relay("h")])
            .unwrap_err()
            .starts_with("turn.secret"));
    }
}
