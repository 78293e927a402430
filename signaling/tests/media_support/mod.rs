//! Both processes as binaries for the media end-to-end tests: `tandem-relay` on
//! 127.0.0.2 with its control API and metrics, `tandem-signaling` configured to place
//! calls on it, accounts through the admin API, sipp peers whose messages are logged
//! (`-trace_msg`) so the test can read the SDP they exchanged, and the SDP and RTP
//! helpers the media assertions need. Every wait is bounded; every process is killed
//! when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sipp_support::{free_media_port, scenario, sipp_available, wait_bound};

/// The relay's address: its relay ports (and so the addresses signaling writes into
/// SDP) are on 127.0.0.2, the devices on 127.0.0.1.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const DEVICE_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const ADMIN: &str = "media-e2e-admin-token-0123456789";
pub const CONTROL_TOKEN: &str = "media-e2e-control-token-0123456789";
pub const REALM: &str = "tandem.local";
pub const PASSWORD: &str = "s3cret-passw0rd";

/// The relay entry of signaling's configuration. The keys are written here and
/// nowhere else, so a rename is a one-line change.
pub fn relays_toml(control: SocketAddr, secret: &str, public: Ipv4Addr) -> String {
    format!(
        "[[relays]]\n\
         control_url = \"http://{control}\"\n\
         secret = \"{secret}\"\n\
         public_address = \"{public}\"\n"
    )
}

/// Whether the binaries and sipp are there. `cargo test` builds only the binaries of
/// the package under test; `cargo build --workspace --bins` (tests/run.sh) builds the
/// relay next to `tandem-signaling`. Missing: a failure when `CI` is set, else a skip.
pub fn prerequisites() -> bool {
    if !sipp_available() {
        return false;
    }
    if relay_binary().exists() {
        return true;
    }
    let msg = format!(
        "{} is missing: build it with `cargo build -p tandem-relay --bin tandem-relay`",
        relay_binary().display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set)");
    }
    eprintln!("SKIPPED: {msg}; set CI to make this fail");
    false
}

