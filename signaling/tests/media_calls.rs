//! Calls through the media relay, end to end: the real `tandem-relay` binary on
//! 127.0.0.2 (its control API and metrics on 127.0.0.1) and the real
//! `tandem-signaling` binary configured to place calls on it, with sipp as every
//! phone and gateway (tests/sipp/media_*.xml) and the media sent from the test's own
//! UDP sockets to the addresses in the SDP the phones received.
//!
//! What each test proves:
//! - `forked_call_uses_one_relay_session`: a call forked to three devices places one
//!   relay session, not one per branch: every branch is offered the same relay
//!   address (`c=IN IP4 127.0.0.2`), the caller's 200 carries the relay's address,
//!   `GET /load` shows one session during the call, the relay's metrics count one
//!   created, and the caller's BYE frees it (`sessions == 0`).
//! - `cancel_and_busy_free_the_session`: a call the caller cancels while it rings,
//!   and a call every device answers 486, each place a session and free it.
//! - `relay_loss_ends_the_call`: SIGKILL of the relay during a call makes signaling
//!   send BYE to both sides (each answers 200) within 15 s.
//! - `rtp_flows_both_ways_through_the_relay`: without ICE, RTP sent by each side to
//!   the relay address in the SDP it received reaches the other side, from the relay,
//!   with its payload intact; the relay counts it forwarded.
//! - `srtp_caller_reaches_an_offnet_gateway_with_plain_rtp`: an SDES-SRTP caller
//!   (`RTP/SAVP`, `a=crypto`) dialling an OFFNET number: the gateway is offered
//!   `RTP/AVP` without `a=crypto`, the caller's 200 has `RTP/SAVP` with the relay's
//!   key; SRTP the caller sends arrives at the gateway as plain RTP with the same
//!   payloads, and the gateway's RTP arrives at the caller as SRTP under the relay's
//!   key.
//! - `media_checks_pass_through_a_session_placed_directly`: the RTP and SRTP checks
//!   of the two tests above pass through sessions placed on the relay alone through
//!   its control API, so that their failure points at signaling, not the harness.
//!
//! Each test first checks the harness (binaries start, accounts, registrations, the
//! SIP flows of sipp), then collects every media assertion and reports them together,
//! with a note when signaling refused the relay entry of its configuration.
//!
//! Needs sipp (Debian `sip-tester`) and the relay binary next to the signaling one
//! (`cargo build -p tandem-relay --bin tandem-relay`; tests/run.sh builds every
//! binary first). Without them the tests fail when `CI` is set and are skipped
//! otherwise.
//!
//! ```text
//! cargo build -p tandem-relay --bin tandem-relay
//! cargo test -p tandem-signaling --test media_calls -- --nocapture
//! ```

mod media_support;
mod sipp_support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use media_support::{
    is_invite_ok, media_socket, prerequisites, receive_for, rtp, rtp_payload, sipp, Relay,
    Signaling, Sipp, Traced, PASSWORD, RELAY_IP,
};
use serde_json::json;
use sipp_support::free_udp_port;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const CALLEE: &str = "alice";
const CALLER: &str = "bob";
const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

/// The media assertions of one test, reported together.
#[derive(Debug, Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn assert_all(self, signaling: &Signaling) {
        assert!(
            self.0.is_empty(),
            "media assertions failed{}:\n- {}",
            signaling.note(),
            self.0.join("\n- ")
        );
    }
}

fn relay_ip() -> IpAddr {
    IpAddr::V4(RELAY_IP)
}

