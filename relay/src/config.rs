//! Relay configuration: a TOML file (`deny_unknown_fields`, keys named like coturn's
//! options), overridden by `TANDEM_*` environment variables and command-line flags.
//! Every bad value fails at start with the key's name.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::turn::{self, PeerPolicy, Quotas};

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Whether `ip` is an address that does not face the public network: loopback,
/// RFC 1918, CGNAT (RFC 6598), link-local, or IPv6 unique-local. The wildcard
/// address is not: it listens on every interface, the public ones too.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The configuration file. Field names are the keys in kebab-case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Addresses to listen on for STUN/TURN over UDP.
    pub listening_ip: Vec<IpAddr>,
    pub listening_port: u16,
    /// Addresses relayed sockets bind to (default: the listening addresses).
    pub relay_ip: Vec<IpAddr>,
    /// Public address advertised in XOR-RELAYED-ADDRESS (1:1 NAT).
    pub external_ip: Option<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    pub realm: String,
    /// Static long-term users, `name:password`.
    pub user: Vec<String>,
    /// coturn `use-auth-secret` shared secrets; several for rotation.
    pub static_auth_secret: Vec<String>,
    pub allow_loopback_peers: bool,
    pub allowed_peer_ip: Vec<IpNet>,
    pub denied_peer_ip: Vec<IpNet>,
    pub log_level: String,
    /// `text` (default) or `json`, one object per line.
    pub log_format: tandem_ops::logging::LogFormat,
    /// Log client and peer addresses in clear (off: they are redacted).
    pub log_addresses: bool,
    /// Private listener for /metrics and /health (off unless set).
    pub metrics_listen: Option<SocketAddr>,
    /// SOFTWARE attribute (off unless set).
    pub software: Option<String>,
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub nonce_lifetime: u64,
    /// Allocations per user (0 = unlimited), counted over all workers.
    pub user_quota: u32,
    /// Allocations in total (0 = unlimited), counted over all workers.
    pub total_quota: u32,
    pub max_permissions: u32,
    pub max_channels: u32,
    /// Relayed bytes per second per allocation (0 = unlimited).
    pub max_bps: u64,
    /// 401 answers per second per source IP (0 = unlimited).
    pub unauthorized_rate: u32,
    /// Accept only RFC 8656 channel numbers 0x4000-0x4FFF (default: RFC 5766's
    /// 0x4000-0x7FFF, as clients in the field still use it).
    pub strict_channel_range: bool,
    /// Datapath: `auto` (io_uring when the kernel allows it, else portable),
    /// `uring` (fail at start without it) or `portable`.
    pub io: crate::io::IoMode,
    /// Worker threads, each with its own datapath, listening socket (SO_REUSEPORT)
    /// and share of the allocations; 0 (the default) = one per available core.
    pub workers: usize,
    /// Private listener for the control API through which signaling places media
    /// sessions (off unless set). A public address is refused unless
    /// `control-allow-public` is set.
    pub control_listen: Option<SocketAddr>,
    /// Bearer tokens the control API accepts (several, for rotation). Prefer
    /// `control-secret-file` or `TANDEM_CONTROL_SECRET` to a command-line flag, which
    /// other users of the host can read in the process list.
    pub control_secret: Vec<String>,
    /// A file with one control API token per line (blank lines and `#` comments
    /// ignored), read at start.
    pub control_secret_file: Option<std::path::PathBuf>,
    /// Let `control-listen` be a public (or wildcard) address.
    pub control_allow_public: bool,
    /// Seconds without media from either side after which a media session ends.
    pub media_inactivity_timeout: u64,
    /// Seconds after which a media session ends whatever happens.
    pub media_max_duration: u64,
    /// Most media sessions on this relay (0 = no limit but the ports).
    pub media_max_sessions: u32,
    /// Seconds SIGTERM waits, once new allocations and media sessions are refused,
    /// for the existing ones to end before the relay stops anyway.
    pub drain_timeout: u64,
    /// Port of TURN over TLS (coturn `tls-listening-port`; 443 works too).
    pub tls_listening_port: u16,
    /// TLS certificate chain (PEM); TLS listens only with `cert` and `pkey`. Read
    /// again on SIGHUP.
    pub cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM).
    pub pkey: Option<std::path::PathBuf>,
    /// Do not serve STUN/TURN over UDP (relayed sockets stay UDP).
    pub no_udp: bool,
    /// Do not serve TURN over TCP on the listening port.
    pub no_tcp: bool,
    /// Do not serve TURN over TLS.
    pub no_tls: bool,
    /// Accepted for coturn command-line compatibility; DTLS is not served.
    pub no_dtls: bool,
    /// TCP and TLS connections open at once.
    pub stream_max_connections: usize,
    /// TCP and TLS connections open at once from one source IP.
    pub stream_max_connections_per_ip: u32,
    /// Seconds for a TLS handshake.
    pub stream_handshake_timeout: u64,
    /// Seconds a connection without an allocation may stay silent.
    pub stream_idle_timeout: u64,
    /// Bytes queued towards one client before it is disconnected as a slow reader.
    pub stream_max_buffered: usize,
    /// Largest STUN or ChannelData message read from a stream (64 to 65540).
    pub stream_max_frame: usize,
    /// RFC 6062 TCP allocations: peer connections per allocation.
    pub tcp_connections_per_allocation: u32,
    /// RFC 6062 TCP allocations: peer connections in total.
    pub tcp_connections_total: u32,
    /// Seconds a Connect may take to reach the peer (447 after; at least 30 by RFC
    /// 6062, lower only for tests).
    pub tcp_connect_timeout: u64,
    /// Seconds a peer connection waits for the client's ConnectionBind.
    pub tcp_bind_timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        let q = Quotas::default();
        Config {
            listening_ip: Vec::new(),
            listening_port: 3478,
            relay_ip: Vec::new(),
            external_ip: None,
            min_port: 49152,
            max_port: 65535,
            realm: "tandem".into(),
            user: Vec::new(),
            static_auth_secret: Vec::new(),
            allow_loopback_peers: false,
            allowed_peer_ip: Vec::new(),
            denied_peer_ip: Vec::new(),
            log_level: "info".into(),
            log_format: tandem_ops::logging::LogFormat::Text,
            log_addresses: false,
            metrics_listen: None,
            software: None,
            default_lifetime: 600,
            max_lifetime: 3600,
            nonce_lifetime: 600,
            user_quota: q.allocations_per_user,
            total_quota: q.total_allocations,
            max_permissions: q.permissions_per_allocation,
            max_channels: q.channels_per_allocation,
            max_bps: q.bytes_per_sec,
            unauthorized_rate: q.unauthorized_per_sec,
            strict_channel_range: false,
            io: crate::io::IoMode::Auto,
            workers: 0,
            control_listen: None,
            control_secret: Vec::new(),
            control_secret_file: None,
            control_allow_public: false,
            media_inactivity_timeout: 60,
            media_max_duration: 12 * 3600,
            media_max_sessions: 0,
            drain_timeout: 30,
            tls_listening_port: 5349,
            cert: None,
            pkey: None,
            no_udp: false,
            no_tcp: false,
            no_tls: false,
            no_dtls: false,
            stream_max_connections: 10_000,
            stream_max_connections_per_ip: 1024,
            stream_handshake_timeout: 10,
            stream_idle_timeout: 60,
            stream_max_buffered: 256 * 1024,
            stream_max_frame: 4096,
            tcp_connections_per_allocation: 32,
            tcp_connections_total: 8192,
            tcp_connect_timeout: 30,
            tcp_bind_timeout: 30,
        }
    }
}

