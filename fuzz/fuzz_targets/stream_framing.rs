#![no_main]
//! The stream framer of TURN over TCP/TLS, and every frame it cuts into the TURN
//! server as a client on a stream.

use libfuzzer_sys::fuzz_target;
use tandem_relay::stun::framing::next_frame;
use tandem_relay::turn::{FiveTuple, Transport};

mod common;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    common::with_world(|w| {
        let tuple = FiveTuple {
            transport: Transport::Stream(1),
            ..w.tuple
        };
        let mut rest = data;
        while let Ok(Some(f)) = next_frame(rest, MAX) {
            assert!(f.len <= f.consumed && f.consumed - f.len < 4);
            assert!(f.consumed <= rest.len() && f.consumed <= MAX);
            assert_eq!(f.consumed % 4, 0);
            let _ = w
                .server
                .handle_client(w.now, tuple, &rest[..f.len], &mut w.out, &mut w.ports);
            rest = &rest[f.consumed..];
        }
    });
});
