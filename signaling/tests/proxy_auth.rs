//! Proxy authentication of callers (RFC 3261 22.3: 407, Proxy-Authorization), the
//! per-account outgoing call limit, CANCEL never challenged, Max-Forwards (483) and
//! loop detection (482), against the whole server started in-process over UDP.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tandem_signaling::proxy::{msg::loop_hash, ProxyConfig};
use tandem_signaling::registrar::digest::{client_response, Algorithm};
use tandem_signaling::sip::message::{HeaderName, Message};
use tandem_signaling::sip::SipConfig;
use tandem_signaling::SignalingConfig;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "proxy-auth-admin-token-0123456789";
const REALM: &str = "tandem.local";
const PASSWORD: &str = "s3cret-passw0rd";

fn r() -> u64 {
    rand::random()
}

async fn recv(sock: &UdpSocket, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `msg` and returns the first response that is not 100 Trying.
async fn exchange(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    loop {
        let m = recv(sock, Duration::from_secs(5))
            .await
            .expect("response in time");
        if !m.starts_with("SIP/2.0 100") {
            return m;
        }
    }
}

fn status(m: &str) -> u16 {
    Message::parse(m.as_bytes()).unwrap().status().unwrap()
}

fn challenge(resp: &str, header: &str, alg: &str) -> String {
    let m = Message::parse(resp.as_bytes()).unwrap();
    let found: Option<String> = m
        .headers_named(HeaderName::parse(header))
        .map(|h| h.value.to_string())
        .find(|v| v.contains(&format!("algorithm={alg}")));
    found.unwrap_or_else(|| panic!("no {alg} {header} in {resp}"))
}

fn nonce(ch: &str) -> String {
    let i = ch.find("nonce=\"").unwrap() + 7;
    ch[i..].split('"').next().unwrap().to_owned()
}

struct Invite {
    me: SocketAddr,
    from: String,
    to: String,
    call_id: String,
    branch: String,
    max_forwards: u32,
    auth: Option<String>,
    extra: String,
}

impl Invite {
    fn new(me: SocketAddr, from: &str, to: &str) -> Invite {
        Invite {
            me,
            from: from.into(),
            to: to.into(),
            call_id: format!("c{}", r()),
            branch: format!("z9hG4bK{}", r()),
            max_forwards: 70,
            auth: None,
            extra: String::new(),
        }
    }
    fn build(&self, method: &str) -> String {
        let mut m = format!(
            "{method} {to} SIP/2.0\r\n{extra}Via: SIP/2.0/UDP {me};rport;branch={b}\r\nMax-Forwards: {mf}\r\nFrom: <{from}>;tag=f1\r\nTo: <{to}>\r\nCall-ID: {c}\r\nCSeq: 1 {method}\r\nContact: <sip:caller@{me}>\r\n",
            to = self.to,
            extra = self.extra,
            me = self.me,
            b = self.branch,
            mf = self.max_forwards,
            from = self.from,
            c = self.call_id,
        );
        if let Some(a) = &self.auth {
            m.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }
}

/// The server's configuration for these tests: UDP SIP and the API on loopback
/// ports the system picks, data under `dir`.
fn base_config(dir: &std::path::Path) -> SignalingConfig {
    SignalingConfig {
        data_dir: dir.to_path_buf(),
        sip: SipConfig {
            udp_listen: Some("127.0.0.1:0".parse().unwrap()),
            tcp_listen: None,
            realm: REALM.into(),
            ..SipConfig::default()
        },
        api: tandem_signaling::config::ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some(ADMIN.into()),
            ..Default::default()
        },
        ..SignalingConfig::default()
    }
}

async fn start_server(cfg: SignalingConfig) -> (tandem_signaling::Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .unwrap();
    (running, shutdown)
}

async fn api(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    auth: Option<&str>,
    body: Value,
) -> Value {
    let req = client.post(format!("{base}{path}"));
    let req = match auth {
        None => req.bearer_auth(ADMIN),
        Some(login) => req.basic_auth(login, Some(PASSWORD)),
    };
    let resp = req.json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn callers_authenticate_and_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SignalingConfig {
        proxy: ProxyConfig {
            max_outgoing_calls: 1,
            ..ProxyConfig::default()
        },
        ..base_config(dir.path())
    };
    let (running, shutdown) = start_server(cfg).await;
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    for login in ["alice", "bob"] {
        api(
            &client,
            &base,
            "/accounts",
            None,
            json!({"login": login, "password": PASSWORD}),
        )
        .await;
    }
    let inst = "urn:uuid:00000000-0000-4000-8000-00000000b0b1";
    api(
        &client,
        &base,
        "/me/devices",
        Some("bob"),
        json!({"instance_id": inst, "class": "mobile", "name": "bob's phone"}),
    )
    .await;

    // Bob's device registers and then never answers an INVITE.
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dme = dev.local_addr().unwrap();
    let reg = |cseq: u32, auth: Option<String>| {
        format!(
            "REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP {dme};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:bob@{REALM}>;tag=r\r\nTo: <sip:bob@{REALM}>\r\nCall-ID: reg-bob\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:bob@{dme}>;+sip.instance=\"<{inst}>\"\r\nExpires: 600\r\n{}Content-Length: 0\r\n\r\n",
            r(),
            auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default()
        )
    };
    let first = exchange(&dev, sip, &reg(1, None)).await;
    let n = nonce(&challenge(&first, "WWW-Authenticate", "MD5"));
    let a = client_response(
        Algorithm::Md5,
        "bob",
        REALM,
        PASSWORD,
        "REGISTER",
        &format!("sip:{REALM}"),
        &n,
        1,
        "cn",
    );
    assert_eq!(status(&exchange(&dev, sip, &reg(2, Some(a))).await), 200);

    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let bob = format!("sip:bob@{REALM}");
    let alice = format!("sip:alice@{REALM}");

    // A caller claiming our account alice is challenged with 407 (both algorithms);
    // nothing reaches bob's device.
    let inv = Invite::new(me, &alice, &bob);
    let resp = exchange(&caller, sip, &inv.build("INVITE")).await;
    assert_eq!(status(&resp), 407, "{resp}");
    let ch = challenge(&resp, "Proxy-Authenticate", "SHA-256");
    challenge(&resp, "Proxy-Authenticate", "MD5");
    assert!(recv(&dev, Duration::from_millis(200)).await.is_none());

    // RFC 3261 16.4: a client configured with us as its outbound proxy pre-loads a
    // Route naming us (by address or by domain); it is removed and the request is
    // routed on its Request-URI (here: challenged, not 404).
    for route in [format!("<sip:{sip};lr>"), format!("<sip:{REALM};lr>")] {
        let s2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut pre = Invite::new(s2.local_addr().unwrap(), &alice, &bob);
        pre.extra = format!("Route: {route}\r\n");
        let resp = exchange(&s2, sip, &pre.build("INVITE")).await;
        assert_eq!(status(&resp), 407, "Route {route}: {resp}");
    }
    // The hop-by-hop ACK for the 407.
    caller
        .send_to(
            inv.build("ACK")
                .replace(
                    "To: <sip:bob@tandem.local>",
                    &format!(
                        "To: {}",
                        Message::parse(resp.as_bytes())
                            .unwrap()
                            .header(HeaderName::To)
                            .unwrap()
                    ),
                )
                .as_bytes(),
            sip,
        )
        .await
        .unwrap();

    // Wrong password: challenged again.
    let n = nonce(&ch);
    let mut inv2 = Invite::new(me, &alice, &bob);
    inv2.auth = Some(client_response(
        Algorithm::Sha256,
        "alice",
        REALM,
        "wrong-password",
        "INVITE",
        &bob,
        &n,
        1,
        "x1",
    ));
    assert_eq!(
        status(&exchange(&caller, sip, &inv2.build("INVITE")).await),
        407
    );

    // Right credentials: forwarded to the device with our Via, Record-Route and
    // Max-Forwards one lower; the credentials for our realm were for us and do not
    // reach the device, those for another realm pass.
    let mut call1 = Invite::new(me, &alice, &bob);
    call1.extra = "Proxy-Authorization: Digest username=\"a\", realm=\"gw.example\", nonce=\"n\", uri=\"sip:x\", response=\"00\"\r\n".into();
    call1.auth = Some(client_response(
        Algorithm::Sha256,
        "alice",
        REALM,
        PASSWORD,
        "INVITE",
        &bob,
        &n,
        2,
        "x2",
    ));
    caller
        .send_to(call1.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    let trying = recv(&caller, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status(&trying), 100, "{trying}");
    let fwd = recv(&dev, Duration::from_secs(5))
        .await
        .expect("INVITE at the device");
    let fm = Message::parse(fwd.as_bytes()).unwrap();
    assert_eq!(fm.method(), Some("INVITE"));
    assert_eq!(fm.request_uri(), Some(format!("sip:bob@{dme}").as_str()));
    assert_eq!(fm.header(HeaderName::MaxForwards), Some("69"));
    assert_eq!(fm.vias().unwrap().len(), 2);
    assert_eq!(fm.list(HeaderName::RecordRoute).unwrap().len(), 2);
    let creds: Vec<&str> = fm
        .headers_named(HeaderName::ProxyAuthorization)
        .map(|h| h.value.as_ref())
        .collect();
    assert_eq!(creds.len(), 1, "{fwd}");
    assert!(creds[0].contains("realm=\"gw.example\""), "{fwd}");

    // A second simultaneous call is over alice's limit of 1.
    let mut call2 = Invite::new(me, &alice, &bob);
    call2.auth = Some(client_response(
        Algorithm::Sha256,
        "alice",
        REALM,
        PASSWORD,
        "INVITE",
        &bob,
        &n,
        3,
        "x3",
    ));
    let resp = exchange(&caller, sip, &call2.build("INVITE")).await;
    assert!(
        resp.starts_with("SIP/2.0 403 Outgoing Call Limit Reached"),
        "{resp}"
    );

    // CANCEL is never challenged: 200, then 487 for the INVITE at once (the device
    // never answered, so nothing rings there).
    let resp = exchange(&caller, sip, &call1.build("CANCEL")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let resp = recv(&caller, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status(&resp), 487, "{resp}");

    // The limit is free again.
    let mut call3 = Invite::new(me, &alice, &bob);
    call3.auth = Some(client_response(
        Algorithm::Md5,
        "alice",
        REALM,
        PASSWORD,
        "INVITE",
        &bob,
        &n,
        4,
        "x4",
    ));
    caller
        .send_to(call3.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    assert_eq!(
        status(&recv(&caller, Duration::from_secs(5)).await.unwrap()),
        100
    );
    // A replayed nonce-count is refused.
    let mut replay = Invite::new(me, &alice, &bob);
    replay.auth = call3.auth.clone();
    let resp = exchange(&caller, sip, &replay.build("INVITE")).await;
    assert!(matches!(status(&resp), 403 | 407), "{resp}");

    // A caller from the outside (From not ours) is not challenged.
    let ext = Invite::new(me, "sip:carol@example.org", &bob);
    caller
        .send_to(ext.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    assert_eq!(
        status(&recv(&caller, Duration::from_secs(5)).await.unwrap()),
        100
    );

    // Max-Forwards 0: 483.
    let mut mf = Invite::new(me, "sip:carol@example.org", &bob);
    mf.max_forwards = 0;
    assert_eq!(
        status(&exchange(&caller, sip, &mf.build("INVITE")).await),
        483
    );

    // A request that already went through us unchanged: 482 Loop Detected.
    let looped = Invite::new(me, "sip:carol@example.org", &bob);
    let text = looped.build("INVITE");
    let hash = loop_hash(&Message::parse(text.as_bytes()).unwrap());
    let mut looped2 = Invite::new(me, "sip:carol@example.org", &bob);
    looped2.call_id = looped.call_id.clone();
    looped2.extra = format!("Via: SIP/2.0/UDP {sip};branch=z9hG4bK{hash}.1234\r\n");
    // Our Via below the sender's: build puts `extra` first, so swap to keep the
    // sender's on top.
    let t = looped2.build("INVITE");
    let mut lines: Vec<&str> = t.split("\r\n").collect();
    lines.swap(1, 2);
    let t = lines.join("\r\n");
    assert_eq!(status(&exchange(&caller, sip, &t).await), 482);

    shutdown.cancel();
    running.wait().await.unwrap();
}

#[test]
fn dial_plan_longest_prefix_strip_prepend_and_offnet_mark() {
    use tandem_signaling::proxy::dialplan::{route, DialPlanConfig, DialRoute};
    let r = |prefix: &str, target: &str, strip: usize, prepend: &str| DialRoute {
        prefix: prefix.into(),
        target: target.into(),
        strip,
        prepend: prepend.into(),
        name: None,
    };
    let plan = DialPlanConfig {
        offnet_prefix: "int".into(),
        routes: vec![
            r("", "sip:10.0.0.1:5060", 0, ""),
            r("0049", "10.0.0.2:5070", 2, ""),
            r("00493", "sip:10.0.0.3", 4, "0"),
        ],
    };
    plan.validate().unwrap();
    let x = route(&plan, "int0049301234").unwrap();
    assert!(x.offnet);
    assert_eq!(x.route.target, "sip:10.0.0.3");
    assert_eq!(x.number, "0301234");
    let x = route(&plan, "+0049 40-12").unwrap();
    assert!(!x.offnet);
    assert_eq!(
        (x.route.target.as_str(), x.number.as_str()),
        ("10.0.0.2:5070", "494012")
    );
    assert_eq!(x.route.host_port(), Some(("10.0.0.2".into(), 5070)));
    let x = route(&plan, "INT112").unwrap();
    assert_eq!(
        (x.route.target.as_str(), x.offnet),
        ("sip:10.0.0.1:5060", true)
    );
    assert!(route(&plan, "alice").is_none(), "not a number");
    assert!(route(&plan, "int").is_none());
    let empty = DialPlanConfig::default();
    assert!(route(&empty, "int0049301234").is_none());

    let mut bad = plan.clone();
    bad.routes.push(r("12a", "10.0.0.9", 0, ""));
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("dialplan.routes[3].prefix"));
    let mut bad = plan.clone();
    bad.routes.push(r("77", "sip:user@host", 0, ""));
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("dialplan.routes[3].target"));
    let mut bad = plan;
    bad.routes.push(r("0049", "10.0.0.9", 0, ""));
    assert!(bad.validate().unwrap_err().contains("duplicate"));
}

#[tokio::test]
async fn offnet_calls_follow_the_dial_plan_for_our_callers_only() {
    use tandem_signaling::proxy::dialplan::{DialPlanConfig, DialRoute};
    let gw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = gw.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = SignalingConfig {
        dialplan: DialPlanConfig {
            offnet_prefix: "int".into(),
            routes: vec![DialRoute {
                prefix: "0049".into(),
                target: format!("sip:{gw_addr}"),
                strip: 2,
                prepend: String::new(),
                name: Some("Germany".into()),
            }],
        },
        ..base_config(dir.path())
    };
    let (running, shutdown) = start_server(cfg).await;
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    api(
        &client,
        &base,
        "/accounts",
        None,
        json!({"login": "alice", "password": PASSWORD}),
    )
    .await;

    // The plan as clients see it (no gateway addresses), for an account or the admin.
    let url = format!("{base}/dialplan");
    let v: Value = client
        .get(&url)
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"offnet_prefix": "int", "routes": [
            {"prefix": "0049", "strip": 2, "prepend": "", "name": "Germany"}]})
    );
    let s = client
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::OK);
    let s = client.get(&url).send().await.unwrap().status();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let s = client
        .get(&url)
        .basic_auth("alice", Some("wrong-password"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let target = format!("sip:int0049301234@{REALM}");

    // A stranger cannot call out.
    let ext = Invite::new(me, "sip:carol@example.org", &target);
    assert_eq!(
        status(&exchange(&caller, sip, &ext.build("INVITE")).await),
        404
    );

    // Alice authenticates and reaches the gateway with the number rewritten.
    let alice = format!("sip:alice@{REALM}");
    let inv = Invite::new(me, &alice, &target);
    let resp = exchange(&caller, sip, &inv.build("INVITE")).await;
    let n = nonce(&challenge(&resp, "Proxy-Authenticate", "MD5"));
    let mut inv = Invite::new(me, &alice, &target);
    inv.auth = Some(client_response(
        Algorithm::Md5,
        "alice",
        REALM,
        PASSWORD,
        "INVITE",
        &target,
        &n,
        1,
        "c1",
    ));
    caller
        .send_to(inv.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    let got = recv(&gw, Duration::from_secs(5))
        .await
        .expect("INVITE at the gateway");
    let m = Message::parse(got.as_bytes()).unwrap();
    assert_eq!(
        m.request_uri(),
        Some(format!("sip:49301234@{gw_addr}").as_str())
    );
    assert_eq!(m.list(HeaderName::RecordRoute).unwrap().len(), 2);

    // The gateway answers 200 with the Record-Route; the caller gets it and its BYE
    // (Route from the Record-Route, reversed) reaches the gateway.
    let rr = m.header(HeaderName::RecordRoute).unwrap().to_owned();
    let via_lines: String = m
        .headers_named(HeaderName::Via)
        .map(|h| format!("Via: {}\r\n", h.value))
        .collect();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{via_lines}Record-Route: {rr}\r\nFrom: {}\r\nTo: {};tag=gw1\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:gw@{gw_addr}>\r\nContent-Length: 0\r\n\r\n",
        m.header(HeaderName::From).unwrap(),
        m.header(HeaderName::To).unwrap(),
        m.call_id().unwrap()
    );
    gw.send_to(ok.as_bytes(), sip).await.unwrap();
    let resp = loop {
        let r = recv(&caller, Duration::from_secs(5)).await.unwrap();
        if !r.starts_with("SIP/2.0 100") {
            break r;
        }
    };
    assert_eq!(status(&resp), 200, "{resp}");
    let rm = Message::parse(resp.as_bytes()).unwrap();
    assert_eq!(rm.vias().unwrap().len(), 1, "our Via removed");
    let mut routes = rm.list(HeaderName::RecordRoute).unwrap();
    routes.reverse();
    let bye = format!(
        "BYE sip:gw@{gw_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKbye{}\r\nRoute: {}\r\nMax-Forwards: 70\r\nFrom: <{alice}>;tag=f1\r\nTo: <{target}>;tag=gw1\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        r(),
        routes.join(", "),
        inv.call_id
    );
    caller.send_to(bye.as_bytes(), sip).await.unwrap();
    let got = recv(&gw, Duration::from_secs(5))
        .await
        .expect("BYE at the gateway");
    let b = Message::parse(got.as_bytes()).unwrap();
    assert_eq!(b.method(), Some("BYE"));
    assert_eq!(b.header(HeaderName::Route), None, "our routes popped");

    shutdown.cancel();
    running.wait().await.unwrap();
}

async fn register_device(sip: SocketAddr, dev: &UdpSocket, login: &str, inst: &str) {
    let dme = dev.local_addr().unwrap();
    let call = r();
    let reg = |cseq: u32, auth: Option<String>| {
        format!(
            "REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP {dme};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:{login}@{REALM}>;tag=r\r\nTo: <sip:{login}@{REALM}>\r\nCall-ID: reg-{call}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{login}@{dme}>;+sip.instance=\"<{inst}>\"\r\nExpires: 600\r\n{}Content-Length: 0\r\n\r\n",
            r(),
            auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default()
        )
    };
    let first = exchange(dev, sip, &reg(1, None)).await;
    let n = nonce(&challenge(&first, "WWW-Authenticate", "MD5"));
    let a = client_response(
        Algorithm::Md5,
        login,
        REALM,
        PASSWORD,
        "REGISTER",
        &format!("sip:{REALM}"),
        &n,
        1,
        "cn",
    );
    assert_eq!(status(&exchange(dev, sip, &reg(2, Some(a))).await), 200);
}

/// Account bob with two authorised phones (instances `...0b<tag>01` and `...0b<tag>02`),
/// each registered from its own UDP socket.
async fn bob_with_two_phones(
    client: &reqwest::Client,
    base: &str,
    sip: SocketAddr,
    tag: &str,
) -> ([String; 2], Vec<UdpSocket>) {
    api(
        client,
        base,
        "/accounts",
        None,
        json!({"login": "bob", "password": PASSWORD}),
    )
    .await;
    let insts = [1, 2].map(|n| format!("urn:uuid:00000000-0000-4000-8000-0000000b{tag}0{n}"));
    let mut devs = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        api(
            client,
            base,
            "/me/devices",
            Some("bob"),
            json!({"instance_id": inst, "class": "mobile", "name": format!("phone {i}")}),
        )
        .await;
        let d = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        register_device(sip, &d, "bob", inst).await;
        devs.push(d);
    }
    (insts, devs)
}

