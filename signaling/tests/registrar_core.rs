//! The sans-IO registrar core with explicit time: digest (MD5, SHA-256), stale and
//! forged nonces, nc replay, login mismatch, the failure ban, instance replacement,
//! 423, `*`, fetch, Call-ID/CSeq ordering, limits and timer-driven expiry.

use std::net::IpAddr;

use tandem_signaling::model::AccountCredentials;
use tandem_signaling::registrar::core::*;
use tandem_signaling::registrar::digest::{client_response, ha1, Algorithm, NonceCounts, NonceKey};
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::grammar::AuthParams;

const REALM: &str = "tandem.local";
const T0: i64 = 1_700_000_000;

fn creds() -> AccountCredentials {
    let (m, s) = ha1("alice", REALM, "pw");
    AccountCredentials {
        id: 7,
        login: "alice".into(),
        ha1_md5: m,
        ha1_sha256: s,
        country_code: "48".into(),
        no_answer_forward: None,
        media: Default::default(),
    }
}

fn registrar(cfg: RegistrarConfig) -> Registrar {
    Registrar::new(
        cfg,
        REALM.into(),
        b"0123456789abcdef0123456789abcdef".to_vec(),
    )
}

fn nonce_of(r: &Registrar, now: i64, alg: &str) -> String {
    let ch = r.challenges(now, rand::random(), false);
    let c = ch
        .iter()
        .find(|c| c.contains(&format!("algorithm={alg}")))
        .unwrap();
    AuthParams::parse(c)
        .unwrap()
        .get("nonce")
        .unwrap()
        .to_owned()
}

fn auth(alg: Algorithm, login: &str, pw: &str, nonce: &str, nc: u32) -> String {
    client_response(
        alg,
        login,
        REALM,
        pw,
        "REGISTER",
        "sip:tandem.local",
        nonce,
        nc,
        "cn",
    )
}

fn decide(r: &mut Registrar, header: &str, now: i64) -> AuthDecision {
    let a = AuthParams::parse(header).unwrap();
    r.authenticate(&[a], "REGISTER", Some(&creds()), ip(), now)
}

fn ip() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

#[test]
fn challenges_offer_md5_then_sha256_by_default_with_qop_auth() {
    let r = registrar(RegistrarConfig::default());
    let ch = r.challenges(T0, [0; 8], false);
    assert_eq!(ch.len(), 2);
    assert!(ch[0].contains("algorithm=MD5") && ch[1].contains("algorithm=SHA-256"));
    assert!(ch
        .iter()
        .all(|c| c.contains("qop=\"auth\"") && c.contains("realm=\"tandem.local\"")));
    assert!(r.challenges(T0, [0; 8], true)[0].contains("stale=TRUE"));
}

/// An identity that names no account is answered as a wrong password is (challenged
/// again), not refused, so the answers do not enumerate accounts.
#[test]
fn unknown_identities_are_answered_like_wrong_passwords() {
    let mut r = registrar(RegistrarConfig::default());
    let n = nonce_of(&r, T0, "MD5");
    let known = decide(&mut r, &auth(Algorithm::Md5, "alice", "wrong", &n, 1), T0);
    let header = auth(Algorithm::Md5, "nobody", "pw", &n, 2);
    let a = AuthParams::parse(&header).unwrap();
    let unknown = r.authenticate(&[a], "REGISTER", None, ip(), T0);
    assert!(matches!(known, AuthDecision::Retry { .. }), "{known:?}");
    assert!(matches!(unknown, AuthDecision::Retry { .. }), "{unknown:?}");
}

#[test]
fn md5_and_sha256_accepted_wrong_password_retried() {
    let mut r = registrar(RegistrarConfig::default());
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let n = nonce_of(&r, T0, alg.name());
        assert_eq!(
            decide(&mut r, &auth(alg, "alice", "pw", &n, 1), T0),
            AuthDecision::Accept
        );
        let n = nonce_of(&r, T0, alg.name());
        assert_eq!(
            decide(&mut r, &auth(alg, "alice", "bad", &n, 1), T0),
            AuthDecision::Retry { banned: false }
        );
    }
}

