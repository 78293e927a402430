//! `/metrics` (OpenMetrics text, no per-user or per-session labels) and `/health` on
//! a private listener.
//!
//! Nothing is counted on the packet path for this: the TURN and media cores keep
//! their own counters, and a collector reads every worker's shard once per scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{lock, Inner};
use crate::control::ApiStats;
use crate::media::MediaStats;

/// What the handlers read.
struct MetricsState {
    registry: Registry,
    inner: Arc<Inner>,
}

/// Serve `/metrics`, `/health` (liveness: the process answers) and `/ready`
/// (readiness: 503 once draining); `api` are the control API's counters when it runs.
pub(super) async fn serve(
    inner: Arc<Inner>,
    api: Option<Arc<ApiStats>>,
    listener: tokio::net::TcpListener,
) {
    let shutdown = inner.shutdown.clone();
    // The standard process_* names at the root, ours under tandem_relay_.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(tandem_ops::process::ProcessCollector::default()));
    let own = registry.sub_registry_with_prefix("tandem_relay");
    own.register_collector(Box::new(tandem_ops::build::BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
    }));
    own.register_collector(Box::new(Shards(inner.clone())));
    if let Some(api) = api {
        own.register_collector(Box::new(Api(api)));
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(Arc::new(MetricsState { registry, inner }));
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

async fn ready(State(state): State<Arc<MetricsState>>) -> impl IntoResponse {
    if state
        .inner
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (axum::http::StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(state): State<Arc<MetricsState>>) -> impl IntoResponse {
    let mut o = String::new();
    if prometheus_client::encoding::text::encode(&mut o, &state.registry).is_err() {
        o.clear();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        o,
    )
}

/// Reads the counters of every worker's shard at scrape time.
#[derive(Debug)]
struct Shards(Arc<Inner>);

/// Everything one scrape reports, summed over the workers.
#[derive(Default)]
struct Snapshot {
    turn: crate::turn::Stats,
    allocations: u64,
    sockets: u64,
    fd_refusals: u64,
    media: MediaStats,
    media_sessions: u64,
    tcp_allocations: u64,
    tcp_connections: u64,
}

impl Shards {
    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for shard in &self.0.shards {
            let g = lock(shard);
            s.turn.merge(g.server.stats());
            s.allocations += g.server.allocation_count() as u64;
            let (tcp_allocations, tcp_connections) = g.server.tcp_counts();
            s.tcp_allocations += tcp_allocations as u64;
            s.tcp_connections += tcp_connections as u64;
            s.sockets += g.relays.open_count() as u64;
            s.fd_refusals += g.relays.fd_limit_refusals();
            s.media.merge(g.media.stats());
            s.media_sessions += g.media.session_count() as u64;
        }
        s
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter; `name` without the `_total` suffix, which the encoder adds.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// A counter with one label, one sample per `(value, count)`.
fn counter_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Shards {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.snapshot();
        let t = &s.turn;
        gauge(
            &mut e,
            "allocations",
            "Live TURN allocations.",
            s.allocations,
        )?;
        gauge(
            &mut e,
            "relayed_sockets",
            "Open relayed sockets.",
            s.sockets,
        )?;
        {
            use std::sync::atomic::Ordering::Relaxed;
            let st = &self.0.stream_stats;
            gauge(
                &mut e,
                "stream_connections",
                "Open TURN over TCP and TLS client connections.",
                st.open.load(Relaxed),
            )?;
            counter(
                &mut e,
                "stream_connections_accepted",
                "TURN over TCP and TLS client connections accepted.",
                st.accepted.load(Relaxed),
            )?;
            counter_by(
                &mut e,
                "stream_connections_refused",
                "TURN over TCP and TLS connections refused or failed before serving.",
                "reason",
                &[
                    ("total_limit", st.refused_total_limit.load(Relaxed)),
                    ("per_ip_limit", st.refused_per_ip_limit.load(Relaxed)),
                    ("tls_handshake", st.handshake_failed.load(Relaxed)),
                ],
            )?;
            counter_by(
                &mut e,
                "stream_connections_dropped",
                "TURN over TCP and TLS connections the relay closed.",
                "reason",
                &[
                    ("idle", st.closed_idle.load(Relaxed)),
                    ("slow_reader", st.closed_slow_reader.load(Relaxed)),
                    ("bad_frame", st.closed_bad_frame.load(Relaxed)),
                ],
            )?;
            counter(
                &mut e,
                "tls_reloads",
                "TLS certificate and key reloads (SIGHUP).",
                st.tls_reloads.load(Relaxed),
            )?;
        }
        counter(
            &mut e,
            "allocations_refused_fd_limit",
            "Allocations refused (508) because the open file limit was reached.",
            s.fd_refusals,
        )?;
        let turn: [(&str, &str, u64); 18] = [
            (
                "allocations_created",
                "Allocations created.",
                t.allocations_created,
            ),
            (
                "allocations_expired",
                "Allocations that expired.",
                t.allocations_expired,
            ),
            (
                "allocations_deleted",
                "Allocations deleted by Refresh 0.",
                t.allocations_deleted,
            ),
            (
                "binding_requests",
                "STUN Binding requests.",
                t.binding_requests,
            ),
            ("unauthorized", "401/438 challenges sent.", t.unauthorized),
            (
                "unauthorized_rate_limited",
                "Challenges not sent (rate limit).",
                t.unauthorized_rate_limited,
            ),
            (
                "auth_failures",
                "Requests with wrong credentials.",
                t.auth_failures,
            ),
            (
                "error_responses",
                "Error responses sent.",
                t.error_responses,
            ),
            ("malformed", "Malformed datagrams dropped.", t.malformed),
            ("peer_refused", "Peers refused by policy.", t.peer_refused),
            (
                "quota_refused",
                "Requests refused by a quota.",
                t.quota_refused,
            ),
            (
                "to_peer_packets",
                "Datagrams relayed to peers.",
                t.to_peer_packets,
            ),
            (
                "to_peer_bytes",
                "Payload bytes relayed to peers.",
                t.to_peer_bytes,
            ),
            (
                "to_client_packets",
                "Datagrams relayed to clients.",
                t.to_client_packets,
            ),
            (
                "to_client_bytes",
                "Payload bytes relayed to clients.",
                t.to_client_bytes,
            ),
            (
                "dropped_no_permission",
                "Datagrams dropped without permission.",
                t.dropped_no_permission,
            ),
            (
                "dropped_bandwidth",
                "Datagrams dropped by the bandwidth quota.",
                t.dropped_bandwidth,
            ),
            (
                "amplification_dropped",
                "Error answers not sent (larger than the request).",
                t.amplification_dropped,
            ),
        ];
        for (name, help, v) in turn {
            counter(&mut e, name, help, v)?;
        }
        gauge(
            &mut e,
            "tcp_allocations",
            "Live TCP allocations (RFC 6062).",
            s.tcp_allocations,
        )?;
        gauge(
            &mut e,
            "tcp_connections",
            "Peer connections of TCP allocations, pending and bound.",
            s.tcp_connections,
        )?;
        counter(
            &mut e,
            "tcp_allocations_created",
            "TCP allocations created.",
            t.tcp_allocations_created,
        )?;
        counter_by(
            &mut e,
            "tcp_connections_opened",
            "Peer connections of TCP allocations, by who opened them.",
            "by",
            &[("connect", t.tcp_connects), ("peer", t.tcp_attempts)],
        )?;
        counter_by(
            &mut e,
            "tcp_connections_failed",
            "Peer connections of TCP allocations that failed or were refused.",
            "reason",
            &[
                ("connect_failed", t.tcp_connect_failures),
                ("refused", t.tcp_refused),
                ("bind_timeout", t.tcp_bind_timeouts),
            ],
        )?;
        counter_by(
            &mut e,
            "tcp_connection_binds",
            "ConnectionBind requests, by outcome.",
            "outcome",
            &[("bound", t.tcp_binds), ("refused", t.tcp_bind_refused)],
        )?;

        let m = &s.media;
        gauge(
            &mut e,
            "media_sessions",
            "Live media sessions.",
            s.media_sessions,
        )?;
        counter(
            &mut e,
            "media_sessions_created",
            "Media sessions created.",
            m.sessions_created,
        )?;
        counter_by(
            &mut e,
            "media_sessions_ended",
            "Media sessions ended, by reason.",
            "reason",
            &[
                ("deleted", m.ended_deleted),
                ("inactivity", m.ended_inactivity),
                ("max_duration", m.ended_max_duration),
                ("shutdown", m.ended_shutdown),
            ],
        )?;
        counter(
            &mut e,
            "media_packets_forwarded",
            "Media datagrams forwarded between the legs.",
            m.packets_forwarded,
        )?;
        counter(
            &mut e,
            "media_bytes_forwarded",
            "Media bytes forwarded between the legs.",
            m.bytes_forwarded,
        )?;
        counter(
            &mut e,
            "media_ice_checks",
            "ICE connectivity checks that authenticated.",
            m.ice_checks,
        )?;
        let d = &m.dropped;
        counter_by(
            &mut e,
            "media_dropped",
            "Media datagrams dropped, by reason.",
            "reason",
            &[
                ("unauthenticated", d.unauthenticated),
                ("bleed", d.bleed),
                ("unlatched", d.unlatched),
                ("srtp_auth", d.srtp_auth),
                ("malformed", d.malformed),
            ],
        )?;
        counter_by(
            &mut e,
            "media_srtp_bridged",
            "Packets transformed by SRTP bridging: decrypted from or encrypted to an SRTP leg.",
            "op",
            &[("decrypt", m.srtp_decrypted), ("encrypt", m.srtp_encrypted)],
        )?;
        counter(
            &mut e,
            "media_ports_exhausted",
            "Media sessions or updates refused for want of a free relay port.",
            m.ports_exhausted,
        )?;
        Ok(())
    }
}

/// The control API's counters.
#[derive(Debug)]
struct Api(Arc<ApiStats>);

impl Collector for Api {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        counter_by(
            &mut e,
            "control_auth_failures",
            "Control API requests refused (401): without a bearer token or with a wrong one.",
            "reason",
            &[
                ("missing", self.0.auth_missing.load(Relaxed)),
                ("wrong", self.0.auth_wrong.load(Relaxed)),
            ],
        )
    }
}
