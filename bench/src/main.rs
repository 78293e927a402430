//! `tandem-bench`: load generators for any RFC 8656 TURN server, a minimal forwarder
//! that marks the floor, and the side-by-side comparison runner.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

mod alloc_rate;
mod chart;
mod client;
mod compare;
mod forwarder;
mod load;
mod media_load;
mod mmsg;
mod procstat;
mod report;
mod setup;
mod sock;
mod stream_compare;
mod stream_load;

use client::{Credentials, Target};

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Paced open-loop ChannelData load through a TURN server.
    TurnLoad(TurnLoadArgs),
    /// Authenticated allocations per second.
    AllocRate(AllocRateArgs),
    /// The minimal forwarder (no TURN logic) that marks the floor.
    Forwarder(ForwarderArgs),
    /// Start every contender, load them alike and write the report.
    Compare(compare::CompareArgs),
    /// Call media through tandem-relay's media sessions (control API).
    MediaLoad(MediaLoadArgs),
    /// Paced ChannelData load over TURN over TCP or TLS (relayed side UDP).
    StreamLoad(StreamLoadArgs),
    /// Concurrent TCP/TLS client connections held, and the server's memory per one.
    StreamConns(StreamConnsArgs),
    /// tandem-relay and coturn side by side over TCP and TLS client connections.
    StreamCompare(stream_compare::StreamCompareArgs),
}

#[derive(Debug, Args)]
struct StreamLoadArgs {
    /// The server's TCP or TLS listening address (127.0.0.1).
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, value_enum)]
    transport: stream_load::StreamTransport,
    /// Long-term credentials NAME:PASSWORD.
    #[arg(long)]
    user: String,
    /// Allocations (one connection each).
    #[arg(long, default_value_t = 10)]
    allocations: usize,
    /// Offered pings per second over all connections.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// ChannelData payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StreamConnsArgs {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, value_enum)]
    transport: stream_load::StreamTransport,
    /// Connections to open and hold at once.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct MediaLoadArgs {
    /// tandem-relay's control API address (127.0.0.1 only).
    #[arg(long, required_unless_present = "ng")]
    control: Option<SocketAddr>,
    /// Control API token (or TANDEM_CONTROL_SECRET).
    #[arg(long, env = "TANDEM_CONTROL_SECRET", default_value = "")]
    token: String,
    /// Set sessions up through rtpengine's NG protocol at this address instead.
    #[arg(long, conflicts_with = "control")]
    ng: Option<SocketAddr>,
    /// Media sessions (each two legs).
    #[arg(long, default_value_t = 500)]
    sessions: usize,
    /// RTP packets per second per leg (50 = 20 ms audio frames).
    #[arg(long, default_value_t = 50)]
    pps: u64,
    /// RTP payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// SRTP on every caller leg, bridged to plain RTP on the callee leg.
    #[arg(long)]
    srtp: bool,
    /// Measurement window for a profiler of the server: after setup print `setup
    /// done` on stderr and wait for this file to exist; after the load print `load
    /// done` and wait for it to be gone.
    #[arg(long)]
    window_file: Option<std::path::PathBuf>,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    server_cpu: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// Server and credentials.
#[derive(Debug, Args)]
struct ServerArgs {
    /// TURN server address (127.0.0.1 only).
    #[arg(long)]
    server: SocketAddr,
    /// Long-term credentials NAME:PASSWORD.
    #[arg(long, conflicts_with_all = ["secret", "forwarder"])]
    user: Option<String>,
    /// Shared secret for REST credentials (coturn's use-auth-secret scheme).
    #[arg(long, conflicts_with = "forwarder")]
    secret: Option<String>,
    /// The server is `tandem-bench forwarder` (its setup exchange instead of TURN).
    #[arg(long)]
    forwarder: bool,
}

impl ServerArgs {
    fn target(&self) -> anyhow::Result<(SocketAddr, Target)> {
        if !self.server.ip().is_loopback() {
            bail!("the harness only runs against loopback addresses");
        }
        let t = if self.forwarder {
            Target::Forwarder
        } else if let Some(u) = &self.user {
            let Some((user, password)) = u.split_once(':') else {
                bail!("--user takes NAME:PASSWORD");
            };
            Target::Turn(Credentials::LongTerm {
                user: user.into(),
                password: password.into(),
            })
        } else if let Some(s) = &self.secret {
            Target::Turn(Credentials::Secret { secret: s.clone() })
        } else {
            bail!("give --user, --secret or --forwarder");
        };
        Ok((self.server, t))
    }
}

