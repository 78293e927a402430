//! The control side of media sessions: their public names, which worker holds each,
//! and the final state of recently ended ones (so signaling can still read why and
//! with which counters a session ended on the relay's side).
//!
//! Locks are taken in one order, a worker's shard before the registry, and the
//! registry is never held while waiting for a shard. Nothing here is on the packet
//! path: a worker takes the registry only when sessions time out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_control::{
    CreateSession, EndReason, EndedPage, EndedSession, Load, SessionInfo, UpdateSession,
    MAX_ENDED_PAGE,
};

use super::{lock as lock_shard, Inner};
use crate::media::{MediaError, MediaStats, SessionKey};
use crate::pii::Pii;

/// Ended sessions kept for queries: at most this many, for at most [`ENDED_TTL`].
const ENDED_KEEP: usize = 4096;
const ENDED_TTL: Duration = Duration::from_secs(600);

/// Public names of live sessions and the final state of ended ones.
#[derive(Debug)]
pub(crate) struct Registry {
    live: HashMap<String, (usize, SessionKey)>,
    ended: HashMap<String, SessionInfo>,
    /// Ended sessions in the order they ended, each with its sequence number
    /// (increasing by one), for `GET /sessions/ended`; the same bounds as `ended`.
    order: VecDeque<(Instant, EndedSession)>,
    /// The sequence number of the last session that ended (0: none yet).
    last_seq: u64,
    /// Names this run of the relay, so a client holding a cursor learns of a restart.
    epoch: String,
    /// Packet count and time of the last rate sample, and the rate it gave.
    sample: Option<(Instant, u64)>,
    rate: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            live: HashMap::new(),
            ended: HashMap::new(),
            order: VecDeque::new(),
            last_seq: 0,
            epoch: format!("{:016x}", rand::random::<u64>()),
            sample: None,
            rate: 0,
        }
    }
}

pub(crate) fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Record a session that ended (timed out, deleted or shut down).
    pub(crate) fn ended(&mut self, now: Instant, info: SessionInfo) {
        self.live.remove(&info.id);
        self.last_seq += 1;
        self.order.push_back((
            now,
            EndedSession {
                seq: self.last_seq,
                id: info.id.clone(),
                call_id: info.call_id.clone(),
                // The media core always names the reason of an ended session.
                reason: info.end_reason.unwrap_or(EndReason::Deleted),
            },
        ));
        self.ended.insert(info.id.clone(), info);
        self.forget_old(now);
    }

    /// Forgets ended sessions beyond [`ENDED_KEEP`] or older than [`ENDED_TTL`].
    fn forget_old(&mut self, now: Instant) {
        while self.order.len() > ENDED_KEEP
            || self
                .order
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > ENDED_TTL)
        {
            if let Some((_, e)) = self.order.pop_front() {
                self.ended.remove(&e.id);
            }
        }
    }

    /// Sessions that ended after the cursor `after`, oldest first, at most `limit`.
    pub(crate) fn ended_since(&mut self, now: Instant, after: u64, limit: usize) -> EndedPage {
        self.forget_old(now);
        // A cursor from the future (another run of the relay) reads from the start.
        let after = if after > self.last_seq { 0 } else { after };
        let oldest = self.order.front().map_or(self.last_seq + 1, |(_, e)| e.seq);
        let missed = after.saturating_add(1) < oldest;
        // Sequence numbers increase by one along `order`, so the first entry after
        // the cursor is found by position.
        let skip =
            usize::try_from(after.saturating_sub(oldest.saturating_sub(1))).unwrap_or(usize::MAX);
        let sessions: Vec<EndedSession> = self
            .order
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect();
        let next = sessions.last().map_or(after, |e| e.seq);
        EndedPage {
            epoch: self.epoch.clone(),
            more: next < self.last_seq,
            sessions,
            next,
            missed,
        }
    }
}

/// Log the end of a session at info level (addresses redacted unless
/// `log-addresses`).
pub(crate) fn log_end(info: &SessionInfo) {
    let latched = |l: &tandem_control::LegInfo| {
        l.streams
            .first()
            .and_then(|s| s.latched_rtp)
            .map(|a| Pii(a).to_string())
            .unwrap_or_else(|| "-".into())
    };
    tracing::info!(
        session = %info.id,
        reason = ?info.end_reason,
        age_secs = info.age_secs,
        caller = %latched(&info.caller),
        callee = %latched(&info.callee),
        caller_packets = info.caller.counters.packets_in,
        callee_packets = info.callee.counters.packets_in,
        dropped = info.caller.counters.dropped.total() + info.callee.counters.dropped.total(),
        "media session ended"
    );
}

