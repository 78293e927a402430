//! Call forking with sipp (Debian `sip-tester`) against the whole server started
//! in-process on 127.0.0.1 with free ports. Three devices of one account register
//! (tests/sipp/register.xml, digest MD5), then each runs a UAS scenario on the port it
//! registered from, and a caller rings the account with a UAC scenario.
//!
//! Without sipp on PATH the test fails when `CI` is set and is skipped otherwise.

mod sipp_support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use sipp_support::{
    common_args, free_udp_port, instance, scenario, sipp_available, spawn_uas, spawn_uas_n, summary,
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "sipp-proxy-admin-token-0123456789";
const LOGIN: &str = "alice";
const PASSWORD: &str = "s3cret-passw0rd";
const REALM: &str = "tandem.local";

/// Devices run `uas` (one scenario per registered port), the caller runs `uac` to
/// `service`; every sipp must end with all calls successful.
fn call(server: SocketAddr, ports: &[u16], uas: &[&str], uac: &str, service: &str) {
    let children: Vec<(String, Child)> = uas
        .iter()
        .zip(ports)
        .map(|(s, p)| (format!("{s}@{p}"), spawn_uas(s, *p)))
        .collect();
    let mut cmd = Command::new("sipp");
    cmd.arg(server.to_string())
        .arg("-sf")
        .arg(scenario(uac))
        .args(["-s", service, "-m", "1"]);
    common_args(&mut cmd, free_udp_port());
    let out = cmd.output().expect("run sipp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "sipp {server} -sf tests/sipp/{uac} -s {service} -m 1: exit {:?}; {}",
        out.status.code(),
        summary(&stdout)
    );
    let mut failed = Vec::new();
    if !out.status.success() {
        failed.push(format!("caller {uac}:\n{stdout}"));
    }
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "  device sipp -sf tests/sipp/{name}: exit {:?}; {}",
            out.status.code(),
            summary(&stdout)
        );
        if !out.status.success() {
            failed.push(format!(
                "device {name}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n-----\n"));
}

async fn api(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    admin: bool,
    body: Value,
) -> (StatusCode, Value) {
    let r = client.post(format!("{base}{path}"));
    let r = if admin {
        r.bearer_auth(ADMIN)
    } else {
        r.basic_auth(LOGIN, Some(PASSWORD))
    };
    let resp = r.json(&body).send().await.unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

async fn start_with_three_devices(
    dir: &Path,
) -> (
    tandem_signaling::Running,
    CancellationToken,
    SocketAddr,
    i64,
    Vec<u16>,
) {
    let mut cfg = sipp_support::server_config(dir, REALM, ADMIN);
    cfg.default_country_code = "48".into();
    let shutdown = CancellationToken::new();
    let running = tandem_signaling::start(cfg, shutdown.clone())
        .await
        .expect("start");
    let sip = running.sip.udp.unwrap();
    let base = format!("http://{}", running.api);
    let client = reqwest::Client::new();
    let (s, acc) = api(
        &client,
        &base,
        "/accounts",
        true,
        json!({"login": LOGIN, "password": PASSWORD, "country_code": "48",
               "phone_numbers": ["+48600111222"]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{acc}");
    let account = acc["id"].as_i64().unwrap();
    for (n, class) in [(1, "mobile"), (2, "mobile"), (3, "tablet")] {
        let (s, v) = api(
            &client,
            &base,
            "/me/devices",
            false,
            json!({"instance_id": instance(n), "class": class, "name": format!("{class} {n}")}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let d = dir.to_path_buf();
    let ports2 = ports.clone();
    tokio::task::spawn_blocking(move || {
        for (i, p) in ports2.iter().enumerate() {
            sipp_support::register(&d, sip, *p, LOGIN, PASSWORD, &instance(i as u32 + 1), REALM);
        }
    })
    .await
    .unwrap();
    assert_eq!(running.registrar.bindings(account).len(), 3);
    (running, shutdown, sip, account, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_call_forking() {
    if !sipp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown, sip, _account, ports) = start_with_three_devices(dir.path()).await;

    let run = |uas: &'static [&'static str], uac: &'static str, service: &'static str| {
        let ports = ports.clone();
        tokio::task::spawn_blocking(move || call(sip, &ports, uas, uac, service))
    };
    // Three devices ring; one answers; the other two get CANCEL with the Reason
    // header; ACK and BYE pass through to the answering device.
    run(
        &[
            "call_uas_answer.xml",
            "call_uas_ring.xml",
            "call_uas_ring.xml",
        ],
        "call_uac.xml",
        LOGIN,
    )
    .await
    .unwrap();
    // One device 486, another answers, the third is cancelled: the caller sees 200.
    run(
        &[
            "call_uas_busy.xml",
            "call_uas_answer.xml",
            "call_uas_ring.xml",
        ],
        "call_uac.xml",
        LOGIN,
    )
    .await
    .unwrap();
    // All reject with 486: the caller sees 486.
    run(
        &[
            "call_uas_busy.xml",
            "call_uas_busy.xml",
            "call_uas_busy.xml",
        ],
        "call_uac_busy.xml",
        LOGIN,
    )
    .await
    .unwrap();
    // One 603: every other device stops ringing, the caller sees 603.
    run(
        &[
            "call_uas_ring_any.xml",
            "call_uas_decline.xml",
            "call_uas_ring_any.xml",
        ],
        "call_uac_decline.xml",
        LOGIN,
    )
    .await
    .unwrap();
    // The caller hangs up while three devices ring: CANCEL reaches every branch.
    run(
        &[
            "call_uas_ring_cancelled.xml",
            "call_uas_ring_cancelled.xml",
            "call_uas_ring_cancelled.xml",
        ],
        "call_uac_cancel.xml",
        LOGIN,
    )
    .await
    .unwrap();
    // MESSAGE is forked too: one device refuses, two take it; the sender gets 200.
    run(
        &[
            "message_uas_reject.xml",
            "message_uas_accept.xml",
            "message_uas_accept.xml",
        ],
        "message_uac.xml",
        LOGIN,
    )
    .await
    .unwrap();
    // The phone number in the forms people dial reaches the same account.
    for number in ["+48%20600111222", "0048600111222", "0600111222"] {
        run(
            &[
                "call_uas_answer.xml",
                "call_uas_busy.xml",
                "call_uas_busy.xml",
            ],
            "call_uac.xml",
            number,
        )
        .await
        .unwrap();
    }
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// INVITE forking rate: calls per second to an account with three registered devices
/// (one answers after 300 ms, two are cancelled), each call answered and hung up; then
/// the REGISTER rate (digest round included) of one device.
/// A measurement, not a check: `cargo test -p tandem-signaling --test proxy_sipp --
/// --ignored --nocapture`, rate and count from TANDEM_SIPP_RATE / TANDEM_SIPP_CALLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement, run by hand"]
async fn sipp_forking_rate() {
    if !sipp_available() {
        return;
    }
    let rate: u32 = sipp_support::env_number("TANDEM_SIPP_RATE", 50);
    let calls: u32 = sipp_support::env_number("TANDEM_SIPP_CALLS", 500);
    let dir = tempfile::tempdir().unwrap();
    let (running, shutdown, sip, _account, ports) = start_with_three_devices(dir.path()).await;
    let report = tokio::task::spawn_blocking(move || {
        let devices = [
            spawn_uas_n("call_uas_answer.xml", ports[0], calls),
            spawn_uas_n("call_uas_ring.xml", ports[1], calls),
            spawn_uas_n("call_uas_ring.xml", ports[2], calls),
        ];
        for p in &ports {
            while UdpSocket::bind(("127.0.0.1", *p)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let started = std::time::Instant::now();
        let mut cmd = Command::new("sipp");
        cmd.arg(sip.to_string())
            .arg("-sf")
            .arg(scenario("call_uac.xml"))
            .args(["-s", LOGIN, "-m", &calls.to_string(), "-r", &rate.to_string()])
            .args(["-l", "2000"]);
        common_args(&mut cmd, free_udp_port());
        let out = cmd.output().expect("run sipp");
        let secs = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = vec![format!(
            "caller: sipp -sf call_uac.xml -r {rate} -m {calls}: exit {:?} in {secs:.1} s ({:.1} calls/s); {}",
            out.status.code(),
            f64::from(calls) / secs,
            summary(&stdout)
        )];
        for (i, d) in devices.into_iter().enumerate() {
            let o = d.wait_with_output().unwrap();
            lines.push(format!(
                "device {i}: exit {:?}; {}",
                o.status.code(),
                summary(&String::from_utf8_lossy(&o.stdout))
            ));
        }
        lines.join("\n")
    })
    .await
    .unwrap();
    eprintln!("{report}");
    // REGISTER rate: each call is a REGISTER, its 401 and the authenticated REGISTER
    // (tests/sipp/register_rate.xml), refreshing the first device's binding from a new
    // port; rate and count from TANDEM_SIPP_REG_RATE / TANDEM_SIPP_REGISTERS.
    let reg_rate: u32 = sipp_support::env_number("TANDEM_SIPP_REG_RATE", 200);
    let registers: u32 = sipp_support::env_number("TANDEM_SIPP_REGISTERS", 2000);
    let d = dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        let inf = sipp_support::inf(&d, "rate", &[LOGIN, PASSWORD, &instance(1), REALM]);
        let started = std::time::Instant::now();
        let mut cmd = Command::new("sipp");
        cmd.arg(sip.to_string())
            .arg("-sf")
            .arg(scenario("register_rate.xml"))
            .arg("-inf")
            .arg(&inf)
            .args(["-au", LOGIN, "-ap", PASSWORD])
            .args(["-m", &registers.to_string(), "-r", &reg_rate.to_string()])
            .args(["-l", "2000"]);
        common_args(&mut cmd, free_udp_port());
        let out = cmd.output().expect("run sipp");
        let secs = started.elapsed().as_secs_f64();
        format!(
            "registering device: sipp -sf register_rate.xml -r {reg_rate} -m {registers}: exit {:?} in {secs:.1} s ({:.1} REGISTER/s); {}",
            out.status.code(),
            f64::from(registers) / secs,
            summary(&String::from_utf8_lossy(&out.stdout))
        )
    })
    .await
    .unwrap();
    eprintln!("{report}");
    shutdown.cancel();
    running.wait().await.unwrap();
}
