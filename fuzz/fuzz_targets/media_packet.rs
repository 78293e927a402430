#![no_main]
//! The media core's packet path: RTP/RTCP/STUN/DTLS classification, SSRC, ICE check
//! authentication, SRTP termination, and `Media::handle_packet` on every port of
//! three answered and latched sessions (ICE; SDES-SRTP bridged to plain RTP; SRTP on
//! both legs with rtcp-mux on one), from the latched sources and from a stranger.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_control::{
    AddressFamily, CreateSession, CryptoSuite, IceCredentials, LegRequest, StreamRequest,
    UpdateSession,
};
use tandem_relay::media::packet::{self, Kind};
use tandem_relay::media::{
    ice, srtp, Component, Media, MediaConfig, MediaOutput, PortKey, SessionKey, Side,
};

mod media_common;
use media_common::Ports;

const OFFSET: usize = 16;
/// Room after the datagram: SRTP encryption grows a packet by its tag (and index).
const TAIL: usize = 64;
const MAX_LEN: usize = 1500;

struct Call {
    key: SessionKey,
    /// Per side: where the device sends RTP and RTCP from.
    sources: [[SocketAddr; 2]; 2],
}

struct World {
    media: Media,
    ports: Ports,
    now: Instant,
    calls: Vec<Call>,
    buf: Vec<u8>,
    /// Stand-alone terminations, one per suite, fed the input directly.
    terminations: Vec<srtp::Termination>,
}

static WORLD: Mutex<Option<World>> = Mutex::new(None);

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn stream(rtcp_mux: bool, rtp: Option<SocketAddr>) -> StreamRequest {
    StreamRequest {
        rtcp_mux,
        rtp,
        rtcp: None,
    }
}

fn ice(ufrag: &str, pwd: &str) -> Option<IceCredentials> {
    Some(IceCredentials {
        ufrag: ufrag.into(),
        pwd: pwd.into(),
    })
}

fn call(w: &mut World, caller: LegRequest, callee: LegRequest, sources: [[SocketAddr; 2]; 2]) {
    let req = CreateSession {
        call_id: None,
        caller,
        callee: None,
        family: AddressFamily::Ipv4,
        inactivity_timeout_secs: None,
        max_duration_secs: None,
    };
    let (key, _) = w
        .media
        .create(w.now, format!("s{}", w.calls.len()), &req, &mut w.ports)
        .expect("create");
    w.media
        .update(
            w.now,
            key,
            &UpdateSession {
                answer: Some(callee),
                ..UpdateSession::default()
            },
            &mut w.ports,
        )
        .expect("answer");
    w.calls.push(Call { key, sources });
}