#[test]
fn nonce_expiry_gives_stale_and_forgery_is_refused() {
    let mut r = registrar(RegistrarConfig {
        nonce_ttl: 30,
        ..RegistrarConfig::default()
    });
    let n = nonce_of(&r, T0, "SHA-256");
    assert_eq!(
        decide(
            &mut r,
            &auth(Algorithm::Sha256, "alice", "pw", &n, 1),
            T0 + 31
        ),
        AuthDecision::Challenge { stale: true }
    );
    // Flip one character of the nonce: the HMAC no longer matches. Such a nonce is
    // answered with a fresh challenge and not counted (it may come from before a
    // restart); the response is never checked against it.
    let mut forged: Vec<char> = n.chars().collect();
    forged[3] = if forged[3] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let mut strict = registrar(RegistrarConfig {
        auth_fail_limit: 1,
        ..RegistrarConfig::default()
    });
    assert_eq!(
        decide(
            &mut strict,
            &auth(Algorithm::Sha256, "alice", "pw", &forged, 1),
            T0
        ),
        AuthDecision::Challenge { stale: false }
    );
    // A nonce from a registrar with another secret (e.g. before a restart): the same.
    let other = Registrar::new(
        RegistrarConfig::default(),
        REALM.into(),
        b"another secret".to_vec(),
    );
    let n2 = nonce_of(&other, T0, "MD5");
    assert_eq!(
        decide(
            &mut strict,
            &auth(Algorithm::Md5, "alice", "pw", &n2, 1),
            T0
        ),
        AuthDecision::Challenge { stale: false }
    );
    assert!(
        !strict.is_banned(ip(), T0),
        "unknown nonces are not failures"
    );
}

#[test]
fn only_offered_algorithms_are_accepted() {
    let mut r = registrar(RegistrarConfig {
        digest_algorithms: vec!["SHA-256".into()],
        ..RegistrarConfig::default()
    });
    let ch = r.challenges(T0, [0; 8], false);
    assert_eq!(ch.len(), 1);
    assert!(ch[0].contains("algorithm=SHA-256"));
    let n = nonce_of(&r, T0, "SHA-256");
    assert!(matches!(
        decide(&mut r, &auth(Algorithm::Md5, "alice", "pw", &n, 1), T0),
        AuthDecision::Forbidden { .. }
    ));
    let cfg = RegistrarConfig {
        digest_algorithms: vec!["MD5".into(), "SHA-512".into()],
        ..RegistrarConfig::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .contains("registrar.digest_algorithms"));
}

#[test]
fn nonce_count_replay_refused_and_nc_is_hex() {
    let mut r = registrar(RegistrarConfig::default());
    let n = nonce_of(&r, T0, "SHA-256");
    assert_eq!(
        decide(&mut r, &auth(Algorithm::Sha256, "alice", "pw", &n, 9), T0),
        AuthDecision::Accept
    );
    // nc=0000000a is ten, above nine: accepted (hex, not decimal).
    let h = auth(Algorithm::Sha256, "alice", "pw", &n, 10);
    assert!(h.contains("nc=0000000a"));
    assert_eq!(decide(&mut r, &h, T0), AuthDecision::Accept);
    assert!(
        matches!(decide(&mut r, &h, T0), AuthDecision::Forbidden { .. }),
        "same nc replayed"
    );
    assert!(matches!(
        decide(&mut r, &auth(Algorithm::Sha256, "alice", "pw", &n, 3), T0),
        AuthDecision::Forbidden { .. }
    ));
}

#[test]
fn nonce_tracking_is_bounded_without_reopening_replays() {
    let mut counts = NonceCounts::new(2);
    let key = NonceKey::new(b"k".to_vec(), REALM.into(), 300);
    let a = key.issue(T0, [1; 8]);
    let b = key.issue(T0 + 1, [2; 8]);
    let c = key.issue(T0 + 2, [3; 8]);
    assert!(counts.accept(&a, T0, 1).is_ok());
    assert!(counts.accept(&b, T0 + 1, 1).is_ok());
    assert!(counts.accept(&c, T0 + 2, 1).is_ok()); // evicts a
    assert_eq!(counts.len(), 2);
    assert_eq!(
        counts.accept(&a, T0, 1),
        Err(true),
        "forgotten nonce is stale, never replayable"
    );
}

