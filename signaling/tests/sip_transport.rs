//! Transport behaviour: response routing per RFC 3261 18.2.2 / RFC 3581, connection and
//! message size limits, idle timeout, CRLF keep-alive on TCP.

mod sip_support;

use std::time::Duration;

use sip_support::*;
use tandem_signaling::metrics::DropReason;
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::SipConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn options(via: &str, branch: &str) -> String {
    format!(
        "OPTIONS sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nTo: <sip:{REALM}>\r\nFrom: <sip:probe@{REALM}>;tag=9\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(d, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn udp_responses_follow_via_rport_and_sent_by() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let (server, shutdown) = start(store, sip_config(), RegistrarConfig::default()).await;
    let udp = server.local_addrs().udp.unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b_port = b.local_addr().unwrap().port();
    let mut buf = [0u8; 4096];

    // No rport: the response goes to the source IP and the sent-by port (socket B).
    let m = options(&format!("UDP 127.0.0.1:{b_port}"), "sentby");
    a.send_to(m.as_bytes(), udp).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), b.recv_from(&mut buf))
        .await
        .expect("response at the sent-by port")
        .unwrap();
    assert_eq!(status(&buf[..n]), 200);

    // rport: the response goes back to the source port (socket A), with rport filled.
    let m = options(&format!("UDP 127.0.0.1:{b_port};rport"), "rport");
    a.send_to(m.as_bytes(), udp).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), a.recv_from(&mut buf))
        .await
        .expect("response at the source port")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let a_port = a.local_addr().unwrap().port();
    assert!(
        text.contains(&format!(";received=127.0.0.1;rport={a_port}")),
        "{text}"
    );

    // An oversized datagram whose header section can be read is answered 513
    // (RFC 3261 21.5.8).
    let mut big = options("UDP 127.0.0.1;rport", "big513")
        .replace("Content-Length: 0", "Content-Length: 20000")
        .into_bytes();
    big.extend(std::iter::repeat_n(b'x', 20_000));
    a.send_to(&big, udp).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), a.recv_from(&mut buf))
        .await
        .expect("513 to an oversized datagram")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("SIP/2.0 513 Message Too Large"), "{text}");
    assert!(text.contains("Call-ID: big513"), "{text}");

    // One whose header section does not even end within the limit cannot be
    // answered; the server keeps answering.
    let mut big = options("UDP 127.0.0.1;rport", "big").into_bytes();
    big.truncate(big.len() - 2);
    big.extend(std::iter::repeat_n(b'x', 20_000));
    a.send_to(&big, udp).await.unwrap();
    a.send_to(options("UDP 127.0.0.1;rport", "after").as_bytes(), udp)
        .await
        .unwrap();
    // The receive loop refuses an oversized datagram before it reads the next one,
    // so had it answered, that answer would come first: the first datagram back is
    // the 200 to "after" (no fixed wait for an absence).
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), a.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status(&buf[..n]), 200, "{text}");
    assert!(
        text.contains("Call-ID: after"),
        "no answer to the oversized datagram: {text}"
    );
    // Both oversized datagrams were counted, answered or not.
    assert_eq!(server.metrics().drops(DropReason::Oversized), 2);
    shutdown.cancel();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn tcp_limits_framing_and_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let sip = SipConfig {
        max_connections: 2,
        max_message_size: 2048,
        idle_timeout_secs: 1,
        ..sip_config()
    };
    let (server, shutdown) = start(store, sip, RegistrarConfig::default()).await;
    let tcp = server.local_addrs().tcp.unwrap();

    // Two connections are served; a third is closed at once.
    let mut c1 = TcpStream::connect(tcp).await.unwrap();
    let mut c2 = TcpStream::connect(tcp).await.unwrap();
    let mut buf = Vec::new();
    c1.write_all(options("TCP 127.0.0.1", "c1").as_bytes())
        .await
        .unwrap();
    assert_eq!(status(&read_message(&mut c1, &mut buf).await), 200);
    let mut c3 = TcpStream::connect(tcp).await.unwrap();
    assert!(
        closed_within(&mut c3, Duration::from_secs(2)).await,
        "over the connection limit"
    );
    assert_eq!(server.metrics().drops(DropReason::ConnectionsFull), 1);

    // A message split across writes is framed by Content-Length, pipelined ones too.
    let m = options("TCP 127.0.0.1", "split");
    let (head, tail) = m.split_at(40);
    c2.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let two = format!("{tail}{}", options("TCP 127.0.0.1", "second"));
    c2.write_all(two.as_bytes()).await.unwrap();
    let mut buf2 = Vec::new();
    assert_eq!(status(&read_message(&mut c2, &mut buf2).await), 200);
    assert_eq!(status(&read_message(&mut c2, &mut buf2).await), 200);

    // Over the size limit: answered 513, then the stream (which cannot be framed
    // safely past it) is closed.
    let mut big = options("TCP 127.0.0.1", "big");
    big.insert_str(big.len() - 4, &format!("\r\nX-Pad: {}", "y".repeat(3000)));
    c2.write_all(big.as_bytes()).await.unwrap();
    let answer = read_message(&mut c2, &mut buf2).await;
    assert_eq!(status(&answer), 513, "{}", String::from_utf8_lossy(&answer));
    assert!(
        closed_within(&mut c2, Duration::from_secs(2)).await,
        "oversized message closes the flow"
    );

    // Idle flows are closed after idle_timeout_secs; a CRLF ping keeps them open.
    // On tokio's paused clock: the server's idle timers and the waits below run on
    // virtual time.
    let mut c4 = TcpStream::connect(tcp).await.unwrap();
    tokio::time::pause();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c4.write_all(b"\r\n\r\n").await.unwrap();
        let mut pong = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(1), c4.read_exact(&mut pong))
            .await
            .expect("pong")
            .unwrap();
        assert_eq!(&pong, b"\r\n");
    }
    assert!(
        closed_within(&mut c1, Duration::from_secs(3)).await,
        "idle flow closed"
    );
    assert!(
        closed_within(&mut c4, Duration::from_secs(3)).await,
        "closed once the pings stop"
    );
    shutdown.cancel();
    server.wait().await.unwrap();
}

