//! An ICE call through signaling and the relay, end to end: the real
//! `tandem-relay` binary on 127.0.0.2 (control API and metrics on 127.0.0.1), the
//! real `tandem-signaling` binary configured to place calls on it, and two ICE
//! agents of the webrtc-rs project (`webrtc-ice`, not ours) as the phones' media
//! stacks. The SIP of both phones is written here as raw text over UDP: the callee
//! registers with digest MD5, the caller's INVITE is challenged (407) and sent again
//! with `Proxy-Authorization`, and the BYE is loose-routed through the Record-Route
//! set of the 200.
//!
//! What `ice_call_connects_through_the_relay_candidates` proves, under the default
//! account policy (`ice`):
//! - signaling adds an `a=candidate ... typ relay` on 127.0.0.2 to the offer the
//!   callee receives and to the answer the caller receives, at the relay port of the
//!   leg facing the receiver (so the two candidates differ);
//! - the ICE credentials of each SDP pass through signaling unchanged and reach the
//!   relay: it authenticates each agent's checks with them and latches the agent by
//!   them, forwarding the agents' checks and responses between the legs as they
//!   are, so ICE completes on both agents within 10 s;
//! - the pair both agents select is the relay candidate of their own leg, and RTP
//!   (version 2, 20 packets each way) flows both ways over it;
//! - the relay session signaling placed (`GET /sessions/{id}`) counts authenticated
//!   checks on both legs, latched each agent's own address, and forwarded at least
//!   what each agent received;
//! - the caller's BYE, routed by the Record-Route set, reaches the callee and frees
//!   the session (`GET /load` shows 0).
//!
//! How the relay pair is forced: each agent is given, as remote candidates, ONLY the
//! relay candidate of the SDP it received (the peer's host candidates in that SDP are
//! dropped), and each agent's checks go only to that relay address. No datagram of
//! one agent ever reaches the other directly, so no peer-reflexive candidate can be
//! learnt either: the only pair either agent can form is its host candidate with the
//! relay candidate.
//!
//! Needs the relay binary next to the signaling one (`cargo build -p tandem-relay
//! --bin tandem-relay`; tests/run.sh builds every binary first); sipp is not used.
//! Without the relay binary the test fails when `CI` is set and is skipped otherwise.
//!
//! ```text
//! cargo build -p tandem-relay --bin tandem-relay
//! cargo test -p tandem-signaling --test media_ice -- --nocapture
//! ```

mod media_support;
mod sipp_support;
mod udp_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_support::{relay_binary, rtp, Relay, Signaling, PASSWORD, REALM, RELAY_IP};
use serde_json::json;
use tandem_control::SessionInfo;
use tokio::net::UdpSocket;
use udp_client::{header, md5_hex, param, Registration};
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::agent::Agent;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::network_type::NetworkType;
use webrtc_util::Conn;

const CALLER: &str = "alice";
const CALLEE: &str = "bob";
/// The device instances (`sipp_support::instance(n)`) of each account.
const CALLER_DEVICE: u32 = 1;
const CALLEE_DEVICE: u32 = 2;
const PACKETS: u16 = 20;

/// The relay binary is there: a failure when `CI` is set, else a skip.
fn relay_present() -> bool {
    if relay_binary().exists() {
        return true;
    }
    let msg = format!(
        "{} is missing: build it with `cargo build -p tandem-relay --bin tandem-relay`",
        relay_binary().display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set)");
    }
    eprintln!("SKIPPED: {msg}; set CI to make this fail");
    false
}

/// An agent with host candidates on loopback over UDP/IPv4 only: nothing leaves
/// this machine.
async fn agent(controlling: bool) -> Arc<Agent> {
    let config = AgentConfig {
        network_types: vec![NetworkType::Udp4],
        candidate_types: vec![CandidateType::Host],
        include_loopback: true,
        ip_filter: Arc::new(Some(Box::new(|ip: std::net::IpAddr| ip.is_loopback()))),
        is_controlling: controlling,
        ..Default::default()
    };
    Arc::new(Agent::new(config).await.unwrap())
}

