#![no_main]
//! STUN decoder, attribute readers, integrity checks, the ConnectionBind peek of the
//! stream driver (RFC 6062) and the TURN server's request path.

use libfuzzer_sys::fuzz_target;
use tandem_relay::stun::{address, integrity, Message};
use tandem_relay::turn::request::{password_algorithms, Request};
use tandem_relay::turn::tcp::connection_bind_id;

mod common;

fuzz_target!(|data: &[u8]| {
    let _ = connection_bind_id(data);
    if let Ok(m) = Message::decode(data) {
        for a in m.attributes() {
            let _ = address::decode_xor(a.value, m.transaction_id());
            if let Some(it) = password_algorithms(a.value) {
                it.for_each(drop);
            }
            let _ = integrity::verify_sha1(&m, &a, b"key");
            let _ = integrity::verify_sha256(&m, &a, b"key");
            let _ = integrity::verify_fingerprint(&m, &a);
        }
        let r = Request::parse(m);
        let _ = r.peers().count();
    }
    common::with_world(|w| {
        let _ = w
            .server
            .handle_client(w.now, w.tuple, data, &mut w.out, &mut w.ports);
    });
});
