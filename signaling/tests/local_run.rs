//! The README's first command, `bash deploy/local.sh`, as a new user runs it: from an
//! empty data directory it must start both processes, print the ready block, and every
//! address in that block must answer (HTTP ones with a response, `/health` and
//! `/metrics` with 200, SIP with a response to OPTIONS over UDP and TCP, TURN with a
//! STUN Binding success). `deploy/demo.sh` must then provision its accounts and print
//! the same settings twice. Ctrl-C (SIGINT to the process group, as a terminal sends
//! it) must stop everything with status 0 and free the ports.
//!
//! The script runs the debug binaries next to this test (`TANDEM_LOCAL_BIN_DIR`) so
//! the test does not build a release, and keeps `./data` in a temporary directory
//! (`TANDEM_LOCAL_DIR`). It listens on the documented local ports (5060, 3478, 8080,
//! 9641, 9642, and 5066 for WebSocket): when one is taken the test says which.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PORTS: [u16; 6] = [5060, 5066, 3478, 8080, 9641, 9642];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bin_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_tandem-signaling"))
        .parent()
        .unwrap()
        .to_path_buf();
    if dir.join("tandem-relay").exists() {
        return Some(dir);
    }
    let msg = "tandem-relay is not built next to tandem-signaling: run `cargo build --workspace --bins` first";
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// Kills the whole process group when the test ends early.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn http_status(url: &str) -> Result<u16, String> {
    http_get(url).map(|(code, _)| code)
}

/// GET with HTTP/1.1 and `Connection: close`: the status and the body as text.
fn http_get(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not http"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = host.parse().map_err(|e| format!("{url}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .get(..12)
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP response: {:?}", text.get(..40)))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Metric family names (`# TYPE name kind`) of a Prometheus text exposition.
fn families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect()
}

/// Every `expr` of a Grafana dashboard, however deeply nested.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression reads: identifiers of our namespaces.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("tandem_") || w.starts_with("process_"))
        .map(|w| w.to_string())
        .collect()
}

/// The dashboard in deploy/grafana queries only metrics the running processes expose
/// (a counter family `x` is queried as `x_total`).
fn dashboard_matches(relay_metrics: &str, signaling_metrics: &str) {
    let path = repo().join("deploy/grafana/tandem.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/tandem.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 20, "the dashboard has {} queries", all.len());
    let mut known: Vec<String> = Vec::new();
    for (name, kind) in families(relay_metrics)
        .into_iter()
        .chain(families(signaling_metrics))
    {
        match kind.as_str() {
            "counter" => known.push(format!("{name}_total")),
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    known.push(format!("{name}{s}"));
                }
            }
            _ => known.push(name),
        }
    }
    let mut missing = Vec::new();
    for e in &all {
        for m in metric_names(e) {
            if !known.contains(&m) {
                missing.push(format!("{m} (in {e})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no process exposes:\n{}",
        missing.join("\n")
    );
}

fn options(addr: SocketAddr, local: SocketAddr, transport: &str) -> String {
    format!(
        "OPTIONS sip:{addr} SIP/2.0\r\n\
         Via: SIP/2.0/{t} {local};rport;branch=z9hG4bK-local-run-{transport}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=lr1\r\n\
         To: <sip:{addr}>\r\n\
         Call-ID: local-run-{transport}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        t = transport.to_ascii_uppercase()
    )
}

fn sip_udp_answers(addr: SocketAddr) -> Result<(), String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(
        options(addr, s.local_addr().unwrap(), "udp").as_bytes(),
        addr,
    )
    .map_err(|e| format!("udp {addr}: {e}"))?;
    let mut buf = [0u8; 4096];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("udp {addr}: {e}"))?;
    if buf[..n].starts_with(b"SIP/2.0 ") {
        Ok(())
    } else {
        Err(format!("udp {addr}: not a SIP response"))
    }
}

fn sip_tcp_answers(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("tcp {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(options(addr, s.local_addr().unwrap(), "tcp").as_bytes())
        .map_err(|e| format!("tcp {addr}: {e}"))?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head)
        .map_err(|e| format!("tcp {addr}: {e}"))?;
    if &head == b"SIP/2.0 " {
        Ok(())
    } else {
        Err(format!("tcp {addr}: not a SIP response"))
    }
}

/// A STUN Binding request (RFC 8489) over UDP; the answer must be a success response
/// with our transaction id.
fn stun_answers(addr: SocketAddr) -> Result<(), String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    let tid = *b"local-run-12";
    req.extend_from_slice(&tid);
    s.send_to(&req, addr)
        .map_err(|e| format!("turn {addr}: {e}"))?;
    let mut buf = [0u8; 1500];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("turn {addr}: {e}"))?;
    if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == tid {
        Ok(())
    } else {
        Err(format!("turn {addr}: not a Binding success response"))
    }
}

/// `udp 127.0.0.1:5060` style items of the SIP line.
fn sip_items(line: &str) -> Vec<(String, SocketAddr)> {
    let list = line.split("(realm").next().unwrap_or("");
    list.split(',')
        .filter_map(|item| {
            let mut parts = item.split_whitespace();
            let t = parts.next()?.to_string();
            let a = parts.next()?.parse().ok()?;
            Some((t, a))
        })
        .collect()
}

fn urls(block: &str) -> Vec<String> {
    block
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| w.starts_with("http://"))
        .map(|w| w.to_string())
        .collect()
}

