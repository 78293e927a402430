//! SIP over WebSocket (RFC 7118) end to end with a WebSocket client from another
//! project (tokio-tungstenite): the `sip` subprotocol handshake, REGISTER with digest
//! from a browser-like device (Contact and Via on a `.invalid` host), a call from a
//! UDP caller reaching it over its flow, ACK and BYE routed both ways by the
//! Record-Route flow tokens, an oversize message closing the connection, and WSS with
//! a certificate made here.

mod sip_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sip_support::*;
use tandem_signaling::model::DeviceClass;
use tandem_signaling::registrar::digest::Algorithm;
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::message::{HeaderName, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);
/// The browser's made-up host (RFC 7118 section 5.2).
const BROWSER_HOST: &str = "df7jal23ls0d.invalid";

/// Connects over `stream` to `url`, offering the `sip` subprotocol when `sip`.
async fn ws_connect<S>(stream: S, url: &str, sip: bool) -> Result<WebSocketStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = url.into_client_request().unwrap();
    if sip {
        req.headers_mut()
            .insert("sec-websocket-protocol", "sip".parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    if sip {
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("sip"),
            "the server names the subprotocol"
        );
    }
    Ok(ws)
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
    ws.send(WsMessage::text(text)).await.unwrap();
}

/// The next SIP message on the WebSocket (pings skipped).
async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("no WebSocket error");
        match m {
            WsMessage::Text(t) => return t.as_str().to_owned(),
            WsMessage::Binary(b) => return String::from_utf8(b.to_vec()).unwrap(),
            WsMessage::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// The next message on `ws` that is not a provisional response.
async fn recv_final<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let m = recv(ws).await;
        if !m.starts_with("SIP/2.0 1") {
            return m;
        }
    }
}

fn code(msg: &str) -> u16 {
    Message::parse(msg.as_bytes()).unwrap().status().unwrap()
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A REGISTER the way a browser sends it (RFC 7118 section 5.2; RFC 5626 outbound).
fn browser_register(transport: &str, instance: u32, cseq: u32, auth: Option<&str>) -> String {
    let mut m = format!(
        "REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/{} {BROWSER_HOST};branch=z9hG4bK{:016x}\r\nMax-Forwards: 70\r\nTo: <sip:{LOGIN}@{REALM}>\r\nFrom: <sip:{LOGIN}@{REALM}>;tag=ws{instance}\r\nCall-ID: ws-reg-{instance}@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:k8s0{instance}@{BROWSER_HOST};transport=ws>;+sip.instance=\"<{}>\";reg-id=1;expires=600\r\nSupported: path, outbound\r\n",
        transport.to_uppercase(),
        rand::random::<u64>(),
        uuid(instance)
    );
    if let Some(a) = auth {
        m.push_str(&format!("Authorization: {a}\r\n"));
    }
    m.push_str("Content-Length: 0\r\n\r\n");
    m
}

/// REGISTER with a digest round over the WebSocket; returns the final response.
async fn ws_register<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    transport: &str,
    instance: u32,
) -> String {
    send(ws, &browser_register(transport, instance, 1, None)).await;
    let r = recv_final(ws).await;
    assert_eq!(code(&r), 401, "{r}");
    // Browsers read the last challenge: over WebSocket it is the algorithm listed
    // first in `digest_algorithms` (MD5 by default, which JsSIP does).
    let last = header(&r, "WWW-Authenticate").pop().unwrap();
    assert!(last.contains("algorithm=MD5"), "{r}");
    let (nonce, _) = challenge_nonce(r.as_bytes(), "MD5");
    let auth = authorization(Algorithm::Md5, PASSWORD, &nonce, 1);
    send(ws, &browser_register(transport, instance, 2, Some(&auth))).await;
    recv_final(ws).await
}

/// Answers a request received on the WebSocket with `status`, as the UAS does: Via,
/// From, Call-ID, CSeq copied, the To tag added, Record-Route copied on a 2xx to an
/// INVITE, a Contact on the browser's host.
fn answer(req: &str, status: &str, to_tag: &str) -> String {
    let mut m = format!("SIP/2.0 {status}\r\n");
    for v in header(req, "Via") {
        m.push_str(&format!("Via: {v}\r\n"));
    }
    let to = header(req, "To")[0];
    let to = if to.contains(";tag=") {
        to.to_owned()
    } else {
        format!("{to};tag={to_tag}")
    };
    m.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
        header(req, "From")[0],
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0]
    ));
    if status.starts_with('2') && req.starts_with("INVITE ") {
        for rr in header(req, "Record-Route") {
            m.push_str(&format!("Record-Route: {rr}\r\n"));
        }
        m.push_str(&format!(
            "Contact: <sip:k8s01@{BROWSER_HOST};transport=ws>\r\n"
        ));
    }
    m.push_str("Content-Length: 0\r\n\r\n");
    m
}

