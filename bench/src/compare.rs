//! `compare`: start every contender on 127.0.0.1, load them alike and write
//! `bench/results/<date>-turn.{md,json,png}`.
//!
//! Each contender runs pinned to CPU 0 with one worker; the load generator and the
//! echo peer (a `tandem-bench turn-load` child) run pinned to CPU 1. Loads are 25%,
//! 50% and 90% of the forwarder's measured limit, then a bisection for the highest
//! offered load with less than 0.1% loss. Contenders alternate (A B C D, then
//! D C B A, ...) for several rounds, and each figure in the report is the median over
//! the rounds. Every contender is run in client-to-client mode (the only mode the
//! `turn-server` crate relays in); all but that one also in peer mode.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::alloc_rate::AllocRateReport;
use crate::load::LoadReport;
use crate::report::{Report, Row};

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// tandem-relay binary (default: next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// coturn's turnserver.
    #[arg(long, default_value = "turnserver")]
    coturn_bin: PathBuf,
    /// The `turn-server` crate's binary (skipped with a note when missing).
    #[arg(long, default_value = "bench/.tools/bin/turn-server")]
    turn_server_bin: PathBuf,
    /// Rounds over all contenders (order reversed every other round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 1.5)]
    duration: f64,
    /// Bisection steps in the search for the highest lossless load.
    #[arg(long, default_value_t = 4)]
    search_steps: usize,
    /// Allocations per load run (even).
    #[arg(long, default_value_t = 10)]
    allocations: usize,
    /// ChannelData payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Allocations created by each alloc-rate run.
    #[arg(long, default_value_t = 2000)]
    alloc_count: usize,
    /// Smoke run: one round, 1 s points, two search steps, 500 allocations.
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Run contenders and generator at this niceness (e.g. -10 as root on a machine
    /// shared with other work, so that they are not preempted by it; 0 leaves it).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    nice: i32,
}

#[derive(Debug, Clone, Serialize)]
enum Kind {
    Tandem { io: Option<String> },
    Coturn,
    TurnServer,
    Forwarder,
}

#[derive(Debug, Clone, Serialize)]
struct Contender {
    name: String,
    kind: Kind,
    bin: PathBuf,
}

impl Contender {
    fn peer_mode(&self) -> bool {
        !matches!(self.kind, Kind::TurnServer)
    }

    fn is_turn(&self) -> bool {
        !matches!(self.kind, Kind::Forwarder)
    }
}

/// A running contender.
struct Server {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);
impl TempDir {
    pub(crate) fn new(tag: &str) -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "tandem-bench-{tag}-{}-{}",
            std::process::id(),
            crate::procstat::mono_ns()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    // A port free for UDP and TCP (coturn also listens on TCP).
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0")?;
        let port = u.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

const USER: &str = "bench";
const PASSWORD: &str = "bench";
const REALM: &str = "bench";

fn start(c: &Contender, self_exe: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = TempDir::new(&c.name)?;
    let mut cmd = pinned("0");
    match &c.kind {
        Kind::Tandem { io } => {
            // Quotas sized for the benchmark: the per-user allocation quota (64 by
            // default) and the per-address 401 rate (20/s by default) would otherwise
            // cap a load generator that opens every allocation from 127.0.0.1.
            let conf = dir.0.join("relay.toml");
            std::fs::write(
                &conf,
                "user-quota = 0\ntotal-quota = 200000\nunauthorized-rate = 1000000\n",
            )?;
            cmd.arg(&c.bin).arg("--config").arg(&conf).args([
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &port.to_string(),
                "--relay-ip",
                "127.0.0.1",
                "--realm",
                REALM,
                "--user",
                &format!("{USER}:{PASSWORD}"),
                "--allow-loopback-peers",
                "--log-level",
                "warn",
            ]);
            if let Some(io) = io {
                cmd.args(["--io", io]);
            }
            if help_has(&c.bin, "--workers") {
                cmd.args(["--workers", "1"]);
            }
        }
        Kind::Coturn => {
            cmd.arg(&c.bin).args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                "--relay-threads=1",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--lt-cred-mech",
                &format!("--user={USER}:{PASSWORD}"),
                &format!("--realm={REALM}"),
                "--allow-loopback-peers",
                "--simple-log",
                &format!("--log-file={}", dir.0.join("turn.log").display()),
                &format!("--pidfile={}", dir.0.join("turn.pid").display()),
            ]);
        }
        Kind::TurnServer => {
            let conf = dir.0.join("turn-server.toml");
            std::fs::write(
                &conf,
                format!(
                    "[server]\nport-range = \"49152..65535\"\nmax-threads = 1\nrealm = \"{REALM}\"\n\n\
                     [[server.interfaces]]\ntransport = \"udp\"\nlisten = \"127.0.0.1:{port}\"\n\
                     external = \"127.0.0.1:{port}\"\nidle-timeout = 20\nmtu = 1500\n\n\
                     [log]\nlevel = \"error\"\nstdout = true\n\n\
                     [auth.static-credentials]\n{USER} = \"{PASSWORD}\"\n"
                ),
            )?;
            cmd.arg(&c.bin).arg("--config").arg(&conf);
        }
        Kind::Forwarder => {
            cmd.arg(self_exe).args([
                "forwarder",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--max-time",
                "1800",
            ]);
        }
    }
    let log = std::fs::File::create(dir.0.join("stdout.log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", c.name))?;
    let mut s = Server {
        child,
        port,
        _dir: dir,
    };
    // Ready when the UDP port is taken (clients retransmit through the last moments).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = s.child.try_wait()? {
            let mut out = String::new();
            let _ = std::fs::File::open(s._dir.0.join("stdout.log"))
                .and_then(|mut f| f.read_to_string(&mut out));
            bail!("{} exited at start ({st}): {out}", c.name);
        }
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} did not bind its port", c.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(s)
}

