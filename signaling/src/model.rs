//! Domain types shared by the registrar, the store and the HTTP API.
//!
//! This module is the seam between `store`/`http` (accounts and devices) and
//! `sip`/`registrar` (bindings). Changes here must stay additive: both sides use it.

use serde::{Deserialize, Serialize};

/// Primary key of an account (the private identity).
pub type AccountId = i64;

/// Class of a device, which decides the per-account limit that applies to it.
///
/// `Mobile` and `Tablet` share one limit (default 3); `Desktop` and `Web` have one
/// instance each per account (a new sign-in replaces the previous one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Mobile,
    Tablet,
    Desktop,
    Web,
}

impl DeviceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Tablet => "tablet",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mobile" => Some(DeviceClass::Mobile),
            "tablet" => Some(DeviceClass::Tablet),
            "desktop" => Some(DeviceClass::Desktop),
            "web" => Some(DeviceClass::Web),
            _ => None,
        }
    }
}

/// What the registrar needs to authenticate a SIP request for an account.
///
/// The password itself is never stored: only the RFC 7616 HA1 values
/// `H(login:realm:password)` for MD5 and SHA-256, computed with the realm configured
/// when the password was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCredentials {
    pub id: AccountId,
    /// SIP login (private identity); digest `username` must equal it.
    pub login: String,
    /// Lower-case hex of MD5(login:realm:password).
    pub ha1_md5: String,
    /// Lower-case hex of SHA-256(login:realm:password).
    pub ha1_sha256: String,
    /// Country calling code the account's dialled national numbers are read with.
    pub country_code: String,
    /// The account's no-answer rule (a `sip:` URI), for calls to it.
    pub no_answer_forward: Option<String>,
    /// How the account's calls carry media.
    pub media: MediaPolicy,
}

/// How an account's calls carry media (`media` in the API, `media_policy` in the
/// database).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediaPolicy {
    /// Media goes end to end where ICE finds a path; the relay is offered as a
    /// candidate (the default).
    #[default]
    Ice,
    /// Media always goes through a media relay (hides the devices' addresses).
    ForceRelay,
    /// No media relay for this account's calls.
    Off,
}

impl MediaPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaPolicy::Ice => "ice",
            MediaPolicy::ForceRelay => "force-relay",
            MediaPolicy::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ice" => Some(MediaPolicy::Ice),
            "force-relay" => Some(MediaPolicy::ForceRelay),
            "off" => Some(MediaPolicy::Off),
            _ => None,
        }
    }
}

/// A device authorised for an account through the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub account_id: AccountId,
    /// The `+sip.instance` value without quotes and angle brackets,
    /// for example `urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6`.
    pub instance_id: String,
    pub class: DeviceClass,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Push provider (`apns`, `fcm`, `webhook`) and token, when the device has one.
    pub push_provider: Option<String>,
    pub push_token: Option<String>,
}

/// One registration of a device (RFC 5626 binding), keyed by
/// (`account_id`, `instance_id`, `reg_id`). Written through to the database so that
/// a restart restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub account_id: AccountId,
    pub instance_id: String,
    /// RFC 5626 `reg-id`; 0 when the Contact carries none.
    pub reg_id: u32,
    /// The Contact URI as the device sent it (without the header parameters).
    pub contact_uri: String,
    /// Unix seconds when the binding expires.
    pub expires_at: i64,
    /// Call-ID and CSeq of the REGISTER that created or last refreshed it (RFC 3261 10.3).
    pub call_id: String,
    pub cseq: u32,
    /// Transport the REGISTER came over: `udp`, `tcp` or `tls`.
    pub transport: String,
    /// Source address (ip:port) the REGISTER came from; requests go back there.
    pub source: String,
    /// Local address (ip:port) that received it.
    pub local: String,
    pub user_agent: Option<String>,
    /// RFC 8599 push parameters from the Contact (`pn-provider`, `pn-prid`,
    /// `pn-param`), when the device registered with them.
    #[serde(default)]
    pub push: Option<PushParams>,
}

/// RFC 8599 push parameters of a binding: the push provider (`apns`, `fcm`,
/// `webhook`), the device's push resource ID (its token) and the provider-specific
/// parameter (for APNs `<team-or-key id>.<bundle id>.<service>`, for FCM the project ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushParams {
    pub provider: String,
    pub prid: String,
    pub param: Option<String>,
}

/// A MESSAGE kept for an authorised device that was offline, handed out when the
/// device registers (in `id` order, delivered once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredMessage {
    /// Increasing: delivery order.
    pub id: i64,
    pub account_id: AccountId,
    /// The recipient device (canonical instance ID).
    pub instance_id: String,
    /// The sender: the From header value of the original request (name-addr, without
    /// its tag), used as the From of the delivered MESSAGE.
    pub sender: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// The original request's Date header, passed on unchanged on delivery.
    pub date: Option<String>,
    /// Unix seconds when it was stored and when it expires.
    pub received_at: i64,
    pub expires_at: i64,
}
