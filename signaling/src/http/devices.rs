//! Device routes (administrator under `/accounts/{id}`, account holder under `/me`)
//! and live registrations.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{AccountAuth, Admin};
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::types::*;
use super::AppState;
use crate::model::AccountId;
use crate::store::{NewDevice, StoreError};

/// Instance IDs are device identifiers: shown in logs only when personal data may be.
struct LogInstance<'a>(&'a str);

impl std::fmt::Display for LogInstance<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if crate::log_pii() {
            f.write_str(self.0)
        } else {
            f.write_str("urn:<redacted>")
        }
    }
}

async fn list(state: &AppState, id: AccountId) -> Result<Json<DeviceList>, ApiError> {
    if state.store().get_account(id).await?.is_none() {
        return Err(ApiError::account_not_found());
    }
    let devices = state.store().list_devices(id).await?;
    Ok(Json(DeviceList {
        devices: devices.into_iter().map(DeviceView::from).collect(),
    }))
}

async fn authorise(
    state: &AppState,
    id: AccountId,
    body: AuthoriseDevice,
) -> Result<Response, ApiError> {
    let instance_id = canonical_instance_id(&body.instance_id)?;
    check_device_name(&body.name)?;
    let push = match (&body.push_provider, &body.push_token) {
        (Some(p), Some(t)) => {
            check_push(p, t)?;
            Some((p.as_str(), t.as_str()))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "push_provider and push_token go together",
            ))
        }
    };
    let new = NewDevice {
        instance_id: &instance_id,
        class: body.class,
        name: &body.name,
        push_provider: push.map(|p| p.0),
        push_token: push.map(|p| p.1),
    };
    let outcome = match state
        .store()
        .authorise_device(id, &new, state.default_limits())
        .await
    {
        Ok(o) => o,
        Err(e @ StoreError::DeviceLimitReached { .. }) => {
            state.metrics().device_refused();
            tracing::info!(
                account = id,
                class = body.class.as_str(),
                "device refused: {e}"
            );
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    for old in &outcome.replaced {
        state
            .registrations()
            .revoke_instance(id, &old.instance_id)
            .await;
        tracing::info!(
            account = id,
            class = old.class.as_str(),
            instance = %LogInstance(&old.instance_id),
            "device replaced by a new sign-in; its registration was dropped"
        );
    }
    state
        .metrics()
        .devices_revoked(outcome.replaced.len() as u64);
    if outcome.created {
        state.metrics().device_authorised(body.class.as_str());
        tracing::info!(account = id, class = body.class.as_str(), instance = %LogInstance(&instance_id), "device authorised");
    }
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = AuthorisedView {
        device: outcome.device.into(),
        replaced: outcome
            .replaced
            .into_iter()
            .map(|d| d.instance_id)
            .collect(),
    };
    Ok((status, Json(view)).into_response())
}

async fn revoke(state: &AppState, id: AccountId, raw: &str) -> Result<StatusCode, ApiError> {
    let instance_id = canonical_instance_id(raw)?;
    match state.store().delete_device(id, &instance_id).await? {
        Some(_) => {
            state
                .registrations()
                .revoke_instance(id, &instance_id)
                .await;
            state.metrics().devices_revoked(1);
            tracing::info!(account = id, instance = %LogInstance(&instance_id), "device revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        None if state.store().get_account(id).await?.is_none() => {
            Err(ApiError::account_not_found())
        }
        None => Err(ApiError::device_not_found()),
    }
}

async fn set_push(
    state: &AppState,
    id: AccountId,
    raw: &str,
    push: Option<(&str, &str)>,
) -> Result<Json<DeviceView>, ApiError> {
    let instance_id = canonical_instance_id(raw)?;
    if let Some((p, t)) = push {
        check_push(p, t)?;
    }
    match state.store().set_push_token(id, &instance_id, push).await {
        Ok(d) => Ok(Json(d.into())),
        Err(StoreError::DeviceNotFound) if state.store().get_account(id).await?.is_none() => {
            Err(ApiError::account_not_found())
        }
        Err(e) => Err(e.into()),
    }
}

// ----- administrator ------------------------------------------------------------------

#[utoipa::path(get, path = "/accounts/{id}/devices", tag = "devices", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 200, body = DeviceList), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found", body = ErrorBody)))]
pub async fn admin_list(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Json<DeviceList>, ApiError> {
    list(&state, id).await
}

#[utoipa::path(post, path = "/accounts/{id}/devices", tag = "devices", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    request_body = AuthoriseDevice,
    responses((status = 201, description = "Authorised", body = AuthorisedView),
        (status = 200, description = "Already authorised (name and push token updated)", body = AuthorisedView),
        (status = 400, description = "invalid_json, invalid_request, invalid_instance_id", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "account_not_found", body = ErrorBody),
        (status = 409, description = "device_limit_reached, device_class_mismatch", body = ErrorBody)))]
pub async fn admin_authorise(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
    ApiJson(body): ApiJson<AuthoriseDevice>,
) -> Result<Response, ApiError> {
    authorise(&state, id, body).await
}

#[utoipa::path(delete, path = "/accounts/{id}/devices/{instance}", tag = "devices", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id"),
        ("instance" = String, Path, description = "Instance URN")),
    responses((status = 204, description = "Revoked; its binding was dropped"),
        (status = 400, description = "invalid_instance_id", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found, device_not_found", body = ErrorBody)))]
pub async fn admin_revoke(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((id, instance)): ApiPath<(AccountId, String)>,
) -> Result<StatusCode, ApiError> {
    revoke(&state, id, &instance).await
}

#[utoipa::path(put, path = "/accounts/{id}/devices/{instance}/push-token", tag = "devices",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id"),
        ("instance" = String, Path, description = "Instance URN")),
    request_body = PushTokenBody,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found, device_not_found", body = ErrorBody)))]
pub async fn admin_set_push(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((id, instance)): ApiPath<(AccountId, String)>,
    ApiJson(body): ApiJson<PushTokenBody>,
) -> Result<Json<DeviceView>, ApiError> {
    set_push(&state, id, &instance, Some((&body.provider, &body.token))).await
}

#[utoipa::path(delete, path = "/accounts/{id}/devices/{instance}/push-token", tag = "devices",
    security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id"),
        ("instance" = String, Path, description = "Instance URN")),
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found, device_not_found", body = ErrorBody)))]
pub async fn admin_clear_push(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((id, instance)): ApiPath<(AccountId, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    set_push(&state, id, &instance, None).await
}

#[utoipa::path(get, path = "/registrations/{id}", tag = "devices", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 200, body = RegistrationList), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found", body = ErrorBody)))]
pub async fn registrations(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Json<RegistrationList>, ApiError> {
    if state.store().get_account(id).await?.is_none() {
        return Err(ApiError::account_not_found());
    }
    let bindings = state.registrations().bindings(id);
    Ok(Json(RegistrationList {
        account_id: id,
        bindings: bindings.into_iter().map(BindingView::from).collect(),
    }))
}

// ----- account holder -------------------------------------------------------------------

#[utoipa::path(get, path = "/me/devices", tag = "me", security(("basic" = [])),
    responses((status = 200, body = DeviceList), (status = 401, body = ErrorBody)))]
