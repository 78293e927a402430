//! The control API through which signaling places, changes, reads and ends media
//! sessions for calls, served over HTTP on a private listener (`control-listen`).
//! The request and response types are the `tandem-control` crate's; its doc has the
//! model and the routes:
//!
//! | route | answer |
//! |---|---|
//! | `POST /sessions` | 201 `SessionInfo` |
//! | `PATCH /sessions/{id}` | 200 `SessionInfo` |
//! | `GET /sessions/{id}` | 200 `SessionInfo` (an ended one's final state for a while) |
//! | `DELETE /sessions/{id}` | 200 `SessionInfo` with the final counters |
//! | `GET /sessions/ended?after=<seq>` | 200 `EndedPage`: sessions ended after a cursor |
//! | `GET /load` | 200 `Load` |
//! | `GET /health` | 200 `Health` |
//! | `GET /openapi.json` | this API as OpenAPI 3.1 |
//!
//! Every route, the unknown ones too, needs `Authorization: Bearer <token>` with one
//! of the configured tokens (`control-secret`, `control-secret-file`); errors are
//! `ErrorBody` JSON. Handlers read the clock once and pass the time down; the
//! driver's [`crate::driver::sessions::Control`] handle logs sessions created and
//! ended, so nothing is logged per request.

pub mod error;
pub mod openapi;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tandem_control::{
    CreateSession, EndedPage, ErrorBody, Health, Load, SessionInfo, UpdateSession,
};
use tokio_util::sync::CancellationToken;

use error::{ApiError, ApiJson, ApiPath};

use crate::media::MediaError;

/// Every route, as (method, OpenAPI path). A test checks that the OpenAPI document
/// lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/sessions"),
    ("PATCH", "/sessions/{id}"),
    ("GET", "/sessions/{id}"),
    ("DELETE", "/sessions/{id}"),
    ("GET", "/sessions/ended"),
    ("GET", "/load"),
    ("GET", "/health"),
    ("GET", "/openapi.json"),
];

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The bearer tokens the API accepts, kept as SHA-256 digests so that comparing a
/// presented token takes the same time whatever its length and content.
#[derive(Clone)]
pub struct Tokens(Arc<[[u8; 32]]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens(<{} redacted>)", self.0.len())
    }
}

impl Tokens {
    pub fn new<S: AsRef<[u8]>>(tokens: impl IntoIterator<Item = S>) -> Tokens {
        Tokens(
            tokens
                .into_iter()
                .map(|t| Sha256::digest(t.as_ref()).into())
                .collect(),
        )
    }

    /// Whether `presented` is one of the tokens. Every token is compared, in
    /// constant time, so the answer's timing tells nothing about which matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut ok = subtle::Choice::from(0);
        for t in self.0.iter() {
            ok |= t.ct_eq(&digest);
        }
        bool::from(ok)
    }
}

/// Requests the API refused before looking at them, for `/metrics`.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Without an `Authorization: Bearer` header.
    pub auth_missing: AtomicU64,
    /// With a token that is none of the configured ones.
    pub auth_wrong: AtomicU64,
}

/// What the API needs from the relay. The driver's `Control` handle implements it,
/// so this module knows sessions by their operations, not by the workers that hold
/// them (the driver depends on this module, not the reverse). Every method takes the
/// time from its caller.
pub trait Sessions: Send + Sync + std::fmt::Debug {
    fn create(&self, now: Instant, req: &CreateSession) -> Result<SessionInfo, MediaError>;
    fn update(
        &self,
        now: Instant,
        id: &str,
        req: &UpdateSession,
    ) -> Result<SessionInfo, MediaError>;
    fn get(&self, now: Instant, id: &str) -> Result<SessionInfo, MediaError>;
    fn delete(&self, now: Instant, id: &str) -> Result<SessionInfo, MediaError>;
    fn load(&self, now: Instant) -> Load;
    /// Sessions that ended after the cursor `after`, oldest first.
    fn ended_since(&self, now: Instant, after: u64) -> EndedPage;
}

#[derive(Debug, Clone)]
struct ApiState {
    control: Arc<dyn Sessions>,
    tokens: Tokens,
    stats: Arc<ApiStats>,
}