/// Gathers the agent's host candidates (bounded); their `a=candidate` values.
async fn gather(agent: &Agent) -> Vec<String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    agent.on_candidate(Box::new(
        move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
            let _ = tx.send(c.map(|c| c.marshal()));
            Box::pin(async {})
        },
    ));
    agent.gather_candidates().unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Some(c)) = rx.recv().await {
            out.push(c);
        }
    })
    .await
    .expect("candidate gathering ends within 5 s");
    assert!(!out.is_empty(), "the agent gathered no host candidate");
    out
}

/// An SDP offer or answer with one audio stream (rtcp-mux: one ICE component), the
/// agent's credentials and host candidates, the first of them as default.
fn ice_sdp(user: &str, ufrag: &str, pwd: &str, candidates: &[String]) -> String {
    let first = unmarshal_candidate(&candidates[0]).unwrap();
    let mut s = format!(
        "v=0\r\n\
         o={user} 1 1 IN IP4 {ip}\r\n\
         s=-\r\n\
         c=IN IP4 {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtcp-mux\r\n\
         a=ice-ufrag:{ufrag}\r\n\
         a=ice-pwd:{pwd}\r\n",
        ip = first.address(),
        port = first.port(),
    );
    for c in candidates {
        s.push_str(&format!("a=candidate:{c}\r\n"));
    }
    s
}

/// The relay candidates (`a=candidate ... typ relay`) of an SDP, without `a=`.
fn relay_candidates(sdp: &str) -> Vec<String> {
    sdp.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("a=candidate:") && l.contains(" typ relay"))
        .map(|l| l.trim_start_matches("a=").to_owned())
        .collect()
}

/// `a=ice-ufrag` and `a=ice-pwd` of an SDP.
fn ice_credentials(sdp: &str) -> (String, String) {
    let get = |k: &str| {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in:\n{sdp}"))
            .to_owned()
    };
    (get("a=ice-ufrag:"), get("a=ice-pwd:"))
}

/// The only relay candidate of `sdp` (asserted on 127.0.0.2): the one remote
/// candidate its receiver's agent gets, and its address.
fn the_relay_candidate(who: &str, sdp: &str) -> (Arc<dyn Candidate + Send + Sync>, SocketAddr) {
    let relays = relay_candidates(sdp);
    assert_eq!(
        relays.len(),
        1,
        "{who}: expected one `typ relay` candidate (rtcp-mux) in:\n{sdp}"
    );
    let c = unmarshal_candidate(&relays[0]).unwrap();
    assert_eq!(c.candidate_type(), CandidateType::Relay, "{}", relays[0]);
    let addr = SocketAddr::new(c.address().parse().unwrap(), c.port());
    assert_eq!(
        addr.ip(),
        std::net::IpAddr::V4(RELAY_IP),
        "{who}: the relay candidate is not on the relay's address: {}",
        relays[0]
    );
    (Arc::new(c), addr)
}

/// The next SIP message on `sock` that `pred` accepts, within `within`; panics with
/// what else arrived.
async fn recv_sip(
    sock: &UdpSocket,
    within: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pred(&m) {
                    return m;
                }
                seen.push(m.lines().next().unwrap_or("").to_owned());
            }
            Ok(Err(e)) => panic!("receive {what}: {e}"),
            Err(_) => panic!("no {what} within {within:?}; got instead: {seen:?}"),
        }
    }
}

fn first_line(m: &str) -> &str {
    m.lines().next().unwrap_or("")
}

/// A response to `cseq_method` with status class/prefix `status` (e.g. "200").
fn is_response(m: &str, status: &str, cseq_method: &str) -> bool {
    first_line(m).starts_with(&format!("SIP/2.0 {status}"))
        && header(m, "CSeq")
            .first()
            .is_some_and(|c| c.ends_with(cseq_method))
}

