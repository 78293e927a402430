//! Configuration of `tandem-signaling`: a TOML file (every key optional, unknown keys
//! refused), then `TANDEM_*` environment variables, then command-line flags, each
//! overriding the one before. [`SignalingConfig::validate`] names the key of any bad
//! value so that the process fails at start, not later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::registrar::RegistrarConfig;
use crate::sip::SipConfig;
use crate::store::DeviceLimits;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The message starts with the offending key.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// Directory for the embedded database and the generated admin token.
    pub data_dir: PathBuf,
    /// Country calling code for accounts created without one, and for reading bare
    /// phone numbers given as a login identity.
    pub default_country_code: String,
    pub database: DatabaseConfig,
    pub sip: SipConfig,
    pub registrar: RegistrarConfig,
    /// Forking proxy (`[proxy]`).
    pub proxy: crate::proxy::ProxyConfig,
    /// Prefix dial plan for numbers that are not ours (`[dialplan]`).
    pub dialplan: crate::proxy::DialPlanConfig,
    /// Push notifications (`[push]`, `[push.apns]`, `[push.fcm]`, `[push.webhook]`).
    pub push: crate::push::PushConfig,
    /// Deferred messages (`[messages]`).
    pub messages: crate::push::MessagesConfig,
    pub api: ApiConfig,
    /// Media relays calls are placed on (`[[relays]]`, one table per relay); none:
    /// no relay pool.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<crate::relays::RelayConfig>,
    /// How the relays are checked (`[relay_pool]`).
    pub relay_pool: crate::relays::PoolConfig,
    /// TURN REST credentials for apps (`[turn]`).
    pub turn: crate::relays::TurnConfig,
    /// Default per-class device limits for accounts that set none.
    pub device_limits: DeviceLimits,
    pub log: LogConfig,
    /// What SIGTERM / SIGINT do before the process exits (`[shutdown]`).
    pub shutdown: ShutdownConfig,
}

/// The drain on SIGTERM or SIGINT: `/ready` answers 503, new out-of-dialog SIP
/// requests get 503 with `Retry-After`, ringing calls are ended (CANCEL to the
/// callees, 503 to the caller), then the process waits up to `drain_timeout_secs` for
/// requests in progress and queued pushes before it stops. A second signal stops at
/// once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_secs: 10,
        }
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            data_dir: PathBuf::from("./data"),
            default_country_code: "1".to_owned(),
            database: DatabaseConfig::default(),
            sip: SipConfig::default(),
            registrar: RegistrarConfig::default(),
            proxy: crate::proxy::ProxyConfig::default(),
            dialplan: crate::proxy::DialPlanConfig::default(),
            push: crate::push::PushConfig::default(),
            messages: crate::push::MessagesConfig::default(),
            api: ApiConfig::default(),
            relays: Vec::new(),
            relay_pool: crate::relays::PoolConfig::default(),
            turn: crate::relays::TurnConfig::default(),
            device_limits: DeviceLimits::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://...`; unset: `sqlite://<data_dir>/signaling.db`.
    pub url: Option<String>,
    /// A file holding the URL (first line), for URLs with a password: read at start
    /// and used when `url` is unset. Also `TANDEM_DATABASE_URL_FILE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            url_file: None,
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Private listener of the HTTP API.
    pub listen: SocketAddr,
    /// Bearer token of the administrator routes. Unset: one is generated at first
    /// start and kept in `<data_dir>/admin-token` (mode 0600).
    pub admin_token: Option<String>,
    /// Failed authentications (admin or Basic) from one address within
    /// `auth_fail_window_secs` that make the API refuse it for `auth_ban_secs`.
    pub auth_fail_limit: u32,
    pub auth_fail_window_secs: u64,
    pub auth_ban_secs: u64,
    /// Connections the API serves at once.
    pub max_connections: usize,
    /// Seconds a client has to send a request's header.
    pub header_read_timeout_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            auth_fail_limit: 10,
            auth_fail_window_secs: 60,
            auth_ban_secs: 300,
            max_connections: 1024,
            header_read_timeout_secs: 10,
        }
    }
}

impl ApiConfig {
    pub fn serve_limits(&self) -> crate::http::ServeLimits {
        crate::http::ServeLimits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            ..Default::default()
        }
    }

    pub fn limiter(&self) -> crate::http::limiter::LimiterConfig {
        crate::http::limiter::LimiterConfig {
            limit: self.auth_fail_limit,
            window: std::time::Duration::from_secs(self.auth_fail_window_secs),
            ban: std::time::Duration::from_secs(self.auth_ban_secs),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `info,tandem_signaling::sip=debug`.
    pub level: String,
    /// `text` (default) or `json` (one object per line).
    pub format: tandem_ops::logging::LogFormat,
    /// Show personal data (phone numbers, SIP URIs, addresses) in logs. Debug only.
    pub show_personal_data: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: tandem_ops::logging::LogFormat::Text,
            show_personal_data: false,
        }
    }
}

