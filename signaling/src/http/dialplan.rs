//! `GET /dialplan`: the prefix dial plan as clients need it (which prefixes go OFFNET,
//! how numbers are rewritten), for an account holder or the administrator. Gateway
//! addresses stay private: clients never send there themselves.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{AccountAuth, Admin};
use super::error::{ApiError, ErrorBody};
use super::AppState;

/// Either credential: an admin bearer token or an account's HTTP Basic.
#[derive(Debug)]
pub struct AdminOrAccount;

impl FromRequestParts<AppState> for AdminOrAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(s, _)| s.eq_ignore_ascii_case("Bearer"));
        if bearer {
            Admin::from_request_parts(parts, state).await?;
        } else {
            AccountAuth::from_request_parts(parts, state).await?;
        }
        Ok(AdminOrAccount)
    }
}

/// One route as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DialRouteView {
    /// Dialled numbers starting with this (after the OFFNET mark and a leading `+`)
    /// take this route; the longest matching prefix wins.
    pub prefix: String,
    /// Leading characters removed before the call leaves.
    pub strip: usize,
    /// Characters put in front after stripping.
    pub prepend: String,
    pub name: Option<String>,
}

/// The dial plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct DialPlanView {
    /// A number starting with this is OFFNET (never an account of ours); it is
    /// stripped before matching.
    pub offnet_prefix: String,
    pub routes: Vec<DialRouteView>,
}

#[utoipa::path(get, path = "/dialplan", tag = "me", security(("basic" = []), ("admin" = [])),
    responses((status = 200, body = DialPlanView), (status = 401, body = ErrorBody),
        (status = 429, description = "too_many_auth_failures", body = ErrorBody)))]
pub async fn get(_: AdminOrAccount, State(state): State<AppState>) -> Json<DialPlanView> {
    let plan = state.dialplan();
    Json(DialPlanView {
        offnet_prefix: plan.offnet_prefix.clone(),
        routes: plan
            .routes
            .iter()
            .map(|r| DialRouteView {
                prefix: r.prefix.clone(),
                strip: r.strip,
                prepend: r.prepend.clone(),
                name: r.name.clone(),
            })
            .collect(),
    })
}
