//! SIP stack: message model and parser, transports (UDP, TCP, TLS), sans-IO
//! transactions (RFC 3261 section 17) and the server that drives the registrar.

pub mod config;
pub mod grammar;
pub mod message;
pub mod server;
pub mod transaction;
pub mod transport;

pub use config::SipConfig;
pub use server::{SipAddrs, SipError, SipServer};
