//! The forking proxy's response context on a virtual clock (RFC 3261 16.7, 16.10)
//! and the messages it builds (CANCEL with Reason, ACK, Via removal, loop hash).

use std::time::{Duration, Instant};

use tandem_signaling::proxy::fork::{
    Action, CancelReason, Final, Fork, ForkOptions, PushOrder, PushPolicy,
};
use tandem_signaling::proxy::msg;
use tandem_signaling::proxy::{CallPush, PushTo};
use tandem_signaling::sip::message::{HeaderName, Message};

const RING: Duration = Duration::from_secs(60);

fn drain(f: &mut Fork) -> Vec<Action> {
    std::iter::from_fn(|| f.poll_action()).collect()
}

fn cancels(actions: &[Action]) -> Vec<(usize, CancelReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { branch, reason } => Some((*branch, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn first_2xx_wins_and_the_others_are_cancelled_as_completed_elsewhere() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 3, true, RING);
    assert!(drain(&mut f).is_empty());
    for b in 0..3 {
        f.handle_response(t0, b, 180);
    }
    let a = drain(&mut f);
    assert_eq!(
        a,
        (0..3)
            .map(|branch| Action::Forward { branch, code: 180 })
            .collect::<Vec<_>>()
    );
    f.handle_response(t0, 1, 200);
    let a = drain(&mut f);
    assert_eq!(
        a.first(),
        Some(&Action::Forward {
            branch: 1,
            code: 200
        })
    );
    assert_eq!(
        cancels(&a),
        vec![
            (0, CancelReason::CompletedElsewhere),
            (2, CancelReason::CompletedElsewhere)
        ]
    );
    assert!(f.is_answered());
    // A late 2xx on another branch still goes upstream (16.7 step 5); their 487s do not.
    f.handle_response(t0, 0, 200);
    f.handle_response(t0, 2, 487);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: 0,
            code: 200
        }]
    );
    assert_eq!(f.poll_timeout(), None);
}

#[test]
fn the_100_is_absorbed_and_a_cancel_waits_for_a_provisional_response() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_response(t0, 0, 100);
    assert!(drain(&mut f).is_empty());
    f.handle_response(t0, 1, 200);
    let a = drain(&mut f);
    // Branch 0 had only a 100: that is a provisional response, so it can be cancelled.
    assert_eq!(cancels(&a), vec![(0, CancelReason::CompletedElsewhere)]);

    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_response(t0, 1, 200);
    let a = drain(&mut f);
    assert!(
        cancels(&a).is_empty(),
        "no CANCEL before any response (RFC 3261 9.1)"
    );
    f.handle_response(t0, 0, 180);
    let a = drain(&mut f);
    assert_eq!(cancels(&a), vec![(0, CancelReason::CompletedElsewhere)]);
    assert!(
        !a.iter().any(|x| matches!(x, Action::Forward { .. })),
        "no 180 after the 200"
    );
}

#[test]
fn one_486_and_one_200_gives_200() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_response(t0, 0, 486);
    assert!(drain(&mut f).is_empty(), "waits for the other branch");
    f.handle_response(t0, 1, 200);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: 1,
            code: 200
        }]
    );
}

#[test]
fn all_486_gives_486() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 3, true, RING);
    for b in 0..3 {
        f.handle_response(t0, b, 486);
    }
    let a = drain(&mut f);
    assert!(matches!(
        a.as_slice(),
        [Action::Respond(Final::Branch {
            code: 486,
            as_code: 486,
            ..
        })]
    ));
}

#[test]
fn a_6xx_stops_every_branch() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 3, true, RING);
    for b in 0..3 {
        f.handle_response(t0, b, 180);
    }
    drain(&mut f);
    f.handle_response(t0, 2, 603);
    let a = drain(&mut f);
    assert_eq!(
        a.first(),
        Some(&Action::Forward {
            branch: 2,
            code: 603
        })
    );
    assert_eq!(
        cancels(&a),
        vec![
            (0, CancelReason::GlobalFailure(603)),
            (1, CancelReason::GlobalFailure(603))
        ]
    );
    // Their 487s do not make a second final response.
    f.handle_response(t0, 0, 487);
    f.handle_response(t0, 1, 487);
    assert!(drain(&mut f).is_empty());
}

