//! A MESSAGE for an account whose devices are partly offline: stored for each offline
//! device, pushed (text excerpt, attachment type) to those with a token, system
//! commands stored but never pushed; call pushes skip the devices being rung.
//! On SQLite and PostgreSQL, against a local mock webhook.

mod push_support;
mod store_support;

use std::time::{Duration, Instant};

use push_support::Mock;
use store_support::{Backend, TestDb};
use tandem_signaling::model::DeviceClass;
use tandem_signaling::push::offline::{defer_and_push, push_devices, IncomingMessage};
use tandem_signaling::push::{
    PushConfig, PushKind, PushPayload, Pusher, WebhookConfig, DEFAULT_SYSTEM_COMMAND_TYPE,
};
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDevice, Store};
use tokio_util::sync::CancellationToken;

const LIVE: &str = "urn:uuid:00000000-0000-4000-8000-0000000000e1";
const OFF_TOKEN: &str = "urn:uuid:00000000-0000-4000-8000-0000000000e2";
const OFF_NO_TOKEN: &str = "urn:uuid:00000000-0000-4000-8000-0000000000e3";

async fn setup(store: &Store) -> i64 {
    let account = store
        .create_account(&NewAccount {
            login: "alice",
            password: "secret-password",
            realm: "tandem.local",
            country_code: "48",
            display_name: None,
        })
        .await
        .unwrap()
        .id;
    for (inst, token) in [
        (LIVE, Some("live-token")),
        (OFF_TOKEN, Some("offline-token")),
        (OFF_NO_TOKEN, None),
    ] {
        store
            .authorise_device(
                account,
                &NewDevice {
                    instance_id: inst,
                    class: DeviceClass::Mobile,
                    name: "phone",
                    push_provider: token.map(|_| "webhook"),
                    push_token: token,
                },
                &DeviceLimits::default(),
            )
            .await
            .unwrap();
    }
    account
}

fn message<'a>(account: i64, content_type: &'a str, body: &'a [u8]) -> IncomingMessage<'a> {
    IncomingMessage {
        account,
        from: "\"Bob\" <sip:bob@tandem.local>",
        sender_login: "bob",
        sender_display_name: "Bob",
        call_id: "msg-1@example.com",
        content_type,
        body,
        date: Some("Sat, 13 Nov 2010 23:29:00 GMT"),
        now: 1_800_000_000,
        ttl_secs: 7 * 24 * 3600,
    }
}

