//! Each push provider against a local mock service: request shape and headers, JWTs
//! that verify with the public key, retries on 503/429 (Retry-After honoured), dead
//! tokens (APNs 410 / BadDeviceToken, FCM UNREGISTERED, webhook 410) cleared from the
//! store, the bounded queue, and which messages are pushed at all.

mod push_support;
mod store_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use push_support::{Answer, Mock};
use store_support::{Backend, TestDb};
use tandem_signaling::model::DeviceClass;
use tandem_signaling::push::{
    ApnsConfig, FcmConfig, PushConfig, PushError, PushKind, PushPayload, PushTarget, Pusher,
    WebhookConfig, DEFAULT_SYSTEM_COMMAND_TYPE,
};
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDevice, Store};
use tokio_util::sync::CancellationToken;

const APNS_TOKEN: &str = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";
const INSTANCE: &str = "urn:uuid:00000000-0000-4000-8000-0000000000a1";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/push")
}

fn fast_retries() -> PushConfig {
    PushConfig {
        timeout_secs: 5,
        max_attempts: 3,
        backoff_initial_ms: 20,
        backoff_max_ms: 100,
        ..PushConfig::default()
    }
}

fn call_payload(kind: PushKind) -> PushPayload {
    PushPayload {
        kind,
        caller_login: "bob".to_owned(),
        caller_display_name: "Bob Smith".to_owned(),
        call_id: "a84b4c76e66710@pc33.example.com".to_owned(),
        timestamp: 1_800_000_000,
        video: true,
        body: None,
    }
}

fn target(provider: &str, token: &str, account: i64) -> PushTarget {
    PushTarget {
        provider: provider.to_owned(),
        token: token.to_owned(),
        param: None,
        account,
        instance_id: INSTANCE.to_owned(),
    }
}

/// A store with one account and a device whose API push token is `token`.
async fn store_with_token(db: &TestDb, provider: &str, token: &str) -> (Store, i64) {
    let store = db.store().await;
    let id = store
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
    store
        .authorise_device(
            id,
            &NewDevice {
                instance_id: INSTANCE,
                class: DeviceClass::Mobile,
                name: "phone",
                push_provider: Some(provider),
                push_token: Some(token),
            },
            &DeviceLimits::default(),
        )
        .await
        .unwrap();
    (store, id)
}

// ----- APNs ------------------------------------------------------------------------------

struct ApnsSetup {
    cfg: PushConfig,
    public_pem: String,
    _dir: tempfile::TempDir,
}

fn apns_setup(mock: &Mock) -> ApnsSetup {
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("AuthKey_KEY1234567.p8");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let cfg = PushConfig {
        apns: Some(ApnsConfig {
            key_file,
            key_id: "KEY1234567".to_owned(),
            team_id: "TEAM123456".to_owned(),
            topic: "com.example.tandem".to_owned(),
            base_url: mock.url(),
            ca_file: None,
        }),
        ..fast_retries()
    };
    ApnsSetup {
        cfg,
        public_pem: key.public_key_pem(),
        _dir: dir,
    }
}

fn verify_apns_jwt(auth: &str, public_pem: &str) {
    let jwt = auth.strip_prefix("bearer ").expect("bearer token");
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("KEY1234567"));
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<serde_json::Value>(
        jwt,
        &DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
        &v,
    )
    .expect("JWT verifies with the key's public half");
    assert_eq!(data.claims["iss"], "TEAM123456");
    let iat = data.claims["iat"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - iat).abs() < 60, "iat {iat} vs now {now}");
}

