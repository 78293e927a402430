//! The OpenAPI document: served equals checked in, and it lists exactly the routes
//! the router serves. Regenerate the checked-in file with
//! `TANDEM_UPDATE_OPENAPI=1 cargo test -p tandem-signaling --test api_openapi`.

mod api_support;
mod store_support;

use std::collections::BTreeSet;

use api_support::{Auth, TestApi};
use store_support::Backend;
use tandem_signaling::http::ROUTES;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[tokio::test]
async fn served_document_equals_the_checked_in_file_and_lists_every_route() {
    let api = TestApi::new(Backend::Sqlite).await;
    let resp = api
        .client
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served = resp.text().await.unwrap();
    if std::env::var_os("TANDEM_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &served).unwrap();
    }
    let file = std::fs::read_to_string(CHECKED_IN).expect("signaling/openapi.json is checked in");
    assert!(
        served == file,
        "served /openapi.json differs from signaling/openapi.json; regenerate it"
    );

    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routes: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routes, "OpenAPI paths and http::ROUTES differ");
    for scheme in ["admin", "basic"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    api.stop().await;
}

/// Every route in the table is served: no route falls through to the 404/405 fallback.
#[tokio::test]
async fn every_listed_route_is_served() {
    let api = TestApi::new(Backend::Sqlite).await;
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", "1")
            .replace(
                "{instance}",
                "urn:uuid:00000000-0000-4000-8000-000000000001",
            )
            .replace("{number}", "48600345698");
        let r = api.call(method, &concrete, Auth::None, None).await;
        let fell_through = matches!(r.code(), "not_found" | "method_not_allowed");
        assert!(
            !fell_through,
            "{method} {path} is not routed: {} {}",
            r.status, r.body
        );
    }
    api.stop().await;
}
