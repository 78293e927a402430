//! `stream-compare`: tandem-relay and coturn side by side with TURN over TCP and over
//! TLS client connections (the relayed side UDP), written to
//! `bench/results/<date>-turn-stream.{md,json}`.
//!
//! Both servers run at once, each pinned to CPU 0 with one worker (coturn:
//! `--relay-threads=1`), with the same self-signed certificate made here; the load
//! generator (`tandem-bench stream-load`, a child pinned to CPU 1) sends 200-byte
//! ChannelData pings over one connection per allocation to its own UDP echo peer.
//! For each transport and offered rate (a fixed ladder) the contenders alternate
//! (A B, then B A) for every round, so both see the same background noise; each
//! figure is the median over the rounds. A contender leaves the ladder at the first
//! rate whose median loss is over 0.1%: the last rate before is its highest lossless
//! rate. Then `tandem-bench stream-conns` opens and holds `--conns` TLS connections
//! (each with a Binding answered) against each server and reads its RSS before and
//! with them all open.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::compare::{child_json, free_port, median, pinned, today, TempDir};
use crate::load::LoadReport;
use crate::stream_load::ConnReport;

const USER: &str = "bench";
const PASSWORD: &str = "bench";
const REALM: &str = "bench";
const LOSSLESS_PCT: f64 = 0.1;

#[derive(Debug, clap::Args)]
pub struct StreamCompareArgs {
    /// tandem-relay binary (default: next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// coturn's turnserver.
    #[arg(long, default_value = "turnserver")]
    coturn_bin: PathBuf,
    /// Rounds per rate point (order reversed every other round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Allocations (client connections) per load run.
    #[arg(long, default_value_t = 10)]
    allocations: usize,
    /// ChannelData payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Offered round trips per second, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,30000,40000,60000"
    )]
    rates: Vec<u64>,
    /// TLS connections held at once for the memory figure.
    #[arg(long, default_value_t = 2000)]
    conns: usize,
    /// Smoke run: one round, 1 s points, two rates, 200 connections.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
    Tcp,
    Tls,
}

