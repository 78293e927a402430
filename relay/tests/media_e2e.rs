//! Media sessions end to end against the real `tandem-relay` binary: sessions placed
//! through the control API over HTTP, UDP endpoints on loopback that do what ICE
//! agents and SIP phones do on the wire (connectivity checks with real ICE
//! credentials, RTP and RTCP, SDES-SRTP), and an attacker socket that knows the
//! relay ports but not the call's secrets.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_control::{CryptoSuite, SessionInfo, SrtpCrypto};
use tandem_relay::media::ice::{write_check, write_response};
use tandem_relay::media::packet::Kind;
use tandem_relay::media::srtp::{new_key, Termination};

const TOKEN: &str = "media-e2e-control-token-0123456789";

/// Kill the child when dropped.
struct Relay {
    child: Child,
    control: SocketAddr,
    http: reqwest::Client,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two adjacent free UDP ports on 127.0.0.1 (checked by binding them), for a relay
/// port range that holds exactly one session with rtcp-mux on both legs. They are
/// taken from 26000-31999, below the ephemeral range (from 32768) where the tests'
/// own sockets and the ICE agents bind, so nothing else takes them meanwhile. (The
/// control API tests use 20000-31999 in even pairs; these start odd.)
fn two_free_udp_ports() -> (u16, u16) {
    let seed = std::process::id() as usize
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
    for k in 0..3000usize {
        let p = 26_001 + ((seed.wrapping_add(k * 7919) % 2_999) * 2) as u16;
        let (Ok(_a), Ok(_b)) = (
            UdpSocket::bind(("127.0.0.1", p)),
            UdpSocket::bind(("127.0.0.1", p + 1)),
        ) else {
            continue;
        };
        return (p, p + 1);
    }
    panic!("no two adjacent free UDP ports in 26001-31999");
}

fn start_relay(min_port: u16, max_port: u16) -> Relay {
    let control_port = free_tcp_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--user",
            "u:p",
            "--min-port",
            &min_port.to_string(),
            "--max-port",
            &max_port.to_string(),
            "--control-listen",
            &format!("127.0.0.1:{control_port}"),
            "--workers",
            "2",
            "--log-level",
            "info",
        ])
        .env("TANDEM_CONTROL_SECRET", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tandem-relay");
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("relay: {line}");
        }
    });
    Relay {
        child,
        control: SocketAddr::from(([127, 0, 0, 1], control_port)),
        http: reqwest::Client::new(),
    }
}

impl Relay {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.control, path)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .http
                .get(self.url("/health"))
                .bearer_auth(TOKEN)
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "control API never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("control API answers");
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    async fn session(&self, id: &str) -> SessionInfo {
        let (s, v) = self
            .call(reqwest::Method::GET, &format!("/sessions/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }
}

fn endpoint() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Receive until `want` says yes or `limit` passes; returns the matching datagram.
fn recv_matching(
    sock: &UdpSocket,
    limit: Duration,
    mut want: impl FnMut(&[u8], SocketAddr) -> bool,
) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if want(&buf[..n], from) {
                return Some((buf[..n].to_vec(), from));
            }
        }
    }
    None
}

/// Everything that arrives within `limit`.
fn drain(sock: &UdpSocket, limit: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0x60];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn check(username: &str, pwd: &str, tid: u8) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    let n = write_check(&mut b, &[tid; 12], username, pwd).unwrap();
    b.truncate(n);
    b
}

const UFRAG_A: &str = "aUfr";
const PWD_A: &str = "caller-ice-password-0123";
const UFRAG_B: &str = "bUfr";
const PWD_B: &str = "callee-ice-password-4567";

