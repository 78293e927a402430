//! Repeated failed authentications from one address get it refused for a while.

mod api_support;
mod store_support;

use std::time::Duration;

use api_support::{Auth, TestApi};
use store_support::Backend;
use tandem_signaling::http::limiter::LimiterConfig;
use tandem_signaling::store::DeviceLimits;

#[tokio::test]
async fn repeated_failures_ban_the_source() {
    let limiter = LimiterConfig {
        limit: 3,
        window: Duration::from_secs(60),
        ban: Duration::from_secs(120),
        max_sources: 64,
    };
    let api = TestApi::with_settings(Backend::Sqlite, DeviceLimits::default(), limiter).await;
    api.account("alice", "12345678", &[]).await;
    api.account("bob", "bob-password-1", &[]).await;
    // Guessing bob's password while logging in as alice in between (which once reset
    // the count) does not help: the third failure bans the source.
    api.call("GET", "/me", Auth::Basic("bob", "wrong-1"), None)
        .await
        .expect_error(401, "unauthorized");
    api.call("GET", "/me", Auth::Basic("bob", "wrong-2"), None)
        .await
        .expect_error(401, "unauthorized");
    api.call("GET", "/me", Auth::Basic("alice", "12345678"), None)
        .await
        .expect(200);
    api.call("GET", "/me", Auth::Basic("bob", "wrong-3"), None)
        .await
        .expect_error(401, "unauthorized");
    // Now even the right password is refused without being checked, and so is admin.
    let r = api
        .call("GET", "/me", Auth::Basic("alice", "12345678"), None)
        .await;
    r.expect_error(429, "too_many_auth_failures");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    api.call("GET", "/accounts", Auth::Admin, None)
        .await
        .expect_error(429, "too_many_auth_failures");
    // Routes without authentication still answer.
    api.call("GET", "/health", Auth::None, None)
        .await
        .expect(200);
    let metrics = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tandem_signaling_http_auth_failures_total{kind=\"basic\"} 3"),
        "{metrics}"
    );
    api.stop().await;
}

/// Requests without credentials are refused but are not failed authentications: ten
/// of them do not lock the admin token (or an account) out of that address.
#[tokio::test]
async fn requests_without_credentials_do_not_ban() {
    let limiter = LimiterConfig {
        limit: 3,
        window: Duration::from_secs(60),
        ban: Duration::from_secs(120),
        max_sources: 64,
    };
    let api = TestApi::with_settings(Backend::Sqlite, DeviceLimits::default(), limiter).await;
    api.account("alice", "12345678", &[]).await;
    for _ in 0..10 {
        api.call("GET", "/me", Auth::None, None)
            .await
            .expect_error(401, "unauthorized");
        api.call("GET", "/accounts", Auth::None, None)
            .await
            .expect_error(401, "unauthorized");
    }
    api.call("GET", "/accounts", Auth::Admin, None)
        .await
        .expect(200);
    api.call("GET", "/me", Auth::Basic("alice", "12345678"), None)
        .await
        .expect(200);
    api.stop().await;
}
