//! `[registrar]` section of the signaling configuration.

use serde::{Deserialize, Serialize};

/// Registration lifetimes, digest nonces and the failed-authentication ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Shortest registration accepted (seconds); shorter gets 423 with Min-Expires.
    pub min_expires: u32,
    /// Longest registration granted (seconds); longer requests are cut to it.
    pub max_expires: u32,
    /// Lifetime given when the REGISTER asks for none (seconds).
    pub default_expires: u32,
    /// How long a digest nonce stays valid (seconds); older nonces get `stale=true`.
    pub nonce_ttl: u32,
    /// Nonces whose nonce-count is tracked at once; the oldest are forgotten first
    /// (a forgotten nonce is answered with a fresh stale challenge).
    pub max_tracked_nonces: usize,
    /// Failed authentications from one source address within `auth_fail_window`
    /// seconds that trigger a ban.
    pub auth_fail_limit: u32,
    pub auth_fail_window: u32,
    /// How long a banned source gets 403 to every REGISTER (seconds).
    pub auth_ban_secs: u32,
    /// Source addresses tracked for failures at once.
    pub max_tracked_sources: usize,
    /// Most live bindings per account (all devices together).
    pub max_bindings_per_account: usize,
    /// Most reg-ids (RFC 5626 flows) per instance.
    pub max_reg_ids_per_instance: usize,
    /// Digest algorithms offered, one challenge each, in this order (RFC 8760 2.4: the
    /// preferred first). `SHA-256` and/or `MD5`. The default puts MD5 first: the
    /// common clients (baresip, Linphone, sipp, JsSIP) answer the first challenge only,
    /// and some of them give up on SHA-256 instead of looking further. A deployment
    /// whose clients all do SHA-256 can require it with `["SHA-256"]`.
    pub digest_algorithms: Vec<String>,
    /// Secret for nonce integrity (HMAC-SHA256), hex or any string. Empty: a random one
    /// per process start (nonces then do not survive a restart, clients re-challenge).
    pub nonce_secret: String,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nonce_ttl: 300,
            max_tracked_nonces: 65_536,
            auth_fail_limit: 5,
            auth_fail_window: 60,
            auth_ban_secs: 300,
            max_tracked_sources: 65_536,
            max_bindings_per_account: 16,
            max_reg_ids_per_instance: 2,
            digest_algorithms: vec!["MD5".to_owned(), "SHA-256".to_owned()],
            nonce_secret: String::new(),
        }
    }
}

impl RegistrarConfig {
    /// Checks values that serde cannot; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_expires == 0 {
            return Err("registrar.min_expires: must be at least 1".into());
        }
        if self.max_expires < self.min_expires {
            return Err("registrar.max_expires: must be >= registrar.min_expires".into());
        }
        if self.default_expires < self.min_expires || self.default_expires > self.max_expires {
            return Err(
                "registrar.default_expires: must lie within min_expires..=max_expires".into(),
            );
        }
        if self.nonce_ttl == 0 {
            return Err("registrar.nonce_ttl: must be at least 1".into());
        }
        if self.max_tracked_nonces == 0 {
            return Err("registrar.max_tracked_nonces: must be at least 1".into());
        }
        if self.auth_fail_limit == 0 {
            return Err("registrar.auth_fail_limit: must be at least 1".into());
        }
        if self.max_bindings_per_account == 0 {
            return Err("registrar.max_bindings_per_account: must be at least 1".into());
        }
        if self.max_reg_ids_per_instance == 0 {
            return Err("registrar.max_reg_ids_per_instance: must be at least 1".into());
        }
        if self.digest_algorithms.is_empty() {
            return Err("registrar.digest_algorithms: must name at least one algorithm".into());
        }
        for (i, a) in self.digest_algorithms.iter().enumerate() {
            if a != "SHA-256" && a != "MD5" {
                return Err(format!(
                    "registrar.digest_algorithms: unknown algorithm {a:?} (SHA-256 or MD5)"
                ));
            }
            if self.digest_algorithms.iter().skip(i + 1).any(|b| b == a) {
                return Err(format!("registrar.digest_algorithms: {a} listed twice"));
            }
        }
        Ok(())
    }

    /// The configured algorithms (validated: unknown names are skipped).
    pub fn algorithms(&self) -> Vec<crate::registrar::digest::Algorithm> {
        self.digest_algorithms
            .iter()
            .filter_map(|a| crate::registrar::digest::Algorithm::parse(a))
            .collect()
    }
}
