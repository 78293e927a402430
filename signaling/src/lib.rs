//! Tandem signaling: SIP registrar and forking proxy for multi-device accounts.
#![deny(unsafe_code)]

pub mod model;
pub mod registrar;
pub mod sip;
