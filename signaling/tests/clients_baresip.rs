//! baresip (Debian `baresip-core`, scripted over its `ctrl_tcp` module, null audio)
//! as the devices of two accounts against the real `tandem-signaling` binary started
//! with the shipped `config/signaling.toml`. Every device registers with RFC 5626
//! outbound through the server as its outbound proxy (`sipnat=outbound`: the only way
//! baresip sends a `+sip.instance`, which the server requires of a device). Two
//! scenarios run at once, each against its own server:
//!
//! - forked call over UDP: alice has two devices, bob one; bob calls alice, both of
//!   alice's devices ring, one answers, the other gets a CANCEL with
//!   `Reason: SIP;cause=200;text="Call completed elsewhere"`, bob's BYE ends the call.
//!   The devices then stay registered past 60 s on STUN keep-alives (no new
//!   REGISTER, no failure) and a second call still reaches both, answered by the
//!   other device. The server's info log shows the registrations, the fork, the
//!   answered and the cancelled branch, each with the Call-ID.
//! - TCP device after a crash: alice's desk phone (sipp, Debian `sip-tester`) is
//!   registered over TCP without outbound; the server is killed (SIGKILL) and started
//!   again on the same database and port; bob's call (baresip) reaches the phone over
//!   a new TCP connection the server opens to its Contact, answered, BYE ends it.
//!
//! A second test has Linphone's command-line client (Debian `linphone-cli`) as a device
//! (it sends `+sip.instance` without outbound) answering bob's call.
//!
//! Without baresip, sipp or linphonec on PATH the tests fail when `CI` is set and are
//! skipped otherwise.

mod clients_support;
mod sipp_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clients_support::*;
use sipp_support::{common_args, finish, inf, scenario, sipp_available};

const A1: &str = "0e1c11e7-0000-4000-8000-0000000000a1";
const A2: &str = "0e1c11e7-0000-4000-8000-0000000000a2";
const B1: &str = "0e1c11e7-0000-4000-8000-0000000000b1";
const ALICE_PASS: &str = "alice-passw0rd";
const BOB_PASS: &str = "bob-passw0rd!";
const REASON: &str = "Reason: SIP;cause=200;text=\"Call completed elsewhere\"";
const SECS: Duration = Duration::from_secs(10);

fn device<'a>(name: &'a str, login: &'a str, uuid: &'a str, transport: &'a str) -> Device<'a> {
    Device {
        name,
        login,
        password: if login == "alice" {
            ALICE_PASS
        } else {
            BOB_PASS
        },
        uuid,
        transport,
        regint: 600,
    }
}

/// The Call-ID of a call event (baresip reports it as `id`).
fn call_id(ev: &serde_json::Value) -> String {
    ev["id"].as_str().unwrap_or_default().to_owned()
}

/// bob calls alice; both of alice's devices ring; `answer` takes it, `other` gets
/// the CANCEL with the Reason; bob hangs up. Returns the Call-ID.
fn forked_call(bob: &mut Baresip, answer: &mut Baresip, other: &mut Baresip) -> String {
    let r = bob.command("dial", &format!("sip:alice@{REALM}"));
    assert_eq!(r["ok"], true, "{r}");
    let ring1 = answer.event("CALL_INCOMING", SECS);
    let ring2 = other.event("CALL_INCOMING", SECS);
    let id = call_id(&ring1);
    assert!(!id.is_empty(), "{ring1}");
    assert_eq!(
        call_id(&ring2),
        id,
        "both branches carry the caller's Call-ID"
    );
    let cancels_before = other.log().matches("CANCEL sip:").count();
    let r = answer.command("accept", "");
    assert_eq!(r["ok"], true, "{r}");
    answer.event("CALL_ESTABLISHED", SECS);
    bob.event("CALL_ESTABLISHED", SECS);
    let closed = other.event("CALL_CLOSED", SECS);
    assert_eq!(call_id(&closed), id);
    // What the other device received: a CANCEL with the Reason (RFC 3326).
    let log = other.log();
    let cancel = log
        .split("CANCEL sip:")
        .nth(cancels_before + 1)
        .unwrap_or_else(|| panic!("{}: no CANCEL in its SIP trace:\n{log}", other.name));
    let cancel = cancel.split("\n\n").next().unwrap();
    assert!(
        cancel.contains(REASON),
        "{}: CANCEL without the Reason:\n{cancel}",
        other.name
    );
    let r = bob.command("hangup", "");
    assert_eq!(r["ok"], true, "{r}");
    let closed = answer.event("CALL_CLOSED", SECS);
    assert_eq!(call_id(&closed), id);
    bob.event("CALL_CLOSED", SECS);
    id
}

