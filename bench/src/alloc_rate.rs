//! `alloc-rate`: authenticated allocations per second until errors, a count or a time
//! limit. Each allocation is a fresh client port doing the full exchange a real
//! client does (Allocate, 401 with realm and nonce, authenticated Allocate); the
//! allocations are kept until the end, then deleted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{ClientError, Target, TurnClient};

#[derive(Debug, Clone)]
pub struct AllocRateConfig {
    pub server: SocketAddr,
    pub target: Target,
    pub count: usize,
    pub limit: Duration,
    pub concurrency: usize,
    /// Stop issuing new allocations after this many errors.
    pub max_errors: usize,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AllocRateReport {
    pub allocations: usize,
    pub errors: usize,
    pub elapsed_s: f64,
    pub allocations_per_s: f64,
    pub first_errors: Vec<String>,
    /// (RSS with every allocation live - RSS before) / allocations, in bytes.
    pub server_rss_bytes_per_allocation: Option<f64>,
}

pub fn run(cfg: &AllocRateConfig) -> anyhow::Result<AllocRateReport> {
    crate::load::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: &AllocRateConfig) -> anyhow::Result<AllocRateReport> {
    let pb = if cfg.progress {
        indicatif::ProgressBar::new(cfg.count as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let rss0 = cfg.server_pid.and_then(crate::procstat::rss_kib);
    let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    let deadline = start + cfg.limit;
    let mut ok: Vec<TurnClient> = Vec::new();
    let mut first_errors = Vec::new();
    let mut errors = 0usize;
    let mut issued = 0usize;
    let mut last_ok = start;
    loop {
        // Issue while there is room, budget and no error stop.
        while issued < cfg.count && errors < cfg.max_errors && Instant::now() < deadline {
            let Ok(permit) = sem.clone().try_acquire_owned() else {
                break;
            };
            let (server, target) = (cfg.server, cfg.target.clone());
            set.spawn(async move {
                let _p = permit;
                // 437 on a client port the kernel handed out again while the server
                // still remembers it: not the server failing to allocate; retry from
                // another port (as turn-load does).
                let mut refused = Vec::new();
                loop {
                    let mut c = TurnClient::connect(server, target.clone()).await?;
                    match c.allocate().await {
                        Ok(_) => return anyhow::Ok(c),
                        Err(ClientError::Rejected { code: 437, .. }) if refused.len() < 3 => {
                            refused.push(c)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            });
            issued += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        match tokio::time::timeout(left, set.join_next()).await {
            Ok(Some(Ok(Ok(c)))) => {
                ok.push(c);
                last_ok = Instant::now();
                pb.inc(1);
            }
            Ok(Some(Ok(Err(e)))) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(format!("{e:#}"));
                }
            }
            Ok(Some(Err(e))) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(e.to_string());
                }
            }
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                first_errors.push("allocations still pending at the time limit".into());
                break;
            }
        }
    }
    pb.finish_and_clear();
    let elapsed = last_ok.duration_since(start).as_secs_f64().max(1e-6);
    let n = ok.len();
    let rss1 = cfg.server_pid.and_then(crate::procstat::rss_kib);
    let rss_per = match (rss0, rss1) {
        (Some(a), Some(b)) if n > 0 => Some((b as f64 - a as f64) * 1024.0 / n as f64),
        _ => None,
    };
    // Delete what was created, a bounded number at a time and within a time limit.
    let mut set = tokio::task::JoinSet::new();
    for mut c in ok {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            let _ = c.refresh(0).await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    Ok(AllocRateReport {
        allocations: n,
        errors,
        elapsed_s: elapsed,
        allocations_per_s: n as f64 / elapsed,
        first_errors,
        server_rss_bytes_per_allocation: rss_per,
    })
}