/// The Record-Route entries of a message, one per element, in order.
fn record_routes(msg: &str) -> Vec<String> {
    let m = Message::parse(msg.as_bytes()).unwrap();
    m.list(HeaderName::RecordRoute)
        .unwrap_or_default()
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// A UDP caller (RFC 3261 UAC, no transactions beyond what the test needs).
struct Caller {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Caller {
    fn me(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    async fn send(&self, m: &str) {
        self.sock.send_to(m.as_bytes(), self.server).await.unwrap();
    }

    async fn recv_final(&self) -> String {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, _) = tokio::time::timeout(WAIT, self.sock.recv_from(&mut buf))
                .await
                .expect("a response in time")
                .unwrap();
            let m = String::from_utf8(buf[..n].to_vec()).unwrap();
            if !m.starts_with("SIP/2.0 1") {
                return m;
            }
        }
    }

    fn request(&self, method: &str, ruri: &str, call: &str, cseq: u32, extra: &str) -> String {
        let me = self.me();
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bK{call}{method}{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.org>;tag=c-{call}\r\nTo: <sip:{LOGIN}@{REALM}>{extra}\r\nCall-ID: {call}@test\r\nCSeq: {cseq} {method}\r\nContact: <sip:carol@{me}>\r\nContent-Length: 0\r\n\r\n"
        )
    }
}

/// A dialog set up from the UDP caller to the browser: what each side needs for its
/// in-dialog requests.
struct Dialog {
    call: String,
    callee_tag: String,
    /// Record-Route as the callee saw it (its route set, in order).
    rr: Vec<String>,
}

/// The caller INVITEs the account; the browser gets it over its flow and answers;
/// the caller gets the 200 and ACKs, which the browser gets too.
async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    caller: &Caller,
    ws: &mut WebSocketStream<S>,
    call: &str,
) -> Dialog {
    caller
        .send(&caller.request("INVITE", &format!("sip:{LOGIN}@{REALM}"), call, 1, ""))
        .await;
    let inv = recv(ws).await;
    assert!(
        inv.starts_with(&format!(
            "INVITE sip:k8s01@{BROWSER_HOST};transport=ws SIP/2.0"
        )),
        "the INVITE goes to the browser's Contact over its flow: {inv}"
    );
    assert!(
        header(&inv, "Via")[0].starts_with("SIP/2.0/WS "),
        "our Via names WS: {inv}"
    );
    let rr = record_routes(&inv);
    assert_eq!(rr.len(), 2, "double Record-Route (RFC 5658): {inv}");
    assert!(rr[0].contains("transport=ws"), "{rr:?}");
    assert!(rr[1].contains("transport=udp"), "{rr:?}");
    let tag = format!("b-{call}");
    send(ws, &answer(&inv, "180 Ringing", &tag)).await;
    send(ws, &answer(&inv, "200 OK", &tag)).await;
    let ok = caller.recv_final().await;
    assert_eq!(code(&ok), 200, "{ok}");
    assert_eq!(
        record_routes(&ok),
        rr,
        "the caller gets the same Record-Route"
    );
    // The caller's route set is the Record-Route reversed (RFC 3261 12.1.2).
    let routes: Vec<String> = rr.iter().rev().cloned().collect();
    let ack = caller.request(
        "ACK",
        &format!("sip:k8s01@{BROWSER_HOST};transport=ws"),
        call,
        1,
        &format!(";tag={tag}\r\nRoute: {}", routes.join(", ")),
    );
    caller.send(&ack).await;
    let got = recv(ws).await;
    assert!(
        got.starts_with("ACK "),
        "the ACK reaches the browser: {got}"
    );
    Dialog {
        call: call.to_owned(),
        callee_tag: tag,
        rr,
    }
}

