//! A minimal SIP client over UDP for the tests that drive the whole server:
//! REGISTER with digest MD5 (qop=auth) and small helpers to read messages.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::net::UdpSocket;

/// A fresh directory under the system's temporary one.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tandem_{tag}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Values of header `name` in the header section (start line and body excluded).
pub fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// The body of a message.
pub fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// A parameter of a digest challenge (quoted or not).
pub fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let start = challenge.find(&key)? + key.len();
    let rest = &challenge[start..];
    if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()
    } else {
        rest.split([',', ' ']).next()
    }
}

pub fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// Sends `msg` and returns the first final response (provisional ones skipped).
pub async fn exchange(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("SIP response in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            return text;
        }
    }
}

/// One device's registration.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub login: &'a str,
    pub password: &'a str,
    pub realm: &'a str,
    pub instance: &'a str,
    /// Appended to the Contact URI (RFC 8599 parameters, for example).
    pub uri_params: &'a str,
    pub expires: u32,
}

impl Registration<'_> {
    /// The REGISTER from `me` with `cseq` and, after a challenge, `authorization`.
    pub fn request(
        &self,
        me: SocketAddr,
        call_id: &str,
        cseq: u32,
        authorization: Option<&str>,
    ) -> String {
        let Registration {
            login,
            realm,
            instance,
            uri_params,
            expires,
            ..
        } = *self;
        let mut m = format!(
            "REGISTER sip:{realm} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{login}@{realm}>;tag=t{}\r\n\
             To: <sip:{login}@{realm}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{login}@{me}{uri_params}>;+sip.instance=\"<{instance}>\"\r\n\
             Expires: {expires}\r\n",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        if let Some(a) = authorization {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }

    /// The Authorization value answering the MD5 challenge of the 401 `first`.
    pub fn authorization(&self, first: &str) -> String {
        assert!(first.starts_with("SIP/2.0 401"), "{first}");
        let challenge = header(first, "WWW-Authenticate")
            .into_iter()
            .find(|c| param(c, "algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5")))
            .expect("an MD5 challenge")
            .to_owned();
        let (login, realm) = (self.login, self.realm);
        let nonce = param(&challenge, "nonce").unwrap();
        let uri = format!("sip:{realm}");
        let ha1 = md5_hex(&format!("{login}:{realm}:{}", self.password));
        let ha2 = md5_hex(&format!("REGISTER:{uri}"));
        let cnonce = format!("{:x}", rand::random::<u64>());
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        let mut auth = format!(
            "Digest username=\"{login}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc=00000001"
        );
        if let Some(opaque) = param(&challenge, "opaque") {
            auth.push_str(&format!(", opaque=\"{opaque}\""));
        }
        auth
    }

    /// Registers from a new socket: REGISTER, 401, REGISTER with credentials; returns
    /// the final response to the second.
    pub async fn run(&self, sip: SocketAddr) -> String {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = sock.local_addr().unwrap();
        let call_id = format!("c{}@127.0.0.1", rand::random::<u64>());
        let first = exchange(&sock, sip, &self.request(me, &call_id, 1, None)).await;
        let auth = self.authorization(&first);
        exchange(&sock, sip, &self.request(me, &call_id, 2, Some(&auth))).await
    }
}
