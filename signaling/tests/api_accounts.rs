//! Administrator account routes, public IDs and limits, on SQLite and PostgreSQL.

mod api_support;
mod store_support;

use api_support::{Auth, TestApi};
use serde_json::json;
use store_support::Backend;

async fn create_get_list_update_delete(backend: Backend) {
    let api = TestApi::new(backend).await;
    let r = api
        .call(
            "POST",
            "/accounts",
            Auth::Admin,
            Some(json!({
                "login": "alice", "password": "correct horse", "country_code": "48",
                "display_name": "Alice", "username": "alice.w",
                "phone_numbers": ["+48 600 345 698", "0600 111 222"],
            })),
        )
        .await;
    let body = r.expect(201);
    let id = body["id"].as_i64().unwrap();
    assert_eq!(body["login"], "alice");
    assert_eq!(body["username"], "alice.w");
    assert_eq!(body["display_name"], "Alice");
    assert_eq!(body["phone_numbers"], json!(["48600111222", "48600345698"]));
    assert_eq!(body["limits"], json!({"mobile": 3, "desktop": 1, "web": 1}));
    assert_eq!(
        body["limit_overrides"],
        json!({"mobile": null, "desktop": null, "web": null})
    );
    assert!(body.get("password").is_none() && body.get("ha1_md5").is_none());

    // Default country code applies when none is given.
    let r = api
        .call(
            "POST",
            "/accounts",
            Auth::Admin,
            Some(json!({"login": "bob", "password": "12345678"})),
        )
        .await;
    let bob = r.expect(201)["id"].as_i64().unwrap();
    assert_eq!(r.body["country_code"], "48");

    let r = api
        .call("GET", &format!("/accounts/{id}"), Auth::Admin, None)
        .await;
    assert_eq!(r.expect(200)["login"], "alice");

    let r = api.call("GET", "/accounts", Auth::Admin, None).await;
    let list = r.expect(200);
    assert_eq!(list["accounts"].as_array().unwrap().len(), 2);
    assert_eq!(list["next_after"], json!(null));
    let r = api
        .call("GET", "/accounts?limit=1", Auth::Admin, None)
        .await;
    assert_eq!(r.expect(200)["accounts"][0]["login"], "alice");
    assert_eq!(r.body["next_after"], json!(id));
    let r = api
        .call(
            "GET",
            &format!("/accounts?after={id}&limit=1"),
            Auth::Admin,
            None,
        )
        .await;
    assert_eq!(r.expect(200)["accounts"][0]["id"], json!(bob));
    // Find by any public ID or the login.
    for q in ["alice", "alice.w", "%2B48%20600%20345%20698", "0600111222"] {
        let r = api
            .call("GET", &format!("/accounts?identity={q}"), Auth::Admin, None)
            .await;
        let found = r.expect(200)["accounts"].as_array().unwrap().clone();
        assert_eq!(found.len(), 1, "{q}");
        assert_eq!(found[0]["id"], json!(id), "{q}");
    }
    let r = api
        .call("GET", "/accounts?identity=nobody", Auth::Admin, None)
        .await;
    assert_eq!(r.expect(200)["accounts"], json!([]));
    api.call("GET", "/accounts?limit=0", Auth::Admin, None)
        .await
        .expect_error(400, "invalid_request");
    api.call("GET", "/accounts?limit=x", Auth::Admin, None)
        .await
        .expect_error(400, "invalid_request");
    api.call("GET", "/accounts?bogus=1", Auth::Admin, None)
        .await
        .expect_error(400, "invalid_request");

    // Password change: the old one stops working for Basic auth, the new one works.
    api.call("GET", "/me", Auth::Basic("alice", "correct horse"), None)
        .await
        .expect(200);
    let r = api
        .call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"password": "battery staple", "display_name": null, "country_code": "44"})),
        )
        .await;
    let body = r.expect(200);
    assert_eq!(body["display_name"], json!(null));
    assert_eq!(body["country_code"], "44");
    api.call("GET", "/me", Auth::Basic("alice", "correct horse"), None)
        .await
        .expect_error(401, "unauthorized");
    api.call("GET", "/me", Auth::Basic("alice", "battery staple"), None)
        .await
        .expect(200);
    let r = api
        .call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"display_name": "Al"})),
        )
        .await;
    assert_eq!(r.expect(200)["display_name"], "Al");
    assert_eq!(r.body["country_code"], "44");
    assert_eq!(r.body["no_answer_forward"], json!(null));

    // The no-answer rule: a sip: URI, shown on the account, cleared by null.
    let r = api
        .call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"no_answer_forward": "sip:voicemail@vm.example.net"})),
        )
        .await;
    assert_eq!(
        r.expect(200)["no_answer_forward"],
        "sip:voicemail@vm.example.net"
    );
    assert_eq!(r.body["display_name"], "Al");
    for bad in [
        "http://vm.example.net/",
        "sips:vm@vm.example.net",
        "voicemail@vm.example.net",
        "sip:",
        "<sip:vm@vm.example.net>",
        "sip:vm@vm.example.net\r\nVia: x",
    ] {
        api.call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"no_answer_forward": bad})),
        )
        .await
        .expect_error(400, "invalid_request");
    }
    let r = api
        .call("GET", &format!("/accounts/{id}"), Auth::Admin, None)
        .await;
    assert_eq!(
        r.expect(200)["no_answer_forward"],
        "sip:voicemail@vm.example.net"
    );
    let r = api
        .call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"no_answer_forward": null})),
        )
        .await;
    assert_eq!(r.expect(200)["no_answer_forward"], json!(null));

    // Delete: devices' registrations are dropped, the account is gone.
    api.call(
        "POST",
        &format!("/accounts/{id}/devices"),
        Auth::Admin,
        Some(json!({"instance_id": api_support::instance(1), "class": "mobile", "name": "p"})),
    )
    .await
    .expect(201);
    let r = api
        .call("DELETE", &format!("/accounts/{id}"), Auth::Admin, None)
        .await;
    assert_eq!(r.status.as_u16(), 204);
    assert_eq!(api.revoked(), vec![(id, api_support::instance(1))]);
    api.call("GET", &format!("/accounts/{id}"), Auth::Admin, None)
        .await
        .expect_error(404, "account_not_found");
    api.call("DELETE", &format!("/accounts/{id}"), Auth::Admin, None)
        .await
        .expect_error(404, "account_not_found");
    api.stop().await;
}

