//! HTTP API on the private listener (`--api-listen`, default 127.0.0.1:8080).
//!
//! | Method | Path                                              | Auth  | What                                              |
//! |--------|---------------------------------------------------|-------|---------------------------------------------------|
//! | GET    | /health                                           | none  | liveness: 200 `{"status":"ok"}` while serving     |
//! | GET    | /ready                                            | none  | readiness: 200 unless draining or the database is down |
//! | GET    | /metrics                                          | none  | Prometheus text exposition                        |
//! | GET    | /openapi.json                                     | none  | this API as OpenAPI 3.1                           |
//! | POST   | /accounts                                         | admin | create account (login, password, numbers, ...)    |
//! | GET    | /accounts?after=&limit= or ?identity=             | admin | list accounts by id, or find one by public ID     |
//! | GET    | /accounts/{id}                                    | admin | one account                                       |
//! | PATCH  | /accounts/{id}                                    | admin | password, name, country code, no-answer rule, media |
//! | DELETE | /accounts/{id}                                    | admin | delete account, drop its registrations            |
//! | POST   | /accounts/{id}/phone-numbers                      | admin | add a number `{"number": "+48 600 ..."}`          |
//! | DELETE | /accounts/{id}/phone-numbers/{number}             | admin | remove a number (any accepted form)               |
//! | PUT    | /accounts/{id}/username                           | admin | set the username (service ID), once               |
//! | PUT    | /accounts/{id}/limits                             | admin | per-class device limits (`null` = default)        |
//! | GET    | /accounts/{id}/devices                            | admin | list devices                                      |
//! | POST   | /accounts/{id}/devices                            | admin | authorise a device                                |
//! | DELETE | /accounts/{id}/devices/{instance}                 | admin | revoke a device (drops its binding at once)       |
//! | PUT    | /accounts/{id}/devices/{instance}/push-token      | admin | set push provider + token                         |
//! | DELETE | /accounts/{id}/devices/{instance}/push-token      | admin | clear the push token                              |
//! | POST   | /accounts/{id}/turn-credentials                   | admin | TURN REST credentials for the account (`[turn]`)  |
//! | GET    | /registrations/{id}                               | admin | live bindings from the registrar                  |
//! | GET    | /me                                               | basic | own account                                       |
//! | PUT    | /me/username                                      | basic | set own username, once                            |
//! | PUT    | /me/password                                      | basic | change own password                               |
//! | GET    | /me/devices                                       | basic | list own devices                                  |
//! | POST   | /me/devices                                       | basic | authorise a device                                |
//! | DELETE | /me/devices/{instance}                            | basic | revoke own device                                 |
//! | PUT    | /me/devices/{instance}/push-token                 | basic | set push provider + token                         |
//! | DELETE | /me/devices/{instance}/push-token                 | basic | clear the push token                              |
//! | POST   | /me/turn-credentials                              | basic | TURN REST credentials `{username, password, ttl, uris}` |
//! | GET    | /dialplan                                         | basic or admin | prefix dial plan (OFFNET mark, routes)   |
//!
//! * admin: `Authorization: Bearer <api.admin_token>`.
//! * basic: `Authorization: Basic base64(identity:password)`, identity = SIP login,
//!   username or a phone number in any accepted form.
//! * `{id}` is the numeric account id; `{instance}` the `+sip.instance` URN, e.g.
//!   `urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6` (colons need no escaping).
//! * Authorise body: `{"instance_id": "urn:uuid:...", "class": "mobile|tablet|desktop|web",
//!   "name": "...", "push_provider"?: "apns|fcm|webhook", "push_token"?: "..."}`;
//!   201 when new, 200 when the instance was already authorised; a desktop/web device
//!   at the limit replaces the oldest of its class (listed in `replaced`).
//! * Errors: `{"error": {"code": "...", "message": "..."}}`; codes include
//!   `invalid_json`, `invalid_request`, `invalid_phone_number`, `invalid_instance_id`,
//!   `unauthorized`, `account_not_found`, `device_not_found`, `not_found`,
//!   `method_not_allowed`, `too_many_auth_failures` (429, after repeated failed
//!   authentications from one address), `login_taken`, `username_taken`, `username_already_set`,
//!   `phone_number_taken`, `device_limit_reached`, `device_class_mismatch`,
//!   `turn_not_configured` (404: no `[turn]` secret), `internal`.

