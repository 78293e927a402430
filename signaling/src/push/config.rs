//! `[push]` and `[messages]` configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::payload::DEFAULT_SYSTEM_COMMAND_TYPE;

/// `[push]`: the send queue, retries, and one optional section per provider. A
/// provider without its section is not configured: REGISTERs naming it in
/// `pn-provider` get 555 (RFC 8599 4.1.2) and API tokens for it are not pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Notifications waiting to be sent; beyond it `notify` fails at once (QueueFull).
    pub queue_size: usize,
    /// Notifications being sent at the same time.
    pub concurrency: usize,
    /// Whole-request timeout of one attempt, seconds.
    pub timeout_secs: u64,
    /// Attempts per notification (first try included) on 5xx, 429 and timeouts.
    pub max_attempts: u32,
    /// First backoff, doubled per attempt up to `backoff_max_ms`; a Retry-After
    /// header replaces it (capped at `retry_after_max_secs`).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_after_max_secs: u64,
    /// Content type of system commands: deferred like any message, never pushed.
    pub system_command_content_type: String,
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub webhook: Option<WebhookConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            queue_size: 4096,
            concurrency: 32,
            timeout_secs: 10,
            max_attempts: 4,
            backoff_initial_ms: 250,
            backoff_max_ms: 8000,
            retry_after_max_secs: 60,
            system_command_content_type: DEFAULT_SYSTEM_COMMAND_TYPE.to_owned(),
            apns: None,
            fcm: None,
            webhook: None,
        }
    }
}

/// `[push.apns]`: token-based authentication (a .p8 signing key from the developer
/// account), HTTP/2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// PKCS#8 PEM file of the ES256 signing key (`AuthKey_<key id>.p8`).
    pub key_file: PathBuf,
    /// 10-character key ID (JWT `kid`).
    pub key_id: String,
    /// 10-character team ID (JWT `iss`).
    pub team_id: String,
    /// App bundle ID: the `apns-topic` of alert pushes; VoIP pushes use
    /// `<topic>.voip`. An RFC 8599 `pn-param` (`<team>.<topic>`) overrides it.
    pub topic: String,
    /// `https://api.push.apple.com` (default), `https://api.sandbox.push.apple.com`,
    /// or a test server; `http://` means HTTP/2 over cleartext (prior knowledge).
    #[serde(default = "default_apns_url")]
    pub base_url: String,
    /// Extra PEM CA certificates to trust (a private gateway or test server), on top
    /// of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_apns_url() -> String {
    "https://api.push.apple.com".to_owned()
}

/// `[push.fcm]`: FCM HTTP v1 with a service account (OAuth2 JWT-bearer grant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account JSON downloaded from the Firebase console.
    pub service_account_file: PathBuf,
    /// Overrides the JSON's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Overrides the JSON's `token_uri` (default `https://oauth2.googleapis.com/token`).
    #[serde(default)]
    pub token_uri: Option<String>,
    #[serde(default = "default_fcm_url")]
    pub base_url: String,
    /// Extra PEM CA certificates to trust (a private gateway or test server), on top
    /// of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_fcm_url() -> String {
    "https://fcm.googleapis.com".to_owned()
}

/// `[push.webhook]`: a JSON POST to one URL (an operator's own push gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra PEM CA certificates to trust (a private gateway or test server), on top
    /// of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Signs each request: `X-Tandem-Signature: sha256=<hex HMAC-SHA256 over
    /// "<X-Tandem-Timestamp>.<body>">`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
}

impl PushConfig {
    /// Checks what serde cannot; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_size == 0 || self.queue_size > 1_000_000 {
            return Err("push.queue_size: must be 1-1000000".into());
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err("push.concurrency: must be 1-10000".into());
        }
        if self.timeout_secs == 0 || self.timeout_secs > 300 {
            return Err("push.timeout_secs: must be 1-300".into());
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            return Err("push.max_attempts: must be 1-10".into());
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            return Err(
                "push.backoff_initial_ms: must be at least 1 and at most backoff_max_ms".into(),
            );
        }
        if self.backoff_max_ms > 600_000 {
            return Err("push.backoff_max_ms: must be at most 600000".into());
        }
        if self.retry_after_max_secs > 3600 {
            return Err("push.retry_after_max_secs: must be at most 3600".into());
        }
        let ct = &self.system_command_content_type;
        if !ct.contains('/') || ct.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(
                "push.system_command_content_type: must be a media type like application/x+json"
                    .into(),
            );
        }
        let url_ok = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        if let Some(a) = &self.apns {
            if a.key_id.is_empty() || !a.key_id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err("push.apns.key_id: must be the alphanumeric key ID".into());
            }
            if a.team_id.is_empty() || !a.team_id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err("push.apns.team_id: must be the alphanumeric team ID".into());
            }
            if a.topic.is_empty() || a.topic.chars().any(|c| c.is_whitespace()) {
                return Err("push.apns.topic: must be the app's bundle ID".into());
            }
            if !url_ok(&a.base_url) {
                return Err("push.apns.base_url: must be an http:// or https:// URL".into());
            }
        }
        if let Some(f) = &self.fcm {
            if !url_ok(&f.base_url) {
                return Err("push.fcm.base_url: must be an http:// or https:// URL".into());
            }
            if f.token_uri.as_deref().is_some_and(|u| !url_ok(u)) {
                return Err("push.fcm.token_uri: must be an http:// or https:// URL".into());
            }
        }
        if let Some(w) = &self.webhook {
            if !url_ok(&w.url) {
                return Err("push.webhook.url: must be an http:// or https:// URL".into());
            }
            if w.hmac_secret.as_deref().is_some_and(|s| s.len() < 16) {
                return Err("push.webhook.hmac_secret: must be at least 16 characters".into());
            }
        }
        Ok(())
    }
}

/// `[messages]`: deferred messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// How long a MESSAGE for an offline device is kept (default 7 days).
    pub ttl_secs: u64,
    /// How often expired messages are deleted.
    pub sweep_interval_secs: u64,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            ttl_secs: 7 * 24 * 3600,
            sweep_interval_secs: 3600,
        }
    }
}

impl MessagesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl_secs == 0 || self.ttl_secs > 366 * 24 * 3600 {
            return Err("messages.ttl_secs: must be 1 s to 366 days".into());
        }
        if self.sweep_interval_secs == 0 || self.sweep_interval_secs > 24 * 3600 {
            return Err("messages.sweep_interval_secs: must be 1-86400".into());
        }
        Ok(())
    }
}
