#![no_main]
//! The control API's JSON bodies: `CreateSession` and `UpdateSession` from arbitrary
//! bytes, validation, and whatever validates applied to a media core (create, the
//! answer or a re-INVITE, again, delete), with a port allocator that sometimes runs
//! out. No panic, and every port opened is closed again.

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_control::{CreateSession, IceCredentials, LegRequest, StreamRequest, UpdateSession};
use tandem_relay::media::{Media, MediaConfig};

mod media_common;
use media_common::Ports;

fn ports_for(data: &[u8]) -> Ports {
    Ports {
        left: data.len().is_multiple_of(3).then_some(data.len() % 17),
        ..Ports::default()
    }
}

fn base() -> CreateSession {
    CreateSession {
        call_id: Some("fuzz@example.test".into()),
        caller: LegRequest {
            ice: Some(IceCredentials {
                ufrag: "CALR".into(),
                pwd: "callerpassword0123456789".into(),
            }),
            streams: vec![StreamRequest::default(), StreamRequest::default()],
            ..LegRequest::default()
        },
        callee: None,
        family: Default::default(),
        inactivity_timeout_secs: None,
        max_duration_secs: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    if let Ok(c) = serde_json::from_slice::<CreateSession>(data) {
        if c.validate().is_ok() {
            let mut m = Media::new(MediaConfig::default(), [1; 32]);
            let mut ports = ports_for(data);
            if let Ok((key, info)) = m.create(now, "s".into(), &c, &mut ports) {
                assert_eq!(info.caller.streams.len(), c.caller.streams.len());
                assert!(m.delete(now, key, &mut ports).is_some());
            }
            assert!(ports.open.is_empty(), "ports leaked");
        }
        // What the relay would echo back serializes.
        let _ = serde_json::to_vec(&c);
    }
    if let Ok(u) = serde_json::from_slice::<UpdateSession>(data) {
        if u.validate().is_ok() {
            let mut m = Media::new(MediaConfig::default(), [2; 32]);
            let mut ports = Ports::default();
            let (key, _) = m.create(now, "s".into(), &base(), &mut ports).unwrap();
            ports.left = ports_for(data).left;
            let _ = m.update(now, key, &u, &mut ports);
            // Again: a second answer is refused, a re-INVITE applies twice.
            let _ = m.update(now, key, &u, &mut ports);
            let _ = m.info(now, key);
            assert!(m.delete(now, key, &mut ports).is_some());
            assert!(ports.open.is_empty(), "ports leaked");
        }
        let _ = serde_json::to_vec(&u);
    }
});