fn forked_call_and_keepalive(root: &std::path::Path) {
    let server = Signaling::start(&root.join("data"), free_port());
    server.account("alice", ALICE_PASS, &[A1, A2]);
    server.account("bob", BOB_PASS, &[B1]);
    let mut a1 = Baresip::start(root, &device("a1", "alice", A1, "udp"), server.sip);
    let mut a2 = Baresip::start(root, &device("a2", "alice", A2, "udp"), server.sip);
    let mut bob = Baresip::start(root, &device("b1", "bob", B1, "udp"), server.sip);
    for d in [&mut a1, &mut a2, &mut bob] {
        d.registered(SECS);
    }
    let registered = Instant::now();

    let id = forked_call(&mut bob, &mut a1, &mut a2);
    let cid = format!("call_id={id}");
    for (what, parts) in [
        (
            "registration",
            vec![
                "registration saved",
                "change=added",
                "call_id=",
                "instance=…",
            ],
        ),
        ("fork", vec!["forked", &cid]),
        ("answered branch", vec!["answered", &cid]),
        ("cancelled branch", vec!["cancelled", &cid]),
    ] {
        assert!(
            !server.lines_with(&parts).is_empty(),
            "no info line for the {what} ({parts:?}); log:\n{}",
            server.log().join("\n")
        );
    }
    assert!(
        server
            .lines_with(&["registration saved"])
            .iter()
            .all(|l| !l.contains(A1)),
        "instances are redacted"
    );
    // Once: the 200 to the BYE is no answer.
    assert_eq!(
        server.lines_with(&["answered", &cid]).len(),
        1,
        "{}",
        server.log().join("\n")
    );

    // Past 60 s on keep-alives alone: a flow the server does not keep alive makes
    // baresip register again (or fail) well within this time.
    let until = registered + Duration::from_secs(65);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        for d in [&mut a1, &mut a2, &mut bob] {
            let failed = d.drain("REGISTER_FAIL");
            assert!(failed.is_empty(), "{}: {failed:?}\n{}", d.name, d.log());
            let again = d.drain("REGISTER_OK");
            assert!(
                again.is_empty(),
                "{}: registered again, its flow was declared dead: {again:?}\n{}",
                d.name,
                d.log()
            );
        }
    }
    assert_eq!(
        server.lines_with(&["registration saved"]).len(),
        3,
        "one REGISTER per device in 65 s"
    );
    // The second call, answered by the other device.
    forked_call(&mut bob, &mut a2, &mut a1);
}

