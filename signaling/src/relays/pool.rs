//! [`RelayPool`]: the [`MediaRelays`] of signaling, over the relays' control API.
//!
//! Each relay has a small state behind its own lock (never held across an await):
//! whether it is up, its failed checks in a row, its session count from `GET /load`
//! (plus the sessions placed since), its cursor in `GET /sessions/ended`, and the
//! sessions this pool placed there that are still live (id and call id), so that
//! an ended session or a relay going down can be announced as [`Ended`] events.
//!
//! Time comes from the caller: [`run_health`] reads the injected clock once per
//! round and passes it down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tandem_control::{
    CreateSession, EndedPage, ErrorBody, Health, Load, SessionInfo, SessionState, UpdateSession,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::metrics::RelayMetrics;
use super::{
    BoxFuture, Ended, EndedReason, MediaRelays, Placed, PoolConfig, RelayConfig, RelayError,
    RelayId,
};
use crate::clock::Clock;

/// Capacity of the [`Ended`] channel; a receiver further behind gets `Lagged`.
pub const ENDED_CHANNEL: usize = 1024;

/// One relay's state as the pool sees it, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    pub id: RelayId,
    /// `host:port` of its control URL.
    pub label: String,
    pub public_address: String,
    pub weight: u32,
    /// Passing health checks (a relay starts down until its first check passes).
    pub up: bool,
    /// Sessions on the relay by its last `GET /load`, plus those placed since.
    pub sessions: u64,
    /// The relay said it drains: no new sessions.
    pub draining: bool,
    /// Sessions this pool placed there and still counts as live.
    pub live: usize,
    /// When its last check passed.
    pub last_ok: Option<Instant>,
}

#[derive(Debug, Default)]
struct MemberState {
    up: bool,
    failures: u32,
    sessions: u64,
    draining: bool,
    last_ok: Option<Instant>,
    /// (epoch, next) of `GET /sessions/ended`.
    cursor: Option<(String, u64)>,
    /// Live sessions placed here: id -> call id.
    live: HashMap<String, Option<String>>,
}

#[derive(Debug)]
struct Member {
    id: RelayId,
    label: String,
    /// The control URL without a trailing slash.
    base: String,
    secret: String,
    public_address: String,
    weight: u32,
    state: Mutex<MemberState>,
}

impl Member {
    fn state(&self) -> MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool of media relays (`[[relays]]`). Build it with [`RelayPool::new`], run
/// [`run_health`] beside it, and hand it to the proxy as `Arc<dyn MediaRelays>`.
#[derive(Debug)]
pub struct RelayPool {
    members: Vec<Member>,
    http: reqwest::Client,
    cfg: PoolConfig,
    ended: broadcast::Sender<Ended>,
    metrics: RelayMetrics,
    /// Where the search for the least loaded relay starts, so ties take turns.
    next: AtomicUsize,
}

/// The bearer token of `r`: `secret`, else the first line of `secret_file`.
fn bearer(index: usize, r: &RelayConfig) -> Result<String, String> {
    if let Some(s) = &r.secret {
        return Ok(s.clone());
    }
    let Some(path) = &r.secret_file else {
        return Err(format!("relays[{index}].secret: not set"));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("relays[{index}].secret_file: {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(format!(
            "relays[{index}].secret_file: {} is empty",
            path.display()
        ));
    }
    Ok(token)
}

