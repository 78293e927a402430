//! Signaling with the real `tandem-relay` binary on 127.0.0.1: TURN credentials minted
//! through the HTTP API allocate on the relay, an expired or forged one gets 401, and
//! the relay pool places a session through the relay's control API and announces the
//! relay ending it by inactivity.
//!
//! Locating `tandem-relay`: `CARGO_BIN_EXE_*` exists only for this package's binaries,
//! so the test takes `TANDEM_RELAY_BIN` when set, else the `tandem-relay` next to
//! `tandem-signaling` (same target directory and profile; `cargo build --workspace
//! --bins`, as tests/run.sh does first, or `cargo build -p tandem-relay`). Missing, it
//! skips with that advice, or fails when `CI` is set.

mod udp_client;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tandem_signaling::config::SignalingConfig;
use tandem_signaling::relays::{EndedReason, MediaRelays, RelayConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const TURN_SECRET: &str = "turn-shared-secret-0123456789";
const CONTROL_TOKEN: &str = "control-token-0123456789";
const REALM: &str = "tandem-test";

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANDEM_RELAY_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_BIN_EXE_tandem-signaling"))
        .parent()
        .expect("binary has a directory")
        .join("tandem-relay");
    if p.exists() {
        return Some(p);
    }
    let advice = format!(
        "{} not found: run `cargo build -p tandem-relay` (same profile and target dir) or set TANDEM_RELAY_BIN",
        p.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{advice}");
    }
    eprintln!("skipped: {advice}");
    None
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The relay with TURN REST auth and its control API; returns its TURN address.
fn start_relay(bin: &PathBuf, control: SocketAddr) -> (Guard, SocketAddr) {
    let mut child = Command::new(bin)
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--relay-ip",
            "127.0.0.1",
            "--realm",
            REALM,
            "--static-auth-secret",
            TURN_SECRET,
            "--control-listen",
            &control.to_string(),
            "--io",
            "portable",
            "--log-level",
            "info",
        ])
        .env("TANDEM_CONTROL_SECRET", CONTROL_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tandem-relay");
    let out = child.stdout.take().expect("stdout");
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listen = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("relay reports its listening address");
        if let Some(i) = line.find("listen=") {
            let a = line[i + 7..].split_whitespace().next().expect("address");
            break a.parse::<SocketAddr>().expect("socket address");
        }
    };
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (guard, listen)
}

// ----- a small STUN client: Allocate with long-term credentials (RFC 8489, 8656) ----

const COOKIE: u32 = 0x2112_A442;

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// An Allocate request for UDP; with `auth` = (username, password, realm, nonce) it
/// carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY.
fn allocate(auth: Option<(&str, &str, &[u8], &[u8])>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x0003u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&COOKIE.to_be_bytes());
    m.extend_from_slice(&rand::random::<[u8; 12]>());
    attr(&mut m, 0x0019, &[17, 0, 0, 0]); // REQUESTED-TRANSPORT: UDP
    if let Some((user, pass, realm, nonce)) = auth {
        attr(&mut m, 0x0006, user.as_bytes());
        attr(&mut m, 0x0014, realm);
        attr(&mut m, 0x0015, nonce);
        // The length counts the MESSAGE-INTEGRITY attribute (4 + 20) that follows.
        let len = (m.len() - 20 + 24) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let key = Md5::digest([user.as_bytes(), b":", realm, b":", pass.as_bytes()].concat());
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&key).unwrap();
        mac.update(&m);
        let tag = mac.finalize().into_bytes();
        attr(&mut m, 0x0008, &tag);
    } else {
        let len = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
    }
    m
}

/// Attributes in order: (type, value).
type Attrs = Vec<(u16, Vec<u8>)>;

/// (message type, error code if any, attributes).
fn parse(buf: &[u8]) -> (u16, Option<u16>, Attrs) {
    let kind = u16::from_be_bytes([buf[0], buf[1]]);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let mut attrs = Vec::new();
    let mut i = 20;
    while i + 4 <= 20 + len {
        let t = u16::from_be_bytes([buf[i], buf[i + 1]]);
        let l = usize::from(u16::from_be_bytes([buf[i + 2], buf[i + 3]]));
        attrs.push((t, buf[i + 4..i + 4 + l].to_vec()));
        i += 4 + l.div_ceil(4) * 4;
    }
    let code = attrs
        .iter()
        .find(|(t, _)| *t == 0x0009)
        .map(|(_, v)| u16::from(v[2] & 7) * 100 + u16::from(v[3]));
    (kind, code, attrs)
}

async fn exchange(sock: &UdpSocket, server: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    for _ in 0..5 {
        sock.send_to(msg, server).await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
            let n = r.unwrap();
            return buf[..n].to_vec();
        }
    }
    panic!("no answer from the relay");
}

/// Allocate with (username, password): the final answer's type and error code.
async fn try_allocate(server: SocketAddr, user: &str, pass: &str) -> (u16, Option<u16>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (kind, code, attrs) = parse(&exchange(&sock, server, &allocate(None)).await);
    assert_eq!(
        (kind, code),
        (0x0113, Some(401)),
        "the first Allocate is challenged"
    );
    let get = |t: u16| attrs.iter().find(|(k, _)| *k == t).unwrap().1.clone();
    let (realm, nonce) = (get(0x0014), get(0x0015));
    assert_eq!(realm, REALM.as_bytes());
    let req = allocate(Some((user, pass, &realm, &nonce)));
    let (kind, code, _) = parse(&exchange(&sock, server, &req).await);
    (kind, code)
}