async fn server_with_ws(
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut tandem_signaling::sip::SipConfig),
) -> (
    tandem_signaling::service::SipServer,
    tokio_util::sync::CancellationToken,
    tandem_signaling::model::AccountId,
) {
    let (store, account) = store_with_account(
        &sqlite_url(dir),
        &[(1, DeviceClass::Web), (2, DeviceClass::Mobile)],
    )
    .await;
    let mut sip = sip_config();
    sip.ws_listen = Some("127.0.0.1:0".parse().unwrap());
    tweak(&mut sip);
    let (server, shutdown) = start(store, sip, RegistrarConfig::default()).await;
    (server, shutdown, account)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_without_the_sip_subprotocol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, shutdown, _) = server_with_ws(&dir, |_| {}).await;
    let addr = server.local_addrs().ws.unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    match ws_connect(tcp, &format!("ws://{addr}/"), false).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("upgrade without the sip subprotocol accepted"),
    }
    // A plain HTTP request (no upgrade) gets no WebSocket (the connection is closed),
    // and the listener still serves the next client.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut got),
    )
    .await
    .expect("closed in time");
    let got = String::from_utf8_lossy(&got);
    assert!(!got.starts_with("HTTP/1.1 101"), "{got}");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut ws = ws_connect(tcp, &format!("ws://{addr}/"), true)
        .await
        .expect("upgrade with sip");
    send(
        &mut ws,
        &format!("OPTIONS sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/WS {BROWSER_HOST};branch=z9hG4bKopt1\r\nMax-Forwards: 70\r\nTo: <sip:{REALM}>\r\nFrom: <sip:x@{REALM}>;tag=o1\r\nCall-ID: opt1@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"),
    )
    .await;
    let r = recv_final(&mut ws).await;
    assert_eq!(code(&r), 200, "{r}");
    assert!(
        header(&r, "Via")[0].contains(&format!("SIP/2.0/WS {BROWSER_HOST}")),
        "{r}"
    );
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_over_ws_then_calls_routed_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (server, shutdown, account) = server_with_ws(&dir, |_| {}).await;
    let addrs = server.local_addrs();
    let ws_addr = addrs.ws.unwrap();
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    let mut ws = ws_connect(tcp, &format!("ws://{ws_addr}/"), true)
        .await
        .unwrap();
    let r = ws_register(&mut ws, "ws", 1).await;
    assert_eq!(code(&r), 200, "{r}");
    assert_eq!(header(&r, "Require"), vec!["outbound"], "{r}");
    let b = server.registrar().bindings(account);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].transport, "ws");

    let caller = Caller {
        sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        server: addrs.udp.unwrap(),
    };

    // Call 1: the caller hangs up; the BYE follows the Route set to the WS flow.
    let d = call(&caller, &mut ws, "wscall1").await;
    let routes: Vec<String> = d.rr.iter().rev().cloned().collect();
    caller
        .send(&caller.request(
            "BYE",
            &format!("sip:k8s01@{BROWSER_HOST};transport=ws"),
            &d.call,
            2,
            &format!(";tag={}\r\nRoute: {}", d.callee_tag, routes.join(", ")),
        ))
        .await;
    let bye = recv(&mut ws).await;
    assert!(bye.starts_with("BYE "), "{bye}");
    send(&mut ws, &answer(&bye, "200 OK", &d.callee_tag)).await;
    let ok = caller.recv_final().await;
    assert_eq!(code(&ok), 200, "{ok}");
    assert!(ok.contains("CSeq: 2 BYE"), "{ok}");

    // Call 2: the browser hangs up; its BYE carries the Record-Route in order as its
    // Route set and reaches the UDP caller.
    let d = call(&caller, &mut ws, "wscall2").await;
    let me = caller.me();
    let bye = format!(
        "BYE sip:carol@{me} SIP/2.0\r\nVia: SIP/2.0/WS {BROWSER_HOST};branch=z9hG4bKwsbye2\r\nMax-Forwards: 70\r\nRoute: {}\r\nFrom: <sip:{LOGIN}@{REALM}>;tag={}\r\nTo: <sip:carol@example.org>;tag=c-{}\r\nCall-ID: {}@test\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        d.rr.join(", "),
        d.callee_tag,
        d.call,
        d.call
    );
    send(&mut ws, &bye).await;
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, caller.sock.recv_from(&mut buf))
        .await
        .expect("the BYE reaches the caller")
        .unwrap();
    let got = String::from_utf8(buf[..n].to_vec()).unwrap();
    assert!(got.starts_with(&format!("BYE sip:carol@{me} ")), "{got}");
    // The caller's 200 goes back to the browser by the Via.
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for v in header(&got, "Via") {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    ok.push_str(&format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        header(&got, "From")[0],
        header(&got, "To")[0],
        header(&got, "Call-ID")[0]
    ));
    caller.send(&ok).await;
    let r = recv_final(&mut ws).await;
    assert_eq!(code(&r), 200, "{r}");
    assert!(r.contains("CSeq: 1 BYE"), "{r}");

    // The flow gone, the binding stays but is unreachable: a call gets no branch to
    // it, and the caller a final answer rather than silence. The server drops the
    // connection only after it has forgotten the flow, so the end of the TCP stream
    // says it is gone.
    ws.close(None).await.unwrap();
    let mut tcp = ws.into_inner();
    let mut rest = [0u8; 256];
    while tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut tcp, &mut rest))
        .await
        .expect("the server closes")
        .is_ok_and(|n| n > 0)
    {}
    caller
        .send(&caller.request("INVITE", &format!("sip:{LOGIN}@{REALM}"), "wscall3", 1, ""))
        .await;
    let r = caller.recv_final().await;
    assert!(code(&r) >= 400, "no device reachable: {r}");
    assert_eq!(
        server.registrar().bindings(account).len(),
        1,
        "binding kept"
    );
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, shutdown, _) = server_with_ws(&dir, |s| s.max_message_size = 4096).await;
    let addr = server.local_addrs().ws.unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut ws = ws_connect(tcp, &format!("ws://{addr}/"), true)
        .await
        .unwrap();
    let big = format!(
        "MESSAGE sip:{LOGIN}@{REALM} SIP/2.0\r\nVia: SIP/2.0/WS {BROWSER_HOST};branch=z9hG4bKbig\r\nMax-Forwards: 70\r\nTo: <sip:{LOGIN}@{REALM}>\r\nFrom: <sip:x@{REALM}>;tag=b1\r\nCall-ID: big@test\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 8000\r\n\r\n{}",
        "x".repeat(8000)
    );
    // The send itself may fail once the server has closed.
    let _ = ws.send(WsMessage::text(big)).await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(f))) => return Some(f.map(|f| f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server closes the connection");
    if let Some(code) = end {
        assert_eq!(code, Some(CloseCode::Size), "close status 1009");
    }
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_registration_with_a_self_signed_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (server, shutdown, account) = server_with_ws(&dir, |s| {
        s.wss_listen = Some("127.0.0.1:0".parse().unwrap());
        s.tls_cert = Some(cert_path);
        s.tls_key = Some(key_path);
    })
    .await;
    let addr = server.local_addrs().wss.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let mut ws = ws_connect(tls, &format!("wss://localhost:{}/", addr.port()), true)
        .await
        .expect("upgrade over TLS");
    let r = ws_register(&mut ws, "wss", 1).await;
    assert_eq!(code(&r), 200, "{r}");
    let b = server.registrar().bindings(account);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].transport, "wss");
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_share_ping_and_a_list_of_subprotocols() {
    let dir = tempfile::tempdir().unwrap();
    let (server, shutdown, _) = server_with_ws(&dir, |s| s.max_connections_per_source = 2).await;
    let addr = server.local_addrs().ws.unwrap();
    let url = format!("ws://{addr}/");

    // `sip` among other offered subprotocols is chosen.
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat, sip".parse().unwrap());
    let (mut first, resp) =
        tokio_tungstenite::client_async(req, TcpStream::connect(addr).await.unwrap())
            .await
            .expect("upgrade");
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "sip");
    // A WebSocket ping is answered with a pong carrying the same data.
    first
        .send(WsMessage::Ping(b"keep".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, first.next())
        .await
        .expect("pong in time")
        .unwrap()
        .unwrap();
    assert_eq!(pong, WsMessage::Pong(b"keep".to_vec().into()));

    // The per-source share (two here) counts WebSocket connections: a third from the
    // same address is closed before the upgrade.
    let _second = ws_connect(TcpStream::connect(addr).await.unwrap(), &url, true)
        .await
        .expect("second connection");
    let third = tokio::time::timeout(
        WAIT,
        ws_connect(TcpStream::connect(addr).await.unwrap(), &url, true),
    )
    .await
    .expect("refused in time");
    assert!(
        third.is_err(),
        "a third connection from one source is refused"
    );
    // Once one closes, there is room again.
    first.close(None).await.unwrap();
    let mut tcp = first.into_inner();
    let mut rest = [0u8; 64];
    while tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut tcp, &mut rest))
        .await
        .expect("the server closes")
        .is_ok_and(|n| n > 0)
    {}
    // The place is given back when the server's connection task ends, just after
    // it closed the stream: retried briefly.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = ws_connect(TcpStream::connect(addr).await.unwrap(), &url, true).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a place is free again after a close");
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upgrade_and_idle_connection_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, shutdown, _) = server_with_ws(&dir, |s| {
        s.idle_timeout_secs = 1;
        s.tls_handshake_timeout_secs = 1;
    })
    .await;
    let addr = server.local_addrs().ws.unwrap();
    // A connection that never finishes its HTTP upgrade is closed (handshake timeout).
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Closed (end of stream or a reset) within the wait, with no 101 sent.
    let _ = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
    )
    .await
    .expect("a stalled upgrade is closed");
    assert!(!rest.starts_with(b"HTTP/1.1 101"));
    // An upgraded connection that carries nothing is closed with "going away" (1001).
    let mut ws = ws_connect(
        TcpStream::connect(addr).await.unwrap(),
        &format!("ws://{addr}/"),
        true,
    )
    .await
    .unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(f))) => return f.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before the close frame: {e}"),
                None => panic!("closed without a close frame"),
            }
        }
    })
    .await
    .expect("an idle connection is closed");
    assert_eq!(end, Some(CloseCode::Away));
    shutdown.cancel();
    server.wait().await.unwrap();
}
