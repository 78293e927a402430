//! HTTP digest authentication for SIP (RFC 3261 22.4, RFC 7616, RFC 8760) with
//! stateless nonces.
//!
//! A nonce is `base64url(timestamp || random || HMAC-SHA256(secret, timestamp ||
//! random || realm)[..16])`: the registrar keeps no state for a challenge, checks the
//! integrity and age of the nonce it gets back, and only then remembers the highest
//! nonce-count seen for it (bounded, oldest forgotten first) to refuse replays.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::model::AccountCredentials;
use crate::sip::grammar::AuthParams;

type HmacSha256 = Hmac<Sha256>;

const NONCE_RAW_LEN: usize = 8 + 8 + 16;

/// Digest algorithms we offer, strongest first (RFC 8760 section 2.4: the server lists
/// its preferred challenge first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else {
            None
        }
    }

    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
            Algorithm::Md5 => hex::encode(Md5::digest(data)),
        }
    }
}

/// Result of checking a nonce we issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid {
        issued: i64,
    },
    /// Ours, but too old: challenge again with `stale=true`.
    Stale,
    /// Not ours or tampered with.
    Invalid,
}

/// Issues and checks stateless nonces.
#[derive(Clone)]
pub struct NonceKey {
    secret: Vec<u8>,
    realm: String,
    ttl: i64,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKey")
            .field("realm", &self.realm)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl NonceKey {
    pub fn new(secret: Vec<u8>, realm: String, ttl_secs: u32) -> NonceKey {
        NonceKey {
            secret,
            realm,
            ttl: i64::from(ttl_secs),
        }
    }

    fn mac(&self, ts_rand: &[u8]) -> Option<[u8; 16]> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).ok()?;
        mac.update(ts_rand);
        mac.update(self.realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(full.get(..16)?);
        Some(out)
    }

    /// A fresh nonce; `random` comes from the caller (sans-IO).
    pub fn issue(&self, now: i64, random: [u8; 8]) -> String {
        let mut raw = Vec::with_capacity(NONCE_RAW_LEN);
        raw.extend_from_slice(&now.to_be_bytes());
        raw.extend_from_slice(&random);
        let mac = self.mac(&raw).unwrap_or([0; 16]);
        raw.extend_from_slice(&mac);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn check(&self, nonce: &str, now: i64) -> NonceCheck {
        if nonce.len() > 64 {
            return NonceCheck::Invalid;
        }
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceCheck::Invalid;
        };
        if raw.len() != NONCE_RAW_LEN {
            return NonceCheck::Invalid;
        }
        let (Some(head), Some(tag)) = (raw.get(..16), raw.get(16..)) else {
            return NonceCheck::Invalid;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.secret) else {
            return NonceCheck::Invalid;
        };
        mac.update(head);
        mac.update(self.realm.as_bytes());
        // Constant-time comparison of the truncated tag.
        if mac.verify_truncated_left(tag).is_err() {
            return NonceCheck::Invalid;
        }
        let mut ts = [0u8; 8];
        let Some(ts_bytes) = head.get(..8) else {
            return NonceCheck::Invalid;
        };
        ts.copy_from_slice(ts_bytes);
        let issued = i64::from_be_bytes(ts);
        if issued > now.saturating_add(5) || now.saturating_sub(issued) > self.ttl {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid { issued }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }
}

/// Highest nonce-count seen per nonce, bounded. When a nonce is forgotten, every nonce
/// issued at or before it is treated as stale from then on, so eviction can never
/// re-open a replay window.
#[derive(Debug)]
pub struct NonceCounts {
    max: usize,
    counts: HashMap<String, u32>,
    order: VecDeque<(String, i64)>,
    forgotten_up_to: i64,
}

impl NonceCounts {
    pub fn new(max: usize) -> NonceCounts {
        NonceCounts {
            max: max.max(1),
            counts: HashMap::new(),
            order: VecDeque::new(),
            forgotten_up_to: i64::MIN,
        }
    }

