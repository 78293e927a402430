//! Tandem signaling: SIP registrar and forking proxy for multi-device accounts.
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

pub mod clock;
pub mod config;
pub mod http;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod number;
pub mod proxy;
pub mod push;
pub mod registrar;
pub mod relays;
pub mod sdp;
pub mod service;
pub mod sip;
pub mod source;
pub mod store;

static LOG_PII: AtomicBool = AtomicBool::new(false);

/// Whether logs may show personal data (phone numbers, SIP URIs, addresses).
/// Off unless the operator turns it on for debugging.
pub fn log_pii() -> bool {
    LOG_PII.load(Ordering::Relaxed)
}

/// Turns personal data in logs on or off (process-wide).
pub fn set_log_pii(on: bool) {
    LOG_PII.store(on, Ordering::Relaxed);
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::SignalingConfig;
use registrar::RegistrarHandle;
use service::{ServiceError, SipParts, SipServer};
use sip::{SipAddrs, SipError};
use store::{Store, StoreError};

/// Errors that stop the process from starting (or from running on).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("SIP: {0}")]
    Sip(#[from] SipError),
    #[error("SIP: {0}")]
    Service(#[from] ServiceError),
    #[error("push: {0}")]
    Push(#[from] push::PushError),
    /// `[[relays]]` or `[relay_pool]`; the message starts with the key.
    #[error("media relays: {0}")]
    Relays(String),
    #[error("cannot bind the HTTP API on {addr}: {source}")]
    ApiBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP API server failed: {0}")]
    Api(std::io::Error),
    #[error("admin token file {path}: {source}")]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A started signaling server: where it listens and handles to its parts.
#[derive(Debug)]
pub struct Running {
    /// Bound SIP addresses (real ports when configured with port 0).
    pub sip: SipAddrs,
    /// Bound HTTP API address.
    pub api: SocketAddr,
    /// The admin bearer token in force (configured or generated).
    pub admin_token: String,
    /// Where a generated admin token is kept; `None` when it was configured.
    pub admin_token_file: Option<PathBuf>,
    pub store: Store,
    pub registrar: RegistrarHandle,
    /// The push service (providers from `[push]`).
    pub pusher: push::Pusher,
    /// The media relay pool (`[[relays]]`), its health task running; `None` without
    /// relays. The proxy takes it as `Arc<dyn relays::MediaRelays>`.
    pub relays: Option<Arc<relays::RelayPool>>,
    sip_server: SipServer,
    api_task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// `/ready` answers 503 once set.
    draining: Arc<std::sync::atomic::AtomicBool>,
    drain_timeout: std::time::Duration,
}

/// How long a drain waits, once every caller has its final response, for the
/// requests that only finish cancelling their branches.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a drain did, for the log line and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Ringing calls (and other requests deciding) that were ended.
    pub ended: usize,
    /// Requests still held when the drain stopped waiting.
    pub left: usize,
    /// Whether every push queued before the drain was sent (or given up).
    pub pushes_settled: bool,
}

impl Running {
    /// The drain before a stop (SIGTERM): `/ready` turns 503, new out-of-dialog SIP
    /// requests get 503 with `Retry-After`, ringing calls end (CANCEL with a Reason to
    /// every device, 503 to the caller), then it waits up to `[shutdown]
    /// drain_timeout_secs` for the requests still held (their CANCELs answered) and for
    /// the pushes already queued. Registrations, deferred messages and everything
    /// acknowledged are in the database already. Cancel the shutdown token afterwards.
    pub async fn drain(&self) -> DrainReport {
        use std::sync::atomic::Ordering::Relaxed;
        self.draining.store(true, Relaxed);
        let ended = self.sip_server.drain();
        tracing::info!(
            ended,
            timeout_secs = self.drain_timeout.as_secs(),
            "draining: not ready, new calls get 503, ringing calls ended"
        );
        // First every caller answered; then a short grace for the branches' CANCELs
        // and 487s (finishing requests otherwise linger for their timers, up to 32 s
        // over UDP, which is not worth holding a stop for).
        let start = tokio::time::Instant::now();
        let deadline = start + self.drain_timeout;
        let tick = std::time::Duration::from_millis(50);
        while self.sip_server.requests_deciding() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(tick).await;
        }
        let grace = (tokio::time::Instant::now() + DRAIN_GRACE).min(deadline);
        let mut left = self.sip_server.requests_in_progress();
        while left > 0 && tokio::time::Instant::now() < grace {
            tokio::time::sleep(tick).await;
            left = self.sip_server.requests_in_progress();
        }
        let pushes_settled = tokio::time::timeout_at(deadline, self.pusher.settled())
            .await
            .is_ok();
        let report = DrainReport {
            ended,
            left,
            pushes_settled,
        };
        tracing::info!(
            ended,
            requests_left = left,
            pushes_settled,
            "drain finished"
        );
        report
    }

    /// Installs the proxy's hooks for accounts whose devices are offline (push,
    /// deferred messages).
    pub fn set_offline_targets(&self, hooks: std::sync::Arc<dyn proxy::OfflineTargets>) {
        self.sip_server.set_offline_targets(hooks);
    }

    /// Resolves when every part has stopped after `shutdown` was cancelled.
    pub async fn wait(self) -> Result<(), StartError> {
        let api = self.api_task.await;
        let sip = self.sip_server.wait().await;
        self.store.close().await;
        match api {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Api(e)),
            Err(e) => return Err(StartError::Api(std::io::Error::other(e.to_string()))),
        }
        sip?;
        Ok(())
    }
}

const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The configured admin token, or the one kept in `<data_dir>/admin-token`, created
/// (32 random bytes, hex, mode 0600) at first start.
fn admin_token(cfg: &SignalingConfig) -> Result<(String, Option<PathBuf>), StartError> {
    if let Some(t) = &cfg.api.admin_token {
        return Ok((t.clone(), None));
    }
    let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
    let err = |source| StartError::AdminToken {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => return Ok((t.trim().to_owned(), Some(path))),
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "token shorter than 16 characters",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(err)?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, &token).map_err(err)?;
    Ok((token, Some(path)))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Binds everything and starts serving until `shutdown` is cancelled, assembled
/// bottom up: store -> registrar -> SIP listeners -> proxy -> push -> service (the
/// endpoint serves from here) -> HTTP API. Listeners configured with port 0 report their real port
/// in [`Running`].
pub async fn start(
    cfg: SignalingConfig,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let mut cfg = cfg;
    // Secrets kept in files (a no-op when `SignalingConfig::load` read them already).
    cfg.read_secret_files()?;
    cfg.validate()?;
    set_log_pii(cfg.log.show_personal_data);
    let (admin_token, admin_token_file) = admin_token(&cfg)?;
    if let Some(path) = &admin_token_file {
        // Absolute, so the line tells where the file is whatever directory the reader
        // is in.
        let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        tracing::info!(path = %shown.display(), "admin bearer token is kept in this file");
    }
    let store = Store::connect_with(
        &cfg.database_url(),
        &cfg.default_country_code,
        cfg.database.max_connections,
    )
    .await?;
    tracing::info!(backend = ?store.backend(), "database ready");
    // Registrar (stored bindings loaded), SIP listeners bound, proxy.
    let sip = SipParts::build(
        &cfg.sip,
        &cfg.registrar,
        &cfg.proxy,
        &cfg.dialplan,
        store.clone(),
        shutdown.clone(),
    )
    .await?;
    let registrar = sip.registrar();
    // The media relay pool and its health task (health, load, ended sessions).
    let clock = sip.clock();
    let relay_metrics = relays::metrics::RelayMetrics::default();
    let relay_pool = if cfg.relays.is_empty() {
        None
    } else {
        let pool = Arc::new(
            relays::RelayPool::new(&cfg.relays, &cfg.relay_pool, relay_metrics.clone())
                .map_err(StartError::Relays)?,
        );
        tokio::spawn(relays::run_health(
            pool.clone(),
            clock.clone(),
            shutdown.clone(),
        ));
        tracing::info!(relays = cfg.relays.len(), "media relay pool started");
        sip.set_media_relays(pool.clone(), shutdown.clone());
        Some(pool)
    };
    let turn = relays::TurnService::new(&cfg.turn, &cfg.relays, clock.clone());
    // Push, plugged into the proxy before any request arrives.
    let pusher = push::Pusher::start(&cfg.push, Some(store.clone()), shutdown.clone())?;
    tokio::spawn(push::sweep_deferred(
        store.clone(),
        std::time::Duration::from_secs(cfg.messages.sweep_interval_secs),
        shutdown.clone(),
    ));
    // RFC 8599: a REGISTER naming a push service that is not configured gets 555.
    registrar.set_push_providers(&pusher.providers());
    // Offline devices: MESSAGEs stored and pushed (202), calls pushed.
    sip.set_offline_targets(Arc::new(push::hooks::PushHooks {
        store: store.clone(),
        pusher: (!pusher.providers().is_empty()).then(|| pusher.clone()),
        ttl_secs: cfg.messages.ttl_secs,
    }));
    // Deferred messages go out, in order, when their device registers.
    tokio::spawn(push::deferred::run_delivery(
        store.clone(),
        sip.request_sender(),
        registrar.subscribe_registrations(),
        cfg.sip.realm.clone(),
        shutdown.clone(),
    ));
    // The service on top; the endpoint starts serving.
    let sip_server = sip.serve(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .map_err(|source| StartError::ApiBind {
            addr: cfg.api.listen,
            source,
        })?;
    let api = listener
        .local_addr()
        .map_err(|source| StartError::ApiBind {
            addr: cfg.api.listen,
            source,
        })?;
    let state = http::AppState::new(
        store.clone(),
        Arc::new(registrar.clone()),
        http::ApiSettings {
            realm: cfg.sip.realm.clone(),
            admin_token: admin_token.clone(),
            default_limits: cfg.device_limits,
            default_country_code: cfg.default_country_code.clone(),
            auth_limiter: cfg.api.limiter(),
        },
        http::Metrics::with_more(|r| {
            pusher.register_metrics(r);
            sip_server.metrics().register(r);
            relay_metrics.register(r);
        }),
    )
    .with_dialplan(cfg.dialplan.clone())
    .with_turn(turn);
    let draining = state.draining_flag();
    let api_task = tokio::spawn(http::serve_with(
        listener,
        state,
        shutdown.clone(),
        cfg.api.serve_limits(),
    ));
    tracing::info!(%api, "HTTP API listening");
    Ok(Running {
        sip: sip_server.local_addrs(),
        api,
        admin_token,
        admin_token_file,
        store,
        registrar,
        pusher,
        relays: relay_pool,
        sip_server,
        api_task,
        draining,
        drain_timeout: std::time::Duration::from_secs(cfg.shutdown.drain_timeout_secs),
    })
}

/// [`start`], then wait until `shutdown` is cancelled and everything has stopped.
pub async fn run(cfg: SignalingConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let running = start(cfg, shutdown).await?;
    running.wait().await?;
    Ok(())
}

/// [`start`]; on the first `stop` signal drain ([`Running::drain`]), then stop; a
/// second `stop` signal during the drain stops at once. What `main` runs.
pub async fn run_until<F, Fut>(cfg: SignalingConfig, mut stop: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let shutdown = CancellationToken::new();
    let running = start(cfg, shutdown.clone()).await?;
    stop().await;
    tokio::select! {
        _ = running.drain() => {}
        _ = stop() => tracing::info!("second stop signal: stopping without waiting"),
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    running.wait().await?;
    Ok(())
}
