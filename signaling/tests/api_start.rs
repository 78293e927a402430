//! The whole server started in-process through `tandem_signaling::start` on port 0:
//! generated admin token, the API over the real registrar, and revocation dropping a
//! binding made by a real digest-authenticated REGISTER.

mod api_support;
mod store_support;
mod udp_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_signaling::config::SignalingConfig;
use tokio_util::sync::CancellationToken;
use udp_client::{temp_dir, Registration};

fn config(data_dir: PathBuf) -> SignalingConfig {
    let mut cfg = SignalingConfig {
        data_dir,
        ..SignalingConfig::default()
    };
    cfg.default_country_code = "48".to_owned();
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.sip.udp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.sip.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

async fn call(
    client: &reqwest::Client,
    api: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{api}{path}"),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn generated_admin_token_is_private_and_stable() {
    let dir = temp_dir("api_start_token");
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(config(dir.clone()), shutdown.clone())
        .await
        .unwrap();
    let file = running
        .admin_token_file
        .clone()
        .expect("a generated token is kept in a file");
    assert_eq!(file, dir.join("admin-token"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let token = running.admin_token.clone();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    assert_eq!(token.len(), 64);
    assert!(
        dir.join("signaling.db").exists(),
        "embedded SQLite created under data_dir"
    );
    let client = reqwest::Client::new();
    let (status, _) = call(&client, running.api, &token, "GET", "/accounts", None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &client,
        running.api,
        "not-the-token-at-all",
        "GET",
        "/accounts",
        None,
    )
    .await;
    assert_eq!(status, 401);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();

    // A restart reuses the token and the data.
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(config(dir.clone()), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(running.admin_token, token);
    shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn configured_admin_token_is_used_and_no_file_written() {
    let dir = temp_dir("api_start_cfgtoken");
    let mut cfg = config(dir.clone());
    cfg.api.admin_token = Some("configured-token-0123456789".to_owned());
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    assert!(running.admin_token_file.is_none());
    assert!(!dir.join("admin-token").exists());
    let (status, body) = call(
        &reqwest::Client::new(),
        running.api,
        "configured-token-0123456789",
        "GET",
        "/health",
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_config_fails_at_start_naming_the_key() {
    let dir = temp_dir("api_start_bad");
    let mut cfg = config(dir.clone());
    cfg.default_country_code = "0".to_owned();
    let err = tandem_signaling::start(cfg, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("default_country_code"), "{err}");
    let mut cfg = config(dir.clone());
    cfg.database.url = Some("mysql://x".to_owned());
    let err = tandem_signaling::start(cfg, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("database.url"), "{err}");
    // Nothing was created for a configuration that fails.
    assert!(!dir.join("admin-token").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A digest-authenticated REGISTER of `instance` over UDP.
async fn register(
    sip: SocketAddr,
    login: &str,
    password: &str,
    realm: &str,
    instance: &str,
) -> String {
    Registration {
        login,
        password,
        realm,
        instance,
        uri_params: "",
        expires: 600,
    }
    .run(sip)
    .await
}

#[tokio::test]
async fn revoking_a_device_drops_its_live_registration() {
    let dir = temp_dir("api_start_revoke");
    let mut cfg = config(dir.clone());
    cfg.api.admin_token = Some("configured-token-0123456789".to_owned());
    let realm = cfg.sip.realm.clone();
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let sip = running.sip.udp.expect("UDP bound");
    let (api, token, client) = (
        running.api,
        running.admin_token.clone(),
        reqwest::Client::new(),
    );

    let (s, body) = call(
        &client,
        api,
        &token,
        "POST",
        "/accounts",
        Some(
            json!({"login": "alice", "password": "correct horse", "phone_numbers": ["0600345698"]}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    let inst = "urn:uuid:00000000-0000-4000-8000-0000000000aa";

    // Not yet authorised: the registrar refuses the instance.
    let resp = register(sip, "alice", "correct horse", &realm, inst).await;
    assert!(resp.starts_with("SIP/2.0 403"), "{resp}");

    let (s, body) = call(
        &client,
        api,
        &token,
        "POST",
        &format!("/accounts/{id}/devices"),
        Some(json!({"instance_id": inst, "class": "desktop", "name": "pc"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let resp = register(sip, "alice", "correct horse", &realm, inst).await;
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    let (s, body) = call(
        &client,
        api,
        &token,
        "GET",
        &format!("/registrations/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["bindings"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["bindings"][0]["instance_id"], inst);
    assert_eq!(running.store.load_bindings().await.unwrap().len(), 1);

    // A new desktop sign-in replaces the old desktop: its binding goes at once.
    let (s, body) = call(&client, api, &token, "POST", &format!("/accounts/{id}/devices"),
        Some(json!({"instance_id": "urn:uuid:00000000-0000-4000-8000-0000000000bb", "class": "desktop", "name": "pc2"}))).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["replaced"], json!([inst]));
    assert!(running.registrar.bindings(id).is_empty());
    assert!(running.store.load_bindings().await.unwrap().is_empty());

    // Register the new desktop, then revoke it through the API.
    let inst2 = "urn:uuid:00000000-0000-4000-8000-0000000000bb";
    let resp = register(sip, "alice", "correct horse", &realm, inst2).await;
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert_eq!(running.registrar.bindings(id).len(), 1);
    let (s, _) = call(
        &client,
        api,
        &token,
        "DELETE",
        &format!("/accounts/{id}/devices/{inst2}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert!(running.registrar.bindings(id).is_empty());
    assert!(running.store.load_bindings().await.unwrap().is_empty());
    let (_, body) = call(
        &client,
        api,
        &token,
        "GET",
        &format!("/registrations/{id}"),
        None,
    )
    .await;
    assert_eq!(body["bindings"], json!([]));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn starts_on_postgresql_with_database_url() {
    let db = store_support::TestDb::new(store_support::Backend::Postgres).await;
    let dir = temp_dir("api_start_pg");
    let mut cfg = config(dir.clone());
    cfg.database.url = Some(db.url.clone());
    cfg.api.admin_token = Some("configured-token-0123456789".to_owned());
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    assert_eq!(
        running.store.backend(),
        tandem_signaling::store::Backend::Postgres
    );
    assert!(
        !dir.join("signaling.db").exists(),
        "no SQLite file when PostgreSQL is configured"
    );
    let client = reqwest::Client::new();
    let (s, body) = call(
        &client,
        running.api,
        &running.admin_token,
        "POST",
        "/accounts",
        Some(
            json!({"login": "alice", "password": "correct horse", "phone_numbers": ["0600345698"]}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    // Bare numbers given as a login use the configured default country code (48 here).
    let creds = running
        .store
        .find_account("600 345 698")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.login, "alice");
    shutdown.cancel();
    running.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
