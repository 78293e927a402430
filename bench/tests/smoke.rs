//! CI smoke run: the real `tandem-relay` binary on 127.0.0.1 and `tandem-bench
//! turn-load` against it, in peer and client-to-client mode, and `tandem-bench
//! stream-load` over TCP and TLS client connections, for about two seconds each at
//! a low rate. Asserts that every ping came back (zero loss, no duplicates); no
//! timing assertions.
//!
//! Locating `tandem-relay`: `CARGO_BIN_EXE_*` only exists for binaries of this
//! package, so the test takes `TANDEM_RELAY_BIN` when set, else the `tandem-relay`
//! next to this package's binary (same target directory and profile). `cargo test
//! --workspace` builds it there (the relay's own integration tests need it); with
//! `cargo test -p tandem-bench` alone, run `cargo build -p tandem-relay` first. The
//! test fails with that advice rather than building it itself, because a nested
//! `cargo build` would wait on the build-directory lock the outer cargo holds.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_RELAY_BIN") {
        return PathBuf::from(p);
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_tandem-bench"));
    let p = bench
        .parent()
        .expect("binary has a directory")
        .join("tandem-relay");
    assert!(
        p.exists(),
        "{} not found: run `cargo build -p tandem-relay` (same profile and target dir) or set TANDEM_RELAY_BIN",
        p.display()
    );
    p
}

/// Start the relay on a free port; returns it with its listening address.
fn start_relay() -> (Guard, SocketAddr) {
    let (g, a, _) = start_relay_with(&[]);
    (g, a)
}

/// As [`start_relay`] with more flags; also the TLS listening address if any.
fn start_relay_with(extra: &[String]) -> (Guard, SocketAddr, Option<SocketAddr>) {
    let mut child = Command::new(relay_bin())
        .args(extra)
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--relay-ip",
            "127.0.0.1",
            "--realm",
            "smoke",
            "--user",
            "smoke:smoke-pass",
            "--static-auth-secret",
            "smoke-secret",
            "--allow-loopback-peers",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tandem-relay");
    let out = child.stdout.take().expect("stdout");
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let want_tls = extra.iter().any(|a| a == "--cert");
    let (mut listen, mut tls) = (None, None);
    while listen.is_none() || (want_tls && tls.is_none()) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("relay reports its listening address");
        for (key, slot) in [(" listen=", &mut listen), (" listen_tls=", &mut tls)] {
            if let Some(i) = line.find(key) {
                let a = line[i + key.len()..]
                    .split_whitespace()
                    .next()
                    .expect("address");
                *slot = Some(a.parse::<SocketAddr>().expect("socket address"));
            }
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (guard, listen.expect("listen"), tls)
}

/// Run turn-load; `creds` is `["--user", "N:P"]`, `["--secret", "S"]` or `["--forwarder"]`.
fn turn_load(server: SocketAddr, pid: u32, mode: &str, creds: &[&str]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .arg("turn-load")
        .args(creds)
        .args([
            "--server",
            &server.to_string(),
            "--mode",
            mode,
            "--allocations",
            "10",
            "--rate",
            "500",
            "--size",
            "200",
            "--duration",
            "2",
            "--server-pid",
            &pid.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem-bench");
    // Bounded: the run takes about 3 s; give it 60 s before calling it hung.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("turn-load {mode} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "turn-load {mode} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {stdout}"));
    serde_json::from_str(line).expect("JSON report")
}

fn check(r: &serde_json::Value, mode: &str) {
    eprintln!("{mode}: {r}");
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("sent"), 1000, "2 s at 500 pps");
    assert_eq!(n("send_errors"), 0);
    assert_eq!(n("received"), n("sent"), "every ping came back");
    assert_eq!(n("lost"), 0);
    assert_eq!(n("duplicates"), 0);
    assert_eq!(r["allocations"].as_u64(), Some(10));
    assert_eq!(r["mode"].as_str(), Some(mode));
    // The server's CPU was read from /proc (a value, not its size).
    assert!(r["server_cpu_ns_per_packet"].is_number());
}

#[test]
fn peer_mode_delivers_every_packet() {
    let (relay, addr) = start_relay();
    let r = turn_load(addr, relay.0.id(), "peer", &["--user", "smoke:smoke-pass"]);
    check(&r, "peer");
}

#[test]
fn client_to_client_mode_delivers_every_packet() {
    // REST credentials (coturn's use-auth-secret scheme) on this one.
    let (relay, addr) = start_relay();
    let r = turn_load(
        addr,
        relay.0.id(),
        "client-to-client",
        &["--secret", "smoke-secret"],
    );
    check(&r, "client-to-client");
}

/// Run stream-load (TURN over TCP or TLS) at a low rate; its JSON report.
fn stream_load(server: SocketAddr, pid: u32, transport: &str) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .args([
            "stream-load",
            "--server",
            &server.to_string(),
            "--transport",
            transport,
            "--user",
            "smoke:smoke-pass",
            "--allocations",
            "10",
            "--rate",
            "500",
            "--duration",
            "2",
            "--server-pid",
            &pid.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem-bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("stream-load {transport} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stream-load {transport} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {stdout}"));
    serde_json::from_str(line).expect("JSON report")
}

#[test]
fn tcp_and_tls_client_connections_deliver_every_packet() {
    let dir = std::env::temp_dir().join(format!("tandem-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let (cert, key) = (dir.join("turn.crt"), dir.join("turn.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    let extra: Vec<String> = vec![
        "--cert".into(),
        cert.display().to_string(),
        "--pkey".into(),
        key.display().to_string(),
        "--tls-listening-port".into(),
        "0".into(),
    ];
    let (relay, tcp, tls) = start_relay_with(&extra);
    // TCP listens on the UDP listening port.
    let r = stream_load(tcp, relay.0.id(), "tcp");
    check(&r, "peer-tcp");
    let r = stream_load(tls.expect("TLS listening address"), relay.0.id(), "tls");
    check(&r, "peer-tls");
    let _ = std::fs::remove_dir_all(&dir);
}
