//! Socket and process settings shared by the load generator, the echo peer and the
//! forwarder.

use std::net::UdpSocket;

/// Receive buffer for the generator's sockets and the echo peer, so that a moment
/// of scheduling noise on the generator's core does not show up as server loss.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Ask for a larger receive buffer (capped by net.core.rmem_max; best effort).
pub fn set_rcvbuf(sock: &UdpSocket, bytes: usize) {
    let _ = nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBuf, &bytes);
}

/// Raise the open-file limit to its hard limit (one socket per allocation).
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
