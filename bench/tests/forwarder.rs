//! The forwarder driven by `turn-load --forwarder` (its setup exchange instead of
//! TURN), in both modes, at a low rate for about a second: every ping comes back.
//! No timing assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_forwarder() -> (Guard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .args(["forwarder", "--listen", "127.0.0.1:0", "--max-time", "120"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start forwarder");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("first line");
    let addr = line
        .trim()
        .rsplit("listen=")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("listen address in {line:?}"));
    (Guard(child), addr)
}

fn run(mode: &str) {
    let (fwd, addr) = start_forwarder();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .args(["turn-load", "--forwarder", "--server", &addr.to_string()])
        .args(["--mode", mode, "--allocations", "4", "--rate", "400"])
        .args([
            "--duration",
            "1",
            "--server-pid",
            &fwd.0.id().to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start turn-load");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "turn-load did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(s.lines().find(|l| l.starts_with('{')).expect("JSON")).expect("JSON");
    eprintln!("{mode}: {r}");
    assert_eq!(r["sent"].as_u64(), Some(400));
    assert_eq!(r["received"].as_u64(), Some(400));
    assert_eq!(r["lost"].as_u64(), Some(0));
    assert_eq!(r["duplicates"].as_u64(), Some(0));
}

#[test]
fn forwarder_peer_mode() {
    run("peer");
}

#[test]
fn forwarder_client_to_client_mode() {
    run("client-to-client");
}