async fn create_account_bad_input(backend: Backend) {
    let api = TestApi::new(backend).await;
    api.call_raw("POST", "/accounts", Auth::Admin, "{\"login\": \"x\",")
        .await
        .expect_error(400, "invalid_json");
    api.call_raw("POST", "/accounts", Auth::Admin, "not json")
        .await
        .expect_error(400, "invalid_json");
    api.call(
        "POST",
        "/accounts",
        Auth::Admin,
        Some(json!({"login": "x"})),
    )
    .await
    .expect_error(400, "invalid_request");
    api.call(
        "POST",
        "/accounts",
        Auth::Admin,
        Some(json!({"login": "x", "password": "12345678", "surprise": 1})),
    )
    .await
    .expect_error(400, "invalid_request");
    let r = api
        .client
        .post(api.url("/accounts"))
        .bearer_auth(api_support::ADMIN_TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    for (body, code) in [
        (
            json!({"login": "a:b", "password": "12345678"}),
            "invalid_request",
        ),
        (
            json!({"login": "", "password": "12345678"}),
            "invalid_request",
        ),
        (
            json!({"login": "x".repeat(65), "password": "12345678"}),
            "invalid_request",
        ),
        (
            json!({"login": "alice", "password": "short"}),
            "invalid_request",
        ),
        (
            json!({"login": "alice", "password": "12345678", "country_code": "048"}),
            "invalid_request",
        ),
        (
            json!({"login": "alice", "password": "12345678", "username": "123456"}),
            "invalid_request",
        ),
        (
            json!({"login": "alice", "password": "12345678", "display_name": "a\u{0}b"}),
            "invalid_request",
        ),
        (
            json!({"login": "alice", "password": "12345678", "phone_numbers": ["+48 abc"]}),
            "invalid_phone_number",
        ),
        (
            json!({"login": "alice", "password": "12345678", "phone_numbers": ["+1234567890123456"]}),
            "invalid_phone_number",
        ),
    ] {
        api.call("POST", "/accounts", Auth::Admin, Some(body.clone()))
            .await
            .expect_error(400, code);
    }
    // Oversized body.
    let big = format!(
        "{{\"login\": \"{}\", \"password\": \"12345678\"}}",
        "a".repeat(100_000)
    );
    let r = api.call_raw("POST", "/accounts", Auth::Admin, &big).await;
    r.expect_error(413, "payload_too_large");

    api.account("alice", "12345678", &["+48600345698"]).await;
    api.call(
        "POST",
        "/accounts",
        Auth::Admin,
        Some(json!({"login": "alice", "password": "12345678"})),
    )
    .await
    .expect_error(409, "login_taken");
    // A number taken by another account: nothing of the new account is left behind.
    api.call(
        "POST",
        "/accounts",
        Auth::Admin,
        Some(json!({"login": "carol", "password": "12345678", "phone_numbers": ["0600345698"]})),
    )
    .await
    .expect_error(409, "phone_number_taken");
    let r = api.call("GET", "/accounts", Auth::Admin, None).await;
    assert_eq!(r.expect(200)["accounts"].as_array().unwrap().len(), 1);
    api.call(
        "POST",
        "/accounts",
        Auth::Admin,
        Some(json!({"login": "carol", "password": "12345678"})),
    )
    .await
    .expect(201);
    api.stop().await;
}

async fn unknown_account_everywhere(backend: Backend) {
    let api = TestApi::new(backend).await;
    let i = api_support::instance(1);
    for (method, path, body) in [
        ("GET", "/accounts/999".to_owned(), None),
        (
            "PATCH",
            "/accounts/999".to_owned(),
            Some(json!({"display_name": "x"})),
        ),
        ("DELETE", "/accounts/999".to_owned(), None),
        (
            "POST",
            "/accounts/999/phone-numbers".to_owned(),
            Some(json!({"number": "+48600345698"})),
        ),
        (
            "DELETE",
            "/accounts/999/phone-numbers/48600345698".to_owned(),
            None,
        ),
        (
            "PUT",
            "/accounts/999/username".to_owned(),
            Some(json!({"username": "zed"})),
        ),
        (
            "PUT",
            "/accounts/999/limits".to_owned(),
            Some(json!({"mobile": 1})),
        ),
        ("GET", "/accounts/999/devices".to_owned(), None),
        (
            "POST",
            "/accounts/999/devices".to_owned(),
            Some(json!({"instance_id": i, "class": "mobile", "name": "p"})),
        ),
        ("DELETE", format!("/accounts/999/devices/{i}"), None),
        (
            "PUT",
            format!("/accounts/999/devices/{i}/push-token"),
            Some(json!({"provider": "fcm", "token": "t"})),
        ),
        (
            "DELETE",
            format!("/accounts/999/devices/{i}/push-token"),
            None,
        ),
        ("GET", "/registrations/999".to_owned(), None),
    ] {
        let r = api.call(method, &path, Auth::Admin, body).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (404, "account_not_found"),
            "{method} {path}: {}",
            r.body
        );
    }
    api.call("GET", "/accounts/abc", Auth::Admin, None)
        .await
        .expect_error(400, "invalid_request");
    api.call("GET", "/nowhere", Auth::Admin, None)
        .await
        .expect_error(404, "not_found");
    api.call("PUT", "/accounts", Auth::Admin, None)
        .await
        .expect_error(405, "method_not_allowed");
    api.stop().await;
}

