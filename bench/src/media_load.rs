//! `tandem-bench media-load`: call media through `tandem-relay`'s media sessions.
//!
//! Sets up `--sessions` sessions through the control API (plain legs without ICE, each
//! announcing the address of one of the generator's sockets, so the relay latches
//! them from the SDP), then sends RTP of `--size` payload bytes at `--pps` packets per
//! second from both legs of every session, paced open-loop over all legs (packet *k*
//! is due at `start + k / rate` whatever came back, so a stall shows as latency). Each
//! packet carries its sequence number and scheduled send time; the other leg's socket
//! receives it, so loss, duplicates and one-way latency through the relay are counted
//! exactly. With `--srtp` every session bridges: the caller leg speaks SDES-SRTP
//! (the generator encrypts with its key and decrypts with the relay's), the callee leg
//! plain RTP, so the relay decrypts and encrypts every packet.
//!
//! With `--server-pid` the report gives the server's CPU time per forwarded packet
//! (utime + stime from /proc over the sending period). Sessions are deleted at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde::Serialize;
use tandem_relay::media::packet::Kind;
use tandem_relay::media::srtp::{new_key, Termination};

use crate::procstat;

/// How sessions are set up.
#[derive(Debug, Clone)]
pub enum Setup {
    /// tandem-relay's control API.
    Control { addr: SocketAddr, token: String },
    /// rtpengine's NG protocol (bencode over UDP): offer and answer with SDP.
    Ng { addr: SocketAddr },
}

#[derive(Debug, Clone)]
pub struct MediaLoadConfig {
    pub setup: Setup,
    pub sessions: usize,
    /// Packets per second per leg.
    pub pps: u64,
    pub size: usize,
    pub duration: Duration,
    pub srtp: bool,
    pub server_pid: Option<u32>,
    pub server_cpu: Option<usize>,
    /// A measurement window for an outside profiler (as `turn-load --window-file`).
    pub window: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaLoadReport {
    pub server: String,
    pub sessions: usize,
    pub srtp: bool,
    pub size: usize,
    pub duration_s: f64,
    pub offered_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    pub send_errors: u64,
    pub forwarded_pps: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub server_cpu_ns_per_packet: Option<f64>,
    pub server_cpu_share: Option<f64>,
    pub server_cpu_other_pct: Option<f64>,
    pub setup_s: f64,
}

/// One HTTP/1.1 exchange with the control API (loopback, `Connection: close`).
fn http(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_owned(),
        _ => body,
    };
    Ok((status, body))
}

struct Leg {
    sock: UdpSocket,
    relay: SocketAddr,
    /// SRTP device state (caller legs with `--srtp`).
    srtp: Option<Termination>,
    ssrc: u32,
    seq: u16,
}

const HEADER: usize = 12;
/// Payload bytes the generator reads back: leg index (4), sequence (8), send ns (8).
const STAMP: usize = 20;