#[test]
fn username_must_be_the_login_of_the_to_account() {
    let mut r = registrar(RegistrarConfig::default());
    let n = nonce_of(&r, T0, "MD5");
    assert!(matches!(
        decide(&mut r, &auth(Algorithm::Md5, "mallory", "pw", &n, 1), T0),
        AuthDecision::Forbidden { .. }
    ));
    // To resolved to no account: challenged again exactly like a wrong password (the
    // answer does not tell the account does not exist), and counted.
    let h = auth(Algorithm::Md5, "alice", "pw", &n, 1);
    let a = AuthParams::parse(&h).unwrap();
    assert!(matches!(
        r.authenticate(&[a], "REGISTER", None, ip(), T0),
        AuthDecision::Retry { .. }
    ));
    // No credentials for our realm: plain challenge, not counted.
    let foreign = AuthParams::parse("Digest realm=\"elsewhere\", username=\"alice\"").unwrap();
    assert_eq!(
        r.authenticate(&[foreign], "REGISTER", Some(&creds()), ip(), T0),
        AuthDecision::Challenge { stale: false }
    );
    let unknown_scheme = AuthParams::parse("NoOneKnowsThisScheme opaque-data=here").unwrap();
    assert_eq!(
        r.authenticate(&[unknown_scheme], "REGISTER", Some(&creds()), ip(), T0),
        AuthDecision::Challenge { stale: false }
    );
}

#[test]
fn failures_ban_the_source_for_a_while() {
    let mut r = registrar(RegistrarConfig {
        auth_fail_limit: 3,
        auth_fail_window: 60,
        auth_ban_secs: 100,
        ..RegistrarConfig::default()
    });
    for i in 0..2 {
        let n = nonce_of(&r, T0, "MD5");
        assert_eq!(
            decide(&mut r, &auth(Algorithm::Md5, "alice", "x", &n, 1), T0 + i),
            AuthDecision::Retry { banned: false }
        );
    }
    let n = nonce_of(&r, T0, "MD5");
    assert_eq!(
        decide(&mut r, &auth(Algorithm::Md5, "alice", "x", &n, 1), T0 + 2),
        AuthDecision::Forbidden { banned: true }
    );
    assert!(r.is_banned(ip(), T0 + 50));
    assert!(!r.is_banned("192.0.2.11".parse().unwrap(), T0 + 50));
    assert!(!r.is_banned(ip(), T0 + 103));
    // Failures spread wider than the window never ban.
    let mut r = registrar(RegistrarConfig {
        auth_fail_limit: 3,
        auth_fail_window: 10,
        ..RegistrarConfig::default()
    });
    for i in 0..6 {
        assert!(!r.record_failure(ip(), T0 + i * 11));
    }
}

fn contact(instance: &str, reg_id: u32, expires: Option<u32>) -> ContactRequest {
    ContactRequest {
        uri: format!("sip:alice@192.0.2.1:{}", 5000 + reg_id),
        instance_id: instance.into(),
        reg_id,
        expires,
        pn_provider: None,
        pn_prid: None,
        pn_param: None,
    }
}

fn req(
    call_id: &str,
    cseq: u32,
    contacts: ContactsSpec,
    expires: Option<u32>,
    source: &str,
    transport: &str,
) -> RegisterRequest {
    RegisterRequest {
        account: 7,
        call_id: call_id.into(),
        cseq,
        contacts,
        expires_header: expires,
        transport: transport.into(),
        source: source.into(),
        local: "192.0.2.99:5060".into(),
        user_agent: None,
    }
}

const A: &str = "urn:uuid:00000000-0000-4000-8000-00000000000a";
const B: &str = "urn:uuid:00000000-0000-4000-8000-00000000000b";

