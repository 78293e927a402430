//! Request and response bodies of the HTTP API, and the checks on their fields.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::model::{Binding, Device, DeviceClass, MediaPolicy};
use crate::store::{Account, DeviceLimits, LimitOverrides};

/// Device class as it appears in JSON (schema only).
#[derive(Debug, ToSchema)]
#[schema(as = DeviceClass)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClassSchema {
    Mobile,
    Tablet,
    Desktop,
    Web,
}

/// Media policy as it appears in JSON (schema only): `ice` (end to end where ICE
/// finds a path, the relay offered as a candidate; the default), `force-relay`
/// (always through a media relay) or `off` (no relay).
#[derive(Debug, ToSchema)]
#[schema(as = MediaPolicy)]
#[allow(dead_code)]
#[serde(rename_all = "kebab-case")]
pub enum MediaPolicySchema {
    Ice,
    ForceRelay,
    Off,
}

/// Push provider as it appears in JSON (schema only).
#[derive(Debug, ToSchema)]
#[schema(as = PushProvider)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum PushProviderSchema {
    Apns,
    Fcm,
    Webhook,
}

pub const PUSH_PROVIDERS: [&str; 3] = ["apns", "fcm", "webhook"];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// SIP login (private identity): 1-64 of `A-Z a-z 0-9 . _ -`.
    pub login: String,
    /// At least 8 characters. Stored only as digest HA1 values.
    pub password: String,
    /// Country calling code used to normalise this account's numbers; the configured
    /// default when absent.
    pub country_code: Option<String>,
    pub display_name: Option<String>,
    /// Username (service ID); can be set once, here or later.
    pub username: Option<String>,
    /// Phone numbers in any accepted form; stored as E.164 digits.
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    /// How the account's calls carry media (default `ice`).
    #[schema(value_type = Option<MediaPolicySchema>)]
    pub media: Option<MediaPolicy>,
}

/// Fields left out stay as they are; `display_name: null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub password: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    pub country_code: Option<String>,
    /// The no-answer rule: a `sip:` URI (reached over UDP) that gets the call when no device
    /// answered before the park or ring timeout (voicemail, for example); `null`
    /// clears it, and such calls end with 480.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub no_answer_forward: Option<Option<String>>,
    /// How the account's calls carry media: `ice`, `force-relay` or `off`.
    #[schema(value_type = Option<MediaPolicySchema>)]
    pub media: Option<MediaPolicy>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: i64,
    pub login: String,
    pub country_code: String,
    pub username: Option<String>,
    pub display_name: Option<String>,
    /// E.164 digits without `+`.
    pub phone_numbers: Vec<String>,
    /// Limits in force (account overrides or the configured defaults).
    pub limits: DeviceLimits,
    /// Limits set on this account; `null` means the default applies.
    pub limit_overrides: LimitOverrides,
    /// Where unanswered calls go; `null`: they end with 480.
    pub no_answer_forward: Option<String>,
    /// How the account's calls carry media.
    #[schema(value_type = MediaPolicySchema)]
    pub media: MediaPolicy,
    /// Unix seconds.
    pub created_at: i64,
}

