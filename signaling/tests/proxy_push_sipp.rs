//! Calls to devices that are offline, with sipp (Debian `sip-tester`) as every SIP
//! party and a local mock push service (webhook provider) recording the pushes. The
//! whole server runs in-process on 127.0.0.1 with free ports, `push_after_secs = 3`
//! and `park_timeout_secs = 5`. Each scenario has its own account:
//!
//! - push flow: one device registered (rings), two authorised but offline with push
//!   targets (one from the device API, one from RFC 8599 parameters of an earlier
//!   REGISTER): both get `incoming_call` at INVITE time; one registers, gets the
//!   parked call as a new branch and answers; the other gets `call_cancelled`, the
//!   ringing one a CANCEL with "Call completed elsewhere";
//! - the caller hangs up: `missed_call` to the pushed device;
//! - the 3-second rule: a registered device that never answers anything (stale
//!   registration) is pushed 3 s after the INVITE;
//! - the no-answer rule: nobody joins within the park time, the call goes to the
//!   account's forward URI (a sipp "voicemail") and is answered there;
//! - numbers dialled by an account with country code 48 on a server whose default is
//!   1: `+48 600…`, `0048600…` and `0600…` reach the same account; from outside,
//!   `0600…` is read with the default and is nobody;
//! - deferred messages: two MESSAGEs to an account whose three devices are offline
//!   get 202 and `text_message` pushes (a 40-character excerpt); after a restart each
//!   device receives both when it registers, in order, once, with their Date.
//!
//! Without sipp on PATH the test fails when `CI` is set and is skipped otherwise.

mod push_support;
mod sipp_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use push_support::{Mock, Recorded};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sipp_support::{
    common_args, finish, free_udp_port, instance, run_device, scenario, sipp_available, spawn_uas,
    summary,
};
use tandem_signaling::push::WebhookConfig;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "sipp-push-admin-token-0123456789";
const PASSWORD: &str = "s3cret-passw0rd";
const REALM: &str = "tandem.local";

