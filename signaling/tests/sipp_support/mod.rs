//! Running sipp (Debian `sip-tester`) from the tests: scenario paths, free ports,
//! device registration and UAS processes. Without sipp on PATH a test using
//! [`sipp_available`] fails when `CI` is set and is skipped otherwise.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::SipConfig;
use tandem_signaling::SignalingConfig;

/// The whole server on 127.0.0.1 with free ports (SIP over UDP and TCP, the API with
/// `admin` as its token), data in `dir`, realm `realm`. sipp 3.6 reads only the first
/// challenge and does only MD5, so MD5 is offered first (SHA-256 second; the SHA-256
/// path is covered by the Rust tests).
pub fn server_config(dir: &Path, realm: &str, admin: &str) -> SignalingConfig {
    SignalingConfig {
        data_dir: dir.to_path_buf(),
        sip: SipConfig {
            udp_listen: Some("127.0.0.1:0".parse().unwrap()),
            tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
            realm: realm.into(),
            ..SipConfig::default()
        },
        registrar: RegistrarConfig {
            digest_algorithms: vec!["MD5".into(), "SHA-256".into()],
            ..RegistrarConfig::default()
        },
        api: tandem_signaling::config::ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some(admin.into()),
            ..Default::default()
        },
        ..SignalingConfig::default()
    }
}

/// A scenario file of `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/sipp")
        .join(name)
}

pub fn sipp_available() -> bool {
    match Command::new("sipp").arg("-v").output() {
        Ok(_) => true,
        Err(_) => {
            if std::env::var_os("CI").is_some() {
                panic!("sipp is not installed (Debian package sip-tester) and CI is set");
            }
            eprintln!("SKIPPED: sipp is not installed (Debian package sip-tester); set CI to make this fail");
            false
        }
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `+sip.instance` URN numbered `n`.
pub fn instance(n: u32) -> String {
    format!("urn:uuid:5ee1{n:04x}-0000-4000-8000-0000000000{n:02x}")
}

/// A media port for sipp, which binds it and the port two above (video).
pub fn free_media_port() -> u16 {
    for _ in 0..100 {
        let p = free_udp_port();
        let free = |q: u16| UdpSocket::bind(("127.0.0.1", q)).is_ok();
        if p < u16::MAX - 3 && free(p) && free(p + 2) {
            return p;
        }
    }
    panic!("no free media port pair");
}

/// Local address, media port and the options every run takes.
pub fn common_args(cmd: &mut Command, port: u16) {
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &free_media_port().to_string()])
        .args(["-nostdin", "-timeout", "20s", "-timeout_error"]);
}

/// Writes a one-line injection file `login;password;instance;realm;extra`.
pub fn inf(dir: &Path, tag: &str, fields: &[&str]) -> PathBuf {
    let path = dir.join(format!("{tag}.csv"));
    std::fs::write(&path, format!("SEQUENTIAL\n{};\n", fields.join(";"))).unwrap();
    path
}

/// Runs `scenario` once as a client from `port` with the device fields; panics
/// with sipp's output unless it succeeds.
pub fn run_device(
    dir: &Path,
    server: SocketAddr,
    port: u16,
    scenario_name: &str,
    fields: &[&str],
    extra: &[&str],
) -> String {
    let inf = inf(
        dir,
        &format!("dev{port}-{}", fields.get(2).unwrap_or(&"")),
        fields,
    );
    let mut cmd = Command::new("sipp");
    cmd.arg(server.to_string())
        .arg("-sf")
        .arg(scenario(scenario_name))
        .arg("-inf")
        .arg(&inf)
        .args(["-m", "1", "-au", fields[0], "-ap", fields[1]])
        .args(extra)
        .current_dir(dir);
    common_args(&mut cmd, port);
    let out = cmd.output().expect("run sipp");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sipp -sf {scenario_name} from {port}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Registers one device from `port` with register.xml.
pub fn register(
    dir: &Path,
    server: SocketAddr,
    port: u16,
    login: &str,
    password: &str,
    inst: &str,
    realm: &str,
) {
    run_device(
        dir,
        server,
        port,
        "register.xml",
        &[login, password, inst, realm],
        &[],
    );
}

/// A device's UAS scenario for `calls` calls, listening on the port it registered
/// from; returns once sipp has bound the port.
pub fn spawn_uas_n(name: &str, port: u16, calls: u32) -> Child {
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario(name))
        .args(["-m", &calls.to_string()]);
    common_args(&mut cmd, port);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sipp");
    wait_bound(port);
    child
}

pub fn spawn_uas(name: &str, port: u16) -> Child {
    spawn_uas_n(name, port, 1)
}

/// Waits (at most 10 s) until something listens on UDP `port`.
pub fn wait_bound(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "sipp did not bind {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// sipp's "Successful call" / "Failed call" lines, squeezed.
pub fn summary(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| l.contains("Successful call") || l.contains("Failed call"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Waits for a spawned sipp; panics with its output unless it succeeded.
pub fn finish(name: &str, child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "  sipp -sf tests/sipp/{name}: exit {:?}; {}",
        out.status.code(),
        summary(&stdout)
    );
    assert!(
        out.status.success(),
        "{name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