impl Config {
    /// Parse a TOML document.
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::from_toml(&text, &p)
    }

    /// Check values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listening_ip.is_empty() {
            return Err(invalid("listening-ip", "at least one address is required"));
        }
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err(invalid(
                "min-port",
                "must be non-zero and not above max-port",
            ));
        }
        if self.realm.is_empty() || self.realm.len() > 127 {
            return Err(invalid("realm", "must be 1 to 127 bytes"));
        }
        for u in &self.user {
            match u.split_once(':') {
                Some((n, p)) if !n.is_empty() && !p.is_empty() => {}
                _ => return Err(invalid("user", "entries must be NAME:PASSWORD")),
            }
        }
        if self.user.is_empty() && self.static_auth_secret.is_empty() {
            return Err(invalid(
                "user",
                "set at least one user or static-auth-secret",
            ));
        }
        if self.static_auth_secret.iter().any(String::is_empty) {
            return Err(invalid("static-auth-secret", "must not be empty"));
        }
        for ip in self.relay_ips() {
            if ip.is_unspecified() && self.external_ip.is_none() {
                return Err(invalid(
                    "relay-ip",
                    "a wildcard relay address needs external-ip (or set relay-ip)",
                ));
            }
        }
        if self.default_lifetime == 0 || self.default_lifetime > self.max_lifetime {
            return Err(invalid(
                "default-lifetime",
                "must be non-zero and not above max-lifetime",
            ));
        }
        if self.drain_timeout > 86_400 {
            return Err(invalid("drain-timeout", "at most 86400 seconds"));
        }
        if self.nonce_lifetime == 0 {
            return Err(invalid("nonce-lifetime", "must be non-zero"));
        }
        if !valid_log_filter(&self.log_level) {
            return Err(invalid(
                "log-level",
                "expected a level (error, warn, info, debug, trace, off) or target=level list",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid("workers", "at most 1024"));
        }
        if let Some(addr) = self.control_listen {
            if !self.control_allow_public && !is_private(addr.ip()) {
                return Err(invalid(
                    "control-listen",
                    format!(
                        "{} is not a private address (loopback, RFC 1918, CGNAT, ULA or \
                         link-local); the control API places calls' media and must not face \
                         the public network (set control-allow-public to override)",
                        addr.ip()
                    ),
                ));
            }
            if self.control_secrets()?.is_empty() {
                return Err(invalid(
                    "control-secret",
                    "control-listen needs at least one token (control-secret, \
                     control-secret-file or TANDEM_CONTROL_SECRET)",
                ));
            }
        }
        for s in &self.control_secret {
            if s.len() < 16 {
                return Err(invalid(
                    "control-secret",
                    "tokens must be at least 16 characters",
                ));
            }
        }
        if self.media_inactivity_timeout == 0 {
            return Err(invalid("media-inactivity-timeout", "must be non-zero"));
        }
        if self.media_max_duration == 0 {
            return Err(invalid("media-max-duration", "must be non-zero"));
        }
        if self.cert.is_some() != self.pkey.is_some() {
            return Err(invalid("cert", "cert and pkey go together"));
        }
        let tls = !self.no_tls && self.cert.is_some();
        if self.no_udp && self.no_tcp && !tls {
            return Err(invalid(
                "no-udp",
                "nothing to listen on: UDP and TCP are off and TLS has no cert/pkey",
            ));
        }
        if self.stream_max_connections == 0 || self.stream_max_connections_per_ip == 0 {
            return Err(invalid("stream-max-connections", "must be non-zero"));
        }
        if self.stream_handshake_timeout == 0 {
            return Err(invalid("stream-handshake-timeout", "must be non-zero"));
        }
        if self.stream_idle_timeout == 0 {
            return Err(invalid("stream-idle-timeout", "must be non-zero"));
        }
        if self.stream_max_buffered < 4096 {
            return Err(invalid("stream-max-buffered", "at least 4096 bytes"));
        }
        if !(64..=65_540).contains(&self.stream_max_frame) {
            return Err(invalid("stream-max-frame", "64 to 65540 bytes"));
        }
        if self.tcp_connect_timeout == 0 {
            return Err(invalid("tcp-connect-timeout", "must be non-zero"));
        }
        if self.tcp_bind_timeout == 0 {
            return Err(invalid("tcp-bind-timeout", "must be non-zero"));
        }
        Ok(())
    }

    /// Every control API token: `control-secret` and the lines of
    /// `control-secret-file`.
    pub fn control_secrets(&self) -> Result<Vec<String>, ConfigError> {
        let mut out = self.control_secret.clone();
        if let Some(path) = &self.control_secret_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if line.len() < 16 {
                    return Err(invalid(
                        "control-secret-file",
                        "tokens must be at least 16 characters",
                    ));
                }
                out.push(line.to_owned());
            }
        }
        Ok(out)
    }

    /// The media core's settings for one of `workers` workers.
    pub fn media(&self, workers: usize) -> crate::media::MediaConfig {
        let per_worker = match self.media_max_sessions {
            0 => crate::media::MediaConfig::default().max_sessions,
            n => (n as usize).div_ceil(workers.max(1)),
        };
        crate::media::MediaConfig {
            inactivity_timeout: Duration::from_secs(self.media_inactivity_timeout),
            max_duration: Duration::from_secs(self.media_max_duration),
            max_sessions: per_worker,
            external_ip: self.external_ip,
        }
    }

    /// The limits of the TCP and TLS listeners.
    pub fn stream_limits(&self) -> crate::driver::stream::StreamLimits {
        crate::driver::stream::StreamLimits {
            max_connections: self.stream_max_connections,
            max_per_ip: self.stream_max_connections_per_ip,
            handshake_timeout: Duration::from_secs(self.stream_handshake_timeout),
            idle_timeout: Duration::from_secs(self.stream_idle_timeout),
            max_buffered: self.stream_max_buffered,
            max_frame: self.stream_max_frame,
        }
    }

    /// The timeouts of RFC 6062 TCP allocations' connections (a bound connection
    /// whose reader stalls is dropped after `stream-idle-timeout`).
    pub(crate) fn tcp_timeouts(&self) -> crate::driver::tcp_relay::TcpTimeouts {
        crate::driver::tcp_relay::TcpTimeouts {
            connect: Duration::from_secs(self.tcp_connect_timeout),
            stall: Duration::from_secs(self.stream_idle_timeout),
        }
    }

    /// The number of workers to run (`workers`, or one per available core).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Where relayed sockets bind.
    pub fn relay_ips(&self) -> Vec<IpAddr> {
        if self.relay_ip.is_empty() {
            self.listening_ip.clone()
        } else {
            self.relay_ip.clone()
        }
    }

    /// The configuration of the sans-IO core. `listening` are the bound listening
    /// addresses (never valid peers).
    pub fn core(&self, listening: &[SocketAddr]) -> turn::Config {
        let users = self
            .user
            .iter()
            .filter_map(|u| u.split_once(':'))
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
            .collect();
        let mut own: Vec<SocketAddr> = listening.to_vec();
        if let Some(ext) = self.external_ip {
            own.extend(listening.iter().map(|l| SocketAddr::new(ext, l.port())));
        }
        turn::Config {
            realm: self.realm.clone(),
            users,
            auth_secrets: self.static_auth_secret.clone(),
            software: self.software.clone(),
            external_ip: self.external_ip,
            policy: PeerPolicy {
                allow_loopback: self.allow_loopback_peers,
                allowed: self.allowed_peer_ip.clone(),
                denied: self.denied_peer_ip.clone(),
                own,
            },
            quotas: Quotas {
                allocations_per_user: self.user_quota,
                total_allocations: self.total_quota,
                permissions_per_allocation: self.max_permissions,
                channels_per_allocation: self.max_channels,
                bytes_per_sec: self.max_bps,
                unauthorized_per_sec: self.unauthorized_rate,
                unauthorized_burst: self.unauthorized_rate.saturating_mul(2),
            },
            default_lifetime: self.default_lifetime,
            max_lifetime: self.max_lifetime,
            nonce_lifetime: Duration::from_secs(self.nonce_lifetime),
            strict_channel_numbers: self.strict_channel_range,
            tcp: turn::TcpLimits {
                per_allocation: self.tcp_connections_per_allocation,
                total: self.tcp_connections_total,
                bind_timeout: Duration::from_secs(self.tcp_bind_timeout),
            },
            ..turn::Config::default()
        }
    }
}

