//! Metrics of the relay pool. Labels are the relay (`host:port` of its control URL:
//! infrastructure, not personal data), the operation and its outcome.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Inner {
    up: Family<RelayLabels, Gauge<i64, AtomicI64>>,
    requests: Family<RequestLabels, Counter>,
    ended: Family<ReasonLabels, Counter>,
}

/// Cheap to clone; all clones count into the same metrics.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    inner: Arc<Inner>,
}

impl RelayMetrics {
    /// Adds the pool's metrics to `registry` (prefix `relay_`).
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        registry.register(
            "relay_up",
            "Whether a media relay passes its health checks (1) or is down (0), by relay",
            i.up.clone(),
        );
        registry.register(
            "relay_session_requests",
            "Session requests to the relay pool, by operation (create, update, delete) \
             and outcome (ok, not_found, no_relay, refused, timeout, transport)",
            i.requests.clone(),
        );
        registry.register(
            "relay_sessions_ended",
            "Sessions that ended without signaling deleting them, by reason",
            i.ended.clone(),
        );
    }

    pub(crate) fn set_up(&self, relay: &str, up: bool) {
        self.inner
            .up
            .get_or_create(&RelayLabels {
                relay: relay.to_owned(),
            })
            .set(i64::from(up));
    }

    pub(crate) fn request(&self, op: &'static str, outcome: &'static str) {
        self.inner
            .requests
            .get_or_create(&RequestLabels { op, outcome })
            .inc();
    }

    pub(crate) fn ended(&self, reason: &'static str) {
        self.inner
            .ended
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
