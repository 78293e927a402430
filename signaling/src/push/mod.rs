//! Push notifications to devices that are offline (seed manual "PUSH", RFC 8599).
//!
//! [`Pusher`] owns a bounded send queue and a bounded number of concurrent sends; each
//! notification goes to its provider behind the [`PushProvider`] trait: APNs (HTTP/2,
//! ES256 provider tokens), FCM HTTP v1 (service-account OAuth2) or a JSON webhook.
//! Attempts that fail with 5xx, 429 or a timeout are retried with exponential backoff
//! (Retry-After honoured); a token the provider calls invalid is cleared from the store.
//!
//! Targets come from the device API (`devices.push_provider`/`push_token`) or from the
//! RFC 8599 `pn-provider`/`pn-prid`/`pn-param` Contact parameters the device last
//! registered with ([`targets_for_account`]).

pub mod apns;
pub mod config;
pub mod deferred;
pub mod fcm;
pub mod hooks;
pub mod offline;
pub mod payload;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

pub use config::{ApnsConfig, FcmConfig, MessagesConfig, PushConfig, WebhookConfig};
pub use payload::{excerpt, PushKind, PushPayload, DEFAULT_SYSTEM_COMMAND_TYPE, EXCERPT_CHARS};

use crate::model::{AccountId, Device};
use crate::store::{Store, StoreError};

/// Where one push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// `apns`, `fcm` or `webhook`.
    pub provider: String,
    /// The device token (RFC 8599 `pn-prid`).
    pub token: String,
    /// RFC 8599 `pn-param` (APNs: `<team id>.<topic>`; FCM: the project ID).
    pub param: Option<String>,
    /// The device it belongs to, so a dead token can be cleared.
    pub account: AccountId,
    pub instance_id: String,
}

impl PushTarget {
    /// The token with all but its first and last 4 characters hidden, for logs.
    pub fn redacted_token(&self) -> String {
        redact_token(&self.token)
    }
}

pub(crate) fn redact_token(t: &str) -> String {
    if crate::log_pii() {
        return t.to_owned();
    }
    let n = t.chars().count();
    if n <= 12 {
        return "…".to_owned();
    }
    let head: String = t.chars().take(4).collect();
    let tail: String = t.chars().skip(n - 4).collect();
    format!("{head}…{tail}")
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    #[error("push provider {0:?} is not configured")]
    NotConfigured(String),
    #[error("the push send queue is full")]
    QueueFull,
    #[error("the push service is shut down")]
    Closed,
    #[error("the provider says the device token is no longer valid")]
    DeadToken,
    #[error("the provider refused the push: {0}")]
    Rejected(String),
    #[error("the provider did not take the push after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    /// A key or service-account file that cannot be used; the message names the key.
    #[error("{0}")]
    Config(String),
}

/// Result of one attempt at a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// The token is invalid (APNs 410 / BadDeviceToken, FCM UNREGISTERED ...).
    DeadToken,
    /// Worth another try: 5xx, 429, a timeout, a connection failure, an expired
    /// credential that was refreshed. `after` is the provider's Retry-After.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Refused for good (a 4xx that retrying cannot fix).
    Failed(String),
}

/// Boxed future of a provider attempt.
pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Attempt> + Send + 'a>>;

/// One push service. Object safe; implementations keep their credentials cached.
pub trait PushProvider: Send + Sync + std::fmt::Debug + 'static {
    /// The RFC 8599 `pn-provider` name it serves.
    fn name(&self) -> &'static str;
    /// One attempt (no retries here; [`Pusher`] retries).
    fn attempt<'a>(&'a self, target: &'a PushTarget, payload: &'a PushPayload)
        -> AttemptFuture<'a>;
}

/// Counters (monotonic) of the push service.
#[derive(Debug, Default)]
pub struct PushStats {
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dead_tokens: AtomicU64,
    pub queue_full: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    provider: String,
    outcome: &'static str,
}

