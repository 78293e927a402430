//! Failed-authentication limiter for the HTTP API, per source IP address.
//!
//! A source that fails `limit` times within `window` is refused (429) for `ban`
//! without its credentials being looked at, which bounds password guessing through
//! HTTP Basic. Memory is bounded: at most `max_sources` addresses are tracked; when
//! the table is full and nothing can be pruned, new sources are not tracked (and a
//! warning is logged) rather than growing without bound. Time is an argument, so the
//! rules are tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    pub limit: u32,
    pub window: Duration,
    pub ban: Duration,
    pub max_sources: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            limit: 10,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
            max_sources: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    banned_until: Option<Instant>,
}

#[derive(Debug)]
pub struct AuthLimiter {
    cfg: LimiterConfig,
    sources: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthLimiter {
    pub fn new(cfg: LimiterConfig) -> AuthLimiter {
        AuthLimiter {
            cfg,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(remaining)` while `ip` is banned at `now`.
    pub fn banned(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let sources = self.lock();
        let until = sources.get(&ip)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns `true` when this failure started a ban.
    pub fn failure(&self, ip: IpAddr, now: Instant) -> bool {
        let mut sources = self.lock();
        if !sources.contains_key(&ip) && sources.len() >= self.cfg.max_sources {
            let cfg = self.cfg;
            sources.retain(|_, e| match e.banned_until {
                Some(until) => until > now,
                None => now.saturating_duration_since(e.window_start) < cfg.window,
            });
            if sources.len() >= self.cfg.max_sources {
                tracing::warn!("HTTP auth failure table full; not tracking a new source");
                return false;
            }
        }
        let e = sources.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            banned_until: None,
        });
        if let Some(until) = e.banned_until {
            if until > now {
                return false;
            }
            *e = Entry {
                window_start: now,
                failures: 0,
                banned_until: None,
            };
        }
        if now.saturating_duration_since(e.window_start) >= self.cfg.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= self.cfg.limit {
            e.banned_until = Some(now + self.cfg.ban);
            return true;
        }
        false
    }

    /// A success clears the source's failures.
    pub fn success(&self, ip: IpAddr) {
        let mut sources = self.lock();
        if sources.get(&ip).is_some_and(|e| e.banned_until.is_none()) {
            sources.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn bans_after_the_limit_within_the_window_and_lifts_after_the_ban() {
        let cfg = LimiterConfig {
            limit: 3,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
            max_sources: 16,
        };
        let l = AuthLimiter::new(cfg);
        let t0 = Instant::now();
        assert!(!l.failure(ip(1), t0));
        assert!(!l.failure(ip(1), t0 + Duration::from_secs(1)));
        assert!(l.banned(ip(1), t0).is_none());
        assert!(l.failure(ip(1), t0 + Duration::from_secs(2)));
        assert_eq!(
            l.banned(ip(1), t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(300))
        );
        assert!(
            l.banned(ip(2), t0).is_none(),
            "other sources are not affected"
        );
        // Failures while banned do not extend the ban.
        assert!(!l.failure(ip(1), t0 + Duration::from_secs(100)));
        assert!(l.banned(ip(1), t0 + Duration::from_secs(301)).is_some());
        assert!(l.banned(ip(1), t0 + Duration::from_secs(302)).is_none());
        // Success does not lift a ban.
        l.failure(ip(3), t0);
        l.failure(ip(3), t0);
        l.failure(ip(3), t0);
        l.success(ip(3));
        assert!(l.banned(ip(3), t0).is_some());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let l = AuthLimiter::new(LimiterConfig {
            limit: 2,
            ..LimiterConfig::default()
        });
        let t0 = Instant::now();
        assert!(!l.failure(ip(1), t0));
        assert!(!l.failure(ip(1), t0 + Duration::from_secs(61)));
        assert!(l.failure(ip(1), t0 + Duration::from_secs(62)));
        // A success resets the count.
        assert!(!l.failure(ip(2), t0));
        l.success(ip(2));
        assert!(!l.failure(ip(2), t0));
    }

    #[test]
    fn the_table_is_bounded() {
        let l = AuthLimiter::new(LimiterConfig {
            limit: 2,
            max_sources: 4,
            ..LimiterConfig::default()
        });
        let t0 = Instant::now();
        for n in 0..4 {
            l.failure(ip(n), t0);
        }
        // Full, nothing expired: a new source is not tracked.
        assert!(!l.failure(ip(9), t0));
        assert!(!l.failure(ip(9), t0));
        assert!(l.banned(ip(9), t0).is_none());
        assert_eq!(l.lock().len(), 4);
        // After the window the old entries are pruned and the new one is tracked.
        let later = t0 + Duration::from_secs(61);
        l.failure(ip(9), later);
        assert!(l.failure(ip(9), later));
        assert!(l.lock().len() <= 4);
    }
}