#[test]
fn bindings_replace_per_instance_and_close_the_old_flow() {
    let mut r = registrar(RegistrarConfig::default());
    let o = r.register(
        &req(
            "c1",
            1,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            Some(600),
            "192.0.2.1:1000",
            "tcp",
        ),
        T0,
    );
    assert_eq!(o.code, 200);
    assert_eq!(o.contacts.len(), 1);
    assert_eq!(o.contacts[0].1, 600);
    assert!(matches!(&o.ops[..], [StoreOp::Save(_)]));
    let o = r.register(
        &req(
            "c2",
            1,
            ContactsSpec::List(vec![contact(B, 1, None)]),
            Some(600),
            "192.0.2.2:1000",
            "udp",
        ),
        T0,
    );
    assert_eq!(o.contacts.len(), 2);
    // Same instance, new connection (a second desktop sign-in): replaces, closes old.
    let o = r.register(
        &req(
            "c3",
            1,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            Some(600),
            "192.0.2.3:2000",
            "tcp",
        ),
        T0 + 5,
    );
    assert_eq!(o.code, 200);
    assert_eq!(
        o.close,
        vec![Flow {
            transport: "tcp".into(),
            remote: "192.0.2.1:1000".into()
        }]
    );
    let b = r.bindings(7, T0 + 5);
    assert_eq!(b.len(), 2);
    assert_eq!(
        b.iter().find(|b| b.instance_id == A).unwrap().source,
        "192.0.2.3:2000"
    );
    // A reg-id-less binding of the instance replaces its reg-id bindings.
    let o = r.register(
        &req(
            "c4",
            1,
            ContactsSpec::List(vec![contact(A, 0, None)]),
            Some(600),
            "192.0.2.3:2000",
            "tcp",
        ),
        T0 + 6,
    );
    assert_eq!(o.code, 200);
    assert!(o.close.is_empty(), "same flow is not closed");
    assert_eq!(
        r.bindings(7, T0 + 6)
            .iter()
            .filter(|b| b.instance_id == A)
            .count(),
        1
    );
    assert!(o.ops.contains(&StoreOp::Delete {
        account: 7,
        instance_id: A.into(),
        reg_id: 1
    }));
}

#[test]
fn expires_bounds_423_and_cap() {
    let mut r = registrar(RegistrarConfig {
        min_expires: 60,
        max_expires: 3600,
        ..RegistrarConfig::default()
    });
    let o = r.register(
        &req(
            "c",
            1,
            ContactsSpec::List(vec![contact(A, 1, Some(30))]),
            Some(600),
            "h:1",
            "udp",
        ),
        T0,
    );
    assert_eq!((o.code, o.min_expires), (423, Some(60)));
    assert!(
        o.ops.is_empty() && r.bindings(7, T0).is_empty(),
        "a refused REGISTER changes nothing"
    );
    // The contact parameter wins over the header; above max is cut to max.
    let o = r.register(
        &req(
            "c",
            2,
            ContactsSpec::List(vec![contact(A, 1, Some(99_999))]),
            Some(30),
            "h:1",
            "udp",
        ),
        T0,
    );
    assert_eq!(o.code, 200);
    assert_eq!(o.contacts[0].1, 3600);
    // No expiry asked: default.
    let o = r.register(
        &req(
            "c",
            3,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            None,
            "h:1",
            "udp",
        ),
        T0,
    );
    assert_eq!(o.contacts[0].1, 3600);
    // expires=0 removes that binding.
    let o = r.register(
        &req(
            "c",
            4,
            ContactsSpec::List(vec![contact(A, 1, Some(0))]),
            None,
            "h:1",
            "udp",
        ),
        T0,
    );
    assert_eq!(o.code, 200);
    assert!(o.contacts.is_empty());
    assert!(o.ops.contains(&StoreOp::Delete {
        account: 7,
        instance_id: A.into(),
        reg_id: 1
    }));
}

