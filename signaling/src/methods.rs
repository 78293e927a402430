//! The SIP methods RFC 3261 and its extensions define: one list for the service
//! (others get 501, RFC 3261 section 8.2.1) and for metrics labels (a method we do
//! not know never becomes a label, so an attacker cannot grow the label set).

/// Methods we know by name.
pub const KNOWN: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
];

/// Whether `method` is one of [`KNOWN`].
pub fn is_known(method: &str) -> bool {
    KNOWN.contains(&method)
}