#[test]
fn best_response_rules() {
    let t0 = Instant::now();
    let best = |codes: &[u16]| {
        let mut f = Fork::new(t0, codes.len(), true, RING);
        for (i, c) in codes.iter().enumerate() {
            f.handle_response(t0, i, *c);
        }
        match drain(&mut f).pop() {
            Some(Action::Respond(Final::Branch {
                code,
                as_code,
                auth_from,
                ..
            })) => (code, as_code, auth_from.len()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(best(&[503, 486]), (486, 486, 0), "4xx over 5xx");
    assert_eq!(best(&[503, 503]), (503, 500, 0), "503 goes upstream as 500");
    assert_eq!(best(&[486, 302, 404]), (302, 302, 0), "lowest class");
    assert_eq!(
        best(&[404, 401, 407]),
        (401, 401, 1),
        "challenges aggregated"
    );
    assert_eq!(best(&[486, 404]), (404, 404, 0), "lowest code in class");
    assert_eq!(best(&[500, 415]), (415, 415, 0));
}

#[test]
fn ring_timeout_cancels_and_answers_408() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_response(t0, 0, 180);
    drain(&mut f);
    assert_eq!(f.poll_timeout(), Some(t0 + RING));
    f.handle_timeout(t0 + RING - Duration::from_millis(1));
    assert!(drain(&mut f).is_empty());
    f.handle_timeout(t0 + RING);
    let a = drain(&mut f);
    assert_eq!(cancels(&a), vec![(0, CancelReason::RingTimeout)]);
    assert!(a.contains(&Action::Respond(Final::Generated {
        code: 408,
        reason: "Request Timeout"
    })));
    // Branch 1 never answered: its CANCEL goes out when it does.
    f.handle_response(t0 + RING, 1, 180);
    assert_eq!(
        cancels(&drain(&mut f)),
        vec![(1, CancelReason::RingTimeout)]
    );
}

#[test]
fn ring_timeout_prefers_a_received_4xx_over_408() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_response(t0, 0, 404);
    f.handle_timeout(t0 + RING);
    let a = drain(&mut f);
    assert!(matches!(
        a.last(),
        Some(Action::Respond(Final::Branch { code: 404, .. }))
    ));
}

#[test]
fn caller_cancel_reaches_every_pending_branch() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 3, true, RING);
    f.handle_response(t0, 0, 180);
    f.handle_response(t0, 1, 183);
    drain(&mut f);
    f.handle_cancel(t0);
    let a = drain(&mut f);
    assert_eq!(
        cancels(&a),
        vec![
            (0, CancelReason::CallerCancelled),
            (1, CancelReason::CallerCancelled)
        ]
    );
    assert!(!f.is_answered());
    f.handle_response(t0, 0, 487);
    f.handle_response(t0, 1, 487);
    let a = drain(&mut f);
    assert!(matches!(
        a.as_slice(),
        [Action::Respond(Final::Branch { code: 487, .. })]
    ));
}

#[test]
fn caller_cancel_answers_487_at_once_for_silent_branches_and_cancels_them_later() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_response(t0, 0, 180);
    drain(&mut f);
    f.handle_cancel(t0);
    assert_eq!(
        cancels(&drain(&mut f)),
        vec![(0, CancelReason::CallerCancelled)]
    );
    f.handle_response(t0, 0, 487);
    let a = drain(&mut f);
    assert!(
        matches!(
            a.as_slice(),
            [Action::Respond(Final::Branch { code: 487, .. })]
        ),
        "{a:?}"
    );
    // Branch 1 was silent; when it finally rings it is cancelled.
    f.handle_response(t0, 1, 180);
    assert_eq!(
        cancels(&drain(&mut f)),
        vec![(1, CancelReason::CallerCancelled)]
    );

    // Nobody answered at all: 487 generated at once.
    let mut f = Fork::new(t0, 2, true, RING);
    f.handle_cancel(t0);
    assert_eq!(
        drain(&mut f),
        vec![Action::Respond(Final::Generated {
            code: 487,
            reason: "Request Terminated"
        })]
    );
}