async fn admin_token_is_checked(backend: Backend) {
    let api = TestApi::new(backend).await;
    for auth in [
        Auth::None,
        Auth::Bearer("wrong-token-wrong-token"),
        Auth::Bearer(""),
        Auth::Raw("Basic YWRtaW46YWRtaW4="),
        Auth::Raw("Bearer"),
        Auth::Raw("Token test-admin-token-0123456789"),
    ] {
        api.call("GET", "/accounts", auth, None)
            .await
            .expect_error(401, "unauthorized");
    }
    // A prefix of the token is not the token.
    api.call("GET", "/accounts", Auth::Bearer("test-admin-token"), None)
        .await
        .expect_error(401, "unauthorized");
    // Authentication comes before the body is read.
    api.call_raw("POST", "/accounts", Auth::None, "{{{")
        .await
        .expect_error(401, "unauthorized");
    // Scheme names are case-insensitive.
    api.call(
        "GET",
        "/accounts",
        Auth::Raw("bearer test-admin-token-0123456789"),
        None,
    )
    .await
    .expect(200);
    // Account credentials do not open admin routes.
    api.account("alice", "12345678", &[]).await;
    api.call("GET", "/accounts", Auth::Basic("alice", "12345678"), None)
        .await
        .expect_error(401, "unauthorized");
    api.stop().await;
}

