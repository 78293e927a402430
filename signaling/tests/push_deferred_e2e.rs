//! Deferred messages end to end through the in-process server
//! (`tandem_signaling::start`): MESSAGEs for an account whose devices are all offline
//! are answered 202 and stored per device; when one device registers it receives them
//! over its flow, in order, with their original Date, and they leave the store only
//! for that device once it answered 2xx; a later registration delivers nothing again.
//! The push service's counters are exposed on /metrics.

mod udp_client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_signaling::config::SignalingConfig;
use tandem_signaling::model::DeviceClass;
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDevice};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use udp_client::{body, header, Registration};

const DEV_A: &str = "urn:uuid:00000000-0000-4000-8000-0000000000a1";
const DEV_B: &str = "urn:uuid:00000000-0000-4000-8000-0000000000b2";
const DATES: [&str; 2] = [
    "Sat, 13 Nov 2010 23:29:00 GMT",
    "Sat, 13 Nov 2010 23:30:05 GMT",
];
const BODIES: [&str; 2] = ["first message", "second message"];

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn recv(sock: &UdpSocket, until: Instant) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let left = until.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// The final response a device answers a request with (RFC 3261 8.2.6).
fn answer_for(req: &str, code: u16) -> String {
    let reason = if code == 200 { "OK" } else { "Busy Here" };
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    for v in header(req, "Via") {
        r.push_str(&format!("Via: {v}\r\n"));
    }
    for h in ["From", "Call-ID", "CSeq"] {
        r.push_str(&format!("{h}: {}\r\n", header(req, h)[0]));
    }
    r.push_str(&format!(
        "To: {};tag=dev{}\r\n",
        header(req, "To")[0],
        rand::random::<u32>()
    ));
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

/// A device on its own UDP socket.
struct Device {
    sock: UdpSocket,
    instance: &'static str,
}

impl Device {
    async fn new(instance: &'static str) -> Device {
        Device {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            instance,
        }
    }

    /// A digest-authenticated REGISTER; returns the MESSAGEs that arrived until the
    /// 200 and for `linger` after it, each answered with `code`.
    async fn register(
        &self,
        sip: SocketAddr,
        login: &str,
        password: &str,
        realm: &str,
        linger: Duration,
        code: u16,
    ) -> Vec<String> {
        let me = self.sock.local_addr().unwrap();
        let call_id = format!("r{}@127.0.0.1", rand::random::<u64>());
        let reg = Registration {
            login,
            password,
            realm,
            instance: self.instance,
            uri_params: "",
            expires: 600,
        };
        self.sock
            .send_to(reg.request(me, &call_id, 1, None).as_bytes(), sip)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = loop {
            let m = recv(&self.sock, deadline).await.expect("401 in time");
            if !m.starts_with("SIP/2.0 1") {
                break m;
            }
        };
        let auth = reg.authorization(&first);
        self.sock
            .send_to(reg.request(me, &call_id, 2, Some(&auth)).as_bytes(), sip)
            .await
            .unwrap();
        let mut messages = Vec::new();
        let mut registered = false;
        let mut deadline = Instant::now() + Duration::from_secs(5);
        while let Some(m) = recv(&self.sock, deadline).await {
            if m.starts_with("MESSAGE ") {
                self.sock
                    .send_to(answer_for(&m, code).as_bytes(), sip)
                    .await
                    .unwrap();
                messages.push(m);
            } else if m.starts_with("SIP/2.0 1") {
            } else {
                assert!(m.starts_with("SIP/2.0 200"), "{m}");
                registered = true;
                deadline = Instant::now() + linger;
            }
        }
        assert!(registered, "REGISTER answered 200");
        messages
    }
}

/// A MESSAGE from outside to `login`; returns the final status line.
async fn send_message(sip: SocketAddr, login: &str, realm: &str, date: &str, text: &str) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let m = format!(
        "MESSAGE sip:{login}@{realm} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Carol\" <sip:carol@example.com>;tag=c{}\r\n\
         To: <sip:{login}@{realm}>\r\n\
         Call-ID: m{}@example.com\r\n\
         CSeq: 1 MESSAGE\r\n\
         Date: {date}\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n\
         Content-Length: {}\r\n\r\n{text}",
        rand::random::<u64>(),
        rand::random::<u64>(),
        rand::random::<u64>(),
        text.len()
    );
    sock.send_to(m.as_bytes(), sip).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = recv(&sock, deadline)
            .await
            .expect("MESSAGE answered in time");
        if !r.starts_with("SIP/2.0 1") {
            return r.lines().next().unwrap_or("").to_owned();
        }
    }
}