#[test]
fn a_branch_added_while_ringing_takes_part_in_the_fork() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 1, true, RING);
    f.handle_response(t0, 0, 180);
    drain(&mut f);
    assert_eq!(f.add_branch(), Some(1));
    f.handle_response(t0, 0, 486);
    assert!(drain(&mut f).is_empty(), "the new branch is still open");
    f.handle_response(t0, 1, 200);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: 1,
            code: 200
        }]
    );
    assert_eq!(f.add_branch(), None, "answered: no more branches");

    let mut f = Fork::new(t0, 1, true, RING);
    f.handle_cancel(t0);
    assert_eq!(f.add_branch(), None, "cancelled: no more branches");
}

#[test]
fn no_branch_is_480_and_non_invite_never_cancels() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 0, true, RING);
    assert_eq!(
        drain(&mut f),
        vec![Action::Respond(Final::Generated {
            code: 480,
            reason: "Temporarily Unavailable"
        })]
    );
    let mut f = Fork::new(t0, 3, false, RING);
    assert_eq!(f.poll_timeout(), None, "MESSAGE has no ring timeout");
    f.handle_response(t0, 0, 408);
    f.handle_response(t0, 1, 200);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: 1,
            code: 200
        }]
    );
    f.handle_response(t0, 2, 200);
    assert!(drain(&mut f).is_empty(), "one 2xx upstream for a MESSAGE");
}

const INVITE: &str = "INVITE sip:dev1@10.0.0.5:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc.1;rport\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKcaller\r\n\
Record-Route: <sip:tf-x@127.0.0.1:5060;lr>\r\n\
Max-Forwards: 69\r\n\
From: <sip:bob@tandem.local>;tag=f1\r\n\
To: <sip:alice@tandem.local>\r\n\
Call-ID: call-1\r\n\
CSeq: 7 INVITE\r\n\
Route: <sip:gw.example;lr>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

