//! `/metrics` (Prometheus text format, no per-user labels) and `/health` on a
//! private listener.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::{lock, Inner};

pub(super) async fn serve(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    let shutdown = inner.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(inner);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

async fn metrics(State(inner): State<Arc<Inner>>) -> impl IntoResponse {
    let mut s = crate::turn::Stats::default();
    let (mut live, mut sockets, mut fd_refusals) = (0, 0, 0);
    for shard in &inner.shards {
        let g = lock(shard);
        s.merge(g.server.stats());
        live += g.server.allocation_count();
        sockets += g.relays.open_count();
        fd_refusals += g.relays.fd_limit_refusals();
    }
    let mut o = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "tandem_relay_allocations",
        "Live TURN allocations.",
        live as u64,
    );
    gauge(
        "tandem_relay_relayed_sockets",
        "Open relayed sockets.",
        sockets as u64,
    );
    let _ = writeln!(
        o,
        "# HELP tandem_relay_allocations_refused_fd_limit_total Allocations refused (508) \
         because the open file limit was reached.\n\
         # TYPE tandem_relay_allocations_refused_fd_limit_total counter\n\
         tandem_relay_allocations_refused_fd_limit_total {fd_refusals}"
    );
    let counters: [(&str, &str, u64); 18] = [
        (
            "allocations_created",
            "Allocations created.",
            s.allocations_created,
        ),
        (
            "allocations_expired",
            "Allocations that expired.",
            s.allocations_expired,
        ),
        (
            "allocations_deleted",
            "Allocations deleted by Refresh 0.",
            s.allocations_deleted,
        ),
        (
            "binding_requests",
            "STUN Binding requests.",
            s.binding_requests,
        ),
        ("unauthorized", "401/438 challenges sent.", s.unauthorized),
        (
            "unauthorized_rate_limited",
            "Challenges not sent (rate limit).",
            s.unauthorized_rate_limited,
        ),
        (
            "auth_failures",
            "Requests with wrong credentials.",
            s.auth_failures,
        ),
        (
            "error_responses",
            "Error responses sent.",
            s.error_responses,
        ),
        ("malformed", "Malformed datagrams dropped.", s.malformed),
        ("peer_refused", "Peers refused by policy.", s.peer_refused),
        (
            "quota_refused",
            "Requests refused by a quota.",
            s.quota_refused,
        ),
        (
            "to_peer_packets",
            "Datagrams relayed to peers.",
            s.to_peer_packets,
        ),
        (
            "to_peer_bytes",
            "Payload bytes relayed to peers.",
            s.to_peer_bytes,
        ),
        (
            "to_client_packets",
            "Datagrams relayed to clients.",
            s.to_client_packets,
        ),
        (
            "to_client_bytes",
            "Payload bytes relayed to clients.",
            s.to_client_bytes,
        ),
        (
            "dropped_no_permission",
            "Datagrams dropped without permission.",
            s.dropped_no_permission,
        ),
        (
            "dropped_bandwidth",
            "Datagrams dropped by the bandwidth quota.",
            s.dropped_bandwidth,
        ),
        (
            "amplification_dropped",
            "Error answers not sent (larger than the request).",
            s.amplification_dropped,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            o,
            "# HELP tandem_relay_{name}_total {help}\n# TYPE tandem_relay_{name}_total counter\ntandem_relay_{name}_total {v}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o)
}
