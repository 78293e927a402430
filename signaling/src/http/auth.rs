//! Admin bearer token and account HTTP Basic authentication.
//!
//! Both compare in constant time. Basic credentials name the account by its SIP
//! login, username or a phone number in any accepted form; the password is checked
//! by recomputing HA1 (SHA-256) with the configured realm, so the API needs no copy
//! of the password beyond what the registrar already stores.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::model::AccountId;
use crate::store::ha1;

/// Proof that the request carried the admin bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The account that authenticated with HTTP Basic.
#[derive(Debug, Clone, Copy)]
pub struct AccountAuth(pub AccountId);

fn source(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Refuses a banned source before its credentials are looked at.
fn check_ban(state: &AppState, ip: Option<IpAddr>) -> Result<(), ApiError> {
    let Some(ip) = ip else { return Ok(()) };
    match state.limiter().banned(ip, Instant::now()) {
        Some(left) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_auth_failures",
                "too many failed authentications from this address; try again later",
            );
            e.retry_after = Some(left.as_secs().max(1));
            Err(e)
        }
        None => Ok(()),
    }
}

fn failed(state: &AppState, ip: Option<IpAddr>, kind: &str) {
    state.metrics().auth_failure(kind);
    if let Some(ip) = ip {
        if state.limiter().failure(ip, Instant::now()) {
            let shown = if crate::log_pii() {
                ip.to_string()
            } else {
                "<redacted>".to_owned()
            };
            tracing::warn!(source = %shown, kind, "HTTP API: source banned after repeated authentication failures");
        }
    }
}

fn authorization(parts: &Parts) -> Option<&str> {
    parts.headers.get(AUTHORIZATION)?.to_str().ok()
}

/// Splits `Scheme credentials`, matching the scheme case-insensitively (RFC 9110 11.1).
fn scheme<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(name).then(|| rest.trim())
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = source(parts);
        check_ban(state, ip)?;
        // No bearer token at all is not a guess: it is not counted against the source
        // (otherwise a client that asks without credentials first would ban itself).
        let Some(token) = authorization(parts).and_then(|v| scheme(v, "Bearer")) else {
            return Err(ApiError::unauthorized("admin bearer token required"));
        };
        let expected = state.admin_token().as_bytes();
        if bool::from(token.as_bytes().ct_eq(expected)) {
            Ok(Admin)
        } else {
            failed(state, ip, "admin");
            Err(ApiError::unauthorized("invalid admin token"))
        }
    }
}

fn basic_error(message: &str) -> ApiError {
    let mut e = ApiError::unauthorized(message);
    e.basic_challenge = true;
    e
}

impl FromRequestParts<AppState> for AccountAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = source(parts);
        check_ban(state, ip)?;
        // No Basic credentials at all is not a guess (see `Admin`).
        let Some(encoded) = authorization(parts).and_then(|v| scheme(v, "Basic")) else {
            return Err(basic_error("HTTP Basic credentials required"));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((identity, password)) = decoded.as_deref().and_then(|s| s.split_once(':')) else {
            failed(state, ip, "basic");
            return Err(basic_error("malformed HTTP Basic credentials"));
        };
        let now = Instant::now();
        if let Some(left) = state.limiter().identity_blocked(identity, now) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_auth_failures",
                "too many failed logins for this identity; try again shortly",
            );
            e.retry_after = Some(left.as_secs().max(1));
            return Err(e);
        }
        let creds = state.store().find_account(identity).await?;
        // Unknown identities still cost one hash so that timing does not tell which
        // identities exist.
        let (login, expected) = match &creds {
            Some(c) => (c.login.as_str(), c.ha1_sha256.as_str()),
            None => (
                "",
                "0000000000000000000000000000000000000000000000000000000000000000",
            ),
        };
        let (_, computed) = ha1(login, state.realm(), password);
        let ok = bool::from(computed.as_bytes().ct_eq(expected.as_bytes()));
        match creds {
            Some(c) if ok => {
                // Clears this identity's failures only; the source's stay (a login as
                // oneself must not wipe guesses at someone else).
                state.limiter().identity_success(identity);
                Ok(AccountAuth(c.id))
            }
            _ => {
                if state.limiter().identity_failure(identity, now).is_some() {
                    tracing::info!("HTTP API: an identity is slowed after repeated failed logins");
                }
                failed(state, ip, "basic");
                Err(basic_error("wrong identity or password"))
            }
        }
    }
}