pub mod accounts;
pub mod auth;
pub mod devices;
pub mod dialplan;
pub mod error;
pub mod limiter;
pub mod metrics;
pub mod openapi;
pub mod types;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::model::{AccountId, Binding};
use crate::registrar::RegistrarHandle;
use crate::store::{DeviceLimits, Store};
use error::ApiError;
pub use metrics::Metrics;

/// Every route, as (method, OpenAPI path). A test checks that the router serves each
/// and that the OpenAPI document lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/accounts"),
    ("GET", "/accounts"),
    ("GET", "/accounts/{id}"),
    ("PATCH", "/accounts/{id}"),
    ("DELETE", "/accounts/{id}"),
    ("POST", "/accounts/{id}/phone-numbers"),
    ("DELETE", "/accounts/{id}/phone-numbers/{number}"),
    ("PUT", "/accounts/{id}/username"),
    ("PUT", "/accounts/{id}/limits"),
    ("GET", "/accounts/{id}/devices"),
    ("POST", "/accounts/{id}/devices"),
    ("DELETE", "/accounts/{id}/devices/{instance}"),
    ("PUT", "/accounts/{id}/devices/{instance}/push-token"),
    ("DELETE", "/accounts/{id}/devices/{instance}/push-token"),
    ("POST", "/accounts/{id}/turn-credentials"),
    ("GET", "/registrations/{id}"),
    ("GET", "/me"),
    ("PUT", "/me/username"),
    ("PUT", "/me/password"),
    ("GET", "/me/devices"),
    ("POST", "/me/devices"),
    ("DELETE", "/me/devices/{instance}"),
    ("PUT", "/me/devices/{instance}/push-token"),
    ("DELETE", "/me/devices/{instance}/push-token"),
    ("POST", "/me/turn-credentials"),
    ("GET", "/dialplan"),
];

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the API needs from the registrar: live bindings and dropping an instance.
/// Implemented by [`RegistrarHandle`]; tests can record calls with their own.
pub trait Registrations: Send + Sync + 'static {
    fn bindings(&self, account: AccountId) -> Vec<Binding>;
    fn revoke_instance<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl Registrations for RegistrarHandle {
    fn bindings(&self, account: AccountId) -> Vec<Binding> {
        RegistrarHandle::bindings(self, account)
    }
    fn revoke_instance<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(RegistrarHandle::revoke_instance(self, account, instance_id))
    }
}

/// Settings the API takes from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Digest realm (`sip.realm`); HA1 values are computed with it.
    pub realm: String,
    pub admin_token: String,
    pub default_limits: DeviceLimits,
    /// Country code for accounts created without one.
    pub default_country_code: String,
    /// Failed-authentication limit per source address.
    pub auth_limiter: limiter::LimiterConfig,
}

struct StateInner {
    store: Store,
    registrations: Arc<dyn Registrations>,
    settings: ApiSettings,
    metrics: Metrics,
    limiter: limiter::AuthLimiter,
    dialplan: crate::proxy::DialPlanConfig,
    turn: Option<crate::relays::TurnService>,
    /// Set when the process starts draining: `/ready` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        store: Store,
        registrations: Arc<dyn Registrations>,
        settings: ApiSettings,
        metrics: Metrics,
    ) -> AppState {
        let limiter = limiter::AuthLimiter::new(settings.auth_limiter);
        AppState {
            inner: Arc::new(StateInner {
                store,
                registrations,
                settings,
                metrics,
                limiter,
                dialplan: crate::proxy::DialPlanConfig::default(),
                turn: None,
                draining: Arc::default(),
            }),
        }
    }

    /// The flag that turns `/ready` to 503 (shared with the process's drain).
    pub fn draining_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.inner.draining.clone()
    }

    /// The same state serving `plan` at `GET /dialplan`.
    pub fn with_dialplan(self, plan: crate::proxy::DialPlanConfig) -> AppState {
        self.with(|inner| inner.dialplan = plan)
    }

    /// The same state minting TURN credentials with `turn` (`None`: the routes
    /// answer 404 `turn_not_configured`).
    pub fn with_turn(self, turn: Option<crate::relays::TurnService>) -> AppState {
        self.with(|inner| inner.turn = turn)
    }

    /// The same state with `change` applied (a copy when the state is shared).
    fn with(self, change: impl FnOnce(&mut StateInner)) -> AppState {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => StateInner {
                store: shared.store.clone(),
                registrations: shared.registrations.clone(),
                settings: shared.settings.clone(),
                metrics: shared.metrics.clone(),
                limiter: limiter::AuthLimiter::new(shared.settings.auth_limiter),
                dialplan: shared.dialplan.clone(),
                turn: shared.turn.clone(),
                draining: shared.draining.clone(),
            },
        };
        change(&mut inner);
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// TURN credentials minting, when `[turn]` has a secret.
    pub fn turn(&self) -> Option<&crate::relays::TurnService> {
        self.inner.turn.as_ref()
    }
    pub fn dialplan(&self) -> &crate::proxy::DialPlanConfig {
        &self.inner.dialplan
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn registrations(&self) -> &dyn Registrations {
        self.inner.registrations.as_ref()
    }
    pub fn realm(&self) -> &str {
        &self.inner.settings.realm
    }
    pub fn admin_token(&self) -> &str {
        &self.inner.settings.admin_token
    }
    pub fn default_limits(&self) -> &DeviceLimits {
        &self.inner.settings.default_limits
    }
    pub fn default_country_code(&self) -> &str {
        &self.inner.settings.default_country_code
    }
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    pub fn limiter(&self) -> &limiter::AuthLimiter {
        &self.inner.limiter
    }
}

