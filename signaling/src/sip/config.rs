//! `[sip]` section of the signaling configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// SIP listeners and transport limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Digest realm offered in challenges. HA1 values are computed with it, so changing
    /// it invalidates every stored password.
    pub realm: String,
    /// UDP listener; `None` disables UDP.
    pub udp_listen: Option<SocketAddr>,
    /// TCP listener; `None` disables TCP.
    pub tcp_listen: Option<SocketAddr>,
    /// TLS listener (off by default); needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS and WSS listeners.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS and WSS listeners.
    pub tls_key: Option<PathBuf>,
    /// SIP over WebSocket listener (RFC 7118, browsers); `None` (the default) disables
    /// it. Clients must ask for the `sip` subprotocol.
    pub ws_listen: Option<SocketAddr>,
    /// SIP over secure WebSocket listener (off by default); needs `tls_cert` and
    /// `tls_key`, the same as `tls_listen`.
    pub wss_listen: Option<SocketAddr>,
    /// Largest SIP message accepted on any transport, in bytes (header and body); on
    /// WebSocket also the largest frame and message.
    pub max_message_size: usize,
    /// Most TCP + TLS + WS + WSS connections open at once; further accepts are closed
    /// at once.
    pub max_connections: usize,
    /// A TCP/TLS connection that carries no data (a WebSocket one: no complete
    /// message or ping) for this long is closed (seconds). Clients keep flows alive
    /// with RFC 5626 CRLF pings (WebSocket pings), well under this.
    pub idle_timeout_secs: u64,
    /// How long a TLS handshake may take (seconds); also bounds the HTTP upgrade of a
    /// WebSocket connection (after the TLS handshake for WSS).
    pub tls_handshake_timeout_secs: u64,
    /// A message on a TCP/TLS stream must be complete this long after its first byte
    /// arrived (seconds), whatever the idle timer says: a sender that trickles a byte
    /// at a time (slowloris) is cut off.
    pub message_timeout_secs: u64,
    /// Most TCP/TLS/WS/WSS connections from one source (an IPv4 address, an IPv6 /64) at
    /// once, so that one source cannot hold every place of `max_connections`.
    pub max_connections_per_source: usize,
    /// Most server transactions held at once (a finished one is held up to 32 s on
    /// UDP to absorb retransmissions); a new request beyond it gets 503 with
    /// Retry-After.
    pub max_transactions: usize,
    /// Most of those one source (IPv4 address, IPv6 /64) may hold; beyond it its new
    /// requests get 503 with Retry-After while others are still served. 0: an eighth
    /// of `max_transactions`. Raise it for a trusted peer that carries many users (an
    /// SBC), whose load all comes from one address.
    pub max_transactions_per_source: usize,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            realm: "tandem.local".to_owned(),
            udp_listen: Some(SocketAddr::from(([127, 0, 0, 1], 5060))),
            tcp_listen: Some(SocketAddr::from(([127, 0, 0, 1], 5060))),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            ws_listen: None,
            wss_listen: None,
            max_message_size: 16 * 1024,
            max_connections: 4096,
            idle_timeout_secs: 600,
            tls_handshake_timeout_secs: 10,
            message_timeout_secs: 20,
            max_connections_per_source: 256,
            max_transactions: 200_000,
            max_transactions_per_source: 0,
        }
    }
}

impl SipConfig {
    /// Checks values that serde cannot; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.realm.is_empty()
            || self
                .realm
                .bytes()
                .any(|b| b == b'"' || b == b'\\' || b < 0x20)
        {
            return Err(
                "sip.realm: must be non-empty and contain no quote, backslash or control character"
                    .into(),
            );
        }
        if self.max_message_size < 1024 || self.max_message_size > 1024 * 1024 {
            return Err("sip.max_message_size: must be between 1024 and 1048576".into());
        }
        if self.max_transactions == 0 {
            return Err("sip.max_transactions: must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("sip.max_connections: must be at least 1".into());
        }
        if self.message_timeout_secs == 0 {
            return Err("sip.message_timeout_secs: must be at least 1".into());
        }
        if self.max_connections_per_source == 0 {
            return Err("sip.max_connections_per_source: must be at least 1".into());
        }
        if self.idle_timeout_secs == 0 {
            return Err("sip.idle_timeout_secs: must be at least 1".into());
        }
        if self.tls_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("sip.tls_listen: needs sip.tls_cert and sip.tls_key".into());
        }
        if self.wss_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("sip.wss_listen: needs sip.tls_cert and sip.tls_key".into());
        }
        Ok(())
    }

    /// The per-source share of the transaction table.
    pub fn transactions_per_source(&self) -> usize {
        match self.max_transactions_per_source {
            0 => (self.max_transactions / 8).max(1),
            n => n,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}
