//! Redaction of personal data (client and peer addresses) in logs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

static SHOW: AtomicBool = AtomicBool::new(false);

/// Show addresses in clear (the `log-addresses` debug switch).
pub fn set_show(show: bool) {
    SHOW.store(show, Ordering::Relaxed);
}

/// Displays an address, or a redacted form keeping only the family and port.
#[derive(Debug, Clone, Copy)]
pub struct Pii(pub SocketAddr);

impl fmt::Display for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SHOW.load(Ordering::Relaxed) {
            return write!(f, "{}", self.0);
        }
        match self.0.ip() {
            IpAddr::V4(_) => write!(f, "x.x.x.x:{}", self.0.port()),
            IpAddr::V6(_) => write!(f, "[x:x::x]:{}", self.0.port()),
        }
    }
}
