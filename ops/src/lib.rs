//! What both processes need to be operated, kept in one place so `tandem-relay` and
//! `tandem-signaling` report and log the same way:
//!
//! - [`process`]: the `process_*` metrics every Prometheus exporter is expected to
//!   have (CPU seconds, resident memory, open file descriptors, start time), read from
//!   `/proc/self` at scrape time;
//! - [`build`]: a `<prefix>_build_info{version="..."} 1` gauge;
//! - [`logging`]: `--log-format text|json` and the subscriber set-up.
//!
//! Nothing here is on a packet path: the collectors run once per scrape.

pub mod build;
pub mod logging;
pub mod process;