impl AccountView {
    pub fn new(a: Account, defaults: &DeviceLimits) -> AccountView {
        AccountView {
            id: a.id,
            limits: a.limits.effective(defaults),
            limit_overrides: a.limits,
            login: a.login,
            country_code: a.country_code,
            username: a.username,
            display_name: a.display_name,
            phone_numbers: a.phone_numbers,
            no_answer_forward: a.no_answer_forward,
            media: a.media,
            created_at: a.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    pub accounts: Vec<AccountView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Return accounts with an id greater than this.
    pub after: Option<i64>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// Only the account this SIP login, username or phone number (any accepted
    /// form) names; `after` and `limit` are then ignored.
    pub identity: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneNumberBody {
    /// In any accepted form (`+48 600 345 698`, `0048600345698`, `0600345698`, ...).
    pub number: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumberView {
    /// Normalised E.164 digits.
    pub number: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The new password, 8-1024 characters (the current one is in the Basic credentials).
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsernameBody {
    /// 3-64 of `A-Z a-z 0-9 . _ -`, starting with a letter.
    pub username: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Mobile and tablet devices together; `null` or absent: the default.
    pub mobile: Option<u32>,
    pub desktop: Option<u32>,
    pub web: Option<u32>,
}

/// Upper bound on any per-class limit an administrator can set.
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthoriseDevice {
    /// The `+sip.instance` URN the device will register with, e.g.
    /// `urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6`.
    pub instance_id: String,
    #[schema(value_type = DeviceClassSchema)]
    pub class: DeviceClass,
    /// Human-readable name, 1-128 characters.
    pub name: String,
    #[schema(value_type = Option<PushProviderSchema>)]
    pub push_provider: Option<String>,
    pub push_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub instance_id: String,
    #[schema(value_type = DeviceClassSchema)]
    pub class: DeviceClass,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    #[schema(value_type = Option<PushProviderSchema>)]
    pub push_provider: Option<String>,
    /// Whether a push token is stored (the token itself is not returned).
    pub has_push_token: bool,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> DeviceView {
        DeviceView {
            has_push_token: d.push_token.is_some(),
            instance_id: d.instance_id,
            class: d.class,
            name: d.name,
            created_at: d.created_at,
            push_provider: d.push_provider,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorisedView {
    pub device: DeviceView,
    /// Instance IDs of desktop/web devices this one replaced (their registrations
    /// were dropped).
    pub replaced: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushTokenBody {
    #[schema(value_type = PushProviderSchema)]
    pub provider: String,
    /// 1-4096 printable characters.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BindingView {
    pub instance_id: String,
    pub reg_id: u32,
    pub contact_uri: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub transport: String,
    pub source: String,
    pub local: String,
    pub user_agent: Option<String>,
}

impl From<Binding> for BindingView {
    fn from(b: Binding) -> BindingView {
        BindingView {
            instance_id: b.instance_id,
            reg_id: b.reg_id,
            contact_uri: b.contact_uri,
            expires_at: b.expires_at,
            transport: b.transport,
            source: b.source,
            local: b.local,
            user_agent: b.user_agent,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationList {
    pub account_id: i64,
    pub bindings: Vec<BindingView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (`/health`) or `ready` (`/ready`)
    pub status: String,
}

// ----- field checks -------------------------------------------------------------------

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

pub fn check_login(login: &str) -> Result<(), ApiError> {
    if login.is_empty() || login.len() > 64 || !login.chars().all(is_name_char) {
        return Err(ApiError::invalid(
            "login must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(())
}

pub fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(8..=1024).contains(&n) {
        return Err(ApiError::invalid("password must be 8-1024 characters"));
    }
    Ok(())
}

/// Usernames start with a letter so that they never look like a phone number.
pub fn check_username(username: &str) -> Result<(), ApiError> {
    let ok = (3..=64).contains(&username.len())
        && username.starts_with(|c: char| c.is_ascii_alphabetic())
        && username.chars().all(is_name_char);
    if !ok {
        return Err(ApiError::invalid(
            "username must be 3-64 characters of A-Z a-z 0-9 . _ -, starting with a letter",
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n == 0 || n > max || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1-{max} characters without control characters"
        )));
    }
    Ok(())
}

pub fn check_display_name(name: &str) -> Result<(), ApiError> {
    check_text("display_name", name, 128)
}

pub fn check_device_name(name: &str) -> Result<(), ApiError> {
    check_text("name", name, 128)
}

pub fn check_country_code(cc: &str) -> Result<(), ApiError> {
    crate::number::validate_country_code(cc)
        .map_err(|_| ApiError::invalid("country_code must be 1-3 digits not starting with 0"))
}

/// The no-answer rule's target: a `sip:` URI of at most 256 characters (the proxy
/// reaches it over UDP, as it reaches dial-plan gateways).
pub fn check_forward_uri(uri: &str) -> Result<(), ApiError> {
    let scheme_ok = uri.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("sip:"));
    let ok = scheme_ok
        && uri.len() <= 256
        && !uri.contains(['<', '>', '"', ' '])
        && !uri.chars().any(char::is_control)
        && crate::sip::grammar::SipUri::parse(uri).is_some_and(|u| !u.host.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "no_answer_forward must be a sip: URI such as sip:voicemail@vm.example.net",
        ))
    }
}

pub fn check_push(provider: &str, token: &str) -> Result<(), ApiError> {
    if !PUSH_PROVIDERS.contains(&provider) {
        return Err(ApiError::invalid(
            "push provider must be one of apns, fcm, webhook",
        ));
    }
    check_text("push token", token, 4096)
}

/// Checks a `+sip.instance` value and returns its canonical form
/// (see [`crate::store::canonical_instance_id`]).
pub fn canonical_instance_id(raw: &str) -> Result<String, ApiError> {
    crate::store::canonical_instance_id(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_instance_id",
            "instance_id must be a URN such as urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert_eq!(
            canonical_instance_id("urn:uuid:F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6").unwrap(),
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        assert_eq!(
            canonical_instance_id("URN:UUID:f81d4fae-7dec-11d0-a765-00a0c91e6bf6").unwrap(),
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        assert!(canonical_instance_id("urn:gsma:imei:90420156-025763-0").is_ok());
        for bad in [
            "",
            "urn:uuid:",
            "urn:uuid:f81d4fae7dec11d0a76500a0c91e6bf6",
            "urn:uuid:g81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>",
            "uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "urn:x:\"quoted\"",
            "urn::abc",
            "urné:x:y",
            "urn:uuidé-7dec-11d0-a765-00a0c91e6bf6",
        ] {
            assert!(canonical_instance_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usernames_never_look_like_numbers() {
        assert!(check_username("alice.w").is_ok());
        assert!(check_username("48600345698").is_err());
        assert!(check_username("ab").is_err());
        assert!(check_username("al ice").is_err());
    }
}
