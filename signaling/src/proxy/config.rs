//! `[proxy]` section of the signaling configuration.

use serde::{Deserialize, Serialize};

/// Forking proxy settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// How long a forked INVITE rings before every branch is cancelled and the caller
    /// gets the best final response so far (408 when nothing answered), in seconds.
    pub ring_timeout_secs: u64,
    /// Most forked requests in progress at once; more are answered 503.
    pub max_transactions: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            ring_timeout_secs: 60,
            max_transactions: 10_000,
        }
    }
}

impl ProxyConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.ring_timeout_secs) {
            return Err("proxy.ring_timeout_secs: must be between 1 and 3600".into());
        }
        if self.max_transactions == 0 {
            return Err("proxy.max_transactions: must be at least 1".into());
        }
        Ok(())
    }
}