#[test]
fn cancel_carries_reason_and_copies_the_request_fields() {
    let sent = Message::parse(INVITE.as_bytes()).unwrap();
    let c = msg::cancel_for(
        &sent,
        Some("SIP;cause=200;text=\"Call completed elsewhere\""),
    );
    let m = Message::parse(&c).unwrap();
    assert_eq!(m.method(), Some("CANCEL"));
    assert_eq!(m.request_uri(), Some("sip:dev1@10.0.0.5:5070"));
    assert_eq!(m.vias().unwrap().len(), 1);
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bKabc.1"));
    assert_eq!(m.header(HeaderName::CSeq), Some("7 CANCEL"));
    assert_eq!(m.header(HeaderName::To), Some("<sip:alice@tandem.local>"));
    assert_eq!(m.header(HeaderName::Route), Some("<sip:gw.example;lr>"));
    assert_eq!(
        m.header(HeaderName::Other("Reason")),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    m.validate_request().unwrap();
}

#[test]
fn ack_takes_the_to_tag_of_the_response() {
    let sent = Message::parse(INVITE.as_bytes()).unwrap();
    let resp = "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc.1;rport\r\nVia: SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKcaller\r\nFrom: <sip:bob@tandem.local>;tag=f1\r\nTo: <sip:alice@tandem.local>;tag=t9\r\nCall-ID: call-1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
    let r = Message::parse(resp.as_bytes()).unwrap();
    let ack = msg::ack_for(&sent, &r);
    let m = Message::parse(&ack).unwrap();
    assert_eq!(m.header(HeaderName::CSeq), Some("7 ACK"));
    assert_eq!(
        m.header(HeaderName::To),
        Some("<sip:alice@tandem.local>;tag=t9")
    );
    m.validate_request().unwrap();

    // Upstream: our Via gone, the rest untouched; 503 rewritten to 500.
    let up = msg::response_upstream(&r, Some((500, "Server Internal Error")), &[]);
    let u = Message::parse(&up).unwrap();
    assert_eq!(u.status(), Some(500));
    assert_eq!(u.vias().unwrap().len(), 1);
    assert_eq!(u.top_via().unwrap().branch(), Some("z9hG4bKcaller"));
}

#[test]
fn forwarded_request_gets_our_via_record_route_and_lower_max_forwards() {
    let m = Message::parse(INVITE.as_bytes()).unwrap();
    let rr = vec!["<sip:tf-a@127.0.0.1:5060;transport=udp;lr>".to_owned()];
    let out = msg::forward_request(
        &m,
        &msg::Forward {
            request_uri: Some("sip:dev2@10.0.0.6:5070"),
            via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnew;rport",
            record_route: &rr,
            pop_routes: 1,
            max_forwards: 68,
            extra: &[],
            consume_realm: None,
        },
    );
    let f = Message::parse(&out).unwrap();
    f.validate_request().unwrap();
    assert_eq!(f.request_uri(), Some("sip:dev2@10.0.0.6:5070"));
    assert_eq!(f.vias().unwrap().len(), 3);
    assert_eq!(f.top_via().unwrap().branch(), Some("z9hG4bKnew"));
    assert_eq!(f.header(HeaderName::MaxForwards), Some("68"));
    assert_eq!(f.header(HeaderName::Route), None, "our route popped");
    assert_eq!(f.list(HeaderName::RecordRoute).unwrap().len(), 2);
    assert_eq!(f.body, b"v=0\n");

    // Loop hash: same for an unchanged request, different when routing fields change.
    let h1 = msg::loop_hash(&m);
    assert_eq!(
        h1,
        msg::loop_hash(&Message::parse(INVITE.as_bytes()).unwrap())
    );
    let changed = INVITE.replace("sip:dev1@10.0.0.5:5070", "sip:dev1@10.0.0.9:5070");
    assert_ne!(
        h1,
        msg::loop_hash(&Message::parse(changed.as_bytes()).unwrap())
    );
}

/// Random sequences of responses, cancels and timeouts: never a panic, at most one
/// non-2xx final response upstream and never after a 2xx, and every request
/// answered once all branches are done.
#[test]
fn random_event_sequences_keep_the_invariants() {
    let t0 = Instant::now();
    let codes = [
        100u16, 180, 183, 200, 202, 302, 401, 404, 407, 486, 487, 500, 503, 600, 603, 699,
    ];
    for seed in 0..3000u64 {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let n = next(5) as usize;
        let invite = next(4) != 0;
        // Half the runs with the push and no-answer options: parked, pushed after
        // silence, forwarded when unanswered.
        let opts = if next(2) == 0 {
            ForkOptions::default()
        } else {
            ForkOptions {
                park_until: (next(2) == 0).then(|| t0 + Duration::from_secs(next(40))),
                push_at: (next(2) == 0).then(|| t0 + Duration::from_secs(next(10))),
                forward_on_no_answer: next(2) == 0,
            }
        };
        let mut f = Fork::with_options(t0, n, invite, RING, opts);
        let mut forward_pending = false;
        let mut finals = 0;
        let mut final_code = 0u16;
        let mut now = t0;
        for _ in 0..next(30) {
            match next(14) {
                13 => {
                    f.handle_shutdown(now);
                    assert!(f.is_answered(), "seed {seed}: not answered after shutdown");
                }
                10 => f.park(now + Duration::from_secs(next(40))),
                11 => f.unpark(now),
                12 if forward_pending => {
                    forward_pending = false;
                    if next(2) == 0 {
                        let _ = f.add_forward_branch(now);
                    } else {
                        f.forward_failed();
                    }
                }
                0 => f.handle_cancel(now),
                1 => {
                    now += Duration::from_secs(next(90));
                    f.handle_timeout(now);
                }
                2 => {
                    let _ = f.add_branch();
                }
                _ => {
                    let b = next(6) as usize;
                    let c = codes[next(codes.len() as u64) as usize];
                    f.handle_response(now, b, c);
                }
            }
            for a in drain(&mut f) {
                match a {
                    Action::NoAnswer => {
                        assert!(
                            opts.forward_on_no_answer,
                            "seed {seed}: NoAnswer without the rule"
                        );
                        forward_pending = true;
                    }
                    Action::PushAll => {
                        assert!(
                            opts.push_at.is_some(),
                            "seed {seed}: PushAll without push_at"
                        );
                    }
                    Action::Respond(Final::Branch { code, .. })
                    | Action::Respond(Final::Generated { code, .. }) => {
                        assert!(
                            !(200..300).contains(&final_code),
                            "seed {seed}: {code} after a 2xx"
                        );
                        finals += 1;
                        final_code = code;
                    }
                    Action::Forward { code, .. } if code >= 200 => {
                        if !(200..300).contains(&code) {
                            finals += 1;
                        }
                        // A 2xx may follow anything (RFC 3261 16.7 step 5: every 2xx
                        // to an INVITE goes upstream); a non-2xx never follows a 2xx.
                        if !(200..300).contains(&code) {
                            assert!(
                                !(200..300).contains(&final_code),
                                "seed {seed}: {code} after a 2xx"
                            );
                        }
                        final_code = code;
                    }
                    _ => {}
                }
            }
            assert!(finals <= 1, "seed {seed}: two non-2xx finals");
        }
        if f.all_done() && !f.is_parked() && !forward_pending && !f.is_forwarded() {
            assert!(f.is_answered(), "seed {seed}: all branches done, no answer");
        }
        // Whatever happened, the ring timeout (twice, with the no-answer rule) and
        // the end of any park settle the request once the forward is decided.
        if forward_pending {
            f.forward_failed();
        }
        let late = now + RING * 3 + Duration::from_secs(120);
        f.handle_timeout(late);
        for a in drain(&mut f) {
            if let Action::NoAnswer = a {
                f.forward_failed();
            }
        }
        f.handle_timeout(late + RING * 2);
        drain(&mut f);
        if f.all_done() || invite {
            assert!(f.is_answered(), "seed {seed}: never answered");
        }
    }
}

fn responds(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Respond(Final::Generated { code, .. }) => Some(*code),
            Action::Respond(Final::Branch { as_code, .. }) => Some(*as_code),
            _ => None,
        })
        .collect()
}