/// A snapshot of [`PushStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushCounts {
    pub queued: u64,
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    pub dead_tokens: u64,
    pub queue_full: u64,
}

#[derive(Debug)]
struct Inner {
    providers: HashMap<&'static str, Arc<dyn PushProvider>>,
    store: Option<Store>,
    cfg: PushConfig,
    stats: PushStats,
    /// `push_notifications{provider, outcome}`: queued, queue_full, delivered,
    /// retried, failed, dead_token.
    outcomes: prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Jobs that ended (delivered, failed or given up), and a wake-up for
    /// [`Pusher::settled`].
    finished: AtomicU64,
    finished_changed: tokio::sync::Notify,
}

impl Inner {
    fn count(&self, counter: &AtomicU64, provider: &str, outcome: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.outcomes
            .get_or_create(&OutcomeLabels {
                provider: provider.to_owned(),
                outcome,
            })
            .inc();
    }
}

type Job = (PushTarget, PushPayload);

/// The push service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
    queue: mpsc::Sender<Job>,
}

impl Pusher {
    /// Loads the configured providers' credentials (a bad key file fails here, naming
    /// its key) and starts the send loop, which stops when `shutdown` is cancelled.
    pub fn start(
        cfg: &PushConfig,
        store: Option<Store>,
        shutdown: CancellationToken,
    ) -> Result<Pusher, PushError> {
        cfg.validate().map_err(PushError::Config)?;
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let mut providers: Vec<Arc<dyn PushProvider>> = Vec::new();
        if let Some(a) = &cfg.apns {
            providers.push(Arc::new(apns::Apns::new(a, timeout)?));
        }
        if let Some(f) = &cfg.fcm {
            providers.push(Arc::new(fcm::Fcm::new(f, timeout)?));
        }
        if let Some(w) = &cfg.webhook {
            providers.push(Arc::new(webhook::Webhook::new(w, timeout)?));
        }
        Ok(Self::with_providers(cfg, providers, store, shutdown))
    }

    /// As [`Pusher::start`] with providers built by the caller (tests, other services).
    pub fn with_providers(
        cfg: &PushConfig,
        providers: Vec<Arc<dyn PushProvider>>,
        store: Option<Store>,
        shutdown: CancellationToken,
    ) -> Pusher {
        let inner = Arc::new(Inner {
            providers: providers.into_iter().map(|p| (p.name(), p)).collect(),
            store,
            cfg: cfg.clone(),
            stats: PushStats::default(),
            outcomes: Default::default(),
            finished: AtomicU64::new(0),
            finished_changed: tokio::sync::Notify::new(),
        });
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        tokio::spawn(send_loop(inner.clone(), rx, shutdown));
        Pusher { inner, queue: tx }
    }