/// The API's router with its state applied.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/accounts", post(accounts::create).get(accounts::list))
        .route(
            "/accounts/{id}",
            get(accounts::get_one)
                .patch(accounts::update)
                .delete(accounts::remove),
        )
        .route(
            "/accounts/{id}/phone-numbers",
            post(accounts::add_phone_number),
        )
        .route(
            "/accounts/{id}/phone-numbers/{number}",
            delete(accounts::remove_phone_number),
        )
        .route("/accounts/{id}/username", put(accounts::set_username))
        .route("/accounts/{id}/limits", put(accounts::set_limits))
        .route(
            "/accounts/{id}/devices",
            get(devices::admin_list).post(devices::admin_authorise),
        )
        .route(
            "/accounts/{id}/devices/{instance}",
            delete(devices::admin_revoke),
        )
        .route(
            "/accounts/{id}/devices/{instance}/push-token",
            put(devices::admin_set_push).delete(devices::admin_clear_push),
        )
        .route(
            "/accounts/{id}/turn-credentials",
            post(accounts::turn_credentials),
        )
        .route("/registrations/{id}", get(devices::registrations))
        .route("/me", get(accounts::me))
        .route("/me/username", put(accounts::me_set_username))
        .route("/me/password", put(accounts::me_set_password))
        .route(
            "/me/devices",
            get(devices::me_list).post(devices::me_authorise),
        )
        .route("/me/devices/{instance}", delete(devices::me_revoke))
        .route("/me/turn-credentials", post(accounts::me_turn_credentials))
        .route("/dialplan", get(dialplan::get))
        .route(
            "/me/devices/{instance}/push-token",
            put(devices::me_set_push).delete(devices::me_clear_push),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Clients can send any method token: keep the label set bounded.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    state
        .metrics()
        .request(&method, &route, resp.status().as_u16());
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Liveness: the process serves HTTP. It does not look at the database, so that a
/// database outage takes instances out of service (`/ready`) without restarting
/// them all.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, body = types::Health)))]
pub async fn health() -> axum::Json<types::Health> {
    axum::Json(types::Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: 200 while the database answers and the process is not draining; 503
/// (`draining` or `unavailable`) otherwise.
#[utoipa::path(get, path = "/ready", tag = "service",
    responses((status = 200, body = types::Health), (status = 503, body = error::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<types::Health>, ApiError> {
    if state
        .inner
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "shutting down: not taking new work",
        ));
    }
    match state.store().ping().await {
        Ok(()) => Ok(axum::Json(types::Health {
            status: "ready".to_owned(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unavailable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "database unavailable",
            ))
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

/// Limits of the API's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A client must send a request's whole header within this time (slow-header
    /// clients would otherwise hold connections open for ever).
    pub header_read_timeout: std::time::Duration,
    /// After shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
            shutdown_grace: std::time::Duration::from_secs(10),
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, with default limits.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, ServeLimits::default()).await
}

/// Serves the API with explicit limits. HTTP/1.1 only (a private control API).
///
/// The accept loop is ours rather than `axum::serve` because that one has no header
/// read timeout and no connection cap.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad framing): nothing to report.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("HTTP API: connections still open after the shutdown grace period");
        }
    }
    Ok(())
}