/// The handle the control API works through: places, changes, reads and ends media
/// sessions on the workers' cores. Every method takes the time from its caller.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
    next_shard: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    pub(crate) fn new(inner: Arc<Inner>) -> Control {
        Control {
            inner,
            next_shard: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Place a new session on a worker (in turn, skipping a full one).
    pub fn create(&self, now: Instant, req: &CreateSession) -> Result<SessionInfo, MediaError> {
        req.validate()?;
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err(MediaError::Draining);
        }
        let shards = &self.inner.shards;
        let start = self.next_shard.fetch_add(1, Ordering::Relaxed);
        let mut last = MediaError::PortsExhausted;
        for k in 0..shards.len() {
            let index = (start + k) % shards.len();
            let id = format!("{:032x}", rand::random::<u128>());
            let mut g = lock_shard(&shards[index]);
            let super::Shared { media, relays, .. } = &mut *g;
            match media.create(now, id.clone(), req, relays) {
                Ok((key, info)) => {
                    lock(&self.inner.sessions).live.insert(id, (index, key));
                    drop(g);
                    tracing::info!(
                        session = %info.id,
                        worker = index,
                        streams = info.caller.streams.len(),
                        caller_ice = info.caller.ice,
                        srtp_bridge = info.caller.srtp.is_some() || info.callee.srtp.is_some(),
                        "media session created"
                    );
                    return Ok(info);
                }
                // Another worker may have room; anything else is the request's fault.
                Err(e @ (MediaError::PortsExhausted | MediaError::TooManySessions)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Where a live session is, or the final state of an ended one (boxed: it is
    /// the rare answer).
    fn find(&self, id: &str) -> Result<(usize, SessionKey), Option<Box<SessionInfo>>> {
        let reg = lock(&self.inner.sessions);
        match reg.live.get(id) {
            Some(&v) => Ok(v),
            None => Err(reg.ended.get(id).cloned().map(Box::new)),
        }
    }

    /// The answer or a later change. An ended session is [`MediaError::NotFound`].
    pub fn update(
        &self,
        now: Instant,
        id: &str,
        req: &UpdateSession,
    ) -> Result<SessionInfo, MediaError> {
        let (shard, key) = self.find(id).map_err(|_| MediaError::NotFound)?;
        let mut g = lock_shard(&self.inner.shards[shard]);
        let super::Shared { media, relays, .. } = &mut *g;
        media.update(now, key, req, relays)
    }

    /// The session's state and counters; an ended one's final state for a while
    /// after it ended.
    pub fn get(&self, now: Instant, id: &str) -> Result<SessionInfo, MediaError> {
        match self.find(id) {
            Ok((shard, key)) => {
                let g = lock_shard(&self.inner.shards[shard]);
                if let Some(info) = g.media.info(now, key) {
                    return Ok(info);
                }
                drop(g);
                // Ended between the two look-ups.
                self.find(id)
                    .err()
                    .flatten()
                    .map(|b| *b)
                    .ok_or(MediaError::NotFound)
            }
            Err(ended) => ended.map(|b| *b).ok_or(MediaError::NotFound),
        }
    }

    /// End the session and give its final counters.
    pub fn delete(&self, now: Instant, id: &str) -> Result<SessionInfo, MediaError> {
        let (shard, key) = self.find(id).map_err(|_| MediaError::NotFound)?;
        let mut g = lock_shard(&self.inner.shards[shard]);
        let super::Shared { media, relays, .. } = &mut *g;
        let info = media.delete(now, key, relays).ok_or(MediaError::NotFound)?;
        lock(&self.inner.sessions).ended(now, info.clone());
        drop(g);
        log_end(&info);
        Ok(info)
    }

    /// Sessions that ended after the cursor `after` (see [`EndedPage`]).
    pub fn ended_since(&self, now: Instant, after: u64) -> EndedPage {
        lock(&self.inner.sessions).ended_since(now, after, MAX_ENDED_PAGE)
    }

    /// What placement needs: sessions, allocations, the packet rate since the last
    /// sample (samples at least a second apart), workers.
    pub fn load(&self, now: Instant) -> Load {
        let (mut sessions, mut allocations) = (0u64, 0u64);
        for shard in &self.inner.shards {
            let g = lock_shard(shard);
            sessions += g.media.session_count() as u64;
            allocations += g.server.allocation_count() as u64;
        }
        let packets = self.inner.packets.load(Ordering::Relaxed);
        let mut reg = lock(&self.inner.sessions);
        match reg.sample {
            Some((t, n)) => {
                let dt = now.saturating_duration_since(t);
                if dt >= Duration::from_secs(1) {
                    reg.rate = ((packets.saturating_sub(n)) as f64 / dt.as_secs_f64()) as u64;
                    reg.sample = Some((now, packets));
                }
            }
            None => reg.sample = Some((now, packets)),
        }
        Load {
            sessions,
            allocations,
            packets_per_sec: reg.rate,
            workers: u32::try_from(self.inner.shards.len()).unwrap_or(u32::MAX),
            draining: false,
        }
    }

    /// Counters of every worker's media core, summed.
    pub fn stats(&self) -> MediaStats {
        let mut s = MediaStats::default();
        for shard in &self.inner.shards {
            s.merge(lock_shard(shard).media.stats());
        }
        s
    }

    /// Live media sessions on every worker.
    pub fn session_count(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock_shard(s).media.session_count())
            .sum()
    }
}

impl crate::control::Sessions for Control {
    fn create(&self, now: Instant, req: &CreateSession) -> Result<SessionInfo, MediaError> {
        Control::create(self, now, req)
    }
    fn update(
        &self,
        now: Instant,
        id: &str,
        req: &UpdateSession,
    ) -> Result<SessionInfo, MediaError> {
        Control::update(self, now, id, req)
    }
    fn get(&self, now: Instant, id: &str) -> Result<SessionInfo, MediaError> {
        Control::get(self, now, id)
    }
    fn delete(&self, now: Instant, id: &str) -> Result<SessionInfo, MediaError> {
        Control::delete(self, now, id)
    }
    fn load(&self, now: Instant) -> Load {
        Control::load(self, now)
    }
    fn ended_since(&self, now: Instant, after: u64) -> EndedPage {
        Control::ended_since(self, now, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, reason: EndReason) -> SessionInfo {
        let leg = tandem_control::LegInfo {
            ice: false,
            learn_first_source: false,
            srtp: None,
            streams: vec![],
            counters: Default::default(),
        };
        SessionInfo {
            id: id.to_owned(),
            call_id: Some(format!("call-{id}")),
            state: tandem_control::SessionState::Ended,
            end_reason: Some(reason),
            age_secs: 1,
            caller: leg.clone(),
            callee: leg,
        }
    }

    #[test]
    fn ended_sessions_are_read_after_a_cursor_in_pages() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        let page = r.ended_since(t0, 0, 10);
        assert!(page.sessions.is_empty() && !page.missed && !page.more);
        assert_eq!(page.next, 0);
        for (i, reason) in [
            EndReason::Inactivity,
            EndReason::Deleted,
            EndReason::MaxDuration,
        ]
        .into_iter()
        .enumerate()
        {
            r.ended(t0, info(&format!("s{i}"), reason));
        }
        let page = r.ended_since(t0, 0, 2);
        assert_eq!(page.sessions.len(), 2);
        assert_eq!(page.sessions[0].id, "s0");
        assert_eq!(page.sessions[0].reason, EndReason::Inactivity);
        assert_eq!(page.sessions[0].call_id.as_deref(), Some("call-s0"));
        assert_eq!((page.next, page.more, page.missed), (2, true, false));
        let page2 = r.ended_since(t0, page.next, 2);
        assert_eq!(page2.sessions.len(), 1);
        assert_eq!(page2.sessions[0].reason, EndReason::MaxDuration);
        assert_eq!((page2.next, page2.more), (3, false));
        assert_eq!(page2.epoch, page.epoch);
        // Nothing new: the cursor stays.
        assert_eq!(r.ended_since(t0, 3, 2).next, 3);
        // A cursor of another run reads from the start.
        assert_eq!(r.ended_since(t0, 99, 10).sessions.len(), 3);
        // After the TTL, the entries are forgotten and a cursor behind them is told so.
        let later = t0 + ENDED_TTL + Duration::from_secs(1);
        r.ended(later, info("s3", EndReason::Inactivity));
        let page = r.ended_since(later, 1, 10);
        assert!(page.missed);
        assert_eq!(page.sessions.len(), 1);
        assert_eq!(page.sessions[0].seq, 4);
        assert!(!r.ended_since(later, 3, 10).missed);
    }
}
