//! RFC 8599 on a real REGISTER through the in-process server (`tandem_signaling::start`):
//! `pn-provider`/`pn-prid`/`pn-param` Contact URI parameters give a push target that
//! works against a local mock push service, also after the device went offline; a
//! provider that is not configured gets 555; registrations are announced.

mod push_support;
mod udp_client;

use std::net::SocketAddr;
use std::time::Duration;

use push_support::Mock;
use tandem_signaling::config::SignalingConfig;
use tandem_signaling::model::DeviceClass;
use tandem_signaling::push::{targets_for_account, PushKind, PushPayload, WebhookConfig};
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDevice};
use tokio_util::sync::CancellationToken;
use udp_client::{header, temp_dir, Registration};

const INSTANCE: &str = "urn:uuid:00000000-0000-4000-8000-00000000c0de";

#[tokio::test]
async fn rfc8599_contact_params_give_a_usable_push_target_and_unknown_providers_get_555() {
    let mock = Mock::start().await;
    let dir = temp_dir("pushreg_pn");
    let mut cfg = SignalingConfig {
        data_dir: dir.clone(),
        ..SignalingConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.admin_token = Some("configured-token-0123456789".to_owned());
    cfg.sip.udp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.sip.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.push.webhook = Some(WebhookConfig {
        url: format!("{}/hook", mock.url()),
        bearer_token: None,
        hmac_secret: None,
        ca_file: None,
    });
    let realm = cfg.sip.realm.clone();
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let sip = running.sip.udp.unwrap();
    let store = running.store.clone();
    let account = store
        .create_account(&NewAccount {
            login: "alice",
            password: "correct horse",
            realm: &realm,
            country_code: "48",
            display_name: None,
        })
        .await
        .unwrap()
        .id;
    store
        .authorise_device(
            account,
            &NewDevice {
                instance_id: INSTANCE,
                class: DeviceClass::Mobile,
                name: "phone",
                push_provider: None,
                push_token: None,
            },
            &DeviceLimits::default(),
        )
        .await
        .unwrap();
    assert!(targets_for_account(&store, account)
        .await
        .unwrap()
        .is_empty());
    let mut events = running.registrar.subscribe_registrations();

    // A provider that is not configured: 555 and nothing stored.
    let resp = register(
        sip,
        "alice",
        "correct horse",
        &realm,
        ";pn-provider=apns;pn-prid=00fc13adff78;pn-param=DEF123GHIJ.com.example.voip",
        600,
    )
    .await;
    assert!(
        resp.starts_with("SIP/2.0 555 Push Notification Service Not Supported"),
        "{resp}"
    );
    assert!(running.registrar.bindings(account).is_empty());
    assert!(events.try_recv().is_err());

    // The configured one: 200 with Feature-Caps, a binding that carries the params.
    let resp = register(
        sip,
        "alice",
        "correct horse",
        &realm,
        ";pn-provider=webhook;pn-prid=dev%2Dtoken-42;pn-param=tenant-1",
        600,
    )
    .await;
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert_eq!(
        header(&resp, "Feature-Caps"),
        ["*;+sip.pns=\"webhook\""],
        "{resp}"
    );
    let live = running.registrar.bindings(account);
    assert_eq!(live.len(), 1);
    let pn = live[0].push.clone().expect("binding has push params");
    assert_eq!(
        (pn.provider.as_str(), pn.prid.as_str(), pn.param.as_deref()),
        ("webhook", "dev-token-42", Some("tenant-1"))
    );
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ev.account, ev.instance_id.as_str()), (account, INSTANCE));
    assert_eq!(ev.binding.push, Some(pn.clone()));
    // Stored with the binding too (restart).
    let stored = store.load_bindings().await.unwrap();
    assert_eq!(stored[0].push, Some(pn));

    // The device goes offline (unregisters): it is still a push target.
    let resp = register(sip, "alice", "correct horse", &realm, "", 0).await;
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert!(running.registrar.bindings(account).is_empty());
    let targets = targets_for_account(&store, account).await.unwrap();
    assert_eq!(targets.len(), 1);
    let (device, target) = &targets[0];
    assert_eq!(device.instance_id, INSTANCE);
    assert_eq!(target.provider, "webhook");
    assert_eq!(target.token, "dev-token-42");
    assert_eq!(target.param.as_deref(), Some("tenant-1"));

    // And the target works: the push reaches the (mock) service.
    let payload = PushPayload {
        kind: PushKind::IncomingCall,
        caller_login: "bob".to_owned(),
        caller_display_name: "Bob".to_owned(),
        call_id: "call-1@example.com".to_owned(),
        timestamp: 1_800_000_000,
        video: false,
        body: None,
    };
    running.pusher.send_now(target, &payload).await.unwrap();
    let hooks = mock.requests_to("/hook");
    assert_eq!(hooks.len(), 1);
    let body = hooks[0].json();
    assert_eq!(body["token"], "dev-token-42");
    assert_eq!(body["payload"]["type"], "incoming_call");
    assert_eq!(body["payload"]["media"], "audio");

    // A REGISTER without pn-* parameters withdraws them (RFC 8599: no more pushes).
    let resp = register(sip, "alice", "correct horse", &realm, "", 600).await;
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert!(header(&resp, "Feature-Caps").is_empty());
    assert!(targets_for_account(&store, account)
        .await
        .unwrap()
        .is_empty());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A digest-authenticated REGISTER of the test's device over UDP with `uri_params` in
/// the Contact URI.
async fn register(
    sip: SocketAddr,
    login: &str,
    password: &str,
    realm: &str,
    uri_params: &str,
    expires: u32,
) -> String {
    Registration {
        login,
        password,
        realm,
        instance: INSTANCE,
        uri_params,
        expires,
    }
    .run(sip)
    .await
}
