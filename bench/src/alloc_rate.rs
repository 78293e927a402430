//! `alloc-rate`: authenticated allocations per second until errors, a count or a time
//! limit. Each allocation is a fresh client port doing the full exchange a real
//! client does (Allocate, 401 with realm and nonce, authenticated Allocate); the
//! allocations are kept until the end (held `hold` longer, for a memory reading with
//! every allocation live), then deleted.
//!
//! With many allocations (`--count 100000`), spread the clients over several loopback
//! addresses (`--client-ip`, one address has about 28,000 ephemeral ports) and raise
//! the hard open file limit of both processes (`ulimit -Hn`); the generator raises its
//! soft limit to the hard one.

use std::net::{IpAddr, SocketAddr};
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
    /// Local addresses the clients bind to, in turn.
    pub client_ips: Vec<IpAddr>,
    /// How long to keep every allocation live after the last one was made.
    pub hold: Duration,
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
    /// The server's VmRSS before the first allocation, once all were made, and at the
    /// end of the hold (KiB).
    #[serde(default)]
    pub server_rss_kib: Option<[u64; 3]>,
    /// The server's open file descriptors with every allocation live, and its soft
    /// open file limit (`Max open files` in /proc/PID/limits).
    #[serde(default)]
    pub server_fds: Option<u64>,
    #[serde(default)]
    pub server_nofile_limit: Option<u64>,
    /// This generator's soft open file limit.
    #[serde(default)]
    pub client_nofile_limit: Option<u64>,
    /// Seconds every allocation was held live after the last one was made.
    #[serde(default)]
    pub held_s: f64,
}

pub fn run(cfg: &AllocRateConfig) -> anyhow::Result<AllocRateReport> {
    crate::sock::raise_nofile();
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
            let local = cfg.client_ips[issued % cfg.client_ips.len().max(1)];
            set.spawn(async move {
                let _p = permit;
                // 437 on a client port the kernel handed out again while the server
                // still remembers it: not the server failing to allocate; retry from
                // another port (as turn-load does).
                let mut refused = Vec::new();
                loop {
                    let mut c = TurnClient::connect_from(local, server, target.clone()).await?;
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
    let server_fds = cfg.server_pid.and_then(crate::procstat::fd_count);
    // Hold every allocation (well inside the default 10-minute lifetime; the hold is
    // capped at 5 minutes) and read the server's memory again at the end.
    let hold = cfg.hold.min(Duration::from_secs(300));
    let held = Instant::now();
    if !hold.is_zero() && n > 0 {
        tokio::time::sleep(hold).await;
    }
    let held_s = held.elapsed().as_secs_f64();
    let rss2 = cfg.server_pid.and_then(crate::procstat::rss_kib);
    let rss_per = match (rss0, rss2.or(rss1)) {
        (Some(a), Some(b)) if n > 0 => Some((b as f64 - a as f64) * 1024.0 / n as f64),
        _ => None,
    };
    let server_rss_kib = match (rss0, rss1, rss2) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
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
        server_rss_kib,
        server_fds,
        server_nofile_limit: cfg.server_pid.and_then(crate::procstat::nofile_soft),
        client_nofile_limit: crate::procstat::nofile_soft(std::process::id()),
        held_s,
    })
}