#[tokio::test]
async fn apns_voip_and_alert_pushes_over_http2_with_a_verifiable_cached_jwt() {
    let mock = Mock::start().await;
    let s = apns_setup(&mock);
    let pusher = Pusher::start(&s.cfg, None, CancellationToken::new()).unwrap();
    assert_eq!(pusher.providers(), ["apns"]);

    pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap();
    let text = PushPayload::for_message(
        "text/plain;charset=UTF-8",
        "Zażółć gęślą jaźń, a potem jeszcze dłuższy tekst wiadomości".as_bytes(),
        DEFAULT_SYSTEM_COMMAND_TYPE,
        "bob",
        "Bob Smith",
        "m1@example.com",
        1_800_000_001,
    )
    .unwrap();
    pusher
        .send_now(&target("apns", APNS_TOKEN, 1), &text)
        .await
        .unwrap();

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let call = &reqs[0];
    assert_eq!(call.version, axum::http::Version::HTTP_2);
    assert_eq!(call.path, format!("/3/device/{APNS_TOKEN}"));
    assert_eq!(call.header("apns-push-type"), Some("voip"));
    assert_eq!(call.header("apns-topic"), Some("com.example.tandem.voip"));
    assert_eq!(call.header("apns-priority"), Some("10"));
    assert_eq!(call.header("apns-expiration"), Some("0"));
    verify_apns_jwt(call.header("authorization").unwrap(), &s.public_pem);
    let body = call.json();
    assert_eq!(body["aps"], serde_json::json!({}));
    assert_eq!(body["tandem"]["type"], "incoming_call");
    assert_eq!(body["tandem"]["caller_login"], "bob");
    assert_eq!(body["tandem"]["caller_display_name"], "Bob Smith");
    assert_eq!(body["tandem"]["call_id"], "a84b4c76e66710@pc33.example.com");
    assert_eq!(body["tandem"]["timestamp"], 1_800_000_000);
    assert_eq!(body["tandem"]["media"], "video");

    let msg = &reqs[1];
    assert_eq!(msg.header("apns-push-type"), Some("alert"));
    assert_eq!(msg.header("apns-topic"), Some("com.example.tandem"));
    // The same provider token is reused (APNs refuses frequent renewals).
    assert_eq!(msg.header("authorization"), call.header("authorization"));
    let body = msg.json();
    assert_eq!(body["tandem"]["type"], "text_message");
    let excerpt = body["tandem"]["body"].as_str().unwrap();
    assert_eq!(excerpt.chars().count(), 41);
    assert!(excerpt.starts_with("Zażółć gęślą jaźń"));
    assert!(excerpt.ends_with('\u{2026}'));
    assert_eq!(body["aps"]["alert"]["title"], "Bob Smith");
    assert_eq!(body["aps"]["alert"]["body"], excerpt);
    assert_eq!(pusher.counts().delivered, 2);
}