pub fn relay_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tandem-signaling")).with_file_name("tandem-relay")
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP socket on 127.0.0.1 with a free port, for a device's or the gateway's media
/// (the port goes into the SDP the sipp peer sends).
pub fn media_socket() -> UdpSocket {
    let s = UdpSocket::bind((DEVICE_IP, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    s
}

/// A child process with its output lines kept (and shown if the test fails).
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for r in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Proc { name, child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for a log line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{} exited ({status}) before '{needle}':\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no '{needle}' within {within:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let lines = self.lines.lock().unwrap();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "---- {} log (last {} lines):\n{}",
                self.name,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Relay port ranges handed out in this process: distinct for tests that run at once.
static NEXT_RANGE: AtomicU32 = AtomicU32::new(0);

/// Ports 22000-25999 on 127.0.0.2 (below the ephemeral range, and on an address
/// nothing else in the tests binds), 40 per relay.
fn relay_port_range() -> (u16, u16) {
    const SIZE: u32 = 40;
    const BLOCKS: u32 = 4000 / SIZE;
    let seed = std::process::id();
    for _ in 0..BLOCKS {
        let k = NEXT_RANGE.fetch_add(1, Ordering::Relaxed);
        let min = 22_000 + ((seed.wrapping_mul(7) + k) % BLOCKS) * SIZE;
        let (min, max) = (min as u16, (min + SIZE - 1) as u16);
        if (min..=max).all(|p| UdpSocket::bind((RELAY_IP, p)).is_ok()) {
            return (min, max);
        }
    }
    panic!("no free relay port range in 22000-25999 on {RELAY_IP}");
}

/// `tandem-relay` on 127.0.0.2 (listening and relay address), its control API and
/// metrics on 127.0.0.1.
#[derive(Debug)]
pub struct Relay {
    proc: Proc,
    pub control: SocketAddr,
    pub metrics: SocketAddr,
    /// `--min-port`, `--max-port`: the ports it hands out for media.
    pub ports: (u16, u16),
    http: reqwest::Client,
}

impl Relay {
    pub fn has_port(&self, port: u16) -> bool {
        (self.ports.0..=self.ports.1).contains(&port)
    }

    pub async fn start() -> Relay {
        let (min, max) = relay_port_range();
        let control = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let mut cmd = Command::new(relay_binary());
        cmd.args(["--listening-ip", &RELAY_IP.to_string()])
            .args(["--listening-port", "0"])
            .args(["--relay-ip", &RELAY_IP.to_string()])
            .args([
                "--min-port",
                &min.to_string(),
                "--max-port",
                &max.to_string(),
            ])
            .args(["--user", "u:p", "--workers", "1", "--log-level", "info"])
            .args(["--control-listen", &control.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .env("TANDEM_CONTROL_SECRET", CONTROL_TOKEN);
        let relay = Relay {
            proc: Proc::spawn("tandem-relay", &mut cmd),
            control,
            metrics,
            ports: (min, max),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while relay.get("/health").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the relay's control API did not answer within 30 s:\n{}",
                relay.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.control))
            .bearer_auth(CONTROL_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("GET {path}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// A control API request (`body` null: none); panics unless it succeeds.
    pub async fn control(&self, method: &str, path: &str, body: Value) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(method.clone(), format!("http://{}{path}", self.control))
            .bearer_auth(CONTROL_TOKEN)
            .timeout(Duration::from_secs(5));
        if !body.is_null() {
            r = r.json(&body);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Live media sessions (`GET /load`).
    pub async fn sessions(&self) -> u64 {
        let load = self.get("/load").await.expect("GET /load");
        load["sessions"].as_u64().expect("sessions in /load")
    }

    /// Waits (bounded) until `GET /load` shows `want` sessions; the last count if not.
    pub async fn wait_sessions(&self, want: u64, within: Duration) -> Result<(), u64> {
        let deadline = Instant::now() + within;
        loop {
            let n = self.sessions().await;
            if n == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of the samples of `/metrics` named `selector` (a full name such as
    /// `tandem_relay_media_sessions_created_total`, or one with its labels).
    pub async fn metric(&self, selector: &str) -> f64 {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.metrics))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(k, _)| {
                *k == selector || (k.starts_with(selector) && k[selector.len()..].starts_with('{'))
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }

    /// The ids of the sessions the relay logged as created (`media session created
    /// session=<id>`), oldest first: how a test finds the session signaling placed.
    pub fn created_sessions(&self) -> Vec<String> {
        self.proc
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("media session created"))
            .filter_map(|l| l.split("session=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|id| id.trim_matches('"').to_owned())
            .collect()
    }

    /// SIGKILL: the relay vanishes without ending its sessions.
    pub fn kill(&mut self) {
        self.proc.child.kill().expect("kill the relay");
        let _ = self.proc.child.wait();
    }
}

/// `tandem-signaling` with its own SQLite in `dir`, SIP over UDP and the API on
/// 127.0.0.1 (port 0, read from the log), MD5 offered first (sipp), the relay
/// configured, and dial plan routes `(prefix, target)`.
#[derive(Debug)]
pub struct Signaling {
    proc: Proc,
    pub sip: SocketAddr,
    pub api: String,
    /// Why the relay is not in the configuration: signaling refused the relay entry
    /// (before calls through the relay exist); shown with every media assertion.
    pub relay_refused: Option<String>,
    http: reqwest::Client,
}

impl Signaling {
    pub async fn start(dir: &Path, relay: &Relay, routes: &[(&str, String)]) -> Signaling {
        let data = dir.join("signaling-data");
        std::fs::create_dir_all(&data).unwrap();
        let mut base = format!(
            "data_dir = \"{}\"\n\
             default_country_code = \"48\"\n\
             [sip]\nrealm = \"{REALM}\"\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n\
             [registrar]\ndigest_algorithms = [\"MD5\", \"SHA-256\"]\n\
             [proxy]\nring_timeout_secs = 30\n\
             [api]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n\
             [log]\nlevel = \"info\"\n",
            data.display()
        );
        base.push_str("[dialplan]\n");
        for (prefix, target) in routes {
            base.push_str(&format!(
                "[[dialplan.routes]]\nprefix = \"{prefix}\"\ntarget = \"{target}\"\n"
            ));
        }
        let file = dir.join("signaling.toml");
        let with_relay = format!(
            "{base}{}",
            relays_toml(relay.control, CONTROL_TOKEN, RELAY_IP)
        );
        std::fs::write(&file, &with_relay).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
            .arg("--config")
            .arg(&file)
            .arg("--check-config")
            .output()
            .unwrap();
        let relay_refused = if check.status.success() {
            None
        } else {
            let err = String::from_utf8_lossy(&check.stderr).trim().to_owned();
            assert!(
                err.contains("relays"),
                "signaling refused the test configuration:\n{err}\n{with_relay}"
            );
            eprintln!("NOTE: signaling refuses the relay entry ({err}); starting without it");
            std::fs::write(&file, &base).unwrap();
            Some(err)
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"));
        cmd.arg("--config")
            .arg(&file)
            .env_remove("TANDEM_ADMIN_TOKEN")
            .env_remove("TANDEM_DATABASE_URL")
            .env_remove("TANDEM_CONFIG");
        let mut proc = Proc::spawn("tandem-signaling", &mut cmd);
        let api = proc.wait_line("HTTP API listening", Duration::from_secs(30));
        let api = api
            .split("api=")
            .nth(1)
            .map(|s| s.trim().to_owned())
            .expect("api= in the log line");
        let sip = proc.wait_line("SIP listening", Duration::from_secs(30));
        // `listen=udp 127.0.0.1:5060, tcp ...`
        let sip = sip
            .split("listen=udp ")
            .nth(1)
            .and_then(|s| s.split([',', ' ']).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no UDP address in: {sip}"));
        Signaling {
            proc,
            sip,
            api: format!("http://{api}"),
            relay_refused,
            http: reqwest::Client::new(),
        }
    }

    /// A note for media assertion messages: why the relay may not be in use.
    pub fn note(&self) -> String {
        match &self.relay_refused {
            Some(e) => format!(" [signaling refused the relay configuration: {e}]"),
            None => String::new(),
        }
    }

    /// Creates an account (admin API) and authorises its devices `(n, class)` with
    /// instance URNs `sipp_support::instance(n)`; returns its id.
    pub async fn account(&self, login: &str, phone: Option<&str>, devices: &[(u32, &str)]) -> i64 {
        let mut body = json!({"login": login, "password": PASSWORD, "country_code": "48"});
        if let Some(p) = phone {
            body["phone_numbers"] = json!([p]);
        }
        let r = self
            .http
            .post(format!("{}/accounts", self.api))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status.as_u16(), 201, "create account {login}: {v}");
        for (n, class) in devices {
            let r = self
                .http
                .post(format!("{}/me/devices", self.api))
                .basic_auth(login, Some(PASSWORD))
                .json(&json!({"instance_id": crate::sipp_support::instance(*n),
                              "class": class, "name": format!("{class} {n}")}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status.as_u16(), 201, "authorise device {n} of {login}: {v}");
        }
        v["id"].as_i64().expect("account id")
    }

    /// Registers device `n` of `login` from `port` (tests/sipp/register.xml, MD5).
    pub async fn register(&self, dir: &Path, port: u16, login: &str, n: u32) {
        let (dir, sip, login) = (dir.to_path_buf(), self.sip, login.to_owned());
        tokio::task::spawn_blocking(move || {
            let inst = crate::sipp_support::instance(n);
            crate::sipp_support::register(&dir, sip, port, &login, PASSWORD, &inst, REALM)
        })
        .await
        .unwrap();
    }
}

/// One sipp run: killed when dropped; its messages logged to `<tag>.msg` in the
/// test's directory, its screen to `<tag>.out`.
#[derive(Debug)]
pub struct Sipp {
    pub tag: String,
    child: Option<Child>,
    messages: PathBuf,
    out: PathBuf,
}

/// Starts sipp with `scenario_name` once: as a client of `target` (with `-s service`
/// in `extra`) or, without a target, as a UAS on `port` (returns once it is bound).
/// `fields` is its one-line injection file.
pub fn sipp(
    dir: &Path,
    tag: &str,
    scenario_name: &str,
    target: Option<SocketAddr>,
    port: u16,
    fields: &[&str],
    extra: &[&str],
) -> Sipp {
    let inf = crate::sipp_support::inf(dir, tag, fields);
    let messages = dir.join(format!("{tag}.msg"));
    let out = dir.join(format!("{tag}.out"));
    let mut cmd = Command::new("sipp");
    if let Some(t) = target {
        cmd.arg(t.to_string());
    }
    cmd.arg("-sf")
        .arg(scenario(scenario_name))
        .arg("-inf")
        .arg(&inf)
        .args(["-m", "1", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &free_media_port().to_string()])
        .args([
            "-nostdin",
            "-timeout",
            "45s",
            "-timeout_error",
            "-trace_msg",
        ])
        .arg("-message_file")
        .arg(&messages)
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.err"))).unwrap());
    let child = cmd.spawn().expect("start sipp");
    if target.is_none() {
        wait_bound(port);
    }
    Sipp {
        tag: tag.to_owned(),
        child: Some(child),
        messages,
        out,
    }
}

impl Sipp {
    /// Waits (at most `within`) for sipp to end; Err with its screen unless every
    /// call succeeded.
    pub async fn finish(&mut self, within: Duration) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.child = None;
        let screen = std::fs::read_to_string(&self.out).unwrap_or_default();
        let summary = crate::sipp_support::summary(&screen);
        match status {
            Some(s) if s.success() => {
                eprintln!("  sipp {}: ok; {summary}", self.tag);
                Ok(())
            }
            Some(s) => Err(format!(
                "sipp {} failed ({s}): {summary}\n{}\nmessages:\n{}",
                self.tag,
                last_lines(&screen, 40),
                last_lines(
                    &std::fs::read_to_string(&self.messages).unwrap_or_default(),
                    60
                )
            )),
            None => Err(format!(
                "sipp {} still running after {within:?}; killed\nmessages:\n{}",
                self.tag,
                last_lines(
                    &std::fs::read_to_string(&self.messages).unwrap_or_default(),
                    60
                )
            )),
        }
    }

    /// The messages logged so far.
    pub fn messages(&self) -> Vec<Traced> {
        parse_trace(&std::fs::read_to_string(&self.messages).unwrap_or_default())
    }

    /// Waits (bounded) for a logged message that `pred` accepts.
    pub async fn wait_message(
        &self,
        within: Duration,
        pred: impl Fn(&Traced) -> bool,
    ) -> Option<Traced> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| pred(m)) {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first INVITE this peer received (the offer, as the proxy sent it).
    pub fn received_invite(&self) -> Option<Traced> {
        self.messages()
            .into_iter()
            .find(|m| m.received && m.first_line().starts_with("INVITE "))
    }

    /// The 200 to the INVITE this peer received (the answer, as the proxy sent it).
    pub fn received_invite_ok(&self) -> Option<Traced> {
        self.messages().into_iter().find(is_invite_ok)
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn is_invite_ok(m: &Traced) -> bool {
    m.received
        && m.first_line().starts_with("SIP/2.0 200")
        && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One message of a sipp message log.
#[derive(Debug, Clone)]
pub struct Traced {
    /// Received by sipp (else sent).
    pub received: bool,
    pub text: String,
}

impl Traced {
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.text
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    pub fn body(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .or_else(|| self.text.split_once("\n\n"))
            .map_or("", |(_, b)| b)
    }

    pub fn sdp(&self) -> Sdp {
        Sdp::parse(self.body())
    }
}

/// Splits a sipp `-trace_msg` log into messages. Each starts after a line of dashes
/// and a `UDP message received [N] bytes :` or `UDP message sent (N bytes):` line.
pub fn parse_trace(log: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in log.split("\n----------------------------------------------- ") {
        let mut lines = block.lines();
        let _time = lines.next();
        let Some(kind) = lines.find(|l| !l.trim().is_empty()) else {
            continue;
        };
        let received = kind.contains("received");
        if !received && !kind.contains("sent") {
            continue;
        }
        let text: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        if text.is_empty() {
            continue;
        }
        out.push(Traced {
            received,
            text: text.join("\r\n"),
        });
    }
    out
}

/// What the media assertions read from an SDP with one audio stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sdp {
    /// `c=` (the media-level one when present).
    pub connection: Option<IpAddr>,
    pub audio_port: Option<u16>,
    /// The `m=audio` transport (`RTP/AVP`, `RTP/SAVP`, ...).
    pub proto: String,
    /// `a=crypto` lines, without `a=crypto:`.
    pub crypto: Vec<String>,
    /// `a=candidate` lines of type `relay`.
    pub relay_candidates: Vec<String>,
}

impl Sdp {
    pub fn parse(body: &str) -> Sdp {
        let mut sdp = Sdp::default();
        for l in body.lines().map(str::trim) {
            if let Some(c) = l.strip_prefix("c=IN IP4 ").or(l.strip_prefix("c=IN IP6 ")) {
                sdp.connection = c.split('/').next().and_then(|a| a.trim().parse().ok());
            } else if let Some(m) = l.strip_prefix("m=audio ") {
                let mut f = m.split_whitespace();
                sdp.audio_port = f.next().and_then(|p| p.parse().ok());
                sdp.proto = f.next().unwrap_or("").to_owned();
            } else if let Some(c) = l.strip_prefix("a=crypto:") {
                sdp.crypto.push(c.to_owned());
            } else if l.starts_with("a=candidate:") && l.contains(" typ relay") {
                sdp.relay_candidates.push(l.to_owned());
            }
        }
        sdp
    }

    /// `c=` address and `m=audio` port.
    pub fn audio(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.connection?, self.audio_port?))
    }

    /// The base64 key-salt of the first `a=crypto` with `suite`.
    pub fn crypto_key(&self, suite: &str) -> Option<String> {
        self.crypto.iter().find_map(|c| {
            let mut f = c.split_whitespace();
            let _tag = f.next()?;
            (f.next()? == suite).then_some(())?;
            let key = f.next()?.strip_prefix("inline:")?;
            Some(key.split('|').next()?.to_owned())
        })
    }
}

/// An RTP packet (version 2, PCMU) with `payload`.
pub fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The RTP payload (after the fixed 12-byte header; the tests send no CSRC or
/// extension).
pub fn rtp_payload(packet: &[u8]) -> &[u8] {
    packet.get(12..).unwrap_or(&[])
}

/// Datagrams that arrive on `sock` within `within` (at most `max`), with their source.
pub fn receive_for(sock: &UdpSocket, within: Duration, max: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && got.len() < max {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            got.push((from, buf[..n].to_vec()));
        }
    }
    got
}