async fn wait_for(mock: &Mock, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.requests_to("/hook").len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn offline_devices_get_the_message_stored_and_pushed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let account = setup(&store).await;
    let mock = Mock::start().await;
    let cfg = PushConfig {
        webhook: Some(WebhookConfig {
            url: format!("{}/hook", mock.url()),
            bearer_token: None,
            hmac_secret: None,
            ca_file: None,
        }),
        ..PushConfig::default()
    };
    let pusher = Pusher::start(&cfg, Some(store.clone()), CancellationToken::new()).unwrap();

    let text = "Spotkajmy się jutro o dziewiątej w kawiarni na rogu, dobrze?";
    let out = defer_and_push(
        &store,
        Some(&pusher),
        &message(account, "text/plain;charset=UTF-8", text.as_bytes()),
        &[LIVE],
    )
    .await
    .unwrap();
    assert_eq!(out.stored, [OFF_TOKEN, OFF_NO_TOKEN]);
    assert_eq!(out.pushed, [OFF_TOKEN]);
    for inst in [OFF_TOKEN, OFF_NO_TOKEN] {
        let p = store
            .pending_deferred(account, inst, 1_800_000_001)
            .await
            .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].body, text.as_bytes());
        assert_eq!(p[0].expires_at, 1_800_000_000 + 7 * 24 * 3600);
    }
    assert!(store
        .pending_deferred(account, LIVE, 1_800_000_001)
        .await
        .unwrap()
        .is_empty());
    wait_for(&mock, 1).await;
    let hooks = mock.requests_to("/hook");
    assert_eq!(hooks.len(), 1);
    let body = hooks[0].json();
    assert_eq!(body["token"], "offline-token");
    assert_eq!(body["payload"]["type"], "text_message");
    let expected: String = text.chars().take(40).collect::<String>() + "\u{2026}";
    assert_eq!(body["payload"]["body"], expected);
    assert_eq!(body["payload"]["caller_login"], "bob");

    // A system command: stored for the offline devices, never pushed.
    let out = defer_and_push(
        &store,
        Some(&pusher),
        &message(
            account,
            DEFAULT_SYSTEM_COMMAND_TYPE,
            br#"{"cmd":"contact_add"}"#,
        ),
        &[LIVE],
    )
    .await
    .unwrap();
    assert_eq!(out.stored.len(), 2);
    assert!(out.pushed.is_empty());
    // A picture: its type, no body.
    let out = defer_and_push(
        &store,
        Some(&pusher),
        &message(account, "image/jpeg", b"\xff\xd8\xff\xe0"),
        &[LIVE],
    )
    .await
    .unwrap();
    assert_eq!(out.pushed, [OFF_TOKEN]);
    // Every push queued so far has ended: nothing more is on its way.
    tokio::time::timeout(Duration::from_secs(5), pusher.settled())
        .await
        .expect("pushes settled");
    let hooks = mock.requests_to("/hook");
    assert_eq!(hooks.len(), 2, "the system command was not pushed");
    assert_eq!(hooks[1].json()["payload"]["type"], "picture");
    assert!(hooks[1].json()["payload"].get("body").is_none());
    // In order for the device when it registers.
    let p = store
        .pending_deferred(account, OFF_NO_TOKEN, 1_800_000_001)
        .await
        .unwrap();
    let types: Vec<&str> = p.iter().map(|m| m.content_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "text/plain;charset=UTF-8",
            DEFAULT_SYSTEM_COMMAND_TYPE,
            "image/jpeg"
        ]
    );

    // Every device live: nothing stored, nothing pushed.
    let out = defer_and_push(
        &store,
        Some(&pusher),
        &message(account, "text/plain", b"hi"),
        &[LIVE, OFF_TOKEN, OFF_NO_TOKEN],
    )
    .await
    .unwrap();
    assert!(out.stored.is_empty() && out.pushed.is_empty());

    // A call: every device with a token except those being rung.
    let payload = PushPayload {
        kind: PushKind::IncomingCall,
        caller_login: "bob".into(),
        caller_display_name: "Bob".into(),
        call_id: "call-9@example.com".into(),
        timestamp: 1_800_000_000,
        video: false,
        body: None,
    };
    let pushed = push_devices(&store, &pusher, account, |i| i != LIVE, &payload)
        .await
        .unwrap();
    assert_eq!(pushed, [OFF_TOKEN]);
    // The 3-second rule: everybody with a token.
    let pushed = push_devices(&store, &pusher, account, |_| true, &payload)
        .await
        .unwrap();
    assert_eq!(pushed, [LIVE, OFF_TOKEN]);
}

