//! A generic JSON webhook: one POST per notification to a configured URL, for an
//! operator's own push gateway. Body:
//! `{"provider":"webhook","token":..,"param":..,"account":..,"instance_id":..,"payload":{..}}`.
//! Optional `Authorization: Bearer` and an HMAC-SHA256 signature over
//! `"<timestamp>.<body>"` in `X-Tandem-Signature: sha256=<hex>` with the timestamp in
//! `X-Tandem-Timestamp` (so a receiver can refuse replays). A 404 or 410 answer
//! means the token is no longer valid.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    client, retry_after, retryable, transport_retry, Attempt, AttemptFuture, PushError,
    PushPayload, PushProvider, PushTarget,
};
use crate::push::WebhookConfig;

pub const SIGNATURE_HEADER: &str = "x-tandem-signature";
pub const TIMESTAMP_HEADER: &str = "x-tandem-timestamp";

pub struct Webhook {
    http: reqwest::Client,
    url: String,
    bearer: Option<String>,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").finish_non_exhaustive()
    }
}

/// `sha256=<hex>` of `HMAC-SHA256(secret, "<timestamp>.<body>")`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig, timeout: Duration) -> Result<Webhook, PushError> {
        Ok(Webhook {
            http: client(
                &cfg.url,
                timeout,
                false,
                cfg.ca_file.as_deref(),
                "push.webhook.ca_file",
            )?,
            url: cfg.url.clone(),
            bearer: cfg.bearer_token.clone(),
            secret: cfg.hmac_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        })
    }

    async fn send(&self, target: &PushTarget, payload: &PushPayload) -> Attempt {
        let body = serde_json::json!({
            "provider": target.provider,
            "token": target.token,
            "param": target.param,
            "account": target.account,
            "instance_id": target.instance_id,
            "payload": payload.to_json(),
        });
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("cannot encode: {e}")),
        };
        let mut req = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        if let Some(secret) = &self.secret {
            let ts = crate::store::unix_now();
            req = req
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, signature(secret, ts, &body));
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return transport_retry(&e),
        };
        let status = resp.status();
        match status.as_u16() {
            _ if status.is_success() => Attempt::Delivered,
            404 | 410 => Attempt::DeadToken,
            _ if retryable(status) => Attempt::Retry {
                after: retry_after(resp.headers()),
                why: status.to_string(),
            },
            _ => Attempt::Failed(status.to_string()),
        }
    }
}

impl PushProvider for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn attempt<'a>(
        &'a self,
        target: &'a PushTarget,
        payload: &'a PushPayload,
    ) -> AttemptFuture<'a> {
        Box::pin(self.send(target, payload))
    }
}