    /// Accepts `nc` for `nonce` if it is higher than any seen before; `Err(true)` means
    /// the nonce was forgotten (answer stale), `Err(false)` a replay.
    pub fn accept(&mut self, nonce: &str, issued: i64, nc: u32) -> Result<(), bool> {
        if let Some(highest) = self.counts.get_mut(nonce) {
            if nc <= *highest {
                return Err(false);
            }
            *highest = nc;
            return Ok(());
        }
        if issued <= self.forgotten_up_to {
            return Err(true);
        }
        while self.counts.len() >= self.max {
            let Some((old, ts)) = self.order.pop_front() else {
                break;
            };
            self.counts.remove(&old);
            self.forgotten_up_to = self.forgotten_up_to.max(ts);
        }
        self.counts.insert(nonce.to_owned(), nc);
        self.order.push_back((nonce.to_owned(), issued));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No Digest credentials for our realm: plain challenge, not counted as a failure.
    NoCredentials,
    /// Nonce expired or forgotten: challenge with `stale=true`, not counted.
    Stale,
    /// A nonce we cannot verify (issued before a restart with another secret, or
    /// made up): a fresh challenge, not counted. The response is never checked against
    /// such a nonce, so this gives no password-guessing oracle.
    UnknownNonce,
    /// Well-formed credentials whose response does not match the password: counted,
    /// answered with a fresh challenge (the user may retype the password).
    WrongPassword,
    /// Malformed credentials, wrong username, replayed nc, foreign nonce: counted, 403.
    Rejected(&'static str),
}

/// Builds the `WWW-Authenticate` values for a 401, one per algorithm in the given
/// (preference) order, all with the same nonce.
pub fn challenges(
    key: &NonceKey,
    algorithms: &[Algorithm],
    now: i64,
    random: [u8; 8],
    stale: bool,
) -> Vec<String> {
    let nonce = key.issue(now, random);
    algorithms
        .iter()
        .map(|alg| {
            format!(
                "Digest realm=\"{}\", nonce=\"{}\", algorithm={}, qop=\"auth\"{}",
                key.realm(),
                nonce,
                alg.name(),
                if stale { ", stale=TRUE" } else { "" }
            )
        })
        .collect()
}

/// Verifies Digest credentials (qop=auth required, algorithm one of `offered`) for
/// `method` against `creds`. On success the nonce-count is recorded.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    auth: &AuthParams<'_>,
    offered: &[Algorithm],
    method: &str,
    creds: &AccountCredentials,
    key: &NonceKey,
    counts: &mut NonceCounts,
    now: i64,
) -> Result<(), AuthFailure> {
    if !auth.scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthFailure::NoCredentials);
    }
    if auth.get("realm") != Some(key.realm()) {
        return Err(AuthFailure::NoCredentials);
    }
    if auth.has_duplicates() {
        return Err(AuthFailure::Rejected("repeated digest parameter"));
    }
    let field = |n: &'static str| {
        auth.get(n)
            .ok_or(AuthFailure::Rejected("missing digest parameter"))
    };
    let username = field("username")?;
    let nonce = field("nonce")?;
    let uri = field("uri")?;
    let response = field("response")?;
    let algorithm = match auth.get("algorithm") {
        Some(a) => Algorithm::parse(a).ok_or(AuthFailure::Rejected("unsupported algorithm"))?,
        None => Algorithm::Md5,
    };
    if !offered.contains(&algorithm) {
        return Err(AuthFailure::Rejected("algorithm not offered"));
    }
    if !auth
        .get("qop")
        .is_some_and(|q| q.eq_ignore_ascii_case("auth"))
    {
        return Err(AuthFailure::Rejected("qop=auth required"));
    }
    let nc_text = field("nc")?;
    let cnonce = field("cnonce")?;
    // nc is exactly 8 hex digits (RFC 7616 3.4).
    if nc_text.len() != 8 {
        return Err(AuthFailure::Rejected("bad nc"));
    }
    let nc = u32::from_str_radix(nc_text, 16).map_err(|_| AuthFailure::Rejected("bad nc"))?;
    if nc == 0 || cnonce.is_empty() {
        return Err(AuthFailure::Rejected("bad nc or cnonce"));
    }
    if username != creds.login {
        return Err(AuthFailure::Rejected("username is not the account login"));
    }
    let issued = match key.check(nonce, now) {
        NonceCheck::Valid { issued } => issued,
        NonceCheck::Stale => return Err(AuthFailure::Stale),
        NonceCheck::Invalid => return Err(AuthFailure::UnknownNonce),
    };
    let ha1 = match algorithm {
        Algorithm::Sha256 => &creds.ha1_sha256,
        Algorithm::Md5 => &creds.ha1_md5,
    };
    let ha2 = algorithm.hash_hex(format!("{method}:{uri}").as_bytes());
    let expected =
        algorithm.hash_hex(format!("{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}").as_bytes());
    if !constant_time_eq(
        expected.as_bytes(),
        response.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(AuthFailure::WrongPassword);
    }
    match counts.accept(nonce, issued, nc) {
        Ok(()) => Ok(()),
        Err(true) => Err(AuthFailure::Stale),
        Err(false) => Err(AuthFailure::Rejected("nonce-count replayed")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HA1 values for a login and password, as the account store computes them.
pub fn ha1(login: &str, realm: &str, password: &str) -> (String, String) {
    let input = format!("{login}:{realm}:{password}");
    (
        Algorithm::Md5.hash_hex(input.as_bytes()),
        Algorithm::Sha256.hash_hex(input.as_bytes()),
    )
}

/// Computes a client's Authorization value (used by tests and by the forking proxy
/// when it authenticates upstream).
#[allow(clippy::too_many_arguments)]
pub fn client_response(
    alg: Algorithm,
    login: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let ha1 = alg.hash_hex(format!("{login}:{realm}:{password}").as_bytes());
    let ha2 = alg.hash_hex(format!("{method}:{uri}").as_bytes());
    let nc_text = format!("{nc:08x}");
    let resp = alg.hash_hex(format!("{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}").as_bytes());
    format!(
        "Digest username=\"{login}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, qop=auth, nc={nc_text}, cnonce=\"{cnonce}\"",
        alg.name()
    )
}
