//! Fresh databases for tests: a SQLite file in its own temporary directory, or a
//! uniquely named PostgreSQL database (server from `TANDEM_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`) dropped when the guard drops,
//! so tests running in parallel never see each other's rows.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use tandem_signaling::store::Store;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Removes the database when dropped (also when the test panics).
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

pub fn pg_server_url() -> String {
    std::env::var("TANDEM_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// Replaces the database name (the path) of a postgres URL.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("tandem_store"));
                std::fs::create_dir_all(&dir).expect("temp dir");
                let url = format!("sqlite://{}/signaling.db", dir.display());
                TestDb {
                    url,
                    dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let server = pg_server_url();
                let name = unique("tandem_test");
                let mut conn = sqlx::PgConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at TANDEM_TEST_POSTGRES_URL ({server}) is needed: {e}")
                    });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                TestDb {
                    url: with_db(&server, &name),
                    dir: None,
                    pg: Some((server, name)),
                }
            }
        }
    }

    pub async fn store(&self) -> Store {
        Store::connect_with(&self.url, "48", 4)
            .await
            .expect("connect store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((server, name)) = self.pg.take() {
            // Drop is synchronous and may run inside a runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut conn) = sqlx::PgConnection::connect(&server).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut conn)
                            .await;
                            let _ = conn.close().await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Runs an async test body once per backend, as `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::store_support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::store_support::Backend::Postgres).await
            }
        }
    )*};
}
