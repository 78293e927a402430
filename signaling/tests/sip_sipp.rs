//! sipp (Debian `sip-tester`) against the whole server started in-process on
//! 127.0.0.1 with free ports: devices are authorised through the HTTP API, then
//! register with digest authentication; scenarios live in tests/sipp/.
//!
//! Without sipp on PATH the test fails when `CI` is set and is skipped otherwise.

mod sipp_support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use sipp_support::{scenario, sipp_available};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "sipp-test-admin-token-0123456789";
const LOGIN: &str = "alice";
const PASSWORD: &str = "s3cret-passw0rd";
const REALM: &str = "tandem.local";

fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a sipp injection file: login;password;instance;realm per line.
fn csv(dir: &Path, name: &str, instances: &[String], password: &str) -> PathBuf {
    let mut s = String::from("SEQUENTIAL\n");
    for i in instances {
        s.push_str(&format!("{LOGIN};{password};{i};{REALM};\n"));
    }
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

struct SippRun {
    ok: bool,
    summary: String,
}

/// Runs one sipp scenario to completion against `server`; returns whether every call
/// succeeded and the successful/failed call counts sipp printed.
fn run_sipp(
    server: SocketAddr,
    scenario_file: &str,
    inf: &Path,
    calls: u32,
    local_ip: &str,
    port: u16,
) -> SippRun {
    run_sipp_over(server, "u1", scenario_file, inf, calls, local_ip, port)
}

/// As [`run_sipp`] over a given sipp transport (`u1` UDP, `t1` one TCP connection).
fn run_sipp_over(
    server: SocketAddr,
    transport: &str,
    scenario_file: &str,
    inf: &Path,
    calls: u32,
    local_ip: &str,
    port: u16,
) -> SippRun {
    let media = free_udp_port(local_ip);
    let out = Command::new("sipp")
        .arg(server.to_string())
        .args(["-sf"])
        .arg(scenario(scenario_file))
        .args(["-inf"])
        .arg(inf)
        .args(["-m", &calls.to_string(), "-l", "1", "-r", "50"])
        .args([
            "-i",
            local_ip,
            "-p",
            &port.to_string(),
            "-mp",
            &media.to_string(),
        ])
        // Digest credentials for [authentication] (sipp does not expand [fieldN] there).
        .args(["-au", LOGIN, "-ap", PASSWORD])
        .args([
            "-t",
            transport,
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-max_retrans",
            "3",
        ])
        .output()
        .expect("run sipp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<String> = stdout
        .lines()
        .filter(|l| l.contains("Successful call") || l.contains("Failed call"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let summary = summary.join(" | ");
    eprintln!(
        "sipp {server} -t {transport} -sf tests/sipp/{scenario_file} -m {calls} -i {local_ip} -p {port}: exit {:?}; {summary}",
        out.status.code()
    );
    if !out.status.success() {
        eprintln!(
            "sipp stdout:\n{stdout}\nsipp stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    SippRun {
        ok: out.status.success(),
        summary,
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        admin: bool,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        r = if admin {
            r.bearer_auth(ADMIN)
        } else {
            r.basic_auth(LOGIN, Some(PASSWORD))
        };
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    async fn bindings(&self, account: i64) -> Vec<Value> {
        let (s, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/registrations/{account}"),
                true,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["bindings"].as_array().cloned().unwrap_or_default()
    }
}

fn instance(n: u32) -> String {
    format!("urn:uuid:5ee0{n:04x}-0000-4000-8000-0000000000{n:02x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_multi_device_registration() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api_cfg = tandem_signaling::config::ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        ..Default::default()
    };
    let mut cfg = sipp_support::server_config(dir.path(), REALM, ADMIN);
    cfg.registrar.auth_fail_limit = 3;
    cfg.api = api_cfg;
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .expect("start");
    let sip = running.sip.udp.unwrap();
    let api = Api {
        base: format!("http://{}", running.api),
        client: reqwest::Client::new(),
    };

    // The account, then its devices through the HTTP API (as the account holder).
    let (s, acc) = api
        .call(
            reqwest::Method::POST,
            "/accounts",
            true,
            Some(json!({"login": LOGIN, "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{acc}");
    let account = acc["id"].as_i64().unwrap();
    let devices = [(1, "mobile"), (2, "mobile"), (3, "tablet"), (4, "desktop")];
    for (n, class) in devices {
        let (s, v) = api
            .call(
                reqwest::Method::POST,
                "/me/devices",
                false,
                Some(json!({"instance_id": instance(n), "class": class, "name": format!("{class} {n}")})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{class} {n}: {v}");
    }
    // A fourth mobile-class device is refused at authorisation (3 mobile+tablet).
    let (s, v) = api
        .call(
            reqwest::Method::POST,
            "/me/devices",
            false,
            Some(json!({"instance_id": instance(5), "class": "mobile", "name": "mobile 5"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("device_limit_reached")),
        "{v}"
    );

    // Four devices register with digest auth, each with its own +sip.instance.
    let four: Vec<String> = devices.iter().map(|(n, _)| instance(*n)).collect();
    let inf = csv(dir.path(), "devices.csv", &four, PASSWORD);
    let port_a = free_udp_port("127.0.0.1");
    let run = run_sipp(sip, "register.xml", &inf, 4, "127.0.0.1", port_a);
    assert!(run.ok, "four devices register: {}", run.summary);
    let b = api.bindings(account).await;
    assert_eq!(b.len(), 4, "{b:?}");

    // The tablet refreshes its registration over TCP: same binding, now on a TCP flow.
    let inf_tab = csv(dir.path(), "tablet.csv", &[instance(3)], PASSWORD);
    let tcp = running.sip.tcp.unwrap();
    let run = run_sipp_over(
        tcp,
        "t1",
        "register.xml",
        &inf_tab,
        1,
        "127.0.0.1",
        free_udp_port("127.0.0.1"),
    );
    assert!(run.ok, "tablet over TCP: {}", run.summary);
    let b = api.bindings(account).await;
    assert_eq!(b.len(), 4, "{b:?}");
    let tab = running
        .registrar
        .bindings(account)
        .into_iter()
        .find(|x| x.instance_id == instance(3))
        .unwrap();
    assert_eq!(tab.transport, "tcp");

    // The refused fifth device (never authorised) gets 403 Device Not Authorized.
    let inf5 = csv(dir.path(), "unauthorised.csv", &[instance(5)], PASSWORD);
    let run = run_sipp(
        sip,
        "register_forbidden.xml",
        &inf5,
        1,
        "127.0.0.1",
        free_udp_port("127.0.0.1"),
    );
    assert!(run.ok, "unauthorised instance: {}", run.summary);
    assert_eq!(api.bindings(account).await.len(), 4);

    // A second desktop with the desktop instance replaces the first desktop binding.
    let inf_desk = csv(dir.path(), "desktop.csv", &[instance(4)], PASSWORD);
    let port_b = free_udp_port("127.0.0.1");
    let run = run_sipp(sip, "register.xml", &inf_desk, 1, "127.0.0.1", port_b);
    assert!(run.ok, "second desktop: {}", run.summary);
    let b = api.bindings(account).await;
    assert_eq!(b.len(), 4, "replaced, not added: {b:?}");
    let desk: Vec<&Value> = b
        .iter()
        .filter(|x| x["instance_id"] == instance(4))
        .collect();
    assert_eq!(desk.len(), 1);
    let shown = desk[0].to_string();
    assert!(
        shown.contains(&format!(":{port_b}")),
        "desktop binding now points at the second desktop: {shown}"
    );
    assert!(!shown.contains(&format!(":{port_a}")), "{shown}");
    let handle = running.registrar.clone();
    let desk = handle
        .bindings(account)
        .into_iter()
        .find(|x| x.instance_id == instance(4))
        .unwrap();
    assert_eq!(desk.source, format!("127.0.0.1:{port_b}"));

    // Wrong password: 401 again until the limit (3), then 403 for that source, even
    // with the right password. From 127.0.0.2 so the ban does not hit the other runs.
    let run = run_sipp(
        sip,
        "wrong_password.xml",
        &inf_desk,
        1,
        "127.0.0.2",
        free_udp_port("127.0.0.2"),
    );
    assert!(run.ok, "wrong password: {}", run.summary);

    // Unregister everything with `*`.
    let run = run_sipp(
        sip,
        "unregister_all.xml",
        &inf_desk,
        1,
        "127.0.0.1",
        free_udp_port("127.0.0.1"),
    );
    assert!(run.ok, "unregister *: {}", run.summary);
    assert!(api.bindings(account).await.is_empty());

    shutdown.cancel();
    running.wait().await.unwrap();
}
