//! Registrar end to end over UDP, TCP and TLS against a real SQLite store.

mod sip_support;

use std::sync::Arc;
use std::time::Duration;

use sip_support::*;
use tandem_signaling::model::DeviceClass;
use tandem_signaling::registrar::digest::Algorithm;
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::message::{HeaderName, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn reason(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp);
    text.lines()
        .next()
        .unwrap_or("")
        .splitn(3, ' ')
        .nth(2)
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn udp_registration_flows() {
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = store_with_account(
        &sqlite_url(&dir),
        &[
            (1, DeviceClass::Mobile),
            (2, DeviceClass::Mobile),
            (3, DeviceClass::Tablet),
        ],
    )
    .await;
    let reg_cfg = RegistrarConfig {
        auth_fail_limit: 5,
        ..RegistrarConfig::default()
    };
    let (server, shutdown) = start(store, sip_config(), reg_cfg).await;
    let udp_addr = server.local_addrs().udp.unwrap();
    let handle = server.registrar();

    // SHA-256 and MD5 both accepted; 200 lists every contact with its expires.
    let c1 = Udp::new(udp_addr).await;
    let r = c1
        .register(
            Reg::new("udp", c1.local(), Some(1)),
            Algorithm::Sha256,
            PASSWORD,
        )
        .await;
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r));
    let c2 = Udp::new(udp_addr).await;
    let r = c2
        .register(
            Reg::new("udp", c2.local(), Some(2)),
            Algorithm::Md5,
            PASSWORD,
        )
        .await;
    assert_eq!(status(&r), 200);
    let m = Message::parse(&r).unwrap();
    let contacts = m.list(HeaderName::Contact).unwrap();
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    assert!(contacts
        .iter()
        .all(|c| c.contains("expires=600") || c.contains("expires=599")));
    assert_eq!(handle.bindings(account).len(), 2);

    // The 401 offers MD5 first (the default order: clients that read only the first
    // challenge can register), then SHA-256, both with qop=auth.
    let r = c1
        .request(&Reg::new("udp", c1.local(), Some(1)).build())
        .await;
    let text = String::from_utf8_lossy(&r);
    let sha = text.find("algorithm=SHA-256").unwrap();
    let md5 = text.find("algorithm=MD5").unwrap();
    assert!(md5 < sha && text.contains("qop=\"auth\""));

    // An instance that is not an authorised device gets 403 Device Not Authorized.
    let c9 = Udp::new(udp_addr).await;
    let r = c9
        .register(
            Reg::new("udp", c9.local(), Some(9)),
            Algorithm::Sha256,
            PASSWORD,
        )
        .await;
    assert_eq!(
        (status(&r), reason(&r).as_str()),
        (403, "Device Not Authorized")
    );

    // A contact without +sip.instance is refused the same way.
    let mut reg = Reg::new("udp", c9.local(), None);
    reg.contact = Some(format!("<sip:{LOGIN}@{}>", c9.local()));
    let r = c9.register(reg, Algorithm::Sha256, PASSWORD).await;
    assert_eq!(
        (status(&r), reason(&r).as_str()),
        (403, "Device Not Authorized")
    );

    // Too short an interval: 423 with Min-Expires.
    let mut reg = Reg::new("udp", c1.local(), Some(1));
    reg.expires = Some(10);
    let r = c1.register(reg, Algorithm::Sha256, PASSWORD).await;
    assert_eq!(status(&r), 423);
    assert_eq!(
        Message::parse(&r).unwrap().header(HeaderName::MinExpires),
        Some("60")
    );

    // The same instance from a new address replaces the older binding.
    let c1b = Udp::new(udp_addr).await;
    let r = c1b
        .register(
            Reg::new("udp", c1b.local(), Some(1)),
            Algorithm::Sha256,
            PASSWORD,
        )
        .await;
    assert_eq!(status(&r), 200);
    let b = handle.bindings(account);
    assert_eq!(b.len(), 2);
    let one = b.iter().find(|b| b.instance_id == uuid(1)).unwrap();
    assert_eq!(one.source, c1b.local().to_string());

    // Fetch: no Contact, lists the current bindings.
    let mut reg = Reg::new("udp", c2.local(), None);
    reg.expires = None;
    let r = c2.register(reg, Algorithm::Sha256, PASSWORD).await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        Message::parse(&r)
            .unwrap()
            .list(HeaderName::Contact)
            .unwrap()
            .len(),
        2
    );

    // Nonce-count replay is refused.
    let first = c2
        .request(&Reg::new("udp", c2.local(), Some(2)).build())
        .await;
    let (nonce, _) = challenge_nonce(&first, "SHA-256");
    let mut reg = Reg::new("udp", c2.local(), Some(2));
    reg.cseq = 5;
    reg.authorization = Some(authorization(Algorithm::Sha256, PASSWORD, &nonce, 1));
    assert_eq!(status(&c2.request(&reg.build()).await), 200);
    reg.cseq = 6;
    assert_eq!(
        status(&c2.request(&reg.build()).await),
        403,
        "replayed nc must be refused"
    );
    reg.cseq = 7;
    reg.authorization = Some(authorization(Algorithm::Sha256, PASSWORD, &nonce, 2));
    assert_eq!(
        status(&c2.request(&reg.build()).await),
        200,
        "next nc accepted"
    );

    // Auth user must be the login of the account the To URI names; a To naming no
    // account is challenged again like a wrong password (no account enumeration).
    let mut reg = Reg::new("udp", c2.local(), Some(2));
    reg.to_user = "nobody".into();
    let r = c2.register(reg, Algorithm::Sha256, PASSWORD).await;
    assert_eq!(status(&r), 401);

    // Unregister everything with `*`.
    let mut reg = Reg::new("udp", c2.local(), None);
    reg.contact = Some("*".into());
    reg.expires = Some(0);
    let r = c2.register(reg, Algorithm::Md5, PASSWORD).await;
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert!(handle.bindings(account).is_empty());

    // Unknown method: 501; known but not allowed here: 405 with Allow; OPTIONS: 200;
    // INVITE from a caller claiming our domain: 407 from the proxy.
    for (method, code) in [
        ("FOOBAR", 501u16),
        ("PUBLISH", 405),
        ("INVITE", 407),
        ("OPTIONS", 200),
    ] {
        let msg = format!(
            "{method} sip:{LOGIN}@{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP {};rport;branch=z9hG4bK{method}1\r\nMax-Forwards: 70\r\nTo: <sip:{LOGIN}@{REALM}>\r\nFrom: <sip:bob@{REALM}>;tag=1\r\nCall-ID: m{method}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
            c2.local()
        );
        let r = c2.request(&msg).await;
        assert_eq!(status(&r), code, "{method}");
        if code == 405 {
            assert!(Message::parse(&r)
                .unwrap()
                .header(HeaderName::Allow)
                .unwrap()
                .contains("REGISTER"));
        }
    }

    // UDP retransmission of a REGISTER is absorbed by the transaction: same response.
    let msg = Reg::new("udp", c1.local(), Some(1)).build();
    let a = c1.request(&msg).await;
    let b = c1.request(&msg).await;
    assert_eq!(a, b, "retransmission answered with the same response");

    // Wrong password: 401 again, then 403 once the source is banned (limit 5; the
    // replay and the To mismatch above already counted twice).
    let bad = Udp::new(udp_addr).await;
    for attempt in 3..=5 {
        let r = bad
            .register(
                Reg::new("udp", bad.local(), Some(3)),
                Algorithm::Sha256,
                "wrong",
            )
            .await;
        let expected = if attempt < 5 { 401 } else { 403 };
        assert_eq!(status(&r), expected, "failure {attempt}");
    }
    // Banned: even the right password gets 403 now.
    let r = bad
        .register(
            Reg::new("udp", bad.local(), Some(3)),
            Algorithm::Sha256,
            PASSWORD,
        )
        .await;
    assert_eq!(status(&r), 403);

    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn stale_nonce_gets_stale_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[(1, DeviceClass::Mobile)]).await;
    let reg_cfg = RegistrarConfig {
        nonce_ttl: 1,
        ..RegistrarConfig::default()
    };
    let (server, shutdown) = start(store, sip_config(), reg_cfg).await;
    let c = Udp::new(server.local_addrs().udp.unwrap()).await;
    let first = c
        .request(&Reg::new("udp", c.local(), Some(1)).build())
        .await;
    let (nonce, stale) = challenge_nonce(&first, "SHA-256");
    assert!(!stale);
    // The registrar's clock moves past the nonce's lifetime; nobody waits for it.
    server.clock().advance(Duration::from_millis(2200));
    let mut reg = Reg::new("udp", c.local(), Some(1));
    reg.authorization = Some(authorization(Algorithm::Sha256, PASSWORD, &nonce, 1));
    let r = c.request(&reg.build()).await;
    assert_eq!(status(&r), 401);
    assert!(challenge_nonce(&r, "SHA-256").1, "stale=true expected");
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn tcp_flow_keepalive_reuse_and_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let (store, account) =
        store_with_account(&sqlite_url(&dir), &[(4, DeviceClass::Desktop)]).await;
    let (server, shutdown) = start(store, sip_config(), RegistrarConfig::default()).await;
    let tcp = server.local_addrs().tcp.unwrap();
    let handle = server.registrar();

    let mut s1 = TcpStream::connect(tcp).await.unwrap();
    let l1 = s1.local_addr().unwrap();
    let r = stream_register(&mut s1, Reg::new("tcp", l1, Some(4)), Algorithm::Sha256).await;
    assert_eq!(status(&r), 200);
    // RFC 5626 keep-alive: double CRLF answered with a single CRLF.
    s1.write_all(b"\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_message(&mut s1, &mut buf).await, b"\r\n");
    assert_eq!(handle.bindings(account)[0].transport, "tcp");
    // Connection reuse: a request to the device goes down the flow it registered on.
    let options = b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKreuse\r\nTo: <sip:alice@tandem.local>\r\nFrom: <sip:reg@tandem.local>;tag=1\r\nCall-ID: reuse\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let binding = handle.bindings(account)[0].clone();
    assert!(handle.send_to(&binding, options.to_vec()).await);
    assert_eq!(read_message(&mut s1, &mut buf).await, options.to_vec());

    // A second desktop sign-in with the desktop instance replaces the first binding and
    // closes the first flow.
    let mut s2 = TcpStream::connect(tcp).await.unwrap();
    let l2 = s2.local_addr().unwrap();
    let r = stream_register(&mut s2, Reg::new("tcp", l2, Some(4)), Algorithm::Md5).await;
    assert_eq!(status(&r), 200);
    let b = handle.bindings(account);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].source, l2.to_string());
    let mut chunk = [0u8; 64];
    let closed = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut s1, &mut chunk),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "older flow closed"
    );

    // Revocation drops the binding at once and closes the flow.
    handle.revoke_instance(account, &uuid(4)).await;
    assert!(handle.bindings(account).is_empty());
    let closed = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut s2, &mut chunk),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "revoked flow closed"
    );

    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn tls_registration() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (store, account) = store_with_account(&sqlite_url(&dir), &[(5, DeviceClass::Mobile)]).await;
    let mut sip = sip_config();
    sip.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    sip.tls_cert = Some(cert_path);
    sip.tls_key = Some(key_path);
    let (server, shutdown) = start(store, sip, RegistrarConfig::default()).await;
    let tls_addr = server.local_addrs().tls.unwrap();

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
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let mut s = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let r = stream_register(&mut s, Reg::new("tls", local, Some(5)), Algorithm::Sha256).await;
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r));
    let b = server.registrar().bindings(account);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].transport, "tls");
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn duplicated_datagrams_are_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[(1, DeviceClass::Mobile)]).await;
    let (server, shutdown) = start(store, sip_config(), RegistrarConfig::default()).await;
    let c = Udp::new(server.local_addrs().udp.unwrap()).await;
    let first = c
        .request(&Reg::new("udp", c.local(), Some(1)).build())
        .await;
    let (nonce, _) = challenge_nonce(&first, "SHA-256");
    let mut reg = Reg::new("udp", c.local(), Some(1));
    reg.cseq = 2;
    reg.authorization = Some(authorization(Algorithm::Sha256, PASSWORD, &nonce, 1));
    let msg = reg.build();
    // The network duplicates the authenticated REGISTER: both copies arrive at once.
    c.sock.send_to(msg.as_bytes(), c.server).await.unwrap();
    c.sock.send_to(msg.as_bytes(), c.server).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(700), c.sock.recv_from(&mut buf)).await
    {
        got.push(status(&buf[..n]));
    }
    // One transaction: the TU saw the request once (no nonce-count replay), the
    // duplicate was absorbed or answered with the same 200.
    assert!(!got.is_empty() && got.iter().all(|s| *s == 200), "{got:?}");
    shutdown.cancel();
    server.wait().await.unwrap();
}
