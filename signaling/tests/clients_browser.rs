//! A browser as the account's web device: JsSIP (npm `jssip`) in headless Chromium
//! (Debian `chromium`, driven by npm `playwright-core`; `tests/browser/`) registers
//! over SIP-over-WebSocket to the real `tandem-signaling` binary, started with the
//! shipped `config/signaling.toml`. sipp calls the account from UDP with a WebRTC
//! offer: the call forks to the browser and to a sipp phone of the same account; the
//! browser answers, the phone gets CANCEL with "Call completed elsewhere", the
//! caller's ACK and BYE reach the browser by the Record-Route flow tokens. Then a
//! MESSAGE to the account reaches the browser.
//!
//! Needs node, Chromium, `npm ci` in tests/browser (tests/setup.sh does all three)
//! and sipp: without them the test fails when `CI` is set and is skipped otherwise.

mod sipp_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sipp_support::{common_args, free_udp_port, instance, scenario, sipp_available, summary};

const ADMIN: &str = "browser-test-admin-token-0123456789";
const PASSWORD: &str = "browser-passw0rd";
/// The shipped configuration's realm.
const REALM: &str = "tandem.local";
/// The browser's `instance_id` (JsSIP sends `+sip.instance="<urn:uuid:...>"`).
const WEB_INSTANCE: &str = "5ee1b0b0-0000-4000-8000-00000000b0b0";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether node, Chromium and the npm packages are in place; panics under CI when
/// one is missing.
fn browser_available() -> bool {
    let mut missing = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (Debian nodejs)");
    }
    if !chromium().exists() {
        missing.push("chromium (Debian chromium)");
    }
    if ["jssip", "playwright-core", "esbuild"]
        .iter()
        .any(|m| !browser_dir().join("node_modules").join(m).exists())
    {
        missing.push("tests/browser/node_modules (npm ci in tests/browser)");
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "missing for the browser test: {}; run tests/setup.sh",
            missing.join(", ")
        );
    }
    eprintln!(
        "SKIPPED: missing {}; run tests/setup.sh, set CI to make this fail",
        missing.join(", ")
    );
    false
}

/// Lines of a child's stdout, read on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; returns it, with every line seen so far
/// appended to `seen`.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    what: &str,
    within: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line.clone());
            if line.contains(what) {
                return Some(line);
            }
        }
    }
    None
}

/// The `key` transport's address in the "SIP listening" line
/// (`listen=udp 127.0.0.1:5060, ws 127.0.0.1:5066`).
fn listening(line: &str, key: &str) -> SocketAddr {
    let list = line
        .split("listen=")
        .nth(1)
        .unwrap_or_else(|| panic!("no listen= in {line:?}"));
    list.split(',')
        .find_map(|item| {
            let mut p = item.split_whitespace();
            (p.next()? == key).then(|| p.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {key} listener in {line:?}"))
}

/// The real binary with the shipped configuration as it is, on free ports (flags),
/// SIP over WebSocket on.
struct Signaling {
    child: Child,
    sip_udp: SocketAddr,
    sip_ws: SocketAddr,
    api: String,
    log: Vec<String>,
}

impl Signaling {
    fn start(dir: &Path) -> Signaling {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/signaling.toml");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
            .args(["--config", path])
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-listen", "127.0.0.1:0", "--sip-listen", "127.0.0.1:0"])
            .args(["--sip-ws-listen", "127.0.0.1:0"])
            .env("TANDEM_ADMIN_TOKEN", ADMIN)
            .env_remove("TANDEM_DATABASE_URL")
            .env("TANDEM_LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tandem-signaling");
        let rx = lines_of(&mut child);
        let mut log = Vec::new();
        let sip = wait_line(&rx, "SIP listening", Duration::from_secs(30), &mut log);
        let api = wait_line(&rx, "HTTP API listening", Duration::from_secs(10), &mut log);
        let (Some(sip), Some(api)) = (sip, api) else {
            let _ = child.kill();
            panic!("signaling did not start; log:\n{}", log.join("\n"));
        };
        // Keep draining the log so the binary never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Signaling {
            child,
            sip_udp: listening(&sip, "udp"),
            sip_ws: listening(&sip, "ws"),
            api: api.split("api=").nth(1).unwrap().trim().to_owned(),
            log,
        }
    }

    /// Account `login` with a web device (the browser) and a mobile one (sipp).
    fn provision(&self, login: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let post = |path: String, body: serde_json::Value| {
                let req = client
                    .post(format!("http://{}{path}", self.api))
                    .bearer_auth(ADMIN)
                    .json(&body);
                async move {
                    let r = req.send().await.unwrap();
                    let status = r.status().as_u16();
                    let v: serde_json::Value = r.json().await.unwrap();
                    assert_eq!(status, 201, "{path}: {v}");
                    v
                }
            };
            let acc = post(
                "/accounts".into(),
                serde_json::json!({"login": login, "password": PASSWORD, "country_code": "1"}),
            )
            .await;
            let id = acc["id"].as_i64().unwrap();
            post(
                format!("/accounts/{id}/devices"),
                serde_json::json!({"instance_id": format!("urn:uuid:{WEB_INSTANCE}"),
                                   "class": "web", "name": "browser"}),
            )
            .await;
            post(
                format!("/accounts/{id}/devices"),
                serde_json::json!({"instance_id": instance(2), "class": "mobile",
                                   "name": "phone"}),
            )
            .await;
        });
    }
}