pub fn run(cfg: &MediaLoadConfig) -> anyhow::Result<MediaLoadReport> {
    if cfg.size < STAMP || cfg.size > 1200 {
        bail!("--size must be {STAMP}..=1200 bytes");
    }
    let setup_start = std::time::Instant::now();
    let mut legs: Vec<Leg> = Vec::with_capacity(cfg.sessions * 2);
    let mut ids = Vec::with_capacity(cfg.sessions);
    let ng = match &cfg.setup {
        Setup::Ng { addr } => {
            if cfg.srtp {
                bail!("--srtp is only measured against tandem-relay");
            }
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.connect(addr)?;
            Some(s)
        }
        Setup::Control { addr, .. } if !addr.ip().is_loopback() => {
            bail!("the harness only runs against loopback addresses")
        }
        Setup::Control { .. } => None,
    };
    for s in 0..cfg.sessions {
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let b = UdpSocket::bind("127.0.0.1:0")?;
        let (pa, pb, srtp) = match (&cfg.setup, &ng) {
            (Setup::Control { addr, token }, _) => {
                let (pa, pb, srtp, id) = setup_control(*addr, token, cfg.srtp, s, &a, &b)?;
                ids.push(id);
                (pa, pb, srtp)
            }
            (Setup::Ng { .. }, Some(sock)) => {
                let (pa, pb) = setup_ng(sock, s, &a, &b)?;
                ids.push(format!("bench-{s}"));
                (pa, pb, None)
            }
            _ => bail!("no NG socket"),
        };
        legs.push(Leg {
            sock: a,
            relay: pa,
            srtp,
            ssrc: rand::random(),
            seq: 0,
        });
        legs.push(Leg {
            sock: b,
            relay: pb,
            srtp: None,
            ssrc: rand::random(),
            seq: 0,
        });
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    // The relay adds new ports to its workers between turns; give them a moment.
    std::thread::sleep(Duration::from_millis(200));

    let window = cfg.window.as_deref().map(crate::load::Window);
    if let Some(w) = &window {
        w.open()?;
    }
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    for (i, l) in legs.iter().enumerate() {
        l.sock.set_nonblocking(true)?;
        epoll.add(
            l.sock.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
        )?;
    }
    let n_legs = legs.len() as u64;
    let rate = cfg.pps * n_legs;
    let total = (rate as f64 * cfg.duration.as_secs_f64()) as u64;
    let mut seen = vec![0u64; legs.len()];
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let (mut sent, mut received, mut dup, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 2048];
    let mut pkt = vec![0u8; HEADER + cfg.size];
    let cpu0 = cfg.server_pid.and_then(procstat::cpu_ns);
    let other0 = cfg.server_cpu.and_then(procstat::cpu_ticks);
    let start = procstat::mono_ns();
    let end_ns = start + cfg.duration.as_nanos() as u64;
    let grace = end_ns + 1_000_000_000;
    // Per-leg highest sequence seen, to count duplicates: a bitmap per leg.
    let per_leg = total / n_legs + 2;
    let mut got = vec![0u64; legs.len() * (per_leg as usize).div_ceil(64)];
    let words = (per_leg as usize).div_ceil(64);
    let mut k = 0u64;
    loop {
        let now = procstat::mono_ns();
        // Send what is due.
        while k < total {
            let due = start + k * 1_000_000_000 / rate;
            if due > now {
                break;
            }
            let li = (k % n_legs) as usize;
            let leg = &mut legs[li];
            let seq = k / n_legs;
            pkt[0] = 0x80;
            pkt[1] = 0x00; // PT 0 (PCMU), as the SDP offered to rtpengine says
            pkt[2..4].copy_from_slice(&leg.seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&((seq as u32).wrapping_mul(160)).to_be_bytes());
            pkt[8..12].copy_from_slice(&leg.ssrc.to_be_bytes());
            pkt[12..16].copy_from_slice(&(li as u32).to_be_bytes());
            pkt[16..24].copy_from_slice(&seq.to_be_bytes());
            pkt[24..32].copy_from_slice(&due.to_be_bytes());
            leg.seq = leg.seq.wrapping_add(1);
            let res = match leg.srtp.as_mut() {
                Some(t) => match t.encrypt(Kind::Rtp, &pkt) {
                    Ok(e) => leg.sock.send_to(&e, leg.relay),
                    Err(_) => Err(std::io::ErrorKind::InvalidData.into()),
                },
                None => leg.sock.send_to(&pkt, leg.relay),
            };
            match res {
                Ok(_) => sent += 1,
                Err(_) => send_errors += 1,
            }
            k += 1;
        }
        if k >= total && (received + dup >= sent || now > grace) {
            break;
        }
        if now > grace {
            break;
        }
        let next_due = if k < total {
            start + k * 1_000_000_000 / rate
        } else {
            now + 1_000_000
        };
        let wait_ms = next_due.saturating_sub(now) / 1_000_000;
        let n = epoll.wait(&mut events, EpollTimeout::from(wait_ms.min(5) as u16))?;
        for ev in &events[..n] {
            let li = ev.data() as usize;
            let Some(leg) = legs.get_mut(li) else {
                continue;
            };
            while let Ok((len, _)) = leg.sock.recv_from(&mut buf) {
                let plain;
                let p: &[u8] = match leg.srtp.as_mut() {
                    Some(t) => match t.decrypt(Kind::Rtp, &buf[..len]) {
                        Ok(d) => {
                            plain = d;
                            &plain
                        }
                        Err(_) => continue,
                    },
                    None => &buf[..len],
                };
                if p.len() < HEADER + STAMP {
                    continue;
                }
                let from_leg = u32::from_be_bytes(p[12..16].try_into().unwrap_or([0; 4])) as usize;
                let seq = u64::from_be_bytes(p[16..24].try_into().unwrap_or([0; 8]));
                let ts = u64::from_be_bytes(p[24..32].try_into().unwrap_or([0; 8]));
                if from_leg >= seen.len() || seq >= per_leg {
                    continue;
                }
                let w = from_leg * words + (seq / 64) as usize;
                let bit = 1u64 << (seq % 64);
                if got[w] & bit != 0 {
                    dup += 1;
                    continue;
                }
                got[w] |= bit;
                received += 1;
                seen[from_leg] += 1;
                let lat = procstat::mono_ns().saturating_sub(ts) / 1000;
                let _ = hist.record(lat.max(1));
            }
        }
    }
    let elapsed = (procstat::mono_ns() - start) as f64 / 1e9;
    if let Some(w) = &window {
        w.close()?;
    }
    let send_s = cfg.duration.as_secs_f64();
    let cpu = match (cfg.server_pid.and_then(procstat::cpu_ns), cpu0) {
        (Some(b), Some(a)) if received > 0 => Some((
            (b - a) as f64 / received as f64,
            (b - a) as f64 / 1e9 / elapsed,
        )),
        _ => None,
    };
    // How busy the server's CPU was with anything but the server.
    let other = match (cfg.server_cpu.and_then(procstat::cpu_ticks), other0) {
        (Some((b1, t1)), Some((b0, t0))) if t1 > t0 => {
            let busy = (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0;
            Some((busy - cpu.map_or(0.0, |c| c.1 * 100.0)).max(0.0))
        }
        _ => None,
    };
    for id in &ids {
        match (&cfg.setup, &ng) {
            (Setup::Control { addr, token }, _) => {
                let _ = http(*addr, token, "DELETE", &format!("/sessions/{id}"), None);
            }
            (Setup::Ng { .. }, Some(sock)) => {
                let _ = ng_call(
                    sock,
                    &[("command", "delete"), ("call-id", id), ("from-tag", "a")],
                );
            }
            _ => {}
        }
    }
    let lost = sent.saturating_sub(received);
    Ok(MediaLoadReport {
        server: match cfg.setup {
            Setup::Control { .. } => "tandem-relay".into(),
            Setup::Ng { .. } => "rtpengine (NG)".into(),
        },
        sessions: cfg.sessions,
        srtp: cfg.srtp,
        size: cfg.size,
        duration_s: send_s,
        offered_pps: rate as f64,
        sent,
        received,
        lost,
        loss_pct: if sent > 0 {
            lost as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
        duplicates: dup,
        send_errors,
        forwarded_pps: received as f64 / send_s,
        latency_p50_us: hist.value_at_quantile(0.5) as f64,
        latency_p99_us: hist.value_at_quantile(0.99) as f64,
        latency_max_us: hist.max() as f64,
        server_cpu_ns_per_packet: cpu.map(|c| c.0),
        server_cpu_share: cpu.map(|c| c.1),
        server_cpu_other_pct: other,
        setup_s,
    })
}

/// One session through the control API: the caller leg announces `a`, the callee
/// leg `b` (no ICE: the relay latches the announced addresses). Returns the relay
/// ports each side sends to, the caller's SRTP state and the session id.
fn setup_control(
    addr: SocketAddr,
    token: &str,
    srtp: bool,
    s: usize,
    a: &UdpSocket,
    b: &UdpSocket,
) -> anyhow::Result<(SocketAddr, SocketAddr, Option<Termination>, String)> {
    let device_key = new_key(
        tandem_control::CryptoSuite::AesCm128HmacSha1_80,
        &rand::random::<[u8; 32]>(),
    );
    let caller = if srtp {
        serde_json::json!({
            "srtp": {"suite": "AES_CM_128_HMAC_SHA1_80", "key": device_key.key},
            "streams": [{"rtcp_mux": true, "rtp": a.local_addr()?.to_string()}],
        })
    } else {
        serde_json::json!({"streams": [{"rtcp_mux": true, "rtp": a.local_addr()?.to_string()}]})
    };
    let create = serde_json::json!({
        "call_id": format!("bench-{s}"),
        "caller": caller,
        "callee": {"streams": [{"rtcp_mux": true}]},
    });
    let (st, body) = http(addr, token, "POST", "/sessions", Some(&create.to_string()))?;
    if st != 201 {
        bail!("creating session {s}: HTTP {st}: {body}");
    }
    let info: tandem_control::SessionInfo = serde_json::from_str(&body).context("session JSON")?;
    let answer = serde_json::json!({
        "answer": {"streams": [{"rtcp_mux": true, "rtp": b.local_addr()?.to_string()}]}
    });
    let (st, body) = http(
        addr,
        token,
        "PATCH",
        &format!("/sessions/{}", info.id),
        Some(&answer.to_string()),
    )?;
    if st != 200 {
        bail!("answering session {s}: HTTP {st}: {body}");
    }
    let term = match (&info.caller.srtp, srtp) {
        (Some(relay_key), true) => Some(Termination::new(relay_key, device_key)?),
        _ => None,
    };
    let pa = info.caller.streams.first().context("no stream")?.relay_rtp;
    let pb = info.callee.streams.first().context("no stream")?.relay_rtp;
    Ok((pa, pb, term, info.id))
}

fn sdp(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// The `c=` address and the first `m=` port of an SDP.
fn sdp_media(sdp: &str) -> Option<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
        .trim()
        .parse::<std::net::IpAddr>()
        .ok()?;
    let port = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

/// One session through rtpengine's NG protocol: offer with A's SDP (the answer
/// names the port B sends to), answer with B's SDP (names the port A sends to).
fn setup_ng(
    sock: &UdpSocket,
    s: usize,
    a: &UdpSocket,
    b: &UdpSocket,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let call_id = format!("bench-{s}");
    let offer = ng_call(
        sock,
        &[
            ("command", "offer"),
            ("call-id", &call_id),
            ("from-tag", "a"),
            ("sdp", &sdp(a.local_addr()?)),
        ],
    )?;
    let pb = sdp_media(&offer).context("offer result without media")?;
    let answer = ng_call(
        sock,
        &[
            ("command", "answer"),
            ("call-id", &call_id),
            ("from-tag", "a"),
            ("to-tag", "b"),
            ("sdp", &sdp(b.local_addr()?)),
        ],
    )?;
    let pa = sdp_media(&answer).context("answer result without media")?;
    Ok((pa, pb))
}

/// Send an NG command (a bencoded dictionary of strings behind a cookie) and return
/// the `sdp` of an `ok` result (empty when there is none).
fn ng_call(sock: &UdpSocket, items: &[(&str, &str)]) -> anyhow::Result<String> {
    let cookie = format!("{:016x}", rand::random::<u64>());
    let mut msg = format!("{cookie} d");
    let mut sorted = items.to_vec();
    sorted.sort_by_key(|(k, _)| *k);
    for (k, v) in sorted {
        msg.push_str(&format!("{}:{}{}:{}", k.len(), k, v.len(), v));
    }
    msg.push('e');
    sock.send(msg.as_bytes())?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf)?;
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        let Some(body) = reply.strip_prefix(&format!("{cookie} ")) else {
            continue;
        };
        let dict = bdecode_dict(body.as_bytes()).context("NG reply is not a dictionary")?;
        let get = |k: &str| dict.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        if get("result").as_deref() != Some("ok") {
            bail!(
                "NG {}: {} {}",
                items.first().map_or("", |i| i.1),
                get("result").unwrap_or_default(),
                get("error-reason").unwrap_or_default()
            );
        }
        return Ok(get("sdp").unwrap_or_default());
    }
}

/// The string values of a bencoded dictionary (others skipped).
fn bdecode_dict(b: &[u8]) -> Option<Vec<(String, String)>> {
    fn string(b: &[u8], i: &mut usize) -> Option<String> {
        let colon = *i + b.get(*i..)?.iter().position(|&c| c == b':')?;
        let len: usize = std::str::from_utf8(b.get(*i..colon)?).ok()?.parse().ok()?;
        let s = b.get(colon + 1..colon + 1 + len)?;
        *i = colon + 1 + len;
        Some(String::from_utf8_lossy(s).to_string())
    }
    fn skip(b: &[u8], i: &mut usize) -> Option<Option<String>> {
        match b.get(*i)? {
            b'0'..=b'9' => string(b, i).map(Some),
            b'i' => {
                *i += b.get(*i..)?.iter().position(|&c| c == b'e')? + 1;
                Some(None)
            }
            b'l' | b'd' => {
                *i += 1;
                while *b.get(*i)? != b'e' {
                    skip(b, i)?;
                }
                *i += 1;
                Some(None)
            }
            _ => None,
        }
    }
    if *b.first()? != b'd' {
        return None;
    }
    let mut i = 1;
    let mut out = Vec::new();
    while *b.get(i)? != b'e' {
        let k = string(b, &mut i)?;
        if let Some(v) = skip(b, &mut i)? {
            out.push((k, v));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_reply() {
        let d =
            bdecode_dict(b"d6:result2:ok3:sdp5:v=0\r\n7:createdi12345e4:tagsd1:a1:bee").unwrap();
        assert_eq!(d[0], ("result".into(), "ok".into()));
        assert_eq!(d[1], ("sdp".into(), "v=0\r\n".into()));
        assert_eq!(d.len(), 2);
        assert!(bdecode_dict(b"d3:abc").is_none());
    }

    #[test]
    fn sdp_round_trip() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(sdp_media(&sdp(a)), Some(a));
    }
}