/// A response to a request a device received, built the way a UAS does.
fn answer(req: &str, code: u16, reason: &str, to_tag: &str) -> String {
    let m = Message::parse(req.as_bytes()).unwrap();
    let vias: String = m
        .headers_named(HeaderName::Via)
        .map(|h| format!("Via: {}\r\n", h.value))
        .collect();
    format!(
        "SIP/2.0 {code} {reason}\r\n{vias}From: {}\r\nTo: {};tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        m.header(HeaderName::From).unwrap(),
        m.header(HeaderName::To).unwrap(),
        m.call_id().unwrap(),
        m.header(HeaderName::CSeq).unwrap()
    )
}

#[tokio::test]
async fn a_device_that_registers_while_the_call_rings_gets_it_as_a_new_branch() {
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start_server(base_config(dir.path())).await;
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    api(
        &client,
        &base,
        "/accounts",
        None,
        json!({"login": "bob", "password": PASSWORD}),
    )
    .await;
    let insts = [
        "urn:uuid:00000000-0000-4000-8000-0000000b0b01",
        "urn:uuid:00000000-0000-4000-8000-0000000b0b02",
    ];
    for (i, inst) in insts.iter().enumerate() {
        api(
            &client,
            &base,
            "/me/devices",
            Some("bob"),
            json!({"instance_id": inst, "class": "mobile", "name": format!("phone {i}")}),
        )
        .await;
    }
    let d1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_device(sip, &d1, "bob", insts[0]).await;

    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let inv = Invite::new(me, "sip:carol@example.org", &format!("sip:bob@{REALM}"));
    caller
        .send_to(inv.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    let got1 = recv(&d1, Duration::from_secs(5))
        .await
        .expect("INVITE at phone 0");
    d1.send_to(answer(&got1, 180, "Ringing", "d1").as_bytes(), sip)
        .await
        .unwrap();

    // Phone 1 comes online while it rings: it gets the INVITE at once.
    let d2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_device(sip, &d2, "bob", insts[1]).await;
    let got2 = recv(&d2, Duration::from_secs(2))
        .await
        .expect("INVITE at phone 1");
    let m2 = Message::parse(got2.as_bytes()).unwrap();
    assert_eq!(m2.method(), Some("INVITE"));
    assert_eq!(m2.call_id(), Some(inv.call_id.as_str()));
    // A refresh of phone 1's registration does not ring it twice.
    register_device(sip, &d2, "bob", insts[1]).await;
    let again = recv(&d2, Duration::from_millis(300)).await;
    assert!(
        again.as_deref().is_none_or(|m| !m.starts_with("INVITE")),
        "{again:?}"
    );

    // Phone 1 answers: the caller gets 200, phone 0 gets CANCEL with the Reason.
    d2.send_to(answer(&got2, 200, "OK", "d2").as_bytes(), sip)
        .await
        .unwrap();
    let resp = loop {
        let r = recv(&caller, Duration::from_secs(5)).await.unwrap();
        if !r.starts_with("SIP/2.0 1") {
            break r;
        }
    };
    assert_eq!(status(&resp), 200, "{resp}");
    let cancel = loop {
        let m = recv(&d1, Duration::from_secs(5))
            .await
            .expect("CANCEL at phone 0");
        if m.starts_with("CANCEL") {
            break m;
        }
    };
    let c = Message::parse(cancel.as_bytes()).unwrap();
    assert_eq!(
        c.header(HeaderName::Other("Reason")),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// Records what the proxy hands to the offline hooks and stores MESSAGEs (202).
/// (what, live instances, body)
type Seen = (String, Vec<String>, Vec<u8>);

#[derive(Default)]
struct Hooks {
    seen: std::sync::Mutex<Vec<Seen>>,
}

impl tandem_signaling::proxy::OfflineTargets for Hooks {
    fn no_live_binding<'a>(
        &'a self,
        req: &'a tandem_signaling::proxy::ForkedRequest,
    ) -> tandem_signaling::proxy::HookFuture<'a, (u16, &'static str)> {
        self.seen.lock().unwrap().push((
            format!("offline {}", req.method),
            req.live_instances.clone(),
            req.body.clone(),
        ));
        Box::pin(async { (202, "Accepted") })
    }
    fn forked<'a>(
        &'a self,
        req: &'a tandem_signaling::proxy::ForkedRequest,
    ) -> tandem_signaling::proxy::HookFuture<'a, ()> {
        self.seen.lock().unwrap().push((
            format!("forked {}", req.method),
            req.live_instances.clone(),
            req.body.clone(),
        ));
        Box::pin(async {})
    }
}

