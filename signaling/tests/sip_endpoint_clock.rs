//! The endpoint's server transaction timers on tokio's paused clock: a final response
//! to an INVITE over UDP is retransmitted at T1, 2*T1, 4*T1... (Timer G) until the ACK
//! arrives, then never again, with no real waiting. The store is in memory, so nothing
//! but loopback UDP runs while time is paused.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_signaling::model::{AccountCredentials, AccountId, Binding, Device};
use tandem_signaling::registrar::{RegistrarConfig, RegistrarStore, StoreFuture};
use tandem_signaling::service::SipServer;
use tandem_signaling::sip::SipConfig;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// No accounts, no devices, no bindings.
struct Empty;

impl RegistrarStore for Empty {
    fn find_account<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<AccountCredentials>> {
        Box::pin(async { Ok(None) })
    }
    fn find_device<'a>(&'a self, _: AccountId, _: &'a str) -> StoreFuture<'a, Option<Device>> {
        Box::pin(async { Ok(None) })
    }
    fn save_binding<'a>(&'a self, _: &'a Binding) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn delete_binding<'a>(&'a self, _: AccountId, _: &'a str, _: u32) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn delete_instance_bindings<'a>(&'a self, _: AccountId, _: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn load_bindings(&self) -> StoreFuture<'_, Vec<Binding>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn invite(me: SocketAddr, method: &str) -> String {
    format!(
        "{method} sip:nobody@example.org SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKclock1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.org>;tag=c1\r\nTo: <sip:nobody@example.org>{}\r\nCall-ID: clock-1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
        if method == "ACK" { ";tag=x" } else { "" }
    )
}

/// The next datagram within `wait` of (virtual) time, if any.
async fn next(sock: &UdpSocket, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "current_thread")]
async fn final_responses_are_retransmitted_on_timer_g_until_the_ack() {
    let sip = SipConfig {
        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tcp_listen: None,
        ..SipConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = SipServer::start(&sip, &RegistrarConfig::default(), Empty, shutdown.clone())
        .await
        .unwrap();
    let udp = server.local_addrs().udp.unwrap();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = caller.local_addr().unwrap();

    tokio::time::pause();
    let start = tokio::time::Instant::now();
    caller
        .send_to(invite(me, "INVITE").as_bytes(), udp)
        .await
        .unwrap();
    // 100 Trying is not sent for a request answered at once; the 404 is.
    let first = next(&caller, Duration::from_millis(100)).await.unwrap();
    assert!(first.starts_with("SIP/2.0 404"), "{first}");
    // Timer G: again after 500 ms, 1 s, 2 s (virtual), each the same response.
    let mut at = Vec::new();
    for _ in 0..3 {
        let again = next(&caller, Duration::from_secs(5))
            .await
            .expect("retransmission");
        assert_eq!(again, first);
        at.push((tokio::time::Instant::now() - start).as_millis());
    }
    // On time to the millisecond (tokio's timer rounds up to the next one): the
    // timer task sleeps until the deadline, it does not poll.
    for (got, want) in at.iter().zip([500u128, 1500, 3500]) {
        assert!(
            (want..=want + 5).contains(got),
            "Timer G doubles from T1: {at:?}"
        );
    }
    // The ACK ends the retransmissions (Timer I absorbs ACK copies).
    caller
        .send_to(invite(me, "ACK").as_bytes(), udp)
        .await
        .unwrap();
    assert_eq!(next(&caller, Duration::from_secs(40)).await, None);
    shutdown.cancel();
    server.wait().await.unwrap();
}
