//! Media relays: the pool of `tandem-relay` processes signaling places call media on
//! through their control API (`[[relays]]`), and TURN REST credentials for apps
//! (`[turn]`).
//!
//! The proxy sees the pool through [`MediaRelays`], a small object-safe trait, so its
//! tests can use a fake:
//!
//! - [`MediaRelays::create`] places a session on the healthy relay with the fewest
//!   sessions per unit of weight and says where it went ([`Placed`]);
//! - [`MediaRelays::update`] and [`MediaRelays::delete`] act on the relay that holds
//!   the session (a `DELETE` of a session the relay no longer knows is `Ok(None)`);
//! - [`MediaRelays::subscribe_ended`] hands out a receiver of [`Ended`] events: a
//!   session the relay ended itself (inactivity, maximum duration, shutdown), or every
//!   session of a relay that stopped answering or restarted. Sessions the caller
//!   deleted through the pool are not announced.
//!
//! [`RelayPool`] is the implementation over HTTP; [`pool::run_health`] is its
//! background task (health, load and ended sessions of every relay, every
//! `relay_pool.health_interval_secs`).

pub mod config;
pub mod metrics;
pub mod pool;
pub mod turn;

use std::future::Future;
use std::pin::Pin;

use tandem_control::{CreateSession, ErrorBody, SessionInfo, UpdateSession};
use tokio::sync::broadcast;

pub use config::{PoolConfig, RelayConfig};
pub use pool::{run_health, RelayPool, RelayStatus};
pub use turn::{TurnConfig, TurnCredentials, TurnService};

/// A boxed future, as the object-safe [`MediaRelays`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A relay of the pool: its index in `[[relays]]`, in configuration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub usize);

impl std::fmt::Display for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "relays[{}]", self.0)
    }
}

/// A session placed on a relay: where it lives and what the relay answered (the
/// relay ports of both legs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub relay: RelayId,
    pub session: SessionInfo,
}

/// Why a session ended without signaling asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndedReason {
    /// The relay ended it: no media from either side for its inactivity timeout.
    Inactivity,
    /// The relay ended it: its maximum duration passed.
    MaxDuration,
    /// The relay is shutting down.
    Shutdown,
    /// Deleted on the relay by someone other than this pool.
    Deleted,
    /// The relay failed `relay_pool.down_after_failures` health checks in a row; its
    /// sessions are taken as lost.
    RelayDown,
    /// The relay restarted (a new epoch): its sessions are gone.
    RelayRestarted,
}

impl EndedReason {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndedReason::Inactivity => "inactivity",
            EndedReason::MaxDuration => "max_duration",
            EndedReason::Shutdown => "shutdown",
            EndedReason::Deleted => "deleted",
            EndedReason::RelayDown => "relay_down",
            EndedReason::RelayRestarted => "relay_restarted",
        }
    }
}

impl From<tandem_control::EndReason> for EndedReason {
    fn from(r: tandem_control::EndReason) -> EndedReason {
        match r {
            tandem_control::EndReason::Inactivity => EndedReason::Inactivity,
            tandem_control::EndReason::MaxDuration => EndedReason::MaxDuration,
            tandem_control::EndReason::Shutdown => EndedReason::Shutdown,
            tandem_control::EndReason::Deleted => EndedReason::Deleted,
        }
    }
}

/// A session that ended without this pool deleting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub relay: RelayId,
    /// The relay's id of the session.
    pub session_id: String,
    /// The `call_id` given at creation.
    pub call_id: Option<String>,
    pub reason: EndedReason,
}

/// What can go wrong with a request to the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No relay is configured, up and taking sessions (or each one tried failed).
    #[error("no media relay available")]
    NoRelay,
    /// The id names no relay of the pool.
    #[error("{0}: no such relay")]
    UnknownRelay(RelayId),
    /// The relay answered with an error status.
    #[error("{relay} refused the request: {status} {}: {}", body.error, body.message)]
    Refused {
        relay: RelayId,
        status: u16,
        body: ErrorBody,
    },
    /// No answer within `relay_pool.request_timeout_ms`.
    #[error("{relay} did not answer in time")]
    Timeout { relay: RelayId },
    /// Connection failed, or the answer could not be read.
    #[error("{relay}: {message}")]
    Transport { relay: RelayId, message: String },
}

/// The pool as the proxy uses it. Object safe (`Arc<dyn MediaRelays>`), so the
/// proxy's tests can put a fake in its place.
pub trait MediaRelays: Send + Sync + std::fmt::Debug {
    /// Places a session on the best relay; a relay that cannot take it (no answer,
    /// 503) passes it on to the next. [`RelayError::NoRelay`] when none could.
    fn create(&self, req: CreateSession) -> BoxFuture<'_, Result<Placed, RelayError>>;
    /// `PATCH /sessions/{id}` on the relay that holds the session.
    fn update<'a>(
        &'a self,
        relay: RelayId,
        session_id: &'a str,
        req: UpdateSession,
    ) -> BoxFuture<'a, Result<SessionInfo, RelayError>>;
    /// `DELETE /sessions/{id}`: the final counters, or `None` when the relay did not
    /// know the session (already ended: not an error).
    fn delete<'a>(
        &'a self,
        relay: RelayId,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionInfo>, RelayError>>;
    /// A receiver of [`Ended`] events from now on. The channel is bounded: a receiver
    /// that falls behind gets `RecvError::Lagged` and should then read its sessions
    /// with `GET` through its own means (or end them).
    fn subscribe_ended(&self) -> broadcast::Receiver<Ended>;
}
