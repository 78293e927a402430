//! Long-term credentials (RFC 8489 section 9.2), coturn-compatible ephemeral REST
//! credentials, stateless nonces and the rate limit on 401 answers.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::stun::attr::algorithm;
use crate::stun::integrity::{long_term_key_md5, long_term_key_sha256, userhash};

/// A long-term key (16 bytes for MD5, 32 for SHA-256).
#[derive(Clone, Copy)]
pub struct Key {
    bytes: [u8; 32],
    len: u8,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Derive the key for `algorithm` (a PASSWORD-ALGORITHM number).
    pub fn derive(alg: u16, username: &[u8], realm: &[u8], password: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        if alg == algorithm::SHA256 {
            bytes = long_term_key_sha256(username, realm, password);
            Key { bytes, len: 32 }
        } else {
            bytes[..16].copy_from_slice(&long_term_key_md5(username, realm, password));
            Key { bytes, len: 16 }
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The credentials a server accepts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub realm: String,
    users: HashMap<Vec<u8>, Vec<u8>>,
    by_userhash: HashMap<[u8; 32], Vec<u8>>,
    secrets: Vec<Vec<u8>>,
}

/// What the username names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Unknown,
    /// A REST username whose expiry time has passed.
    Expired,
    Found,
}

impl Credentials {
    /// `users` are static (name, password) pairs; `secrets` are `use-auth-secret`
    /// shared secrets (several at once for rotation).
    pub fn new(realm: &str, users: &[(String, String)], secrets: &[String]) -> Self {
        let mut c = Credentials {
            realm: realm.to_owned(),
            ..Default::default()
        };
        for (u, p) in users {
            c.users.insert(u.as_bytes().to_vec(), p.as_bytes().to_vec());
            c.by_userhash.insert(
                userhash(u.as_bytes(), realm.as_bytes()),
                u.as_bytes().to_vec(),
            );
        }
        c.secrets = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        c
    }

    /// Whether static long-term users exist, the only ones a USERHASH can name.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Resolve a USERHASH (static users only: a REST username cannot be recovered
    /// from its hash).
    pub fn username_for_hash(&self, hash: &[u8]) -> Option<&[u8]> {
        let h: [u8; 32] = hash.try_into().ok()?;
        self.by_userhash.get(&h).map(Vec::as_slice)
    }

    /// Call `try_key` with each candidate key for `username` until it returns true.
    /// Returns whether a key matched (`Lookup::Found` plus the key), or why not.
    pub fn find_key(
        &self,
        username: &[u8],
        alg: u16,
        unix_now: u64,
        mut try_key: impl FnMut(&Key) -> bool,
    ) -> (Lookup, Option<Key>) {
        let realm = self.realm.as_bytes();
        if let Some(pw) = self.users.get(username) {
            let k = Key::derive(alg, username, realm, pw);
            return (Lookup::Found, try_key(&k).then_some(k));
        }
        if self.secrets.is_empty() {
            return (Lookup::Unknown, None);
        }
        let Some(expiry) = rest_expiry(username) else {
            return (Lookup::Unknown, None);
        };
        if expiry <= unix_now {
            return (Lookup::Expired, None);
        }
        for secret in &self.secrets {
            let pw = rest_password(secret, username);
            let k = Key::derive(alg, username, realm, pw.as_bytes());
            if try_key(&k) {
                return (Lookup::Found, Some(k));
            }
        }
        (Lookup::Found, None)
    }
}

/// The expiry timestamp of a REST username `expiry[:user]`.
pub fn rest_expiry(username: &[u8]) -> Option<u64> {
    let ts = username.split(|b| *b == b':').next()?;
    if ts.is_empty() || ts.len() > 19 || !ts.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(ts).ok()?.parse().ok()
}

/// The part of a username quotas are counted against: `user` in `expiry:user`.
pub fn quota_user(username: &[u8]) -> &[u8] {
    if rest_expiry(username).is_some() {
        if let Some(i) = username.iter().position(|b| *b == b':') {
            return &username[i + 1..];
        }
    }
    username
}

/// coturn `use-auth-secret` password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// RFC 8489 section 9.2: the nonce cookie "obMatJos2" followed by the base64 of the
/// 24 security-feature bits, here "password algorithms" (bit 0) and "username
/// anonymity" (bit 1): 0xC00000, base64 "wAAA". Username anonymity is advertised only
/// when static long-term users exist: the server finds a user by its USERHASH in a
/// table of the users it knows, and a REST username (`expiry:user`, minted by
/// anyone holding the secret) cannot be recovered from its hash.
pub const NONCE_COOKIE: &[u8] = b"obMatJos2wAAA";
/// The cookie without "username anonymity": "password algorithms" only, 0x800000,
/// base64 "gAAA". Used when the only credentials are REST secrets.
pub const NONCE_COOKIE_NO_USERHASH: &[u8] = b"obMatJos2gAAA";
/// Length of our nonces: cookie, 16 hex digits of expiry, 16 hex digits of MAC.
pub const NONCE_LEN: usize = NONCE_COOKIE.len() + 32;

/// Outcome of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    Stale,
    Invalid,
}