#[tokio::test]
async fn stored_messages_reach_the_device_that_registers_in_order_exactly_once() {
    let dir = udp_client::temp_dir("deferred_e2e");
    let mut cfg = SignalingConfig {
        data_dir: dir.clone(),
        ..SignalingConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.admin_token = Some("configured-token-0123456789".to_owned());
    cfg.sip.udp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.sip.tcp_listen = None;
    let realm = cfg.sip.realm.clone();
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let sip = running.sip.udp.unwrap();
    let store = running.store.clone();
    let account = store
        .create_account(&NewAccount {
            login: "alice",
            password: "correct horse",
            realm: &realm,
            country_code: "48",
            display_name: None,
        })
        .await
        .unwrap()
        .id;
    for inst in [DEV_A, DEV_B] {
        store
            .authorise_device(
                account,
                &NewDevice {
                    instance_id: inst,
                    class: DeviceClass::Mobile,
                    name: "phone",
                    push_provider: None,
                    push_token: None,
                },
                &DeviceLimits::default(),
            )
            .await
            .unwrap();
    }

    // Both devices offline: each MESSAGE is accepted (202) and stored for both.
    for (date, text) in DATES.iter().zip(BODIES) {
        let status = send_message(sip, "alice", &realm, date, text).await;
        assert!(status.starts_with("SIP/2.0 202"), "{status}");
    }
    for inst in [DEV_A, DEV_B] {
        let p = store
            .pending_deferred(account, inst, unix_now())
            .await
            .unwrap();
        assert_eq!(p.len(), 2, "{inst}");
    }

    // A registers: both MESSAGEs, in order, with their original Date.
    let a = Device::new(DEV_A).await;
    let got = a
        .register(
            sip,
            "alice",
            "correct horse",
            &realm,
            Duration::from_secs(2),
            200,
        )
        .await;
    assert_eq!(got.len(), 2, "{got:?}");
    for (i, m) in got.iter().enumerate() {
        assert!(
            m.starts_with(&format!(
                "MESSAGE sip:alice@{}",
                a.sock.local_addr().unwrap()
            )),
            "{m}"
        );
        assert_eq!(header(m, "Date"), [DATES[i]], "{m}");
        assert_eq!(body(m), BODIES[i], "{m}");
        assert_eq!(header(m, "To"), [format!("<sip:alice@{realm}>").as_str()]);
        assert!(
            header(m, "From")[0].contains("sip:carol@example.com"),
            "{m}"
        );
    }
    // Acknowledged for A only once A answered 200.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = store
            .pending_deferred(account, DEV_A, unix_now())
            .await
            .unwrap()
            .len();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} still pending for A");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store
            .pending_deferred(account, DEV_B, unix_now())
            .await
            .unwrap()
            .len(),
        2
    );

    // Exactly once: a refresh of A delivers nothing more.
    let again = a
        .register(
            sip,
            "alice",
            "correct horse",
            &realm,
            Duration::from_secs(1),
            200,
        )
        .await;
    assert!(again.is_empty(), "{again:?}");

    // The push service's counters are on /metrics with the API's.
    let metrics = reqwest::get(format!("http://{}/metrics", running.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE tandem_signaling_push_notifications counter"),
        "{metrics}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn config(dir: &std::path::Path) -> SignalingConfig {
    let mut cfg = SignalingConfig {
        data_dir: dir.to_path_buf(),
        ..SignalingConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.admin_token = Some("configured-token-0123456789".to_owned());
    cfg.sip.udp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.sip.tcp_listen = None;
    cfg
}

async fn stop(shutdown: CancellationToken, running: tandem_signaling::Running) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn stored_messages_survive_a_restart_and_a_refusal_keeps_them() {
    let dir = udp_client::temp_dir("deferred_e2e");
    let cfg = config(&dir);
    let realm = cfg.sip.realm.clone();
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let sip = running.sip.udp.unwrap();
    let store = running.store.clone();
    let account = store
        .create_account(&NewAccount {
            login: "alice",
            password: "correct horse",
            realm: &realm,
            country_code: "48",
            display_name: None,
        })
        .await
        .unwrap()
        .id;
    for inst in [DEV_A, DEV_B] {
        store
            .authorise_device(
                account,
                &NewDevice {
                    instance_id: inst,
                    class: DeviceClass::Mobile,
                    name: "phone",
                    push_provider: None,
                    push_token: None,
                },
                &DeviceLimits::default(),
            )
            .await
            .unwrap();
    }
    for (date, text) in DATES.iter().zip(BODIES) {
        let status = send_message(sip, "alice", &realm, date, text).await;
        assert!(status.starts_with("SIP/2.0 202"), "{status}");
    }
    stop(shutdown, running).await;

    // Same SQLite file, new process state.
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(config(&dir), shutdown.clone())
        .await
        .unwrap();
    let sip = running.sip.udp.unwrap();
    let store = running.store.clone();
    let a = Device::new(DEV_A).await;
    let got = a
        .register(
            sip,
            "alice",
            "correct horse",
            &realm,
            Duration::from_secs(2),
            200,
        )
        .await;
    let dates: Vec<Vec<&str>> = got.iter().map(|m| header(m, "Date")).collect();
    assert_eq!(dates, [[DATES[0]], [DATES[1]]], "{got:?}");

    // B refuses the first one: the round stops there, both stay pending, in order.
    let b = Device::new(DEV_B).await;
    let got = b
        .register(
            sip,
            "alice",
            "correct horse",
            &realm,
            Duration::from_secs(2),
            486,
        )
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(body(&got[0]), BODIES[0]);
    let pending = store
        .pending_deferred(account, DEV_B, unix_now())
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);
    // B's next registration takes them, same Call-ID as the refused attempt.
    let again = b
        .register(
            sip,
            "alice",
            "correct horse",
            &realm,
            Duration::from_secs(2),
            200,
        )
        .await;
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(header(&again[0], "Call-ID"), header(&got[0], "Call-ID"));
    assert_eq!(body(&again[1]), BODIES[1]);
    let deadline = Instant::now() + Duration::from_secs(3);
    for inst in [DEV_A, DEV_B] {
        while !store
            .pending_deferred(account, inst, unix_now())
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "{inst} still has pending messages"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    stop(shutdown, running).await;
    let _ = std::fs::remove_dir_all(&dir);
}
