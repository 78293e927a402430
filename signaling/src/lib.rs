//! Tandem signaling: SIP registrar and forking proxy for multi-device accounts.
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

pub mod model;
pub mod number;
pub mod registrar;
pub mod sip;
pub mod store;

static LOG_PII: AtomicBool = AtomicBool::new(false);

/// Whether logs may show personal data (phone numbers, SIP URIs, addresses).
/// Off unless the operator turns it on for debugging.
pub fn log_pii() -> bool {
    LOG_PII.load(Ordering::Relaxed)
}

/// Turns personal data in logs on or off (process-wide).
pub fn set_log_pii(on: bool) {
    LOG_PII.store(on, Ordering::Relaxed);
}