async fn api(
    client: &reqwest::Client,
    api: SocketAddr,
    auth: (&str, Option<&str>),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("http://{api}{path}"),
    );
    req = match auth {
        (token, None) => req.bearer_auth(token),
        (user, Some(pass)) => req.basic_auth(user, Some(pass)),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn turn_credentials_allocate_and_the_pool_places_sessions() {
    let Some(bin) = relay_bin() else { return };
    let control: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let (_relay, turn) = start_relay(&bin, control);

    let dir = udp_client::temp_dir("relay_binary");
    let mut cfg = SignalingConfig {
        data_dir: dir.clone(),
        ..SignalingConfig::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.sip.udp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.sip.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.relays = vec![RelayConfig {
        control_url: format!("http://{control}"),
        secret: Some(CONTROL_TOKEN.into()),
        secret_file: None,
        public_address: "127.0.0.1".into(),
        weight: 1,
    }];
    cfg.relay_pool.health_interval_secs = 1;
    cfg.turn.secret = Some(TURN_SECRET.into());
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let admin = (running.admin_token.as_str(), None);

    let (s, acct) = api(
        &client,
        running.api,
        admin,
        "POST",
        "/accounts",
        Some(json!({"login": "alice", "password": "alice-password"})),
    )
    .await;
    assert_eq!(s, 201, "{acct}");
    let id = acct["id"].as_i64().unwrap();

    // The app's own route, with its Basic credentials.
    let (s, creds) = api(
        &client,
        running.api,
        ("alice", Some("alice-password")),
        "POST",
        "/me/turn-credentials",
        None,
    )
    .await;
    assert_eq!(s, 200, "{creds}");
    let username = creds["username"].as_str().unwrap();
    let password = creds["password"].as_str().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, id.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 86_390..=now + 86_410).contains(&expiry),
        "{username}"
    );
    assert_eq!(creds["ttl"], 86_400);
    assert_eq!(creds["uris"], json!(["turn:127.0.0.1:3478?transport=udp"]));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(password)
            .unwrap()
            .len(),
        20
    );
    let (kind, code) = try_allocate(turn, username, password).await;
    assert_eq!(
        (kind, code),
        (0x0103, None),
        "Allocate with minted credentials"
    );

    // The administrator's route mints the same kind of credential.
    let (s, admin_creds) = api(
        &client,
        running.api,
        admin,
        "POST",
        &format!("/accounts/{id}/turn-credentials"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{admin_creds}");
    let (kind, _) = try_allocate(
        turn,
        admin_creds["username"].as_str().unwrap(),
        admin_creds["password"].as_str().unwrap(),
    )
    .await;
    assert_eq!(kind, 0x0103);

    // Expired (minted for a time 100 s ago with a 10 s lifetime): 401.
    let old = tandem_signaling::relays::turn::mint(
        TURN_SECRET.as_bytes(),
        id,
        i64::try_from(now).unwrap() - 100,
        10,
        vec![],
    );
    let (kind, code) = try_allocate(turn, &old.username, &old.password).await;
    assert_eq!((kind, code), (0x0113, Some(401)), "an expired credential");
    // Signed with another secret: 401.
    let forged = tandem_signaling::relays::turn::mint(
        b"another-secret-0123456789",
        id,
        i64::try_from(now).unwrap(),
        3600,
        vec![],
    );
    let (kind, code) = try_allocate(turn, &forged.username, &forged.password).await;
    assert_eq!((kind, code), (0x0113, Some(401)), "a forged credential");

    // The pool: up after its first round, places a session, hears the relay end it.
    let pool = running.relays.clone().expect("a pool with [[relays]]");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pool.status()[0].up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relays: std::sync::Arc<dyn MediaRelays> = pool.clone();
    let mut ended = relays.subscribe_ended();
    let offer = serde_json::from_value(json!({
        "call_id": "call-1@example.net",
        "caller": {"learn_first_source": true},
        "inactivity_timeout_secs": 1
    }))
    .unwrap();
    let placed = relays.create(offer).await.unwrap();
    assert_eq!(
        placed.session.call_id.as_deref(),
        Some("call-1@example.net")
    );
    let other = relays
        .create(serde_json::from_value(json!({"caller": {}})).unwrap())
        .await
        .unwrap();
    assert!(relays
        .delete(other.relay, &other.session.id)
        .await
        .unwrap()
        .is_some());
    let ev = tokio::time::timeout(Duration::from_secs(15), ended.recv())
        .await
        .expect("the relay ends the idle session within 15 s")
        .unwrap();
    assert_eq!(ev.session_id, placed.session.id);
    assert_eq!(ev.call_id.as_deref(), Some("call-1@example.net"));
    assert_eq!(ev.reason, EndedReason::Inactivity);
    assert_eq!(
        relays
            .delete(placed.relay, &placed.session.id)
            .await
            .unwrap(),
        None
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("stops")
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