/// A level, or comma-separated `target=level` directives (tracing's filter syntax
/// without spans), so a typo is an error rather than a filter that matches nothing.
fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    !s.is_empty()
        && s.split(',').all(|d| match d.split_once('=') {
            None => level(d.trim()),
            Some((t, l)) => {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
                    && level(l.trim())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/relay.toml");
        let c = Config::load(Path::new(path)).expect("config/relay.toml parses");
        c.validate().expect("config/relay.toml is valid");
        assert_eq!(c.listening_port, 3478);
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_key() {
        let e = Config::from_toml("listening-prot = 1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listening-prot"), "{e}");
        let e = Config::from_toml("listening-port = \"abc\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listening-port"), "{e}");
        let e = Config::from_toml("denied-peer-ip = [\"10.0.0.0/33\"]\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("denied-peer-ip"), "{e}");
        let c = Config::from_toml(
            "listening-ip = [\"127.0.0.1\"]\nuser = [\"nopassword\"]\n",
            "x.toml",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`user`"));
        let c = Config::from_toml(
            "listening-ip = [\"127.0.0.1\"]\nuser = [\"a:b\"]\nmin-port = 6000\nmax-port = 5000\n",
            "x.toml",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`min-port`"));
        assert!(valid_log_filter("info"));
        assert!(valid_log_filter("warn,tandem_relay=debug"));
        assert!(!valid_log_filter("loud?!"));
        assert!(!valid_log_filter("tandem_relay=loud"));
    }
}
