//! Apple Push Notification service over HTTP/2 with token-based authentication:
//! each request carries `authorization: bearer <JWT>`, an ES256 JWT (`kid` = key ID,
//! `iss` = team ID, `iat`) signed with the account's .p8 key. APNs refuses tokens
//! older than one hour and too frequent new ones, so one token is reused and renewed
//! after [`TOKEN_LIFETIME`].
//!
//! Push types: `voip` for an incoming call (PushKit wakes the app, which must report
//! the call to CallKit), `background` for `call_cancelled` (a VoIP push that reports no
//! call gets the app killed by iOS), `alert` for everything else.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{
    client, retry_after, retryable, transport_retry, Attempt, AttemptFuture, PushError, PushKind,
    PushPayload, PushProvider, PushTarget,
};
use crate::push::ApnsConfig;

/// Provider tokens are renewed after this (APNs accepts them for 60 minutes and
/// refuses renewals more often than every 20).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

pub struct Apns {
    http: reqwest::Client,
    base_url: String,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("base_url", &self.base_url)
            .field("key_id", &self.key_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// How a payload kind is sent: (`apns-push-type`, `apns-priority`, topic suffix).
fn push_type(kind: PushKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        PushKind::IncomingCall => ("voip", "10", ".voip"),
        PushKind::CallCancelled => ("background", "5", ""),
        _ => ("alert", "10", ""),
    }
}

impl Apns {
    pub fn new(cfg: &ApnsConfig, timeout: Duration) -> Result<Apns, PushError> {
        let pem = std::fs::read(&cfg.key_file).map_err(|e| {
            PushError::Config(format!(
                "push.apns.key_file: cannot read {}: {e}",
                cfg.key_file.display()
            ))
        })?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
            PushError::Config(format!(
                "push.apns.key_file: not a PKCS#8 PEM P-256 key: {e}"
            ))
        })?;
        let apns = Apns {
            http: client(
                &cfg.base_url,
                timeout,
                true,
                cfg.ca_file.as_deref(),
                "push.apns.ca_file",
            )?,
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            key,
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            topic: cfg.topic.trim_end_matches(".voip").to_owned(),
            token: Mutex::new(None),
        };
        // Sign once now so that a key that cannot sign fails at start.
        apns.provider_token(Instant::now())?;
        Ok(apns)
    }

    /// The cached provider token, renewed when older than [`TOKEN_LIFETIME`].
    fn provider_token(&self, now: Instant) -> Result<String, PushError> {
        let mut cache = self
            .token
            .lock()
            .map_err(|_| PushError::Config("push.apns: token cache poisoned".into()))?;
        if let Some((t, at)) = cache.as_ref() {
            if now.saturating_duration_since(*at) < TOKEN_LIFETIME {
                return Ok(t.clone());
            }
        }
        let header = Header {
            kid: Some(self.key_id.clone()),
            ..Header::new(Algorithm::ES256)
        };
        let claims = Claims {
            iss: &self.team_id,
            iat: crate::store::unix_now(),
        };
        let t = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| PushError::Config(format!("push.apns.key_file: cannot sign: {e}")))?;
        *cache = Some((t.clone(), now));
        Ok(t)
    }

    fn forget_token(&self) {
        if let Ok(mut c) = self.token.lock() {
            *c = None;
        }
    }

    /// `apns-topic`: the bundle ID from `pn-param` (`<team id>.<bundle id>[.voip]`,
    /// RFC 8599 10.2) or the configured one, with `.voip` for VoIP pushes.
    fn topic(&self, target: &PushTarget, suffix: &str) -> String {
        let base = target
            .param
            .as_deref()
            .and_then(|p| p.split_once('.'))
            .map(|(_, t)| t.trim_end_matches(".voip"))
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.topic);
        format!("{base}{suffix}")
    }

    fn body(payload: &PushPayload) -> serde_json::Value {
        let aps = match push_type(payload.kind).0 {
            "voip" => serde_json::json!({}),
            "background" => serde_json::json!({ "content-available": 1 }),
            _ => {
                let title = if payload.caller_display_name.is_empty() {
                    payload.caller_login.clone()
                } else {
                    payload.caller_display_name.clone()
                };
                serde_json::json!({
                    "alert": { "title": title, "body": payload.alert_text() },
                    "sound": "default",
                })
            }
        };
        serde_json::json!({ "aps": aps, "tandem": payload.to_json() })
    }

    async fn send(&self, target: &PushTarget, payload: &PushPayload) -> Attempt {
        // APNs device tokens are hex; anything else can only be refused (and must not
        // reach the URL path).
        if target.token.is_empty()
            || target.token.len() > 200
            || !target.token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Attempt::DeadToken;
        }
        let jwt = match self.provider_token(Instant::now()) {
            Ok(t) => t,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let (kind, priority, suffix) = push_type(payload.kind);
        let expiration = if payload.kind.is_call() {
            // A call push is worth nothing later: deliver now or drop.
            0
        } else {
            payload.timestamp.saturating_add(24 * 3600)
        };
        let url = format!("{}/3/device/{}", self.base_url, target.token);
        let r = self
            .http
            .post(&url)
            // Written as Apple documents it.
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-push-type", kind)
            .header("apns-topic", self.topic(target, suffix))
            .header("apns-priority", priority)
            .header("apns-expiration", expiration.to_string())
            .json(&Self::body(payload))
            .send()
            .await;
        let resp = match r {
            Ok(r) => r,
            Err(e) => return transport_retry(&e),
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let after = retry_after(resp.headers());
        let reason = super::json_capped::<serde_json::Value>(resp)
            .await
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_default();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") => Attempt::DeadToken,
            (403, "ExpiredProviderToken") => {
                self.forget_token();
                Attempt::Retry {
                    after: None,
                    why: "provider token expired".into(),
                }
            }
            _ if retryable(status) => Attempt::Retry {
                after,
                why: format!("{status} {reason}"),
            },
            _ => Attempt::Failed(format!("{status} {reason}")),
        }
    }
}

impl PushProvider for Apns {
    fn name(&self) -> &'static str {
        "apns"
    }
    fn attempt<'a>(
        &'a self,
        target: &'a PushTarget,
        payload: &'a PushPayload,
    ) -> AttemptFuture<'a> {
        Box::pin(self.send(target, payload))
    }
}
