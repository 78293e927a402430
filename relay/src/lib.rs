//! Tandem relay: STUN/TURN server and media relay.
//!
//! - [`stun`]: the STUN/TURN wire format (borrowing decoder, encoder into caller buffers).
//! - [`turn`]: the sans-IO TURN server core.
//! - [`media`]: the sans-IO media core (sessions for calls placed by signaling).
//! - [`driver`]: a portable tokio driver that runs the core on UDP sockets.
//! - [`control`]: the HTTP control API through which signaling places media sessions.
//! - [`config`]: configuration file, flags and environment.
//! - [`cli`]: the binary's flags and how they override the configuration.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod driver;
pub mod io;
pub mod media;
pub mod pii;
pub mod stun;
pub mod turn;

pub use config::Config;
pub use driver::{run, Relay};