/// alice's desk phone is sipp over TCP without outbound (no reg-id), listening on
/// its Contact address; bob is baresip.
fn tcp_device_after_crash(root: &std::path::Path) {
    let data = root.join("data");
    let port = free_port();
    let server = Signaling::start(&data, port);
    server.account("alice", ALICE_PASS, &[A1]);
    server.account("bob", BOB_PASS, &[B1]);
    let phone_port = free_port();
    let mut reg = Command::new("sipp");
    reg.arg(server.sip.to_string())
        .arg("-sf")
        .arg(scenario("register_no_outbound.xml"))
        .arg("-inf")
        .arg(inf(
            root,
            "alice",
            &["alice", ALICE_PASS, &format!("urn:uuid:{A1}"), REALM],
        ))
        .args(["-m", "1", "-au", "alice", "-ap", ALICE_PASS, "-t", "t1"])
        .current_dir(root);
    common_args(&mut reg, phone_port);
    let out = reg.output().expect("run sipp");
    assert!(
        out.status.success(),
        "sipp REGISTER over TCP: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = server.kill();
    assert!(
        before
            .iter()
            .any(|l| l.contains("registration saved") && l.contains("transport=tcp")),
        "{}",
        before.join("\n")
    );

    let server = Signaling::start(&data, port);
    let mut uas = Command::new("sipp");
    uas.arg("-sf")
        .arg(scenario("call_uas_answer.xml"))
        .args(["-m", "1", "-t", "t1"]);
    common_args(&mut uas, phone_port);
    let uas = uas
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sipp");
    let deadline = Instant::now() + SECS;
    while std::net::TcpListener::bind(("127.0.0.1", phone_port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "sipp did not listen on {phone_port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut bob = Baresip::start(root, &device("b1", "bob", B1, "udp"), server.sip);
    bob.registered(SECS);
    let r = bob.command("dial", &format!("sip:alice@{REALM}"));
    assert_eq!(r["ok"], true, "{r}");
    bob.event("CALL_ESTABLISHED", SECS);
    let r = bob.command("hangup", "");
    assert_eq!(r["ok"], true, "{r}");
    bob.event("CALL_CLOSED", SECS);
    finish("call_uas_answer.xml", uas);
    let log = server.log();
    assert!(
        log.iter()
            .any(|l| l.contains("outbound TCP connection opened to a device")),
        "no line about the new connection to the Contact:\n{}",
        log.join("\n")
    );
}

#[test]
fn baresip_devices() {
    if !baresip_available() || !sipp_available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let fork_dir = root.path().join("fork");
    let tcp_dir = root.path().join("tcp");
    std::thread::scope(|s| {
        let a = s.spawn(|| forked_call_and_keepalive(&fork_dir));
        let b = s.spawn(|| tcp_device_after_crash(&tcp_dir));
        let (a, b) = (a.join(), b.join());
        if let Err(e) = a {
            std::panic::resume_unwind(e);
        }
        if let Err(e) = b {
            std::panic::resume_unwind(e);
        }
    });
}

/// Linphone's command-line client as alice's only device: it registers with the
/// shipped config and auto-answers bob's call (baresip); bob's BYE ends it.
#[test]
fn linphone_device() {
    if !baresip_available() || !linphone_available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let server = Signaling::start(&root.join("data"), free_port());
    server.account("alice", ALICE_PASS, &[A1]);
    server.account("bob", BOB_PASS, &[B1]);
    let mut alice = Linphone::start(root, &device("lin", "alice", A1, "udp"), server.sip);
    let deadline = Instant::now() + SECS;
    while server
        .lines_with(&["registration saved", "account=1"])
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "linphonec did not register; server log:\n{}",
            server.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    alice.command("status register");
    alice.line("registered, identity=sip:alice@", SECS);
    let mut bob = Baresip::start(root, &device("b1", "bob", B1, "udp"), server.sip);
    bob.registered(SECS);
    let r = bob.command("dial", &format!("sip:alice@{REALM}"));
    assert_eq!(r["ok"], true, "{r}");
    let up = bob.event("CALL_ESTABLISHED", SECS);
    alice.line("Receiving new incoming call from sip:bob@", SECS);
    alice.line("connected", SECS);
    let r = bob.command("hangup", "");
    assert_eq!(r["ok"], true, "{r}");
    bob.event("CALL_CLOSED", SECS);
    alice.line("ended", SECS);
    assert!(
        !server
            .lines_with(&["answered", &format!("call_id={}", call_id(&up))])
            .is_empty(),
        "{}",
        server.log().join("\n")
    );
    alice.command("quit");
}
