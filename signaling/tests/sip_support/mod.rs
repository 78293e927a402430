//! Helpers shared by the SIP integration tests: a store with an account and devices,
//! a server on 127.0.0.1 port 0, and a minimal digest-capable SIP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tandem_signaling::model::{AccountId, DeviceClass};
use tandem_signaling::registrar::digest::{client_response, Algorithm};
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::service::SipServer;
use tandem_signaling::sip::grammar::AuthParams;
use tandem_signaling::sip::message::{HeaderName, Message};
use tandem_signaling::sip::SipConfig;
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDevice, Store};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub const REALM: &str = "tandem.local";
pub const LOGIN: &str = "alice";
pub const PASSWORD: &str = "correct horse";

pub fn uuid(n: u32) -> String {
    format!("urn:uuid:00000000-0000-4000-8000-{n:012x}")
}

pub fn sip_config() -> SipConfig {
    SipConfig {
        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..SipConfig::default()
    }
}

/// A store with account `alice` and devices 1..=authorised (mobile).
pub async fn store_with_account(
    url: &str,
    authorised: &[(u32, DeviceClass)],
) -> (Store, AccountId) {
    let store = Store::connect(url).await.expect("store");
    let acc = store
        .create_account(&NewAccount {
            login: LOGIN,
            password: PASSWORD,
            realm: REALM,
            country_code: "49",
            display_name: None,
        })
        .await
        .expect("account");
    for (n, class) in authorised {
        let id = uuid(*n);
        store
            .authorise_device(
                acc.id,
                &NewDevice {
                    instance_id: &id,
                    class: *class,
                    name: "test",
                    push_provider: None,
                    push_token: None,
                },
                &DeviceLimits::default(),
            )
            .await
            .expect("authorise");
    }
    (store, acc.id)
}

pub async fn start(
    store: Store,
    sip: SipConfig,
    reg: RegistrarConfig,
) -> (SipServer, CancellationToken) {
    let shutdown = CancellationToken::new();
    let server = SipServer::start(&sip, &reg, store, shutdown.clone())
        .await
        .expect("start");
    (server, shutdown)
}

/// Builds a REGISTER.
pub struct Reg {
    pub transport: &'static str,
    pub local: SocketAddr,
    pub call_id: String,
    pub cseq: u32,
    pub to_user: String,
    pub contact: Option<String>,
    pub expires: Option<u32>,
    pub authorization: Option<String>,
}

impl Reg {
    pub fn new(transport: &'static str, local: SocketAddr, instance: Option<u32>) -> Reg {
        Reg {
            transport,
            local,
            call_id: format!("{:016x}@test", rand::random::<u64>()),
            cseq: 1,
            to_user: LOGIN.into(),
            contact: instance.map(|n| {
                format!(
                    "<sip:{LOGIN}@{local};transport={transport}>;+sip.instance=\"<{}>\";reg-id=1",
                    uuid(n)
                )
            }),
            expires: Some(600),
            authorization: None,
        }
    }

    pub fn build(&self) -> String {
        let mut m = format!(
            "REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/{} {};rport;branch=z9hG4bK{:016x}\r\nMax-Forwards: 70\r\nTo: <sip:{}@{REALM}>\r\nFrom: <sip:{}@{REALM}>;tag=t{:08x}\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\n",
            self.transport.to_uppercase(),
            self.local,
            rand::random::<u64>(),
            self.to_user,
            self.to_user,
            rand::random::<u32>(),
            self.call_id,
            self.cseq
        );
        if let Some(c) = &self.contact {
            m.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = self.expires {
            m.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = &self.authorization {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        m.push_str("Supported: outbound\r\nContent-Length: 0\r\n\r\n");
        m
    }
}

/// Status code and full text of a response.
pub fn status(resp: &[u8]) -> u16 {
    Message::parse(resp)
        .expect("response parses")
        .status()
        .expect("is a response")
}

/// The challenge for `alg` in a 401.
pub fn challenge_nonce(resp: &[u8], alg: &str) -> (String, bool) {
    let m = Message::parse(resp).unwrap();
    for h in m.headers_named(HeaderName::WwwAuthenticate) {
        let a = AuthParams::parse(&h.value).unwrap();
        if a.get("algorithm") == Some(alg) {
            let stale = a
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true"));
            return (a.get("nonce").unwrap().to_owned(), stale);
        }
    }
    panic!("no {alg} challenge in {}", String::from_utf8_lossy(resp));
}

pub fn authorization(alg: Algorithm, password: &str, nonce: &str, nc: u32) -> String {
    client_response(
        alg,
        LOGIN,
        REALM,
        password,
        "REGISTER",
        &format!("sip:{REALM}"),
        nonce,
        nc,
        "0a4f113b",
    )
}

/// A UDP SIP client.
pub struct Udp {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Udp {
    pub async fn new(server: SocketAddr) -> Udp {
        Udp {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }
    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }
    pub async fn request(&self, msg: &str) -> Vec<u8> {
        self.sock
            .send_to(msg.as_bytes(), self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(3), self.sock.recv_from(&mut buf))
            .await
            .expect("response within 3 s")
            .unwrap();
        buf.truncate(n);
        buf
    }

    /// REGISTER with a digest round: returns the final response.
    pub async fn register(&self, mut reg: Reg, alg: Algorithm, password: &str) -> Vec<u8> {
        let r = self.request(&reg.build()).await;
        if status(&r) != 401 {
            return r;
        }
        let (nonce, _) = challenge_nonce(&r, alg.name());
        reg.cseq += 1;
        reg.authorization = Some(authorization(alg, password, &nonce, 1));
        self.request(&reg.build()).await
    }
}

/// Reads one framed SIP message from a stream (test side; CRLF pongs are returned as-is).
pub async fn read_message<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Vec<u8> {
    use tandem_signaling::sip::message::{frame_stream, Framing};
    loop {
        if buf.as_slice() == b"\r\n" {
            return std::mem::take(buf);
        }
        match frame_stream(buf, 65536) {
            Framing::Message(n) => return buf.drain(..n).collect(),
            Framing::Skip(n) | Framing::Ping(n) => return buf.drain(..n).collect(),
            Framing::Invalid => panic!("server sent an unframeable stream"),
            Framing::Incomplete => {}
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk))
            .await
            .expect("read in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// REGISTER with digest over a stream.
pub async fn stream_register<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mut reg: Reg,
    alg: Algorithm,
) -> Vec<u8> {
    let mut buf = Vec::new();
    s.write_all(reg.build().as_bytes()).await.unwrap();
    let r = read_message(s, &mut buf).await;
    if status(&r) != 401 {
        return r;
    }
    let (nonce, _) = challenge_nonce(&r, alg.name());
    reg.cseq += 1;
    reg.authorization = Some(authorization(alg, PASSWORD, &nonce, 1));
    s.write_all(reg.build().as_bytes()).await.unwrap();
    read_message(s, &mut buf).await
}

pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("signaling.db").display())
}