/// Stateless nonces: an expiry time and a MAC over (expiry, client address) under a
/// per-process random key. Nothing is stored per client.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
    lifetime: Duration,
    epoch: Instant,
    cookie: &'static [u8],
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime", &self.lifetime)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// `userhash`: whether the nonce advertises "username anonymity" (USERHASH),
    /// which the server honours only for static users ([`Credentials::has_users`]).
    pub fn new(key: [u8; 32], lifetime: Duration, epoch: Instant, userhash: bool) -> Self {
        Nonces {
            key,
            lifetime,
            epoch,
            cookie: if userhash {
                NONCE_COOKIE
            } else {
                NONCE_COOKIE_NO_USERHASH
            },
        }
    }

    /// Advertise USERHASH from now on (or stop); nonces already issued keep their
    /// cookie and stay valid.
    pub fn set_userhash(&mut self, userhash: bool) {
        self.cookie = if userhash {
            NONCE_COOKIE
        } else {
            NONCE_COOKIE_NO_USERHASH
        };
    }

    /// Whether the nonces advertise "username anonymity".
    pub fn advertises_userhash(&self) -> bool {
        self.cookie == NONCE_COOKIE
    }

    fn mac(&self, expiry: u64, client: SocketAddr) -> [u8; 8] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(&expiry.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let out = mac.finalize().into_bytes();
        let mut m = [0u8; 8];
        m.copy_from_slice(&out[..8]);
        m
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A fresh nonce for `client`.
    pub fn make(&self, now: Instant, client: SocketAddr) -> [u8; NONCE_LEN] {
        let expiry = self
            .ms(now)
            .saturating_add(u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX));
        let mut out = [0u8; NONCE_LEN];
        out[..self.cookie.len()].copy_from_slice(self.cookie);
        let mut tail = [0u8; 16];
        tail[..8].copy_from_slice(&expiry.to_be_bytes());
        tail[8..].copy_from_slice(&self.mac(expiry, client));
        hex::encode_to_slice(tail, &mut out[self.cookie.len()..]).expect("sizes match");
        out
    }

    /// Check a nonce a client sent back.
    pub fn check(&self, nonce: &[u8], now: Instant, client: SocketAddr) -> NonceCheck {
        if nonce.len() != NONCE_LEN || !nonce.starts_with(self.cookie) {
            return NonceCheck::Invalid;
        }
        let mut tail = [0u8; 16];
        if hex::decode_to_slice(&nonce[self.cookie.len()..], &mut tail).is_err() {
            return NonceCheck::Invalid;
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&tail[..8]);
        let expiry = u64::from_be_bytes(e);
        let want = self.mac(expiry, client);
        // Constant-time comparison of the MAC.
        let diff = want
            .iter()
            .zip(&tail[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return NonceCheck::Invalid;
        }
        if expiry <= self.ms(now) {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// A fixed-size table of token buckets indexed by a keyed hash of the source IP:
/// bounded memory whatever the number of sources, and no per-source allocation.
/// Sources that collide share a bucket, which only makes the limit stricter.
///
/// Clones share the table: the driver gives every worker a clone, so a source is held
/// to one rate over the whole relay, whichever worker its packets reach. Each bucket is
/// one atomic word (tokens and the time of the last refill), updated with a
/// compare-and-swap: no lock, and workers contend only when they challenge sources of
/// the same bucket at the same moment. Only unauthenticated requests touch it.
#[derive(Clone)]
pub struct RateLimiter {
    inner: std::sync::Arc<Limits>,
}

struct Limits {
    /// Per bucket: tokens in thousandths (high 32 bits), milliseconds since `epoch`
    /// of the last refill, wrapping (low 32 bits).
    buckets: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    per_sec: u32,
    burst: u32,
    epoch: Instant,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_sec", &self.inner.per_sec)
            .finish_non_exhaustive()
    }
}

/// Number of buckets in a [`RateLimiter`].
pub const RATE_BUCKETS: usize = 4096;

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32, epoch: Instant) -> Self {
        let full = u64::from(burst.saturating_mul(1000)) << 32;
        RateLimiter {
            inner: std::sync::Arc::new(Limits {
                buckets: (0..RATE_BUCKETS).map(|_| AtomicU64::new(full)).collect(),
                hasher: Default::default(),
                per_sec,
                burst,
                epoch,
            }),
        }
    }

    /// Take one token for `ip`; false when the source is over its rate.
    /// A rate of 0 disables the limit.
    pub fn allow(&self, now: Instant, ip: IpAddr) -> bool {
        let l = &*self.inner;
        if l.per_sec == 0 {
            return true;
        }
        let idx = (l.hasher.hash_one(ip) as usize) % RATE_BUCKETS;
        let Some(cell) = l.buckets.get(idx) else {
            return false;
        };
        // Milliseconds since the epoch, kept modulo 2^32 (49 days): the difference of
        // two readings is right as long as a bucket is touched more often than that,
        // and a bucket idle for longer is full anyway unless the wrap lands close,
        // which at worst refuses one more challenge.
        let now_ms = now.saturating_duration_since(l.epoch).as_millis() as u32;
        let cap = u64::from(l.burst) * 1000;
        let mut cur = cell.load(Ordering::Relaxed);
        loop {
            let (tokens, last) = ((cur >> 32) as u32, cur as u32);
            let elapsed = u64::from(now_ms.wrapping_sub(last));
            let refill = elapsed.saturating_mul(u64::from(l.per_sec));
            let t = (u64::from(tokens) + refill).min(cap);
            let (allowed, left) = if t >= 1000 {
                (true, t - 1000)
            } else {
                (false, t)
            };
            let next = (left.min(u64::from(u32::MAX)) << 32) | u64::from(now_ms);
            match cell.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return allowed,
                Err(seen) => cur = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_round_trip_and_expiry() {
        let t0 = Instant::now();
        let n = Nonces::new([9; 32], Duration::from_secs(600), t0, true);
        let c: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let nonce = n.make(t0, c);
        assert!(nonce.starts_with(b"obMatJos2"));
        assert_eq!(
            n.check(&nonce, t0 + Duration::from_secs(599), c),
            NonceCheck::Valid
        );
        assert_eq!(
            n.check(&nonce, t0 + Duration::from_secs(600), c),
            NonceCheck::Stale
        );
        let other: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        assert_eq!(n.check(&nonce, t0, other), NonceCheck::Invalid);
        let mut bad = nonce;
        bad[NONCE_LEN - 1] ^= 1;
        assert_eq!(n.check(&bad, t0, c), NonceCheck::Invalid);
        assert_eq!(n.check(b"short", t0, c), NonceCheck::Invalid);
    }

    #[test]
    fn rest_password_matches_coturn() {
        // Same computation as `echo -n 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        assert_eq!(rest_expiry(b"1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry(b"1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry(b"alice"), None);
        assert_eq!(quota_user(b"1700000000:alice"), b"alice");
        assert_eq!(
            rest_password(b"secret", b"1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn rate_limiter_limits_and_refills() {
        let t0 = Instant::now();
        let r = RateLimiter::new(2, 4, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..4 {
            assert!(r.allow(t0, ip));
        }
        assert!(!r.allow(t0, ip));
        assert!(r.allow(t0 + Duration::from_millis(500), ip));
        assert!(!r.allow(t0 + Duration::from_millis(500), ip));
    }

    #[test]
    fn rate_limiter_clones_share_the_budget_across_threads() {
        let t0 = Instant::now();
        let r = RateLimiter::new(1, 1000, t0);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // Two "workers" draw from the same source's bucket at once: together they get
        // the burst (1000), not 1000 each.
        let granted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let r = r.clone();
                    s.spawn(move || (0..1000).filter(|_| r.allow(t0, ip)).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 1000);
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        let same_bucket = r.inner.hasher.hash_one(ip) as usize % RATE_BUCKETS
            == r.inner.hasher.hash_one(other) as usize % RATE_BUCKETS;
        assert_eq!(r.allow(t0, other), !same_bucket);
    }
}