const PARK: Duration = Duration::from_secs(30);
const PUSH_AFTER: Duration = Duration::from_secs(3);

fn parked(t0: Instant, branches: usize, forward: bool) -> Fork {
    Fork::with_options(
        t0,
        branches,
        true,
        RING,
        ForkOptions {
            park_until: Some(t0 + PARK),
            push_at: Some(t0 + PUSH_AFTER),
            forward_on_no_answer: forward,
        },
    )
}

/// An INVITE with the no-answer rule and no push handling.
fn forwarding(t0: Instant, branches: usize) -> Fork {
    Fork::with_options(
        t0,
        branches,
        true,
        RING,
        ForkOptions {
            forward_on_no_answer: true,
            ..ForkOptions::default()
        },
    )
}

#[test]
fn a_parked_call_without_branches_waits_for_a_pushed_device_to_join() {
    let t0 = Instant::now();
    let mut f = parked(t0, 0, false);
    assert!(drain(&mut f).is_empty(), "no 480 while parked");
    assert!(f.is_parked());
    // No branch: no 3-second rule, only the park deadline.
    assert_eq!(f.poll_timeout(), Some(t0 + PARK));
    // A pushed device registers after 4 s and answers.
    let b = f.add_branch().unwrap();
    f.handle_response(t0 + Duration::from_secs(4), b, 180);
    f.handle_response(t0 + Duration::from_secs(6), b, 200);
    let a = drain(&mut f);
    assert_eq!(
        a,
        vec![
            Action::Forward {
                branch: 0,
                code: 180
            },
            Action::Forward {
                branch: 0,
                code: 200
            }
        ]
    );
    assert!(f.is_answered());
}

