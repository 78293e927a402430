//! SIP metrics shared by the endpoint, the registrar and the proxy (a leaf module:
//! it imports none of them). Labels never carry per-user values: methods, status
//! codes, drop reasons, device classes and roles only.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    method: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// Why a SIP message was refused or dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Larger than `sip.max_message_size` (answered 513 when readable).
    Oversized,
    /// Could not be parsed (answered 400/505 when readable).
    Unparseable,
    /// No usable Via: no way to answer.
    NoVia,
    /// Too many requests in flight (UDP): answered 503 with Retry-After.
    InFlightFull,
    /// The server transaction table is full: answered 503 with Retry-After.
    TransactionsFull,
    /// The proxy's `max_transactions` is reached: answered 503 with Retry-After.
    ForksFull,
    /// A response matching no client transaction.
    StrayResponse,
    /// A connection over `sip.max_connections`, closed at once.
    ConnectionsFull,
    /// A connection over `sip.max_connections_per_source`, closed at once.
    SourceConnectionsFull,
    /// A stream message not complete within `sip.message_timeout_secs`: the
    /// connection is closed.
    SlowMessage,
    /// A WebSocket upgrade refused (no `sip` subprotocol, not a WebSocket request) or
    /// not finished in time: the connection is closed.
    WsHandshake,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Unparseable => "unparseable",
            DropReason::NoVia => "no_via",
            DropReason::InFlightFull => "in_flight_full",
            DropReason::TransactionsFull => "transactions_full",
            DropReason::ForksFull => "forks_full",
            DropReason::StrayResponse => "stray_response",
            DropReason::ConnectionsFull => "connections_full",
            DropReason::SourceConnectionsFull => "source_connections_full",
            DropReason::SlowMessage => "slow_message",
            DropReason::WsHandshake => "ws_handshake",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: Family<MethodLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    transactions: Gauge<i64, AtomicI64>,
    drops: Family<ReasonLabels, Counter>,
    registrations: Family<ClassLabels, Counter>,
    forks: Gauge<i64, AtomicI64>,
    auth_failures: Family<RoleLabels, Counter>,
    bans: Counter,
}

/// Cheap to clone; all clones count into the same metrics.
#[derive(Debug, Clone, Default)]
pub struct SipMetrics {
    inner: Arc<Inner>,
}

impl SipMetrics {
    /// Adds every SIP metric to `registry` (prefix `sip_`).
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        registry.register(
            "sip_requests",
            "New SIP requests received, by method",
            i.requests.clone(),
        );
        registry.register(
            "sip_responses",
            "Final and provisional SIP responses we sent to requests we received, by method and code",
            i.responses.clone(),
        );
        registry.register(
            "sip_transactions_active",
            "Server transactions in the transaction table",
            i.transactions.clone(),
        );
        registry.register(
            "sip_drops",
            "SIP messages refused or dropped, by reason",
            i.drops.clone(),
        );
        registry.register(
            "sip_registrations",
            "Successful REGISTERs that saved a binding, by device class",
            i.registrations.clone(),
        );
        registry.register(
            "sip_forks_active",
            "Forked requests whose final response has not gone upstream yet",
            i.forks.clone(),
        );
        registry.register(
            "sip_auth_failures",
            "Failed digest authentications, by role (registrar or proxy)",
            i.auth_failures.clone(),
        );
        registry.register(
            "sip_auth_bans",
            "Sources banned after repeated digest failures",
            i.bans.clone(),
        );
    }

    pub fn request(&self, method: &str) {
        self.inner
            .requests
            .get_or_create(&MethodLabels {
                method: known_method(method).to_owned(),
            })
            .inc();
    }

    pub fn response(&self, method: &str, code: u16) {
        self.inner
            .responses
            .get_or_create(&ResponseLabels {
                method: known_method(method).to_owned(),
                code,
            })
            .inc();
    }

    pub fn transactions(&self, n: usize) {
        self.inner
            .transactions
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn drop(&self, why: DropReason) {
        self.inner
            .drops
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
    }

    pub fn registration(&self, class: &str) {
        self.inner
            .registrations
            .get_or_create(&ClassLabels {
                class: class.to_owned(),
            })
            .inc();
    }

    pub fn forks(&self, n: usize) {
        self.inner.forks.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn auth_failure(&self, role: &'static str) {
        self.inner
            .auth_failures
            .get_or_create(&RoleLabels { role })
            .inc();
    }

    pub fn ban(&self) {
        self.inner.bans.inc();
    }

    /// The drops counted for `why` so far (tests and logs).
    pub fn drops(&self, why: DropReason) -> u64 {
        self.inner
            .drops
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .get()
    }
}

/// Methods from the wire become labels only when we know them (no label per
/// attacker-chosen token).
fn known_method(method: &str) -> &str {
    crate::methods::KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}
