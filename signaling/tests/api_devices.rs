//! Device routes (administrator and account holder), Basic authentication, push
//! tokens and live registrations, on SQLite and PostgreSQL.

mod api_support;
mod store_support;

use api_support::{instance, Auth, TestApi};
use serde_json::json;
use store_support::Backend;
use tandem_signaling::model::Binding;

fn dev(n: u32, class: &str) -> serde_json::Value {
    json!({"instance_id": instance(n), "class": class, "name": format!("{class} {n}")})
}

async fn four_devices_and_the_mobile_limit(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &["+48600345698"]).await;
    let basic = || Auth::Basic("0600345698", "12345678");
    // Two mobiles, a tablet, a desktop: the seed's default allows all four.
    for (n, class) in [(1, "mobile"), (2, "mobile"), (3, "tablet"), (4, "desktop")] {
        let r = api
            .call("POST", "/me/devices", basic(), Some(dev(n, class)))
            .await;
        let body = r.expect(201);
        assert_eq!(body["device"]["instance_id"], instance(n));
        assert_eq!(body["device"]["class"], class);
        assert_eq!(body["replaced"], json!([]));
    }
    // A third mobile-class device (fourth of mobile+tablet) is refused, naming the limit.
    let r = api
        .call("POST", "/me/devices", basic(), Some(dev(5, "mobile")))
        .await;
    r.expect_error(409, "device_limit_reached");
    assert_eq!(
        r.body["error"]["message"],
        "mobile/tablet limit of 3 reached"
    );
    let r = api
        .call(
            "POST",
            &format!("/accounts/{a}/devices"),
            Auth::Admin,
            Some(dev(5, "tablet")),
        )
        .await;
    r.expect_error(409, "device_limit_reached");

    let r = api.call("GET", "/me/devices", basic(), None).await;
    let list = r.expect(200)["devices"].as_array().unwrap().clone();
    assert_eq!(list.len(), 4);
    assert!(list
        .iter()
        .all(|d| d["created_at"].as_i64().unwrap() > 1_600_000_000));
    let r = api
        .call("GET", &format!("/accounts/{a}/devices"), Auth::Admin, None)
        .await;
    assert_eq!(r.expect(200)["devices"].as_array().unwrap().len(), 4);

    // Re-authorising an existing instance is idempotent (200) and may rename it.
    let r = api
        .call(
            "POST",
            "/me/devices",
            basic(),
            Some(json!({"instance_id": instance(1), "class": "mobile", "name": "renamed"})),
        )
        .await;
    assert_eq!(r.expect(200)["device"]["name"], "renamed");
    api.call("POST", "/me/devices", basic(), Some(dev(1, "desktop")))
        .await
        .expect_error(409, "device_class_mismatch");
    // Upper-case UUIDs name the same instance.
    let upper = instance(1).to_uppercase();
    let r = api
        .call(
            "POST",
            "/me/devices",
            basic(),
            Some(json!({"instance_id": upper, "class": "mobile", "name": "x"})),
        )
        .await;
    assert_eq!(r.expect(200)["device"]["instance_id"], instance(1));
    assert!(api.revoked().is_empty());
    api.stop().await;
}

async fn desktop_sign_in_replaces_the_previous_desktop(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    api.call(
        "POST",
        "/me/devices",
        Auth::Basic("alice", "12345678"),
        Some(dev(1, "desktop")),
    )
    .await
    .expect(201);
    api.call(
        "POST",
        "/me/devices",
        Auth::Basic("alice", "12345678"),
        Some(dev(2, "web")),
    )
    .await
    .expect(201);
    let r = api
        .call(
            "POST",
            "/me/devices",
            Auth::Basic("alice", "12345678"),
            Some(dev(3, "desktop")),
        )
        .await;
    assert_eq!(r.expect(201)["replaced"], json!([instance(1)]));
    // The old desktop's registration was dropped at once, and it is no longer a device.
    assert_eq!(api.revoked(), vec![(a, instance(1))]);
    let r = api
        .call("GET", "/me/devices", Auth::Basic("alice", "12345678"), None)
        .await;
    let ids: Vec<_> = r.expect(200)["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["instance_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![instance(2), instance(3)]);
    // Same for web, through the admin route.
    let r = api
        .call(
            "POST",
            &format!("/accounts/{a}/devices"),
            Auth::Admin,
            Some(dev(4, "web")),
        )
        .await;
    assert_eq!(r.expect(201)["replaced"], json!([instance(2)]));
    assert_eq!(api.revoked(), vec![(a, instance(1)), (a, instance(2))]);
    api.stop().await;
}

