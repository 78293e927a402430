//! The command line of `tandem-relay`: its flags (each with a `TANDEM_*` variable),
//! how they override the configuration file, and what the binary logs about
//! capacity at start. `main` only parses and starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use ipnet::IpNet;

use crate::Config;

/// STUN/TURN server. Flags (and TANDEM_* variables) override the config file.
#[derive(Debug, Parser)]
#[command(name = "tandem-relay", version)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file and flags, the TLS certificate and key, the
    /// control secret file), print a summary without secrets and exit: 0 when it can
    /// start, 2 when not.
    #[arg(long)]
    pub check_config: bool,
    /// Listening address (repeatable).
    #[arg(long, env = "TANDEM_LISTENING_IP", value_delimiter = ',')]
    listening_ip: Vec<IpAddr>,
    /// Listening UDP port (default 3478).
    #[arg(long, env = "TANDEM_LISTENING_PORT")]
    listening_port: Option<u16>,
    /// Address relayed sockets bind to (repeatable; default: the listening addresses).
    #[arg(long, env = "TANDEM_RELAY_IP", value_delimiter = ',')]
    relay_ip: Vec<IpAddr>,
    /// Public address advertised for relayed sockets.
    #[arg(long, env = "TANDEM_EXTERNAL_IP")]
    external_ip: Option<IpAddr>,
    /// Lowest relayed port (default 49152).
    #[arg(long, env = "TANDEM_MIN_PORT")]
    min_port: Option<u16>,
    /// Highest relayed port (default 65535).
    #[arg(long, env = "TANDEM_MAX_PORT")]
    max_port: Option<u16>,
    /// Realm of the long-term credentials.
    #[arg(long, env = "TANDEM_REALM")]
    realm: Option<String>,
    /// Long-term user NAME:PASSWORD (repeatable).
    #[arg(long, short = 'u', env = "TANDEM_USER", value_delimiter = ',')]
    user: Vec<String>,
    /// Shared secret for REST credentials (repeatable, for rotation).
    #[arg(long, env = "TANDEM_STATIC_AUTH_SECRET", value_delimiter = ',')]
    static_auth_secret: Vec<String>,
    /// Allow relaying to loopback peers (tests only).
    #[arg(long, env = "TANDEM_ALLOW_LOOPBACK_PEERS")]
    allow_loopback_peers: bool,
    /// Peer range to allow (CIDR, repeatable).
    #[arg(long, env = "TANDEM_ALLOWED_PEER_IP", value_delimiter = ',')]
    allowed_peer_ip: Vec<IpNet>,
    /// Peer range to deny (CIDR, repeatable).
    #[arg(long, env = "TANDEM_DENIED_PEER_IP", value_delimiter = ',')]
    denied_peer_ip: Vec<IpNet>,
    /// Log filter: a level (error, warn, info, debug, trace, off) or target=level list.
    #[arg(long, env = "TANDEM_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format: text, or json (one object per line).
    #[arg(long, env = "TANDEM_LOG_FORMAT")]
    log_format: Option<tandem_ops::logging::LogFormat>,
    /// Log client and peer addresses in clear.
    #[arg(long, env = "TANDEM_LOG_ADDRESSES")]
    log_addresses: bool,
    /// SOFTWARE attribute in responses (off unless set).
    #[arg(long, env = "TANDEM_SOFTWARE")]
    software: Option<String>,
    /// Allocation lifetime in seconds when the client asks for none (default 600).
    #[arg(long, env = "TANDEM_DEFAULT_LIFETIME")]
    default_lifetime: Option<u32>,
    /// Longest allocation lifetime in seconds a client may ask for (default 3600).
    #[arg(long, env = "TANDEM_MAX_LIFETIME")]
    max_lifetime: Option<u32>,
    /// Seconds a nonce stays valid (default 600).
    #[arg(long, env = "TANDEM_NONCE_LIFETIME")]
    nonce_lifetime: Option<u64>,
    /// Allocations per user, over all workers (0 = unlimited; default 64).
    #[arg(long, env = "TANDEM_USER_QUOTA")]
    user_quota: Option<u32>,
    /// Allocations in total (0 = unlimited; default 65536).
    #[arg(long, env = "TANDEM_TOTAL_QUOTA")]
    total_quota: Option<u32>,
    /// Permissions per allocation (default 64).
    #[arg(long, env = "TANDEM_MAX_PERMISSIONS")]
    max_permissions: Option<u32>,
    /// Channels per allocation (default 64).
    #[arg(long, env = "TANDEM_MAX_CHANNELS")]
    max_channels: Option<u32>,
    /// Relayed bytes per second per allocation (0 = unlimited, the default).
    #[arg(long, env = "TANDEM_MAX_BPS")]
    max_bps: Option<u64>,
    /// 401 answers per second per source IP (0 = unlimited; default 20).
    #[arg(long, env = "TANDEM_UNAUTHORIZED_RATE")]
    unauthorized_rate: Option<u32>,
    /// Refuse channel numbers 0x5000-0x7FFF (RFC 8656); by default the RFC 5766
    /// range 0x4000-0x7FFF is accepted, as coturn does.
    #[arg(long, env = "TANDEM_STRICT_CHANNEL_RANGE")]
    strict_channel_range: bool,
    /// Datapath: auto (io_uring when the kernel allows it), uring or portable.
    #[arg(long, env = "TANDEM_IO", value_enum)]
    io: Option<crate::io::IoMode>,
    /// Worker threads (default: one per available core).
    #[arg(long, env = "TANDEM_WORKERS")]
    workers: Option<usize>,
    /// Private address for /metrics and /health.
    #[arg(long, env = "TANDEM_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Private address for the control API through which signaling places media
    /// sessions (a public one is refused without --control-allow-public).
    #[arg(long, env = "TANDEM_CONTROL_LISTEN")]
    control_listen: Option<SocketAddr>,
    /// Control API bearer token (repeatable, for rotation; at least 16 characters).
    /// A flag is visible to every user of the host in the process list: prefer
    /// TANDEM_CONTROL_SECRET or --control-secret-file.
    #[arg(long, env = "TANDEM_CONTROL_SECRET", value_delimiter = ',')]
    control_secret: Vec<String>,
    /// File with one control API token per line (blank lines and # comments ignored).
    #[arg(long, env = "TANDEM_CONTROL_SECRET_FILE")]
    control_secret_file: Option<PathBuf>,
    /// Let --control-listen be a public or wildcard address.
    #[arg(long, env = "TANDEM_CONTROL_ALLOW_PUBLIC")]
    control_allow_public: bool,
    /// Seconds without media from either side after which a media session ends.
    #[arg(long, env = "TANDEM_MEDIA_INACTIVITY_TIMEOUT")]
    media_inactivity_timeout: Option<u64>,
    /// Seconds after which a media session ends whatever happens.
    #[arg(long, env = "TANDEM_MEDIA_MAX_DURATION")]
    media_max_duration: Option<u64>,
    /// Seconds SIGTERM keeps relaying existing allocations and media sessions (new
    /// ones refused, /ready 503) before the relay stops (default 30).
    #[arg(long, env = "TANDEM_DRAIN_TIMEOUT")]
    drain_timeout: Option<u64>,
    /// Most media sessions on this relay (0 = no limit but the ports).
    #[arg(long, env = "TANDEM_MEDIA_MAX_SESSIONS")]
    media_max_sessions: Option<u32>,
    /// TURN over TLS port (default 5349).
    #[arg(long, env = "TANDEM_TLS_LISTENING_PORT")]
    tls_listening_port: Option<u16>,
    /// TLS certificate chain, PEM (read again on SIGHUP).
    #[arg(long, env = "TANDEM_CERT")]
    cert: Option<PathBuf>,
    /// TLS private key, PEM (read again on SIGHUP).
    #[arg(long, env = "TANDEM_PKEY")]
    pkey: Option<PathBuf>,
    /// Do not serve STUN/TURN over UDP.
    #[arg(long, env = "TANDEM_NO_UDP")]
    no_udp: bool,
    /// Do not serve TURN over TCP.
    #[arg(long, env = "TANDEM_NO_TCP")]
    no_tcp: bool,
    /// Do not serve TURN over TLS.
    #[arg(long, env = "TANDEM_NO_TLS")]
    no_tls: bool,
    /// Accepted for coturn compatibility: DTLS is not served.
    #[arg(long, env = "TANDEM_NO_DTLS")]
    no_dtls: bool,
    /// TCP and TLS connections open at once.
    #[arg(long, env = "TANDEM_STREAM_MAX_CONNECTIONS")]
    stream_max_connections: Option<usize>,
    /// TCP and TLS connections open at once from one source IP.
    #[arg(long, env = "TANDEM_STREAM_MAX_CONNECTIONS_PER_IP")]
    stream_max_connections_per_ip: Option<u32>,
    /// Seconds for a TLS handshake.
    #[arg(long, env = "TANDEM_STREAM_HANDSHAKE_TIMEOUT")]
    stream_handshake_timeout: Option<u64>,
    /// Seconds a connection without an allocation may stay silent.
    #[arg(long, env = "TANDEM_STREAM_IDLE_TIMEOUT")]
    stream_idle_timeout: Option<u64>,
    /// Bytes queued towards one client before it is dropped as a slow reader.
    #[arg(long, env = "TANDEM_STREAM_MAX_BUFFERED")]
    stream_max_buffered: Option<usize>,
    /// Largest STUN or ChannelData message read from a stream.
    #[arg(long, env = "TANDEM_STREAM_MAX_FRAME")]
    stream_max_frame: Option<usize>,
    /// TCP allocations (RFC 6062): peer connections per allocation.
    #[arg(long, env = "TANDEM_TCP_CONNECTIONS_PER_ALLOCATION")]
    tcp_connections_per_allocation: Option<u32>,
    /// TCP allocations: peer connections in total.
    #[arg(long, env = "TANDEM_TCP_CONNECTIONS_TOTAL")]
    tcp_connections_total: Option<u32>,
    /// TCP allocations: seconds a Connect may take to reach the peer.
    #[arg(long, env = "TANDEM_TCP_CONNECT_TIMEOUT")]
    tcp_connect_timeout: Option<u64>,
    /// TCP allocations: seconds a peer connection waits for ConnectionBind.
    #[arg(long, env = "TANDEM_TCP_BIND_TIMEOUT")]
    tcp_bind_timeout: Option<u64>,
}