async fn phone_numbers(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let b = api.account("bob", "12345678", &[]).await;
    let r = api
        .call(
            "POST",
            &format!("/accounts/{a}/phone-numbers"),
            Auth::Admin,
            Some(json!({"number": "0048 600-345-698"})),
        )
        .await;
    assert_eq!(r.expect(201)["number"], "48600345698");
    // The same number in other forms, on either account, is a duplicate.
    for form in ["+48 600 345 698", "0600345698", "600345698"] {
        for acc in [a, b] {
            api.call(
                "POST",
                &format!("/accounts/{acc}/phone-numbers"),
                Auth::Admin,
                Some(json!({"number": form})),
            )
            .await
            .expect_error(409, "phone_number_taken");
        }
    }
    api.call(
        "POST",
        &format!("/accounts/{a}/phone-numbers"),
        Auth::Admin,
        Some(json!({"number": "12"})),
    )
    .await
    .expect_error(400, "invalid_phone_number");
    api.call_raw(
        "POST",
        &format!("/accounts/{a}/phone-numbers"),
        Auth::Admin,
        "{\"number\":",
    )
    .await
    .expect_error(400, "invalid_json");
    // Log in with the number in any form.
    for form in [
        "48600345698",
        "+48600345698",
        "0600345698",
        "0048600345698",
        "600 345 698",
    ] {
        api.call("GET", "/me", Auth::Basic(form, "12345678"), None)
            .await
            .expect(200);
    }
    // Remove it in yet another form; then it is free for bob.
    api.call(
        "DELETE",
        &format!("/accounts/{b}/phone-numbers/%2B48600345698"),
        Auth::Admin,
        None,
    )
    .await
    .expect_error(404, "phone_number_not_found");
    let r = api
        .call(
            "DELETE",
            &format!("/accounts/{a}/phone-numbers/%2B48600345698"),
            Auth::Admin,
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    api.call(
        "DELETE",
        &format!("/accounts/{a}/phone-numbers/0600345698"),
        Auth::Admin,
        None,
    )
    .await
    .expect_error(404, "phone_number_not_found");
    api.call(
        "DELETE",
        &format!("/accounts/{a}/phone-numbers/abc"),
        Auth::Admin,
        None,
    )
    .await
    .expect_error(400, "invalid_phone_number");
    api.call(
        "POST",
        &format!("/accounts/{b}/phone-numbers"),
        Auth::Admin,
        Some(json!({"number": "+48600345698"})),
    )
    .await
    .expect(201);
    api.call("GET", "/me", Auth::Basic("0600345698", "12345678"), None)
        .await
        .expect(200);
    assert_eq!(
        api.call("GET", "/me", Auth::Basic("0600345698", "12345678"), None)
            .await
            .body["login"],
        "bob"
    );
    api.stop().await;
}

async fn username_once(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let b = api.account("bob", "12345678", &[]).await;
    let r = api
        .call(
            "PUT",
            &format!("/accounts/{a}/username"),
            Auth::Admin,
            Some(json!({"username": "alice.w"})),
        )
        .await;
    assert_eq!(r.expect(200)["username"], "alice.w");
    api.call(
        "PUT",
        &format!("/accounts/{a}/username"),
        Auth::Admin,
        Some(json!({"username": "alice2"})),
    )
    .await
    .expect_error(409, "username_already_set");
    api.call(
        "PUT",
        &format!("/accounts/{b}/username"),
        Auth::Admin,
        Some(json!({"username": "alice.w"})),
    )
    .await
    .expect_error(409, "username_taken");
    api.call(
        "PUT",
        &format!("/accounts/{b}/username"),
        Auth::Admin,
        Some(json!({"username": "alice"})),
    )
    .await
    .expect_error(409, "username_taken");
    api.call(
        "PUT",
        &format!("/accounts/{b}/username"),
        Auth::Admin,
        Some(json!({"username": "9lives"})),
    )
    .await
    .expect_error(400, "invalid_request");
    api.call_raw("PUT", &format!("/accounts/{b}/username"), Auth::Admin, "[")
        .await
        .expect_error(400, "invalid_json");
    // Log in with the username; the account holder sets theirs once too.
    api.call("GET", "/me", Auth::Basic("alice.w", "12345678"), None)
        .await
        .expect(200);
    let r = api
        .call(
            "PUT",
            "/me/username",
            Auth::Basic("bob", "12345678"),
            Some(json!({"username": "bobby"})),
        )
        .await;
    assert_eq!(r.expect(200)["username"], "bobby");
    api.call(
        "PUT",
        "/me/username",
        Auth::Basic("bobby", "12345678"),
        Some(json!({"username": "robert"})),
    )
    .await
    .expect_error(409, "username_already_set");
    api.call(
        "PUT",
        "/me/username",
        Auth::Basic("bobby", "wrong-password"),
        Some(json!({"username": "x1x"})),
    )
    .await
    .expect_error(401, "unauthorized");
    api.stop().await;
}

async fn limits(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &[]).await;
    let r = api
        .call(
            "PUT",
            &format!("/accounts/{a}/limits"),
            Auth::Admin,
            Some(json!({"mobile": 1, "web": 0})),
        )
        .await;
    let body = r.expect(200);
    assert_eq!(body["limits"], json!({"mobile": 1, "desktop": 1, "web": 0}));
    assert_eq!(
        body["limit_overrides"],
        json!({"mobile": 1, "desktop": null, "web": 0})
    );
    let dev = |n: u32, class: &str| json!({"instance_id": api_support::instance(n), "class": class, "name": "d"});
    let path = format!("/accounts/{a}/devices");
    api.call("POST", &path, Auth::Admin, Some(dev(1, "tablet")))
        .await
        .expect(201);
    let r = api
        .call("POST", &path, Auth::Admin, Some(dev(2, "mobile")))
        .await;
    r.expect_error(409, "device_limit_reached");
    assert_eq!(
        r.body["error"]["message"],
        "mobile/tablet limit of 1 reached"
    );
    let r = api
        .call("POST", &path, Auth::Admin, Some(dev(3, "web")))
        .await;
    r.expect_error(409, "device_limit_reached");
    assert_eq!(r.body["error"]["message"], "web limit of 0 reached");
    // Back to defaults.
    let r = api
        .call(
            "PUT",
            &format!("/accounts/{a}/limits"),
            Auth::Admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        r.expect(200)["limits"],
        json!({"mobile": 3, "desktop": 1, "web": 1})
    );
    api.call("POST", &path, Auth::Admin, Some(dev(2, "mobile")))
        .await
        .expect(201);
    for bad in [
        json!({"mobile": -1}),
        json!({"mobile": 100000}),
        json!({"tablet": 2}),
        json!({"mobile": "3"}),
    ] {
        api.call(
            "PUT",
            &format!("/accounts/{a}/limits"),
            Auth::Admin,
            Some(bad),
        )
        .await
        .expect_error(400, "invalid_request");
    }
    api.call_raw(
        "PUT",
        &format!("/accounts/{a}/limits"),
        Auth::Admin,
        "{mobile: 1}",
    )
    .await
    .expect_error(400, "invalid_json");
    api.stop().await;
}

