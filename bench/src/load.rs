//! `turn-load`: paced open-loop ChannelData load through a TURN server (or the
//! forwarder), with round-trip latency, loss and the server's CPU per packet.
//!
//! Open loop: packet k is due at `start + k / rate` whatever came back, and carries
//! that scheduled time, so a server (or a generator) that falls behind shows up as
//! latency rather than as a lower offered rate (no coordinated omission).
//!
//! Payload layout (after the 4-byte ChannelData header):
//! `kind u8 | 0 0 0 | seq u64 | scheduled send time u64 (ns, CLOCK_MONOTONIC) | origin u32 | zeros`
//! kind 0 is a ping, kind 1 the answer in client-to-client mode (the partner client
//! sends the ping back through its own channel).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde::Serialize;

use crate::client::{ClientError, Session, Target, TurnClient};
use crate::mmsg::{RecvBatch, SendBatch};
use crate::procstat::{cpu_ns, mono_ns, rss_kib};
use crate::sock::{raise_nofile, set_rcvbuf, SOCKET_BUFFER};

/// First channel number used (RFC 8656 range).
const CHANNEL: u16 = 0x4000;
/// Smallest payload that holds the header fields.
pub const MIN_SIZE: usize = 24;
/// Upper bound on packets per run (keeps the delivery bitmap small).
const MAX_PACKETS: u64 = 100_000_000;
/// How long to wait for stragglers after the last scheduled send.
const DRAIN: Duration = Duration::from_millis(1000);
/// Setup transactions in flight at once.
const SETUP_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Each allocation binds a channel to the harness's echo peer.
    Peer,
    /// Allocations in pairs, each bound to its partner's relayed address.
    ClientToClient,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub server: SocketAddr,
    pub target: Target,
    pub mode: Mode,
    pub allocations: usize,
    /// Offered packets per second over all allocations (pings; in client-to-client
    /// mode each ping is answered by the partner, as the echo peer does in peer mode).
    pub rate: u64,
    /// ChannelData payload bytes.
    pub size: usize,
    pub duration: Duration,
    pub server_pid: Option<u32>,
    /// The CPU the server is pinned to: report how busy it was with other work.
    pub server_cpu: Option<usize>,
    pub progress: bool,
    /// A measurement window for an outside profiler (see [`Window`]).
    pub window: Option<std::path::PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LoadReport {
    pub mode: String,
    pub allocations: usize,
    pub size: usize,
    pub duration_s: f64,
    pub offered_pps: f64,
    /// Pings sent.
    pub sent: u64,
    /// Pings the kernel refused to take (socket buffer full on the generator side).
    pub send_errors: u64,
    /// Pings per second the generator actually sent (below `offered_pps` when the
    /// generator itself could not keep the schedule).
    pub sent_pps: f64,
    /// Scheduled pings never sent because the generator fell a whole drain period
    /// behind.
    pub unsent: u64,
    /// Round trips completed.
    pub received: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub loss_pct: f64,
    /// Round trips per second.
    pub delivered_pps: f64,
    /// Packets the server forwarded per second (2 per round trip in peer mode, 4 in
    /// client-to-client mode).
    pub forwarded_pps: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub rtt_p999_us: f64,
    pub rtt_max_us: f64,
    /// Server utime+stime over the run divided by the packets it forwarded.
    pub server_cpu_ns_per_packet: Option<f64>,
    /// Share of one CPU the server used during the run.
    pub server_cpu_util: Option<f64>,
    /// Share of the server's CPU (`--server-cpu`) busy with anything but the server
    /// process during the run (other processes, and interrupt work not charged to the
    /// server): a noisy-neighbour indicator.
    #[serde(default)]
    pub server_cpu_other: Option<f64>,
    pub server_rss_kib: Option<u64>,
    /// (RSS after setup - RSS before) / allocations, in bytes.
    pub server_rss_bytes_per_allocation: Option<f64>,
    pub setup_s: f64,
}

/// A window around the paced load (no setup, no teardown) that a profiler of the
/// server can measure: after setup the generator prints `setup done` on stderr and
/// waits until the file exists; after the load and its drain it prints `load done`
/// and waits until the file is gone, then tears down. Each wait is bounded.
pub(crate) struct Window<'a>(pub(crate) &'a std::path::Path);