fn one<'a>(m: &'a str, name: &str) -> &'a str {
    header(m, name)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {name} in:\n{m}"))
}

fn branch() -> String {
    format!("z9hG4bK{:x}", rand::random::<u64>())
}

/// The Proxy-Authorization answering the MD5 challenge of the 407 `challenged`.
fn proxy_authorization(challenged: &str, method: &str, uri: &str) -> String {
    let challenge = header(challenged, "Proxy-Authenticate")
        .into_iter()
        .find(|c| param(c, "algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5")))
        .unwrap_or_else(|| panic!("an MD5 challenge in:\n{challenged}"))
        .to_owned();
    let realm = param(&challenge, "realm").unwrap_or(REALM);
    let nonce = param(&challenge, "nonce").expect("nonce");
    let ha1 = md5_hex(&format!("{CALLER}:{realm}:{PASSWORD}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let mut auth = format!(
        "Digest username=\"{CALLER}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5"
    );
    if param(&challenge, "qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth")) {
        let cnonce = format!("{:x}", rand::random::<u64>());
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        auth.push_str(&format!(
            ", response=\"{response}\", cnonce=\"{cnonce}\", qop=auth, nc=00000001"
        ));
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        auth.push_str(&format!(", response=\"{response}\""));
    }
    if let Some(opaque) = param(&challenge, "opaque") {
        auth.push_str(&format!(", opaque=\"{opaque}\""));
    }
    auth
}

/// A response to `req` (every Via, Record-Route when `record_route`, From, To with
/// `to_tag`, Call-ID, CSeq), with `extra` headers and `body` (SDP when not empty).
fn response(req: &str, status: &str, to_tag: &str, extra: &str, body: &str) -> String {
    let mut m = format!("SIP/2.0 {status}\r\n");
    for v in header(req, "Via") {
        m.push_str(&format!("Via: {v}\r\n"));
    }
    if status.starts_with("200") && first_line(req).starts_with("INVITE ") {
        for rr in header(req, "Record-Route") {
            m.push_str(&format!("Record-Route: {rr}\r\n"));
        }
    }
    let to = one(req, "To");
    let to = if to.contains(";tag=") {
        to.to_owned()
    } else {
        format!("{to};tag={to_tag}")
    };
    m.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}",
        one(req, "From"),
        one(req, "Call-ID"),
        one(req, "CSeq")
    ));
    if body.is_empty() {
        m.push_str("Content-Length: 0\r\n\r\n");
    } else {
        m.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    m
}