/// `scheme://user:password@host/...` with the password replaced by `<hidden>`;
/// anything else unchanged.
fn hide_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<hidden>@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// The first line of the file at `path`, trimmed; `key` names the setting in errors.
fn first_line(path: &Path, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{key}: {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

/// Command-line flags; each also reads a `TANDEM_*` environment variable.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "tandem-signaling",
    version,
    about = "SIP registrar and forking proxy for multi-device accounts"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (embedded database, generated admin token).
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://path or postgres://user@host/db. As a flag, for tests
    /// and URLs without a password only (ps shows flags): put a password in
    /// TANDEM_DATABASE_URL, or in a file named by TANDEM_DATABASE_URL_FILE or
    /// database.url_file.
    #[arg(long, env = "TANDEM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// HTTP API listen address (keep it private).
    #[arg(long, env = "TANDEM_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// SIP listen address for both UDP and TCP.
    #[arg(long, env = "TANDEM_SIP_LISTEN")]
    pub sip_listen: Option<SocketAddr>,
    /// SIP UDP listen address (overrides --sip-listen for UDP).
    #[arg(long, env = "TANDEM_SIP_UDP_LISTEN")]
    pub sip_udp_listen: Option<SocketAddr>,
    /// SIP TCP listen address (overrides --sip-listen for TCP).
    #[arg(long, env = "TANDEM_SIP_TCP_LISTEN")]
    pub sip_tcp_listen: Option<SocketAddr>,
    /// SIP TLS listen address (needs sip.tls_cert and sip.tls_key).
    #[arg(long, env = "TANDEM_SIP_TLS_LISTEN")]
    pub sip_tls_listen: Option<SocketAddr>,
    /// SIP over WebSocket listen address (RFC 7118).
    #[arg(long, env = "TANDEM_SIP_WS_LISTEN")]
    pub sip_ws_listen: Option<SocketAddr>,
    /// SIP over secure WebSocket listen address (needs sip.tls_cert and sip.tls_key).
    #[arg(long, env = "TANDEM_SIP_WSS_LISTEN")]
    pub sip_wss_listen: Option<SocketAddr>,
    /// Digest realm.
    #[arg(long, env = "TANDEM_SIP_REALM")]
    pub sip_realm: Option<String>,
    /// Log filter (e.g. info, debug).
    #[arg(long, env = "TANDEM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text, or json (one object per line).
    #[arg(long, env = "TANDEM_LOG_FORMAT")]
    pub log_format: Option<tandem_ops::logging::LogFormat>,
    /// Show personal data in logs (debugging only).
    #[arg(long, env = "TANDEM_LOG_PERSONAL_DATA")]
    pub log_personal_data: bool,
    /// Parse and check the configuration, print it (secrets hidden) and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl SignalingConfig {
    /// Parses TOML text; the error names the key and line.
    pub fn from_toml(text: &str, path: &Path) -> Result<SignalingConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    pub fn from_file(path: &Path) -> Result<SignalingConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// File (if given), then environment-only settings, then flags; validated.
    pub fn load(cli: &Cli) -> Result<SignalingConfig, ConfigError> {
        let mut cfg = match &cli.config {
            Some(p) => Self::from_file(p)?,
            None => SignalingConfig::default(),
        };
        // Secrets come from the environment, never from a flag (ps shows flags).
        if let Ok(token) = std::env::var("TANDEM_ADMIN_TOKEN") {
            cfg.api.admin_token = Some(token);
        }
        if let Some(path) = std::env::var_os("TANDEM_DATABASE_URL_FILE") {
            cfg.database.url_file = Some(PathBuf::from(path));
        }
        if let Ok(secret) = std::env::var("TANDEM_TURN_SECRET") {
            cfg.turn.secret = Some(secret);
        }
        if let Some(path) = std::env::var_os("TANDEM_TURN_SECRET_FILE") {
            cfg.turn.secret_file = Some(PathBuf::from(path));
        }
        cfg.apply(cli);
        cfg.read_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads settings kept in files (`database.url_file`, `turn.secret_file`, each
    /// `relays[].secret_file`) into the configuration; a value set directly wins.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let (None, Some(path)) = (&self.turn.secret, &self.turn.secret_file) {
            self.turn.secret = Some(first_line(path, "turn.secret_file")?);
        }
        for (i, r) in self.relays.iter_mut().enumerate() {
            if let (None, Some(path)) = (&r.secret, &r.secret_file) {
                r.secret = Some(first_line(path, &format!("relays[{i}].secret_file"))?);
            }
        }
        if let (None, Some(path)) = (&self.database.url, &self.database.url_file) {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let url = text.lines().next().unwrap_or("").trim().to_owned();
            if url.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "database.url_file: {} is empty",
                    path.display()
                )));
            }
            self.database.url = Some(url);
        }
        Ok(())
    }

    /// The configuration with its secrets replaced by `<hidden>` (for
    /// `--check-config`): the admin token, the nonce secret, the webhook's secrets and
    /// the password of the database URL.
    pub fn redacted(&self) -> SignalingConfig {
        let mut shown = self.clone();
        if shown.api.admin_token.is_some() {
            shown.api.admin_token = Some("<hidden>".to_owned());
        }
        if !shown.registrar.nonce_secret.is_empty() {
            shown.registrar.nonce_secret = "<hidden>".to_owned();
        }
        if let Some(w) = shown.push.webhook.as_mut() {
            for secret in [&mut w.bearer_token, &mut w.hmac_secret] {
                if secret.is_some() {
                    *secret = Some("<hidden>".to_owned());
                }
            }
        }
        if let Some(url) = shown.database.url.as_mut() {
            *url = hide_url_password(url);
        }
        if shown.turn.secret.is_some() {
            shown.turn.secret = Some("<hidden>".to_owned());
        }
        for r in &mut shown.relays {
            if r.secret.is_some() {
                r.secret = Some("<hidden>".to_owned());
            }
        }
        shown
    }

    /// Applies flags (and the environment variables clap read for them).
    pub fn apply(&mut self, cli: &Cli) {
        if let Some(d) = &cli.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(u) = &cli.database_url {
            self.database.url = Some(u.clone());
        }
        if let Some(a) = cli.api_listen {
            self.api.listen = a;
        }
        if let Some(a) = cli.sip_listen {
            self.sip.udp_listen = Some(a);
            self.sip.tcp_listen = Some(a);
        }
        if let Some(a) = cli.sip_udp_listen {
            self.sip.udp_listen = Some(a);
        }
        if let Some(a) = cli.sip_tcp_listen {
            self.sip.tcp_listen = Some(a);
        }
        if let Some(a) = cli.sip_tls_listen {
            self.sip.tls_listen = Some(a);
        }
        if let Some(a) = cli.sip_ws_listen {
            self.sip.ws_listen = Some(a);
        }
        if let Some(a) = cli.sip_wss_listen {
            self.sip.wss_listen = Some(a);
        }
        if let Some(r) = &cli.sip_realm {
            self.sip.realm = r.clone();
        }
        if let Some(l) = &cli.log_level {
            self.log.level = l.clone();
        }
        if let Some(f) = cli.log_format {
            self.log.format = f;
        }
        if cli.log_personal_data {
            self.log.show_personal_data = true;
        }
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("signaling.db").display()),
        }
    }

    /// Checks what serde cannot; the message starts with the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir: must not be empty".into());
        }
        if crate::number::validate_country_code(&self.default_country_code).is_err() {
            return bad("default_country_code: must be 1-3 digits not starting with 0".into());
        }
        if let Some(url) = &self.database.url {
            let ok = ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|p| url.starts_with(p));
            if !ok {
                return bad("database.url: must start with sqlite:// or postgres://".into());
            }
        }
        if self.database.max_connections == 0 || self.database.max_connections > 1000 {
            return bad("database.max_connections: must be 1-1000".into());
        }
        if let Some(t) = &self.api.admin_token {
            if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(
                    "api.admin_token: must be at least 16 characters without whitespace".into(),
                );
            }
        }
        if self.api.auth_fail_limit == 0 {
            return bad("api.auth_fail_limit: must be at least 1".into());
        }
        if self.api.auth_fail_window_secs == 0 || self.api.auth_fail_window_secs > 86_400 {
            return bad("api.auth_fail_window_secs: must be 1-86400".into());
        }
        if self.api.max_connections == 0 || self.api.max_connections > 1_000_000 {
            return bad("api.max_connections: must be 1-1000000".into());
        }
        if self.api.header_read_timeout_secs == 0 || self.api.header_read_timeout_secs > 3600 {
            return bad("api.header_read_timeout_secs: must be 1-3600".into());
        }
        if self.shutdown.drain_timeout_secs > 3600 {
            return bad("shutdown.drain_timeout_secs: must be at most 3600".into());
        }
        if self.api.auth_ban_secs > 86_400 {
            return bad("api.auth_ban_secs: must be at most 86400".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(format!(
                "log.level: not a valid filter: {:?}",
                self.log.level
            ));
        }
        for (key, v) in [
            ("device_limits.mobile", self.device_limits.mobile),
            ("device_limits.desktop", self.device_limits.desktop),
            ("device_limits.web", self.device_limits.web),
        ] {
            if v > crate::http::types::MAX_LIMIT {
                return bad(format!(
                    "{key}: must be at most {}",
                    crate::http::types::MAX_LIMIT
                ));
            }
        }
        self.sip.validate().map_err(ConfigError::Invalid)?;
        self.registrar.validate().map_err(ConfigError::Invalid)?;
        self.proxy.validate().map_err(ConfigError::Invalid)?;
        self.dialplan.validate().map_err(ConfigError::Invalid)?;
        self.push.validate().map_err(ConfigError::Invalid)?;
        self.messages.validate().map_err(ConfigError::Invalid)?;
        crate::relays::config::validate_relays(&self.relays).map_err(ConfigError::Invalid)?;
        self.relay_pool.validate().map_err(ConfigError::Invalid)?;
        self.turn
            .validate(&self.relays)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }
}