#[tokio::test]
async fn offline_hooks_see_forked_and_unroutable_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start_server(base_config(dir.path())).await;
    let hooks = std::sync::Arc::new(Hooks::default());
    running.set_offline_targets(hooks.clone());
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    api(
        &client,
        &base,
        "/accounts",
        None,
        json!({"login": "bob", "password": PASSWORD}),
    )
    .await;
    let inst = "urn:uuid:00000000-0000-4000-8000-0000000b0b09";
    api(
        &client,
        &base,
        "/me/devices",
        Some("bob"),
        json!({"instance_id": inst, "class": "mobile", "name": "p"}),
    )
    .await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let mut m = Invite::new(me, "sip:carol@example.org", &format!("sip:bob@{REALM}"));
    let text = m.build("MESSAGE").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    );
    // Nobody registered: the hook answers (202 here).
    let resp = exchange(&caller, sip, &text).await;
    assert_eq!(status(&resp), 202, "{resp}");

    // One device registered: forked to it, the hook is told which devices got it.
    let d = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_device(sip, &d, "bob", inst).await;
    m.call_id = format!("c{}", r());
    m.branch = format!("z9hG4bK{}", r());
    let text = m.build("MESSAGE").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    );
    caller.send_to(text.as_bytes(), sip).await.unwrap();
    let got = recv(&d, Duration::from_secs(5)).await.unwrap();
    assert!(got.starts_with("MESSAGE "), "{got}");
    assert!(got.ends_with("hi"));
    d.send_to(answer(&got, 200, "OK", "d").as_bytes(), sip)
        .await
        .unwrap();
    assert_eq!(
        status(&recv(&caller, Duration::from_secs(5)).await.unwrap()),
        200
    );
    // The `forked` hook runs in its own task, next to the fork.
    for _ in 0..100 {
        if hooks.seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = hooks.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("offline MESSAGE".to_owned(), vec![], b"hi".to_vec()),
            (
                "forked MESSAGE".to_owned(),
                vec![inst.to_owned()],
                b"hi".to_vec()
            ),
        ]
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// Revoking a device through the API while its branch rings cancels that branch;
/// the other device keeps ringing and can still answer.
#[tokio::test]
async fn revoking_a_device_while_it_rings_cancels_its_branch() {
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start_server(base_config(dir.path())).await;
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    let (insts, devs) = bob_with_two_phones(&client, &base, sip, "0c").await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let inv = Invite::new(me, "sip:carol@example.org", &format!("sip:bob@{REALM}"));
    caller
        .send_to(inv.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    let mut got = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        let m = recv_request(d, "INVITE", &inv.call_id).await;
        d.send_to(answer(&m, 180, "Ringing", &format!("d{i}")).as_bytes(), sip)
            .await
            .unwrap();
        got.push(m);
    }
    // Phone 0 is revoked: its branch gets CANCEL at once.
    let resp = client
        .delete(format!("{base}/me/devices/{}", insts[0]))
        .basic_auth("bob", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let cancel = recv_request(&devs[0], "CANCEL", &inv.call_id).await;
    devs[0]
        .send_to(answer(&cancel, 200, "OK", "d0").as_bytes(), sip)
        .await
        .unwrap();
    devs[0]
        .send_to(
            answer(&got[0], 487, "Request Terminated", "d0").as_bytes(),
            sip,
        )
        .await
        .unwrap();
    // Phone 1 still rings and answers: the caller gets its 200.
    devs[1]
        .send_to(answer(&got[1], 200, "OK", "d1").as_bytes(), sip)
        .await
        .unwrap();
    let fin = final_of(&caller, &inv.call_id).await;
    assert_eq!(status(&fin), 200, "{fin}");
    assert!(fin.contains("tag=d1"), "{fin}");

    // The SIP metrics saw it: requests and responses by method and code,
    // registrations by device class, the fork no longer active.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tandem_signaling_sip_requests_total{method=\"INVITE\"} 1",
        "tandem_signaling_sip_requests_total{method=\"REGISTER\"} 4",
        "tandem_signaling_sip_responses_total{method=\"INVITE\",code=\"200\"} 1",
        "tandem_signaling_sip_responses_total{method=\"REGISTER\",code=\"401\"} 2",
        "tandem_signaling_sip_registrations_total{class=\"mobile\"} 2",
        "tandem_signaling_sip_forks_active 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("tandem_signaling_sip_transactions_active"));
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// The next request `method` of call `call_id` at a device (retransmissions and other
/// calls' requests are passed over).
async fn recv_request(dev: &UdpSocket, method: &str, call_id: &str) -> String {
    loop {
        let m = recv(dev, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{method} of {call_id} at the device"));
        let p = Message::parse(m.as_bytes()).unwrap();
        if p.method() == Some(method) && p.call_id() == Some(call_id) {
            return m;
        }
    }
}

/// The caller's first final response to the request with `call_id`.
async fn final_of(caller: &UdpSocket, call_id: &str) -> String {
    loop {
        let m = recv(caller, Duration::from_secs(5))
            .await
            .expect("final response in time");
        let p = Message::parse(m.as_bytes()).unwrap();
        if p.call_id() == Some(call_id) && p.status().is_some_and(|s| s >= 200) {
            return m;
        }
    }
}

#[tokio::test]
async fn the_transaction_limit_counts_calls_in_progress_not_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SignalingConfig {
        proxy: ProxyConfig {
            max_transactions: 2,
            ..ProxyConfig::default()
        },
        ..base_config(dir.path())
    };
    let (running, shutdown) = start_server(cfg).await;
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    api(
        &client,
        &base,
        "/accounts",
        None,
        json!({"login": "bob", "password": PASSWORD}),
    )
    .await;
    let inst = "urn:uuid:00000000-0000-4000-8000-0000000b0b11";
    api(
        &client,
        &base,
        "/me/devices",
        Some("bob"),
        json!({"instance_id": inst, "class": "mobile", "name": "phone"}),
    )
    .await;
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    register_device(sip, &dev, "bob", inst).await;

    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let to = format!("sip:bob@{REALM}");
    let calls: Vec<Invite> = (0..4)
        .map(|_| Invite::new(me, "sip:carol@example.org", &to))
        .collect();

    // Two calls ring: the limit is reached, a third is turned away for now.
    let mut at_device = Vec::new();
    for c in &calls[..2] {
        caller
            .send_to(c.build("INVITE").as_bytes(), sip)
            .await
            .unwrap();
        at_device.push(recv_request(&dev, "INVITE", &c.call_id).await);
    }
    let refused = exchange(&caller, sip, &calls[2].build("INVITE")).await;
    assert_eq!(status(&refused), 503, "{refused}");
    let m = Message::parse(refused.as_bytes()).unwrap();
    assert_eq!(m.header(HeaderName::Other("Retry-After")), Some("5"));

    // The device declines the first call. That call is over for the caller, though
    // the proxy keeps its branch up to 32 s to absorb retransmissions (Timer D): it
    // no longer counts, and the fourth call rings.
    dev.send_to(
        answer(&at_device[0], 486, "Busy Here", "b0").as_bytes(),
        sip,
    )
    .await
    .unwrap();
    let busy = final_of(&caller, &calls[0].call_id).await;
    assert_eq!(status(&busy), 486, "{busy}");
    caller
        .send_to(calls[0].build("ACK").as_bytes(), sip)
        .await
        .unwrap();
    caller
        .send_to(calls[3].build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    let fourth = recv_request(&dev, "INVITE", &calls[3].call_id).await;
    at_device.push(fourth);

    // The rest end busy too.
    for (i, c) in [(1usize, &calls[1]), (2, &calls[3])] {
        dev.send_to(answer(&at_device[i], 486, "Busy Here", "b").as_bytes(), sip)
            .await
            .unwrap();
        assert_eq!(status(&final_of(&caller, &c.call_id).await), 486);
    }
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// The drain before a stop (SIGTERM): a ringing call ends at once (CANCEL with a
/// Reason to every device, 503 with Retry-After to the caller), `/ready` turns 503
/// while `/health` stays 200, and a new call gets 503 with Retry-After.
#[tokio::test]
async fn draining_ends_ringing_calls_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown) = start_server(base_config(dir.path())).await;
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    let (_, devs) = bob_with_two_phones(&client, &base, sip, "0d").await;
    let ready = |c: reqwest::Client, url: String| async move {
        c.get(url).send().await.unwrap().status().as_u16()
    };
    assert_eq!(ready(client.clone(), format!("{base}/ready")).await, 200);

    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let inv = Invite::new(me, "sip:carol@example.org", &format!("sip:bob@{REALM}"));
    caller
        .send_to(inv.build("INVITE").as_bytes(), sip)
        .await
        .unwrap();
    let mut got = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        let m = recv_request(d, "INVITE", &inv.call_id).await;
        d.send_to(answer(&m, 180, "Ringing", &format!("d{i}")).as_bytes(), sip)
            .await
            .unwrap();
        got.push(m);
    }
    // The devices answer their CANCELs as phones do, while the drain runs.
    let devices = async {
        for (i, d) in devs.iter().enumerate() {
            let cancel = recv_request(d, "CANCEL", &inv.call_id).await;
            let reason = Message::parse(cancel.as_bytes())
                .unwrap()
                .header(HeaderName::parse("Reason"))
                .map(str::to_owned);
            assert!(
                reason.as_deref().is_some_and(|r| r.contains("cause=503")),
                "{cancel}"
            );
            d.send_to(answer(&cancel, 200, "OK", &format!("d{i}")).as_bytes(), sip)
                .await
                .unwrap();
            d.send_to(
                answer(&got[i], 487, "Request Terminated", &format!("d{i}")).as_bytes(),
                sip,
            )
            .await
            .unwrap();
        }
    };
    let (report, ()) = tokio::join!(running.drain(), devices);
    assert_eq!(report.ended, 1, "{report:?}");
    assert!(report.pushes_settled);
    let fin = final_of(&caller, &inv.call_id).await;
    assert_eq!(status(&fin), 503, "{fin}");
    let fin_msg = Message::parse(fin.as_bytes()).unwrap();
    assert_eq!(fin_msg.header(HeaderName::parse("Retry-After")), Some("5"));

    assert_eq!(ready(client.clone(), format!("{base}/ready")).await, 503);
    assert_eq!(ready(client.clone(), format!("{base}/health")).await, 200);
    // A new call while draining: 503 with Retry-After, no device rings.
    let inv2 = Invite::new(me, "sip:carol@example.org", &format!("sip:bob@{REALM}"));
    let resp = exchange(&caller, sip, &inv2.build("INVITE")).await;
    assert_eq!(status(&resp), 503, "{resp}");
    assert!(resp.contains("Retry-After: 5"), "{resp}");
    while let Some(m) = recv(&devs[0], Duration::from_millis(300)).await {
        // ACKs of the 487s may still arrive; the new call must not.
        assert!(
            !m.contains(&inv2.call_id),
            "a device rang while draining: {m}"
        );
    }

    shutdown.cancel();
    running.wait().await.unwrap();
}
