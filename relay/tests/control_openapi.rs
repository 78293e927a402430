//! The control API's OpenAPI document: served equals checked in, it lists exactly
//! the routes the router serves, and every route needs the bearer token. Regenerate
//! the checked-in file with
//! `TANDEM_UPDATE_OPENAPI=1 cargo test -p tandem-relay --test control_openapi`.

use std::collections::BTreeSet;
use std::time::Duration;

use tandem_relay::control::ROUTES;
use tandem_relay::Config;
use tokio_util::sync::CancellationToken;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
const TOKEN: &str = "control-token-0123456789";

#[tokio::test]
async fn served_document_equals_the_checked_in_file_and_lists_every_route() {
    let cfg = Config::from_toml(
        &format!(
            r#"
            listening-ip = ["127.0.0.1"]
            listening-port = 0
            user = ["alice:wonderland"]
            control-listen = "127.0.0.1:0"
            control-secret = ["{TOKEN}"]
            io = "portable"
            workers = 1
            "#
        ),
        "inline",
    )
    .unwrap();
    let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
    let base = format!("http://{}", relay.control_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let http = reqwest::Client::new();

    let resp = http
        .get(format!("{base}/openapi.json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served = resp.text().await.unwrap();
    assert_eq!(served, tandem_relay::control::openapi::document());
    if std::env::var_os("TANDEM_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &served).unwrap();
    }
    let file = std::fs::read_to_string(CHECKED_IN).expect("relay/openapi.json is checked in");
    assert!(
        served == file,
        "served /openapi.json differs from relay/openapi.json; regenerate it with \
         TANDEM_UPDATE_OPENAPI=1 cargo test -p tandem-relay --test control_openapi"
    );

    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path} needs the bearer token"
                );
            }
        }
    }
    let routes: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, routes,
        "OpenAPI paths and control::ROUTES differ"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for schema in ["CreateSession", "UpdateSession", "SessionInfo", "ErrorBody"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }

    // Every listed route is served: none falls through to the 404/405 fallback,
    // and none answers without the token.
    for (method, path) in ROUTES {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{base}{}", path.replace("{id}", "0"));
        let resp = http.request(m.clone(), &url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path}");
        let resp = http
            .request(m, &url)
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"caller": {}}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        let fell_through = status == 405 || (status == 404 && body["message"] == "no such route");
        assert!(
            !fell_through,
            "{method} {path} is not routed: {status} {body}"
        );
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
