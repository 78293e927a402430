//! Real SIP clients against the real `tandem-signaling` binary: the server process
//! (shipped config, SQLite under a temporary directory, fixed SIP port so it can be
//! restarted on the same address) and baresip (Debian `baresip-core`) devices, each
//! with its own config directory and driven over its `ctrl_tcp` module (netstring
//! framed JSON commands, responses and events). Without baresip on PATH a test using
//! [`baresip_available`] fails when `CI` is set and is skipped otherwise.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ADMIN: &str = "clients-admin-token-0123456789abcdef";
pub const REALM: &str = "tandem.local";

pub fn baresip_available() -> bool {
    match Command::new("baresip").arg("-h").output() {
        Ok(_) => true,
        Err(_) => {
            if std::env::var_os("CI").is_some() {
                panic!("baresip is not installed (Debian package baresip-core) and CI is set");
            }
            eprintln!("SKIPPED: baresip is not installed (Debian package baresip-core); set CI to make this fail");
            false
        }
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let u = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let p = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no port free for both UDP and TCP");
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a child on drop (a failing test leaves no process behind).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `tandem-signaling` binary with `config/signaling.toml`, data in `dir`, SIP on
/// 127.0.0.1:`sip_port` (UDP and TCP), the API on a free port, log at info.
pub struct Signaling {
    child: Guard,
    pub sip: SocketAddr,
    pub api: String,
    log: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Signaling {
    pub fn start(dir: &Path, sip_port: u16) -> Signaling {
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/signaling.toml");
        let sip = SocketAddr::from(([127, 0, 0, 1], sip_port));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-signaling"))
            .args(["--config", config, "--data-dir"])
            .arg(dir)
            .args(["--api-listen", "127.0.0.1:0", "--sip-listen"])
            .arg(sip.to_string())
            .args(["--log-level", "info"])
            // The shipped config serves WebSocket on a fixed port; several servers run
            // at once here.
            .args(["--sip-ws-listen", "127.0.0.1:0"])
            .env("TANDEM_ADMIN_TOKEN", ADMIN)
            .env_remove("TANDEM_DATABASE_URL")
            .env_remove("TANDEM_LOG_PERSONAL_DATA")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tandem-signaling");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let api = loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                l.contains("HTTP API listening")
                    .then(|| l.split("api=").nth(1).map(|s| s.trim().to_owned()))
                    .flatten()
            });
            if let Some(a) = found {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "signaling did not start; log:\n{}",
                log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Signaling {
            child: Guard(child),
            sip,
            api,
            log,
            dir: dir.to_path_buf(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// SIGKILL, as a crash: no clean shutdown, no unregistering.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.log()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Log lines containing every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("http://{}{path}", self.api);
        self.rt.block_on(async {
            let r = reqwest::Client::new()
                .request(method.parse().unwrap(), url)
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let s = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(s.is_success(), "{method} {path}: {s} {v}");
            v
        })
    }

    /// An account with mobile devices of the given instance UUIDs; returns its id.
    pub fn account(&self, login: &str, password: &str, uuids: &[&str]) -> i64 {
        let acc = self.admin(
            "POST",
            "/accounts",
            json!({"login": login, "password": password, "country_code": "48",
                   "phone_numbers": []}),
        );
        let id = acc["id"].as_i64().unwrap();
        for (i, u) in uuids.iter().enumerate() {
            self.admin(
                "POST",
                &format!("/accounts/{id}/devices"),
                json!({"instance_id": format!("urn:uuid:{u}"), "class": "mobile",
                       "name": format!("{login} {i}")}),
            );
        }
        id
    }
}

/// One baresip process as a device.
pub struct Baresip {
    pub name: String,
    child: Guard,
    dir: PathBuf,
    ctrl: TcpStream,
    rx: Receiver<Value>,
    pending: VecDeque<Value>,
    token: u32,
}

/// The settings of one baresip device.
pub struct Device<'a> {
    pub name: &'a str,
    pub login: &'a str,
    pub password: &'a str,
    pub uuid: &'a str,
    /// `udp` or `tcp`.
    pub transport: &'a str,
    /// Registration interval, seconds.
    pub regint: u32,
}

impl Baresip {
    /// Writes `<root>/<name>/{config,accounts,uuid}` and starts baresip on it with
    /// the SIP trace on (`-s`, so its log shows what it received); the account
    /// registers through `server` as its RFC 5626 outbound proxy.
    pub fn start(root: &Path, dev: &Device, server: SocketAddr) -> Baresip {
        let dir = root.join(dev.name);
        std::fs::create_dir_all(&dir).unwrap();
        let sip_port = free_port();
        let ctrl_port = free_tcp_port();
        std::fs::write(
            dir.join("config"),
            format!(
                "poll_method\tepoll\n\
                 sip_listen\t127.0.0.1:{sip_port}\n\
                 ctrl_tcp_listen\t127.0.0.1:{ctrl_port}\n\
                 module_path\t/usr/lib/baresip/modules\n\
                 module\tuuid.so\n\
                 module\tg711.so\n\
                 module\taubridge.so\n\
                 module_app\taccount.so\n\
                 module_app\tmenu.so\n\
                 module_app\tctrl_tcp.so\n\
                 audio_source\taubridge,{name}\n\
                 audio_player\taubridge,{name}\n\
                 audio_alert\taubridge,{name}-alert\n\
                 rtp_timeout\t0\n",
                name = dev.name
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{}@{REALM};transport={}>;auth_pass={};regint={};sipnat=outbound;outbound=\"sip:{server};transport={}\"\n",
                dev.login, dev.transport, dev.password, dev.regint, dev.transport
            ),
        )
        .unwrap();
        // No newline: baresip takes the file's whole content as the UUID.
        std::fs::write(dir.join("uuid"), dev.uuid).unwrap();
        let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
        let child = Command::new("baresip")
            .arg("-s")
            .arg("-f")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start baresip");
        let child = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", ctrl_port)) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: ctrl_tcp did not open; log:\n{}",
                dev.name,
                std::fs::read_to_string(dir.join("baresip.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let (tx, rx) = mpsc::channel();
        let mut reader = ctrl.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Some(v) = read_netstring(&mut reader) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Baresip {
            name: dev.name.to_owned(),
            child,
            dir,
            ctrl,
            rx,
            pending: VecDeque::new(),
            token: 0,
        }
    }

    /// Runs a command of baresip's menu; returns its response.
    pub fn command(&mut self, command: &str, params: &str) -> Value {
        self.token += 1;
        let token = format!("t{}", self.token);
        let body = json!({"command": command, "params": params, "token": token}).to_string();
        self.ctrl
            .write_all(format!("{}:{body},", body.len()).as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{}: no response to {command}", self.name));
            if v["response"] == true && v["token"] == token.as_str() {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Waits until the account is registered (baresip's `reginfo` shows OK); the
    /// first REGISTER_OK event may come before the control connection is open.
    pub fn registered(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.command("reginfo", "");
            let data = r["data"].as_str().unwrap_or_default();
            if data.contains("OK ") {
                // Its REGISTER_OK, if it came after the connection, came before this
                // response: forget it, later ones are refreshes.
                self.drain("REGISTER_OK");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not registered within {timeout:?}: {data}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the next event of `kind` (e.g. "CALL_INCOMING"); earlier events of
    /// other kinds stay queued. Panics with the device's log after `timeout`.
    pub fn event(&mut self, kind: &str, timeout: Duration) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["type"] == kind) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["event"] == true && v["type"] == kind => return v,
                Ok(v) => self.pending.push_back(v),
                Err(_) => panic!(
                    "{}: no {kind} within {timeout:?}; events: {:?}\nlog:\n{}",
                    self.name,
                    self.pending,
                    self.log()
                ),
            }
        }
    }

    /// Every event received so far (queued or arriving now) of `kind`.
    pub fn drain(&mut self, kind: &str) -> Vec<Value> {
        while let Ok(v) = self.rx.try_recv() {
            self.pending.push_back(v);
        }
        let (hit, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|v| v["type"] == kind);
        self.pending = rest.into();
        hit
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }
}

fn read_netstring(r: &mut impl Read) -> Option<Value> {
    let mut len = 0usize;
    let mut b = [0u8; 1];
    loop {
        r.read_exact(&mut b).ok()?;
        match b[0] {
            b'0'..=b'9' => len = len.checked_mul(10)?.checked_add((b[0] - b'0') as usize)?,
            b':' => break,
            _ => return None,
        }
        if len > 1 << 20 {
            return None;
        }
    }
    let mut body = vec![0u8; len + 1];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body[..len]).ok()
}

pub fn linphone_available() -> bool {
    match Command::new("linphonec").arg("-v").output() {
        Ok(_) => true,
        Err(_) => {
            if std::env::var_os("CI").is_some() {
                panic!("linphonec is not installed (Debian package linphone-cli) and CI is set");
            }
            eprintln!("SKIPPED: linphonec is not installed (Debian package linphone-cli); set CI to make this fail");
            false
        }
    }
}

/// Linphone's command-line client (`linphonec`) as a device: its own HOME and
/// configuration file, UDP only, auto-answering (`-a`), no sound card (it logs that
/// and carries on), commands on stdin.
pub struct Linphone {
    child: Guard,
    out: Arc<Mutex<Vec<String>>>,
}

impl Linphone {
    pub fn start(root: &Path, dev: &Device, server: SocketAddr) -> Linphone {
        let dir = root.join(dev.name);
        std::fs::create_dir_all(dir.join(".local/share/linphone")).unwrap();
        let rc = dir.join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={}\nsip_tcp_port=-1\nsip_tls_port=-1\nuse_ipv6=0\ndefault_proxy=0\n\
                 [misc]\nuuid={}\n\
                 [proxy_0]\nreg_proxy=<sip:{server};transport=udp>\nreg_identity=sip:{}@{REALM}\n\
                 reg_expires={}\nreg_sendregister=1\npublish=0\n\
                 [auth_info_0]\nusername={}\npasswd={}\nrealm={REALM}\n",
                free_port(),
                dev.uuid,
                dev.login,
                dev.regint,
                dev.login,
                dev.password
            ),
        )
        .unwrap();
        let mut child = Command::new("linphonec")
            .arg("-a")
            .arg("-c")
            .arg(&rc)
            .env("HOME", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start linphonec");
        let out = Arc::new(Mutex::new(Vec::new()));
        for o in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(o).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        Linphone {
            child: Guard(child),
            out,
        }
    }

    /// Sends a linphonec command (e.g. `status register`).
    pub fn command(&mut self, cmd: &str) {
        if let Some(stdin) = self.child.0.stdin.as_mut() {
            let _ = stdin.write_all(format!("{cmd}\n").as_bytes());
            let _ = stdin.flush();
        }
    }

    /// Waits for an output line containing `part`; panics with the output after
    /// `timeout`.
    pub fn line(&self, part: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.out.lock().unwrap().iter().find(|l| l.contains(part)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "linphonec: no line with {part:?} within {timeout:?}; output:\n{}",
                self.out.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