#[test]
fn the_park_ends_with_480_when_nobody_joined() {
    let t0 = Instant::now();
    let mut f = parked(t0, 0, false);
    f.handle_timeout(t0 + PARK - Duration::from_millis(1));
    assert!(drain(&mut f).is_empty());
    f.handle_timeout(t0 + PARK);
    assert_eq!(responds(&drain(&mut f)), vec![480]);
    assert_eq!(f.poll_timeout(), None);
}

#[test]
fn a_push_that_reached_nobody_unparks_at_once() {
    let t0 = Instant::now();
    let mut f = parked(t0, 0, false);
    f.unpark(t0);
    assert_eq!(responds(&drain(&mut f)), vec![480]);
    // With a ringing branch, unparking changes nothing until it answers.
    let mut f = parked(t0, 1, false);
    f.handle_response(t0, 0, 180);
    drain(&mut f);
    f.unpark(t0);
    assert!(drain(&mut f).is_empty());
    f.handle_response(t0, 0, 486);
    assert_eq!(responds(&drain(&mut f)), vec![486]);
}

#[test]
fn while_parked_a_busy_device_does_not_end_the_call_but_a_6xx_does() {
    let t0 = Instant::now();
    let mut f = parked(t0, 1, false);
    f.handle_response(t0, 0, 486);
    assert!(
        responds(&drain(&mut f)).is_empty(),
        "pushed devices may still join"
    );
    // Nobody joins: the 486 is the answer at the park deadline.
    f.handle_timeout(t0 + PARK);
    assert_eq!(responds(&drain(&mut f)), vec![486]);

    let mut f = parked(t0, 2, false);
    f.handle_response(t0, 0, 180);
    f.handle_response(t0, 1, 603);
    let a = drain(&mut f);
    assert!(a.contains(&Action::Forward {
        branch: 1,
        code: 603
    }));
    assert_eq!(cancels(&a), vec![(0, CancelReason::GlobalFailure(603))]);
    assert!(f.is_answered());
    assert!(f.add_branch().is_none());
}

#[test]
fn three_seconds_of_silence_ask_for_pushes_once() {
    let t0 = Instant::now();
    let mut f = parked(t0, 2, false);
    assert_eq!(f.poll_timeout(), Some(t0 + PUSH_AFTER));
    f.handle_timeout(t0 + PUSH_AFTER);
    assert_eq!(drain(&mut f), vec![Action::PushAll]);
    assert_eq!(f.poll_timeout(), Some(t0 + PARK));
    f.handle_timeout(t0 + PUSH_AFTER + Duration::from_secs(1));
    assert!(drain(&mut f).is_empty(), "asked once only");

    // Any response (even 100 Trying) before the deadline means the device is there.
    let mut f = parked(t0, 2, false);
    f.handle_response(t0 + Duration::from_millis(50), 1, 100);
    f.handle_timeout(t0 + PUSH_AFTER);
    assert!(drain(&mut f).is_empty());
}

#[test]
fn caller_cancel_while_parked_is_487_at_once() {
    let t0 = Instant::now();
    let mut f = parked(t0, 0, true);
    f.handle_cancel(t0 + Duration::from_secs(2));
    assert_eq!(responds(&drain(&mut f)), vec![487]);
    assert!(f.add_branch().is_none());
    assert!(!f.is_forwarded(), "a cancelled call is not forwarded");
}

