//! The time the async glue reads, injected rather than taken from the system in
//! each place: monotonic instants come from tokio's clock (tests move it with
//! `tokio::time::pause`/`advance`, and the tasks' sleeps follow), Unix seconds from
//! the wall clock plus a skew that tests advance instead of sleeping (nonce and
//! binding lifetimes). The sans-IO cores never read a clock: they get `now` from the
//! glue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock handle; clones share the skew.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the real time (tests only; 0 in service).
    skew_ms: Arc<AtomicU64>,
}

impl Clock {
    /// The real clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    fn skew(&self) -> Duration {
        Duration::from_millis(self.skew_ms.load(Ordering::Relaxed))
    }

    /// A monotonic instant: tokio's clock, which the tasks' sleeps also follow.
    pub fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Unix seconds (the wall clock plus the skew).
    pub fn unix_now(&self) -> i64 {
        (SystemTime::now() + self.skew())
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// Moves this clock's Unix time (and its clones') forward by `d` without
    /// waiting: what a test does instead of sleeping until a nonce goes stale or a
    /// binding expires.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.skew_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
