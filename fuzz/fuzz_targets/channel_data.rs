#![no_main]
//! ChannelData decoding, the client ChannelData path and the peer -> client path that
//! writes headers in place.

use libfuzzer_sys::fuzz_target;
use tandem_relay::stun::ChannelData;
use tandem_relay::turn::PEER_HEADROOM;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(cd) = ChannelData::decode(data) {
        assert!(cd.data.len() <= data.len().saturating_sub(4));
    }
    common::with_world(|w| {
        let _ = w
            .server
            .handle_client(w.now, w.tuple, data, &mut w.out, &mut w.ports);
        if let Some(id) = w.server.allocation_of(&w.tuple) {
            let n = data.len().min(65_535);
            w.peer_buf[PEER_HEADROOM..PEER_HEADROOM + n].copy_from_slice(&data[..n]);
            let peer = std::net::SocketAddr::from(([8, 8, 8, 8], 9));
            let _ = w.server.handle_peer(
                w.now,
                id,
                peer,
                &mut w.peer_buf,
                PEER_HEADROOM..PEER_HEADROOM + n,
            );
        }
    });
});
