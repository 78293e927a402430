//! The API listener's own limits: a slow request header is cut off, and at most
//! `max_connections` connections are served at once.

mod api_support;
mod store_support;

use std::sync::Arc;
use std::time::Duration;

use tandem_signaling::http::{self, ApiSettings, AppState, Metrics, ServeLimits};
use tandem_signaling::store::DeviceLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn server(
    limits: ServeLimits,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
    store_support::TestDb,
) {
    let db = store_support::TestDb::new(store_support::Backend::Sqlite).await;
    let state = AppState::new(
        db.store().await,
        Arc::new(api_support::FakeRegistrar::default()),
        ApiSettings {
            realm: "r".into(),
            admin_token: api_support::ADMIN_TOKEN.into(),
            default_limits: DeviceLimits::default(),
            default_country_code: "48".into(),
            auth_limiter: Default::default(),
        },
        Metrics::new(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(http::serve_with(listener, state, shutdown.clone(), limits));
    (addr, shutdown, task, db)
}

async fn health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn slow_request_header_is_cut_off() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, shutdown, task, _db) = server(limits).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    // The server answers 408 or just closes; either way the connection ends soon.
    let mut total = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
            .await
            .expect("server closed the slow connection")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        total.extend_from_slice(&buf[..n]);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&total);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // A well-behaved client is served normally.
    let mut ok = TcpStream::connect(addr).await.unwrap();
    assert!(health(&mut ok).await.starts_with("HTTP/1.1 200"));
    shutdown.cancel();
    drop(ok);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let limits = ServeLimits {
        max_connections: 2,
        ..Default::default()
    };
    let (addr, shutdown, task, _db) = server(limits).await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(health(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(health(&mut b).await.starts_with("HTTP/1.1 200"));
    // Both kept alive: a third connection is accepted by the kernel but not served.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf))
            .await
            .is_err(),
        "third connection must wait"
    );
    drop(a);
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    shutdown.cancel();
    drop((b, c));
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_then_stops_accepting() {
    let (addr, shutdown, task, _db) = server(ServeLimits::default()).await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    assert!(health(&mut a).await.starts_with("HTTP/1.1 200"));
    shutdown.cancel();
    // The idle keep-alive connection is closed by the graceful shutdown.
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