fn make_world() -> World {
    let mut w = World {
        media: Media::new(MediaConfig::default(), [5; 32]),
        ports: Ports::default(),
        now: Instant::now(),
        calls: Vec::new(),
        buf: vec![0; OFFSET + MAX_LEN + TAIL],
        terminations: Vec::new(),
    };
    // 0: ICE on both legs, the caller without rtcp-mux.
    let (ca, cb) = (a("198.51.100.1:4000"), a("192.0.2.50:6000"));
    call(
        &mut w,
        LegRequest {
            ice: ice("CALR", "callerpassword0123456789"),
            streams: vec![stream(false, None)],
            ..LegRequest::default()
        },
        LegRequest {
            ice: ice("CALE", "calleepassword0123456789"),
            streams: vec![stream(true, None)],
            ..LegRequest::default()
        },
        [[ca, a("198.51.100.1:4001")], [cb, cb]],
    );
    // 1: SDES-SRTP on the caller leg (terminated), plain RTP on the callee leg.
    let (p, q) = (a("198.51.100.20:5000"), a("192.0.2.60:7000"));
    call(
        &mut w,
        LegRequest {
            srtp: Some(srtp::new_key(CryptoSuite::AesCm128HmacSha1_80, &[1; 32])),
            streams: vec![stream(false, Some(p))],
            ..LegRequest::default()
        },
        LegRequest {
            streams: vec![stream(false, Some(q))],
            ..LegRequest::default()
        },
        [[p, a("198.51.100.20:5001")], [q, a("192.0.2.60:7001")]],
    );
    // 2: SRTP terminated on both legs (AES-GCM, and 32-bit tags with rtcp-mux).
    let (p, q) = (a("198.51.100.30:5000"), a("192.0.2.70:7000"));
    call(
        &mut w,
        LegRequest {
            srtp: Some(srtp::new_key(CryptoSuite::AeadAes128Gcm, &[2; 32])),
            streams: vec![stream(false, Some(p))],
            ..LegRequest::default()
        },
        LegRequest {
            srtp: Some(srtp::new_key(CryptoSuite::AesCm128HmacSha1_32, &[3; 32])),
            streams: vec![stream(true, Some(q))],
            ..LegRequest::default()
        },
        [[p, a("198.51.100.30:5001")], [q, q]],
    );
    // The driver attaches every port it opened.
    let keys: Vec<PortKey> = w.ports.open.keys().copied().collect();
    for (h, k) in keys.into_iter().enumerate() {
        w.media.attach(k, h as u32);
    }
    // Latch the ICE call: a valid check from each device on each of its ports.
    let checks = [
        (
            Side::Caller,
            Component::Rtp,
            ca,
            "CALE:CALR",
            "calleepassword0123456789",
        ),
        (
            Side::Caller,
            Component::Rtcp,
            a("198.51.100.1:4001"),
            "CALE:CALR",
            "calleepassword0123456789",
        ),
        (
            Side::Callee,
            Component::Rtp,
            cb,
            "CALR:CALE",
            "callerpassword0123456789",
        ),
    ];
    for (i, (side, component, from, user, pwd)) in checks.into_iter().enumerate() {
        let n = ice::write_check(&mut w.buf, &[i as u8; 12], user, pwd).unwrap();
        let at = PortKey {
            session: w.calls[0].key,
            side,
            stream: 0,
            component,
        };
        let _ = w.media.handle_packet(w.now, at, from, &mut w.buf, 0..n);
    }
    let info = w.media.info(w.now, w.calls[0].key).unwrap();
    assert!(info.caller.streams[0].latched_rtp.is_some());
    assert!(info.callee.streams[0].latched_rtp.is_some());
    for suite in [
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
        CryptoSuite::AeadAes128Gcm,
    ] {
        let t = srtp::Termination::new(
            &srtp::new_key(suite, &[4; 32]),
            srtp::new_key(suite, &[5; 32]),
        )
        .unwrap();
        w.terminations.push(t);
    }
    w
}

fuzz_target!(|data: &[u8]| {
    let kind = packet::classify(data);
    if let Some(ssrc) = packet::ssrc(kind, data) {
        assert!(matches!(kind, Kind::Rtp | Kind::Rtcp), "{ssrc}");
    }
    let expect = ice::Expect {
        receiver_ufrag: "CALE",
        receiver_pwd: "calleepassword0123456789",
        sender_ufrag: Some("CALR"),
    };
    let _ = ice::check(data, Some(expect));
    let _ = ice::check(
        data,
        Some(ice::Expect {
            sender_ufrag: None,
            ..expect
        }),
    );
    let _ = ice::check(data, None);

    // The first byte picks the port and the source; the rest is the datagram.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let payload = &rest[..rest.len().min(MAX_LEN)];
    let mut g = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    let w = g.get_or_insert_with(make_world);
    let payload_kind = packet::classify(payload);
    for t in &mut w.terminations {
        let _ = t.decrypt(payload_kind, payload);
        let _ = t.encrypt(payload_kind, payload);
    }
    let call = &w.calls[usize::from(sel & 3) % w.calls.len()];
    let side = if sel & 4 == 0 {
        Side::Caller
    } else {
        Side::Callee
    };
    let component = if sel & 8 == 0 {
        Component::Rtp
    } else {
        Component::Rtcp
    };
    let from = match (sel >> 4) & 3 {
        0 | 1 => call.sources[side as usize][0],
        2 => call.sources[side as usize][1],
        _ => SocketAddr::from(([233, 252, 0, 66], 5555)),
    };
    let at = PortKey {
        session: call.key,
        side,
        stream: u8::from(sel & 0xc0 == 0xc0),
        component,
    };
    let end = OFFSET + payload.len();
    w.buf[OFFSET..end].copy_from_slice(payload);
    // Whatever is past the datagram is the driver's, and may be anything.
    w.buf[end..].fill(0xa5);
    match w
        .media
        .handle_packet(w.now, at, from, &mut w.buf, OFFSET..end)
    {
        MediaOutput::None => {}
        MediaOutput::Forward { handle, to, range } => {
            assert!(range.start == OFFSET && range.end <= w.buf.len());
            assert!((handle as usize) < w.ports.open.len());
            assert_ne!(to, SocketAddr::from(([233, 252, 0, 66], 5555)));
            assert_ne!(from, SocketAddr::from(([233, 252, 0, 66], 5555)));
        }
    }
    let _ = w.media.info(w.now, call.key);
});