pub async fn me_list(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
) -> Result<Json<DeviceList>, ApiError> {
    list(&state, id).await
}

#[utoipa::path(post, path = "/me/devices", tag = "me", security(("basic" = [])),
    request_body = AuthoriseDevice,
    responses((status = 201, description = "Authorised", body = AuthorisedView),
        (status = 200, description = "Already authorised (name and push token updated)", body = AuthorisedView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "device_limit_reached, device_class_mismatch", body = ErrorBody)))]
pub async fn me_authorise(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AuthoriseDevice>,
) -> Result<Response, ApiError> {
    authorise(&state, id, body).await
}

#[utoipa::path(delete, path = "/me/devices/{instance}", tag = "me", security(("basic" = [])),
    params(("instance" = String, Path, description = "Instance URN")),
    responses((status = 204, description = "Revoked; its binding was dropped"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "device_not_found", body = ErrorBody)))]
pub async fn me_revoke(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
    ApiPath(instance): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    revoke(&state, id, &instance).await
}

#[utoipa::path(put, path = "/me/devices/{instance}/push-token", tag = "me", security(("basic" = [])),
    params(("instance" = String, Path, description = "Instance URN")),
    request_body = PushTokenBody,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "device_not_found", body = ErrorBody)))]
pub async fn me_set_push(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
    ApiPath(instance): ApiPath<String>,
    ApiJson(body): ApiJson<PushTokenBody>,
) -> Result<Json<DeviceView>, ApiError> {
    set_push(&state, id, &instance, Some((&body.provider, &body.token))).await
}

#[utoipa::path(delete, path = "/me/devices/{instance}/push-token", tag = "me", security(("basic" = [])),
    params(("instance" = String, Path, description = "Instance URN")),
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "device_not_found", body = ErrorBody)))]
pub async fn me_clear_push(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
    ApiPath(instance): ApiPath<String>,
) -> Result<Json<DeviceView>, ApiError> {
    set_push(&state, id, &instance, None).await
}
