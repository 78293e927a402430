//! An HTTP API on 127.0.0.1:0 over a fresh database, with a registrar stand-in that
//! records which instances the API asked to drop and serves canned bindings.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tandem_signaling::http::{self, ApiSettings, AppState, Metrics, Registrations};
use tandem_signaling::model::{AccountId, Binding};
use tandem_signaling::store::{DeviceLimits, Store};
use tokio_util::sync::CancellationToken;

use crate::store_support::{Backend, TestDb};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const REALM: &str = "tandem.test";

#[derive(Default)]
pub struct FakeRegistrar {
    pub revoked: Mutex<Vec<(AccountId, String)>>,
    pub bindings: Mutex<Vec<Binding>>,
}

impl Registrations for FakeRegistrar {
    fn bindings(&self, account: AccountId) -> Vec<Binding> {
        let all = self.bindings.lock().unwrap();
        all.iter()
            .filter(|b| b.account_id == account)
            .cloned()
            .collect()
    }
    fn revoke_instance<'a>(
        &'a self,
        account: AccountId,
        instance_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.revoked
                .lock()
                .unwrap()
                .push((account, instance_id.to_owned()));
        })
    }
}

pub struct TestApi {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub registrar: Arc<FakeRegistrar>,
    pub store: Store,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _db: TestDb,
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The stable error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, code),
            "body: {}",
            self.body
        );
        assert!(self.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        &self.body
    }
}

pub enum Auth<'a> {
    None,
    Admin,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
    Raw(&'a str),
}

impl TestApi {
    pub async fn new(backend: Backend) -> TestApi {
        Self::with_limits(backend, DeviceLimits::default()).await
    }

    pub async fn with_limits(backend: Backend, limits: DeviceLimits) -> TestApi {
        // High enough for the bad-credential tests; api_auth_ban tests the ban.
        let limiter = http::limiter::LimiterConfig {
            limit: 1000,
            ..Default::default()
        };
        Self::with_settings(backend, limits, limiter).await
    }

    pub async fn with_settings(
        backend: Backend,
        limits: DeviceLimits,
        limiter: http::limiter::LimiterConfig,
    ) -> TestApi {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let registrar = Arc::new(FakeRegistrar::default());
        let state = AppState::new(
            store.clone(),
            registrar.clone(),
            ApiSettings {
                realm: REALM.to_owned(),
                admin_token: ADMIN_TOKEN.to_owned(),
                default_limits: limits,
                default_country_code: "48".to_owned(),
                auth_limiter: limiter,
            },
            Metrics::new(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(http::serve(listener, state, shutdown.clone()));
        TestApi {
            addr,
            client: reqwest::Client::new(),
            registrar,
            store,
            shutdown,
            task: Some(task),
            _db: db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends `body` as JSON (a `&str` body is sent raw with a JSON content type).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            self.url(path),
        );
        req = match auth {
            Auth::None => req,
            Auth::Admin => req.bearer_auth(ADMIN_TOKEN),
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
            Auth::Raw(h) => req.header("authorization", h),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::finish(req).await
    }

    pub async fn call_raw(&self, method: &str, path: &str, auth: Auth<'_>, body: &str) -> Resp {
        let mut req = self
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                self.url(path),
            )
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Auth::Admin = auth {
            req = req.bearer_auth(ADMIN_TOKEN);
        }
        if let Auth::Basic(u, p) = auth {
            req = req.basic_auth(u, Some(p));
        }
        Self::finish(req).await
    }

    async fn finish(req: reqwest::RequestBuilder) -> Resp {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(20), req.send())
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    /// Creates an account through the API; returns its id.
    pub async fn account(&self, login: &str, password: &str, numbers: &[&str]) -> i64 {
        let r = self
            .call(
                "POST",
                "/accounts",
                Auth::Admin,
                Some(serde_json::json!({
                    "login": login, "password": password, "country_code": "48",
                    "phone_numbers": numbers,
                })),
            )
            .await;
        r.expect(201)["id"].as_i64().unwrap()
    }

    pub fn revoked(&self) -> Vec<(AccountId, String)> {
        self.registrar.revoked.lock().unwrap().clone()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn instance(n: u32) -> String {
    format!("urn:uuid:00000000-0000-4000-8000-{n:012}")
}
