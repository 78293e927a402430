//! The relay pool against fake relays (axum on 127.0.0.1 port 0, speaking the control
//! API's types): placement by sessions per weight, a relay down after the configured
//! failed rounds and back after a good one, sessions ended by the relay, by a relay
//! going down and by a restart announced as `Ended` events, DELETE of an unknown
//! session, refusals passed on with the relay's error body. The test drives the
//! health rounds itself (`check_all`), so nothing waits on a timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tandem_control::{
    CreateSession, EndReason, EndedPage, EndedSession, ErrorBody, Health, LegCounters, LegInfo,
    Load, SessionInfo, SessionState, UpdateSession,
};
use tandem_signaling::relays::metrics::RelayMetrics;
use tandem_signaling::relays::{
    Ended, EndedReason, MediaRelays, PoolConfig, RelayConfig, RelayError, RelayId, RelayPool,
};
use tokio::sync::broadcast::error::TryRecvError;

const TOKEN: &str = "fake-relay-token-0123";

#[derive(Default)]
struct Fake {
    healthy: bool,
    epoch: String,
    live: HashMap<String, Option<String>>,
    ended: Vec<EndedSession>,
    next_id: u64,
    /// Answer POST /sessions with 503 ports_exhausted.
    full: bool,
    deletes: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn info(id: &str, call_id: Option<String>) -> SessionInfo {
    let leg = LegInfo {
        ice: false,
        learn_first_source: true,
        srtp: None,
        streams: vec![],
        counters: LegCounters::default(),
    };
    SessionInfo {
        id: id.to_owned(),
        call_id,
        state: SessionState::Offered,
        end_reason: None,
        age_secs: 0,
        caller: leg.clone(),
        callee: leg,
    }
}

fn err(status: StatusCode, code: &str) -> (StatusCode, Json<ErrorBody>) {
    (
        status,
        Json(ErrorBody {
            error: code.to_owned(),
            message: format!("fake relay says {code}"),
        }),
    )
}

type Answer<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn authorised(h: &axum::http::HeaderMap) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    let want = format!("Bearer {TOKEN}");
    match h.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == want => Ok(()),
        _ => Err(err(StatusCode::UNAUTHORIZED, "unauthorized")),
    }
}

async fn health(State(s): State<Shared>, h: axum::http::HeaderMap) -> Answer<Health> {
    authorised(&h)?;
    if !s.lock().unwrap().healthy {
        return Err(err(StatusCode::INTERNAL_SERVER_ERROR, "sick"));
    }
    Ok(Json(Health {
        status: "ok".into(),
        version: "test".into(),
    }))
}

async fn load(State(s): State<Shared>, h: axum::http::HeaderMap) -> Answer<Load> {
    authorised(&h)?;
    let f = s.lock().unwrap();
    Ok(Json(Load {
        sessions: f.live.len() as u64,
        allocations: 0,
        packets_per_sec: 0,
        workers: 1,
        draining: false,
    }))
}

async fn create(
    State(s): State<Shared>,
    h: axum::http::HeaderMap,
    Json(req): Json<CreateSession>,
) -> Result<(StatusCode, Json<SessionInfo>), (StatusCode, Json<ErrorBody>)> {
    authorised(&h)?;
    let mut f = s.lock().unwrap();
    if f.full {
        return Err(err(StatusCode::SERVICE_UNAVAILABLE, "ports_exhausted"));
    }
    f.next_id += 1;
    let id = format!("{:032x}", f.next_id);
    f.live.insert(id.clone(), req.call_id.clone());
    Ok((StatusCode::CREATED, Json(info(&id, req.call_id))))
}

async fn update(
    State(s): State<Shared>,
    h: axum::http::HeaderMap,
    Path(id): Path<String>,
    Json(_req): Json<UpdateSession>,
) -> Answer<SessionInfo> {
    authorised(&h)?;
    let f = s.lock().unwrap();
    match f.live.get(&id) {
        Some(_) => Err(err(StatusCode::CONFLICT, "already_answered")),
        None => Err(err(StatusCode::NOT_FOUND, "not_found")),
    }
}

