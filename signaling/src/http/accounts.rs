//! Account routes: administrator CRUD, public IDs, limits, and `/me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::auth::{AccountAuth, Admin};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::types::*;
use super::AppState;
use crate::model::{AccountId, MediaPolicy};
use crate::number::{self, Redacted};
use crate::relays::TurnCredentials;
use crate::store::{LimitOverrides, NewAccount, StoreError};

async fn view(state: &AppState, id: AccountId) -> Result<AccountView, ApiError> {
    let account = state
        .store()
        .get_account(id)
        .await?
        .ok_or_else(ApiError::account_not_found)?;
    Ok(AccountView::new(account, state.default_limits()))
}

#[utoipa::path(post, path = "/accounts", tag = "accounts", security(("admin" = [])),
    request_body = CreateAccount,
    responses(
        (status = 201, body = AccountView),
        (status = 400, description = "invalid_json, invalid_request, invalid_phone_number", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 409, description = "login_taken, username_taken, phone_number_taken", body = ErrorBody)))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    check_login(&body.login)?;
    check_password(&body.password)?;
    let cc = body
        .country_code
        .as_deref()
        .unwrap_or(state.default_country_code());
    check_country_code(cc)?;
    if let Some(name) = &body.display_name {
        check_display_name(name)?;
    }
    if let Some(u) = &body.username {
        check_username(u)?;
    }
    let numbers = body
        .phone_numbers
        .iter()
        .map(|n| number::normalize(n, cc))
        .collect::<Result<Vec<_>, _>>()?;
    let account = state
        .store()
        .create_account(&NewAccount {
            login: &body.login,
            password: &body.password,
            realm: state.realm(),
            country_code: cc,
            display_name: body.display_name.as_deref(),
        })
        .await?;
    // Public IDs after the account exists; a conflict undoes the whole creation so
    // that a failed request leaves nothing behind.
    let mut result: Result<(), StoreError> = Ok(());
    if let Some(media) = body.media.filter(|m| *m != MediaPolicy::default()) {
        result = state.store().set_media_policy(account.id, media).await;
    }
    if let (Ok(()), Some(u)) = (&result, &body.username) {
        result = state.store().set_username(account.id, u).await;
    }
    for n in &numbers {
        if result.is_err() {
            break;
        }
        result = state.store().add_phone_number(account.id, n).await;
    }
    if let Err(e) = result {
        if let Err(undo) = state.store().delete_account(account.id).await {
            tracing::error!(error = %undo, "could not undo a partly created account");
        }
        return Err(e.into());
    }
    tracing::info!(account = account.id, "account created");
    Ok((StatusCode::CREATED, Json(view(&state, account.id).await?)))
}

#[utoipa::path(get, path = "/accounts", tag = "accounts", security(("admin" = [])),
    params(ListParams),
    responses((status = 200, body = AccountList), (status = 401, body = ErrorBody)))]
pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<AccountList>, ApiError> {
    if let Some(identity) = &params.identity {
        let found = state.store().find_account(identity).await?;
        let mut accounts = Vec::new();
        if let Some(creds) = found {
            if let Some(a) = state.store().get_account(creds.id).await? {
                accounts.push(AccountView::new(a, state.default_limits()));
            }
        }
        return Ok(Json(AccountList {
            accounts,
            next_after: None,
        }));
    }
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1-1000"));
    }
    let accounts = state
        .store()
        .list_accounts(params.after.unwrap_or(0), limit)
        .await?;
    let next_after = if accounts.len() == limit as usize {
        accounts.last().map(|a| a.id)
    } else {
        None
    };
    let accounts = accounts
        .into_iter()
        .map(|a| AccountView::new(a, state.default_limits()))
        .collect();
    Ok(Json(AccountList {
        accounts,
        next_after,
    }))
}