#[derive(Debug, Args)]
struct TurnLoadArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, value_enum, default_value = "peer")]
    mode: load::Mode,
    /// Number of allocations (even in client-to-client mode).
    #[arg(long, default_value_t = 10)]
    allocations: usize,
    /// Offered pings per second over all allocations.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// ChannelData payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Seconds of sending (the run then waits up to 1 s for stragglers).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Server process id, for CPU per packet and RSS per allocation.
    #[arg(long)]
    server_pid: Option<u32>,
    /// CPU the server is pinned to, to report how busy it was with other work.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Measurement window for a profiler of the server: after setup print `setup
    /// done` on stderr and wait for this file to exist; after the load print `load
    /// done` and wait for it to be removed before tearing down (each wait at most
    /// 120 s).
    #[arg(long)]
    window_file: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct AllocRateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Stop after this many allocations.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Allocations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop after this many errors.
    #[arg(long, default_value_t = 10)]
    max_errors: usize,
    /// Server process id, for RSS per allocation while they are all live.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Loopback address the clients bind to (repeatable; used in turn). One address
    /// gives about 28,000 client ports; use several for more allocations.
    #[arg(long = "client-ip", default_value = "127.0.0.1")]
    client_ips: Vec<std::net::IpAddr>,
    /// Seconds to keep every allocation live after the last one was made, before the
    /// server's memory is read again and they are deleted (at most 300).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ForwarderArgs {
    /// Listening address (loopback; port 0 picks one and prints it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    max_time: f64,
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        bail!("durations are 0..=3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::TurnLoad(a) => {
            let (server, target) = a.server.target()?;
            let cfg = load::LoadConfig {
                server,
                target,
                mode: a.mode,
                allocations: a.allocations,
                rate: a.rate,
                size: a.size,
                duration: secs(a.duration)?,
                server_pid: a.server_pid,
                server_cpu: a.server_cpu,
                progress: !a.json,
                window: a.window_file,
            };
            let r = load::run(&cfg)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_load(&r);
            }
        }
        Cmd::AllocRate(a) => {
            let (server, target) = a.server.target()?;
            let cfg = alloc_rate::AllocRateConfig {
                server,
                target,
                count: a.count,
                limit: secs(a.duration)?,
                concurrency: a.concurrency,
                max_errors: a.max_errors,
                server_pid: a.server_pid,
                progress: !a.json,
                client_ips: a.client_ips.clone(),
                hold: if a.hold == 0.0 {
                    Duration::ZERO
                } else {
                    secs(a.hold)?
                },
            };
            if a.client_ips.iter().any(|ip| !ip.is_loopback()) {
                bail!("the harness only binds loopback addresses");
            }
            let r = alloc_rate::run(&cfg)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} allocations in {:.2} s: {:.0}/s, {} errors",
                    r.allocations, r.elapsed_s, r.allocations_per_s, r.errors
                );
                if let Some([a, b, c]) = r.server_rss_kib {
                    println!(
                        "server VmRSS: {a} KiB before, {b} KiB with all made, {c} KiB after \
                         {:.1} s held",
                        r.held_s
                    );
                }
                if let Some(b) = r.server_rss_bytes_per_allocation {
                    println!("server RSS grew {b:.0} bytes per allocation");
                }
                if let Some(f) = r.server_fds {
                    println!(
                        "server open files: {f} (soft limit {}); generator's soft limit {}",
                        r.server_nofile_limit
                            .map_or("unlimited".into(), |v| v.to_string()),
                        r.client_nofile_limit
                            .map_or("unlimited".into(), |v| v.to_string())
                    );
                }
                for e in &r.first_errors {
                    println!("  error: {e}");
                }
            }
        }
        Cmd::Forwarder(a) => {
            if !a.listen.ip().is_loopback() {
                bail!("the forwarder only listens on loopback");
            }
            forwarder::run(a.listen, secs(a.max_time)?, |addr| {
                println!("forwarder listen={addr}");
            })?;
        }
        Cmd::Compare(a) => compare::run(a)?,
        Cmd::StreamCompare(a) => stream_compare::run(a)?,
        Cmd::StreamLoad(a) => {
            if !a.server.ip().is_loopback() {
                bail!("--server must be a loopback address");
            }
            let Some((user, password)) = a.user.split_once(':') else {
                bail!("--user NAME:PASSWORD");
            };
            let cfg = stream_load::StreamConfig {
                server: a.server,
                transport: a.transport,
                creds: Credentials::LongTerm {
                    user: user.into(),
                    password: password.into(),
                },
                allocations: a.allocations,
                rate: a.rate,
                size: a.size,
                duration: secs(a.duration)?,
                server_pid: a.server_pid,
            };
            let r = stream_load::run(&cfg)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_load(&r);
            }
        }
        Cmd::StreamConns(a) => {
            if !a.server.ip().is_loopback() {
                bail!("--server must be a loopback address");
            }
            let r = stream_load::conns(a.server, a.transport, a.count, a.server_pid)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::MediaLoad(a) => {
            if a.sessions == 0 || a.sessions > 20_000 || a.pps == 0 || a.pps > 10_000 {
                bail!("--sessions 1..=20000 and --pps 1..=10000");
            }
            let setup = match (a.control, a.ng) {
                (_, Some(addr)) if addr.ip().is_loopback() => media_load::Setup::Ng { addr },
                (Some(addr), None) if addr.ip().is_loopback() => media_load::Setup::Control {
                    addr,
                    token: a.token,
                },
                _ => bail!("give --control or --ng, a loopback address"),
            };
            let r = media_load::run(&media_load::MediaLoadConfig {
                setup,
                sessions: a.sessions,
                pps: a.pps,
                size: a.size,
                duration: secs(a.duration)?,
                srtp: a.srtp,
                server_pid: a.server_pid,
                server_cpu: a.server_cpu,
                window: a.window_file,
            })?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: {} sessions{}, {} B, offered {:.0} pps: forwarded {:.0} pps, lost {} \
                     ({:.3}%), dup {}, latency p50 {:.0} us p99 {:.0} us, server {} ns/packet",
                    r.server,
                    r.sessions,
                    if r.srtp { " (SRTP bridged)" } else { "" },
                    r.size,
                    r.offered_pps,
                    r.forwarded_pps,
                    r.lost,
                    r.loss_pct,
                    r.duplicates,
                    r.latency_p50_us,
                    r.latency_p99_us,
                    r.server_cpu_ns_per_packet
                        .map_or("-".into(), |c| format!("{c:.0}"))
                );
            }
        }
    }
    Ok(())
}

