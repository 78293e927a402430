//! The control API over HTTP, with the relay running in-process on 127.0.0.1 port 0:
//! every route, the bad inputs (each answered with `ErrorBody` JSON), ports running
//! out and coming back after DELETE, the media metrics, and the refusal of a public
//! `control-listen` at validation and by the binary.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_relay::Config;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "control-token-0123456789";
const OLD_TOKEN: &str = "older-token-being-rotated-out";

struct TestRelay {
    control: SocketAddr,
    metrics: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestRelay {
    /// A relay on 127.0.0.1 port 0 with the control API and metrics; `extra` is
    /// more TOML.
    async fn start(extra: &str) -> TestRelay {
        let cfg = Config::from_toml(
            &format!(
                r#"
                listening-ip = ["127.0.0.1"]
                listening-port = 0
                user = ["alice:wonderland"]
                control-listen = "127.0.0.1:0"
                control-secret = ["{TOKEN}", "{OLD_TOKEN}"]
                metrics-listen = "127.0.0.1:0"
                io = "portable"
                workers = 1
                {extra}
                "#
            ),
            "inline",
        )
        .unwrap();
        let relay = tandem_relay::Relay::bind(&cfg).await.unwrap();
        let control = relay.control_addr().expect("control API bound");
        let metrics = relay.metrics_addr().expect("metrics bound");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        TestRelay {
            control,
            metrics,
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.control)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {status} {text}"));
        (status, v)
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("relay stops within 10 s")
            .unwrap();
    }
}

/// The value of the sample `series` (name with its labels, as exposed).
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// An RTP packet (version 2, payload type 0) with a 20-byte payload.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0x11, 0x22, 0x33, 0x44]);
    p.extend_from_slice(&[0xab; 20]);
    p
}

fn relay_rtp(info: &Value, leg: &str) -> SocketAddr {
    info[leg]["streams"][0]["relay_rtp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn every_route_and_the_life_of_a_session() {
    let r = TestRelay::start("").await;

    let (s, health) = r.call("GET", "/health", None).await;
    assert_eq!(s, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let (s, doc) = r.call("GET", "/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/sessions/{id}"].is_object(), "{doc}");

    let before = r.metrics().await;
    assert_eq!(sample(&before, "tandem_relay_media_sessions"), 0);
    assert_eq!(
        sample(&before, "tandem_relay_media_sessions_created_total"),
        0
    );

    // The offer: a symmetric-RTP phone behind NAT on each side, rtcp-mux.
    let (s, created) = r
        .call(
            "POST",
            "/sessions",
            Some(json!({
                "call_id": "call-1@example.net",
                "caller": {"learn_first_source": true, "streams": [{"rtcp_mux": true}]}
            })),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["state"], "offered");
    assert_eq!(created["call_id"], "call-1@example.net");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/sessions/{id}");
    let (s, got) = r.call("GET", &path, None).await;
    assert_eq!(s, 200);
    assert_eq!(got["id"], id.as_str());

    let (s, load) = r.call("GET", "/load", None).await;
    assert_eq!(s, 200);
    assert_eq!(load["sessions"], 1, "{load}");
    assert_eq!(load["workers"], 1, "{load}");

    let answer = json!({"answer": {"learn_first_source": true, "streams": [{"rtcp_mux": true}]}});
    let (s, answered) = r.call("PATCH", &path, Some(answer.clone())).await;
    assert_eq!(s, 200, "{answered}");
    assert_eq!(answered["state"], "answered");
    let (s, e) = r.call("PATCH", &path, Some(answer)).await;
    assert_error(s, &e, 409, "already_answered");
    // A later change of the callee leg (re-INVITE) is fine after the answer.
    let (s, changed) = r
        .call(
            "PATCH",
            &path,
            Some(json!({"callee": {"learn_first_source": true, "streams": [{"rtcp_mux": true}]}})),
        )
        .await;
    assert_eq!(s, 200, "{changed}");

    // Media both ways once each side latched.
    let caller_relay = relay_rtp(&changed, "caller");
    let callee_relay = relay_rtp(&changed, "callee");
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 1500];
    let mut forwarded = None;
    for seq in 0..50u16 {
        callee.send_to(&rtp(seq), callee_relay).await.unwrap();
        caller.send_to(&rtp(seq), caller_relay).await.unwrap();
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(200), callee.recv_from(&mut buf)).await
        {
            forwarded = Some((n, from));
            break;
        }
    }
    let (n, from) = forwarded.expect("caller's RTP reaches the callee");
    assert_eq!(from, callee_relay, "sent from the callee leg's relay port");
    assert_eq!(n, rtp(0).len());
    let m = r.metrics().await;
    assert_eq!(sample(&m, "tandem_relay_media_sessions"), 1);
    assert_eq!(sample(&m, "tandem_relay_media_sessions_created_total"), 1);
    assert!(sample(&m, "tandem_relay_media_packets_forwarded_total") >= 1);
    assert!(sample(&m, "tandem_relay_media_bytes_forwarded_total") >= n as u64);
    for series in [
        "tandem_relay_media_dropped_total{reason=\"unlatched\"}",
        "tandem_relay_media_dropped_total{reason=\"bleed\"}",
        "tandem_relay_media_srtp_bridged_total{op=\"decrypt\"}",
        "tandem_relay_media_ice_checks_total",
        "tandem_relay_media_ports_exhausted_total",
        // The TURN metrics are still there.
        "tandem_relay_allocations",
        "tandem_relay_allocations_created_total",
        "tandem_relay_to_peer_packets_total",
    ] {
        sample(&m, series);
    }

    // DELETE gives the final counters; the session then reads as ended.
    let (s, ended) = r.call("DELETE", &path, None).await;
    assert_eq!(s, 200, "{ended}");
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["end_reason"], "deleted");
    assert!(ended["caller"]["counters"]["packets_in"].as_u64().unwrap() >= 1);
    let (s, after) = r.call("GET", &path, None).await;
    assert_eq!(s, 200);
    assert_eq!(after["state"], "ended");
    assert_eq!(after["end_reason"], "deleted");
    let (s, e) = r.call("DELETE", &path, None).await;
    assert_error(s, &e, 404, "not_found");
    let (s, e) = r.call("PATCH", &path, Some(json!({"caller": {}}))).await;
    assert_error(s, &e, 404, "not_found");

    let (_, load) = r.call("GET", "/load", None).await;
    assert_eq!(load["sessions"], 0, "{load}");
    let m = r.metrics().await;
    assert_eq!(sample(&m, "tandem_relay_media_sessions"), 0);
    assert_eq!(
        sample(
            &m,
            "tandem_relay_media_sessions_ended_total{reason=\"deleted\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &m,
            "tandem_relay_media_sessions_ended_total{reason=\"inactivity\"}"
        ),
        0
    );
    r.stop().await;
}

