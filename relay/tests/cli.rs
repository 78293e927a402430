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