impl Window<'_> {
    const WAIT: Duration = Duration::from_secs(120);

    pub(crate) fn open(&self) -> anyhow::Result<()> {
        eprintln!("setup done");
        self.wait_until(true)
    }

    pub(crate) fn close(&self) -> anyhow::Result<()> {
        eprintln!("load done");
        self.wait_until(false)
    }

    fn wait_until(&self, exists: bool) -> anyhow::Result<()> {
        let end = std::time::Instant::now() + Self::WAIT;
        while self.0.exists() != exists {
            if std::time::Instant::now() > end {
                bail!(
                    "--window-file {}: waited {:?}",
                    self.0.display(),
                    Self::WAIT
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

struct Alloc {
    sock: UdpSocket,
    session: Session,
    channel: u16,
}

/// Allocate and bind every client (async, a bounded number at a time).
async fn setup(cfg: &LoadConfig, peer: Option<SocketAddr>) -> anyhow::Result<Vec<Alloc>> {
    let n = cfg.allocations;
    let sem = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let sem = sem.clone();
        let (server, target) = (cfg.server, cfg.target.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            // A server may still hold an allocation for a client port the kernel hands
            // out again (437 Allocation Mismatch): try again from another port, keeping
            // the refused one bound until then so it is not handed out a third time.
            let mut refused = Vec::new();
            loop {
                let mut c = TurnClient::connect(server, target.clone()).await?;
                match c.allocate().await {
                    Ok(relayed) => return anyhow::Ok((i, c, relayed)),
                    Err(ClientError::Rejected { code: 437, .. }) if refused.len() < 3 => {
                        refused.push(c);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        });
    }
    let mut clients: Vec<Option<(TurnClient, SocketAddr)>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, c, relayed) = r?.with_context(|| "allocate")?;
        clients[i] = Some((c, relayed));
    }
    let relayed: Vec<SocketAddr> = clients
        .iter()
        .map(|c| c.as_ref().map(|c| c.1).expect("all allocated"))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (mut c, _) = c.expect("all allocated");
        let to = match cfg.mode {
            Mode::Peer => peer.expect("peer mode has a peer"),
            Mode::ClientToClient => relayed[i ^ 1],
        };
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            c.channel_bind(CHANNEL, to).await?;
            anyhow::Ok((i, c))
        });
    }
    let mut out: Vec<Option<Alloc>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, c) = r?.with_context(|| "channel bind")?;
        let (sock, session) = c.into_std()?;
        out[i] = Some(Alloc {
            sock,
            session,
            channel: CHANNEL,
        });
    }
    Ok(out.into_iter().map(|a| a.expect("all bound")).collect())
}

/// Delete every allocation (Refresh with LIFETIME 0), best effort.
async fn teardown(allocs: Vec<Alloc>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for a in allocs {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            if let Ok(mut c) = TurnClient::from_std(a.sock, a.session) {
                let _ = c.refresh(0).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Run one load test.
pub fn run(cfg: &LoadConfig) -> anyhow::Result<LoadReport> {
    if cfg.size < MIN_SIZE || cfg.size > 1400 {
        bail!("--size must be {MIN_SIZE}..=1400 bytes");
    }
    if cfg.allocations == 0 || cfg.rate == 0 {
        bail!("--allocations and --rate must be positive");
    }
    if cfg.mode == Mode::ClientToClient && cfg.allocations % 2 != 0 {
        bail!("client-to-client mode needs an even number of allocations");
    }
    raise_nofile();
    let rt = runtime()?;
    // The echo peer is served by the generator's own loop (same thread, same core):
    // no thread wake-ups on the generator's side.
    let peer = match cfg.mode {
        Mode::Peer => {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            set_rcvbuf(&s, SOCKET_BUFFER);
            Some(s)
        }
        Mode::ClientToClient => None,
    };
    let rss0 = cfg.server_pid.and_then(rss_kib);
    let t_setup = std::time::Instant::now();
    let limit = Duration::from_secs(60) + Duration::from_millis(20 * cfg.allocations as u64);
    let peer_addr = match &peer {
        Some(p) => Some(p.local_addr()?),
        None => None,
    };
    let allocs = rt.block_on(async { tokio::time::timeout(limit, setup(cfg, peer_addr)).await });
    let allocs = match allocs {
        Ok(r) => r?,
        Err(_) => bail!("setup of {} allocations timed out", cfg.allocations),
    };
    let setup_s = t_setup.elapsed().as_secs_f64();
    let rss1 = cfg.server_pid.and_then(rss_kib);
    for a in &allocs {
        set_rcvbuf(&a.sock, SOCKET_BUFFER);
    }
    let window = cfg.window.as_deref().map(Window);
    if let Some(w) = &window {
        w.open()?;
    }
    let r = datapath(cfg, &allocs, peer.as_ref());
    if let Some(w) = &window {
        w.close()?;
    }
    let _ = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), teardown(allocs)).await });
    drop(peer);
    let mut rep = r?;
    rep.setup_s = setup_s;
    rep.server_rss_kib = rss1;
    if let (Some(a), Some(b)) = (rss0, rss1) {
        rep.server_rss_bytes_per_allocation =
            Some((b as f64 - a as f64) * 1024.0 / cfg.allocations as f64);
    }
    Ok(rep)
}