#[test]
fn star_fetch_and_cseq_ordering() {
    let mut r = registrar(RegistrarConfig::default());
    r.register(
        &req(
            "c",
            5,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            Some(600),
            "h:1",
            "udp",
        ),
        T0,
    );
    r.register(
        &req(
            "d",
            1,
            ContactsSpec::List(vec![contact(B, 1, None)]),
            Some(600),
            "h:2",
            "udp",
        ),
        T0,
    );
    // Same Call-ID, lower or equal CSeq: out of order, refused (RFC 3261 10.3 step 7).
    let o = r.register(
        &req(
            "c",
            5,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            Some(600),
            "h:1",
            "udp",
        ),
        T0,
    );
    assert_eq!(o.code, 500);
    // Fetch lists both.
    let o = r.register(&req("x", 1, ContactsSpec::Fetch, None, "h:3", "udp"), T0);
    assert_eq!((o.code, o.contacts.len()), (200, 2));
    assert!(o.ops.is_empty());
    // `*` needs Expires: 0.
    assert_eq!(
        r.register(&req("x", 2, ContactsSpec::Star, Some(10), "h:3", "udp"), T0)
            .code,
        400
    );
    // `*` with a stale CSeq for a binding's Call-ID is refused too.
    assert_eq!(
        r.register(&req("c", 4, ContactsSpec::Star, Some(0), "h:1", "udp"), T0)
            .code,
        500
    );
    let o = r.register(&req("x", 3, ContactsSpec::Star, Some(0), "h:3", "udp"), T0);
    assert_eq!(o.code, 200);
    assert_eq!(o.ops.len(), 2);
    assert!(r.bindings(7, T0).is_empty());
}

#[test]
fn limits_on_bindings_and_reg_ids() {
    let mut r = registrar(RegistrarConfig {
        max_bindings_per_account: 2,
        max_reg_ids_per_instance: 2,
        ..RegistrarConfig::default()
    });
    let o = r.register(
        &req(
            "c",
            1,
            ContactsSpec::List(vec![contact(A, 1, None), contact(A, 2, None)]),
            Some(600),
            "h:1",
            "tcp",
        ),
        T0,
    );
    assert_eq!(o.code, 200);
    let o = r.register(
        &req(
            "c",
            2,
            ContactsSpec::List(vec![contact(B, 1, None)]),
            Some(600),
            "h:2",
            "tcp",
        ),
        T0,
    );
    assert_eq!((o.code, o.reason), (403, "Too Many Registrations"));
    let mut r = registrar(RegistrarConfig {
        max_reg_ids_per_instance: 2,
        ..RegistrarConfig::default()
    });
    let o = r.register(
        &req(
            "c",
            1,
            ContactsSpec::List(vec![
                contact(A, 1, None),
                contact(A, 2, None),
                contact(A, 3, None),
            ]),
            Some(600),
            "h:1",
            "tcp",
        ),
        T0,
    );
    assert_eq!(o.code, 403);
}

#[test]
fn expiry_is_timer_driven_and_refresh_moves_it() {
    let mut r = registrar(RegistrarConfig::default());
    r.register(
        &req(
            "c",
            1,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            Some(100),
            "h:1",
            "udp",
        ),
        T0,
    );
    r.register(
        &req(
            "d",
            1,
            ContactsSpec::List(vec![contact(B, 1, None)]),
            Some(200),
            "h:2",
            "udp",
        ),
        T0,
    );
    assert_eq!(r.poll_timeout(), Some(T0 + 100));
    // Refresh A to 300 s at T0+50: its old timer entry is stale.
    r.register(
        &req(
            "c",
            2,
            ContactsSpec::List(vec![contact(A, 1, None)]),
            Some(300),
            "h:1",
            "udp",
        ),
        T0 + 50,
    );
    assert!(r.handle_timeout(T0 + 100).is_empty());
    let gone = r.handle_timeout(T0 + 200);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].instance_id, B);
    assert_eq!(r.poll_timeout(), Some(T0 + 350));
    assert_eq!(r.handle_timeout(T0 + 350).len(), 1);
    assert!(r.bindings(7, T0 + 350).is_empty());
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn restore_drops_expired_and_revoke_removes_instance() {
    let mut r = registrar(RegistrarConfig::default());
    r.register(
        &req(
            "c",
            1,
            ContactsSpec::List(vec![contact(A, 1, None), contact(A, 2, None)]),
            Some(100),
            "h:1",
            "tcp",
        ),
        T0,
    );
    let all = r.bindings(7, T0);
    let mut r2 = registrar(RegistrarConfig::default());
    let mut old = all[0].clone();
    old.instance_id = B.into();
    old.expires_at = T0 - 1;
    let mut input = all.clone();
    input.push(old);
    let expired = r2.restore(input, T0);
    assert_eq!(expired.len(), 1);
    assert_eq!(r2.bindings(7, T0), all);
    let removed = r2.revoke_instance(7, A);
    assert_eq!(removed.len(), 2);
    assert!(r2.bindings(7, T0).is_empty());
}