impl Drop for Signaling {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child process when dropped (a failed assertion must not leave a browser
/// or sipp behind).
struct Reaper(Option<Child>);

impl Reaper {
    fn take(&mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a sipp client scenario against `server` calling `service`; panics with its
/// output unless it succeeds.
fn sipp_client(dir: &Path, server: SocketAddr, name: &str, service: &str) {
    let mut cmd = Command::new("sipp");
    cmd.arg(server.to_string())
        .arg("-sf")
        .arg(scenario(name))
        .args(["-s", service, "-m", "1"])
        .current_dir(dir);
    common_args(&mut cmd, free_udp_port());
    let out = cmd.output().expect("run sipp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("  sipp -sf tests/sipp/{name}: {}", summary(&stdout));
    assert!(
        out.status.success(),
        "{name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn jssip_in_chromium_registers_over_websocket_answers_a_forked_call_and_gets_a_message() {
    if !browser_available() || !sipp_available() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = Signaling::start(dir.path());
    server.provision("alice");

    // The phone: registers over UDP, then rings until it is cancelled.
    let phone_port = free_udp_port();
    sipp_support::register(
        dir.path(),
        server.sip_udp,
        phone_port,
        "alice",
        PASSWORD,
        &instance(2),
        REALM,
    );
    let trace = dir.path().join("phone.msg");
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario("call_uas_ring_cancelled.xml"))
        .args(["-m", "1", "-trace_msg", "-message_file"])
        .arg(&trace)
        .current_dir(dir.path());
    common_args(&mut cmd, phone_port);
    let mut phone = Reaper(Some(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipp"),
    ));
    sipp_support::wait_bound(phone_port);

    // The browser.
    let mut browser = Reaper(Some(
        Command::new("node")
            .arg("jssip_device.js")
            .current_dir(browser_dir())
            .env("WS_URL", format!("ws://{}", server.sip_ws))
            .env("SIP_URI", format!("sip:alice@{REALM}"))
            .env("SIP_PASSWORD", PASSWORD)
            .env("INSTANCE_ID", WEB_INSTANCE)
            .env("CHROMIUM", chromium())
            .env("TIMEOUT_MS", "40000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node"),
    ));
    let events = lines_of(browser.0.as_mut().unwrap());
    let mut seen = Vec::new();
    if wait_line(&events, "registered", Duration::from_secs(30), &mut seen).is_none() {
        let mut b = browser.take();
        let _ = b.kill();
        let out = b.wait_with_output().unwrap();
        panic!(
            "the browser did not register: {seen:?}\nstderr:\n{}\nsignaling log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log.join("\n")
        );
    }

    // The call, forked to the browser and the phone; the browser answers.
    sipp_client(dir.path(), server.sip_udp, "call_uac_webrtc.xml", "alice");
    let out = phone.take().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the phone rang and was cancelled:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let phone_trace = std::fs::read_to_string(&trace).unwrap_or_default();
    let cancel = phone_trace
        .split("\n\n")
        .find(|m| m.contains("CANCEL sip:"))
        .unwrap_or_else(|| panic!("no CANCEL in the phone's trace:\n{phone_trace}"));
    assert!(
        cancel.contains("Call completed elsewhere"),
        "the CANCEL says why: {cancel}"
    );

    // A text message to the account.
    sipp_client(dir.path(), server.sip_udp, "message_uac.xml", "alice");

    let done = wait_line(&events, "done", Duration::from_secs(20), &mut seen);
    let b = browser.take();
    let out = b.wait_with_output().unwrap();
    assert!(
        done.is_some() && out.status.success(),
        "browser events: {seen:?}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |prefix: &str| seen.iter().any(|l| l.starts_with(prefix));
    assert!(has("incoming bob"), "{seen:?}");
    assert!(has("confirmed"), "the browser's answer was ACKed: {seen:?}");
    assert!(has("ended remote"), "the caller's BYE reached it: {seen:?}");
    assert!(has("message hello from sipp"), "{seen:?}");
    eprintln!(
        "browser test: {:.1} s; browser events: {seen:?}",
        started.elapsed().as_secs_f64()
    );
}