#[test]
fn the_no_answer_rule_forwards_once_and_its_branch_decides() {
    let t0 = Instant::now();
    // Nobody joined during the park: NoAnswer instead of 480.
    let mut f = parked(t0, 0, true);
    f.handle_timeout(t0 + PARK);
    assert_eq!(drain(&mut f), vec![Action::NoAnswer]);
    assert!(f.is_forwarded());
    assert!(
        f.add_branch().is_none(),
        "late devices do not join a forwarded call"
    );
    let t1 = t0 + PARK;
    let vm = f.add_forward_branch(t1).unwrap();
    assert_eq!(f.poll_timeout(), Some(t1 + RING));
    f.handle_response(t1, vm, 200);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: vm,
            code: 200
        }]
    );

    // Ring timeout with devices ringing: they are cancelled, the call is forwarded;
    // their 487s do not end it, the target's 404 does (not the devices' 408/487).
    let mut f = forwarding(t0, 2);
    f.handle_response(t0, 0, 180);
    f.handle_response(t0, 1, 180);
    drain(&mut f);
    f.handle_timeout(t0 + RING);
    let a = drain(&mut f);
    assert_eq!(
        cancels(&a),
        vec![
            (0, CancelReason::RingTimeout),
            (1, CancelReason::RingTimeout)
        ]
    );
    assert!(a.contains(&Action::NoAnswer));
    assert!(responds(&a).is_empty());
    let vm = f.add_forward_branch(t0 + RING).unwrap();
    f.handle_response(t0 + RING, 0, 487);
    f.handle_response(t0 + RING, 1, 487);
    assert!(responds(&drain(&mut f)).is_empty());
    f.handle_response(t0 + RING, vm, 404);
    assert_eq!(responds(&drain(&mut f)), vec![404]);

    // A busy device is not "no answer": no forwarding.
    let mut f = forwarding(t0, 1);
    f.handle_response(t0, 0, 486);
    assert_eq!(responds(&drain(&mut f)), vec![486]);

    // The target cannot be reached: the caller gets what the rule replaced.
    let mut f = parked(t0, 0, true);
    f.unpark(t0);
    assert_eq!(drain(&mut f), vec![Action::NoAnswer]);
    f.forward_failed();
    assert_eq!(responds(&drain(&mut f)), vec![480]);
    assert!(f.is_answered());
}

#[test]
fn a_revoked_device_branch_is_cancelled_and_the_rest_still_decide() {
    let t0 = Instant::now();
    let mut f = Fork::new(t0, 3, true, RING);
    f.handle_response(t0, 0, 180);
    drain(&mut f);
    // Ringing: cancelled at once. Silent: cancelled once it sends a provisional.
    f.cancel_branch(t0, 0);
    f.cancel_branch(t0, 1);
    assert_eq!(
        cancels(&drain(&mut f)),
        vec![(0, CancelReason::DeviceRevoked)]
    );
    f.handle_response(t0, 1, 100);
    assert_eq!(
        cancels(&drain(&mut f)),
        vec![(1, CancelReason::DeviceRevoked)]
    );
    f.handle_response(t0, 0, 487);
    f.handle_response(t0, 1, 487);
    assert!(drain(&mut f)
        .iter()
        .all(|a| !matches!(a, Action::Respond(_))));
    // The third device answers: the call goes on.
    f.handle_response(t0, 2, 200);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: 2,
            code: 200
        }]
    );
    // Nothing to cancel once answered.
    f.cancel_branch(t0, 2);
    assert!(drain(&mut f).is_empty());
}

