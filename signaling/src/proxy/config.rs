//! `[proxy]` section of the signaling configuration.

use serde::{Deserialize, Serialize};

/// Forking proxy settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// How long a forked INVITE rings before every branch is cancelled and the caller
    /// gets the best final response so far (408 when nothing answered), in seconds.
    pub ring_timeout_secs: u64,
    /// Most forked requests waiting for their final response at once; more are
    /// answered 503 with Retry-After. A request that has its final response keeps its
    /// branches up to 32 s more on UDP, to cancel late ones and absorb
    /// retransmissions; up to eight times this many are held in all.
    pub max_transactions: usize,
    /// Most simultaneous outgoing calls per account (ringing or established); a further
    /// INVITE is answered 403 "Outgoing Call Limit Reached".
    pub max_outgoing_calls: usize,
    /// An outgoing call whose BYE the proxy never saw stops counting against the limit
    /// after this many seconds.
    pub max_call_secs: u64,
    /// When no registered device has sent any response to an INVITE after this many
    /// seconds, every device of the account with a push token is pushed (0: never;
    /// devices that are not registered are pushed at once either way).
    pub push_after_secs: u64,
    /// How long a call waits for pushed devices to register and join it, from the
    /// push, in seconds. After that the call ends as the ringing devices decide, or
    /// by the account's no-answer rule.
    pub park_timeout_secs: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            ring_timeout_secs: 60,
            max_transactions: 10_000,
            max_outgoing_calls: 5,
            max_call_secs: 4 * 3600,
            push_after_secs: 3,
            park_timeout_secs: 30,
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
        if self.max_outgoing_calls == 0 {
            return Err("proxy.max_outgoing_calls: must be at least 1".into());
        }
        if self.max_call_secs < 60 {
            return Err("proxy.max_call_secs: must be at least 60".into());
        }
        if self.push_after_secs > 60 {
            return Err("proxy.push_after_secs: must be at most 60".into());
        }
        if !(1..=600).contains(&self.park_timeout_secs) {
            return Err("proxy.park_timeout_secs: must be between 1 and 600".into());
        }
        Ok(())
    }
}
