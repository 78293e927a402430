//! Prometheus metrics of the HTTP API. Labels never carry per-user values (no
//! account IDs, logins, numbers or instance IDs): routes are the matched templates.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    auth_failures: Family<KindLabels, Counter>,
    devices_authorised: Family<KindLabels, Counter>,
    devices_refused: Counter,
    devices_revoked: Counter,
}

/// Cheap to clone; all clones share one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_more(|_| {})
    }

    /// As [`Metrics::new`], with more metrics that `register` adds to the same
    /// registry (for example the push service's counters).
    pub fn with_more(register: impl FnOnce(&mut Registry)) -> Metrics {
        // The standard process_* names at the root, ours under tandem_signaling_.
        let mut root = Registry::default();
        root.register_collector(Box::new(tandem_ops::process::ProcessCollector::default()));
        let registry = root.sub_registry_with_prefix("tandem_signaling");
        registry.register_collector(Box::new(tandem_ops::build::BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
        }));
        register(registry);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP API requests by route and status",
            requests.clone(),
        );
        let auth_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "http_auth_failures",
            "Failed HTTP API authentications (kind: admin or basic)",
            auth_failures.clone(),
        );
        let devices_authorised = Family::<KindLabels, Counter>::default();
        registry.register(
            "devices_authorised",
            "Devices authorised, by class",
            devices_authorised.clone(),
        );
        let devices_refused = Counter::default();
        registry.register(
            "devices_refused",
            "Device authorisations refused because a limit was reached",
            devices_refused.clone(),
        );
        let devices_revoked = Counter::default();
        registry.register(
            "devices_revoked",
            "Devices revoked or replaced (their registrations dropped)",
            devices_revoked.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: root,
                requests,
                auth_failures,
                devices_authorised,
                devices_refused,
                devices_revoked,
            }),
        }
    }

    pub fn request(&self, method: &str, route: &str, status: u16) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    pub fn auth_failure(&self, kind: &str) {
        self.inner
            .auth_failures
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn device_authorised(&self, class: &str) {
        self.inner
            .devices_authorised
            .get_or_create(&KindLabels {
                kind: class.to_owned(),
            })
            .inc();
    }

    pub fn device_refused(&self) {
        self.inner.devices_refused.inc();
    }

    pub fn devices_revoked(&self, n: u64) {
        self.inner.devices_revoked.inc_by(n);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}