/// The push policy on a virtual clock: the first push parks the call, a push that
/// reached nobody lifts the park, the end tells the pushed devices (never the one
/// that answered), and a device pushed after the end hears of it too.
#[test]
fn push_policy_parks_unparks_and_tells_the_pushed_devices() {
    let t0 = Instant::now();
    // Nobody registered: parked while the first push is on its way.
    let mut f = parked(t0, 0, false);
    let mut p = PushPolicy::new(PARK);
    assert_eq!(
        p.start(vec![]),
        PushOrder {
            kind: CallPush::Incoming,
            to: PushTo::AllExcept(vec![])
        }
    );
    assert!(!p.settled());
    // It reached nobody: the call stops waiting and ends (480).
    assert_eq!(p.pushed(t0, vec![], &mut f), None);
    assert!(p.settled());
    assert!(!f.is_parked());
    f.handle_timeout(t0);
    assert_eq!(responds(&drain(&mut f)), vec![480]);
    assert_eq!(p.responded(), None, "nobody was pushed, nobody is told");

    // One device live, two pushed; the pushed one that registers answers.
    let mut f = parked(t0, 1, false);
    let mut p = PushPolicy::new(PARK);
    let _ = p.start(vec!["live".into()]);
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(p.pushed(t1, vec!["a".into(), "b".into()], &mut f), None);
    assert!(f.is_parked());
    // The live device declines: the call still waits (parked until t1 + PARK).
    f.handle_response(t1, 0, 486);
    f.handle_timeout(t0 + PARK);
    assert!(!drain(&mut f)
        .iter()
        .any(|a| matches!(a, Action::Respond(_))));
    // "a" registered and answers on the new branch: "b" gets call_cancelled.
    let b = f.add_branch().unwrap();
    f.handle_response(t1, b, 200);
    assert_eq!(
        drain(&mut f),
        vec![Action::Forward {
            branch: b,
            code: 200
        }]
    );
    assert_eq!(
        p.forwarded(200, Some("A"), false),
        Some(PushOrder {
            kind: CallPush::Cancelled,
            to: PushTo::Only(vec!["b".into()])
        })
    );
    assert_eq!(p.responded(), None, "told once");
    // A push still being queued at the end: that device hears of the end too.
    let _ = p.push_all();
    assert_eq!(
        p.pushed(t1, vec!["c".into()], &mut f),
        Some(PushOrder {
            kind: CallPush::Cancelled,
            to: PushTo::Only(vec!["c".into()])
        })
    );

    // Answered by the no-answer target: the pushed devices missed the call.
    let mut p = PushPolicy::new(PARK);
    let _ = p.start(vec![]);
    let mut f = parked(t0, 0, true);
    let _ = p.pushed(t0, vec!["a".into()], &mut f);
    assert_eq!(
        p.forwarded(200, None, true),
        Some(PushOrder {
            kind: CallPush::Missed,
            to: PushTo::Only(vec!["a".into()])
        })
    );
    // A provisional response ends nothing.
    let mut p = PushPolicy::new(PARK);
    assert_eq!(p.forwarded(180, Some("a"), false), None);
}

/// After silence the fork asks for pushes to everyone; the policy pushes the
/// devices not pushed yet and the new push parks the call again.
#[test]
fn push_policy_push_all_after_silence_skips_the_pushed() {
    let t0 = Instant::now();
    let mut f = parked(t0, 1, false);
    let mut p = PushPolicy::new(PARK);
    let _ = p.start(vec!["live".into()]);
    let _ = p.pushed(t0, vec!["a".into()], &mut f);
    f.handle_timeout(t0 + PUSH_AFTER);
    assert_eq!(drain(&mut f), vec![Action::PushAll]);
    assert_eq!(
        p.push_all(),
        PushOrder {
            kind: CallPush::Incoming,
            to: PushTo::AllExcept(vec!["a".into()])
        }
    );
    let t2 = t0 + PUSH_AFTER;
    let _ = p.pushed(t2, vec!["live".into()], &mut f);
    // Parked until t2 + PARK now, not t0 + PARK.
    f.handle_response(t2, 0, 480);
    f.handle_timeout(t0 + PARK);
    assert!(drain(&mut f).is_empty());
    f.handle_timeout(t2 + PARK);
    assert_eq!(responds(&drain(&mut f)), vec![480]);
}