#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 200, body = AccountView), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found", body = ErrorBody)))]
pub async fn get_one(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Json<AccountView>, ApiError> {
    Ok(Json(view(&state, id).await?))
}

#[utoipa::path(patch, path = "/accounts/{id}", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    request_body = UpdateAccount,
    responses((status = 200, body = AccountView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "account_not_found", body = ErrorBody)))]
pub async fn update(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
    ApiJson(body): ApiJson<UpdateAccount>,
) -> Result<Json<AccountView>, ApiError> {
    if let Some(p) = &body.password {
        check_password(p)?;
    }
    if let Some(Some(name)) = &body.display_name {
        check_display_name(name)?;
    }
    if let Some(cc) = &body.country_code {
        check_country_code(cc)?;
    }
    if let Some(Some(uri)) = &body.no_answer_forward {
        check_forward_uri(uri)?;
    }
    let account = state
        .store()
        .update_account(
            id,
            body.password.as_deref().map(|p| (p, state.realm())),
            body.display_name.as_ref().map(|n| n.as_deref()),
            body.country_code.as_deref(),
            body.no_answer_forward.as_ref().map(|n| n.as_deref()),
        )
        .await?;
    if let Some(media) = body.media {
        state.store().set_media_policy(id, media).await?;
        return Ok(Json(view(&state, id).await?));
    }
    Ok(Json(AccountView::new(account, state.default_limits())))
}

#[utoipa::path(delete, path = "/accounts/{id}", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 204, description = "Deleted; its registrations were dropped"),
        (status = 401, body = ErrorBody), (status = 404, description = "account_not_found", body = ErrorBody)))]
pub async fn remove(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<StatusCode, ApiError> {
    let devices = state.store().delete_account(id).await?;
    for d in &devices {
        state
            .registrations()
            .revoke_instance(id, &d.instance_id)
            .await;
    }
    state.metrics().devices_revoked(devices.len() as u64);
    tracing::info!(account = id, devices = devices.len(), "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/accounts/{id}/phone-numbers", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    request_body = PhoneNumberBody,
    responses((status = 201, body = PhoneNumberView),
        (status = 400, description = "invalid_phone_number", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "account_not_found", body = ErrorBody),
        (status = 409, description = "phone_number_taken", body = ErrorBody)))]
pub async fn add_phone_number(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
    ApiJson(body): ApiJson<PhoneNumberBody>,
) -> Result<(StatusCode, Json<PhoneNumberView>), ApiError> {
    let account = state
        .store()
        .get_account(id)
        .await?
        .ok_or_else(ApiError::account_not_found)?;
    let e164 = number::normalize(&body.number, &account.country_code)?;
    state.store().add_phone_number(id, &e164).await?;
    tracing::info!(account = id, number = %Redacted(&e164), "phone number added");
    Ok((StatusCode::CREATED, Json(PhoneNumberView { number: e164 })))
}

#[utoipa::path(delete, path = "/accounts/{id}/phone-numbers/{number}", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id"),
        ("number" = String, Path, description = "The number in any accepted form")),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found, phone_number_not_found", body = ErrorBody)))]
pub async fn remove_phone_number(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((id, raw)): ApiPath<(AccountId, String)>,
) -> Result<StatusCode, ApiError> {
    let account = state
        .store()
        .get_account(id)
        .await?
        .ok_or_else(ApiError::account_not_found)?;
    let e164 = number::normalize(&raw, &account.country_code)?;
    if state.store().remove_phone_number(id, &e164).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "phone_number_not_found",
            "the account has no such number",
        ))
    }
}

async fn set_username_of(
    state: &AppState,
    id: AccountId,
    username: &str,
) -> Result<Json<AccountView>, ApiError> {
    check_username(username)?;
    state.store().set_username(id, username).await?;
    Ok(Json(view(state, id).await?))
}

#[utoipa::path(put, path = "/accounts/{id}/username", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    request_body = UsernameBody,
    responses((status = 200, body = AccountView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "account_not_found", body = ErrorBody),
        (status = 409, description = "username_taken, username_already_set", body = ErrorBody)))]
