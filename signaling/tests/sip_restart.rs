//! Bindings survive a restart: register, stop the server, start a new one on the same
//! database, the bindings are back (expired ones dropped). On SQLite (a temporary
//! file) and on PostgreSQL (a fresh database per test on `TANDEM_TEST_POSTGRES_URL`,
//! default postgres://postgres@127.0.0.1:5432/test).

mod sip_support;
mod store_support;

use sip_support::*;
use store_support::{Backend, TestDb};
use tandem_signaling::model::{Binding, DeviceClass};
use tandem_signaling::registrar::digest::Algorithm;
use tandem_signaling::registrar::{RegistrarConfig, RegistrarStore};
use tandem_signaling::store::Store;
use tokio::net::TcpStream;

async fn restart_restores_bindings(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (store, account) = store_with_account(
        &db.url,
        &[
            (1, DeviceClass::Mobile),
            (2, DeviceClass::Tablet),
            (3, DeviceClass::Desktop),
            (4, DeviceClass::Web),
        ],
    )
    .await;

    let (server, shutdown) = start(store.clone(), sip_config(), RegistrarConfig::default()).await;
    let addrs = server.local_addrs();
    let udp = Udp::new(addrs.udp.unwrap()).await;
    assert_eq!(
        status(
            &udp.register(
                Reg::new("udp", udp.local(), Some(1)),
                Algorithm::Sha256,
                PASSWORD
            )
            .await
        ),
        200
    );
    let mut tcp = TcpStream::connect(addrs.tcp.unwrap()).await.unwrap();
    let l = tcp.local_addr().unwrap();
    assert_eq!(
        status(&stream_register(&mut tcp, Reg::new("tcp", l, Some(2)), Algorithm::Md5).await),
        200
    );
    // A TCP device registered without outbound (no reg-id), listening for
    // connections on its Contact address, as most desk phones do.
    let phone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let phone_addr = phone.local_addr().unwrap();
    let mut tcp4 = TcpStream::connect(addrs.tcp.unwrap()).await.unwrap();
    let mut reg4 = Reg::new("tcp", tcp4.local_addr().unwrap(), None);
    reg4.contact = Some(format!(
        "<sip:alice@{phone_addr};transport=tcp>;+sip.instance=\"<{}>\"",
        uuid(4)
    ));
    assert_eq!(
        status(&stream_register(&mut tcp4, reg4, Algorithm::Md5).await),
        200
    );
    let before = server.registrar().bindings(account);
    assert_eq!(before.len(), 3);
    shutdown.cancel();
    server.wait().await.unwrap();
    drop(tcp);
    drop(tcp4);

    // A binding that expired while the server was down is dropped on load.
    let expired = Binding {
        account_id: account,
        instance_id: uuid(3),
        reg_id: 1,
        contact_uri: "sip:alice@127.0.0.1:5999".into(),
        expires_at: 1_000,
        call_id: "old@test".into(),
        cseq: 1,
        transport: "udp".into(),
        source: "127.0.0.1:5999".into(),
        local: "127.0.0.1:5060".into(),
        user_agent: None,
        push: None,
    };
    store.save_binding(&expired).await.unwrap();
    store.close().await;

    let store2 = Store::connect(&db.url).await.unwrap();
    let (server2, shutdown2) =
        start(store2.clone(), sip_config(), RegistrarConfig::default()).await;
    let after = server2.registrar().bindings(account);
    assert_eq!(after, before, "bindings restored exactly");
    let stored = RegistrarStore::load_bindings(&store2).await.unwrap();
    assert!(
        stored.iter().all(|b| b.instance_id != uuid(3)),
        "expired binding deleted from the store"
    );

    // The restored registrar keeps working: refresh from the first device.
    let udp2 = Udp::new(server2.local_addrs().udp.unwrap()).await;
    assert_eq!(
        status(
            &udp2
                .register(
                    Reg::new("udp", udp2.local(), Some(1)),
                    Algorithm::Sha256,
                    PASSWORD
                )
                .await
        ),
        200
    );
    assert_eq!(server2.registrar().bindings(account).len(), 3);

    // A call after the restart reaches the TCP phone over a new connection to its
    // Contact (RFC 3261 18.1.1); its old connection died with the first server.
    let caller = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:alice@{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKrestart1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.org>;tag=c1\r\nTo: <sip:alice@{REALM}>\r\nCall-ID: after-restart@test\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    caller
        .send_to(invite.as_bytes(), server2.local_addrs().udp.unwrap())
        .await
        .unwrap();
    let (mut conn, _) = tokio::time::timeout(std::time::Duration::from_secs(5), phone.accept())
        .await
        .expect("signaling connects to the phone's Contact")
        .unwrap();
    let mut buf = Vec::new();
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        read_message(&mut conn, &mut buf),
    )
    .await
    .expect("the INVITE over the new connection");
    assert!(
        got.starts_with(b"INVITE sip:alice@"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    shutdown2.cancel();
    server2.wait().await.unwrap();
    store2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_sqlite() {
    restart_restores_bindings(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_postgres() {
    restart_restores_bindings(Backend::Postgres).await;
}
