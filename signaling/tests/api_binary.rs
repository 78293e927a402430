//! The real `tandem-signaling` binary with the example configuration: it starts on
//! embedded SQLite with no other set-up, serves the API, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[cfg(unix)]
#[test]
fn starts_with_the_example_config_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("tandem_bin_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/signaling.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
        .args(["--config", config, "--data-dir"])
        .arg(&dir)
        // Port 0 everywhere so parallel runs never collide; the log says where.
        .args(["--api-listen", "127.0.0.1:0", "--sip-listen", "127.0.0.1:0"])
        .args(["--sip-ws-listen", "127.0.0.1:0"])
        .env_remove("TANDEM_ADMIN_TOKEN")
        .env_remove("TANDEM_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut api = None;
    let mut seen = Vec::new();
    while api.is_none() && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.contains("HTTP API listening") {
            api = line.split("api=").nth(1).map(|s| s.trim().to_owned());
        }
        seen.push(line);
    }
    let api = api.unwrap_or_else(|| {
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!(
            "no 'HTTP API listening' line; log:\n{}\nstderr:\n{err}",
            seen.join("\n")
        )
    });
    let log = seen.join("\n");
    assert!(log.contains("SIP listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when not on a terminal"
    );
    let token_file = dir.join("admin-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !log.contains(token.trim()),
        "the token itself is never logged"
    );
    assert!(log.contains("admin-token"), "the token's file is logged");
    assert!(dir.join("signaling.db").exists());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{api}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = client
            .get(format!("http://{api}/accounts"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_value_fails_at_start_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("tandem_bin_bad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[registrar]\nmin_expires = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registrar.min_expires"), "{err}");
    std::fs::write(&file, "[api]\nlisten = \"localhost\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