/// Relay, signaling, the callee account with `devices` registered devices (instances
/// 1..) and the caller account (no device: it calls with digest credentials).
async fn setup(
    dir: &Path,
    devices: u32,
    routes: &[(&str, String)],
) -> (Relay, Signaling, Vec<u16>) {
    let relay = Relay::start().await;
    let signaling = Signaling::start(dir, &relay, routes).await;
    let classes = ["mobile", "mobile", "tablet"];
    let list: Vec<(u32, &str)> = (1..=devices)
        .map(|n| (n, classes[n as usize - 1]))
        .collect();
    signaling.account(CALLEE, Some("+48600111222"), &list).await;
    signaling.account(CALLER, None, &[]).await;
    let mut ports = Vec::new();
    for n in 1..=devices {
        let p = free_udp_port();
        signaling.register(dir, p, CALLEE, n).await;
        ports.push(p);
    }
    (relay, signaling, ports)
}

/// The caller's sipp: `scenario` to `service` as `bob`, announcing `rtp_port`, holding
/// the call (or ringing) for `hold_ms` where the scenario pauses.
fn caller(
    dir: &Path,
    signaling: &Signaling,
    scenario: &str,
    service: &str,
    fields: &[&str],
    hold_ms: u64,
) -> Sipp {
    sipp(
        dir,
        "caller",
        scenario,
        Some(signaling.sip),
        free_udp_port(),
        fields,
        &[
            "-s",
            service,
            "-au",
            CALLER,
            "-ap",
            PASSWORD,
            "-d",
            &hold_ms.to_string(),
        ],
    )
}