struct Server {
    running: tandem_signaling::Running,
    shutdown: CancellationToken,
    sip: SocketAddr,
    base: String,
    client: reqwest::Client,
    mock: Mock,
    dir: PathBuf,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        Server::start_with(dir, Mock::start().await).await
    }

    /// Starts on the data of `dir`, pushing to `mock`.
    async fn start_with(dir: &Path, mock: Mock) -> Server {
        let mut cfg = sipp_support::server_config(dir, REALM, ADMIN);
        cfg.default_country_code = "1".into();
        cfg.sip.tcp_listen = None;
        cfg.proxy.push_after_secs = 3;
        cfg.proxy.park_timeout_secs = 5;
        cfg.push.webhook = Some(WebhookConfig {
            url: format!("{}/hook", mock.url()),
            ca_file: None,
            bearer_token: None,
            hmac_secret: None,
        });
        let shutdown = CancellationToken::new();
        let running = tandem_signaling::start(cfg, shutdown.clone())
            .await
            .expect("start");
        let sip = running.sip.udp.unwrap();
        let base = format!("http://{}", running.api);
        Server {
            running,
            shutdown,
            sip,
            base,
            client: reqwest::Client::new(),
            mock,
            dir: dir.to_path_buf(),
        }
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// An account with `devices` (instance number, class, webhook token if any).
    async fn account(
        &self,
        login: &str,
        cc: &str,
        numbers: &[&str],
        devices: &[(u32, &str, Option<&str>)],
    ) -> i64 {
        let (s, acc) = self
            .admin(
                "POST",
                "/accounts",
                json!({"login": login, "password": PASSWORD, "country_code": cc,
                       "phone_numbers": numbers}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{acc}");
        let id = acc["id"].as_i64().unwrap();
        for (n, class, token) in devices {
            let mut body = json!({"instance_id": instance(*n), "class": class, "name": format!("{class} {n}")});
            if let Some(t) = token {
                body["push_provider"] = json!("webhook");
                body["push_token"] = json!(t);
            }
            let (s, v) = self
                .admin("POST", &format!("/accounts/{id}/devices"), body)
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        id
    }

    /// Runs a device scenario (blocking sipp) on a worker thread.
    async fn device(
        &self,
        port: u16,
        scenario: &'static str,
        fields: Vec<String>,
        extra: Vec<String>,
    ) -> String {
        let (dir, sip) = (self.dir.clone(), self.sip);
        tokio::task::spawn_blocking(move || {
            let f: Vec<&str> = fields.iter().map(String::as_str).collect();
            let e: Vec<&str> = extra.iter().map(String::as_str).collect();
            run_device(&dir, sip, port, scenario, &f, &e)
        })
        .await
        .unwrap()
    }

    fn register(&self, port: u16, login: &str, n: u32) -> tokio::task::JoinHandle<String> {
        let (dir, sip) = (self.dir.clone(), self.sip);
        let fields = [
            login.to_owned(),
            PASSWORD.to_owned(),
            instance(n),
            REALM.to_owned(),
        ];
        tokio::task::spawn_blocking(move || {
            let f: Vec<&str> = fields.iter().map(String::as_str).collect();
            run_device(&dir, sip, port, "register.xml", &f, &[])
        })
    }

    /// A caller's sipp (`-m 1`) on a worker thread; `extra` adds options.
    fn caller(
        &self,
        uac: &'static str,
        service: &str,
        extra: Vec<String>,
    ) -> tokio::task::JoinHandle<String> {
        let (sip, dir) = (self.sip, self.dir.clone());
        let service = service.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new("sipp");
            cmd.arg(sip.to_string())
                .arg("-sf")
                .arg(scenario(uac))
                .args(["-s", &service, "-m", "1"])
                .args(&extra)
                .current_dir(&dir);
            common_args(&mut cmd, free_udp_port());
            let out = cmd.output().expect("run sipp");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            eprintln!(
                "caller sipp -sf tests/sipp/{uac} -s {service}: exit {:?}; {}",
                out.status.code(),
                summary(&stdout)
            );
            assert!(
                out.status.success(),
                "caller {uac} -s {service}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
    }

    /// Pushes recorded so far for `token`, as (type, call_id, payload).
    fn pushes(&self, token: &str) -> Vec<(String, String, Value)> {
        self.mock
            .requests_to("/hook")
            .iter()
            .map(Recorded::json)
            .filter(|j| j["token"] == token)
            .map(|j| {
                (
                    j["payload"]["type"].as_str().unwrap_or("").to_owned(),
                    j["payload"]["call_id"].as_str().unwrap_or("").to_owned(),
                    j["payload"].clone(),
                )
            })
            .collect()
    }

    /// Waits (at most `secs`) until `token` got a push of `kind`; returns its payload.
    async fn wait_push(&self, token: &str, kind: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some((_, _, p)) = self.pushes(token).into_iter().find(|(k, _, _)| k == kind) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} push for {token}; pushes: {:?}",
                self.mock
                    .requests_to("/hook")
                    .iter()
                    .map(Recorded::json)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Mock {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.running.wait())
            .await
            .unwrap()
            .unwrap();
        self.mock
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn kinds(pushes: &[(String, String, Value)]) -> Vec<&str> {
    pushes.iter().map(|(k, _, _)| k.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_push_park_and_no_answer_rules() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;

    push_flow_answered_by_a_pushed_device(&server).await;
    caller_cancel_sends_missed_call(&server).await;
    three_second_rule(&server).await;
    no_answer_rule_forwards_to_voicemail(&server).await;
    national_numbers_use_the_callers_country_code(&server).await;
    let server = deferred_messages_across_a_restart(server).await;

    server.stop().await;
}

/// One device registered, two offline with push targets: both pushed at INVITE
/// time; one registers and answers; the other gets call_cancelled.
async fn push_flow_answered_by_a_pushed_device(server: &Server) {
    server
        .account(
            "alice",
            "1",
            &[],
            &[
                (1, "mobile", None),
                (2, "mobile", Some("tok-alice-2")),
                (3, "tablet", None),
            ],
        )
        .await;
    let (p1, p2, p3) = (free_udp_port(), free_udp_port(), free_udp_port());
    server.register(p1, "alice", 1).await.unwrap();
    // The tablet's push target comes from RFC 8599 parameters; then it goes offline.
    server
        .device(
            p3,
            "register_pn_then_leave.xml",
            vec![
                "alice".into(),
                PASSWORD.into(),
                instance(3),
                REALM.into(),
                "tok-alice-3".into(),
            ],
            vec![],
        )
        .await;

    let ringing = tokio::task::spawn_blocking(move || {
        let uas = spawn_uas("call_uas_ring.xml", p1);
        finish("call_uas_ring.xml (registered device)", uas)
    });
    let caller = server.caller("call_uac.xml", "alice", vec![]);
    let a2 = server.wait_push("tok-alice-2", "incoming_call", 5).await;
    let a3 = server.wait_push("tok-alice-3", "incoming_call", 5).await;
    for p in [&a2, &a3] {
        // The caller is not one of our accounts (its From names sipp's own address):
        // the push shows its whole address, never a bare login.
        assert_eq!(p["caller_login"], "bob@127.0.0.1");
        assert_eq!(p["caller_display_name"], "Bob (bob@127.0.0.1)");
        assert_eq!(p["media"], "audio");
        assert!(p["timestamp"].as_i64().unwrap() > 1_700_000_000);
    }
    let call_id = a2["call_id"].as_str().unwrap().to_owned();
    assert!(!call_id.is_empty());
    assert_eq!(a3["call_id"], call_id.as_str());

    // The mobile was woken: it registers with the parked call's Call-ID (sipp's
    // matching) and gets the INVITE as a new branch.
    server
        .device(
            p2,
            "push_register_answer.xml",
            vec!["alice".into(), PASSWORD.into(), instance(2), REALM.into()],
            vec!["-cid_str".into(), call_id.clone()],
        )
        .await;
    caller.await.unwrap();
    ringing.await.unwrap();

    let p = server.wait_push("tok-alice-3", "call_cancelled", 5).await;
    assert_eq!(p["call_id"], call_id.as_str());
    // Every push queued so far has ended: nothing more is on its way.
    tokio::time::timeout(Duration::from_secs(10), server.running.pusher.settled())
        .await
        .expect("pushes settled");
    assert_eq!(
        kinds(&server.pushes("tok-alice-2")),
        vec!["incoming_call"],
        "the device that answered is not told the call was cancelled"
    );
    assert_eq!(
        kinds(&server.pushes("tok-alice-3")),
        vec!["incoming_call", "call_cancelled"]
    );
}

/// The caller hangs up while a registered device rings: missed_call to the pushed one.
async fn caller_cancel_sends_missed_call(server: &Server) {
    server
        .account(
            "carol",
            "1",
            &[],
            &[(11, "mobile", None), (12, "mobile", Some("tok-carol-12"))],
        )
        .await;
    let p11 = free_udp_port();
    server.register(p11, "carol", 11).await.unwrap();
    let ringing = tokio::task::spawn_blocking(move || {
        finish(
            "call_uas_ring_cancelled.xml",
            spawn_uas("call_uas_ring_cancelled.xml", p11),
        )
    });
    server
        .caller("call_uac_cancel.xml", "carol", vec![])
        .await
        .unwrap();
    ringing.await.unwrap();
    let incoming = server.wait_push("tok-carol-12", "incoming_call", 5).await;
    let missed = server.wait_push("tok-carol-12", "missed_call", 5).await;
    assert_eq!(missed["call_id"], incoming["call_id"]);
    assert_eq!(missed["caller_login"], "bob@127.0.0.1");
}

/// A registered device with a token that never answers anything (its registration
/// is stale) is pushed once 3 s passed; the other one at once.
async fn three_second_rule(server: &Server) {
    server
        .account(
            "dave",
            "1",
            &[],
            &[
                (21, "mobile", Some("tok-dave-21")),
                (22, "tablet", Some("tok-dave-22")),
            ],
        )
        .await;
    let p21 = free_udp_port();
    server.register(p21, "dave", 21).await.unwrap();
    // The registered device's address now belongs to a socket that reads and never
    // answers.
    let silent = tokio::net::UdpSocket::bind(("127.0.0.1", p21))
        .await
        .unwrap();
    let got_invite = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), silent.recv_from(&mut buf))
            .await
            .expect("the registered device gets the INVITE")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).starts_with("INVITE ")
    });
    let started = Instant::now();
    let caller = server.caller("call_uac_cancel_late.xml", "dave", vec![]);
    server.wait_push("tok-dave-22", "incoming_call", 2).await;
    let at_once = started.elapsed();
    assert!(got_invite.await.unwrap());
    assert!(server
        .pushes("tok-dave-21")
        .iter()
        .all(|(k, _, _)| k != "incoming_call"));
    server.wait_push("tok-dave-21", "incoming_call", 5).await;
    let later = started.elapsed();
    eprintln!("3-second rule: offline device pushed after {at_once:?}, silent registered device after {later:?}");
    assert!(
        later >= Duration::from_millis(2900),
        "pushed after {later:?}, before the 3 s"
    );
    caller.await.unwrap();
    for t in ["tok-dave-21", "tok-dave-22"] {
        server.wait_push(t, "missed_call", 5).await;
        assert_eq!(
            kinds(&server.pushes(t)),
            vec!["incoming_call", "missed_call"]
        );
    }
}

/// Nobody joins within the park time: the account's no-answer rule sends the call
/// to its voicemail, which answers.
async fn no_answer_rule_forwards_to_voicemail(server: &Server) {
    let id = server
        .account("erin", "1", &[], &[(31, "mobile", Some("tok-erin-31"))])
        .await;
    let vm = free_udp_port();
    let (s, v) = server
        .admin(
            "PATCH",
            &format!("/accounts/{id}"),
            json!({"no_answer_forward": format!("sip:voicemail@127.0.0.1:{vm}")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let voicemail = tokio::task::spawn_blocking(move || {
        finish(
            "call_uas_answer.xml (voicemail)",
            spawn_uas("call_uas_answer.xml", vm),
        )
    });
    let started = Instant::now();
    server.caller("call_uac.xml", "erin", vec![]).await.unwrap();
    let took = started.elapsed();
    voicemail.await.unwrap();
    eprintln!("no-answer rule: answered by the forward target after {took:?}");
    assert!(
        took >= Duration::from_millis(4900),
        "forwarded before the park ended: {took:?}"
    );
    server.wait_push("tok-erin-31", "incoming_call", 1).await;
    server.wait_push("tok-erin-31", "missed_call", 5).await;
}

/// Account numbers as an account with country code 48 dials them, on a server
/// whose default country code is 1.
async fn national_numbers_use_the_callers_country_code(server: &Server) {
    server
        .account("frank", "48", &["+48600111222"], &[(41, "mobile", None)])
        .await;
    server.account("gina", "48", &[], &[]).await;
    let p41 = free_udp_port();
    server.register(p41, "frank", 41).await.unwrap();
    let inf = sipp_support::inf(&server.dir, "gina", &["gina"]);
    for number in ["+48%20600111222", "0048600111222", "0600111222"] {
        let device = tokio::task::spawn_blocking(move || {
            finish(
                "call_uas_answer.xml (frank)",
                spawn_uas("call_uas_answer.xml", p41),
            )
        });
        server
            .caller(
                "call_uac_auth.xml",
                number,
                vec![
                    "-inf".into(),
                    inf.display().to_string(),
                    "-au".into(),
                    "gina".into(),
                    "-ap".into(),
                    PASSWORD.into(),
                ],
            )
            .await
            .unwrap();
        device.await.unwrap();
    }
    // From outside, 0600111222 is read with the server's default (1): nobody.
    server
        .caller("call_uac_not_found.xml", "0600111222", vec![])
        .await
        .unwrap();
}

/// Seconds since midnight of a sipp message log header
/// (`----- 2026-11-23 04:46:21.266271`).
fn trace_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().last()?;
    let mut parts = t.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// From a sipp `-trace_msg` log: the time from the last REGISTER sent to the first
/// INVITE received after it, in milliseconds.
fn register_to_invite_ms(log: &str) -> Option<f64> {
    let mut stamp = None;
    let mut direction = "";
    let mut register_sent = None;
    for line in log.lines() {
        if line.starts_with("-----") {
            stamp = trace_time(line);
            direction = "";
        } else if line.starts_with("UDP message sent") {
            direction = "sent";
        } else if line.starts_with("UDP message received") {
            direction = "received";
        } else if !line.trim().is_empty() && !direction.is_empty() {
            match (direction, line.split_whitespace().next()) {
                ("sent", Some("REGISTER")) => register_sent = stamp,
                ("received", Some("INVITE")) => {
                    return Some((stamp? - register_sent?) * 1000.0);
                }
                _ => {}
            }
            direction = "";
        }
    }
    None
}

/// Time from a pushed device's REGISTER to the parked call's INVITE, measured by
/// sipp on the device's side: push_register_answer.xml runs with `-trace_msg`, and the
/// time is that from sending the authenticated REGISTER to receiving the INVITE (the
/// message log has microseconds; sipp's own response-time counter has a coarse
/// tick). Each round, a caller rings an account whose only device is offline, the
/// push arrives, the device registers, answers, hangs up and unregisters. A
/// measurement, not a check:
/// `cargo test --release -p tandem-signaling --test proxy_push_sipp -- --ignored --nocapture`,
/// rounds from TANDEM_PUSH_ROUNDS (default 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "latency measurement, run by hand"]
async fn sipp_register_to_invite_latency() {
    if !sipp_available() {
        return;
    }
    let rounds: usize = sipp_support::env_number("TANDEM_PUSH_ROUNDS", 100);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server
        .account("mia", "1", &[], &[(51, "mobile", Some("tok-mia-51"))])
        .await;
    let port = free_udp_port();
    let trace = dir.path().join("device-messages.log");
    let mut samples_ms: Vec<f64> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let seen = server.pushes("tok-mia-51").len();
        let caller = server.caller("call_uac.xml", "mia", vec![]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let call_id = loop {
            let p = server.pushes("tok-mia-51");
            if let Some((_, id, _)) = p.iter().skip(seen).find(|(k, _, _)| k == "incoming_call") {
                break id.clone();
            }
            assert!(Instant::now() < deadline, "round {round}: no push");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let _ = std::fs::remove_file(&trace);
        server
            .device(
                port,
                "push_register_answer.xml",
                vec!["mia".into(), PASSWORD.into(), instance(51), REALM.into()],
                vec![
                    "-cid_str".into(),
                    call_id,
                    "-trace_msg".into(),
                    "-message_file".into(),
                    trace.display().to_string(),
                ],
            )
            .await;
        caller.await.unwrap();
        let log = std::fs::read_to_string(&trace).unwrap();
        samples_ms.push(register_to_invite_ms(&log).expect("REGISTER and INVITE in the log"));
    }
    samples_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| samples_ms[((samples_ms.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "REGISTER -> INVITE over {rounds} rounds: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, \
         max {:.3} ms",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples_ms[samples_ms.len() - 1],
    );
    server.stop().await;
}

/// Reads MESSAGEs on `sock` (waiting `first` for one, then `quiet` after the last
/// new one), answering each 200;
/// returns (Call-ID, Date, body) per distinct message in arrival order.
async fn take_messages(
    sock: &tokio::net::UdpSocket,
    first: Duration,
    quiet: Duration,
) -> Vec<(String, String, String)> {
    let mut got: Vec<(String, String, String)> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut until = Instant::now() + first;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Ok((n, from))) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
            return got;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("MESSAGE ") {
            continue;
        }
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let mut answer = String::from("SIP/2.0 200 OK\r\n");
        for l in head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
        {
            answer.push_str(l);
            answer.push_str("\r\n");
        }
        answer.push_str(&format!(
            "From: {}\r\nTo: {};tag=dev1\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            header("From"),
            header("To"),
            header("Call-ID"),
            header("CSeq")
        ));
        sock.send_to(answer.as_bytes(), from).await.unwrap();
        let call_id = header("Call-ID");
        if !got.iter().any(|(c, _, _)| *c == call_id) {
            got.push((call_id, header("Date"), body.trim().to_owned()));
            until = Instant::now() + quiet;
        }
    }
}

/// MESSAGEs to an account whose three devices are offline: 202, stored for each,
/// pushed as text_message (40-character excerpt); after a restart each device gets
/// them when it registers, once, in order, with their original Date.
async fn deferred_messages_across_a_restart(server: Server) -> Server {
    let account = server
        .account(
            "nina",
            "1",
            &[],
            &[
                (61, "mobile", Some("tok-nina-61")),
                (62, "mobile", Some("tok-nina-62")),
                (63, "tablet", Some("tok-nina-63")),
            ],
        )
        .await;
    let long = "Meet me at the station at six, bring the tickets and the umbrella please";
    let short = "second: on my way";
    let inf = server.dir.join("messages.csv");
    std::fs::write(&inf, format!("SEQUENTIAL\n{long};\n{short};\n")).unwrap();
    server
        .caller(
            "message_uac_stored.xml",
            "nina",
            vec![
                "-inf".into(),
                inf.display().to_string(),
                "-m".into(),
                "2".into(),
                "-l".into(),
                "1".into(),
            ],
        )
        .await
        .unwrap();
    for t in ["tok-nina-61", "tok-nina-62", "tok-nina-63"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.pushes(t).len() < 2 {
            assert!(Instant::now() < deadline, "{t}: {:?}", server.pushes(t));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p = server.pushes(t);
        assert_eq!(kinds(&p), vec!["text_message", "text_message"]);
        let first = p[0].2["body"].as_str().unwrap();
        assert_eq!(first.chars().count(), 41, "{first}");
        assert!(first.starts_with("Meet me at the station at six, bring the"));
        assert!(first.ends_with('\u{2026}'));
        assert_eq!(p[1].2["body"], short);
    }

    // Restart: nothing stored is lost.
    let dir = server.dir.clone();
    let mock = server.stop().await;
    let server = Server::start_with(&dir, mock).await;
    for n in [61u32, 62, 63] {
        let port = free_udp_port();
        server.register(port, "nina", n).await.unwrap();
        // The device's socket, right after sipp released the port: the first send of
        // the MESSAGE may have found it closed; the retransmission arrives.
        let sock = tokio::net::UdpSocket::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let got = take_messages(&sock, Duration::from_secs(5), Duration::from_millis(1500)).await;
        let bodies: Vec<&str> = got.iter().map(|(_, _, b)| b.as_str()).collect();
        assert_eq!(bodies, vec![long, short], "device {n}: in order, each once");
        assert_eq!(got[0].1, "Sat, 13 Nov 2010 23:29:01 GMT");
        assert_eq!(got[1].1, "Sat, 13 Nov 2010 23:29:02 GMT");
        drop(sock);
        // Registering again delivers nothing more.
        server.register(port, "nina", n).await.unwrap();
        let sock = tokio::net::UdpSocket::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let again = take_messages(&sock, Duration::from_millis(1500), Duration::ZERO).await;
        assert!(again.is_empty(), "device {n} got {again:?} again");
        let pending = server
            .running
            .store
            .pending_deferred(account, &instance(n), unix_now())
            .await
            .unwrap();
        assert!(pending.is_empty(), "device {n}: {pending:?}");
    }
    server
}