/// A sends authenticated checks to its relay port until B sees one, and the same the
/// other way; then each answers the other's check. Returns nothing; panics when ICE
/// through the relay does not complete within a few seconds (ICE retransmits; so do
/// we).
fn ice_through_relay(a: &UdpSocket, pa: SocketAddr, b: &UdpSocket, pb: SocketAddr) {
    // A's check towards B is keyed with B's password and names B's ufrag first.
    let from_a = check(&format!("{UFRAG_B}:{UFRAG_A}"), PWD_B, 1);
    let from_b = check(&format!("{UFRAG_A}:{UFRAG_B}"), PWD_A, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut b_got, mut a_got) = (false, false);
    while !(a_got && b_got) {
        assert!(Instant::now() < deadline, "checks never crossed the relay");
        a.send_to(&from_a, pa).unwrap();
        b.send_to(&from_b, pb).unwrap();
        // The relay forwards checks unchanged, from the other leg's port.
        if !b_got {
            b_got = recv_matching(b, Duration::from_millis(100), |p, from| {
                p == from_a.as_slice() && from == pb
            })
            .is_some();
        }
        if !a_got {
            a_got = recv_matching(a, Duration::from_millis(100), |p, from| {
                p == from_b.as_slice() && from == pa
            })
            .is_some();
        }
    }
    // B answers A's check (keyed with B's own password) through the relay.
    let mut resp = vec![0u8; 128];
    let n = write_response(&mut resp, &[1; 12], a.local_addr().unwrap(), PWD_B).unwrap();
    resp.truncate(n);
    b.send_to(&resp, pb).unwrap();
    assert!(
        recv_matching(a, Duration::from_secs(2), |p, from| p == resp.as_slice()
            && from == pa)
        .is_some(),
        "B's check response reaches A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_latching_rtp_both_ways_and_an_attacker_gets_nothing_through() {
    let (min, max) = two_free_udp_ports();
    let relay = start_relay(min, max);
    relay.wait_ready().await;

    let (a, b, mallory) = (endpoint(), endpoint(), endpoint());
    let (s, v) = relay
        .call(
            reqwest::Method::POST,
            "/sessions",
            Some(json!({
                "call_id": "e2e-call-1",
                "caller": {"ice": {"ufrag": UFRAG_A, "pwd": PWD_A}, "streams": [{"rtcp_mux": true}]},
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let info: SessionInfo = serde_json::from_value(v).unwrap();
    let pa = info.caller.streams[0].relay_rtp;
    let pb = info.callee.streams[0].relay_rtp;
    assert!(
        info.caller.streams[0].relay_rtcp.is_none(),
        "rtcp-mux: one port"
    );
    assert_ne!(pa, pb);

    // The range holds one session: a second one is refused until the first ends.
    let (s, v) = relay
        .call(
            reqwest::Method::POST,
            "/sessions",
            Some(json!({"caller": {"streams": [{"rtcp_mux": true}]}})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "ports_exhausted");

    let (s, v) = relay
        .call(
            reqwest::Method::PATCH,
            &format!("/sessions/{}", info.id),
            Some(json!({"answer": {"ice": {"ufrag": UFRAG_B, "pwd": PWD_B}, "streams": [{"rtcp_mux": true}]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "answered");

    // Before any check, media goes nowhere (nothing is latched), and the attacker's
    // checks without the password latch nothing.
    mallory
        .send_to(
            &check(&format!("{UFRAG_B}:{UFRAG_A}"), "not-the-password", 9),
            pa,
        )
        .unwrap();
    mallory
        .send_to(
            &check(&format!("{UFRAG_A}:{UFRAG_B}"), "guessing-again", 9),
            pb,
        )
        .unwrap();
    mallory.send_to(&rtp(1, 66, b"EVIL early"), pa).unwrap();

    ice_through_relay(&a, pa, &b, pb);

    // RTP both ways, and the attacker interleaved, with bleed attempts on both ports.
    let mut sent_a = 0u64;
    let mut sent_b = 0u64;
    for seq in 0..50u16 {
        a.send_to(&rtp(seq, 0xa, format!("from A {seq}").as_bytes()), pa)
            .unwrap();
        sent_a += 1;
        b.send_to(&rtp(seq, 0xb, format!("from B {seq}").as_bytes()), pb)
            .unwrap();
        sent_b += 1;
        mallory
            .send_to(&rtp(seq, 66, format!("EVIL {seq}").as_bytes()), pa)
            .unwrap();
        mallory
            .send_to(&rtp(seq, 66, format!("EVIL {seq}").as_bytes()), pb)
            .unwrap();
        if seq % 10 == 0 {
            mallory
                .send_to(&check(&format!("{UFRAG_B}:{UFRAG_A}"), "wrong", 3), pa)
                .unwrap();
        }
    }
    let at_b = drain(&b, Duration::from_millis(700));
    let at_a = drain(&a, Duration::from_millis(300));
    let payloads = |got: &[Vec<u8>], tag: &str| -> Vec<String> {
        got.iter()
            .filter(|p| p.len() > 12 && p[0] == 0x80)
            .map(|p| String::from_utf8_lossy(&p[12..]).to_string())
            .filter(|s| s.starts_with(tag) || s.starts_with("EVIL"))
            .collect()
    };
    let b_rtp = payloads(&at_b, "from A");
    let a_rtp = payloads(&at_a, "from B");
    assert!(
        b_rtp.iter().all(|p| !p.starts_with("EVIL"))
            && a_rtp.iter().all(|p| !p.starts_with("EVIL")),
        "attacker bytes crossed the relay"
    );
    assert_eq!(b_rtp.len() as u64, sent_a, "every RTP from A reaches B");
    assert_eq!(a_rtp.len() as u64, sent_b, "every RTP from B reaches A");
    assert_eq!(b_rtp[0], "from A 0");
    assert_eq!(b_rtp[49], "from A 49");
    // The attacker never hears anything.
    assert!(drain(&mallory, Duration::from_millis(200)).is_empty());

    let now = relay.session(&info.id).await;
    let (ca, cb) = (&now.caller.counters, &now.callee.counters);
    assert_eq!(
        now.caller.streams[0].latched_rtp,
        Some(a.local_addr().unwrap())
    );
    assert_eq!(
        now.callee.streams[0].latched_rtp,
        Some(b.local_addr().unwrap())
    );
    // Forwarded from A: its RTP and the checks and answer that crossed.
    assert!(ca.packets_in >= sent_a, "{ca:?}");
    assert!(cb.packets_in > sent_b, "{cb:?}");
    assert_eq!(ca.packets_in, cb.packets_out);
    assert_eq!(cb.packets_in, ca.packets_out);
    assert!(
        ca.dropped.bleed >= 50 && cb.dropped.bleed >= 50,
        "{ca:?} {cb:?}"
    );
    assert!(ca.dropped.unauthenticated >= 2, "{ca:?}");
    assert!(cb.dropped.unauthenticated >= 1, "{cb:?}");

    // Deleting gives the final counters and frees the ports for the next session.
    let (s, v) = relay
        .call(
            reqwest::Method::DELETE,
            &format!("/sessions/{}", info.id),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let fin: SessionInfo = serde_json::from_value(v).unwrap();
    assert_eq!(fin.state, tandem_control::SessionState::Ended);
    assert!(fin.caller.counters.packets_in >= sent_a);
    // The worker that owns the sockets closes them at the end of its current turn
    // (at most 50 ms later), so the ports come free within moments, not at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    let (s, v) = loop {
        let (s, v) = relay
            .call(
                reqwest::Method::POST,
                "/sessions",
                Some(json!({"caller": {"streams": [{"rtcp_mux": true}]}})),
            )
            .await;
        if s != 503 || Instant::now() > deadline {
            break (s, v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s, 201, "the freed ports serve the next session: {v}");
    let next: SessionInfo = serde_json::from_value(v).unwrap();
    let mut old = [pa, pb];
    let mut new = [
        next.caller.streams[0].relay_rtp,
        next.callee.streams[0].relay_rtp,
    ];
    old.sort();
    new.sort();
    assert_eq!(old, new);
    // After the delete, RTP to the old ports goes nowhere: the new session has
    // latched nothing.
    a.send_to(&rtp(99, 0xa, b"after delete"), pa).unwrap();
    assert!(drain(&b, Duration::from_millis(300)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_caller_bridged_to_a_plain_rtp_gateway() {
    let (min, max) = two_free_udp_ports();
    // Both legs multiplex RTCP: one port each.
    let relay = start_relay(min, max);
    relay.wait_ready().await;
    let (app, gateway) = (endpoint(), endpoint());
    let device_key = new_key(CryptoSuite::AesCm128HmacSha1_80, &[7; 32]);
    let (s, v) = relay
        .call(
            reqwest::Method::POST,
            "/sessions",
            Some(json!({
                "caller": {
                    "srtp": {"suite": "AES_CM_128_HMAC_SHA1_80", "key": device_key.key},
                    "streams": [{"rtcp_mux": true, "rtp": app.local_addr().unwrap().to_string()}],
                },
                "callee": {"streams": [{"rtcp_mux": true}]},
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let info: SessionInfo = serde_json::from_value(v).unwrap();
    let relay_key: SrtpCrypto = info
        .caller
        .srtp
        .clone()
        .expect("the relay's key for the app");
    assert_ne!(relay_key.key, device_key.key);
    let (s, v) = relay
        .call(
            reqwest::Method::PATCH,
            &format!("/sessions/{}", info.id),
            Some(json!({"answer": {"streams": [{"rtcp_mux": true, "rtp": gateway.local_addr().unwrap().to_string()}]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let p_app = info.caller.streams[0].relay_rtp;
    let p_gw = info.callee.streams[0].relay_rtp;

    // The app's side of SRTP: it encrypts with its key and decrypts with the relay's.
    let mut device = Termination::new(&relay_key, device_key.clone()).unwrap();
    let mut expect = Vec::new();
    for seq in 0..30u16 {
        let plain = rtp(seq, 0x5151, format!("voice frame {seq:03}").as_bytes());
        let enc = device.encrypt(Kind::Rtp, &plain).unwrap();
        if seq == 10 {
            // A tampered copy first: dropped and counted, the genuine one still goes.
            let mut bad = enc.to_vec();
            let i = bad.len() - 3;
            bad[i] ^= 0x40;
            app.send_to(&bad, p_app).unwrap();
        }
        app.send_to(&enc, p_app).unwrap();
        expect.push(plain);
    }
    let got: Vec<Vec<u8>> = drain(&gateway, Duration::from_millis(700));
    assert_eq!(
        got, expect,
        "the gateway gets the exact plain RTP, in order"
    );

    // The gateway's plain RTP reaches the app as SRTP under the relay's key.
    for seq in 0..10u16 {
        gateway
            .send_to(&rtp(seq, 0x6262, format!("gw {seq}").as_bytes()), p_gw)
            .unwrap();
    }
    let got = drain(&app, Duration::from_millis(500));
    assert_eq!(got.len(), 10);
    for (seq, p) in got.iter().enumerate() {
        let dec = device
            .decrypt(Kind::Rtp, p)
            .expect("SRTP from the relay authenticates");
        assert_eq!(
            &dec[..],
            &rtp(seq as u16, 0x6262, format!("gw {seq}").as_bytes())[..]
        );
    }
    let now = relay.session(&info.id).await;
    assert_eq!(
        now.caller.counters.dropped.srtp_auth, 1,
        "{:?}",
        now.caller.counters
    );
    assert_eq!(now.caller.counters.packets_in, 30);
    assert_eq!(now.callee.counters.packets_in, 10);
}

/// Two ICE agents of the webrtc-rs project (not ours) that can only reach each other
/// through the relay: each is given only the relay candidate of its own leg as a
/// remote candidate (no host candidates of the other), as signaling's SDP rewriting
/// with `force-relay` will do. ICE must complete on the relay pair, with the agents'
/// own checks and nominations passing through the relay unchanged, and RTP must flow
/// both ways over the selected pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_ice_agents_connect_through_the_relay() {
    use std::sync::Arc;
    use webrtc_ice::agent::agent_config::AgentConfig;
    use webrtc_ice::agent::Agent;
    use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
    use webrtc_ice::candidate::{Candidate, CandidateType};
    use webrtc_ice::network_type::NetworkType;
    use webrtc_util::Conn;

    let (min, max) = two_free_udp_ports();
    let relay = start_relay(min, max);
    relay.wait_ready().await;

    let agent = |controlling: bool| AgentConfig {
        network_types: vec![NetworkType::Udp4],
        candidate_types: vec![CandidateType::Host],
        include_loopback: true,
        // Host candidates on loopback only: nothing leaves this machine.
        ip_filter: Arc::new(Some(Box::new(|ip: std::net::IpAddr| ip.is_loopback()))),
        is_controlling: controlling,
        ..Default::default()
    };
    let a = Arc::new(Agent::new(agent(true)).await.unwrap());
    let b = Arc::new(Agent::new(agent(false)).await.unwrap());
    let (ua, pwa) = a.get_local_user_credentials().await;
    let (ub, pwb) = b.get_local_user_credentials().await;

    let (s, v) = relay
        .call(
            reqwest::Method::POST,
            "/sessions",
            Some(json!({"caller": {"ice": {"ufrag": ua, "pwd": pwa}, "streams": [{"rtcp_mux": true}]}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let info: SessionInfo = serde_json::from_value(v).unwrap();
    let (s, v) = relay
        .call(
            reqwest::Method::PATCH,
            &format!("/sessions/{}", info.id),
            Some(json!({"answer": {"ice": {"ufrag": ub, "pwd": pwb}, "streams": [{"rtcp_mux": true}]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let pa = info.caller.streams[0].relay_rtp;
    let pb = info.callee.streams[0].relay_rtp;

    // Each agent knows the other only by the relay candidate of its own leg.
    let relay_candidate = |p: SocketAddr| -> Arc<dyn Candidate + Send + Sync> {
        Arc::new(
            unmarshal_candidate(&format!(
                "candidate:relay1 1 udp 16777215 {} {} typ relay raddr 0.0.0.0 rport 0",
                p.ip(),
                p.port()
            ))
            .unwrap(),
        )
    };
    a.add_remote_candidate(&relay_candidate(pa)).unwrap();
    b.add_remote_candidate(&relay_candidate(pb)).unwrap();
    // Local candidates need no signaling here: the other side only ever sees the
    // relay's address.
    a.on_candidate(Box::new(|_| Box::pin(async {})));
    b.on_candidate(Box::new(|_| Box::pin(async {})));
    a.gather_candidates().unwrap();
    b.gather_candidates().unwrap();

    let (_ca_tx, ca_rx) = tokio::sync::mpsc::channel(1);
    let (_cb_tx, cb_rx) = tokio::sync::mpsc::channel(1);
    let (a2, b2) = (a.clone(), b.clone());
    let dial = tokio::spawn(async move { a2.dial(ca_rx, ub, pwb).await });
    let accept = tokio::spawn(async move { b2.accept(cb_rx, ua, pwa).await });
    let (conn_a, conn_b) = tokio::time::timeout(Duration::from_secs(20), async {
        (dial.await.unwrap().unwrap(), accept.await.unwrap().unwrap())
    })
    .await
    .expect("ICE completes through the relay");

    let pair = a.get_selected_candidate_pair().expect("a selected pair");
    assert!(
        pair.to_string().contains(&format!(":{}", pa.port())),
        "the selected pair uses the relay candidate: {pair}"
    );

    // RTP both ways over the selected pair.
    for seq in 0..20u16 {
        conn_a
            .send(&rtp(seq, 0xa1, format!("agent A {seq}").as_bytes()))
            .await
            .unwrap();
        conn_b
            .send(&rtp(seq, 0xb1, format!("agent B {seq}").as_bytes()))
            .await
            .unwrap();
    }
    let recv_all = |conn: Arc<dyn Conn + Send + Sync>, tag: &'static str| async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1500];
        while got.len() < 20 {
            let n = tokio::time::timeout(Duration::from_secs(5), conn.recv(&mut buf))
                .await
                .expect("RTP arrives")
                .unwrap();
            let p = &buf[..n];
            if p.len() > 12 && p[0] == 0x80 {
                let s = String::from_utf8_lossy(&p[12..]).to_string();
                if s.starts_with(tag) {
                    got.push(s);
                }
            }
        }
        got
    };
    let at_b = recv_all(conn_b.clone(), "agent A").await;
    let at_a = recv_all(conn_a.clone(), "agent B").await;
    assert_eq!(at_b.first().map(String::as_str), Some("agent A 0"));
    assert_eq!(at_a.len(), 20);

    let now = relay.session(&info.id).await;
    assert!(now.caller.counters.ice_checks > 0 && now.callee.counters.ice_checks > 0);
    assert!(
        now.caller.counters.packets_in >= 20,
        "{:?}",
        now.caller.counters
    );
    assert!(
        now.callee.counters.packets_in >= 20,
        "{:?}",
        now.callee.counters
    );
    assert!(now.caller.streams[0]
        .latched_rtp
        .unwrap()
        .ip()
        .is_loopback());
    let _ = a.close().await;
    let _ = b.close().await;
}
