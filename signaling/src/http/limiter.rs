//! Failed-authentication limiter for the HTTP API, per source and per identity.
//!
//! Per source (an IPv4 address, or an IPv6 /64: one host usually holds the whole
//! prefix): a source that fails `limit` times within `window` is refused (429) for
//! `ban` without its credentials being looked at, which bounds password guessing
//! through HTTP Basic. A success does not clear a source's failures: someone with one
//! account would otherwise wipe their guesses at another by logging in as themselves
//! between guesses; the failures age out with the window instead.
//!
//! Per identity (the login tried, from any source): after `limit` failures in a row
//! the identity is refused for a delay that doubles with each further failure (from
//! one second up to `ban`); its real owner waits seconds, not a ban, and a success
//! resets it. Spraying one account from many addresses is slowed as much as guessing
//! from one.
//!
//! Memory is bounded: at most `max_sources` entries in each table; when a table is
//! full and nothing can be pruned, new entries are not tracked (and a warning is
//! logged) rather than growing without bound. Time is an argument, so the rules are
//! tested without sleeping.

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

#[derive(Debug, Clone, Copy)]
struct IdentityEntry {
    /// Failures since the last success.
    failures: u32,
    /// Refused until then.
    blocked_until: Option<Instant>,
    last: Instant,
}

#[derive(Debug)]
pub struct AuthLimiter {
    cfg: LimiterConfig,
    sources: Mutex<HashMap<IpAddr, Entry>>,
    identities: Mutex<HashMap<String, IdentityEntry>>,
}

pub use crate::source::source_key;

impl AuthLimiter {
    pub fn new(cfg: LimiterConfig) -> AuthLimiter {
        AuthLimiter {
            cfg,
            sources: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
        }
    }

    fn identities(&self) -> std::sync::MutexGuard<'_, HashMap<String, IdentityEntry>> {
        self.identities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(remaining)` while `identity` is refused at `now`.
    pub fn identity_blocked(&self, identity: &str, now: Instant) -> Option<Duration> {
        let ids = self.identities();
        let until = ids.get(identity)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// A failed attempt at `identity`; returns the delay it is now refused for, if any.
    pub fn identity_failure(&self, identity: &str, now: Instant) -> Option<Duration> {
        let mut ids = self.identities();
        if !ids.contains_key(identity) && ids.len() >= self.cfg.max_sources {
            let keep = self.cfg.ban.max(self.cfg.window);
            ids.retain(|_, e| now.saturating_duration_since(e.last) < keep);
            if ids.len() >= self.cfg.max_sources {
                tracing::warn!("HTTP auth identity table full; not tracking a new identity");
                return None;
            }
        }
        let e = ids.entry(identity.to_owned()).or_insert(IdentityEntry {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        // A quiet spell as long as the ban forgives the past.
        if now.saturating_duration_since(e.last) >= self.cfg.ban {
            e.failures = 0;
        }
        e.last = now;
        e.failures = e.failures.saturating_add(1);
        let over = e.failures.checked_sub(self.cfg.limit)?;
        let delay = Duration::from_secs(1u64 << over.min(20)).min(self.cfg.ban);
        e.blocked_until = Some(now + delay);
        Some(delay)
    }

    /// A success for `identity` clears its own failures (nobody else's).
    pub fn identity_success(&self, identity: &str) {
        self.identities().remove(identity);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(remaining)` while `ip` is banned at `now`.
    pub fn banned(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = source_key(ip);
        let sources = self.lock();
        let until = sources.get(&ip)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns `true` when this failure started a ban.
    pub fn failure(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = source_key(ip);
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
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let l = AuthLimiter::new(LimiterConfig {
            limit: 2,
            ..LimiterConfig::default()
        });
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(!l.failure(a, t0));
        assert!(l.failure(b, t0), "same /64: one source");
        assert!(l.banned(a, t0).is_some());
        assert!(l.banned(other, t0).is_none());
    }

    #[test]
    fn an_identity_is_slowed_exponentially_and_its_own_success_resets_it() {
        let l = AuthLimiter::new(LimiterConfig {
            limit: 3,
            ..LimiterConfig::default()
        });
        let t0 = Instant::now();
        assert_eq!(l.identity_failure("bob", t0), None);
        assert_eq!(l.identity_failure("bob", t0), None);
        assert_eq!(l.identity_failure("bob", t0), Some(Duration::from_secs(1)));
        assert!(l.identity_blocked("bob", t0).is_some());
        assert!(l.identity_blocked("alice", t0).is_none());
        let t1 = t0 + Duration::from_secs(2);
        assert!(l.identity_blocked("bob", t1).is_none());
        assert_eq!(l.identity_failure("bob", t1), Some(Duration::from_secs(2)));
        assert_eq!(l.identity_failure("bob", t1), Some(Duration::from_secs(4)));
        // Never longer than the ban.
        for _ in 0..30 {
            l.identity_failure("bob", t1);
        }
        assert_eq!(
            l.identity_blocked("bob", t1),
            Some(Duration::from_secs(300))
        );
        l.identity_success("bob");
        assert!(l.identity_blocked("bob", t1).is_none());
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
