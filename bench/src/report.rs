//! The summary of a comparison run (medians over rounds, ratios, notes), as written to
//! the Markdown and JSON reports and drawn by `chart.rs`. `compare.rs` builds it.

use std::collections::BTreeMap;

use serde::Serialize;

/// Medians over rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub contender: String,
    pub mode: String,
    pub label: String,
    pub offered_pps: f64,
    pub sent_pps: f64,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub cpu_ns_per_packet: Option<f64>,
    pub cpu_util: Option<f64>,
    pub cpu0_other: Option<f64>,
    pub rss_bytes_per_allocation: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub rounds: usize,
    pub quick: bool,
    pub duration_s: f64,
    pub allocations: usize,
    pub size: usize,
    pub nice: i32,
    pub elapsed_s: f64,
    pub floor_limit: BTreeMap<String, f64>,
    pub rows: Vec<Row>,
    /// contender -> highest lossless offered rate (median), per mode.
    pub highest_lossless: Vec<(String, String, f64)>,
    /// contender -> (allocations/s median, errors, RSS bytes per allocation).
    pub alloc_rate: Vec<(String, f64, usize, Option<f64>)>,
    pub ratios: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}
