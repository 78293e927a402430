//! Firebase Cloud Messaging HTTP v1: `POST {base}/v1/projects/{project}/messages:send`
//! with an OAuth2 access token obtained from the service account by the JWT-bearer
//! grant (RFC 7523): an RS256 JWT (`iss` = client email, `scope` = firebase.messaging,
//! `aud` = token URI) exchanged at the token URI, cached until shortly before it
//! expires.
//!
//! Data messages only (the app builds its own notification), high priority, with a
//! short TTL for call events.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::{
    client, retry_after, retryable, transport_retry, Attempt, AttemptFuture, PushError,
    PushPayload, PushProvider, PushTarget,
};
use crate::push::FcmConfig;

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// An access token is renewed this long before the expiry the token URI gave.
const EARLY: Duration = Duration::from_secs(120);

/// The fields of a service-account JSON that the grant needs.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

pub struct Fcm {
    http: reqwest::Client,
    base_url: String,
    project_id: String,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    key: EncodingKey,
    access: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("base_url", &self.base_url)
            .field("project_id", &self.project_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl Fcm {
    pub fn new(cfg: &FcmConfig, timeout: Duration) -> Result<Fcm, PushError> {
        let key_err = |m: String| PushError::Config(format!("push.fcm.service_account_file: {m}"));
        let text = std::fs::read(&cfg.service_account_file).map_err(|e| {
            key_err(format!(
                "cannot read {}: {e}",
                cfg.service_account_file.display()
            ))
        })?;
        let sa: ServiceAccount = serde_json::from_slice(&text)
            .map_err(|e| key_err(format!("not a service account JSON: {e}")))?;
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
            .map_err(|e| key_err(format!("private_key is not an RSA PEM key: {e}")))?;
        let project_id = cfg
            .project_id
            .clone()
            .or(sa.project_id)
            .filter(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.')
            })
            .ok_or_else(|| {
                PushError::Config("push.fcm.project_id: missing or invalid project ID".into())
            })?;
        let token_uri = cfg
            .token_uri
            .clone()
            .or(sa.token_uri)
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        Ok(Fcm {
            http: client(
                &cfg.base_url,
                timeout,
                false,
                cfg.ca_file.as_deref(),
                "push.fcm.ca_file",
            )?,
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            project_id,
            token_uri,
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            key,
            access: tokio::sync::Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a new one from the token URI.
    async fn access_token(&self) -> Result<String, Attempt> {
        let mut cache = self.access.lock().await;
        if let Some((t, until)) = cache.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let now = crate::store::unix_now();
        let header = Header {
            kid: self.key_id.clone(),
            ..Header::new(Algorithm::RS256)
        };
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Attempt::Failed(format!("cannot sign the token request: {e}")))?;
        let r = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_retry(&e))?;
        let status = r.status();
        if !status.is_success() {
            let after = retry_after(r.headers());
            return Err(if retryable(status) {
                Attempt::Retry {
                    after,
                    why: format!("token URI answered {status}"),
                }
            } else {
                Attempt::Failed(format!("token URI refused the grant: {status}"))
            });
        }
        let t: TokenResponse = super::json_capped(r).await.ok_or_else(|| Attempt::Retry {
            after: None,
            why: "bad token response (not JSON, or over 16 KiB)".into(),
        })?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(3600)).saturating_sub(EARLY);
        *cache = Some((t.access_token.clone(), Instant::now() + life));
        Ok(t.access_token)
    }

    async fn forget_token(&self) {
        *self.access.lock().await = None;
    }

    fn body(target: &PushTarget, payload: &PushPayload) -> serde_json::Value {
        let ttl = if payload.kind.is_call() {
            "30s"
        } else {
            "86400s"
        };
        serde_json::json!({
            "message": {
                "token": target.token,
                "data": payload.to_string_map(),
                "android": { "priority": "high", "ttl": ttl },
            }
        })
    }

    async fn send(&self, target: &PushTarget, payload: &PushPayload) -> Attempt {
        if target.token.is_empty() || target.token.len() > 4096 {
            return Attempt::DeadToken;
        }
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(a) => return a,
        };
        // RFC 8599 11: pn-param is the project ID for FCM.
        let project = target
            .param
            .as_deref()
            .filter(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.')
            })
            .unwrap_or(&self.project_id);
        let url = format!("{}/v1/projects/{project}/messages:send", self.base_url);
        let r = self
            .http
            .post(&url)
            .bearer_auth(access)
            .json(&Self::body(target, payload))
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
        let err = super::json_capped::<serde_json::Value>(resp)
            .await
            .unwrap_or_default();
        let err = err.get("error").cloned().unwrap_or_default();
        let code_status = err
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_owned();
        let message = err
            .get("message")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_owned();
        let fcm_code = err
            .get("details")
            .and_then(|d| d.as_array())
            .and_then(|d| {
                d.iter()
                    .find_map(|x| x.get("errorCode").and_then(|c| c.as_str()))
            })
            .unwrap_or("")
            .to_owned();
        let about_token = message.to_ascii_lowercase().contains("registration token")
            || err
                .get("details")
                .and_then(|d| d.as_array())
                .is_some_and(|d| {
                    d.iter().any(|x| {
                        x.get("fieldViolations")
                            .and_then(|f| f.as_array())
                            .is_some_and(|f| {
                                f.iter().any(|v| {
                                    v.get("field").and_then(|s| s.as_str()) == Some("message.token")
                                })
                            })
                    })
                });
        match status.as_u16() {
            404 if fcm_code == "UNREGISTERED" || code_status == "NOT_FOUND" => Attempt::DeadToken,
            400 if fcm_code == "UNREGISTERED" => Attempt::DeadToken,
            400 if (fcm_code == "INVALID_ARGUMENT" || code_status == "INVALID_ARGUMENT")
                && about_token =>
            {
                Attempt::DeadToken
            }
            401 => {
                self.forget_token().await;
                Attempt::Retry {
                    after: None,
                    why: "access token refused".into(),
                }
            }
            _ if retryable(status) => Attempt::Retry {
                after,
                why: format!("{status} {fcm_code}"),
            },
            _ => Attempt::Failed(format!("{status} {code_status} {fcm_code}")),
        }
    }
}

impl PushProvider for Fcm {
    fn name(&self) -> &'static str {
        "fcm"
    }
    fn attempt<'a>(
        &'a self,
        target: &'a PushTarget,
        payload: &'a PushPayload,
    ) -> AttemptFuture<'a> {
        Box::pin(self.send(target, payload))
    }
}