async fn remove(
    State(s): State<Shared>,
    h: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Answer<SessionInfo> {
    authorised(&h)?;
    let mut f = s.lock().unwrap();
    f.deletes.push(id.clone());
    let Some(call_id) = f.live.remove(&id) else {
        return Err(err(StatusCode::NOT_FOUND, "not_found"));
    };
    end(&mut f, &id, call_id.clone(), EndReason::Deleted);
    Ok(Json(info(&id, call_id)))
}

fn end(f: &mut Fake, id: &str, call_id: Option<String>, reason: EndReason) {
    let seq = f.ended.len() as u64 + 1;
    f.ended.push(EndedSession {
        seq,
        id: id.to_owned(),
        call_id,
        reason,
    });
}

#[derive(serde::Deserialize)]
struct After {
    after: u64,
}

async fn ended(
    State(s): State<Shared>,
    h: axum::http::HeaderMap,
    Query(q): Query<After>,
) -> Answer<EndedPage> {
    authorised(&h)?;
    let f = s.lock().unwrap();
    let sessions: Vec<EndedSession> = f
        .ended
        .iter()
        .filter(|e| e.seq > q.after)
        .cloned()
        .collect();
    Ok(Json(EndedPage {
        epoch: f.epoch.clone(),
        next: sessions.last().map_or(q.after, |e| e.seq),
        sessions,
        missed: false,
        more: false,
    }))
}

async fn fake_relay() -> (SocketAddr, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Fake {
        healthy: true,
        epoch: "first".into(),
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/health", get(health))
        .route("/load", get(load))
        .route("/sessions", post(create))
        .route("/sessions/ended", get(ended))
        .route(
            "/sessions/{id}",
            axum::routing::patch(update).delete(remove),
        )
        .with_state(shared.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, shared)
}

fn relay(addr: SocketAddr, weight: u32) -> RelayConfig {
    RelayConfig {
        control_url: format!("http://{addr}"),
        secret: Some(TOKEN.into()),
        secret_file: None,
        public_address: "relay.example.net".into(),
        weight,
    }
}

fn offer(call_id: &str) -> CreateSession {
    serde_json::from_value(serde_json::json!({"call_id": call_id, "caller": {}})).unwrap()
}

fn metrics_text(m: &RelayMetrics) -> String {
    let mut r = prometheus_client::registry::Registry::with_prefix("tandem_signaling");
    m.register(&mut r);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    out
}

/// Every event now in the channel.
fn drain(rx: &mut tokio::sync::broadcast::Receiver<Ended>) -> Vec<Ended> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn placement_health_and_ended_sessions() {
    let (a0, f0) = fake_relay().await;
    let (a1, f1) = fake_relay().await;
    let metrics = RelayMetrics::default();
    let pool = Arc::new(
        RelayPool::new(
            &[relay(a0, 1), relay(a1, 2)],
            &PoolConfig::default(),
            metrics.clone(),
        )
        .unwrap(),
    );
    let relays: Arc<dyn MediaRelays> = pool.clone();
    let mut ended = relays.subscribe_ended();

    // Down until the first round passes.
    assert!(matches!(
        relays.create(offer("c0")).await,
        Err(RelayError::NoRelay)
    ));
    pool.check_all(Instant::now()).await;
    assert!(pool.status().iter().all(|s| s.up), "{:?}", pool.status());
    assert!(
        metrics_text(&metrics).contains(&format!("tandem_signaling_relay_up{{relay=\"{a1}\"}} 1"))
    );

    // Three sessions: relay 1 has twice the weight, so it takes two.
    let mut placed = Vec::new();
    for i in 1..=3 {
        placed.push(relays.create(offer(&format!("call-{i}"))).await.unwrap());
    }
    let on = |r: usize| placed.iter().filter(|p| p.relay == RelayId(r)).count();
    assert_eq!((on(0), on(1)), (1, 2), "{placed:?}");
    let status = pool.status();
    assert_eq!((status[0].sessions, status[1].sessions), (1, 2));
    assert_eq!((status[0].live, status[1].live), (1, 2));

    // The relay ends one by inactivity: announced with its call id, once.
    let p = placed
        .iter()
        .find(|p| p.relay == RelayId(1))
        .unwrap()
        .clone();
    {
        let mut f = f1.lock().unwrap();
        let call_id = f.live.remove(&p.session.id).unwrap();
        end(&mut f, &p.session.id, call_id, EndReason::Inactivity);
    }
    pool.check_all(Instant::now()).await;
    pool.check_all(Instant::now()).await;
    assert_eq!(
        drain(&mut ended),
        [Ended {
            relay: RelayId(1),
            session_id: p.session.id.clone(),
            call_id: p.session.call_id.clone(),
            reason: EndedReason::Inactivity,
        }]
    );

    // Deleting through the pool: no event; an unknown session is Ok(None).
    let p0 = placed
        .iter()
        .find(|p| p.relay == RelayId(0))
        .unwrap()
        .clone();
    assert!(relays
        .delete(p0.relay, &p0.session.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(relays.delete(p0.relay, &p0.session.id).await.unwrap(), None);
    assert_eq!(
        relays.delete(RelayId(0), "nothing-here").await.unwrap(),
        None
    );
    pool.check_all(Instant::now()).await;
    assert_eq!(drain(&mut ended), []);
    assert!(matches!(
        relays.delete(RelayId(7), "x").await,
        Err(RelayError::UnknownRelay(RelayId(7)))
    ));

    // A refusal carries the relay's status and error body.
    let p1 = placed
        .iter()
        .find(|q| q.relay == RelayId(1) && q.session.id != p.session.id)
        .unwrap()
        .clone();
    match relays
        .update(p1.relay, &p1.session.id, UpdateSession::default())
        .await
    {
        Err(RelayError::Refused {
            relay,
            status,
            body,
        }) => {
            assert_eq!((relay, status), (RelayId(1), 409));
            assert_eq!(body.error, "already_answered");
        }
        other => panic!("{other:?}"),
    }

    // Relay 1 stops answering health checks: after two failed rounds it is down and
    // its live session is announced as ended; new sessions go to relay 0.
    f1.lock().unwrap().healthy = false;
    pool.check_all(Instant::now()).await;
    assert!(pool.status()[1].up, "one failure is not enough");
    assert_eq!(drain(&mut ended), []);
    pool.check_all(Instant::now()).await;
    assert!(!pool.status()[1].up);
    let events = drain(&mut ended);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, EndedReason::RelayDown);
    assert_eq!(events[0].session_id, p1.session.id);
    assert!(
        metrics_text(&metrics).contains(&format!("tandem_signaling_relay_up{{relay=\"{a1}\"}} 0"))
    );
    for i in 0..3 {
        let p = relays.create(offer(&format!("later-{i}"))).await.unwrap();
        assert_eq!(p.relay, RelayId(0));
    }

    // It comes back: used again (it has no sessions, relay 0 has three).
    f1.lock().unwrap().healthy = true;
    pool.check_all(Instant::now()).await;
    assert!(pool.status()[1].up);
    assert_eq!(
        relays.create(offer("back")).await.unwrap().relay,
        RelayId(1)
    );

    // Relay 0 restarts (a new epoch): its sessions are gone.
    {
        let mut f = f0.lock().unwrap();
        f.epoch = "second".into();
        f.live.clear();
        f.ended.clear();
    }
    pool.check_all(Instant::now()).await;
    let events = drain(&mut ended);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e.relay == RelayId(0) && e.reason == EndedReason::RelayRestarted));

    // A full relay passes the session on to the next one (relay 0, emptied by its
    // restart, comes first).
    f0.lock().unwrap().full = true;
    for _ in 0..2 {
        assert_eq!(
            relays.create(offer("spill")).await.unwrap().relay,
            RelayId(1)
        );
    }
    f1.lock().unwrap().full = true;
    match relays.create(offer("nowhere")).await {
        Err(RelayError::Refused {
            status: 503, body, ..
        }) => {
            assert_eq!(body.error, "ports_exhausted")
        }
        other => panic!("{other:?}"),
    }
    let text = metrics_text(&metrics);
    for series in [
        "tandem_signaling_relay_session_requests_total{op=\"create\",outcome=\"ok\"}",
        "tandem_signaling_relay_session_requests_total{op=\"create\",outcome=\"refused\"}",
        "tandem_signaling_relay_session_requests_total{op=\"create\",outcome=\"no_relay\"}",
        "tandem_signaling_relay_session_requests_total{op=\"delete\",outcome=\"not_found\"}",
        "tandem_signaling_relay_sessions_ended_total{reason=\"relay_down\"}",
        "tandem_signaling_relay_sessions_ended_total{reason=\"inactivity\"}",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
}

/// A relay that does not answer at all (nothing listens) times out or fails to
/// connect within the request timeout, and the pool says no relay is available.
#[tokio::test]
async fn an_unreachable_relay_is_never_used() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let cfg = PoolConfig {
        request_timeout_ms: 300,
        ..PoolConfig::default()
    };
    let pool = Arc::new(RelayPool::new(&[relay(addr, 1)], &cfg, RelayMetrics::default()).unwrap());
    let started = Instant::now();
    pool.check_all(Instant::now()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!pool.status()[0].up);
    assert!(matches!(
        pool.create(offer("x")).await,
        Err(RelayError::NoRelay)
    ));
}
