//! RFC 3261 section 17 transactions on a virtual clock.

use std::time::{Duration, Instant};

use tandem_signaling::sip::transaction::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain<T>(f: impl FnMut() -> Option<T>) -> Vec<T> {
    std::iter::from_fn(f).collect()
}

/// Advances the clock timer by timer, returning (time since start, transmissions).
fn run_client_non_invite(
    t: &mut ClientNonInvite,
    start: Instant,
    until: Duration,
) -> Vec<(Duration, usize)> {
    let mut log = Vec::new();
    while let Some(at) = t.poll_timeout() {
        if at - start > until {
            break;
        }
        t.handle_timeout(at);
        let sent = drain(|| t.poll_transmit()).len();
        if sent > 0 {
            log.push((at - start, sent));
        }
    }
    log
}

#[test]
fn non_invite_client_timer_e_doubles_to_t2_then_f_times_out() {
    let t0 = Instant::now();
    let mut t = ClientNonInvite::new(t0, b"REGISTER".to_vec(), false, TimerConfig::default());
    assert_eq!(drain(|| t.poll_transmit()).len(), 1);
    let log = run_client_non_invite(&mut t, t0, Duration::from_secs(40));
    let times: Vec<u64> = log.iter().map(|(d, _)| d.as_millis() as u64).collect();
    // E: 0.5, 1.5, 3.5, 7.5, then every T2 = 4 s until F at 32 s.
    assert_eq!(&times[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
    assert!(times.iter().all(|&x| x < 32_000));
    let events = drain(|| t.poll_event());
    assert_eq!(events, vec![Event::Timeout, Event::Terminated]);
    assert_eq!(t.state(), State::Terminated);
}

#[test]
fn non_invite_client_proceeding_retransmits_at_t2_and_absorbs_final_retransmissions() {
    let t0 = Instant::now();
    let mut t = ClientNonInvite::new(t0, b"R".to_vec(), false, TimerConfig::default());
    drain(|| t.poll_transmit());
    t.handle_response(t0 + ms(100), 100);
    assert_eq!(t.state(), State::Proceeding);
    // Timer E armed at 500 ms fires; next interval is T2 in Proceeding.
    t.handle_timeout(t0 + ms(500));
    assert_eq!(drain(|| t.poll_transmit()).len(), 1);
    assert_eq!(
        t.poll_timeout(),
        Some(t0 + ms(500) + Duration::from_secs(4)).min(Some(t0 + ms(32_000)))
    );
    t.handle_response(t0 + ms(600), 200);
    assert_eq!(t.state(), State::Completed);
    t.handle_response(t0 + ms(700), 200); // retransmitted final: absorbed
    assert_eq!(
        drain(|| t.poll_event()),
        vec![Event::Provisional(100), Event::Final(200)]
    );
    // Timer K = T4 later it terminates; no retransmission after the final.
    t.handle_timeout(t0 + ms(600) + Duration::from_secs(5));
    assert!(drain(|| t.poll_transmit()).is_empty());
    assert_eq!(drain(|| t.poll_event()), vec![Event::Terminated]);
}

#[test]
fn non_invite_client_reliable_has_no_timer_e_and_no_k() {
    let t0 = Instant::now();
    let mut t = ClientNonInvite::new(t0, b"R".to_vec(), true, TimerConfig::default());
    drain(|| t.poll_transmit());
    assert_eq!(
        t.poll_timeout(),
        Some(t0 + Duration::from_secs(32)),
        "only F"
    );
    t.handle_response(t0 + ms(10), 404);
    assert_eq!(t.state(), State::Terminated);
}

#[test]
fn invite_client_timer_a_b_and_ack_for_errors() {
    let t0 = Instant::now();
    let mut t = ClientInvite::new(t0, b"INVITE".to_vec(), false, TimerConfig::default());
    drain(|| t.poll_transmit());
    // A doubles without the T2 cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5; B at 32 s.
    let mut times = Vec::new();
    while let Some(at) = t.poll_timeout() {
        t.handle_timeout(at);
        if !drain(|| t.poll_transmit()).is_empty() {
            times.push((at - t0).as_millis() as u64);
        }
    }
    assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(
        drain(|| t.poll_event()),
        vec![Event::Timeout, Event::Terminated]
    );

    // 486: ACK sent, retransmitted with each final retransmission, D = 32 s.
    let mut t = ClientInvite::new(t0, b"INVITE".to_vec(), false, TimerConfig::default());
    drain(|| t.poll_transmit());
    t.handle_response(t0 + ms(100), 180, None);
    t.handle_timeout(t0 + ms(500)); // A was cancelled by the 1xx
    assert!(drain(|| t.poll_transmit()).is_empty());
    t.handle_response(t0 + ms(200), 486, Some(b"ACK".to_vec()));
    assert_eq!(drain(|| t.poll_transmit()), vec![b"ACK".to_vec()]);
    t.handle_response(t0 + ms(300), 486, None);
    assert_eq!(drain(|| t.poll_transmit()), vec![b"ACK".to_vec()]);
    assert_eq!(
        t.poll_timeout(),
        Some(t0 + ms(200) + Duration::from_secs(32))
    );
    t.handle_timeout(t0 + ms(200) + Duration::from_secs(32));
    assert_eq!(
        drain(|| t.poll_event()),
        vec![
            Event::Provisional(180),
            Event::Final(486),
            Event::Terminated
        ]
    );

    // 2xx terminates at once (the TU handles its ACK).
    let mut t = ClientInvite::new(t0, b"INVITE".to_vec(), false, TimerConfig::default());
    t.handle_response(t0 + ms(50), 200, None);
    assert_eq!(t.state(), State::Terminated);
}

#[test]
fn non_invite_server_absorbs_and_replays_then_timer_j() {
    let t0 = Instant::now();
    let mut t = ServerNonInvite::new(false, TimerConfig::default());
    t.handle_request_retransmission(); // Trying: absorbed
    assert!(drain(|| t.poll_transmit()).is_empty());
    t.send_response(t0, 100, b"100".to_vec());
    t.handle_request_retransmission();
    assert_eq!(
        drain(|| t.poll_transmit()),
        vec![b"100".to_vec(), b"100".to_vec()]
    );
    t.send_response(t0 + ms(10), 200, b"200".to_vec());
    t.handle_request_retransmission();
    assert_eq!(
        drain(|| t.poll_transmit()),
        vec![b"200".to_vec(), b"200".to_vec()]
    );
    t.send_response(t0 + ms(20), 500, b"500".to_vec()); // ignored once Completed
    assert!(drain(|| t.poll_transmit()).is_empty());
    assert_eq!(
        t.poll_timeout(),
        Some(t0 + ms(10) + Duration::from_secs(32))
    );
    t.handle_timeout(t0 + Duration::from_secs(20));
    assert_eq!(t.state(), State::Completed);
    t.handle_timeout(t0 + ms(10) + Duration::from_secs(32));
    assert_eq!(t.state(), State::Terminated);

    let mut r = ServerNonInvite::new(true, TimerConfig::default());
    r.send_response(t0, 200, b"200".to_vec());
    assert_eq!(
        r.state(),
        State::Terminated,
        "J is zero on reliable transports"
    );
}

#[test]
fn invite_server_timer_g_h_and_i() {
    let t0 = Instant::now();
    let mut t = ServerInvite::new(false, TimerConfig::default());
    t.send_response(t0, 100, b"100".to_vec());
    t.handle_request_retransmission();
    assert_eq!(drain(|| t.poll_transmit()).len(), 2);
    t.send_response(t0, 486, b"486".to_vec());
    drain(|| t.poll_transmit());
    // G: 0.5, 1.5, 3.5, 7.5, then every 4 s; H at 32 s without ACK.
    let mut times = Vec::new();
    while let Some(at) = t.poll_timeout() {
        t.handle_timeout(at);
        if !drain(|| t.poll_transmit()).is_empty() {
            times.push((at - t0).as_millis() as u64);
        }
    }
    assert_eq!(&times[..5], &[500, 1500, 3500, 7500, 11500]);
    assert_eq!(*times.last().unwrap(), 31500);
    assert_eq!(
        drain(|| t.poll_event()),
        vec![Event::Timeout, Event::Terminated]
    );

    // With the ACK: Confirmed, G and H cancelled, I = T4 later terminated.
    let mut t = ServerInvite::new(false, TimerConfig::default());
    t.send_response(t0, 603, b"603".to_vec());
    drain(|| t.poll_transmit());
    t.handle_ack(t0 + ms(700));
    assert_eq!(t.state(), State::Confirmed);
    t.handle_request_retransmission(); // absorbed in Confirmed
    assert!(drain(|| t.poll_transmit()).is_empty());
    assert_eq!(
        t.poll_timeout(),
        Some(t0 + ms(700) + Duration::from_secs(5))
    );
    t.handle_timeout(t0 + ms(700) + Duration::from_secs(5));
    assert_eq!(t.state(), State::Terminated);

    // 2xx ends the server INVITE transaction (RFC 3261 17.2.1).
    let mut t = ServerInvite::new(false, TimerConfig::default());
    t.send_response(t0, 200, b"200".to_vec());
    assert_eq!(t.state(), State::Terminated);
}

/// A lossy virtual network: client and server non-INVITE transactions exchange a
/// request and its response while every other datagram is lost; the client still
/// completes and the server answers each retransmission from its state.
#[test]
fn lossy_network_non_invite_exchange_completes() {
    let t0 = Instant::now();
    let mut client = ClientNonInvite::new(t0, b"REQ".to_vec(), false, TimerConfig::default());
    let mut server: Option<ServerNonInvite> = None;
    let mut now = t0;
    let mut delivered = 0u32;
    let mut done = false;
    for _ in 0..200 {
        for pkt in drain(|| client.poll_transmit()) {
            delivered += 1;
            if delivered % 2 == 0 {
                continue; // lost
            }
            assert_eq!(pkt, b"REQ");
            match &mut server {
                None => {
                    let mut s = ServerNonInvite::new(false, TimerConfig::default());
                    s.send_response(now, 200, b"RESP".to_vec());
                    server = Some(s);
                }
                Some(s) => s.handle_request_retransmission(),
            }
        }
        if let Some(s) = &mut server {
            for (i, _) in drain(|| s.poll_transmit()).into_iter().enumerate() {
                if i == 0 && delivered < 3 {
                    continue; // the first response is lost too
                }
                client.handle_response(now, 200);
            }
        }
        if drain(|| client.poll_event()).contains(&Event::Final(200)) {
            done = true;
            break;
        }
        match client.poll_timeout() {
            Some(at) => {
                now = at;
                client.handle_timeout(now);
            }
            None => break,
        }
    }
    assert!(done, "client saw the final response despite losses");
    assert!(now - t0 < Duration::from_secs(8));
}
