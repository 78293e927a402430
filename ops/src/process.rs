//! `process_*` metrics, with the names and meanings of the Prometheus client
//! libraries' process collector (so existing dashboards and alerts work): CPU seconds,
//! resident and virtual memory, open and maximum file descriptors, start time, threads.
//!
//! Read from `/proc` at scrape time (Linux); elsewhere, or when a file cannot be read,
//! the metrics it would give are left out rather than reported as zero. The parsers
//! take the files' text, so they are tested on fixed inputs.

use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Clock ticks per second of the times in `/proc/<pid>/stat`: `USER_HZ`, which Linux
/// fixes at 100 in its user-space ABI whatever the kernel's internal tick rate.
const USER_HZ: f64 = 100.0;

/// Register at the registry's root (not under a prefix): the names are the standard
/// `process_*` ones.
#[derive(Debug, Clone)]
pub struct ProcessCollector {
    /// `/proc/self` normally; a directory of fixture files in tests.
    own: PathBuf,
    /// `/proc/stat` normally (for the boot time).
    stat: PathBuf,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector {
            own: PathBuf::from("/proc/self"),
            stat: PathBuf::from("/proc/stat"),
        }
    }
}

/// CPU times and start time from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTimes {
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so the fields are counted after the last `)`.
pub fn parse_stat(s: &str) -> Option<StatTimes> {
    let rest = &s[s.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0; utime is field 14, stime 15, starttime 22.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    Some(StatTimes {
        cpu_ticks: utime.checked_add(stime)?,
        start_ticks: start,
    })
}

/// Memory and threads from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusMemory {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub threads: Option<u64>,
}

/// Parses `/proc/<pid>/status` (`VmRSS`, `VmSize` in kB; `Threads`).
pub fn parse_status(s: &str) -> StatusMemory {
    let mut m = StatusMemory::default();
    for line in s.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok());
        match key {
            "VmRSS" => m.resident_bytes = number.and_then(|k| k.checked_mul(1024)),
            "VmSize" => m.virtual_bytes = number.and_then(|k| k.checked_mul(1024)),
            "Threads" => m.threads = number,
            _ => {}
        }
    }
    m
}

/// The soft limit of open files from `/proc/<pid>/limits`; `None` for "unlimited" or
/// when the line is missing.
pub fn parse_max_fds(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The boot time (seconds since the epoch) from `/proc/stat`'s `btime` line.
pub fn parse_boot_time(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn gauge_i(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        if let Some(t) = read(self.own.join("stat")).as_deref().and_then(parse_stat) {
            let c = ConstCounter::new(t.cpu_ticks as f64 / USER_HZ);
            c.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?)?;
            if let Some(boot) = read(self.stat.clone()).as_deref().and_then(parse_boot_time) {
                let start = boot as f64 + t.start_ticks as f64 / USER_HZ;
                ConstGauge::new(start).encode(e.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Some(s) = read(self.own.join("status")) {
            let m = parse_status(&s);
            if let Some(v) = m.resident_bytes {
                gauge_i(
                    &mut e,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    v,
                )?;
            }
            if let Some(v) = m.virtual_bytes {
                gauge_i(
                    &mut e,
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    v,
                )?;
            }
            if let Some(v) = m.threads {
                gauge_i(&mut e, "process_threads", "Number of OS threads.", v)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir(self.own.join("fd")) {
            gauge_i(
                &mut e,
                "process_open_fds",
                "Number of open file descriptors.",
                dir.count() as u64,
            )?;
        }
        if let Some(v) = read(self.own.join("limits"))
            .as_deref()
            .and_then(parse_max_fds)
        {
            gauge_i(
                &mut e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                v,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn stat_with_a_command_name_holding_spaces_and_parentheses() {
        let s = "4242 (tandem (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                 250 130 0 0 20 0 9 0 123456 100000000 2000 18446744073709551615";
        assert_eq!(
            parse_stat(s),
            Some(StatTimes {
                cpu_ticks: 380,
                start_ticks: 123456
            })
        );
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status = "Name:\ttandem\nVmSize:\t  200 kB\nVmRSS:\t   12 kB\nThreads:\t5\n";
        assert_eq!(
            parse_status(status),
            StatusMemory {
                resident_bytes: Some(12 * 1024),
                virtual_bytes: Some(200 * 1024),
                threads: Some(5)
            }
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_reported_with_standard_names() {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector::default()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &root).unwrap();
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(out.contains(name), "{name} missing:\n{out}");
            }
        }
    }

    #[test]
    fn unreadable_files_leave_the_metrics_out() {
        let c = ProcessCollector {
            own: PathBuf::from("/nonexistent/self"),
            stat: PathBuf::from("/nonexistent/stat"),
        };
        let mut root = Registry::default();
        root.register_collector(Box::new(c));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &root).unwrap();
        assert!(!out.contains("process_"), "{out}");
    }
}