/// Reads the configuration file (if any), applies the flags and variables on top and
/// validates the result.
pub fn load(args: Args) -> Result<Config, crate::config::ConfigError> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    args.apply(&mut config);
    config.validate()?;
    Ok(config)
}

/// `--check-config`: what start-up would read besides the configuration itself (the
/// TLS certificate and key, the control secret file), and a summary without secrets.
pub fn check(c: &Config) -> Result<String, String> {
    use std::fmt::Write as _;
    let tls = match (c.no_tls, &c.cert, &c.pkey) {
        (false, Some(cert), Some(key)) => {
            crate::driver::stream::check_tls_files(cert, key).map_err(|e| e.to_string())?;
            format!("port {} ({})", c.tls_listening_port, cert.display())
        }
        (false, Some(_), None) | (false, None, Some(_)) => {
            return Err("TLS needs both cert and pkey".into())
        }
        _ => "off".into(),
    };
    let control_tokens = c.control_secrets().map_err(|e| e.to_string())?.len();
    let list = |v: &[IpAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let on = |b: bool| if b { "off" } else { "on" };
    let mut o = String::new();
    let _ = writeln!(o, "configuration OK");
    let _ = writeln!(
        o,
        "listening      {} port {}",
        list(&c.listening_ip),
        c.listening_port
    );
    let _ = writeln!(
        o,
        "transports     udp {}, tcp {}, tls {}",
        on(c.no_udp),
        on(c.no_tcp),
        tls
    );
    let relay_ips = if c.relay_ip.is_empty() {
        list(&c.listening_ip)
    } else {
        list(&c.relay_ip)
    };
    let _ = writeln!(
        o,
        "relay ports    {} {}-{}",
        relay_ips, c.min_port, c.max_port
    );
    if let Some(e) = c.external_ip {
        let _ = writeln!(o, "external ip    {e}");
    }
    let _ = writeln!(
        o,
        "credentials    realm {:?}, {} static user(s), {} REST secret(s)",
        c.realm,
        c.user.len(),
        c.static_auth_secret.len()
    );
    let _ = writeln!(
        o,
        "quotas         {} per user, {} in total (0 = unlimited)",
        c.user_quota, c.total_quota
    );
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    let _ = writeln!(o, "metrics        {}", show(c.metrics_listen));
    let _ = writeln!(
        o,
        "control API    {} ({} token(s))",
        show(c.control_listen),
        control_tokens
    );
    let _ = writeln!(o, "logs           {} at {:?}", c.log_format, c.log_level);
    Ok(o)
}

impl Args {
    /// Override `c` with the flags and variables that were given.
    pub fn apply(self, c: &mut Config) {
        fn set<T>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
        fn set_list<T>(dst: &mut Vec<T>, v: Vec<T>) {
            if !v.is_empty() {
                *dst = v;
            }
        }
        set_list(&mut c.listening_ip, self.listening_ip);
        set(&mut c.listening_port, self.listening_port);
        set_list(&mut c.relay_ip, self.relay_ip);
        if self.external_ip.is_some() {
            c.external_ip = self.external_ip;
        }
        set(&mut c.min_port, self.min_port);
        set(&mut c.max_port, self.max_port);
        set(&mut c.realm, self.realm);
        set_list(&mut c.user, self.user);
        set_list(&mut c.static_auth_secret, self.static_auth_secret);
        c.allow_loopback_peers |= self.allow_loopback_peers;
        set_list(&mut c.allowed_peer_ip, self.allowed_peer_ip);
        set_list(&mut c.denied_peer_ip, self.denied_peer_ip);
        set(&mut c.log_level, self.log_level);
        set(&mut c.log_format, self.log_format);
        c.log_addresses |= self.log_addresses;
        if self.software.is_some() {
            c.software = self.software;
        }
        set(&mut c.default_lifetime, self.default_lifetime);
        set(&mut c.max_lifetime, self.max_lifetime);
        set(&mut c.nonce_lifetime, self.nonce_lifetime);
        set(&mut c.user_quota, self.user_quota);
        set(&mut c.total_quota, self.total_quota);
        set(&mut c.max_permissions, self.max_permissions);
        set(&mut c.max_channels, self.max_channels);
        set(&mut c.max_bps, self.max_bps);
        set(&mut c.unauthorized_rate, self.unauthorized_rate);
        c.strict_channel_range |= self.strict_channel_range;
        set(&mut c.io, self.io);
        set(&mut c.workers, self.workers);
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.control_listen.is_some() {
            c.control_listen = self.control_listen;
        }
        set_list(&mut c.control_secret, self.control_secret);
        if self.control_secret_file.is_some() {
            c.control_secret_file = self.control_secret_file;
        }
        c.control_allow_public |= self.control_allow_public;
        set(
            &mut c.media_inactivity_timeout,
            self.media_inactivity_timeout,
        );
        set(&mut c.media_max_duration, self.media_max_duration);
        set(&mut c.media_max_sessions, self.media_max_sessions);
        set(&mut c.drain_timeout, self.drain_timeout);
        set(&mut c.tls_listening_port, self.tls_listening_port);
        if self.cert.is_some() {
            c.cert = self.cert;
        }
        if self.pkey.is_some() {
            c.pkey = self.pkey;
        }
        c.no_udp |= self.no_udp;
        c.no_tcp |= self.no_tcp;
        c.no_tls |= self.no_tls;
        c.no_dtls |= self.no_dtls;
        set(&mut c.stream_max_connections, self.stream_max_connections);
        set(
            &mut c.stream_max_connections_per_ip,
            self.stream_max_connections_per_ip,
        );
        set(
            &mut c.stream_handshake_timeout,
            self.stream_handshake_timeout,
        );
        set(&mut c.stream_idle_timeout, self.stream_idle_timeout);
        set(&mut c.stream_max_buffered, self.stream_max_buffered);
        set(&mut c.stream_max_frame, self.stream_max_frame);
        set(
            &mut c.tcp_connections_per_allocation,
            self.tcp_connections_per_allocation,
        );
        set(&mut c.tcp_connections_total, self.tcp_connections_total);
        set(&mut c.tcp_connect_timeout, self.tcp_connect_timeout);
        set(&mut c.tcp_bind_timeout, self.tcp_bind_timeout);
    }
}

/// Raise the open file limit and log how many allocations the limit, the relay
/// addresses' port ranges and `total-quota` allow.
pub fn log_capacity(config: &Config) {
    let fmt = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    let nofile = match crate::driver::raise_nofile_limit() {
        Ok((before, after)) => {
            tracing::info!(
                soft_before = %fmt(before.soft),
                soft = %fmt(after.soft),
                hard = %fmt(after.hard),
                "open file limit (RLIMIT_NOFILE): soft raised to the hard limit"
            );
            after.soft
        }
        Err(e) => {
            let now = crate::driver::nofile_limit();
            tracing::warn!(error = %e, limit = ?now, "could not raise the open file limit");
            now.and_then(|l| l.soft)
        }
    };
    let ports = u64::from(config.max_port.saturating_sub(config.min_port)) + 1;
    let by_ports = ports * config.relay_ips().len() as u64;
    // One descriptor per allocation, plus the listening sockets, rings and logs.
    let by_files = nofile.map(|n| n.saturating_sub(64));
    let quota = (config.total_quota > 0).then_some(u64::from(config.total_quota));
    let cap = [Some(by_ports), by_files, quota]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(by_ports);
    tracing::info!(
        relay_addresses = config.relay_ips().len(),
        ports_per_address = ports,
        by_ports,
        by_open_file_limit = %fmt(by_files),
        total_quota = %fmt(quota),
        "allocations possible: at most {cap}"
    );
    if by_files.is_some_and(|f| f < by_ports.min(quota.unwrap_or(u64::MAX))) {
        tracing::warn!(
            "the open file limit caps allocations at about {}; raise the hard limit \
             (ulimit -Hn, systemd LimitNOFILE) for more",
            by_files.unwrap_or(0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let mut c = Config::default();
        let args = Args::try_parse_from([
            "tandem-relay",
            "--control-listen",
            "10.0.0.1:9000",
            "--control-secret",
            "aaaaaaaaaaaaaaaa",
            "--control-secret",
            "bbbbbbbbbbbbbbbb",
            "--control-secret-file",
            "/run/secrets/control",
            "--control-allow-public",
            "--media-inactivity-timeout",
            "30",
            "--media-max-duration",
            "7200",
            "--media-max-sessions",
            "500",
        ])
        .unwrap();
        args.apply(&mut c);
        assert_eq!(c.control_listen, Some("10.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.control_secret, ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]);
        assert_eq!(
            c.control_secret_file.as_deref(),
            Some(std::path::Path::new("/run/secrets/control"))
        );
        assert!(c.control_allow_public);
        assert_eq!(c.media_inactivity_timeout, 30);
        assert_eq!(c.media_max_duration, 7200);
        assert_eq!(c.media_max_sessions, 500);
    }
}