/// Niceness for every process of the run (0: unchanged; negative needs root).
pub(crate) static NICE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// `[nice -n N] taskset -c CPU ...`
pub(crate) fn pinned(cpu: &str) -> Command {
    let nice = NICE.get().copied().unwrap_or(0);
    let mut c = if nice != 0 {
        let mut c = Command::new("nice");
        c.args(["-n", &nice.to_string(), "taskset"]);
        c
    } else {
        Command::new("taskset")
    };
    c.args(["-c", cpu]);
    c
}

fn help_has(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

fn target_args(c: &Contender) -> Vec<String> {
    if c.is_turn() {
        vec!["--user".into(), format!("{USER}:{PASSWORD}")]
    } else {
        vec!["--forwarder".into()]
    }
}

/// Run `tandem-bench <args>` pinned to CPU 1 and parse its JSON line.
pub(crate) fn child_json<T: serde::de::DeserializeOwned>(
    self_exe: &Path,
    args: &[String],
) -> anyhow::Result<T> {
    let out = pinned("1")
        .arg(self_exe)
        .args(args)
        .env("RUST_LIB_BACKTRACE", "0")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .collect();
        bail!(
            "tandem-bench {}: {}",
            args.first().map(String::as_str).unwrap_or(""),
            err.join(" / ")
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("parse: {s}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Mode {
    #[serde(rename = "client-to-client")]
    C2c,
    #[serde(rename = "peer")]
    Peer,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::C2c => "client-to-client",
            Mode::Peer => "peer",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    contender: String,
    mode: Mode,
    round: usize,
    /// "25%", "50%", "90%" or "search".
    label: String,
    report: LoadReport,
}

struct Plan<'a> {
    self_exe: &'a Path,
    allocations: usize,
    size: usize,
    duration: f64,
    search_steps: usize,
    calibration_steps: usize,
}

impl Plan<'_> {
    fn load(&self, c: &Contender, s: &Server, mode: Mode, rate: u64) -> anyhow::Result<LoadReport> {
        let mut a: Vec<String> = vec![
            "turn-load".into(),
            "--server".into(),
            format!("127.0.0.1:{}", s.port),
            "--mode".into(),
            mode.arg().into(),
            "--allocations".into(),
            self.allocations.to_string(),
            "--rate".into(),
            rate.max(1).to_string(),
            "--size".into(),
            self.size.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--server-pid".into(),
            s.child.id().to_string(),
            "--server-cpu".into(),
            "0".into(),
            "--json".into(),
        ];
        a.extend(target_args(c));
        child_json(self.self_exe, &a)
    }
}

const LOSSLESS_PCT: f64 = 0.1;
/// Above this share of CPU 0 busy with other work, a comparison is inconclusive.
const NOISE_LIMIT: f64 = 0.25;

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

fn which(bin: &Path) -> bool {
    if bin.components().count() > 1 {
        return bin.exists();
    }
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v '{}'", bin.display()))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn run(mut a: CompareArgs) -> anyhow::Result<()> {
    if a.quick {
        a.rounds = 1;
        a.duration = a.duration.min(1.0);
        a.search_steps = a.search_steps.min(2);
        a.alloc_count = a.alloc_count.min(500);
    }
    let _ = NICE.set(a.nice);
    if a.rounds == 0 || a.allocations == 0 || a.allocations % 2 != 0 {
        bail!("--rounds must be positive and --allocations even");
    }
    let self_exe = std::env::current_exe()?;
    let relay_bin = a.relay_bin.clone().unwrap_or_else(|| {
        self_exe
            .parent()
            .map(|d| d.join("tandem-relay"))
            .unwrap_or_else(|| PathBuf::from("tandem-relay"))
    });
    let mut notes: Vec<String> = Vec::new();
    let mut contenders = Vec::new();
    if !which(Path::new("taskset")) {
        bail!("taskset (util-linux) is needed to pin the contenders");
    }
    if relay_bin.exists() {
        if help_has(&relay_bin, "--io") {
            for io in ["uring", "portable"] {
                contenders.push(Contender {
                    name: format!("tandem-relay ({io})"),
                    kind: Kind::Tandem {
                        io: Some(io.into()),
                    },
                    bin: relay_bin.clone(),
                });
            }
        } else {
            notes.push(
                "tandem-relay has no `--io` flag yet: run with its one datapath (tokio, one task per socket)"
                    .into(),
            );
            contenders.push(Contender {
                name: "tandem-relay".into(),
                kind: Kind::Tandem { io: None },
                bin: relay_bin.clone(),
            });
        }
    } else {
        bail!("tandem-relay not found at {}", relay_bin.display());
    }
    if which(&a.coturn_bin) {
        contenders.push(Contender {
            name: "coturn".into(),
            kind: Kind::Coturn,
            bin: a.coturn_bin.clone(),
        });
        notes.push(
            "coturn: Debian's turnserver with --relay-threads=1; it has no batching options \
             (no recvmmsg/sendmmsg or GSO switch in `turnserver --help`), so it runs once with its defaults"
                .into(),
        );
    } else {
        notes.push(format!(
            "coturn not found ({}): skipped",
            a.coturn_bin.display()
        ));
    }
    if which(&a.turn_server_bin) {
        contenders.push(Contender {
            name: "turn-server (crate)".into(),
            kind: Kind::TurnServer,
            bin: a.turn_server_bin.clone(),
        });
        notes.push(
            "turn-server crate: max-threads = 1, relays only between its own clients (client-to-client \
             table only), and without relayed sockets: it holds no socket per allocation and passes a \
             datagram from one client to the other through its listening socket, one datagram in and \
             one out per leg where the other contenders (and the forwarder) receive and send twice. Its \
             CPU per packet, counted like the others' (2 packets per leg), is therefore for half the \
             kernel work"
                .into(),
        );
    } else {
        notes.push(format!(
            "turn-server crate binary not found ({}): skipped",
            a.turn_server_bin.display()
        ));
    }
    let fwd = Contender {
        name: "forwarder".into(),
        kind: Kind::Forwarder,
        bin: self_exe.clone(),
    };
    contenders.push(fwd.clone());
    let plan = Plan {
        self_exe: &self_exe,
        allocations: a.allocations,
        size: a.size,
        duration: a.duration,
        search_steps: a.search_steps,
        calibration_steps: if a.quick { 4 } else { 6 },
    };
    let t0 = Instant::now();
    let modes = [Mode::C2c, Mode::Peer];
    // Calibrate: the floor's limit per mode is the highest load the forwarder (with
    // this load generator) carries with under 0.1% loss. A flat-out probe gives the
    // most the generator can send; a bisection below it finds the lossless limit.
    let mut limit: BTreeMap<Mode, f64> = BTreeMap::new();
    let mut generator_max: BTreeMap<Mode, f64> = BTreeMap::new();
    {
        let s = start(&fwd, &self_exe)?;
        for m in modes {
            let probe = plan.load(&fwd, &s, m, 1_000_000)?;
            let (mut lo, mut hi) = (0.0f64, probe.sent_pps.max(2000.0));
            for _ in 0..plan.calibration_steps {
                let rate = (lo + hi) / 2.0;
                let r = plan.load(&fwd, &s, m, rate as u64)?;
                if r.loss_pct < LOSSLESS_PCT && r.sent_pps >= 0.98 * rate {
                    lo = rate;
                } else {
                    hi = rate;
                }
            }
            eprintln!(
                "floor {}: generator sends up to {:.0}/s; forwarder lossless up to {:.0} round trips/s",
                m.arg(),
                probe.sent_pps,
                lo
            );
            limit.insert(m, lo.max(1000.0));
            generator_max.insert(m, probe.sent_pps);
        }
    }
    let per_contender_runs: u64 = contenders
        .iter()
        .map(|c| if c.peer_mode() { 2 } else { 1 } * (3 + a.search_steps as u64) + u64::from(c.is_turn()))
        .sum();
    let pb = indicatif::ProgressBar::new(per_contender_runs * a.rounds as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut points: Vec<Point> = Vec::new();
    let mut allocs: Vec<(String, usize, AllocRateReport)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for round in 0..a.rounds {
        let mut order: Vec<&Contender> = contenders.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for c in order {
            pb.set_message(format!("round {} {}", round + 1, c.name));
            let s = match start(c, &self_exe) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("round {}: {}: {e:#}", round + 1, c.name));
                    pb.inc(per_contender_runs / contenders.len() as u64);
                    continue;
                }
            };
            for m in modes {
                if m == Mode::Peer && !c.peer_mode() {
                    continue;
                }
                let lim = limit[&m];
                let mut lossless = 0.0f64;
                let mut lossy = lim * 1.2;
                for (label, f) in [("25%", 0.25), ("50%", 0.5), ("90%", 0.9)] {
                    let rate = (lim * f) as u64;
                    match plan.load(c, &s, m, rate) {
                        Ok(r) => {
                            if r.loss_pct < LOSSLESS_PCT {
                                lossless = lossless.max(rate as f64);
                            } else {
                                lossy = lossy.min(rate as f64);
                            }
                            points.push(Point {
                                contender: c.name.clone(),
                                mode: m,
                                round,
                                label: label.into(),
                                report: r,
                            });
                        }
                        Err(e) => failures.push(format!("{} {} {label}: {e:#}", c.name, m.arg())),
                    }
                    pb.inc(1);
                }
                // Bisection between the best lossless and the lowest lossy load.
                for _ in 0..plan.search_steps {
                    let rate = ((lossless + lossy) / 2.0) as u64;
                    match plan.load(c, &s, m, rate) {
                        Ok(r) => {
                            if r.loss_pct < LOSSLESS_PCT {
                                lossless = rate as f64;
                            } else {
                                lossy = rate as f64;
                            }
                            points.push(Point {
                                contender: c.name.clone(),
                                mode: m,
                                round,
                                label: "search".into(),
                                report: r,
                            });
                        }
                        Err(e) => {
                            failures.push(format!("{} {} search: {e:#}", c.name, m.arg()));
                            lossy = rate as f64;
                        }
                    }
                    pb.inc(1);
                }
                points.push(Point {
                    contender: c.name.clone(),
                    mode: m,
                    round,
                    label: "highest-lossless".into(),
                    report: LoadReport {
                        offered_pps: lossless,
                        ..points
                            .last()
                            .map(|p| p.report.clone())
                            .unwrap_or_else(empty_report)
                    },
                });
            }
            if c.is_turn() {
                let mut args: Vec<String> = vec![
                    "alloc-rate".into(),
                    "--server".into(),
                    format!("127.0.0.1:{}", s.port),
                    "--count".into(),
                    a.alloc_count.to_string(),
                    "--duration".into(),
                    "10".into(),
                    "--server-pid".into(),
                    s.child.id().to_string(),
                    "--json".into(),
                ];
                args.extend(target_args(c));
                match child_json::<AllocRateReport>(&self_exe, &args) {
                    Ok(r) => allocs.push((c.name.clone(), round, r)),
                    Err(e) => failures.push(format!("{} alloc-rate: {e:#}", c.name)),
                }
                pb.inc(1);
            }
            drop(s);
        }
    }
    pb.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let report = Report::build(
        &a,
        &contenders,
        &limit,
        &points,
        &allocs,
        notes,
        failures,
        elapsed,
    );
    std::fs::create_dir_all(&a.out_dir)?;
    let stem = a.out_dir.join(format!("{}-turn", today()));
    let md = report.markdown();
    std::fs::write(stem.with_extension("md"), &md)?;
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "summary": &report,
            "points": &points,
            "alloc_rate": allocs.iter().map(|(c, r, a)| serde_json::json!({"contender": c, "round": r, "report": a})).collect::<Vec<_>>(),
        }))?,
    )?;
    if let Err(e) = crate::chart::draw(&stem.with_extension("png"), &report) {
        eprintln!("chart not written: {e:#}");
    }
    println!("{md}");
    println!("wrote {}.{{md,json,png}}", stem.display());
    Ok(())
}