pub async fn set_username(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
    ApiJson(body): ApiJson<UsernameBody>,
) -> Result<Json<AccountView>, ApiError> {
    set_username_of(&state, id, &body.username).await
}

#[utoipa::path(put, path = "/accounts/{id}/limits", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    request_body = LimitsBody,
    responses((status = 200, body = AccountView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "account_not_found", body = ErrorBody)))]
pub async fn set_limits(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
    ApiJson(body): ApiJson<LimitsBody>,
) -> Result<Json<AccountView>, ApiError> {
    for v in [body.mobile, body.desktop, body.web].into_iter().flatten() {
        if v > MAX_LIMIT {
            return Err(ApiError::invalid(format!(
                "limits must be at most {MAX_LIMIT}"
            )));
        }
    }
    let overrides = LimitOverrides {
        mobile: body.mobile,
        desktop: body.desktop,
        web: body.web,
    };
    state.store().set_limits(id, &overrides).await?;
    Ok(Json(view(&state, id).await?))
}

#[utoipa::path(get, path = "/me", tag = "me", security(("basic" = [])),
    responses((status = 200, body = AccountView), (status = 401, body = ErrorBody)))]
pub async fn me(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
) -> Result<Json<AccountView>, ApiError> {
    Ok(Json(view(&state, id).await?))
}

/// Credentials for the media relays' TURN service (coturn `use-auth-secret`
/// scheme): username `<expiry>:<account id>`, password
/// base64(HMAC-SHA1(secret, username)), valid for `ttl` seconds, with the URIs to use
/// them on.
#[utoipa::path(post, path = "/me/turn-credentials", tag = "me", security(("basic" = [])),
    responses((status = 200, body = TurnCredentials), (status = 401, body = ErrorBody),
        (status = 404, description = "turn_not_configured: no [turn] secret", body = ErrorBody)))]
pub async fn me_turn_credentials(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
) -> Result<Json<TurnCredentials>, ApiError> {
    turn_credentials_for(&state, id).await
}

/// TURN credentials for an account, as `POST /me/turn-credentials` gives them.
#[utoipa::path(post, path = "/accounts/{id}/turn-credentials", tag = "accounts", security(("admin" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 200, body = TurnCredentials), (status = 401, body = ErrorBody),
        (status = 404, description = "account_not_found, turn_not_configured", body = ErrorBody)))]
pub async fn turn_credentials(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Json<TurnCredentials>, ApiError> {
    turn_credentials_for(&state, id).await
}

async fn turn_credentials_for(
    state: &AppState,
    id: AccountId,
) -> Result<Json<TurnCredentials>, ApiError> {
    let Some(turn) = state.turn() else {
        return Err(ApiError::not_found(
            "turn_not_configured",
            "this server mints no TURN credentials: [turn] has no secret",
        ));
    };
    if state.store().get_account(id).await?.is_none() {
        return Err(ApiError::account_not_found());
    }
    Ok(Json(turn.mint(id)))
}

#[utoipa::path(put, path = "/me/username", tag = "me", security(("basic" = [])),
    request_body = UsernameBody,
    responses((status = 200, body = AccountView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "username_taken, username_already_set", body = ErrorBody)))]
pub async fn me_set_username(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UsernameBody>,
) -> Result<Json<AccountView>, ApiError> {
    set_username_of(&state, id, &body.username).await
}

#[utoipa::path(put, path = "/me/password", tag = "me", security(("basic" = [])),
    request_body = PasswordBody,
    responses((status = 204, description = "Changed; both HA1 values were recomputed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn me_set_password(
    AccountAuth(id): AccountAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    check_password(&body.password)?;
    state
        .store()
        .update_account(id, Some((&body.password, state.realm())), None, None, None)
        .await?;
    tracing::info!(account = id, "password changed by the account holder");
    Ok(StatusCode::NO_CONTENT)
}