#[tokio::test]
async fn bad_requests_are_answered_with_error_bodies() {
    let r = TestRelay::start("").await;

    // Authentication, on every route (unknown ones too).
    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/load"),
        ("GET", "/openapi.json"),
        ("POST", "/sessions"),
        ("GET", "/sessions/x"),
        ("GET", "/nowhere"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let mut req = r.http.request(m.clone(), r.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{method} {path} {token:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{body}");
        }
    }
    // Counted by reason, 6 routes each: no header, or `Bearer` without a token (the
    // trailing space is not kept on the wire), is missing; a wrong token is wrong.
    let m = r.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tandem_relay_control_auth_failures_total{reason=\"missing\"}"
        ),
        12
    );
    assert_eq!(
        sample(
            &m,
            "tandem_relay_control_auth_failures_total{reason=\"wrong\"}"
        ),
        6
    );
    let resp = r
        .http
        .get(r.url("/health"))
        .basic_auth("admin", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "Basic is not Bearer");
    // The scheme is case-insensitive, and every configured token is accepted.
    for auth in [format!("bearer {TOKEN}"), format!("Bearer {OLD_TOKEN}")] {
        let resp = r
            .http
            .get(r.url("/health"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }

    // Unknown sessions and routes.
    let (s, e) = r.call("GET", "/sessions/0123456789abcdef", None).await;
    assert_error(s, &e, 404, "not_found");
    let (s, e) = r.call("DELETE", "/sessions/nope", None).await;
    assert_error(s, &e, 404, "not_found");
    let (s, e) = r
        .call("PATCH", "/sessions/nope", Some(json!({"caller": {}})))
        .await;
    assert_error(s, &e, 404, "not_found");
    let (s, e) = r.call("GET", "/nowhere", None).await;
    assert_error(s, &e, 404, "not_found");
    let (s, e) = r.call("PUT", "/sessions", None).await;
    assert_error(s, &e, 405, "bad_request");

    // Bodies the API cannot take: serde's message, as JSON.
    let raw = |body: &'static str, content_type: &'static str| {
        r.http
            .post(r.url("/sessions"))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
    };
    for (body, ct, hint) in [
        ("{\"caller\": ", "application/json", "EOF"),
        ("not json", "application/json", "expected"),
        (
            "{\"caller\": {}, \"colour\": 1}",
            "application/json",
            "colour",
        ),
        (
            "{\"caller\": {\"streams\": [{\"rtcp_muxx\": true}]}}",
            "application/json",
            "rtcp_muxx",
        ),
        ("{}", "application/json", "caller"),
        ("{\"caller\": {}}", "text/plain", "application/json"),
    ] {
        let resp = raw(body, ct).send().await.unwrap();
        let status = resp.status().as_u16();
        let e: Value = resp.json().await.unwrap();
        assert_error(status, &e, 400, "bad_request");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(hint), "{body}: {msg}");
    }
    let big = format!(
        "{{\"call_id\": \"{}\", \"caller\": {{}}}}",
        "x".repeat(70 * 1024)
    );
    let resp = r
        .http
        .post(r.url("/sessions"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let e: Value = resp.json().await.unwrap();
    assert_eq!(status, 413, "{e}");
    assert_eq!(e["error"], "bad_request");

    // Requests that parse but that the relay refuses.
    let (s, e) = r
        .call(
            "POST",
            "/sessions",
            Some(json!({"caller": {"streams": []}})),
        )
        .await;
    assert_error(s, &e, 400, "bad_request");
    let (s, e) = r
        .call(
            "POST",
            "/sessions",
            Some(json!({"caller": {}, "family": "ipv6"})),
        )
        .await;
    assert_error(s, &e, 400, "bad_request");
    assert!(e["message"].as_str().unwrap().contains("family"), "{e}");

    let (s, created) = r
        .call(
            "POST",
            "/sessions",
            Some(json!({"caller": {"streams": [{"rtcp_mux": true}]}})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let path = format!("/sessions/{}", created["id"].as_str().unwrap());
    let (s, e) = r
        .call(
            "PATCH",
            &path,
            Some(json!({"callee": {"learn_first_source": true}})),
        )
        .await;
    assert_error(s, &e, 409, "not_answered");
    let (s, e) = r.call("PATCH", &path, Some(json!({}))).await;
    assert_error(s, &e, 400, "bad_request");
    let (s, _) = r.call("DELETE", &path, None).await;
    assert_eq!(s, 200);
    r.stop().await;
}

/// Two free consecutive UDP ports on 127.0.0.1 (free when looked at), below both
/// the default relay range (49152-65535), from which the other tests in this file
/// take ports, and the usual ephemeral range (from 32768).
fn free_port_pair() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for k in 0..500u32 {
        let p = 20_000 + ((seed.wrapping_add(k * 7919) % 6_000) * 2) as u16;
        let a = std::net::UdpSocket::bind(("127.0.0.1", p));
        let b = std::net::UdpSocket::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no two free consecutive ports");
}

#[tokio::test]
async fn ports_run_out_with_503_and_come_back_after_delete() {
    let p = free_port_pair();
    // Room for one session with rtcp-mux: one port per leg.
    let r = TestRelay::start(&format!("min-port = {p}\nmax-port = {}\n", p + 1)).await;
    let offer = json!({"caller": {"streams": [{"rtcp_mux": true}]}});
    let (s, first) = r.call("POST", "/sessions", Some(offer.clone())).await;
    assert_eq!(s, 201, "{first}");

    let resp = r
        .http
        .post(r.url("/sessions"))
        .bearer_auth(TOKEN)
        .json(&offer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"], "ports_exhausted", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no free relay port"),
        "{e}"
    );
    let m = r.metrics().await;
    assert!(sample(&m, "tandem_relay_media_ports_exhausted_total") >= 1);

    let (s, _) = r
        .call(
            "DELETE",
            &format!("/sessions/{}", first["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
    // The worker closes the deleted session's sockets on its next turn (the datapath
    // owns them), at most 50 ms later; until then the range is still full.
    let mut second = Value::Null;
    for _ in 0..100 {
        let (s, v) = r.call("POST", "/sessions", Some(offer.clone())).await;
        second = v;
        if s != 503 {
            assert_eq!(s, 201, "{second}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        second["id"].is_string(),
        "the deleted session's ports are free again: {second}"
    );
    assert_eq!(relay_rtp(&second, "caller").port() & !1, p);
    r.stop().await;
}

#[tokio::test]
async fn the_session_limit_is_answered_like_ports_exhausted() {
    let r = TestRelay::start("media-max-sessions = 1\n").await;
    let offer = json!({"caller": {"streams": [{"rtcp_mux": true}]}});
    let (s, _) = r.call("POST", "/sessions", Some(offer.clone())).await;
    assert_eq!(s, 201);
    let resp = r
        .http
        .post(r.url("/sessions"))
        .bearer_auth(TOKEN)
        .json(&offer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"], "ports_exhausted", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("session limit"),
        "{e}"
    );
    r.stop().await;
}

/// `GET /sessions/ended` reports a session the relay ended by inactivity and one that
/// was deleted, with their call ids and reasons, after a cursor; a bad cursor is 400.
#[tokio::test]
async fn sessions_ended_are_listed_after_a_cursor() {
    let r = TestRelay::start("").await;
    let (s, page) = r.call("GET", "/sessions/ended", None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["sessions"], json!([]));
    assert_eq!(page["next"], 0);
    assert_eq!(page["missed"], false);
    let epoch = page["epoch"].as_str().unwrap().to_owned();

    let (s, idle) = r
        .call(
            "POST",
            "/sessions",
            Some(json!({
                "call_id": "idle@example.net",
                "caller": {"streams": [{"rtcp_mux": true}]},
                "inactivity_timeout_secs": 1
            })),
        )
        .await;
    assert_eq!(s, 201, "{idle}");
    let (s, gone) = r
        .call(
            "POST",
            "/sessions",
            Some(json!({"call_id": "gone@example.net", "caller": {}})),
        )
        .await;
    assert_eq!(s, 201, "{gone}");
    let (s, _) = r
        .call(
            "DELETE",
            &format!("/sessions/{}", gone["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);

    // The inactivity timer runs on the relay's own clock: wait for it (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (s, page) = r.call("GET", "/sessions/ended?after=0", None).await;
        assert_eq!(s, 200, "{page}");
        if page["sessions"].as_array().unwrap().len() == 2 {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle session did not end: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(page["epoch"], epoch.as_str());
    let list = page["sessions"].as_array().unwrap();
    assert_eq!(list[0]["id"], gone["id"]);
    assert_eq!(list[0]["call_id"], "gone@example.net");
    assert_eq!(list[0]["reason"], "deleted");
    assert_eq!(list[0]["seq"], 1);
    assert_eq!(list[1]["id"], idle["id"]);
    assert_eq!(list[1]["call_id"], "idle@example.net");
    assert_eq!(list[1]["reason"], "inactivity");
    assert_eq!(page["next"], 2);
    assert_eq!(page["more"], false);

    let (s, page) = r.call("GET", "/sessions/ended?after=1", None).await;
    assert_eq!(s, 200);
    assert_eq!(page["sessions"].as_array().unwrap().len(), 1);
    let (s, page) = r.call("GET", "/sessions/ended?after=2", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (page["sessions"].clone(), page["next"].clone()),
        (json!([]), json!(2))
    );

    let (s, e) = r.call("GET", "/sessions/ended?after=x", None).await;
    assert_error(s, &e, 400, "bad_request");
    let resp = r.http.get(r.url("/sessions/ended")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    r.stop().await;
}

fn public_control_config(extra: &str) -> Config {
    Config::from_toml(
        &format!(
            "listening-ip = [\"127.0.0.1\"]\nuser = [\"a:b\"]\n\
             control-listen = \"192.0.2.1:0\"\ncontrol-secret = [\"{TOKEN}\"]\n{extra}"
        ),
        "inline",
    )
    .unwrap()
}

#[test]
fn a_public_control_listen_is_refused_unless_allowed() {
    // Validation only: a public address is never bound in tests.
    let e = public_control_config("")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("control-listen"), "{e}");
    public_control_config("control-allow-public = true\n")
        .validate()
        .unwrap();
}

#[test]
fn the_binary_refuses_a_public_control_listen_naming_the_key() {
    // Refused at validation, before anything is bound.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--user",
            "a:b",
            "--control-listen",
            "8.8.8.8:9000",
        ])
        .env_remove("TANDEM_CONFIG")
        .env("TANDEM_CONTROL_SECRET", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("control-listen"), "{err}");
}