async fn revoke_drops_the_binding(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let b = api.account("bob", "12345678", &[]).await;
    for n in [1, 2] {
        api.call(
            "POST",
            &format!("/accounts/{a}/devices"),
            Auth::Admin,
            Some(dev(n, "mobile")),
        )
        .await
        .expect(201);
    }
    api.call(
        "POST",
        &format!("/accounts/{b}/devices"),
        Auth::Admin,
        Some(dev(9, "mobile")),
    )
    .await
    .expect(201);
    // Bob cannot revoke Alice's device: it is not his.
    api.call(
        "DELETE",
        &format!("/me/devices/{}", instance(1)),
        Auth::Basic("bob", "12345678"),
        None,
    )
    .await
    .expect_error(404, "device_not_found");
    let r = api
        .call(
            "DELETE",
            &format!("/me/devices/{}", instance(1)),
            Auth::Basic("alice", "12345678"),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let r = api
        .call(
            "DELETE",
            &format!("/accounts/{a}/devices/{}", instance(2)),
            Auth::Admin,
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    assert_eq!(api.revoked(), vec![(a, instance(1)), (a, instance(2))]);
    api.call(
        "DELETE",
        &format!("/accounts/{a}/devices/{}", instance(2)),
        Auth::Admin,
        None,
    )
    .await
    .expect_error(404, "device_not_found");
    api.call(
        "DELETE",
        "/me/devices/not-a-urn",
        Auth::Basic("alice", "12345678"),
        None,
    )
    .await
    .expect_error(400, "invalid_instance_id");
    assert!(api
        .store
        .find_device(a, &instance(1))
        .await
        .unwrap()
        .is_none());
    // Revoking frees the slot.
    for n in [3, 4, 5] {
        api.call(
            "POST",
            &format!("/accounts/{a}/devices"),
            Auth::Admin,
            Some(dev(n, "mobile")),
        )
        .await
        .expect(201);
    }
    api.stop().await;
}

async fn authorise_bad_input(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let path = format!("/accounts/{a}/devices");
    api.call_raw("POST", &path, Auth::Admin, "{\"instance_id\": ")
        .await
        .expect_error(400, "invalid_json");
    api.call_raw(
        "POST",
        "/me/devices",
        Auth::Basic("alice", "12345678"),
        "nope",
    )
    .await
    .expect_error(400, "invalid_json");
    for (body, code) in [
        (
            json!({"instance_id": instance(1), "class": "phone", "name": "x"}),
            "invalid_request",
        ),
        (
            json!({"instance_id": instance(1), "class": "mobile"}),
            "invalid_request",
        ),
        (
            json!({"instance_id": "urn:uuid:1234", "class": "mobile", "name": "x"}),
            "invalid_instance_id",
        ),
        (
            json!({"instance_id": "<urn:uuid:00000000-0000-4000-8000-000000000001>", "class": "mobile", "name": "x"}),
            "invalid_instance_id",
        ),
        (
            json!({"instance_id": instance(1), "class": "mobile", "name": ""}),
            "invalid_request",
        ),
        (
            json!({"instance_id": instance(1), "class": "mobile", "name": "x".repeat(129)}),
            "invalid_request",
        ),
        (
            json!({"instance_id": instance(1), "class": "mobile", "name": "x", "push_provider": "fcm"}),
            "invalid_request",
        ),
        (
            json!({"instance_id": instance(1), "class": "mobile", "name": "x", "push_provider": "sms", "push_token": "t"}),
            "invalid_request",
        ),
        (
            json!({"instance_id": instance(1), "class": "mobile", "name": "x", "extra": true}),
            "invalid_request",
        ),
    ] {
        api.call("POST", &path, Auth::Admin, Some(body.clone()))
            .await
            .expect_error(400, code);
    }
    assert!(api.store.list_devices(a).await.unwrap().is_empty());
    api.stop().await;
}

async fn push_tokens(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let r = api
        .call(
            "POST",
            "/me/devices",
            Auth::Basic("alice", "12345678"),
            Some(
                json!({"instance_id": instance(1), "class": "mobile", "name": "p",
                        "push_provider": "apns", "push_token": "tok-a"}),
            ),
        )
        .await;
    let body = r.expect(201);
    assert_eq!(body["device"]["push_provider"], "apns");
    assert_eq!(body["device"]["has_push_token"], true);
    assert!(
        body["device"].get("push_token").is_none(),
        "tokens are not echoed"
    );

    let me_path = format!("/me/devices/{}/push-token", instance(1));
    let r = api
        .call(
            "PUT",
            &me_path,
            Auth::Basic("alice", "12345678"),
            Some(json!({"provider": "fcm", "token": "tok-b"})),
        )
        .await;
    assert_eq!(r.expect(200)["push_provider"], "fcm");
    let stored = api
        .store
        .find_device(a, &instance(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            stored.push_provider.as_deref(),
            stored.push_token.as_deref()
        ),
        (Some("fcm"), Some("tok-b"))
    );

    let admin_path = format!("/accounts/{a}/devices/{}/push-token", instance(1));
    api.call(
        "PUT",
        &admin_path,
        Auth::Admin,
        Some(json!({"provider": "webhook", "token": "https://x"})),
    )
    .await
    .expect(200);
    let r = api.call("DELETE", &admin_path, Auth::Admin, None).await;
    assert_eq!(r.expect(200)["has_push_token"], false);
    assert_eq!(
        api.store
            .find_device(a, &instance(1))
            .await
            .unwrap()
            .unwrap()
            .push_token,
        None
    );
    api.call(
        "PUT",
        &me_path,
        Auth::Basic("alice", "12345678"),
        Some(json!({"provider": "fcm", "token": "t"})),
    )
    .await
    .expect(200);
    let r = api
        .call("DELETE", &me_path, Auth::Basic("alice", "12345678"), None)
        .await;
    assert_eq!(r.expect(200)["has_push_token"], false);

    for bad in [
        json!({"provider": "carrier-pigeon", "token": "t"}),
        json!({"provider": "fcm", "token": ""}),
        json!({"provider": "fcm", "token": "a\nb"}),
        json!({"provider": "fcm"}),
    ] {
        api.call("PUT", &me_path, Auth::Basic("alice", "12345678"), Some(bad))
            .await
            .expect_error(400, "invalid_request");
    }
    api.call_raw("PUT", &me_path, Auth::Basic("alice", "12345678"), "{")
        .await
        .expect_error(400, "invalid_json");
    let other = format!("/me/devices/{}/push-token", instance(2));
    api.call(
        "PUT",
        &other,
        Auth::Basic("alice", "12345678"),
        Some(json!({"provider": "fcm", "token": "t"})),
    )
    .await
    .expect_error(404, "device_not_found");
    api.call("DELETE", &other, Auth::Basic("alice", "12345678"), None)
        .await
        .expect_error(404, "device_not_found");
    api.call(
        "DELETE",
        &format!("/accounts/{a}/devices/{}/push-token", instance(2)),
        Auth::Admin,
        None,
    )
    .await
    .expect_error(404, "device_not_found");
    api.stop().await;
}

async fn basic_auth_is_checked(backend: Backend) {
    let api = TestApi::new(backend).await;
    api.account("alice", "12345678", &["+48600345698"]).await;
    let r = api
        .call(
            "GET",
            "/me/devices",
            Auth::Basic("alice", "wrong-password"),
            None,
        )
        .await;
    r.expect_error(401, "unauthorized");
    assert!(r
        .headers
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    for auth in [
        Auth::None,
        Auth::Basic("nobody", "12345678"),
        Auth::Basic("48600345699", "12345678"),
        Auth::Basic("alice", ""),
        Auth::Basic("", "12345678"),
        Auth::Raw("Basic !!!not-base64!!!"),
        Auth::Raw("Basic YWxpY2U="),            // "alice" without a colon
        Auth::Bearer(api_support::ADMIN_TOKEN), // the admin token is not an account login
    ] {
        api.call("GET", "/me/devices", auth, None)
            .await
            .expect_error(401, "unauthorized");
    }
    for (method, path) in [
        ("GET", "/me"),
        ("POST", "/me/devices"),
        ("PUT", "/me/username"),
        (
            "DELETE",
            "/me/devices/urn:uuid:00000000-0000-4000-8000-000000000001",
        ),
        (
            "PUT",
            "/me/devices/urn:uuid:00000000-0000-4000-8000-000000000001/push-token",
        ),
        (
            "DELETE",
            "/me/devices/urn:uuid:00000000-0000-4000-8000-000000000001/push-token",
        ),
    ] {
        api.call(
            method,
            path,
            Auth::Basic("alice", "nope-nope"),
            Some(json!({})),
        )
        .await
        .expect_error(401, "unauthorized");
    }
    let r = api
        .call(
            "GET",
            "/me",
            Auth::Basic("+48 600 345 698", "12345678"),
            None,
        )
        .await;
    assert_eq!(r.expect(200)["login"], "alice");
    // Passwords with a colon work (only the first colon splits user from password).
    let id = api.account("carol", "pass:word:1", &[]).await;
    assert_eq!(
        api.call("GET", "/me", Auth::Basic("carol", "pass:word:1"), None)
            .await
            .expect(200)["id"],
        json!(id)
    );
    api.stop().await;
}

async fn registrations(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let b = api.account("bob", "12345678", &[]).await;
    let binding = |account, n| Binding {
        account_id: account,
        instance_id: instance(n),
        reg_id: 1,
        contact_uri: "sip:alice@127.0.0.1:5070;transport=tcp".to_owned(),
        expires_at: 2_000_000_000,
        call_id: "c1".to_owned(),
        cseq: 2,
        transport: "tcp".to_owned(),
        source: "127.0.0.1:5070".to_owned(),
        local: "127.0.0.1:5060".to_owned(),
        user_agent: Some("ua".to_owned()),
        push: None,
    };
    api.registrar
        .bindings
        .lock()
        .unwrap()
        .extend([binding(a, 1), binding(b, 2)]);
    let r = api
        .call("GET", &format!("/registrations/{a}"), Auth::Admin, None)
        .await;
    let body = r.expect(200);
    assert_eq!(body["account_id"], json!(a));
    assert_eq!(body["bindings"].as_array().unwrap().len(), 1);
    assert_eq!(body["bindings"][0]["instance_id"], instance(1));
    assert_eq!(
        body["bindings"][0]["contact_uri"],
        "sip:alice@127.0.0.1:5070;transport=tcp"
    );
    assert_eq!(body["bindings"][0]["reg_id"], 1);
    assert!(body["bindings"][0].get("call_id").is_none());
    let r = api
        .call("GET", &format!("/registrations/{b}"), Auth::Admin, None)
        .await;
    assert_eq!(r.expect(200)["bindings"][0]["instance_id"], instance(2));
    api.call(
        "GET",
        &format!("/registrations/{a}"),
        Auth::Basic("alice", "12345678"),
        None,
    )
    .await
    .expect_error(401, "unauthorized");
    api.call("GET", "/registrations/x", Auth::Admin, None)
        .await
        .expect_error(400, "invalid_request");
    api.stop().await;
}

async fn health_and_metrics(backend: Backend) {
    let api = TestApi::new(backend).await;
    let r = api.call("GET", "/health", Auth::None, None).await;
    assert_eq!(r.expect(200)["status"], "ok");
    let a = api.account("alice", "12345678", &["+48600345698"]).await;
    api.call(
        "POST",
        &format!("/accounts/{a}/devices"),
        Auth::Admin,
        Some(dev(1, "desktop")),
    )
    .await
    .expect(201);
    api.call(
        "POST",
        &format!("/accounts/{a}/devices"),
        Auth::Admin,
        Some(dev(2, "desktop")),
    )
    .await
    .expect(201);
    api.call("GET", "/me", Auth::Basic("alice", "bad-password"), None)
        .await
        .expect(401);
    let text = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("tandem_signaling_http_requests_total{method=\"POST\",route=\"/accounts/{id}/devices\",status=\"201\"} 2"), "{text}");
    assert!(
        text.contains("tandem_signaling_devices_authorised_total{kind=\"desktop\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("tandem_signaling_devices_revoked_total 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_signaling_http_auth_failures_total{kind=\"basic\"} 1"),
        "{text}"
    );
    // Unknown methods share one label value.
    for m in ["FOO", "BAR"] {
        api.call(m, "/health", Auth::None, None)
            .await
            .expect_error(405, "method_not_allowed");
    }
    let text = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("method=\"other\",route=\"/health\",status=\"405\"} 2"),
        "{text}"
    );
    assert!(!text.contains("FOO"));
    // No per-user label values.
    assert!(!text.contains("alice") && !text.contains("48600345698") && !text.contains("urn:uuid"));
    assert!(!text.contains(&format!("/accounts/{a}/")));
    assert!(text.trim_end().ends_with("# EOF"));
    api.stop().await;
}

on_both_backends!(
    four_devices_and_the_mobile_limit,
    desktop_sign_in_replaces_the_previous_desktop,
    revoke_drops_the_binding,
    authorise_bad_input,
    push_tokens,
    basic_auth_is_checked,
    registrations,
    health_and_metrics,
);