fn print_load(r: &load::LoadReport) {
    println!(
        "{} mode, {} allocations, {} B payload, {:.1} s",
        r.mode, r.allocations, r.size, r.duration_s
    );
    println!(
        "offered {:.0} pps, delivered {:.0} round trips/s ({:.0} forwarded packets/s)",
        r.offered_pps, r.delivered_pps, r.forwarded_pps
    );
    println!(
        "sent {} received {} lost {} ({:.3}%) duplicates {} send errors {}",
        r.sent, r.received, r.lost, r.loss_pct, r.duplicates, r.send_errors
    );
    println!(
        "rtt p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
        r.rtt_p50_us, r.rtt_p99_us, r.rtt_p999_us, r.rtt_max_us
    );
    if let Some(c) = r.server_cpu_ns_per_packet {
        println!(
            "server CPU {:.0} ns per forwarded packet ({:.0}% of a core)",
            c,
            r.server_cpu_util.unwrap_or(0.0) * 100.0
        );
    }
    if let Some(o) = r.server_cpu_other {
        println!(
            "server's CPU busy with other work: {:.0}% (noisy-neighbour indicator)",
            o * 100.0
        );
    }
    if let (Some(rss), Some(per)) = (r.server_rss_kib, r.server_rss_bytes_per_allocation) {
        println!("server RSS {rss} KiB, {per:.0} bytes per allocation");
    }
}