impl RelayPool {
    /// A pool over `relays`, every relay down until its first check passes. The
    /// error names the configuration key at fault.
    pub fn new(
        relays: &[RelayConfig],
        cfg: &PoolConfig,
        metrics: RelayMetrics,
    ) -> Result<RelayPool, String> {
        super::config::validate_relays(relays)?;
        cfg.validate()?;
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("relays: cannot build the HTTP client: {e}"))?;
        let mut members = Vec::with_capacity(relays.len());
        for (i, r) in relays.iter().enumerate() {
            let label = r.label();
            metrics.set_up(&label, false);
            members.push(Member {
                id: RelayId(i),
                label,
                base: r.control_url.trim_end_matches('/').to_owned(),
                secret: bearer(i, r)?,
                public_address: r.public_address.clone(),
                weight: r.weight,
                state: Mutex::new(MemberState::default()),
            });
        }
        let (ended, _) = broadcast::channel(ENDED_CHANNEL);
        Ok(RelayPool {
            members,
            http,
            cfg: cfg.clone(),
            ended,
            metrics,
            next: AtomicUsize::new(0),
        })
    }

    /// The time between two health rounds.
    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.cfg.health_interval_secs)
    }

    /// Every relay's state.
    pub fn status(&self) -> Vec<RelayStatus> {
        self.members
            .iter()
            .map(|m| {
                let s = m.state();
                RelayStatus {
                    id: m.id,
                    label: m.label.clone(),
                    public_address: m.public_address.clone(),
                    weight: m.weight,
                    up: s.up,
                    sessions: s.sessions,
                    draining: s.draining,
                    live: s.live.len(),
                    last_ok: s.last_ok,
                }
            })
            .collect()
    }

    fn member(&self, relay: RelayId) -> Result<&Member, RelayError> {
        self.members
            .get(relay.0)
            .ok_or(RelayError::UnknownRelay(relay))
    }

    /// Relays that take sessions, best first: lowest `sessions / weight`, ties in
    /// turn.
    fn candidates(&self) -> Vec<(usize, u64, u32)> {
        let n = self.members.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut out: Vec<(usize, u64, u32)> = (0..n)
            .map(|k| (start + k) % n)
            .filter_map(|i| {
                let m = &self.members[i];
                let s = m.state();
                (s.up && !s.draining).then_some((i, s.sessions, m.weight))
            })
            .collect();
        // a/wa < b/wb  <=>  a*wb < b*wa; a stable sort keeps the rotation for ties.
        out.sort_by(|&(_, a, wa), &(_, b, wb)| {
            (u128::from(a) * u128::from(wb)).cmp(&(u128::from(b) * u128::from(wa)))
        });
        out
    }

    /// One request to one relay; a non-2xx answer is [`RelayError::Refused`].
    async fn call<T: DeserializeOwned>(
        &self,
        m: &Member,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RelayError> {
        let relay = m.id;
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                RelayError::Timeout { relay }
            } else {
                RelayError::Transport {
                    relay,
                    message: e.without_url().to_string(),
                }
            }
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", m.base))
            .bearer_auth(&m.secret);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<T>().await.map_err(fail);
        }
        let bytes = resp.bytes().await.map_err(fail)?;
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            error: "unknown".to_owned(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        });
        Err(RelayError::Refused {
            relay,
            status: status.as_u16(),
            body,
        })
    }

    fn count(&self, op: &'static str, r: &Result<impl Sized, RelayError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(RelayError::NoRelay) => "no_relay",
            Err(RelayError::UnknownRelay(_)) => "unknown_relay",
            Err(RelayError::Refused { status: 404, .. }) => "not_found",
            Err(RelayError::Refused { .. }) => "refused",
            Err(RelayError::Timeout { .. }) => "timeout",
            Err(RelayError::Transport { .. }) => "transport",
        };
        self.metrics.request(op, outcome);
    }

    async fn create_session(&self, req: CreateSession) -> Result<Placed, RelayError> {
        let mut last = RelayError::NoRelay;
        for (i, _, _) in self.candidates() {
            let m = &self.members[i];
            match self
                .call::<SessionInfo>(m, Method::POST, "/sessions", Some(to_json(&req)))
                .await
            {
                Ok(session) => {
                    let mut s = m.state();
                    s.live.insert(session.id.clone(), session.call_id.clone());
                    s.sessions = s.sessions.saturating_add(1);
                    return Ok(Placed {
                        relay: m.id,
                        session,
                    });
                }
                // No room, or no answer: the next relay may take it. Whether the
                // relay is down is for the health checks to say.
                Err(
                    e @ (RelayError::Refused { status: 503, .. }
                    | RelayError::Timeout { .. }
                    | RelayError::Transport { .. }),
                ) => {
                    tracing::debug!(relay = %m.label, error = %e, "relay did not take a session");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn update_session(
        &self,
        relay: RelayId,
        id: &str,
        req: UpdateSession,
    ) -> Result<SessionInfo, RelayError> {
        let m = self.member(relay)?;
        self.call(m, Method::PATCH, &session_path(id), Some(to_json(&req)))
            .await
    }

    async fn delete_session(
        &self,
        relay: RelayId,
        id: &str,
    ) -> Result<Option<SessionInfo>, RelayError> {
        let m = self.member(relay)?;
        // Forgotten first: a session we delete is not announced as ended.
        m.state().live.remove(id);
        match self
            .call::<SessionInfo>(m, Method::DELETE, &session_path(id), None)
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(RelayError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn announce(
        &self,
        relay: RelayId,
        session_id: String,
        call_id: Option<String>,
        reason: EndedReason,
    ) {
        self.metrics.ended(reason.as_str());
        let ev = Ended {
            relay,
            session_id,
            call_id,
            reason,
        };
        if self.ended.send(ev).is_err() {
            tracing::debug!(%relay, reason = reason.as_str(), "session ended with nobody subscribed");
        }
    }

    /// Announces every live session of `m` as ended for `reason`.
    fn end_all(&self, m: &Member, reason: EndedReason) {
        let live = std::mem::take(&mut m.state().live);
        for (id, call_id) in live {
            self.announce(m.id, id, call_id, reason);
        }
    }

    /// One round: every relay checked at once. `now` is the time of the round.
    pub async fn check_all(self: &Arc<Self>, now: Instant) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let pool = self.clone();
            set.spawn(async move { pool.check(i, now).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Health, load and ended sessions of one relay.
    async fn check(&self, i: usize, now: Instant) {
        let m = &self.members[i];
        let probe = async {
            let _: Health = self.call(m, Method::GET, "/health", None).await?;
            let load: Load = self.call(m, Method::GET, "/load", None).await?;
            Ok::<Load, RelayError>(load)
        };
        match probe.await {
            Ok(load) => {
                let came_up = {
                    let mut s = m.state();
                    s.failures = 0;
                    s.sessions = load.sessions;
                    s.draining = load.draining;
                    s.last_ok = Some(now);
                    !std::mem::replace(&mut s.up, true)
                };
                if came_up {
                    tracing::info!(relay = %m.label, "media relay up");
                    self.metrics.set_up(&m.label, true);
                }
                if let Err(e) = self.read_ended(m).await {
                    tracing::warn!(relay = %m.label, error = %e, "cannot read ended sessions");
                }
            }
            Err(e) => {
                let went_down = {
                    let mut s = m.state();
                    s.failures = s.failures.saturating_add(1);
                    s.up && s.failures >= self.cfg.down_after_failures
                };
                tracing::debug!(relay = %m.label, error = %e, "relay health check failed");
                if went_down {
                    m.state().up = false;
                    tracing::warn!(relay = %m.label, error = %e, "media relay down; its sessions are ended");
                    self.metrics.set_up(&m.label, false);
                    self.end_all(m, EndedReason::RelayDown);
                }
            }
        }
    }

    /// Reads `GET /sessions/ended` from the relay's cursor and announces the
    /// sessions of ours among them.
    async fn read_ended(&self, m: &Member) -> Result<(), RelayError> {
        // Bounded: at most this many pages per round.
        for _ in 0..16 {
            let (epoch, after) = m.state().cursor.clone().unwrap_or_default();
            let page: EndedPage = self
                .call(
                    m,
                    Method::GET,
                    &format!("/sessions/ended?after={after}"),
                    None,
                )
                .await?;
            if !epoch.is_empty() && epoch != page.epoch {
                tracing::warn!(relay = %m.label, "media relay restarted; its sessions are ended");
                self.end_all(m, EndedReason::RelayRestarted);
            }
            let mut ours = Vec::new();
            {
                let mut s = m.state();
                for e in page.sessions {
                    if let Some(call_id) = s.live.remove(&e.id) {
                        ours.push((e.id, call_id, EndedReason::from(e.reason)));
                    }
                }
                s.cursor = Some((page.epoch, page.next));
            }
            for (id, call_id, reason) in ours {
                self.announce(m.id, id, call_id, reason);
            }
            if page.missed {
                self.read_live_one_by_one(m).await?;
            }
            if !page.more {
                break;
            }
        }
        Ok(())
    }

    /// The relay forgot ended sessions before we read them: ask for each live one.
    async fn read_live_one_by_one(&self, m: &Member) -> Result<(), RelayError> {
        let ids: Vec<String> = m.state().live.keys().cloned().collect();
        for id in ids {
            let reason = match self
                .call::<SessionInfo>(m, Method::GET, &session_path(&id), None)
                .await
            {
                Ok(info) if info.state == SessionState::Ended => info
                    .end_reason
                    .map_or(EndedReason::Deleted, EndedReason::from),
                Ok(_) => continue,
                Err(RelayError::Refused { status: 404, .. }) => EndedReason::Deleted,
                Err(e) => return Err(e),
            };
            let removed = m.state().live.remove(&id);
            if let Some(call_id) = removed {
                self.announce(m.id, id, call_id, reason);
            }
        }
        Ok(())
    }
}

fn session_path(id: &str) -> String {
    // Relay ids are hex; anything else is escaped rather than trusted in a path.
    let safe: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/sessions/{safe}")
}

/// A request body as JSON (the control types always serialise).
fn to_json(body: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

impl MediaRelays for RelayPool {
    fn create(&self, req: CreateSession) -> BoxFuture<'_, Result<Placed, RelayError>> {
        Box::pin(async move {
            let r = self.create_session(req).await;
            self.count("create", &r);
            r
        })
    }

    fn update<'a>(
        &'a self,
        relay: RelayId,
        session_id: &'a str,
        req: UpdateSession,
    ) -> BoxFuture<'a, Result<SessionInfo, RelayError>> {
        Box::pin(async move {
            let r = self.update_session(relay, session_id, req).await;
            self.count("update", &r);
            r
        })
    }

    fn delete<'a>(
        &'a self,
        relay: RelayId,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionInfo>, RelayError>> {
        Box::pin(async move {
            let r = self.delete_session(relay, session_id).await;
            match &r {
                Ok(None) => self.metrics.request("delete", "not_found"),
                _ => self.count("delete", &r),
            }
            r
        })
    }

    fn subscribe_ended(&self) -> broadcast::Receiver<Ended> {
        self.ended.subscribe()
    }
}

/// The pool's background task: a round of checks every
/// `relay_pool.health_interval_secs` (the first at once), the time of each read from
/// `clock`, until `shutdown`.
pub async fn run_health(pool: Arc<RelayPool>, clock: Clock, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(pool.health_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pool.check_all(clock.now()) => {}
        }
    }
}