struct Stats {
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    hist: Histogram<u64>,
}

impl Stats {
    fn record(&mut self, seq: u64, sched: u64, now: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        let Some(word) = self.seen.get_mut(w) else {
            return;
        };
        if *word & (1 << b) != 0 {
            self.duplicates += 1;
            return;
        }
        *word |= 1 << b;
        self.received += 1;
        self.hist
            .saturating_record(now.saturating_sub(sched).max(1));
    }
}

/// The synchronous, single-threaded datapath: paced sends, epoll for replies.
fn datapath(
    cfg: &LoadConfig,
    allocs: &[Alloc],
    echo: Option<&UdpSocket>,
) -> anyhow::Result<LoadReport> {
    let n = allocs.len();
    let total = (cfg.rate as f64 * cfg.duration.as_secs_f64()).round() as u64;
    let total = total.clamp(1, MAX_PACKETS);
    let interval = 1e9 / cfg.rate as f64;
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    for (i, a) in allocs.iter().enumerate() {
        epoll.add(
            a.sock.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
        )?;
    }
    const ECHO: u64 = u64::MAX;
    if let Some(e) = echo {
        epoll.add(e.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, ECHO))?;
    }
    let mut echo_tx = SendBatch::default();
    let mut stats = Stats {
        seen: vec![0u64; total.div_ceil(64) as usize],
        received: 0,
        duplicates: 0,
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
    };
    let pb = if cfg.progress {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} pings {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut pkt = vec![0u8; 4 + cfg.size];
    let mut rx = RecvBatch::default();
    let mut events = vec![EpollEvent::empty(); 256];
    let cpu0 = cfg.server_pid.and_then(cpu_ns);
    let core0 = cfg.server_cpu.and_then(crate::procstat::cpu_ticks);
    let start = mono_ns() + 2_000_000;
    let end_of_sends = start + (total as f64 * interval) as u64;
    let hard_end = end_of_sends + DRAIN.as_nanos() as u64;
    let mut k: u64 = 0;
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let mut last_progress = 0u64;
    let mut unsent = 0u64;
    let mut echo_errors = 0u64;
    loop {
        let now = mono_ns();
        // Send everything that is due (bounded per turn so replies are read too).
        let mut burst = 0;
        while k < total && start + (k as f64 * interval) as u64 <= now && burst < 256 {
            let sched = start + (k as f64 * interval) as u64;
            let i = (k % n as u64) as usize;
            let a = &allocs[i];
            pkt[..2].copy_from_slice(&a.channel.to_be_bytes());
            pkt[2..4].copy_from_slice(&(cfg.size as u16).to_be_bytes());
            pkt[4] = 0;
            pkt[8..16].copy_from_slice(&k.to_be_bytes());
            pkt[16..24].copy_from_slice(&sched.to_be_bytes());
            pkt[24..28].copy_from_slice(&(i as u32).to_be_bytes());
            match a.sock.send(&pkt) {
                Ok(_) => sent += 1,
                Err(_) => send_errors += 1,
            }
            k += 1;
            burst += 1;
        }
        if k < total && now >= hard_end {
            // The generator could not keep up with the schedule: what was not sent by
            // now was never offered (reported as `sent` below the schedule).
            unsent = total - k;
            k = total;
        }
        if k >= total && (stats.received + stats.duplicates >= sent || now >= hard_end) {
            break;
        }
        if now >= hard_end + 1_000_000_000 {
            break;
        }
        if now - last_progress > 100_000_000 {
            pb.set_position(k);
            pb.set_message(format!("{} back", stats.received));
            last_progress = now;
        }
        // While sending, poll without sleeping: the generator owns its core, and a
        // thread that never sleeps costs the server no wake-ups when it answers.
        // Afterwards (draining), sleep between polls.
        let timeout = if k < total {
            EpollTimeout::ZERO
        } else {
            EpollTimeout::from(20u16)
        };
        let ne = epoll.wait(&mut events, timeout)?;
        for ev in &events[..ne] {
            let tok = ev.data();
            if tok == ECHO {
                let Some(e) = echo else { continue };
                for _ in 0..4 {
                    let got = rx.recv(e.as_fd())?;
                    if got == 0 {
                        break;
                    }
                    for j in 0..got {
                        let (d, src) = rx.packet(j);
                        echo_tx.push(Some(SocketAddr::V4(src)), |b| {
                            b[..d.len()].copy_from_slice(d);
                            d.len()
                        });
                    }
                    echo_errors += echo_tx.flush(e.as_fd())? as u64;
                }
                continue;
            }
            let Some(a) = allocs.get(tok as usize) else {
                continue;
            };
            for _ in 0..4 {
                let got = rx.recv(a.sock.as_fd())?;
                if got == 0 {
                    break;
                }
                let now = mono_ns();
                for j in 0..got {
                    let (d, _) = rx.packet(j);
                    // ChannelData: header, then our payload (padding may follow).
                    let Some(p) = d.get(4..4 + MIN_SIZE) else {
                        continue;
                    };
                    let seq = u64::from_be_bytes(p[4..12].try_into().expect("8 bytes"));
                    let sched = u64::from_be_bytes(p[12..20].try_into().expect("8 bytes"));
                    match (cfg.mode, p[0]) {
                        (Mode::ClientToClient, 0) => {
                            // A ping from the partner: answer through our own channel.
                            let len = d.len().min(4 + cfg.size);
                            let mut reply = [0u8; crate::mmsg::MAX_DGRAM];
                            reply[..len].copy_from_slice(&d[..len]);
                            reply[..2].copy_from_slice(&a.channel.to_be_bytes());
                            reply[4] = 1;
                            if a.sock.send(&reply[..len]).is_err() {
                                send_errors += 1;
                            }
                        }
                        _ => stats.record(seq, sched, now),
                    }
                }
            }
        }
    }
    let elapsed_ns = mono_ns().saturating_sub(start).max(1);
    let cpu1 = cfg.server_pid.and_then(cpu_ns);
    let core1 = cfg.server_cpu.and_then(crate::procstat::cpu_ticks);
    let other = match (core0, core1, cpu0, cpu1) {
        (Some((b0, t0)), Some((b1, t1)), Some(s0), Some(s1)) if t1 > t0 => {
            let server_ticks = (s1 - s0) as f64 * crate::procstat::ticks_per_sec() as f64 / 1e9;
            Some((((b1 - b0) as f64 - server_ticks) / (t1 - t0) as f64).clamp(0.0, 1.0))
        }
        _ => None,
    };
    pb.finish_and_clear();
    let run_s = (end_of_sends - start) as f64 / 1e9;
    // Relay traversals per round trip: peer mode is client->peer and peer->client (2);
    // client-to-client is the same for the ping and again for the answer (4), since
    // each leg enters the server from a client and again from the partner's relayed
    // address.
    let forwarded = match cfg.mode {
        Mode::Peer => 2,
        Mode::ClientToClient => 4,
    } * stats.received;
    let (cpu_per_pkt, util) = match (cpu0, cpu1) {
        (Some(a), Some(b)) if forwarded > 0 => (
            Some((b - a) as f64 / forwarded as f64),
            Some((b - a) as f64 / elapsed_ns as f64),
        ),
        _ => (None, None),
    };
    let lost = sent.saturating_sub(stats.received);
    let q = |p: f64| stats.hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(LoadReport {
        mode: match cfg.mode {
            Mode::Peer => "peer".into(),
            Mode::ClientToClient => "client-to-client".into(),
        },
        allocations: n,
        size: cfg.size,
        duration_s: run_s,
        offered_pps: cfg.rate as f64,
        sent,
        send_errors: send_errors + echo_errors,
        sent_pps: sent as f64 / run_s.max(1e-9),
        unsent,
        received: stats.received,
        duplicates: stats.duplicates,
        lost,
        loss_pct: if sent > 0 {
            lost as f64 * 100.0 / sent as f64
        } else {
            0.0
        },
        delivered_pps: stats.received as f64 / run_s.max(1e-9),
        forwarded_pps: forwarded as f64 / run_s.max(1e-9),
        rtt_p50_us: q(0.5),
        rtt_p99_us: q(0.99),
        rtt_p999_us: q(0.999),
        rtt_max_us: stats.hist.max() as f64 / 1000.0,
        server_cpu_ns_per_packet: cpu_per_pkt,
        server_cpu_util: util,
        server_cpu_other: other,
        server_rss_kib: None,
        server_rss_bytes_per_allocation: None,
        setup_s: 0.0,
    })
}