/// The API's router, every route behind the bearer token check.
pub fn router(control: Arc<dyn Sessions>, tokens: Tokens, stats: Arc<ApiStats>) -> Router {
    let state = ApiState {
        control,
        tokens,
        stats,
    };
    Router::new()
        .route("/sessions", post(create))
        // A static segment wins over the `{id}` capture (session ids are hex).
        .route("/sessions/ended", get(ended))
        .route("/sessions/{id}", get(read).patch(update).delete(remove))
        .route("/load", get(load))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    control: Arc<dyn Sessions>,
    tokens: Tokens,
    stats: Arc<ApiStats>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let r = axum::serve(listener, router(control, tokens, stats))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "control API listener stopped");
    }
}

/// The one place a request is authenticated: `Authorization: Bearer <token>`, the
/// scheme matched case-insensitively (RFC 9110 section 11.1).
async fn authenticate(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, t)| t.trim());
    match token {
        Some(t) if state.tokens.accepts(t.as_bytes()) => next.run(req).await,
        Some(_) => {
            state.stats.auth_wrong.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("control API: refused a wrong bearer token");
            ApiError::unauthorized("wrong bearer token").into_response()
        }
        None => {
            state.stats.auth_missing.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("control API: refused a request without a bearer token");
            ApiError::unauthorized("Authorization: Bearer <token> required").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        "method not allowed on this route",
    )
}

/// Place a media session for a call: the caller leg's data from the offer.
#[utoipa::path(post, path = "/sessions", tag = "sessions",
    request_body = CreateSession,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; the relay ports of both legs", body = SessionInfo),
        (status = 400, description = "bad_request: invalid request or no relay address of that family", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 413, description = "request body too large", body = ErrorBody),
        (status = 503, description = "ports_exhausted: no free port or the session limit is reached (Retry-After)", body = ErrorBody),
    ))]
async fn create(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<CreateSession>,
) -> Result<(StatusCode, Json<SessionInfo>), ApiError> {
    let now = Instant::now();
    let info = s.control.create(now, &req)?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// The callee's answer (once), or a later change of either leg.
#[utoipa::path(patch, path = "/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    request_body = UpdateSession,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; the session as it is now", body = SessionInfo),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "not_found: no such live session", body = ErrorBody),
        (status = 409, description = "already_answered (a second answer) or not_answered (callee before the answer)", body = ErrorBody),
        (status = 413, description = "request body too large", body = ErrorBody),
        (status = 503, description = "ports_exhausted (Retry-After)", body = ErrorBody),
    ))]
async fn update(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateSession>,
) -> Result<Json<SessionInfo>, ApiError> {
    let now = Instant::now();
    Ok(Json(s.control.update(now, &id, &req)?))
}

/// A session's state and counters; an ended one's final state for a while after
/// it ended.
#[utoipa::path(get, path = "/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The session, live or recently ended", body = SessionInfo),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
    ))]
async fn read(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let now = Instant::now();
    Ok(Json(s.control.get(now, &id)?))
}

/// End a session; its ports are free at once.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended; the final counters", body = SessionInfo),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "not_found: no such live session", body = ErrorBody),
    ))]
async fn remove(
    State(s): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let now = Instant::now();
    Ok(Json(s.control.delete(now, &id)?))
}

/// The cursor of `GET /sessions/ended`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EndedQuery {
    /// The `next` of the previous answer; 0 (the default) reads from the oldest
    /// ended session the relay still keeps.
    #[serde(default)]
    after: u64,
}

/// Sessions that ended after a cursor (timed out, deleted, shut down), oldest first:
/// one request per relay tells signaling of every session the relay ended itself.
#[utoipa::path(get, path = "/sessions/ended", tag = "sessions",
    params(EndedQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended sessions after the cursor and the next cursor", body = EndedPage),
        (status = 400, description = "bad_request: `after` is not a number", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
    ))]
async fn ended(
    State(s): State<ApiState>,
    q: Result<Query<EndedQuery>, QueryRejection>,
) -> Result<Json<EndedPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = Instant::now();
    Ok(Json(s.control.ended_since(now, q.after)))
}

/// What placement needs to know about this relay.
#[utoipa::path(get, path = "/load", tag = "service",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Sessions, allocations, packet rate, workers", body = Load),
        (status = 401, description = "unauthorized", body = ErrorBody),
    ))]
async fn load(State(s): State<ApiState>) -> Json<Load> {
    let now = Instant::now();
    Json(s.control.load(now))
}

/// Whether the relay serves, and its version.
#[utoipa::path(get, path = "/health", tag = "service",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Serving; the relay's version", body = Health),
        (status = 401, description = "unauthorized", body = ErrorBody),
    ))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// This API as OpenAPI 3.1.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json"),
        (status = 401, description = "unauthorized", body = ErrorBody),
    ))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}