#[test]
fn readme_first_command_starts_prints_ready_block_and_stops_on_ctrl_c() {
    let Some(bins) = bin_dir() else { return };
    for p in PORTS {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            panic!("127.0.0.1:{p} is taken: deploy/local.sh listens there; stop what uses it");
        }
    }
    let work = tempfile::tempdir().unwrap();
    // As from a terminal: SIGINT at its default disposition even when this test was
    // started from a job that ignores it (bash cannot trap a signal ignored at entry).
    let mut cmd = Command::new("env");
    cmd.args(["--default-signal=INT", "bash"])
        .arg(repo().join("deploy/local.sh"))
        .env("TANDEM_LOCAL_BIN_DIR", &bins)
        .env("TANDEM_LOCAL_DIR", work.path())
        .env_remove("TANDEM_ADMIN_TOKEN")
        .env_remove("TANDEM_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut group = Group(cmd.spawn().expect("start bash deploy/local.sh"));

    // Every line of both streams, for the ready block and for the failure message.
    let (tx, rx) = mpsc::channel::<String>();
    let out = group.0.stdout.take().unwrap();
    let err = group.0.stderr.take().unwrap();
    for r in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut log = Vec::new();
    let mut block: Option<Vec<String>> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if let Ok(Some(status)) = group.0.try_wait() {
                panic!(
                    "deploy/local.sh exited early ({status}):\n{}",
                    log.join("\n")
                );
            }
            continue;
        };
        log.push(line.clone());
        match &mut block {
            None if line.contains("tandem is ready") => block = Some(Vec::new()),
            Some(b) if line.starts_with("=====") => {
                let _ = b;
                break;
            }
            Some(b) => b.push(line),
            None => {}
        }
    }
    let block = block.unwrap_or_else(|| panic!("no ready block in 120 s:\n{}", log.join("\n")));
    let text = block.join("\n");
    let field = |name: &str| -> String {
        block
            .iter()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("the ready block has no {name:?} line:\n{text}"))
    };

    // Version of both processes.
    let version = field("version");
    assert!(
        version.contains("tandem-relay ") && version.contains("tandem-signaling "),
        "{version}"
    );
    // The admin token's path is absolute and the file holds the token.
    let token_path = PathBuf::from(field("admin token"));
    assert!(token_path.is_absolute(), "{}", token_path.display());
    let token = std::fs::read_to_string(&token_path).expect("admin token file");
    assert!(token.trim().len() >= 16);

    // Every HTTP address answers; health and metrics with 200.
    let all = urls(&text);
    assert!(all.len() >= 5, "too few addresses in the block:\n{text}");
    for u in &all {
        let code = http_status(u).unwrap_or_else(|e| panic!("{e}\n{text}"));
        if u.ends_with("/health") || u.ends_with("/metrics") {
            assert_eq!(code, 200, "{u}");
        }
    }
    let metrics_urls: Vec<&String> = all.iter().filter(|u| u.ends_with("/metrics")).collect();
    assert_eq!(metrics_urls.len(), 2, "{text}");
    let (_, m0) = http_get(metrics_urls[0]).unwrap();
    let (_, m1) = http_get(metrics_urls[1]).unwrap();
    for m in [&m0, &m1] {
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
            assert!(m.contains(name), "{name} missing");
        }
        assert!(m.contains("_build_info{version=\""), "no build info");
    }
    dashboard_matches(&m0, &m1);
    for name in ["metrics", "health"] {
        let line = field(name);
        assert!(
            line.contains("(signaling)") && line.contains("(relay)"),
            "{name}: {line}"
        );
    }
    // SIP on every printed transport that this test can speak.
    let sip = sip_items(&field("SIP"));
    assert!(sip.iter().any(|(t, _)| t == "udp"), "{text}");
    for (t, a) in &sip {
        match t.as_str() {
            "udp" => sip_udp_answers(*a).unwrap(),
            "tcp" => sip_tcp_answers(*a).unwrap(),
            _ => {
                TcpStream::connect_timeout(a, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("{t} {a}: {e}"));
            }
        }
    }
    // TURN: the first turn: URI answers STUN.
    let turn = field("TURN");
    let uri = turn
        .split_whitespace()
        .find_map(|w| w.strip_prefix("turn:"))
        .expect("a turn: URI");
    stun_answers(uri.parse().unwrap()).unwrap();

    // The demo: accounts, devices and a TURN credential; a second run prints the same.
    let demo = || {
        let out = Command::new("bash")
            .arg(repo().join("deploy/demo.sh"))
            .env("TANDEM_LOCAL_DIR", work.path())
            .env_remove("TANDEM_ADMIN_TOKEN")
            .output()
            .expect("run deploy/demo.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "demo.sh failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = demo();
    assert!(first.contains("account demo"), "{first}");
    assert_eq!(
        first.matches("instance     urn:uuid:").count(),
        3,
        "{first}"
    );
    assert!(
        first.contains("\"username\""),
        "no TURN credential:\n{first}"
    );
    let second = demo();
    let passwords = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.trim_start().starts_with("password "))
            .map(|l| l.to_string())
            .collect()
    };
    assert_eq!(passwords(&first), passwords(&second));
    assert_eq!(passwords(&first).len(), 3);

    // Ctrl-C: SIGINT to the whole group, as a terminal does.
    let pgid = group.0.id();
    Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = group.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                log.push(l);
            }
            panic!("still running 30 s after SIGINT:\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push(l);
    }
    let log = log.join("\n");
    assert!(status.success(), "exit {status} after SIGINT:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("a process exited"), "{log}");
    for p in PORTS {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:{p} still bound after exit"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
