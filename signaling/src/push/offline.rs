//! What happens for the devices of an account that did not get a request live: a
//! MESSAGE is stored for each of them (deferred, delivered when it registers) and, when
//! its content type is pushed at all, announced by a push to those with a token; a call
//! pushes `incoming_call` (and later `missed_call` / `call_cancelled`) to them.
//!
//! The proxy calls these with the instance IDs that took the request live (or are
//! registered and being rung); the answer to the sender follows from the outcome
//! (200 when a device took it live, 202 when it was only stored).

use crate::model::AccountId;
use crate::push::{targets_for_account, PushPayload, Pusher};
use crate::store::{NewDeferred, Store, StoreError};

/// A MESSAGE as the proxy received it.
#[derive(Debug, Clone)]
pub struct IncomingMessage<'a> {
    pub account: AccountId,
    /// The From header value (stored and used as the From of the delivery).
    pub from: &'a str,
    /// The sender's login (or the From URI's user for outside senders) and display
    /// name, for the push.
    pub sender_login: &'a str,
    pub sender_display_name: &'a str,
    pub call_id: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// The request's Date header.
    pub date: Option<&'a str>,
    /// Unix seconds now, and how long the stored copies live (`[messages] ttl_secs`).
    pub now: i64,
    pub ttl_secs: u64,
}

/// What [`defer_and_push`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfflineOutcome {
    /// Devices the message was stored for.
    pub stored: Vec<String>,
    /// Devices a push was queued for.
    pub pushed: Vec<String>,
}

/// Stores `m` for every authorised device of the account not in `live` (one
/// transaction), then queues a push for those of them with a token, unless the
/// content type is not pushed (system commands, typing indications, ...). Push
/// failures are logged, never fatal: the message is stored.
pub async fn defer_and_push(
    store: &Store,
    pusher: Option<&Pusher>,
    m: &IncomingMessage<'_>,
    live: &[&str],
) -> Result<OfflineOutcome, StoreError> {
    let devices = store.list_devices(m.account).await?;
    let offline: Vec<&str> = devices
        .iter()
        .map(|d| d.instance_id.as_str())
        .filter(|i| !live.iter().any(|l| l.eq_ignore_ascii_case(i)))
        .collect();
    let mut out = OfflineOutcome::default();
    if offline.is_empty() {
        return Ok(out);
    }
    let ttl = i64::try_from(m.ttl_secs).unwrap_or(i64::MAX);
    store
        .defer_message_to(
            &NewDeferred {
                account_id: m.account,
                instance_id: "",
                sender: m.from,
                content_type: m.content_type,
                body: m.body,
                date: m.date,
                received_at: m.now,
                expires_at: m.now.saturating_add(ttl),
            },
            &offline,
        )
        .await?;
    out.stored = offline.iter().map(|s| s.to_string()).collect();
    let Some(pusher) = pusher else {
        return Ok(out);
    };
    let Some(payload) = PushPayload::for_message(
        m.content_type,
        m.body,
        pusher.system_command_content_type(),
        m.sender_login,
        m.sender_display_name,
        m.call_id,
        m.now,
    ) else {
        return Ok(out);
    };
    let offline = |i: &str| !live.iter().any(|l| l.eq_ignore_ascii_case(i));
    out.pushed = push_devices(store, pusher, m.account, offline, &payload).await?;
    Ok(out)
}

/// Queues `payload` for every device of the account with a push target whose
/// instance ID `chosen` accepts; returns the instance IDs it was queued for.
pub async fn push_devices(
    store: &Store,
    pusher: &Pusher,
    account: AccountId,
    chosen: impl Fn(&str) -> bool,
    payload: &PushPayload,
) -> Result<Vec<String>, StoreError> {
    let mut pushed = Vec::new();
    for (device, target) in targets_for_account(store, account).await? {
        if !chosen(&device.instance_id) {
            continue;
        }
        match pusher.notify(&target, payload).await {
            Ok(()) => pushed.push(device.instance_id),
            Err(e) => tracing::warn!(
                error = %e,
                account,
                kind = payload.kind.as_str(),
                "push not queued"
            ),
        }
    }
    Ok(pushed)
}
