//! A local mock push service for tests: an axum server on 127.0.0.1:0 that speaks
//! HTTP/1.1 and HTTP/2 (cleartext prior knowledge, as the APNs client uses for
//! `http://` base URLs), records every request and answers from a script.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct MockState {
    requests: Vec<Recorded>,
    /// Per path prefix: answers used in order; when empty, `fallback`.
    script: Vec<(String, VecDeque<Answer>)>,
    fallback: Vec<(String, Answer)>,
}

#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
}

impl Mock {
    pub async fn start() -> Mock {
        let state = Arc::new(Mutex::new(MockState::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mock { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same over TLS with ALPN `h2`, `http/1.1` (as APNs and FCM serve), with a
    /// certificate for `localhost` issued by a fresh test CA. Returns the mock and the
    /// CA certificate (PEM) a client must trust; the URL is `https://localhost:<port>`.
    pub async fn start_tls() -> (Mock, String) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let state = Arc::new(Mutex::new(MockState::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(TlsListener { listener, acceptor }, app).await;
        });
        (Mock { addr, state }, ca.pem())
    }

    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Answers for requests whose path starts with `prefix`, in order.
    pub fn script(&self, prefix: &str, answers: Vec<Answer>) {
        self.state
            .lock()
            .unwrap()
            .script
            .push((prefix.to_owned(), answers.into()));
    }

    /// The answer once the script for `prefix` is used up (default 200 "{}").
    pub fn always(&self, prefix: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .fallback
            .push((prefix.to_owned(), answer));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

async fn handle(
    State(state): State<Arc<Mutex<MockState>>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let answer = {
        let mut st = state.lock().unwrap();
        st.requests.push(Recorded {
            method,
            path: path.clone(),
            version,
            headers,
            body,
        });
        let scripted = st
            .script
            .iter_mut()
            .find(|(p, q)| path.starts_with(p.as_str()) && !q.is_empty())
            .and_then(|(_, q)| q.pop_front());
        scripted.or_else(|| {
            st.fallback
                .iter()
                .find(|(p, _)| path.starts_with(p.as_str()))
                .map(|(_, a)| a.clone())
        })
    };
    let answer = answer.unwrap_or_else(|| Answer::status(200, "{}"));
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut resp = (
        StatusCode::from_u16(answer.status).unwrap(),
        answer.body.clone(),
    )
        .into_response();
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    for (k, v) in answer.headers {
        resp.headers_mut()
            .insert(k, axum::http::HeaderValue::from_str(&v).unwrap());
    }
    resp
}

struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.listener.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
