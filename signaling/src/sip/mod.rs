//! SIP stack: message model and parser, transports (UDP, TCP, TLS, WS, WSS), sans-IO
//! transactions (RFC 3261 section 17) and the endpoint that runs them for a
//! transaction user. Nothing here knows the registrar or the proxy.

pub mod config;
pub mod endpoint;
pub mod grammar;
pub mod message;
pub mod stun;
pub mod transaction;
pub mod transport;

use std::net::SocketAddr;

pub use config::SipConfig;
pub use endpoint::{
    check_tls_files, BoundEndpoint, Endpoint, Handled, Request, SipAddrs, SipError,
    TransactionUser, Upstream,
};
pub use message::{new_tag, Reply};
use transport::Transport;

/// Methods we handle, for Allow headers (405, 501, OPTIONS).
pub const ALLOW: &str = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, MESSAGE, UPDATE, INFO, PRACK";

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub transport: Transport,
    pub source: SocketAddr,
    /// Our address it arrived on.
    pub local: SocketAddr,
}