impl Transport {
    fn arg(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

struct Server {
    name: &'static str,
    child: Child,
    tcp_port: u16,
    tls_port: u16,
    dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn port(&self, t: Transport) -> u16 {
        match t {
            Transport::Tcp => self.tcp_port,
            Transport::Tls => self.tls_port,
        }
    }
}

fn start(name: &'static str, bin: &Path, cert: &Path, key: &Path) -> anyhow::Result<Server> {
    let tcp_port = free_port()?;
    let mut tls_port = free_port()?;
    while tls_port == tcp_port {
        tls_port = free_port()?;
    }
    let dir = TempDir::new(name)?;
    let mut cmd = pinned("0");
    if name == "tandem-relay" {
        // Limits sized for the benchmark: every connection comes from 127.0.0.1.
        let conf = dir.0.join("relay.toml");
        std::fs::write(
            &conf,
            "user-quota = 0\ntotal-quota = 200000\nunauthorized-rate = 1000000\n\
             stream-max-connections = 100000\nstream-max-connections-per-ip = 100000\n",
        )?;
        cmd.arg(bin).arg("--config").arg(&conf).args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &tcp_port.to_string(),
            "--tls-listening-port",
            &tls_port.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--allow-loopback-peers",
            "--log-level",
            "warn",
            "--workers",
            "1",
        ]);
        cmd.arg("--cert").arg(cert).arg("--pkey").arg(key);
    } else {
        cmd.arg(bin).args([
            "-n",
            "--listening-ip=127.0.0.1",
            &format!("--listening-port={tcp_port}"),
            &format!("--tls-listening-port={tls_port}"),
            "--relay-ip=127.0.0.1",
            "--relay-threads=1",
            "--no-dtls",
            "--no-cli",
            "--lt-cred-mech",
            &format!("--user={USER}:{PASSWORD}"),
            &format!("--realm={REALM}"),
            "--allow-loopback-peers",
            "--simple-log",
            &format!("--log-file={}", dir.0.join("turn.log").display()),
            &format!("--pidfile={}", dir.0.join("turn.pid").display()),
            &format!("--cert={}", cert.display()),
            &format!("--pkey={}", key.display()),
        ]);
    }
    let log = std::fs::File::create(dir.0.join("stdout.log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    let mut s = Server {
        name,
        child,
        tcp_port,
        tls_port,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = s.child.try_wait()? {
            let mut out = String::new();
            let _ = std::fs::File::open(s.dir.0.join("stdout.log"))
                .and_then(|mut f| f.read_to_string(&mut out));
            bail!("{name} exited at start ({st}): {out}");
        }
        let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        if up(tcp_port) && up(tls_port) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{name} did not listen on TCP {tcp_port} and TLS {tls_port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(s)
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    contender: String,
    transport: Transport,
    rate: u64,
    round: usize,
    report: LoadReport,
}

#[derive(Debug, Clone, Serialize)]
struct Summary {
    contender: String,
    transport: Transport,
    rate: u64,
    loss_pct: Option<f64>,
    cpu_ns_per_packet: Option<f64>,
    rtt_p50_us: Option<f64>,
    rtt_p99_us: Option<f64>,
    cpu_other_note: Option<String>,
}

#[derive(Debug, Serialize)]
struct Results {
    date: String,
    host_note: String,
    settings: BTreeMap<String, String>,
    summaries: Vec<Summary>,
    highest_lossless_rate: BTreeMap<String, Option<u64>>,
    /// tandem / coturn CPU per forwarded packet, per transport, at the highest rate
    /// both served without loss.
    ratios: BTreeMap<String, Option<(u64, f64)>>,
    connections: Vec<(String, ConnReport)>,
    points: Vec<Point>,
}

pub fn run(mut a: StreamCompareArgs) -> anyhow::Result<()> {
    // What else the machine was doing when the run started, for the report.
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    if a.quick {
        a.rounds = 1;
        a.duration = 1.0;
        a.rates.truncate(2);
        a.conns = a.conns.min(200);
    }
    if a.rounds == 0 || a.rates.is_empty() {
        bail!("--rounds and --rates must not be empty");
    }
    let self_exe = std::env::current_exe()?;
    let relay_bin = a.relay_bin.clone().unwrap_or_else(|| {
        self_exe
            .parent()
            .map(|d| d.join("tandem-relay"))
            .unwrap_or_default()
    });
    if !relay_bin.exists() {
        bail!("{} not found (--relay-bin)", relay_bin.display());
    }
    // One self-signed certificate for both servers.
    let certs = TempDir::new("stream-cert")?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let (cert, key) = (certs.0.join("turn.crt"), certs.0.join("turn.key"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;

    let mut servers = vec![start("tandem-relay", &relay_bin, &cert, &key)?];
    match start("coturn", &a.coturn_bin, &cert, &key) {
        Ok(s) => servers.push(s),
        Err(e) => eprintln!("coturn not run: {e:#}"),
    }

    let mut points = Vec::new();
    let mut highest: BTreeMap<String, Option<u64>> = BTreeMap::new();
    for t in [Transport::Tcp, Transport::Tls] {
        let mut active: Vec<bool> = vec![true; servers.len()];
        for &rate in &a.rates {
            if !active.iter().any(|x| *x) {
                break;
            }
            let mut losses: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
            for round in 0..a.rounds {
                let mut order: Vec<usize> = (0..servers.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for i in order {
                    if !active[i] {
                        continue;
                    }
                    let s = &servers[i];
                    let args: Vec<String> = vec![
                        "stream-load".into(),
                        "--server".into(),
                        format!("127.0.0.1:{}", s.port(t)),
                        "--transport".into(),
                        t.arg().into(),
                        "--user".into(),
                        format!("{USER}:{PASSWORD}"),
                        "--allocations".into(),
                        a.allocations.to_string(),
                        "--rate".into(),
                        rate.to_string(),
                        "--size".into(),
                        a.size.to_string(),
                        "--duration".into(),
                        a.duration.to_string(),
                        "--server-pid".into(),
                        s.child.id().to_string(),
                        "--json".into(),
                    ];
                    match child_json::<LoadReport>(&self_exe, &args) {
                        Ok(r) => {
                            eprintln!(
                                "{} {} {rate}/s round {round}: loss {:.3}% cpu/pkt {:?} ns",
                                s.name,
                                t.arg(),
                                r.loss_pct,
                                r.server_cpu_ns_per_packet.map(|x| x.round())
                            );
                            losses[i].push(r.loss_pct);
                            points.push(Point {
                                contender: s.name.into(),
                                transport: t,
                                rate,
                                round,
                                report: r,
                            });
                        }
                        Err(e) => {
                            eprintln!("{} {} {rate}/s round {round}: {e:#}", s.name, t.arg());
                            losses[i].push(100.0);
                        }
                    }
                }
            }
            for (i, s) in servers.iter().enumerate() {
                if !active[i] {
                    continue;
                }
                let m = median(losses[i].clone()).unwrap_or(100.0);
                let key = format!("{} {}", s.name, t.arg());
                if m <= LOSSLESS_PCT {
                    highest.insert(key, Some(rate));
                } else {
                    highest.entry(key).or_insert(None);
                    active[i] = false;
                }
            }
        }
    }

    let mut connections = Vec::new();
    for s in &servers {
        let args: Vec<String> = vec![
            "stream-conns".into(),
            "--server".into(),
            format!("127.0.0.1:{}", s.tls_port),
            "--transport".into(),
            "tls".into(),
            "--count".into(),
            a.conns.to_string(),
            "--server-pid".into(),
            s.child.id().to_string(),
        ];
        match child_json::<ConnReport>(&self_exe, &args) {
            Ok(r) => {
                eprintln!(
                    "{}: {} of {} TLS connections held, {:?} bytes each",
                    s.name,
                    r.held,
                    r.requested,
                    r.bytes_per_connection.map(|b| b.round())
                );
                connections.push((s.name.to_string(), r));
            }
            Err(e) => eprintln!("{}: stream-conns: {e:#}", s.name),
        }
    }
    drop(servers);

    // Medians per (contender, transport, rate).
    let mut groups: BTreeMap<(String, Transport, u64), Vec<&LoadReport>> = BTreeMap::new();
    for p in &points {
        groups
            .entry((p.contender.clone(), p.transport, p.rate))
            .or_default()
            .push(&p.report);
    }
    let summaries: Vec<Summary> = groups
        .iter()
        .map(|((c, t, rate), rs)| Summary {
            contender: c.clone(),
            transport: *t,
            rate: *rate,
            loss_pct: median(rs.iter().map(|r| r.loss_pct).collect()),
            cpu_ns_per_packet: median(
                rs.iter()
                    .filter_map(|r| r.server_cpu_ns_per_packet)
                    .collect(),
            ),
            rtt_p50_us: median(rs.iter().map(|r| r.rtt_p50_us).collect()),
            rtt_p99_us: median(rs.iter().map(|r| r.rtt_p99_us).collect()),
            cpu_other_note: None,
        })
        .collect();
    let find = |c: &str, t: Transport, rate: u64| {
        summaries
            .iter()
            .find(|s| s.contender == c && s.transport == t && s.rate == rate)
    };
    let mut ratios = BTreeMap::new();
    for t in [Transport::Tcp, Transport::Tls] {
        let mut best = None;
        for &rate in &a.rates {
            let (Some(x), Some(y)) = (find("tandem-relay", t, rate), find("coturn", t, rate))
            else {
                continue;
            };
            let lossless = |s: &Summary| s.loss_pct.is_some_and(|l| l <= LOSSLESS_PCT);
            if let (true, true, Some(cx), Some(cy)) = (
                lossless(x),
                lossless(y),
                x.cpu_ns_per_packet,
                y.cpu_ns_per_packet,
            ) {
                best = Some((rate, cx / cy));
            }
        }
        ratios.insert(t.arg().to_string(), best);
    }
    let mut settings = BTreeMap::new();
    for (k, v) in [
        ("rounds", a.rounds.to_string()),
        ("duration_s", a.duration.to_string()),
        ("allocations", a.allocations.to_string()),
        ("size", a.size.to_string()),
        ("rates", format!("{:?}", a.rates)),
        ("conns", a.conns.to_string()),
        ("quick", a.quick.to_string()),
    ] {
        settings.insert(k.to_string(), v);
    }
    let results = Results {
        date: today(),
        host_note: format!(
            "{} CPUs; load average (1 min) when the run started: {load_at_start}; \
             contenders alternate per rate point so both see the same background load",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        settings,
        summaries,
        highest_lossless_rate: highest,
        ratios,
        connections,
        points,
    };
    std::fs::create_dir_all(&a.out_dir)?;
    let stem = a.out_dir.join(format!("{}-turn-stream", results.date));
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(stem.with_extension("md"), markdown(&results))?;
    println!("{}", markdown(&results));
    println!("wrote {}.{{md,json}}", stem.display());
    Ok(())
}

fn f(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn markdown(r: &Results) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# TURN over TCP and TLS: tandem-relay and coturn ({})\n\n",
        r.date
    ));
    s.push_str(
        "`bash bench/compare.sh` (`tandem-bench stream-compare`). Each server pinned to CPU 0 \
         with one worker (coturn `--relay-threads=1`), the generator on CPU 1; one TCP or TLS \
         connection per allocation, ChannelData of the payload size below padded to 4 bytes, \
         to a UDP echo peer and back (2 forwarded packets per round trip). Same self-signed \
         certificate for both. Medians over the rounds.\n\n",
    );
    if r.settings.get("quick").is_some_and(|q| q == "true") {
        s.push_str("**Quick run** (smoke settings, not for conclusions).\n\n");
    }
    s.push_str(&format!("Note: {}.\n\n", r.host_note));
    s.push_str("Settings: ");
    s.push_str(
        &r.settings
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    s.push_str("\n\n## Ratios (tandem-relay / coturn CPU per forwarded packet)\n\n");
    for (t, v) in &r.ratios {
        match v {
            Some((rate, x)) => s.push_str(&format!(
                "- {t}: **{x:.2}x** at {rate} round trips/s (highest rate both served without loss)\n"
            )),
            None => s.push_str(&format!("- {t}: no rate both served without loss\n")),
        }
    }
    s.push_str("\nGoal: at most 0.8x over TLS.\n\n## Highest lossless rate (round trips/s, loss <= 0.1%)\n\n");
    for (k, v) in &r.highest_lossless_rate {
        s.push_str(&format!(
            "- {k}: {}\n",
            v.map_or("none of the rates".into(), |x| x.to_string())
        ));
    }
    s.push_str("\n## Per rate\n\n| contender | transport | offered rt/s | loss % | CPU ns/packet | RTT p50 us | RTT p99 us |\n|---|---|---|---|---|---|---|\n");
    for x in &r.summaries {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            x.contender,
            match x.transport {
                Transport::Tcp => "tcp",
                Transport::Tls => "tls",
            },
            x.rate,
            f(x.loss_pct, 3),
            f(x.cpu_ns_per_packet, 0),
            f(x.rtt_p50_us, 0),
            f(x.rtt_p99_us, 0)
        ));
    }
    s.push_str("\n## Concurrent TLS client connections (one worker)\n\n| server | requested | held | RSS before KiB | RSS held KiB | bytes per connection | first error |\n|---|---|---|---|---|---|---|\n");
    for (name, c) in &r.connections {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            c.requested,
            c.held,
            c.rss_before_kib.map_or("-".into(), |x| x.to_string()),
            c.rss_held_kib.map_or("-".into(), |x| x.to_string()),
            f(c.bytes_per_connection, 0),
            c.first_error.as_deref().unwrap_or("")
        ));
    }
    s.push_str(
        "\nRSS is the server process's resident memory (VmRSS); the kernel's socket buffers \
         are not in it. Goal: under 16 KiB per connection beyond them.\n",
    );
    s
}