async fn proxy_hooks_store_push_and_answer_202(backend: Backend) {
    use tandem_signaling::proxy::{CallPush, ForkedRequest, OfflineTargets, PushTo};
    use tandem_signaling::push::hooks::PushHooks;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let account = setup(&store).await;
    let mock = Mock::start().await;
    let cfg = PushConfig {
        webhook: Some(WebhookConfig {
            url: format!("{}/hook", mock.url()),
            bearer_token: None,
            hmac_secret: None,
            ca_file: None,
        }),
        ..PushConfig::default()
    };
    let pusher = Pusher::start(&cfg, Some(store.clone()), CancellationToken::new()).unwrap();
    let hooks = PushHooks {
        store: store.clone(),
        pusher: Some(pusher),
        ttl_secs: 3600,
    };
    let mut req = ForkedRequest {
        account,
        method: "MESSAGE".into(),
        call_id: "m-77@example.com".into(),
        from: "\"Bob B.\" <sip:bob@tandem.local>;tag=abc".into(),
        content_type: Some("text/plain".into()),
        date: Some("Sat, 13 Nov 2010 23:29:00 GMT".into()),
        body: b"hello there".to_vec(),
        live_instances: Vec::new(),
        local_sender: true,
    };
    // Nobody live: stored for all three devices, 202.
    assert_eq!(hooks.no_live_binding(&req).await, (202, "Accepted"));
    for inst in [LIVE, OFF_TOKEN, OFF_NO_TOKEN] {
        let p = store.pending_deferred(account, inst, 0).await.unwrap();
        assert_eq!(p.len(), 1, "{inst}");
        assert_eq!(p[0].date.as_deref(), Some("Sat, 13 Nov 2010 23:29:00 GMT"));
    }
    wait_for(&mock, 2).await;
    let hooks_seen = mock.requests_to("/hook");
    assert_eq!(hooks_seen.len(), 2, "both devices with a token pushed");
    let p = hooks_seen[0].json();
    assert_eq!(p["payload"]["caller_login"], "bob");
    assert_eq!(p["payload"]["caller_display_name"], "Bob B.");
    assert_eq!(p["payload"]["body"], "hello there");
    // Forked to one live device: the other two get it stored (and one a push).
    req.live_instances = vec![LIVE.to_owned()];
    req.call_id = "m-78@example.com".into();
    hooks.forked(&req).await;
    assert_eq!(
        store
            .pending_deferred(account, LIVE, 0)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .pending_deferred(account, OFF_TOKEN, 0)
            .await
            .unwrap()
            .len(),
        2
    );
    wait_for(&mock, 3).await;
    assert_eq!(mock.requests_to("/hook").len(), 3);
    // An INVITE with a video stream: incoming_call pushed to the device not rung.
    let invite = ForkedRequest {
        method: "INVITE".into(),
        call_id: "call-5@example.com".into(),
        content_type: Some("application/sdp".into()),
        body: b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\n".to_vec(),
        ..req.clone()
    };
    assert!(hooks.pushes_calls());
    let pushed = hooks
        .push_call(
            &invite,
            CallPush::Incoming,
            PushTo::AllExcept(vec![LIVE.to_owned()]),
        )
        .await;
    assert_eq!(pushed, vec![OFF_TOKEN.to_owned()]);
    wait_for(&mock, 4).await;
    let last = mock.requests_to("/hook").pop().unwrap().json();
    assert_eq!(last["token"], "offline-token");
    assert_eq!(last["payload"]["type"], "incoming_call");
    assert_eq!(last["payload"]["media"], "video");
    assert_eq!(last["payload"]["call_id"], "call-5@example.com");
    // The end of the call goes only to the devices named.
    let pushed = hooks
        .push_call(&invite, CallPush::Cancelled, PushTo::Only(vec![]))
        .await;
    assert!(pushed.is_empty());
    let pushed = hooks
        .push_call(
            &invite,
            CallPush::Missed,
            PushTo::Only(vec![OFF_TOKEN.to_uppercase()]),
        )
        .await;
    assert_eq!(pushed, vec![OFF_TOKEN.to_owned()]);
    wait_for(&mock, 5).await;
    let last = mock.requests_to("/hook").pop().unwrap().json();
    assert_eq!(last["payload"]["type"], "missed_call");
    // A MESSAGE's `forked` hook never pushes calls, and an INVITE's does nothing.
    hooks.forked(&invite).await;
    // Nothing stored for a call; with nobody live the caller gets 480.
    assert_eq!(
        store
            .pending_deferred(account, OFF_TOKEN, 0)
            .await
            .unwrap()
            .len(),
        2
    );
    let none_live = ForkedRequest {
        live_instances: Vec::new(),
        ..invite
    };
    assert_eq!(
        hooks.no_live_binding(&none_live).await,
        (480, "Temporarily Unavailable")
    );
}

on_both_backends!(
    offline_devices_get_the_message_stored_and_pushed,
    proxy_hooks_store_push_and_answer_202
);
