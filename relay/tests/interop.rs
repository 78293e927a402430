//! Interop with coturn's own clients against the real `tandem-relay` binary on
//! 127.0.0.1: `turnutils_uclient` (long-term and REST credentials, channels and Send
//! indications, 10 clients each, zero loss) with `turnutils_peer` as the echo peer,
//! and `turnutils_stunclient` for the mapped address (and `-f`, RFC 5780 probing, which
//! must get its 420s), the same uclient runs over TCP (`-t`) and TLS (`-t -S`, with a
//! certificate made by the test), with RFC 6062 TCP allocations (`-T`, client to
//! client through two TCP allocations), and dual allocations (`-Z`)
//! reaching a peer on 127.0.0.1 and one on ::1. Run once per datapath
//! (`--io portable` and `--io uring`; the io_uring run is skipped, with a message,
//! where the kernel does not allow io_uring), with two workers, checking that the
//! relay logs which datapath it runs.
//!
//! Needs Debian's `coturn` package. Without it the test fails when `CI` is set and is
//! skipped (with a message) otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOOLS: [&str; 3] = [
    "turnutils_uclient",
    "turnutils_peer",
    "turnutils_stunclient",
];
const SECRET: &str = "interop-secret";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn tools_or_skip() -> bool {
    let missing: Vec<_> = TOOLS.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("coturn client tools missing in CI: {missing:?} (apt-get install coturn)");
    }
    eprintln!("SKIPPED: coturn tools not installed ({missing:?}); install Debian's `coturn` package to run the interop tests");
    false
}

/// Kill the child when dropped.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start tandem-relay on an ephemeral port with datapath `io` and read back the
/// bound addresses and the logged datapath line.
fn start_relay(io: &str) -> (Guard, SocketAddr, SocketAddr, SocketAddr, String) {
    // A self-signed certificate for TURN over TLS, made here.
    let dir = std::env::temp_dir().join(format!("tandem-interop-{}-{io}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("turn.crt"), dir.join("turn.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["--tls-listening-port", "0", "--cert"])
        .arg(&cert)
        .arg("--pkey")
        .arg(&key)
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "0",
            "--realm",
            "interop",
            "--allow-loopback-peers",
            // Relay addresses of both families, for the dual allocations (-Z).
            "--relay-ip",
            "127.0.0.1",
            "--relay-ip",
            "::1",
            "--static-auth-secret",
            "old-secret",
            "--static-auth-secret",
            SECRET,
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--io",
            io,
            // Two workers sharing the port (SO_REUSEPORT) even on a one-core machine:
            // uclient's RTCP Allocate carries the RESERVATION-TOKEN from another
            // client port, which may hash to the other worker.
            "--workers",
            "2",
        ])
        .args([
            "--user",
            "lt1:pass1",
            "--user",
            "lt2:pass2",
            "--user",
            "stun:stun",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tandem-relay");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let guard = Guard(child);
    let (mut listen, mut metrics, mut datapath, mut tls) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while listen.is_none() || metrics.is_none() || datapath.is_none() || tls.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("relay reports its addresses and datapath");
        if line.contains(" datapath") && line.contains("io=") {
            datapath = Some(line.clone());
        }
        for (key, slot) in [
            ("listen=", &mut listen),
            ("metrics=", &mut metrics),
            ("listen_tls=", &mut tls),
        ] {
            if let Some(i) = line.find(key) {
                let a = line[i + key.len()..].split_whitespace().next().unwrap();
                *slot = Some(a.parse::<SocketAddr>().unwrap());
            }
        }
    }
    // Keep draining the relay's output so it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (
        guard,
        listen.unwrap(),
        metrics.unwrap(),
        tls.unwrap(),
        datapath.unwrap(),
    )
}

fn run_with_timeout(cmd: &mut Command, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = t1.join().unwrap();
    s.push_str(&t2.join().unwrap());
    s
}