    /// Names of the configured providers (`apns`, `fcm`, `webhook`).
    pub fn providers(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.inner.providers.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn supports(&self, provider: &str) -> bool {
        self.inner.providers.contains_key(provider)
    }

    /// The configured system-command content type (never pushed).
    pub fn system_command_content_type(&self) -> &str {
        &self.inner.cfg.system_command_content_type
    }

    /// Queues a push and returns at once (the proxy must not wait on a provider).
    /// Fails when the provider is not configured or the queue is full.
    pub async fn notify(
        &self,
        target: &PushTarget,
        payload: &PushPayload,
    ) -> Result<(), PushError> {
        if !self.supports(&target.provider) {
            return Err(PushError::NotConfigured(target.provider.clone()));
        }
        match self.queue.try_send((target.clone(), payload.clone())) {
            Ok(()) => {
                self.inner
                    .count(&self.inner.stats.queued, &target.provider, "queued");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner
                    .count(&self.inner.stats.queue_full, &target.provider, "queue_full");
                tracing::warn!(provider = %target.provider, "push queue full: notification dropped");
                Err(PushError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }

    /// Sends one push now, with the retries, and waits for the outcome.
    pub async fn send_now(
        &self,
        target: &PushTarget,
        payload: &PushPayload,
    ) -> Result<(), PushError> {
        deliver(&self.inner, target, payload).await
    }

    /// Registers `push_notifications{provider, outcome}` (outcome: queued,
    /// queue_full, delivered, retried, failed, dead_token) in a Prometheus registry.
    /// The provider label only takes configured provider names (bounded).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "push_notifications",
            "Push notifications by provider and outcome",
            self.inner.outcomes.clone(),
        );
    }

    /// Resolves once every push queued so far has ended (delivered, refused or
    /// given up): what tests wait for before checking that no other push went out,
    /// instead of sleeping.
    pub async fn settled(&self) {
        loop {
            let changed = self.inner.finished_changed.notified();
            let queued = self.inner.stats.queued.load(Ordering::Relaxed);
            if self.inner.finished.load(Ordering::Relaxed) >= queued {
                return;
            }
            changed.await;
        }
    }

    pub fn counts(&self) -> PushCounts {
        let s = &self.inner.stats;
        PushCounts {
            queued: s.queued.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dead_tokens: s.dead_tokens.load(Ordering::Relaxed),
            queue_full: s.queue_full.load(Ordering::Relaxed),
        }
    }
}

async fn send_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(inner.cfg.concurrency.max(1)));
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = rx.recv() => match j { Some(j) => j, None => break },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ = deliver(&inner, &job.0, &job.1).await;
            drop(permit);
            inner.finished.fetch_add(1, Ordering::Relaxed);
            inner.finished_changed.notify_waiters();
        });
    }
}

/// The backoff before attempt `n + 1` (n >= 1): initial * 2^(n-1), capped, or the
/// provider's Retry-After (capped).
fn backoff(cfg: &PushConfig, n: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(Duration::from_secs(cfg.retry_after_max_secs));
    }
    let factor = 1u64.checked_shl(n.saturating_sub(1)).unwrap_or(u64::MAX);
    Duration::from_millis(
        cfg.backoff_initial_ms
            .saturating_mul(factor)
            .min(cfg.backoff_max_ms),
    )
}

async fn deliver(
    inner: &Inner,
    target: &PushTarget,
    payload: &PushPayload,
) -> Result<(), PushError> {
    let Some(provider) = inner.providers.get(target.provider.as_str()) else {
        return Err(PushError::NotConfigured(target.provider.clone()));
    };
    let max = inner.cfg.max_attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        match provider.attempt(target, payload).await {
            Attempt::Delivered => {
                inner.count(&inner.stats.delivered, provider.name(), "delivered");
                tracing::info!(
                    call_id = %crate::registrar::call_ref(&payload.call_id),
                    provider = provider.name(),
                    kind = payload.kind.as_str(),
                    account = target.account,
                    "push delivered"
                );
                return Ok(());
            }
            Attempt::DeadToken => {
                inner.count(&inner.stats.dead_tokens, provider.name(), "dead_token");
                tracing::info!(
                    provider = provider.name(),
                    token = %target.redacted_token(),
                    account = target.account,
                    "push token no longer valid: cleared"
                );
                if let Some(store) = &inner.store {
                    if let Err(e) = store
                        .clear_dead_push_token(
                            target.account,
                            &target.instance_id,
                            &target.provider,
                            &target.token,
                        )
                        .await
                    {
                        tracing::error!(error = %e, "clearing a dead push token failed");
                    }
                }
                return Err(PushError::DeadToken);
            }
            Attempt::Failed(why) => {
                inner.count(&inner.stats.failed, provider.name(), "failed");
                tracing::warn!(provider = provider.name(), %why, "push refused");
                return Err(PushError::Rejected(why));
            }
            Attempt::Retry { after, why } => {
                if n >= max {
                    inner.count(&inner.stats.failed, provider.name(), "failed");
                    tracing::warn!(provider = provider.name(), %why, attempts = n, "push given up");
                    return Err(PushError::GaveUp {
                        attempts: n,
                        last: why,
                    });
                }
                inner.count(&inner.stats.retried, provider.name(), "retried");
                let wait = backoff(&inner.cfg, n, after);
                tracing::debug!(provider = provider.name(), %why, ?wait, "push retry");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Maps an HTTP status and the reqwest error classes shared by the providers.
/// Most bytes of a provider's response body we read (error reasons and token grants
/// are a few hundred bytes; a provider, or whatever answers at its URL, cannot make
/// us buffer more).
pub(crate) const MAX_RESPONSE_BODY: usize = 16 * 1024;

/// The response body as JSON, read chunk by chunk up to [`MAX_RESPONSE_BODY`]; `None`
/// when it is longer, unreadable or not JSON.
pub(crate) async fn json_capped<T: serde::de::DeserializeOwned>(
    mut resp: reqwest::Response,
) -> Option<T> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BODY as u64)
    {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_RESPONSE_BODY {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).ok()
}

pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    // Delta-seconds; an HTTP-date is read as "soon" (the default backoff applies).
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(crate) fn transport_retry(e: &reqwest::Error) -> Attempt {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Attempt::Retry {
        after: None,
        why: format!("{kind}: {}", without_url(e)),
    }
}

/// A reqwest error without the URL (which may hold a token).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<url>");
    }
    s
}

