//! The one error type of the control API, and extractors whose rejections are it.
//!
//! Clients see [`ErrorBody`]: a stable machine-readable code and a message for a
//! person. Nothing internal reaches the client: every message describes the
//! client's own request or the relay's capacity.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tandem_control::ErrorBody;

use crate::media::MediaError;

/// Seconds a client is asked to wait (`Retry-After`) when the relay has no room.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An error answer: status, code and message, with the headers some need.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// One of the codes [`ErrorBody::error`] lists.
    pub code: &'static str,
    pub message: String,
    /// Adds `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    /// Adds `WWW-Authenticate: Bearer` (401).
    pub bearer_challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            bearer_challenge: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.bearer_challenge = true;
        e
    }

    fn no_room(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ports_exhausted", message);
        e.retry_after = Some(RETRY_AFTER_SECS);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.bearer_challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> ApiError {
        use StatusCode as S;
        match e {
            MediaError::Invalid(i) => ApiError::bad_request(i.to_string()),
            MediaError::Family => ApiError::bad_request("no relay address of that family"),
            MediaError::NotFound => ApiError::not_found("no such session"),
            MediaError::AlreadyAnswered => ApiError::new(
                S::CONFLICT,
                "already_answered",
                "the session has its answer already; send later changes as callee",
            ),
            MediaError::NotAnswered => ApiError::new(
                S::CONFLICT,
                "not_answered",
                "the session has no answer yet; send the callee's first SDP as answer",
            ),
            MediaError::StreamCount => ApiError::bad_request(
                "the number of streams differs between the caller and the callee legs",
            ),
            MediaError::Srtp(k) => ApiError::bad_request(k.to_string()),
            MediaError::PortsExhausted => ApiError::no_room(
                "no free relay port on this relay; retry later or place the session on \
                 another relay",
            ),
            MediaError::Draining => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "draining",
                "this relay is shutting down; place the session on another relay",
            ),
            MediaError::TooManySessions => ApiError::no_room(
                "this relay has reached its media session limit (media-max-sessions); retry \
                 later or place the session on another relay",
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            // The serde message says what is wrong with the client's own input (syntax,
            // a missing, mistyped or unknown field), so it is safe to return.
            JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::bad_request(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::bad_request("expected Content-Type: application/json")
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_request",
                    format!("request body larger than {} bytes", super::MAX_BODY_BYTES),
                )
            }
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path parameter: {}", r.body_text()))
    }
}

/// `axum::Json` whose rejection is an [`ApiError`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}