/// Check uclient's totals: everything sent came back, zero lost.
fn assert_no_loss(name: &str, out: &str) -> String {
    let totals = out
        .lines()
        .rev()
        .find(|l| l.contains("start_mclient: tot_send_msgs="))
        .unwrap_or_else(|| panic!("{name}: no totals in output:\n{out}"));
    let num = |key: &str| -> u64 {
        let i = totals.find(key).unwrap() + key.len();
        totals[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (sent, recv) = (num("tot_send_msgs="), num("tot_recv_msgs="));
    let lost = out
        .lines()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("{name}: no loss line:\n{out}"));
    assert!(sent > 0, "{name}: nothing sent:\n{out}");
    assert_eq!(sent, recv, "{name}: sent {sent}, received {recv}:\n{out}");
    assert!(lost.contains("Total lost packets 0 "), "{name}: {lost}");
    let summary = format!("{name}: {} | {}", totals.trim(), lost.trim());
    eprintln!("{summary}");
    summary
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn coturn_clients_against_tandem_relay_portable() {
    coturn_clients_against_tandem_relay("portable");
}

#[test]
fn coturn_clients_against_tandem_relay_uring() {
    if let Err(e) = tandem_relay::io::choose(tandem_relay::io::IoMode::Uring) {
        eprintln!("SKIPPED: {e}");
        return;
    }
    coturn_clients_against_tandem_relay("uring");
}

fn coturn_clients_against_tandem_relay(io: &str) {
    if !tools_or_skip() {
        return;
    }
    let started = Instant::now();
    let (_relay, listen, metrics, tls, datapath) = start_relay(io);
    assert!(
        datapath.contains(&format!("io={io} ")) && datapath.contains("reason="),
        "datapath log line: {datapath}"
    );
    eprintln!("{io}: {}", datapath.trim());
    let peer_port = free_udp_port();
    let _peer = Guard(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-L", "::1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer"),
    );
    std::thread::sleep(Duration::from_millis(300));

    // STUN binding.
    let out = run_with_timeout(
        Command::new("turnutils_stunclient").args(["-p", &listen.port().to_string(), "127.0.0.1"]),
        Duration::from_secs(10),
    );
    let line = out
        .lines()
        .find(|l| l.contains("UDP reflexive addr"))
        .unwrap_or_else(|| panic!("stunclient:\n{out}"));
    assert!(line.contains("127.0.0.1:"), "{line}");
    eprintln!("turnutils_stunclient: {}", line.trim());
    // `-f` (RFC 5780 probing): a Binding with RESPONSE-PORT and CHANGE-REQUEST (the
    // client then listens on the response port only), then one padded to 1500 bytes.
    // Without an alternate address the relay answers 420 to both; the client must
    // not hang waiting.
    let out = run_with_timeout(
        Command::new("turnutils_stunclient").args([
            "-f",
            "-p",
            &listen.port().to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(
        out.matches("The response is an error 420").count(),
        2,
        "stunclient -f:\n{out}"
    );

    // uclient scenarios, in parallel: 10 clients each, RTP+RTCP allocations.
    let port = listen.port().to_string();
    let tls_port = tls.port().to_string();
    let pport = peer_port.to_string();
    let scenarios: Vec<(&str, Vec<&str>)> = vec![
        ("long-term, channels", vec!["-u", "lt1", "-w", "pass1"]),
        (
            "long-term, send indications",
            vec!["-s", "-u", "lt2", "-w", "pass2"],
        ),
        ("REST -W, channels", vec!["-W", SECRET, "-u", "rest1"]),
        (
            "REST -W, send indications",
            vec!["-s", "-W", SECRET, "-u", "rest2"],
        ),
        // TURN over TCP (-t) on the listening port, and over TLS (-t -S) on the TLS
        // port; the relayed side is UDP.
        (
            "TCP, long-term, channels",
            vec!["-t", "-u", "lt1", "-w", "pass1"],
        ),
        (
            "TCP, REST -W, send indications",
            vec!["-t", "-s", "-W", SECRET, "-u", "rest3"],
        ),
        (
            "TLS, long-term, channels",
            vec!["-t", "-S", "-u", "lt2", "-w", "pass2", "-p", &tls_port],
        ),
        (
            "TLS, REST -W, send indications",
            vec![
                "-t", "-S", "-s", "-W", SECRET, "-u", "rest4", "-p", &tls_port,
            ],
        ),
        // RFC 6062 TCP allocations (-T, which implies -t -y -c): each client pair
        // allocates TCP, one Connects to the other's relayed address, the other gets
        // a ConnectionAttempt, both bind a data connection, and the bytes go client to
        // client through the relay (-e/-r are ignored, no UDP peer). -m is the number
        // of pairs; every client message is one TCP exchange, so fewer than above.
        (
            "TCP allocations (-T), long-term",
            vec!["-T", "-u", "lt1", "-w", "pass1"],
        ),
        // Not -T -S: for every TLS connection uclient picks one of its TLS contexts at
        // random, TLS 1.0 and 1.1 among them, which we refuse (RFC 8996); -T opens a
        // new connection per data connection and its counters then disagree (seen:
        // sent 292, received 300). A TCP allocation's control and data connections
        // take the same stream path over TLS as over TCP; TLS itself is the -t -S
        // scenarios' above.
        // Dual allocations (-Z, ADDITIONAL-ADDRESS-FAMILY; Send indications): the
        // peer on 127.0.0.1 is reached through the IPv4 relayed address, the one on
        // ::1 through the IPv6 one; uclient's Refreshes name either family at random.
        (
            "dual allocation, IPv4 peer",
            vec!["-Z", "-u", "lt1", "-w", "pass1"],
        ),
        (
            "dual allocation, IPv6 peer",
            vec!["-Z", "-W", SECRET, "-u", "rest5", "-e", "::1"],
        ),
    ];
    let handles: Vec<_> = scenarios
        .into_iter()
        .map(|(name, extra)| {
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            // The listening port unless the scenario names one (-p), the peer on
            // 127.0.0.1 unless it names one (-e).
            let own_port = args.iter().any(|a| a == "-p");
            if !args.iter().any(|a| a == "-e") {
                args.extend(["-e".to_string(), "127.0.0.1".to_string()]);
            }
            args.extend(
                ["-m", "10", "-n", "30", "-l", "120", "-r", &pport]
                    .iter()
                    .map(|s| s.to_string()),
            );
            if !own_port {
                args.extend(["-p".to_string(), port.clone()]);
            }
            args.push("127.0.0.1".to_string());
            std::thread::spawn(move || {
                let out = run_with_timeout(
                    Command::new("turnutils_uclient").args(&args),
                    Duration::from_secs(60),
                );
                assert_no_loss(name, &out)
            })
        })
        .collect();
    for h in handles {
        h.join().expect("scenario passed");
    }

    // Metrics and health on the private listener.
    let health = http_get(metrics, "/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let m = http_get(metrics, "/metrics");
    let created: u64 = m
        .lines()
        .find(|l| l.starts_with("tandem_relay_allocations_created_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metrics:\n{m}"));
    assert!(created >= 40, "allocations created: {created}");
    let tcp_created: u64 = m
        .lines()
        .find(|l| l.starts_with("tandem_relay_tcp_allocations_created_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metrics:\n{m}"));
    assert!(tcp_created >= 2, "TCP allocations created: {tcp_created}");
    assert!(
        m.lines().any(|l| l
            .strip_prefix("tandem_relay_tcp_connection_binds_total{outcome=\"bound\"} ")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v >= 2)),
        "ConnectionBinds counted:\n{m}"
    );
    assert!(
        !m.contains("lt1") && !m.contains("rest1"),
        "no per-user labels"
    );
    eprintln!("interop ({io}) finished in {:?}", started.elapsed());
}