fn empty_report() -> LoadReport {
    serde_json::from_value(serde_json::json!({
        "mode": "", "allocations": 0, "size": 0, "duration_s": 0.0, "offered_pps": 0.0,
        "sent": 0, "send_errors": 0, "sent_pps": 0.0, "unsent": 0, "received": 0, "duplicates": 0, "lost": 0, "loss_pct": 0.0,
        "delivered_pps": 0.0, "forwarded_pps": 0.0, "rtt_p50_us": 0.0, "rtt_p99_us": 0.0,
        "rtt_p999_us": 0.0, "rtt_max_us": 0.0, "server_cpu_ns_per_packet": null,
        "server_cpu_util": null, "server_cpu_other": null, "server_rss_kib": null, "server_rss_bytes_per_allocation": null,
        "setup_s": 0.0
    }))
    .expect("static report")
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn build(
        a: &CompareArgs,
        contenders: &[Contender],
        limit: &BTreeMap<Mode, f64>,
        points: &[Point],
        allocs: &[(String, usize, AllocRateReport)],
        notes: Vec<String>,
        failures: Vec<String>,
        elapsed: f64,
    ) -> Report {
        let mut rows = Vec::new();
        let mut highest = Vec::new();
        for m in [Mode::C2c, Mode::Peer] {
            for c in contenders {
                for label in ["25%", "50%", "90%"] {
                    let ps: Vec<&LoadReport> = points
                        .iter()
                        .filter(|p| p.contender == c.name && p.mode == m && p.label == label)
                        .map(|p| &p.report)
                        .collect();
                    if ps.is_empty() {
                        continue;
                    }
                    let med =
                        |f: &dyn Fn(&LoadReport) -> f64| median(ps.iter().map(|r| f(r)).collect());
                    let medo = |f: &dyn Fn(&LoadReport) -> Option<f64>| {
                        median(ps.iter().filter_map(|r| f(r)).collect())
                    };
                    rows.push(Row {
                        contender: c.name.clone(),
                        mode: m.arg().into(),
                        label: label.into(),
                        offered_pps: med(&|r| r.offered_pps).unwrap_or(0.0),
                        sent_pps: med(&|r| r.sent_pps).unwrap_or(0.0),
                        delivered_pps: med(&|r| r.delivered_pps).unwrap_or(0.0),
                        loss_pct: med(&|r| r.loss_pct).unwrap_or(0.0),
                        p50_us: med(&|r| r.rtt_p50_us).unwrap_or(0.0),
                        p99_us: med(&|r| r.rtt_p99_us).unwrap_or(0.0),
                        p999_us: med(&|r| r.rtt_p999_us).unwrap_or(0.0),
                        cpu_ns_per_packet: medo(&|r| r.server_cpu_ns_per_packet),
                        cpu_util: medo(&|r| r.server_cpu_util),
                        cpu0_other: medo(&|r| r.server_cpu_other),
                        rss_bytes_per_allocation: medo(&|r| r.server_rss_bytes_per_allocation),
                    });
                }
                let hl: Vec<f64> = points
                    .iter()
                    .filter(|p| {
                        p.contender == c.name && p.mode == m && p.label == "highest-lossless"
                    })
                    .map(|p| p.report.offered_pps)
                    .collect();
                if let Some(h) = median(hl) {
                    highest.push((c.name.clone(), m.arg().to_string(), h));
                }
            }
        }
        let mut alloc_rate = Vec::new();
        for c in contenders.iter().filter(|c| c.is_turn()) {
            let rs: Vec<&AllocRateReport> = allocs
                .iter()
                .filter(|x| x.0 == c.name)
                .map(|x| &x.2)
                .collect();
            if let Some(m) = median(rs.iter().map(|r| r.allocations_per_s).collect()) {
                alloc_rate.push((
                    c.name.clone(),
                    m,
                    rs.iter().map(|r| r.errors).sum(),
                    median(
                        rs.iter()
                            .filter_map(|r| r.server_rss_bytes_per_allocation)
                            .collect(),
                    ),
                ));
            }
        }
        let mut r = Report {
            date: today(),
            rounds: a.rounds,
            quick: a.quick,
            duration_s: a.duration,
            allocations: a.allocations,
            size: a.size,
            nice: a.nice,
            elapsed_s: elapsed,
            floor_limit: limit
                .iter()
                .map(|(m, v)| (m.arg().to_string(), *v))
                .collect(),
            rows,
            highest_lossless: highest,
            alloc_rate,
            ratios: Vec::new(),
            notes,
            failures,
        };
        r.ratios = r.compute_ratios(contenders);
        r
    }

    fn row(&self, contender: &str, mode: &str, label: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.contender == contender && r.mode == mode && r.label == label)
    }

    fn compute_ratios(&self, contenders: &[Contender]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let tandems: Vec<&Contender> = contenders
            .iter()
            .filter(|c| matches!(c.kind, Kind::Tandem { .. }))
            .collect();
        let others: Vec<(&str, &str, f64)> = vec![
            ("forwarder", "CPU/packet vs forwarder (goal <= 1.15x)", 1.15),
            ("coturn", "CPU/packet vs coturn (goal <= 0.4x)", 0.4),
            (
                "turn-server (crate)",
                "CPU/packet vs turn-server crate (goal <= 0.5x)",
                0.5,
            ),
        ];
        // A comparison made while the server's CPU was busy with other work says
        // little about the servers: label it so rather than met or missed.
        let noisy = |rows: &[Option<&Row>]| {
            rows.iter()
                .filter_map(|r| r.and_then(|r| r.cpu0_other))
                .fold(0.0f64, f64::max)
        };
        let verdict = |ok: bool, noise: f64| {
            if noise > NOISE_LIMIT {
                format!(
                    "inconclusive: CPU 0 was up to {:.0}% busy with other work",
                    noise * 100.0
                )
            } else if ok {
                "met".to_string()
            } else {
                "missed".to_string()
            }
        };
        let fmt = |v: f64, goal: f64, le: bool, noise: f64| {
            let ok = if le { v <= goal } else { v >= goal };
            format!("{v:.2}x ({})", verdict(ok, noise))
        };
        for t in &tandems {
            for mode in ["client-to-client", "peer"] {
                for (other, what, goal) in &others {
                    // CPU per packet is compared at 50% load (both servers keep up there).
                    if let (Some(a), Some(b)) = (
                        self.row(&t.name, mode, "50%")
                            .and_then(|r| r.cpu_ns_per_packet),
                        self.row(other, mode, "50%")
                            .and_then(|r| r.cpu_ns_per_packet),
                    ) {
                        if b > 0.0 {
                            let noise = noisy(&[
                                self.row(&t.name, mode, "50%"),
                                self.row(other, mode, "50%"),
                            ]);
                            out.push((
                                format!("{} {mode}: {what}", t.name),
                                fmt(a / b, *goal, true, noise),
                            ));
                        }
                    }
                }
                let hl = |n: &str| {
                    self.highest_lossless
                        .iter()
                        .find(|h| h.0 == n && h.1 == mode)
                        .map(|h| h.2)
                };
                if let (Some(a), Some(b)) = (hl(&t.name), hl("forwarder")) {
                    if b > 0.0 {
                        out.push((
                            format!(
                                "{} {mode}: highest lossless rate vs forwarder (goal >= 0.9x)",
                                t.name
                            ),
                            fmt(
                                a / b,
                                0.9,
                                false,
                                noisy(&[
                                    self.row(&t.name, mode, "90%"),
                                    self.row("forwarder", mode, "90%"),
                                ]),
                            ),
                        ));
                    }
                }
                if let (Some(a), Some(b)) = (
                    self.row(&t.name, mode, "50%"),
                    self.row("forwarder", mode, "50%"),
                ) {
                    let d = a.p99_us - b.p99_us;
                    let noise = noisy(&[Some(a), Some(b)]);
                    out.push((
                        format!(
                            "{} {mode}: added p99 RTT at 50% load over forwarder (goal <= 20 us)",
                            t.name
                        ),
                        format!("{d:.1} us ({})", verdict(d <= 20.0, noise)),
                    ));
                }
            }
            let ar = |n: &str| self.alloc_rate.iter().find(|x| x.0 == n).map(|x| x.1);
            if let (Some(a), Some(b)) = (ar(&t.name), ar("coturn")) {
                if b > 0.0 {
                    out.push((
                        format!("{}: allocations/s vs coturn (goal >= 50x)", t.name),
                        // Allocation rate is bounded by the generator's core, not CPU 0.
                        fmt(a / b, 50.0, false, 0.0),
                    ));
                }
            }
        }
        out
    }

    fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "# TURN relays side by side ({})\n", self.date);
        let _ = writeln!(
            s,
            "{}{} round(s), {} s per point, {} allocations, {}-byte ChannelData payload; \
             servers pinned to CPU 0 with one worker, load generator and echo peer on CPU 1; \
             niceness {}; medians over rounds. Run took {:.0} s.\n",
            if self.quick {
                "**Quick run** (smoke settings, not for conclusions): "
            } else {
                ""
            },
            self.rounds,
            self.duration_s,
            self.allocations,
            self.size,
            self.nice,
            self.elapsed_s
        );
        for (m, v) in &self.floor_limit {
            let _ = writeln!(s, "- Floor ({m}): the forwarder carried up to {v:.0} round trips/s with under {LOSSLESS_PCT}% loss (bisection); the load levels below are fractions of this.");
        }
        let _ = writeln!(s, "\nRTT is round-trip time from the scheduled send time (open loop). CPU is the server's utime+stime over the run divided by the packets it forwarded (a packet entering the server and leaving it once: 2 per round trip in peer mode, 4 in client-to-client mode, where each leg goes client -> relayed address -> partner relayed address -> partner). \"CPU 0 other\" is how busy the server's CPU was with anything but the server process (other processes, and loopback interrupt work not charged to the server): a high value means a noisy machine and loss that is not the server's alone.\n");
        for mode in ["client-to-client", "peer"] {
            let _ = writeln!(s, "## {mode}\n");
            let _ = writeln!(s, "| contender | load | offered rt/s | sent rt/s | delivered rt/s | loss % | p50 us | p99 us | p99.9 us | CPU ns/pkt | CPU % | CPU 0 other % |");
            let _ = writeln!(
                s,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for r in self.rows.iter().filter(|r| r.mode == mode) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
                    r.contender,
                    r.label,
                    r.offered_pps,
                    r.sent_pps,
                    r.delivered_pps,
                    r.loss_pct,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.cpu_ns_per_packet
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or("-".into()),
                    r.cpu_util
                        .map(|v| format!("{:.0}", v * 100.0))
                        .unwrap_or("-".into()),
                    r.cpu0_other
                        .map(|v| format!("{:.0}", v * 100.0))
                        .unwrap_or("-".into()),
                );
            }
            let _ = writeln!(
                s,
                "\nHighest offered load with loss under {LOSSLESS_PCT}%:\n"
            );
            for h in self.highest_lossless.iter().filter(|h| h.1 == mode) {
                let _ = writeln!(s, "- {}: {:.0} round trips/s", h.0, h.2);
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Allocations per second (with authentication)\n");
        let _ = writeln!(
            s,
            "| contender | allocations/s | errors | server RSS bytes per allocation |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (c, v, e, rss) in &self.alloc_rate {
            let _ = writeln!(
                s,
                "| {c} | {v:.0} | {e} | {} |",
                rss.map(|r| format!("{r:.0}")).unwrap_or("-".into())
            );
        }
        let _ = writeln!(s, "\n## Ratios against the goals\n");
        for (k, v) in &self.ratios {
            let _ = writeln!(s, "- {k}: {v}");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\n## Failures\n");
            for f in &self.failures {
                let _ = writeln!(s, "- {f}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(20_415), (2025, 11, 23));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
    }
}
