//! The proxy's offline hooks ([`crate::proxy::OfflineTargets`]) backed by the store
//! and the push service: a MESSAGE is stored for every device that did not get it
//! live and announced by a push (202 when nobody took it live); a call's pushes
//! (`incoming_call`, then `missed_call` or `call_cancelled`) go to the devices the
//! proxy names. Parking the call while pushed devices register is the proxy's.

use crate::proxy::{CallPush, ForkedRequest, HookFuture, OfflineTargets, PushTo};
use crate::push::offline::{defer_and_push, push_devices, IncomingMessage};
use crate::push::{PushKind, PushPayload, Pusher};
use crate::sip::grammar::{name_addr, SipUri};
use crate::store::Store;

/// Offline handling with deferred messages and push notifications.
#[derive(Debug, Clone)]
pub struct PushHooks {
    pub store: Store,
    /// `None` when no push provider is configured (messages are still stored).
    pub pusher: Option<Pusher>,
    /// `[messages] ttl_secs`.
    pub ttl_secs: u64,
}

/// (login, display name) of the From header value, as a push shows them. A sender the
/// proxy authenticated as one of our accounts (`local`) is shown by login; a foreign
/// one by `user@host` (never a bare user name that reads like a local login), and its
/// display name, which anybody can set, carries that address along.
fn sender(from: &str, local: bool) -> (String, String) {
    let Some(na) = name_addr(from) else {
        return (String::new(), String::new());
    };
    let uri = SipUri::parse(na.uri);
    let user = uri
        .as_ref()
        .and_then(|u| u.user_decoded().map(|u| u.into_owned()))
        .unwrap_or_default();
    let display = na
        .display_name
        .as_deref()
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    if local {
        return (user, display);
    }
    let host = uri.as_ref().map(|u| u.host).unwrap_or("");
    let address = if user.is_empty() {
        host.to_owned()
    } else {
        format!("{user}@{host}")
    };
    let display = if display.is_empty() {
        display
    } else {
        format!("{display} ({address})")
    };
    (address, display)
}

impl PushHooks {
    async fn message(&self, req: &ForkedRequest) -> usize {
        let (login, display) = sender(&req.from, req.local_sender);
        let live: Vec<&str> = req.live_instances.iter().map(String::as_str).collect();
        let m = IncomingMessage {
            account: req.account,
            from: &req.from,
            sender_login: &login,
            sender_display_name: &display,
            call_id: &req.call_id,
            content_type: req.content_type.as_deref().unwrap_or("text/plain"),
            body: &req.body,
            date: req.date.as_deref(),
            now: crate::store::unix_now(),
            ttl_secs: self.ttl_secs,
        };
        match defer_and_push(&self.store, self.pusher.as_ref(), &m, &live).await {
            Ok(out) => out.stored.len(),
            Err(e) => {
                tracing::error!(error = %e, "storing a deferred message failed");
                0
            }
        }
    }

    async fn call(&self, req: &ForkedRequest, kind: CallPush, to: PushTo) -> Vec<String> {
        let Some(pusher) = &self.pusher else {
            return Vec::new();
        };
        let (login, display) = sender(&req.from, req.local_sender);
        let video = std::str::from_utf8(&req.body)
            .map(|sdp| {
                sdp.lines()
                    .any(|l| l.starts_with("m=video ") && !l.starts_with("m=video 0 "))
            })
            .unwrap_or(false);
        let payload = PushPayload {
            kind: match kind {
                CallPush::Incoming => PushKind::IncomingCall,
                CallPush::Missed => PushKind::MissedCall,
                CallPush::Cancelled => PushKind::CallCancelled,
            },
            caller_login: login,
            caller_display_name: display,
            call_id: req.call_id.clone(),
            timestamp: crate::store::unix_now(),
            video,
            body: None,
        };
        let listed = |l: &[String], i: &str| l.iter().any(|x| x.eq_ignore_ascii_case(i));
        let chosen = |i: &str| match &to {
            PushTo::AllExcept(skip) => !listed(skip, i),
            PushTo::Only(only) => listed(only, i),
        };
        match push_devices(&self.store, pusher, req.account, chosen, &payload).await {
            Ok(pushed) => pushed,
            Err(e) => {
                tracing::error!(error = %e, "looking up push targets failed");
                Vec::new()
            }
        }
    }
}

impl OfflineTargets for PushHooks {
    fn no_live_binding<'a>(
        &'a self,
        req: &'a ForkedRequest,
    ) -> HookFuture<'a, (u16, &'static str)> {
        Box::pin(async move {
            match req.method.as_str() {
                // RFC 3428 7: 202 when the message was accepted but not delivered yet.
                "MESSAGE" if self.message(req).await > 0 => (202, "Accepted"),
                _ => (480, "Temporarily Unavailable"),
            }
        })
    }

    fn forked<'a>(&'a self, req: &'a ForkedRequest) -> HookFuture<'a, ()> {
        Box::pin(async move {
            // With nobody live, `no_live_binding` handles it (never both).
            if req.live_instances.is_empty() {
                return;
            }
            if req.method == "MESSAGE" {
                self.message(req).await;
            }
        })
    }

    fn pushes_calls(&self) -> bool {
        self.pusher.is_some()
    }

    fn push_call<'a>(
        &'a self,
        req: &'a ForkedRequest,
        kind: CallPush,
        to: PushTo,
    ) -> HookFuture<'a, Vec<String>> {
        Box::pin(self.call(req, kind, to))
    }
}

#[cfg(test)]
mod tests {
    use super::sender;

    #[test]
    fn a_foreign_sender_never_reads_like_a_local_login() {
        assert_eq!(
            sender("\"Alice\" <sip:alice@tandem.local>;tag=1", true),
            ("alice".to_owned(), "Alice".to_owned())
        );
        assert_eq!(
            sender("\"Alice\" <sip:alice@evil.example>;tag=1", false),
            (
                "alice@evil.example".to_owned(),
                "Alice (alice@evil.example)".to_owned()
            )
        );
        // Our domain in From proves nothing unless the proxy authenticated it.
        assert_eq!(
            sender("<sip:alice@tandem.local>", false).0,
            "alice@tandem.local"
        );
        assert_eq!(sender("<sip:gw.example>", false).0, "gw.example");
    }
}
