//! The binary refuses bad configuration at start, naming the key.

use std::process::Command;

fn run(args: &[&str], file: Option<&str>) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("tandem-relay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-relay"));
    if let Some(text) = file {
        let p = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        cmd.arg("--config").arg(p);
    }
    let out = cmd.args(args).env_remove("TANDEM_CONFIG").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_fails_naming_the_key() {
    let (ok, err) = run(
        &[],
        Some("listening-ip = [\"127.0.0.1\"]\nuser = [\"a:b\"]\nrelay-port = 5\n"),
    );
    assert!(!ok && err.contains("relay-port"), "{err}");
    let (ok, err) = run(
        &[],
        Some("listening-ip = [\"127.0.0.1\"]\nuser = [\"a:b\"]\nmin-port = 70000\n"),
    );
    assert!(!ok && err.contains("min-port"), "{err}");
    let (ok, err) = run(
        &[
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--user",
            "nopass",
        ],
        None,
    );
    assert!(!ok && err.contains("user"), "{err}");
    let (ok, err) = run(
        &[
            "--listening-ip",
            "127.0.0.1",
            "--user",
            "a:b",
            "--log-level",
            "loud?!",
        ],
        None,
    );
    assert!(!ok && err.contains("log-level"), "{err}");
    let (ok, err) = run(
        &[
            "--listening-ip",
            "127.0.0.1",
            "--denied-peer-ip",
            "10.0.0.0/40",
            "--user",
            "a:b",
        ],
        None,
    );
    assert!(!ok && err.contains("denied-peer-ip"), "{err}");
    let (ok, err) = run(
        &[
            "--listening-ip",
            "0.0.0.0",
            "--user",
            "a:b",
            "--listening-port",
            "0",
        ],
        None,
    );
    assert!(!ok && err.contains("relay-ip"), "{err}");
}

/// A second relay on a UDP port another relay holds must refuse to start, even though
/// both set SO_REUSEPORT for their own workers (the kernel would otherwise split the
/// clients between the two processes).
#[test]
fn second_relay_on_the_same_udp_port_refuses_to_start() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let port_s = port.to_string();
    let args = [
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        &port_s,
        "--user",
        "a:b",
        "--no-tcp",
        "--workers",
        "2",
    ];
    let mut first = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(args)
        .env_remove("TANDEM_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Up once a Binding request is answered.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let req = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let mut up = false;
    for _ in 0..50 {
        probe.send_to(&req, ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 512];
        if probe.recv_from(&mut buf).is_ok() {
            up = true;
            break;
        }
    }
    assert!(up, "the first relay did not answer");
    let (ok, err) = run(&args, None);
    let _ = first.kill();
    let _ = first.wait();
    assert!(!ok, "the second relay started");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(
        err.matches("in use").count(),
        1,
        "printed more than once: {err}"
    );
}

/// `--check-config` reads what start-up reads: a missing certificate fails it.
#[test]
fn check_config_catches_missing_files() {
    let (ok, err) = run(
        &[
            "--listening-ip",
            "127.0.0.1",
            "--user",
            "a:b",
            "--cert",
            "/nonexistent/cert.pem",
            "--pkey",
            "/nonexistent/key.pem",
            "--check-config",
        ],
        None,
    );
    assert!(!ok, "{err}");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    let (ok, err) = run(
        &[
            "--listening-ip",
            "127.0.0.1",
            "--user",
            "a:b",
            "--control-secret-file",
            "/nonexistent/secret",
            "--check-config",
        ],
        None,
    );
    assert!(!ok && err.contains("/nonexistent/secret"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../config/relay.toml"),
        ])
        .arg("--check-config")
        .env_remove("TANDEM_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(
        !stdout.contains("test:test"),
        "a secret is printed: {stdout}"
    );
}

/// Every key config/relay.toml documents (set or commented out) is also a flag, as
/// the file says.
#[test]
fn every_documented_key_is_a_flag() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/relay.toml"))
            .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let mut missing = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        let Some((key, _)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            continue;
        }
        if !help.contains(&format!("--{key} ")) && !help.contains(&format!("--{key}\n")) {
            missing.push(key.to_string());
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "keys without a flag: {missing:?}");
}