/// A full server transaction table is not a silent drop: the new request gets 503
/// with Retry-After, and the refusal is counted.
#[tokio::test]
async fn a_full_transaction_table_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let sip = SipConfig {
        max_transactions: 1,
        ..sip_config()
    };
    let (server, shutdown) = start(store, sip, RegistrarConfig::default()).await;
    let udp = server.local_addrs().udp.unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 4096];
    // The first OPTIONS is answered; its transaction stays (Timer J) and fills the table.
    a.send_to(options("UDP 127.0.0.1;rport", "first").as_bytes(), udp)
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), a.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status(&buf[..n]), 200);
    a.send_to(options("UDP 127.0.0.1;rport", "second").as_bytes(), udp)
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), a.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        text.starts_with("SIP/2.0 503 Service Unavailable"),
        "{text}"
    );
    assert!(text.contains("Retry-After: 5"), "{text}");
    assert!(text.contains("Call-ID: second"), "{text}");
    assert_eq!(server.metrics().drops(DropReason::TransactionsFull), 1);
    shutdown.cancel();
    server.wait().await.unwrap();
}

/// RFC 5626 4.4.2 / 8.4: a STUN Binding keep-alive on the SIP UDP port is answered
/// with the address we see, and SIP on the same port is unaffected.
#[tokio::test]
async fn stun_keepalive_on_the_sip_udp_port() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let (server, shutdown) = start(store, sip_config(), RegistrarConfig::default()).await;
    let udp = server.local_addrs().udp.unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = s.local_addr().unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[9u8; 12]);
    s.send_to(&req, udp).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .expect("a Binding success response")
        .unwrap();
    assert_eq!(from, udp);
    let r = &buf[..n];
    assert_eq!(&r[..2], &[0x01, 0x01], "Binding success");
    assert_eq!(&r[8..20], &[9u8; 12], "same transaction id");
    assert_eq!(&r[20..22], &[0x00, 0x20], "XOR-MAPPED-ADDRESS first");
    let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
    assert_eq!(port, me.port());
    // A STUN response or a malformed request gets nothing; SIP still works.
    let mut bad = req.clone();
    bad[1] = 0x11;
    s.send_to(&bad, udp).await.unwrap();
    s.send_to(options(&format!("UDP {me}"), "stun1").as_bytes(), udp)
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    shutdown.cancel();
}

/// One source cannot hold every connection place (a share per source), and a sender
/// that trickles a message byte by byte is cut off at the message deadline although
/// every byte resets the idle timer.
#[tokio::test]
async fn per_source_connection_share_and_slow_message_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let sip = SipConfig {
        max_connections: 16,
        max_connections_per_source: 3,
        message_timeout_secs: 1,
        idle_timeout_secs: 600,
        ..sip_config()
    };
    let (server, shutdown) = start(store, sip, RegistrarConfig::default()).await;
    let tcp = server.local_addrs().tcp.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(tcp).await.unwrap());
    }
    // The fourth from the same source is closed at once...
    let mut fourth = TcpStream::connect(tcp).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);
    // ...while another source is served.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(tcp).await.unwrap();
    let me = other.local_addr().unwrap();
    other
        .write_all(options(&format!("TCP {me}"), "share1").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_message(&mut other, &mut buf).await;
    assert!(
        r.starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&r)
    );

    // Slowloris: one byte every 300 ms never completes a message; closed after ~1 s.
    let mut slow = held.pop().unwrap();
    let started = std::time::Instant::now();
    let text = options("TCP 127.0.0.1:1", "slow1");
    let mut closed = false;
    for b in text.as_bytes().iter().take(20) {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(300)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled message is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    shutdown.cancel();
}

/// One source flooding new transactions gets 503 past its share of the table (an
/// eighth), and another source is still served.
#[tokio::test]
async fn one_source_cannot_fill_the_transaction_table() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let sip = SipConfig {
        max_transactions: 16,
        ..sip_config()
    };
    let (server, shutdown) = start(store, sip, RegistrarConfig::default()).await;
    let udp = server.local_addrs().udp.unwrap();
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 4096];
    let mut codes = Vec::new();
    for i in 0..20 {
        flood
            .send_to(
                options("UDP 127.0.0.1;rport", &format!("flood{i}")).as_bytes(),
                udp,
            )
            .await
            .unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(3), flood.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        codes.push(status(&buf[..n]));
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 503).count(), 18, "{codes:?}");
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other
        .send_to(options("UDP 127.0.0.2;rport", "other").as_bytes(), udp)
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), other.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status(&buf[..n]),
        200,
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    shutdown.cancel();
    server.wait().await.unwrap();
}