/// Whether a status is worth a retry: 429 and 5xx.
pub(crate) fn retryable(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// An HTTP client: HTTP/2 prior knowledge for `http://` base URLs (test servers
/// and cleartext gateways), TLS with ALPN otherwise.
pub(crate) fn client(
    base_url: &str,
    timeout: Duration,
    h2: bool,
    ca_file: Option<&std::path::Path>,
    ca_key: &str,
) -> Result<reqwest::Client, PushError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(600))
        .user_agent(concat!("tandem-signaling/", env!("CARGO_PKG_VERSION")));
    if h2 && base_url.starts_with("http://") {
        b = b.http2_prior_knowledge();
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            PushError::Config(format!("{ca_key}: cannot read {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| PushError::Config(format!("{ca_key}: not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(PushError::Config(format!(
                "{ca_key}: no certificate in the file"
            )));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| PushError::Config(format!("push: cannot build the HTTP client: {e}")))
}

/// Deletes expired deferred messages every `interval` until `shutdown`.
pub async fn sweep_deferred(store: Store, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.expire_deferred(crate::store::unix_now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "deferred messages expired"),
            Err(e) => tracing::warn!(error = %e, "expiring deferred messages failed"),
        }
    }
}

/// Every device of the account that can be pushed, with its target: the RFC 8599
/// parameters it last registered with, or else the token set through the API.
pub async fn targets_for_account(
    store: &Store,
    account: AccountId,
) -> Result<Vec<(Device, PushTarget)>, StoreError> {
    let devices = store.devices_with_pn(account).await?;
    Ok(devices
        .into_iter()
        .filter_map(|(d, pn)| {
            let (provider, token, param) = match (pn, &d.push_provider, &d.push_token) {
                (Some(p), _, _) => (p.provider, p.prid, p.param),
                (None, Some(p), Some(t)) if !p.is_empty() && !t.is_empty() => {
                    (p.clone(), t.clone(), None)
                }
                _ => return None,
            };
            let target = PushTarget {
                provider,
                token,
                param,
                account,
                instance_id: d.instance_id.clone(),
            };
            Some((d, target))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = PushConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            retry_after_max_secs: 5,
            ..PushConfig::default()
        };
        assert_eq!(backoff(&cfg, 1, None), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 2, None), Duration::from_millis(200));
        assert_eq!(backoff(&cfg, 4, None), Duration::from_millis(800));
        assert_eq!(backoff(&cfg, 5, None), Duration::from_millis(1000));
        assert_eq!(backoff(&cfg, 80, None), Duration::from_millis(1000));
        assert_eq!(
            backoff(&cfg, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(&cfg, 1, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(redact_token("short"), "…");
        assert_eq!(redact_token("0123456789abcdefXYZ"), "0123…fXYZ");
    }
}