/// Ends every sipp (bounded), panicking with the failures: the SIP side of the
/// harness.
async fn finish_all(peers: &mut [&mut Sipp], within: Duration) {
    let mut failed = Vec::new();
    for p in peers.iter_mut() {
        if let Err(e) = p.finish(within).await {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n-----\n"));
}

async fn wait_answer(caller: &Sipp) -> Traced {
    caller
        .wait_message(Duration::from_secs(15), is_invite_ok)
        .await
        .unwrap_or_else(|| panic!("the caller got no 200 to its INVITE within 15 s"))
}

fn offer_of(device: &Sipp) -> Traced {
    device
        .received_invite()
        .unwrap_or_else(|| panic!("{} received no INVITE", device.tag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_call_uses_one_relay_session() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (relay, signaling, ports) = setup(dir, 3, &[]).await;
    let answer_port = free_udp_port().to_string();
    let mut answering = sipp(
        dir,
        "dev1",
        "media_uas_answer.xml",
        None,
        ports[0],
        &[&answer_port],
        &[],
    );
    let mut ring2 = sipp(
        dir,
        "dev2",
        "call_uas_ring.xml",
        None,
        ports[1],
        &["-"],
        &[],
    );
    let mut ring3 = sipp(
        dir,
        "dev3",
        "call_uas_ring.xml",
        None,
        ports[2],
        &["-"],
        &[],
    );
    let caller_port = free_udp_port().to_string();
    let mut call = caller(
        dir,
        &signaling,
        "media_uac_call.xml",
        CALLEE,
        &[CALLER, &caller_port],
        3000,
    );

    let ok = wait_answer(&call).await;
    let mut c = Checks::default();
    // While the call is up (the caller holds it 3 s).
    let live = relay.wait_sessions(1, Duration::from_secs(2)).await;
    c.check(
        live.is_ok(),
        format!("GET /load during the call: sessions {live:?}, expected 1"),
    );
    let answer = ok.sdp();
    c.check(
        answer.connection == Some(relay_ip()),
        format!(
            "the caller's 200 has c= {:?}, expected {RELAY_IP}",
            answer.connection
        ),
    );
    finish_all(
        &mut [&mut call, &mut answering, &mut ring2, &mut ring3],
        Duration::from_secs(20),
    )
    .await;

    let offers: Vec<_> = [&answering, &ring2, &ring3]
        .iter()
        .map(|d| offer_of(d).sdp())
        .collect();
    c.check(
        offers[0].connection == Some(relay_ip()),
        format!(
            "the answering device was offered c= {:?}, expected {RELAY_IP}",
            offers[0].connection
        ),
    );
    c.check(
        offers.iter().all(|o| o.audio() == offers[0].audio()),
        format!(
            "the branches were offered different media addresses (one session per branch?): {:?}",
            offers.iter().map(|o| o.audio()).collect::<Vec<_>>()
        ),
    );
    for (who, sdp) in [
        ("the caller's 200", &answer),
        ("the answering device's INVITE", &offers[0]),
    ] {
        c.check(
            sdp.audio_port.is_some_and(|p| relay.has_port(p)),
            format!(
                "{who} has m=audio port {:?}, not one of the relay's {:?}",
                sdp.audio_port, relay.ports
            ),
        );
    }
    c.check(
        answer.audio() != offers[0].audio(),
        format!(
            "caller and callee got the same media address {:?}: not two legs",
            answer.audio()
        ),
    );
    let freed = relay.wait_sessions(0, Duration::from_secs(5)).await;
    c.check(
        freed.is_ok(),
        format!("after the BYE: sessions {freed:?}, expected 0"),
    );
    let created = relay
        .metric("tandem_relay_media_sessions_created_total")
        .await;
    c.check(
        created == 1.0,
        format!("relay metrics: {created} sessions created, expected 1"),
    );
    let deleted = relay
        .metric("tandem_relay_media_sessions_ended_total{reason=\"deleted\"}")
        .await;
    c.check(
        deleted == 1.0,
        format!("relay metrics: {deleted} sessions deleted, expected 1"),
    );
    c.assert_all(&signaling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_busy_free_the_session() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (relay, signaling, ports) = setup(dir, 3, &[]).await;
    let mut c = Checks::default();

    // The caller hangs up while the three devices ring (2 s after the last 180).
    let mut devices: Vec<Sipp> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            sipp(
                dir,
                &format!("cancelled{i}"),
                "call_uas_ring_cancelled.xml",
                None,
                *p,
                &["-"],
                &[],
            )
        })
        .collect();
    let port = free_udp_port().to_string();
    let mut call = caller(
        dir,
        &signaling,
        "media_uac_cancel.xml",
        CALLEE,
        &[CALLER, &port],
        0,
    );
    call.wait_message(Duration::from_secs(10), |m| {
        m.received && m.first_line().starts_with("SIP/2.0 180")
    })
    .await
    .expect("the caller heard no 180 within 10 s");
    let ringing = relay.wait_sessions(1, Duration::from_secs(1)).await;
    c.check(
        ringing.is_ok(),
        format!("while ringing: sessions {ringing:?}, expected 1"),
    );
    let mut all: Vec<&mut Sipp> = devices.iter_mut().collect();
    all.insert(0, &mut call);
    finish_all(&mut all, Duration::from_secs(20)).await;
    let freed = relay.wait_sessions(0, Duration::from_secs(5)).await;
    c.check(
        freed.is_ok(),
        format!("after CANCEL: sessions {freed:?}, expected 0"),
    );
    let created = relay
        .metric("tandem_relay_media_sessions_created_total")
        .await;
    c.check(
        created == 1.0,
        format!("after the cancelled call: {created} sessions created, expected 1"),
    );

    // Every device answers 486: the caller gets 486, the session goes.
    let mut devices: Vec<Sipp> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            sipp(
                dir,
                &format!("busy{i}"),
                "call_uas_busy.xml",
                None,
                *p,
                &["-"],
                &[],
            )
        })
        .collect();
    let port = free_udp_port().to_string();
    let mut call = sipp(
        dir,
        "caller-busy",
        "media_uac_busy.xml",
        Some(signaling.sip),
        free_udp_port(),
        &[CALLER, &port],
        &["-s", CALLEE, "-au", CALLER, "-ap", PASSWORD],
    );
    let mut all: Vec<&mut Sipp> = devices.iter_mut().collect();
    all.insert(0, &mut call);
    finish_all(&mut all, Duration::from_secs(20)).await;
    let freed = relay.wait_sessions(0, Duration::from_secs(5)).await;
    c.check(
        freed.is_ok(),
        format!("after 486: sessions {freed:?}, expected 0"),
    );
    let created = relay
        .metric("tandem_relay_media_sessions_created_total")
        .await;
    c.check(
        created == 2.0,
        format!("after both calls: {created} sessions created, expected 2"),
    );
    let ended = relay
        .metric("tandem_relay_media_sessions_ended_total")
        .await;
    c.check(
        ended == 2.0,
        format!("after both calls: {ended} sessions ended, expected 2"),
    );
    c.assert_all(&signaling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_loss_ends_the_call() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut relay, signaling, ports) = setup(dir, 1, &[]).await;
    let answer_port = free_udp_port().to_string();
    let mut device = sipp(
        dir,
        "dev1",
        "media_uas_answer.xml",
        None,
        ports[0],
        &[&answer_port],
        &[],
    );
    let port = free_udp_port().to_string();
    let mut call = caller(
        dir,
        &signaling,
        "media_uac_wait_bye.xml",
        CALLEE,
        &[CALLER, &port],
        0,
    );
    wait_answer(&call).await;
    // Without the call's session on the relay, killing it proves nothing.
    let placed = relay.wait_sessions(1, Duration::from_secs(3)).await;
    assert!(
        placed.is_ok(),
        "media assertions failed{}:\n- the relay has sessions {placed:?} during the call, expected 1",
        signaling.note()
    );
    relay.kill();
    let killed = Instant::now();
    finish_all(&mut [&mut call, &mut device], Duration::from_secs(25)).await;
    let took = killed.elapsed();
    eprintln!("BYE to both sides {took:?} after the relay was killed");
    assert!(
        took <= Duration::from_secs(16),
        "the call ended {took:?} after the relay was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_flows_both_ways_through_the_relay() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (relay, signaling, ports) = setup(dir, 1, &[]).await;
    let (caller_sock, callee_sock) = (media_socket(), media_socket());
    let callee_port = callee_sock.local_addr().unwrap().port().to_string();
    let caller_port = caller_sock.local_addr().unwrap().port().to_string();
    let mut device = sipp(
        dir,
        "dev1",
        "media_uas_answer.xml",
        None,
        ports[0],
        &[&callee_port],
        &[],
    );
    let mut call = caller(
        dir,
        &signaling,
        "media_uac_call.xml",
        CALLEE,
        &[CALLER, &caller_port],
        4000,
    );
    let ok = wait_answer(&call).await;
    let to_relay_from_caller = ok
        .sdp()
        .audio()
        .expect("an audio address in the caller's 200");
    let to_relay_from_callee = offer_of(&device)
        .sdp()
        .audio()
        .expect("an audio address in the device's INVITE");

    let mut c = Checks::default();
    let through_relay =
        to_relay_from_caller.ip() == relay_ip() && to_relay_from_callee.ip() == relay_ip();
    c.check(
        through_relay,
        format!("media addresses in the SDP: caller sends to {to_relay_from_caller}, callee to {to_relay_from_callee}; expected {RELAY_IP}"),
    );
    if through_relay {
        check_rtp_both_ways(
            &relay,
            (caller_sock, to_relay_from_caller),
            (callee_sock, to_relay_from_callee),
            &mut c,
        )
        .await;
    }
    finish_all(&mut [&mut call, &mut device], Duration::from_secs(20)).await;
    c.assert_all(&signaling);
}

/// Datagrams received, with their source.
type Got = Vec<(SocketAddr, Vec<u8>)>;

/// Both sides send 50 packets about 10 ms apart (caller SSRC 0x11111111 with payload
/// bytes 0x11, callee 0x22222222 with 0x22); returns (sent per side, what the callee
/// got, what the caller got).
fn exchange(
    caller: &UdpSocket,
    caller_to: SocketAddr,
    callee: &UdpSocket,
    callee_to: SocketAddr,
) -> (usize, Got, Got) {
    const N: u16 = 50;
    let (mut to_callee, mut to_caller) = (Vec::new(), Vec::new());
    for seq in 0..N {
        caller
            .send_to(&rtp(seq, 0x1111_1111, &[0x11; 160]), caller_to)
            .unwrap();
        callee
            .send_to(&rtp(seq, 0x2222_2222, &[0x22; 160]), callee_to)
            .unwrap();
        to_callee.extend(receive_for(callee, Duration::from_millis(5), 64));
        to_caller.extend(receive_for(caller, Duration::from_millis(5), 64));
    }
    to_callee.extend(receive_for(callee, Duration::from_millis(300), 256));
    to_caller.extend(receive_for(caller, Duration::from_millis(300), 256));
    (usize::from(N), to_callee, to_caller)
}

/// Both sides send RTP to the relay address in the SDP they received (`*.1`): each
/// must get at least half of the other's packets, from the relay, intact, and the
/// relay must count them forwarded.
async fn check_rtp_both_ways(
    relay: &Relay,
    caller: (UdpSocket, SocketAddr),
    callee: (UdpSocket, SocketAddr),
    c: &mut Checks,
) {
    let ((caller_sock, to_relay_from_caller), (callee_sock, to_relay_from_callee)) =
        (caller, callee);
    let (sent, got_by_callee, got_by_caller) = tokio::task::spawn_blocking(move || {
        exchange(
            &caller_sock,
            to_relay_from_caller,
            &callee_sock,
            to_relay_from_callee,
        )
    })
    .await
    .unwrap();
    for (who, got, ssrc) in [
        ("callee", &got_by_callee, 0x1111_1111u32),
        ("caller", &got_by_caller, 0x2222_2222),
    ] {
        let good = got
            .iter()
            .filter(|(from, p)| {
                from.ip() == relay_ip()
                    && p.get(8..12) == Some(&ssrc.to_be_bytes()[..])
                    && rtp_payload(p).iter().all(|b| *b == (ssrc as u8))
            })
            .count();
        c.check(
            good * 2 >= sent,
            format!("the {who} got {good} of {sent} RTP packets from the relay with their payload intact ({} datagrams in all)", got.len()),
        );
    }
    let forwarded = relay
        .metric("tandem_relay_media_packets_forwarded_total")
        .await;
    let received = (got_by_callee.len() + got_by_caller.len()) as f64;
    c.check(
        forwarded >= received && received > 0.0,
        format!("relay metrics: {forwarded} packets forwarded, the sides received {received}"),
    );
}

/// The caller sends SRTP under `caller_key` to the relay address in its 200, the
/// gateway plain RTP to the one in its INVITE: the gateway must get at least half of
/// the caller's packets as plain RTP with their payload, the caller at least half of
/// the gateway's as SRTP under `relay_key`, and the relay must count its decryptions.
async fn check_srtp_bridge(
    relay: &Relay,
    caller: (UdpSocket, SocketAddr, &str, &str),
    gateway: (UdpSocket, SocketAddr),
    c: &mut Checks,
) {
    let (caller_sock, caller_to, caller_key, relay_key) = caller;
    let (gateway_sock, gateway_to) = gateway;
    let key = caller_key.to_owned();
    let (sent, plain_at_gateway, srtp_at_caller) = tokio::task::spawn_blocking(move || {
        let mut enc = srtp_context(&key);
        const N: u16 = 30;
        let (mut at_gw, mut at_caller) = (Vec::new(), Vec::new());
        for seq in 0..N {
            let payload = [seq as u8; 160];
            let srtp = enc.encrypt_rtp(&rtp(seq, 0x3333_3333, &payload)).unwrap();
            caller_sock.send_to(&srtp, caller_to).unwrap();
            gateway_sock
                .send_to(&rtp(seq, 0x4444_4444, &[0x80 | seq as u8; 160]), gateway_to)
                .unwrap();
            at_gw.extend(receive_for(&gateway_sock, Duration::from_millis(5), 64));
            at_caller.extend(receive_for(&caller_sock, Duration::from_millis(5), 64));
        }
        at_gw.extend(receive_for(&gateway_sock, Duration::from_millis(300), 256));
        at_caller.extend(receive_for(&caller_sock, Duration::from_millis(300), 256));
        (usize::from(N), at_gw, at_caller)
    })
    .await
    .unwrap();
    // Plain RTP at the gateway: the caller's payloads, in the clear.
    let plain: Vec<u8> = plain_at_gateway
        .iter()
        .filter(|(from, p)| from.ip() == relay_ip() && p.len() == 12 + 160)
        .filter(|(_, p)| {
            let seq = u16::from_be_bytes([p[2], p[3]]);
            rtp_payload(p).iter().all(|b| *b == seq as u8)
        })
        .map(|(_, p)| p[3])
        .collect();
    c.check(
        plain.len() * 2 >= sent,
        format!("the gateway got {} of {sent} packets as plain RTP with the caller's payload ({} datagrams in all)", plain.len(), plain_at_gateway.len()),
    );
    // SRTP at the caller, under the relay's key: the gateway's payloads.
    let mut dec = srtp_context(relay_key);
    let decrypted = srtp_at_caller
        .iter()
        .filter(|(from, _)| from.ip() == relay_ip())
        .filter_map(|(_, p)| dec.decrypt_rtp(p).ok())
        .filter(|p| {
            let seq = u16::from_be_bytes([p[2], p[3]]);
            rtp_payload(p).iter().all(|b| *b == 0x80 | seq as u8)
        })
        .count();
    c.check(
        decrypted * 2 >= sent,
        format!("the caller got {decrypted} of {sent} packets as SRTP under the relay's key with the gateway's payload ({} datagrams in all)", srtp_at_caller.len()),
    );
    let bridged = relay
        .metric("tandem_relay_media_srtp_bridged_total{op=\"decrypt\"}")
        .await;
    c.check(
        bridged >= plain.len() as f64,
        format!(
            "relay metrics: {bridged} packets decrypted, the gateway got {}",
            plain.len()
        ),
    );
}

fn srtp_context(key_salt_b64: &str) -> Context {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key_salt_b64)
        .expect("base64 SRTP key");
    assert_eq!(bytes.len(), 30, "AES_CM_128 key and salt: 30 bytes");
    Context::new(
        &bytes[..16],
        &bytes[16..],
        ProtectionProfile::Aes128CmHmacSha1_80,
        None,
        None,
    )
    .expect("SRTP context")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_caller_reaches_an_offnet_gateway_with_plain_rtp() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gateway_port = free_udp_port();
    let routes = [("0049", format!("sip:127.0.0.1:{gateway_port}"))];
    let (relay, signaling, _) = setup(dir, 0, &routes).await;
    let (caller_sock, gateway_sock) = (media_socket(), media_socket());
    let key: [u8; 30] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let gw_media = gateway_sock.local_addr().unwrap().port().to_string();
    let caller_media = caller_sock.local_addr().unwrap().port().to_string();
    let mut gateway = sipp(
        dir,
        "gateway",
        "media_uas_answer.xml",
        None,
        gateway_port,
        &[&gw_media],
        &[],
    );
    let mut call = caller(
        dir,
        &signaling,
        "media_uac_srtp.xml",
        "int0049301234567",
        &[CALLER, &caller_media, &key],
        4000,
    );
    let ok = wait_answer(&call).await;
    let answer = ok.sdp();
    let offer = offer_of(&gateway).sdp();

    let mut c = Checks::default();
    c.check(
        offer.proto == "RTP/AVP",
        format!(
            "the gateway was offered {:?}, expected RTP/AVP",
            offer.proto
        ),
    );
    c.check(
        offer.crypto.is_empty(),
        format!("the gateway was offered a=crypto {:?}", offer.crypto),
    );
    c.check(
        offer.connection == Some(relay_ip()),
        format!(
            "the gateway was offered c= {:?}, expected {RELAY_IP}",
            offer.connection
        ),
    );
    c.check(
        answer.proto == "RTP/SAVP",
        format!("the caller's 200 has {:?}, expected RTP/SAVP", answer.proto),
    );
    let relay_key = answer.crypto_key(SUITE);
    c.check(
        relay_key.as_deref().is_some_and(|k| k != key),
        format!(
            "the caller's 200 has a=crypto {:?}; expected a {SUITE} key of the relay's",
            answer.crypto
        ),
    );
    c.check(
        answer.connection == Some(relay_ip()),
        format!(
            "the caller's 200 has c= {:?}, expected {RELAY_IP}",
            answer.connection
        ),
    );
    if let (true, Some(relay_key), Some(caller_to), Some(gateway_to)) =
        (c.0.is_empty(), relay_key, answer.audio(), offer.audio())
    {
        check_srtp_bridge(
            &relay,
            (caller_sock, caller_to, &key, &relay_key),
            (gateway_sock, gateway_to),
            &mut c,
        )
        .await;
    }
    finish_all(&mut [&mut call, &mut gateway], Duration::from_secs(20)).await;
    c.assert_all(&signaling);
}

/// The media half of the harness against the relay alone, so that a failure of the
/// tests above points at signaling: sessions placed through the control API the way
/// signaling is to place them (the caller leg from the offer, then the answer), then
/// the same RTP and SRTP checks as `rtp_flows_both_ways_through_the_relay` and
/// `srtp_caller_reaches_an_offnet_gateway_with_plain_rtp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_checks_pass_through_a_session_placed_directly() {
    if !prerequisites() {
        return;
    }
    let relay = Relay::start().await;
    let mut c = Checks::default();
    let relay_rtp = |leg: &serde_json::Value| -> SocketAddr {
        leg["streams"][0]["relay_rtp"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("relay_rtp in {leg}"))
    };

    let (caller_sock, callee_sock) = (media_socket(), media_socket());
    let created = relay
        .control(
            "POST",
            "/sessions",
            json!({"call_id": "plain", "caller": {"streams": [
                {"rtp": caller_sock.local_addr().unwrap().to_string()}]}}),
        )
        .await;
    let id = created["id"].as_str().expect("session id").to_owned();
    let answered = relay
        .control(
            "PATCH",
            &format!("/sessions/{id}"),
            json!({"answer": {"streams": [
                {"rtp": callee_sock.local_addr().unwrap().to_string()}]}}),
        )
        .await;
    let (to_caller_leg, to_callee_leg) = (
        relay_rtp(&answered["caller"]),
        relay_rtp(&answered["callee"]),
    );
    assert_eq!(to_caller_leg.ip(), relay_ip());
    check_rtp_both_ways(
        &relay,
        (caller_sock, to_caller_leg),
        (callee_sock, to_callee_leg),
        &mut c,
    )
    .await;
    relay
        .control("DELETE", &format!("/sessions/{id}"), json!(null))
        .await;

    let (caller_sock, gateway_sock) = (media_socket(), media_socket());
    let key: [u8; 30] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let created = relay
        .control(
            "POST",
            "/sessions",
            json!({"call_id": "srtp", "caller": {
                "srtp": {"suite": SUITE, "key": key},
                "streams": [{"rtp": caller_sock.local_addr().unwrap().to_string()}]}}),
        )
        .await;
    let id = created["id"].as_str().expect("session id").to_owned();
    let answered = relay
        .control(
            "PATCH",
            &format!("/sessions/{id}"),
            json!({"answer": {"streams": [
                {"rtp": gateway_sock.local_addr().unwrap().to_string()}]}}),
        )
        .await;
    let relay_key = answered["caller"]["srtp"]["key"]
        .as_str()
        .expect("the relay's SRTP key for the caller leg")
        .to_owned();
    check_srtp_bridge(
        &relay,
        (
            caller_sock,
            relay_rtp(&answered["caller"]),
            &key,
            &relay_key,
        ),
        (gateway_sock, relay_rtp(&answered["callee"])),
        &mut c,
    )
    .await;
    assert!(c.0.is_empty(), "{}", c.0.join("\n"));
}
