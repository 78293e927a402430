//! SIGTERM drains the real binary: `/ready` turns 503 while `/health` stays 200, a
//! new Allocate gets 508, an existing allocation keeps relaying to its peer, and the
//! process exits by itself once `drain-timeout` has passed (status 0). SIGHUP reads
//! the configuration file again: a user added there can allocate, allocations stay,
//! and a file that does not validate is refused while the running one stays.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tandem_relay::stun::{attr, method, Message};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // A UDP port whose TCP twin is free too (the relay serves both on it).
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// A TURN client over UDP against the binary.
struct Udp {
    sock: UdpSocket,
    relay: SocketAddr,
    c: Client,
}

impl Udp {
    fn new(relay: SocketAddr) -> Udp {
        Udp::as_user(relay, "alice", "wonderland", "drain")
    }

    fn as_user(relay: SocketAddr, user: &str, password: &str, realm: &str) -> Udp {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let me = sock.local_addr().unwrap().to_string();
        let mut creds = Creds::md5(user, password);
        creds.realm = realm.into();
        Udp {
            sock,
            relay,
            c: Client::new(&me, creds),
        }
    }

    fn recv(&self) -> Vec<u8> {
        let mut b = [0u8; 2048];
        let (n, _) = self.sock.recv_from(&mut b).expect("an answer in time");
        b[..n].to_vec()
    }

    fn request(&mut self, m: u16, attrs: Attrs<'_>) -> Vec<u8> {
        loop {
            let tid = self.c.tid();
            let p = self.c.build(m, tid, attrs, self.c.nonce.is_some(), true);
            self.sock.send_to(&p, self.relay).unwrap();
            let r = self.recv();
            if matches!(error_code(&r), Some(401) | Some(438)) && self.c.nonce.is_none() {
                let n = Message::decode(&r).unwrap().get(attr::NONCE).unwrap().value;
                self.c.nonce = Some(n.to_vec());
                continue;
            }
            return r;
        }
    }
}

fn udp_transport(w: &mut tandem_relay::stun::MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
}

#[test]
fn sigterm_drains_then_stops_and_sighup_does_not_stop() {
    let port = free_port();
    let metrics: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["--listening-ip", "127.0.0.1", "--listening-port"])
        .arg(port.to_string())
        .args([
            "--realm",
            "drain",
            "--user",
            "alice:wonderland",
            "--allow-loopback-peers",
            "--drain-timeout",
            "3",
            "--metrics-listen",
        ])
        .arg(metrics.to_string())
        .env_remove("TANDEM_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut relay_proc = Guard(child);
    let relay: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(metrics, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not ready in 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    // An allocation with a permission for a peer, relaying.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut a = Udp::new(relay);
    let r = a.request(method::ALLOCATE, &udp_transport);
    assert_eq!(error_code(&r), None, "Allocate");
    let r = a.request(method::CREATE_PERMISSION, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap()
    });
    assert_eq!(error_code(&r), None, "CreatePermission");
    let send = |u: &mut Udp, data: &'static [u8]| {
        let tid = u.c.tid();
        let p = {
            let mut buf = vec![0u8; 512];
            let mut w = tandem_relay::stun::MessageWriter::new(
                &mut buf,
                tandem_relay::stun::message_type(
                    method::SEND,
                    tandem_relay::stun::Class::Indication,
                ),
                &tid,
            )
            .unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr).unwrap();
            w.attr(attr::DATA, data).unwrap();
            let n = w.finish();
            buf.truncate(n);
            buf
        };
        u.sock.send_to(&p, u.relay).unwrap();
    };
    let mut b = [0u8; 1500];
    send(&mut a, b"before");
    let (n, _) = peer.recv_from(&mut b).expect("relayed before the drain");
    assert_eq!(&b[..n], b"before");

    // SIGHUP without TLS: nothing to reload, still serving.
    assert!(Command::new("kill")
        .args(["-HUP", &relay_proc.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        relay_proc.0.try_wait().unwrap().is_none(),
        "SIGHUP stopped it"
    );
    assert_eq!(http(metrics, "/ready").map(|r| r.0), Some(200));

    // SIGTERM: draining.
    let term_at = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &relay_proc.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while http(metrics, "/ready").map(|r| r.0) != Some(503) {
        assert!(Instant::now() < deadline, "/ready not 503 after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http(metrics, "/health").map(|r| r.0), Some(200));
    // A new allocation is refused; the existing one still relays.
    let mut late = Udp::new(relay);
    let r = late.request(method::ALLOCATE, &udp_transport);
    assert_eq!(error_code(&r), Some(508), "Allocate while draining");
    send(&mut a, b"during");
    let (n, _) = peer.recv_from(&mut b).expect("relayed while draining");
    assert_eq!(&b[..n], b"during");

    // The allocation is still there at drain-timeout: the relay stops by itself.
    let status = loop {
        if let Some(s) = relay_proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            term_at.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM with drain-timeout 3"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        term_at.elapsed() >= Duration::from_millis(2500),
        "stopped before drain-timeout: {:?}",
        term_at.elapsed()
    );
}

fn hup(pid: u32) {
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn sighup_reloads_users_and_refuses_a_bad_file() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tandem-relay-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    let write = |users: &str| {
        std::fs::write(
            &file,
            format!(
                "listening-ip = [\"127.0.0.1\"]\nlistening-port = {port}\nrealm = \"reload\"\n\
                 allow-loopback-peers = true\n{users}\n"
            ),
        )
        .unwrap()
    };
    write("user = [\"alice:wonderland\"]");
    let child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .arg("--config")
        .arg(&file)
        .env_remove("TANDEM_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let relay_proc = Guard(child);
    let pid = relay_proc.0.id();
    let relay: SocketAddr = ([127, 0, 0, 1], port).into();
    // Up once alice can allocate.
    let mut alice = Udp::as_user(relay, "alice", "wonderland", "reload");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let req = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        probe.send_to(&req, relay).unwrap();
        let mut b = [0u8; 512];
        if probe.recv_from(&mut b).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the relay did not start");
    }
    let r = alice.request(method::ALLOCATE, &udp_transport);
    assert_eq!(error_code(&r), None, "alice allocates");
    let mut bob = Udp::as_user(relay, "bob", "builder", "reload");
    let r = bob.request(method::ALLOCATE, &udp_transport);
    assert_eq!(error_code(&r), Some(401), "bob is not a user yet");

    // bob added to the file: after SIGHUP he can allocate; alice's allocation stays.
    write("user = [\"alice:wonderland\", \"bob:builder\"]");
    hup(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut bob = Udp::as_user(relay, "bob", "builder", "reload");
        let r = bob.request(method::ALLOCATE, &udp_transport);
        if error_code(&r).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "bob never allowed after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = alice.request(method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 600).unwrap()
    });
    assert_eq!(
        error_code(&r),
        None,
        "alice's allocation survived the reload"
    );

    // A file that does not validate: refused, the running configuration stays.
    std::fs::write(&file, "listening-ip = []\nuser = 5\n").unwrap();
    hup(pid);
    std::thread::sleep(Duration::from_millis(300));
    let mut relay_proc = relay_proc;
    assert!(
        relay_proc.0.try_wait().unwrap().is_none(),
        "a bad file on SIGHUP stopped the relay"
    );
    let mut bob2 = Udp::as_user(relay, "bob", "builder", "reload");
    let r = bob2.request(method::ALLOCATE, &udp_transport);
    assert_eq!(
        error_code(&r),
        None,
        "the running users stay after a refused reload"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