#[tokio::test]
async fn apns_over_tls_negotiates_http2_and_trusts_a_configured_ca() {
    let (mock, ca_pem) = Mock::start_tls().await;
    let mut s = apns_setup(&mock);
    let ca_file = s._dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    if let Some(a) = s.cfg.apns.as_mut() {
        a.base_url = mock.tls_url();
        a.ca_file = Some(ca_file);
    }
    let pusher = Pusher::start(&s.cfg, None, CancellationToken::new()).unwrap();
    pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap();
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].version, axum::http::Version::HTTP_2, "ALPN h2");
    assert_eq!(reqs[0].header("apns-push-type"), Some("voip"));
    verify_apns_jwt(reqs[0].header("authorization").unwrap(), &s.public_pem);

    // Without the CA the server is not trusted: nothing is sent, the attempts are
    // bounded and the error says why.
    let mut untrusting = s.cfg.clone();
    if let Some(a) = untrusting.apns.as_mut() {
        a.ca_file = None;
    }
    let pusher = Pusher::start(&untrusting, None, CancellationToken::new()).unwrap();
    let err = pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PushError::GaveUp { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn apns_topic_from_rfc8599_pn_param() {
    let mock = Mock::start().await;
    let s = apns_setup(&mock);
    let pusher = Pusher::start(&s.cfg, None, CancellationToken::new()).unwrap();
    let mut t = target("apns", APNS_TOKEN, 1);
    t.param = Some("DEF123GHIJ.com.example.other.voip".to_owned());
    pusher
        .send_now(&t, &call_payload(PushKind::IncomingCall))
        .await
        .unwrap();
    pusher
        .send_now(&t, &call_payload(PushKind::MissedCall))
        .await
        .unwrap();
    pusher
        .send_now(&t, &call_payload(PushKind::CallCancelled))
        .await
        .unwrap();
    let reqs = mock.requests();
    assert_eq!(reqs[0].header("apns-topic"), Some("com.example.other.voip"));
    assert_eq!(reqs[1].header("apns-topic"), Some("com.example.other"));
    assert_eq!(reqs[1].header("apns-push-type"), Some("alert"));
    assert_eq!(reqs[1].json()["tandem"]["type"], "missed_call");
    // A VoIP push must report a call on iOS: a cancel goes as a background push.
    assert_eq!(reqs[2].header("apns-push-type"), Some("background"));
    assert_eq!(reqs[2].header("apns-priority"), Some("5"));
    assert_eq!(reqs[2].json()["aps"]["content-available"], 1);
}

#[tokio::test]
async fn apns_retries_on_503_and_429_honouring_retry_after() {
    let mock = Mock::start().await;
    let s = apns_setup(&mock);
    let pusher = Pusher::start(&s.cfg, None, CancellationToken::new()).unwrap();
    let mut busy = Answer::status(429, r#"{"reason":"TooManyRequests"}"#);
    busy.headers.push(("retry-after", "1".to_owned()));
    mock.script(
        "/3/device/",
        vec![
            Answer::status(503, r#"{"reason":"ServiceUnavailable"}"#),
            busy,
        ],
    );
    let start = Instant::now();
    pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(mock.requests().len(), 3);
    let c = pusher.counts();
    assert_eq!((c.retried, c.delivered, c.failed), (2, 1, 0));

    // Bounded: always 503 gives up after max_attempts.
    mock.always("/3/device/", Answer::status(503, "{}"));
    let err = pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PushError::GaveUp { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(mock.requests().len(), 6);

    // A 4xx that retrying cannot fix is not retried.
    let mock2 = Mock::start().await;
    let s2 = apns_setup(&mock2);
    let pusher2 = Pusher::start(&s2.cfg, None, CancellationToken::new()).unwrap();
    mock2.always(
        "/3/device/",
        Answer::status(400, r#"{"reason":"BadTopic"}"#),
    );
    let err = pusher2
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::Rejected(_)), "{err}");
    assert_eq!(mock2.requests().len(), 1);
}

#[tokio::test]
async fn apns_renews_the_provider_token_when_apns_says_it_expired() {
    let mock = Mock::start().await;
    let s = apns_setup(&mock);
    let pusher = Pusher::start(&s.cfg, None, CancellationToken::new()).unwrap();
    mock.script(
        "/3/device/",
        vec![Answer::status(403, r#"{"reason":"ExpiredProviderToken"}"#)],
    );
    pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap();
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let (old, new) = (
        reqs[0].header("authorization").unwrap(),
        reqs[1].header("authorization").unwrap(),
    );
    assert_ne!(old, new, "a new provider token after ExpiredProviderToken");
    verify_apns_jwt(new, &s.public_pem);
    // A token APNs calls invalid (wrong key) is a configuration error: not retried.
    mock.always(
        "/3/device/",
        Answer::status(403, r#"{"reason":"InvalidProviderToken"}"#),
    );
    let err = pusher
        .send_now(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::Rejected(_)), "{err}");
    assert_eq!(mock.requests().len(), 3);
    // A token that is not hex never reaches the URL.
    let err = pusher
        .send_now(
            &target("apns", "../../etc", 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::DeadToken), "{err}");
    assert_eq!(mock.requests().len(), 3);
}

async fn apns_dead_tokens(backend: Backend) {
    for (status, body) in [
        (
            410,
            r#"{"reason":"Unregistered","timestamp":1800000000000}"#,
        ),
        (400, r#"{"reason":"BadDeviceToken"}"#),
    ] {
        let db = TestDb::new(backend).await;
        let (store, account) = store_with_token(&db, "apns", APNS_TOKEN).await;
        let mock = Mock::start().await;
        let s = apns_setup(&mock);
        let pusher = Pusher::start(&s.cfg, Some(store.clone()), CancellationToken::new()).unwrap();
        mock.always("/3/device/", Answer::status(status, body));
        let err = pusher
            .send_now(
                &target("apns", APNS_TOKEN, account),
                &call_payload(PushKind::IncomingCall),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PushError::DeadToken), "{status}: {err}");
        assert_eq!(mock.requests().len(), 1, "a dead token is not retried");
        let dev = store.find_device(account, INSTANCE).await.unwrap().unwrap();
        assert_eq!(dev.push_token, None, "{status}: token cleared");
        assert_eq!(dev.push_provider, None);
        assert!(tandem_signaling::push::targets_for_account(&store, account)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(pusher.counts().dead_tokens, 1);
    }
}

// ----- FCM -------------------------------------------------------------------------------

fn fcm_setup(mock: &Mock) -> (PushConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = std::fs::read_to_string(fixtures().join("fcm_test_key.pem")).unwrap();
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "tandem-test",
        "private_key_id": "kid-0001",
        "private_key": key,
        "client_email": "push@tandem-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let file = dir.path().join("service-account.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&sa).unwrap()).unwrap();
    let cfg = PushConfig {
        fcm: Some(FcmConfig {
            service_account_file: file,
            project_id: None,
            token_uri: Some(format!("{}/token", mock.url())),
            base_url: mock.url(),
            ca_file: None,
        }),
        ..fast_retries()
    };
    (cfg, dir)
}

fn token_answer() -> Answer {
    Answer::status(
        200,
        r#"{"access_token":"ya29.test-access","expires_in":3599,"token_type":"Bearer"}"#,
    )
}

#[tokio::test]
async fn fcm_oauth_grant_is_verifiable_and_cached_and_message_has_string_data() {
    let mock = Mock::start().await;
    let (cfg, _dir) = fcm_setup(&mock);
    mock.always("/token", token_answer());
    let pusher = Pusher::start(&cfg, None, CancellationToken::new()).unwrap();
    let t = target("fcm", "fcm-token:APA91bExample_-", 1);
    pusher
        .send_now(&t, &call_payload(PushKind::IncomingCall))
        .await
        .unwrap();
    pusher
        .send_now(&t, &call_payload(PushKind::MissedCall))
        .await
        .unwrap();

    let grants = mock.requests_to("/token");
    assert_eq!(grants.len(), 1, "access token cached");
    let form: Vec<(String, String)> = url_form(&grants[0].body);
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        get("grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let assertion = get("assertion");
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("kid-0001"));
    let public = std::fs::read(fixtures().join("fcm_test_key.pub.pem")).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    let aud = format!("{}/token", mock.url());
    v.set_audience(&[aud.as_str()]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &assertion,
        &DecodingKey::from_rsa_pem(&public).unwrap(),
        &v,
    )
    .expect("assertion verifies with the service account's public key")
    .claims;
    assert_eq!(claims["iss"], "push@tandem-test.iam.gserviceaccount.com");
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    let sends = mock.requests_to("/v1/");
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].path, "/v1/projects/tandem-test/messages:send");
    assert_eq!(
        sends[0].header("authorization"),
        Some("Bearer ya29.test-access")
    );
    let body = sends[0].json();
    assert_eq!(body["message"]["token"], "fcm-token:APA91bExample_-");
    let data = body["message"]["data"].as_object().unwrap();
    assert!(data.values().all(|v| v.is_string()), "{data:?}");
    assert_eq!(data["type"], "incoming_call");
    assert_eq!(data["timestamp"], "1800000000");
    assert_eq!(data["media"], "video");
    assert_eq!(data["caller_display_name"], "Bob Smith");
    assert_eq!(body["message"]["android"]["priority"], "high");
    assert_eq!(sends[1].json()["message"]["data"]["type"], "missed_call");
}

fn url_form(body: &[u8]) -> Vec<(String, String)> {
    let s = std::str::from_utf8(body).unwrap();
    s.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let dec = |x: &str| {
                let x = x.replace('+', " ");
                let mut out = Vec::new();
                let b = x.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' && i + 2 < b.len() {
                        out.push(u8::from_str_radix(&x[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                String::from_utf8(out).unwrap()
            };
            Some((dec(k), dec(v)))
        })
        .collect()
}

#[tokio::test]
async fn fcm_retries_503_and_refreshes_a_refused_access_token() {
    let mock = Mock::start().await;
    let (cfg, _dir) = fcm_setup(&mock);
    mock.always("/token", token_answer());
    mock.script(
        "/v1/",
        vec![
            Answer::status(503, r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#),
            Answer::status(401, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#),
        ],
    );
    let pusher = Pusher::start(
        &PushConfig {
            max_attempts: 4,
            ..cfg
        },
        None,
        CancellationToken::new(),
    )
    .unwrap();
    pusher
        .send_now(
            &target("fcm", "tok-1", 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap();
    assert_eq!(mock.requests_to("/v1/").len(), 3);
    assert_eq!(
        mock.requests_to("/token").len(),
        2,
        "a 401 forgets the cached access token"
    );
}

async fn fcm_dead_tokens(backend: Backend) {
    let unregistered = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
    let invalid = r#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#;
    for (status, body) in [(404, unregistered), (400, invalid)] {
        let db = TestDb::new(backend).await;
        let (store, account) = store_with_token(&db, "fcm", "dead-fcm-token").await;
        let mock = Mock::start().await;
        let (cfg, _dir) = fcm_setup(&mock);
        mock.always("/token", token_answer());
        mock.always("/v1/", Answer::status(status, body));
        let pusher = Pusher::start(&cfg, Some(store.clone()), CancellationToken::new()).unwrap();
        let err = pusher
            .send_now(
                &target("fcm", "dead-fcm-token", account),
                &call_payload(PushKind::IncomingCall),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PushError::DeadToken), "{status}: {err}");
        let dev = store.find_device(account, INSTANCE).await.unwrap().unwrap();
        assert_eq!(dev.push_token, None, "{status}: token cleared");
    }
    // An INVALID_ARGUMENT about something else leaves the token alone.
    let db = TestDb::new(backend).await;
    let (store, account) = store_with_token(&db, "fcm", "good-token").await;
    let mock = Mock::start().await;
    let (cfg, _dir) = fcm_setup(&mock);
    mock.always("/token", token_answer());
    mock.always(
        "/v1/",
        Answer::status(
            400,
            r#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#,
        ),
    );
    let pusher = Pusher::start(&cfg, Some(store.clone()), CancellationToken::new()).unwrap();
    let err = pusher
        .send_now(
            &target("fcm", "good-token", account),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::Rejected(_)), "{err}");
    let dev = store.find_device(account, INSTANCE).await.unwrap().unwrap();
    assert_eq!(dev.push_token.as_deref(), Some("good-token"));
}

// ----- webhook ---------------------------------------------------------------------------

#[tokio::test]
async fn webhook_is_signed_and_carries_the_payload() {
    let mock = Mock::start().await;
    let secret = "webhook-secret-0123456789";
    let cfg = PushConfig {
        webhook: Some(WebhookConfig {
            url: format!("{}/hook", mock.url()),
            bearer_token: Some("hook-bearer-token".to_owned()),
            hmac_secret: Some(secret.to_owned()),
            ca_file: None,
        }),
        ..fast_retries()
    };
    mock.script("/hook", vec![Answer::status(503, "")]);
    let pusher = Pusher::start(&cfg, None, CancellationToken::new()).unwrap();
    let mut t = target("webhook", "opaque-device-token", 7);
    t.param = Some("tenant-1".to_owned());
    pusher
        .send_now(&t, &call_payload(PushKind::IncomingCall))
        .await
        .unwrap();
    let reqs = mock.requests_to("/hook");
    assert_eq!(reqs.len(), 2, "one retry after the 503");
    let r = &reqs[1];
    assert_eq!(r.header("authorization"), Some("Bearer hook-bearer-token"));
    let ts: i64 = r.header("x-tandem-timestamp").unwrap().parse().unwrap();
    let expected = tandem_signaling::push::webhook::signature(secret.as_bytes(), ts, &r.body);
    assert_eq!(r.header("x-tandem-signature"), Some(expected.as_str()));
    // Independent check of the HMAC.
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    assert_eq!(
        expected,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    let body = r.json();
    assert_eq!(body["token"], "opaque-device-token");
    assert_eq!(body["param"], "tenant-1");
    assert_eq!(body["account"], 7);
    assert_eq!(body["instance_id"], INSTANCE);
    assert_eq!(body["payload"]["type"], "incoming_call");
    assert_eq!(body["payload"]["media"], "video");
    // Prometheus counters by provider and outcome.
    let mut registry = prometheus_client::registry::Registry::with_prefix("tandem_signaling");
    pusher.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "tandem_signaling_push_notifications_total{provider=\"webhook\",outcome=\"retried\"} 1",
        "tandem_signaling_push_notifications_total{provider=\"webhook\",outcome=\"delivered\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

async fn webhook_dead_token(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (store, account) = store_with_token(&db, "webhook", "gone-token").await;
    let mock = Mock::start().await;
    mock.always("/hook", Answer::status(410, ""));
    let cfg = PushConfig {
        webhook: Some(WebhookConfig {
            url: format!("{}/hook", mock.url()),
            bearer_token: None,
            hmac_secret: None,
            ca_file: None,
        }),
        ..fast_retries()
    };
    let pusher = Pusher::start(&cfg, Some(store.clone()), CancellationToken::new()).unwrap();
    let err = pusher
        .send_now(
            &target("webhook", "gone-token", account),
            &call_payload(PushKind::MissedCall),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::DeadToken));
    let dev = store.find_device(account, INSTANCE).await.unwrap().unwrap();
    assert_eq!(dev.push_token, None);
}

// ----- queue, configuration, what is pushed ----------------------------------------------

#[tokio::test]
async fn notify_queues_without_waiting_and_the_queue_is_bounded() {
    let mock = Mock::start().await;
    let mut slow = Answer::status(200, "{}");
    slow.delay = Duration::from_millis(500);
    mock.always("/hook", slow);
    let cfg = PushConfig {
        queue_size: 2,
        concurrency: 1,
        webhook: Some(WebhookConfig {
            url: format!("{}/hook", mock.url()),
            bearer_token: None,
            hmac_secret: None,
            ca_file: None,
        }),
        ..fast_retries()
    };
    let pusher = Pusher::start(&cfg, None, CancellationToken::new()).unwrap();
    let t = target("webhook", "tok", 1);
    let start = Instant::now();
    let mut full = 0;
    for _ in 0..10 {
        match pusher
            .notify(&t, &call_payload(PushKind::IncomingCall))
            .await
        {
            Ok(()) => {}
            Err(PushError::QueueFull) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "notify never waits on the provider"
    );
    assert!(full >= 6, "bounded queue refused {full} of 10");
    assert_eq!(pusher.counts().queue_full, full);
    // The queued ones are delivered.
    let queued = 10 - full;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pusher.counts().delivered < queued && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pusher.counts().delivered, queued);
    // An unconfigured provider is refused at once.
    let err = pusher
        .notify(
            &target("apns", APNS_TOKEN, 1),
            &call_payload(PushKind::IncomingCall),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::NotConfigured(_)));
}

#[tokio::test]
async fn bad_provider_configuration_fails_at_start_naming_the_key() {
    let cfg = PushConfig {
        apns: Some(ApnsConfig {
            key_file: PathBuf::from("/nonexistent/AuthKey.p8"),
            key_id: "KEY1234567".to_owned(),
            team_id: "TEAM123456".to_owned(),
            topic: "com.example".to_owned(),
            base_url: "https://api.push.apple.com".to_owned(),
            ca_file: None,
        }),
        ..PushConfig::default()
    };
    let err = Pusher::start(&cfg, None, CancellationToken::new()).unwrap_err();
    assert!(err.to_string().contains("push.apns.key_file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("sa.json");
    std::fs::write(&bad, r#"{"client_email":"x","private_key":"not a key"}"#).unwrap();
    let cfg = PushConfig {
        fcm: Some(FcmConfig {
            service_account_file: bad,
            project_id: Some("p".into()),
            token_uri: None,
            base_url: "https://fcm.googleapis.com".into(),
            ca_file: None,
        }),
        ..PushConfig::default()
    };
    let err = Pusher::start(&cfg, None, CancellationToken::new()).unwrap_err();
    assert!(
        err.to_string().contains("push.fcm.service_account_file"),
        "{err}"
    );
    let cfg = PushConfig {
        max_attempts: 0,
        ..PushConfig::default()
    };
    let err = Pusher::start(&cfg, None, CancellationToken::new()).unwrap_err();
    assert!(err.to_string().contains("push.max_attempts"), "{err}");
}

#[test]
fn messages_push_their_type_excerpt_or_nothing() {
    let sys = DEFAULT_SYSTEM_COMMAND_TYPE;
    let p = |ct: &str, body: &[u8]| {
        PushPayload::for_message(ct, body, sys, "bob", "", "c@x", 1_800_000_000)
    };
    // Exactly 40 characters: unchanged.
    let forty = "0123456789".repeat(4);
    assert_eq!(
        p("text/plain", forty.as_bytes()).unwrap().body.unwrap(),
        forty
    );
    // 41: cut to 40 with an ellipsis.
    let long = format!("{forty}X");
    assert_eq!(
        p("text/plain", long.as_bytes()).unwrap().body.unwrap(),
        format!("{forty}\u{2026}")
    );
    // Multi-byte text is cut between characters, never inside one.
    let polish = "ą".repeat(45);
    let b = p("text/plain; charset=utf-8", polish.as_bytes())
        .unwrap()
        .body
        .unwrap();
    assert_eq!(b, format!("{}\u{2026}", "ą".repeat(40)));
    // Attachments push their type and no body.
    let pic = p("image/jpeg", b"\xff\xd8\xff").unwrap();
    assert_eq!((pic.kind, pic.body.clone()), (PushKind::Picture, None));
    assert_eq!(p("video/mp4", b"").unwrap().kind, PushKind::Video);
    assert_eq!(p("audio/amr", b"").unwrap().kind, PushKind::Audio);
    // System commands and other non-user content are never pushed.
    assert!(p(sys, br#"{"cmd":"contacts_add"}"#).is_none());
    assert!(p("Application/Vnd.Tandem.Command+JSON; v=2", b"{}").is_none());
    assert!(p("application/im-iscomposing+xml", b"<x/>").is_none());
    // Alert text for an attachment without a display name names the login.
    assert_eq!(pic.alert_text(), "bob sent a picture");
}

on_both_backends!(apns_dead_tokens, fcm_dead_tokens, webhook_dead_token);

#[test]
fn push_and_messages_config_is_strict_and_names_the_key() {
    use tandem_signaling::config::SignalingConfig;
    let path = Path::new("test.toml");
    let cfg = SignalingConfig::from_toml(
        "[push]\nmax_attempts = 2\n[push.webhook]\nurl = \"https://gw.example/notify\"\n\
         [messages]\nttl_secs = 86400\n",
        path,
    )
    .unwrap();
    assert_eq!(cfg.push.max_attempts, 2);
    assert_eq!(cfg.messages.ttl_secs, 86400);
    assert_eq!(
        cfg.push.webhook.as_ref().map(|w| w.url.as_str()),
        Some("https://gw.example/notify")
    );
    cfg.validate().unwrap();
    let err = SignalingConfig::from_toml("[push]\nretries = 3\n", path).unwrap_err();
    assert!(err.to_string().contains("retries"), "{err}");
    let err = SignalingConfig::from_toml("[push.apns]\nkey_id = \"X\"\n", path).unwrap_err();
    assert!(err.to_string().contains("key_file"), "{err}");
    let cfg = SignalingConfig::from_toml("[messages]\nttl_secs = 0\n", path).unwrap();
    let err = cfg.validate().unwrap_err();
    assert!(err.to_string().contains("messages.ttl_secs"), "{err}");
    let cfg = SignalingConfig::from_toml("[push.webhook]\nurl = \"ftp://x\"\n", path).unwrap();
    let err = cfg.validate().unwrap_err();
    assert!(err.to_string().contains("push.webhook.url"), "{err}");
}