/// The URIs of the Record-Route headers of `m`, in order (one header may list
/// several).
fn record_route(m: &str) -> Vec<String> {
    header(m, "Record-Route")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The URI in a Contact (or name-addr) value.
fn uri_of(name_addr: &str) -> String {
    match (name_addr.find('<'), name_addr.find('>')) {
        (Some(a), Some(b)) if a < b => name_addr[a + 1..b].to_owned(),
        _ => name_addr
            .split(';')
            .next()
            .unwrap_or(name_addr)
            .trim()
            .to_owned(),
    }
}

/// 20 RTP packets over `from`, all received on `to` (bounded); their count.
async fn rtp_one_way(
    from: &Arc<dyn Conn + Send + Sync>,
    to: &Arc<dyn Conn + Send + Sync>,
    ssrc: u32,
) -> usize {
    for seq in 0..PACKETS {
        from.send(&rtp(seq, ssrc, &[ssrc as u8; 160]))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < usize::from(PACKETS) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, to.recv(&mut buf)).await {
            Ok(r) => r.unwrap(),
            Err(_) => break,
        };
        let p = &buf[..n];
        // RTP version 2, this sender's SSRC, the payload intact.
        if n == 12 + 160
            && p[0] >> 6 == 2
            && p[8..12] == ssrc.to_be_bytes()[..]
            && p[12..].iter().all(|b| *b == ssrc as u8)
        {
            got.push(u16::from_be_bytes([p[2], p[3]]));
        }
    }
    assert_eq!(
        got,
        (0..PACKETS).collect::<Vec<_>>(),
        "RTP with SSRC {ssrc:#x}: every packet arrives, in order, intact"
    );
    got.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_call_connects_through_the_relay_candidates() {
    if !relay_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let relay = Relay::start().await;
    let signaling = Signaling::start(dir, &relay, &[]).await;
    assert!(
        signaling.relay_refused.is_none(),
        "signaling refused the relay entry{}",
        signaling.note()
    );
    signaling
        .account(CALLER, None, &[(CALLER_DEVICE, "mobile")])
        .await;
    signaling
        .account(CALLEE, None, &[(CALLEE_DEVICE, "mobile")])
        .await;
    let sip = signaling.sip;

    // The callee's device registers (digest MD5) from the socket it then takes calls
    // on.
    let bob = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bob_addr = bob.local_addr().unwrap();
    let instance = sipp_support::instance(CALLEE_DEVICE);
    let reg = Registration {
        login: CALLEE,
        password: PASSWORD,
        realm: REALM,
        instance: &instance,
        uri_params: "",
        expires: 600,
    };
    let reg_call_id = format!("reg{}@127.0.0.1", rand::random::<u64>());
    let first =
        udp_client::exchange(&bob, sip, &reg.request(bob_addr, &reg_call_id, 1, None)).await;
    let auth = reg.authorization(&first);
    let registered = udp_client::exchange(
        &bob,
        sip,
        &reg.request(bob_addr, &reg_call_id, 2, Some(&auth)),
    )
    .await;
    assert!(
        first_line(&registered).starts_with("SIP/2.0 200"),
        "REGISTER: {registered}"
    );

    // Both agents, their credentials and host candidates, before any SIP.
    let (a, b) = (agent(true).await, agent(false).await);
    let (ufrag_a, pwd_a) = a.get_local_user_credentials().await;
    let (ufrag_b, pwd_b) = b.get_local_user_credentials().await;
    let (host_a, host_b) = (gather(&a).await, gather(&b).await);

    // The caller: INVITE, 407, ACK, INVITE with credentials.
    let alice = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let alice_addr = alice.local_addr().unwrap();
    let call_id = format!("ice{}@127.0.0.1", rand::random::<u64>());
    let from = format!("<sip:{CALLER}@{REALM}>;tag=a{:x}", rand::random::<u32>());
    let target = format!("sip:{CALLEE}@{REALM}");
    let offer = ice_sdp(CALLER, &ufrag_a, &pwd_a, &host_a);
    let invite = |cseq: u32, via_branch: &str, auth: Option<&str>| {
        let mut m = format!(
            "INVITE {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {alice_addr};rport;branch={via_branch}\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: <{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} INVITE\r\n\
             Contact: <sip:{CALLER}@{alice_addr}>\r\n"
        );
        if let Some(a) = auth {
            m.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        m.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        ));
        m
    };
    let b1 = branch();
    alice
        .send_to(invite(1, &b1, None).as_bytes(), sip)
        .await
        .unwrap();
    let challenged = recv_sip(&alice, Duration::from_secs(5), "407 to the INVITE", |m| {
        is_response(m, "407", "INVITE")
    })
    .await;
    let ack = format!(
        "ACK {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {alice_addr};rport;branch={b1}\r\n\
         Max-Forwards: 70\r\n\
         From: {from}\r\n\
         To: {}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        one(&challenged, "To")
    );
    alice.send_to(ack.as_bytes(), sip).await.unwrap();
    let auth = proxy_authorization(&challenged, "INVITE", &target);
    alice
        .send_to(invite(2, &branch(), Some(&auth)).as_bytes(), sip)
        .await
        .unwrap();

    // The callee gets the offer with the relay candidate of its leg, and answers.
    let offered = recv_sip(&bob, Duration::from_secs(10), "INVITE at the callee", |m| {
        first_line(m).starts_with("INVITE ")
    })
    .await;
    let offer_in = udp_client::body(&offered);
    let (relay_cand_b, relay_b) = the_relay_candidate("the callee's INVITE", offer_in);
    assert!(
        relay.has_port(relay_b.port()),
        "the offer's relay candidate {relay_b} is not a port of the relay {:?}",
        relay.ports
    );
    assert_eq!(
        ice_credentials(offer_in),
        (ufrag_a.clone(), pwd_a.clone()),
        "the caller's ICE credentials reach the callee unchanged"
    );
    let answer = ice_sdp(CALLEE, &ufrag_b, &pwd_b, &host_b);
    let ok = response(
        &offered,
        "200 OK",
        &format!("b{:x}", rand::random::<u32>()),
        &format!("Contact: <sip:{CALLEE}@{bob_addr}>\r\n"),
        &answer,
    );
    bob.send_to(ok.as_bytes(), sip).await.unwrap();

    // The caller gets the answer with the relay candidate of its own leg; ACK.
    let answered = recv_sip(&alice, Duration::from_secs(10), "200 to the INVITE", |m| {
        is_response(m, "200", "INVITE")
    })
    .await;
    let answer_in = udp_client::body(&answered);
    let (relay_cand_a, relay_a) = the_relay_candidate("the caller's 200", answer_in);
    assert!(
        relay.has_port(relay_a.port()) && relay_a != relay_b,
        "the answer's relay candidate {relay_a}: a port of the relay {:?} other than the offer's {relay_b}",
        relay.ports
    );
    assert_eq!(
        ice_credentials(answer_in),
        (ufrag_b.clone(), pwd_b.clone()),
        "the callee's ICE credentials reach the caller unchanged"
    );
    // The dialog: the remote target and the route set (reversed Record-Route).
    let remote_target = uri_of(one(&answered, "Contact"));
    let routes: Vec<String> = record_route(&answered).into_iter().rev().collect();
    assert!(
        !routes.is_empty(),
        "signaling record-routes the call:\n{answered}"
    );
    assert!(
        routes[0].contains(&format!(":{}", sip.port())) && routes[0].contains(";lr"),
        "the first Route loose-routes through signaling: {routes:?}"
    );
    let to_with_tag = one(&answered, "To").to_owned();
    let in_dialog = |method: &str, cseq: u32| {
        let mut m = format!(
            "{method} {remote_target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {alice_addr};rport;branch={}\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to_with_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n",
            branch()
        );
        for r in &routes {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    };
    // Loose routing: the first Route names signaling, where the request goes.
    alice
        .send_to(in_dialog("ACK", 2).as_bytes(), sip)
        .await
        .unwrap();
    recv_sip(&bob, Duration::from_secs(5), "ACK at the callee", |m| {
        first_line(m).starts_with("ACK ")
    })
    .await;

    // The session signaling placed on the relay.
    let ids = relay.created_sessions();
    assert_eq!(ids.len(), 1, "sessions the relay created: {ids:?}");
    let session_path = format!("/sessions/{}", ids[0]);
    let placed: SessionInfo =
        serde_json::from_value(relay.control("GET", &session_path, json!(null)).await).unwrap();
    assert!(
        placed.caller.ice && placed.callee.ice,
        "both legs latch by ICE: {placed:?}"
    );
    assert_eq!(placed.caller.streams[0].relay_rtp, relay_a);
    assert_eq!(placed.callee.streams[0].relay_rtp, relay_b);

    // Each agent knows the other only by the relay candidate of the SDP it received
    // (the host candidates in it are left out: see the top of the file).
    a.add_remote_candidate(&relay_cand_a).unwrap();
    b.add_remote_candidate(&relay_cand_b).unwrap();
    let (_cancel_a, cancel_a) = tokio::sync::mpsc::channel(1);
    let (_cancel_b, cancel_b) = tokio::sync::mpsc::channel(1);
    let (a2, b2) = (a.clone(), b.clone());
    let (ua, pa) = ice_credentials(offer_in);
    let (ub, pb) = ice_credentials(answer_in);
    let dial = tokio::spawn(async move { a2.dial(cancel_a, ub, pb).await });
    let accept = tokio::spawn(async move { b2.accept(cancel_b, ua, pa).await });
    let (conn_a, conn_b) = tokio::time::timeout(Duration::from_secs(10), async {
        (dial.await.unwrap().unwrap(), accept.await.unwrap().unwrap())
    })
    .await
    .expect("ICE completes on both agents through the relay within 10 s");
    let conn_a: Arc<dyn Conn + Send + Sync> = conn_a;
    let conn_b: Arc<dyn Conn + Send + Sync> = conn_b;

    // Both agents selected their host candidate with the relay candidate of their leg.
    let mut local = Vec::new();
    for (who, agent, relay_addr) in [("caller", &a, relay_a), ("callee", &b, relay_b)] {
        let pair = agent
            .get_selected_candidate_pair()
            .unwrap_or_else(|| panic!("the {who}'s agent selected no pair"));
        assert!(
            pair.remote.candidate_type() == CandidateType::Relay
                && pair.remote.address() == relay_addr.ip().to_string()
                && pair.remote.port() == relay_addr.port(),
            "the {who}'s selected pair uses the relay candidate {relay_addr}: {pair}"
        );
        assert_eq!(
            pair.local.candidate_type(),
            CandidateType::Host,
            "the {who}'s selected pair: {pair}"
        );
        local.push(SocketAddr::new(
            pair.local.address().parse().unwrap(),
            pair.local.port(),
        ));
    }

    // RTP both ways over the selected pairs.
    let at_callee = rtp_one_way(&conn_a, &conn_b, 0x1111_1111).await;
    let at_caller = rtp_one_way(&conn_b, &conn_a, 0x2222_2222).await;

    let now: SessionInfo =
        serde_json::from_value(relay.control("GET", &session_path, json!(null)).await).unwrap();
    let (ca, cb) = (&now.caller.counters, &now.callee.counters);
    assert!(
        ca.ice_checks > 0 && cb.ice_checks > 0,
        "authenticated checks on both legs: {ca:?} {cb:?}"
    );
    assert!(
        ca.packets_in >= at_callee as u64 && cb.packets_out >= at_callee as u64,
        "the relay forwarded at least the {at_callee} packets the callee got: {ca:?} {cb:?}"
    );
    assert!(
        cb.packets_in >= at_caller as u64 && ca.packets_out >= at_caller as u64,
        "the relay forwarded at least the {at_caller} packets the caller got: {ca:?} {cb:?}"
    );
    // Each leg latched its agent's own host address, the local end of the pair that
    // agent selected.
    assert_eq!(
        [
            now.caller.streams[0].latched_rtp,
            now.callee.streams[0].latched_rtp
        ],
        [Some(local[0]), Some(local[1])],
        "the legs latched the agents' host candidates of the selected pairs"
    );

    // The caller hangs up through the route set; the callee answers the BYE.
    alice
        .send_to(in_dialog("BYE", 3).as_bytes(), sip)
        .await
        .unwrap();
    let bye = recv_sip(&bob, Duration::from_secs(5), "BYE at the callee", |m| {
        first_line(m).starts_with("BYE ")
    })
    .await;
    bob.send_to(response(&bye, "200 OK", "", "", "").as_bytes(), sip)
        .await
        .unwrap();
    recv_sip(&alice, Duration::from_secs(5), "200 to the BYE", |m| {
        is_response(m, "200", "BYE")
    })
    .await;
    let freed = relay.wait_sessions(0, Duration::from_secs(5)).await;
    assert!(
        freed.is_ok(),
        "after the BYE: sessions {freed:?}, expected 0"
    );
    let _ = a.close().await;
    let _ = b.close().await;
}