async fn account_holder_changes_password(backend: Backend) {
    let api = TestApi::new(backend).await;
    let a = api.account("alice", "12345678", &["+48600345698"]).await;
    let before = api.store.find_account("alice").await.unwrap().unwrap();
    let r = api
        .call(
            "PUT",
            "/me/password",
            Auth::Basic("0600345698", "12345678"),
            Some(json!({"password": "n3w-password"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let after = api.store.find_account("alice").await.unwrap().unwrap();
    assert_eq!(after.id, a);
    assert_ne!(before.ha1_md5, after.ha1_md5);
    assert_ne!(before.ha1_sha256, after.ha1_sha256);
    assert_eq!(
        (after.ha1_md5.clone(), after.ha1_sha256.clone()),
        tandem_signaling::store::ha1("alice", api_support::REALM, "n3w-password")
    );
    api.call("GET", "/me", Auth::Basic("alice", "12345678"), None)
        .await
        .expect_error(401, "unauthorized");
    api.call("GET", "/me", Auth::Basic("alice", "n3w-password"), None)
        .await
        .expect(200);
    api.call(
        "PUT",
        "/me/password",
        Auth::Basic("alice", "n3w-password"),
        Some(json!({"password": "short"})),
    )
    .await
    .expect_error(400, "invalid_request");
    api.call_raw(
        "PUT",
        "/me/password",
        Auth::Basic("alice", "n3w-password"),
        "{\"password\"",
    )
    .await
    .expect_error(400, "invalid_json");
    api.call(
        "PUT",
        "/me/password",
        Auth::Basic("alice", "12345678"),
        Some(json!({"password": "whatever-123"})),
    )
    .await
    .expect_error(401, "unauthorized");
    api.stop().await;
}

/// `media` on create, PATCH and GET; a bad value is refused. Without `[turn]` the
/// TURN credential routes say so.
async fn media_policy_and_turn_not_configured(backend: Backend) {
    let api = TestApi::new(backend).await;
    let r = api
        .call(
            "POST",
            "/accounts",
            Auth::Admin,
            Some(json!({"login": "alice", "password": "alice-password", "media": "force-relay"})),
        )
        .await;
    let id = r.expect(201)["id"].as_i64().unwrap();
    assert_eq!(r.body["media"], "force-relay");
    let bob = api.account("bob", "bob-password", &[]).await;
    let r = api
        .call("GET", &format!("/accounts/{bob}"), Auth::Admin, None)
        .await;
    assert_eq!(r.expect(200)["media"], "ice");
    let r = api
        .call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"media": "off"})),
        )
        .await;
    assert_eq!(r.expect(200)["media"], "off");
    let r = api
        .call("GET", "/me", Auth::Basic("alice", "alice-password"), None)
        .await;
    assert_eq!(r.expect(200)["media"], "off");
    // Other fields alone leave it as it is.
    let r = api
        .call(
            "PATCH",
            &format!("/accounts/{id}"),
            Auth::Admin,
            Some(json!({"display_name": "Alice"})),
        )
        .await;
    assert_eq!(r.expect(200)["media"], "off");
    api.call(
        "PATCH",
        &format!("/accounts/{id}"),
        Auth::Admin,
        Some(json!({"media": "relay-please"})),
    )
    .await
    .expect_error(400, "invalid_request");
    api.call(
        "POST",
        "/accounts",
        Auth::Admin,
        Some(json!({"login": "carol", "password": "carol-password", "media": "ICE"})),
    )
    .await
    .expect_error(400, "invalid_request");

    api.call(
        "POST",
        "/me/turn-credentials",
        Auth::Basic("alice", "alice-password"),
        None,
    )
    .await
    .expect_error(404, "turn_not_configured");
    api.call(
        "POST",
        &format!("/accounts/{id}/turn-credentials"),
        Auth::Admin,
        None,
    )
    .await
    .expect_error(404, "turn_not_configured");
    api.call("POST", "/me/turn-credentials", Auth::None, None)
        .await
        .expect_error(401, "unauthorized");
    api.stop().await;
}

on_both_backends!(
    media_policy_and_turn_not_configured,
    account_holder_changes_password,
    create_get_list_update_delete,
    create_account_bad_input,
    unknown_account_everywhere,
    admin_token_is_checked,
    phone_numbers,
    username_once,
    limits,
);
