//! The datapath: receiving and sending batches of UDP datagrams on the listening and
//! relayed sockets, behind one small trait with two implementations.
//!
//! - [`uring`] (Linux): io_uring with a multishot `RecvMsg` per socket that draws
//!   from a provided-buffer ring, and `Send` submissions batched per turn (submitted
//!   with the next turn's wait: one `io_uring_enter` per turn). The
//!   ring owns the buffers; a datagram is handed to the caller in place and, when it
//!   is forwarded, sent from the same buffer.
//! - [`portable`]: readiness (epoll/kqueue through mio) with `recvmmsg`/`sendmmsg`
//!   batches on Linux and one `recv_from`/`send_to` per datagram elsewhere.
//!
//! Every received datagram is placed at offset [`HEADROOM`] of its buffer with at
//! least [`crate::turn::PEER_TAILROOM`] bytes after it, so the TURN core can write a
//! ChannelData or Data indication header in front of a peer datagram in place. The
//! handler answers with a [`Transmit`]: a sub-range of that same buffer to send from
//! one of the registered sockets. Nothing is allocated or copied per datagram.
#![allow(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::Duration;

#[doc(hidden)]
pub mod alloc_count;
pub mod portable;
#[cfg(target_os = "linux")]
pub mod uring;

/// Bytes in front of every received datagram (the core's [`crate::turn::PEER_HEADROOM`]).
pub const HEADROOM: usize = crate::turn::PEER_HEADROOM;
/// Largest datagram received; a larger one is dropped, never truncated.
pub const MAX_PAYLOAD: usize = 4096;
/// Size of one buffer: headroom, payload, tailroom (rounded up to 64 bytes).
pub const BUF_SIZE: usize = (HEADROOM + MAX_PAYLOAD + crate::turn::PEER_TAILROOM + 63) & !63;

/// A registered socket, as numbered by the datapath.
pub type SocketId = usize;

/// A datagram handed to the handler, in place in the datapath's buffer.
#[derive(Debug)]
pub struct Received<'a> {
    pub socket: SocketId,
    pub from: SocketAddr,
    /// The whole buffer: the datagram is `buf[payload]`, `payload.start == HEADROOM`.
    pub buf: &'a mut [u8],
    pub payload: Range<usize>,
}

/// What to send in answer to a received datagram: `buf[range]` of the same buffer,
/// from `socket` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub range: Range<usize>,
}

/// Counters kept by a datapath.
#[derive(Debug, Clone, Copy, Default)]
pub struct IoStats {
    pub received: u64,
    pub sent: u64,
    /// Datagrams larger than [`MAX_PAYLOAD`], dropped.
    pub oversized: u64,
    /// Sends the kernel refused (the datagram is dropped, as UDP would).
    pub send_errors: u64,
    /// Datagrams dropped because no buffer was free.
    pub no_buffer: u64,
}

/// One worker's datapath.
pub trait Datapath: Send {
    /// Which implementation this is.
    fn name(&self) -> &'static str;
    /// Start receiving on `sock` (made non-blocking here).
    fn add(&mut self, sock: UdpSocket) -> std::io::Result<SocketId>;
    /// Stop receiving on `id` and close it (possibly once the kernel lets go of it).
    fn remove(&mut self, id: SocketId);
    /// Wait up to `timeout` for datagrams, hand each one to `handler` in place, and
    /// send (batched) what the handler answers. Returns the number handled.
    ///
    /// An answer leaves before this call returns or at the start of the next call
    /// (io_uring submits a turn's sends with the next turn's wait); [`Self::flush`]
    /// sends it at once.
    fn turn(
        &mut self,
        timeout: Duration,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> std::io::Result<usize>;
    /// Hand the kernel every answer queued by the last turn now, without waiting.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn stats(&self) -> IoStats;
}

/// Which datapath to run (`io` key, `--io`, `TANDEM_IO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    /// io_uring when the kernel allows it, else portable.
    #[default]
    Auto,
    Uring,
    Portable,
}

/// Why a datapath could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    #[error("io_uring is not available: {0}")]
    UringUnavailable(String),
    #[error("cannot create the datapath: {0}")]
    Create(#[from] std::io::Error),
}

/// Which implementation runs, and why.
#[derive(Debug, Clone)]
pub struct Choice {
    pub mode: IoMode,
    pub reason: String,
}

/// Decide which implementation `mode` means on this machine. `Uring` fails when the
/// kernel does not allow io_uring; `Auto` falls back to portable with the reason.
pub fn choose(mode: IoMode) -> Result<Choice, IoError> {
    match mode {
        IoMode::Portable => Ok(Choice {
            mode: IoMode::Portable,
            reason: "requested".into(),
        }),
        IoMode::Uring => match probe_uring() {
            Ok(()) => Ok(Choice {
                mode: IoMode::Uring,
                reason: "requested; the kernel supports it".into(),
            }),
            Err(e) => Err(IoError::UringUnavailable(e)),
        },
        IoMode::Auto => Ok(match probe_uring() {
            Ok(()) => Choice {
                mode: IoMode::Uring,
                reason: "auto: the kernel supports multishot RecvMsg with a buffer ring".into(),
            },
            Err(e) => Choice {
                mode: IoMode::Portable,
                reason: format!("auto: io_uring unavailable ({e})"),
            },
        }),
    }
}

fn probe_uring() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        // On a thread of its own: when a ring closes, the kernel queues clean-up work
        // to every thread that submitted to it, which interrupts a blocking call on
        // that thread (EINTR). The probe's thread is gone by then.
        std::thread::Builder::new()
            .name("io-uring-probe".into())
            .spawn(uring::probe)
            .map_err(|e| format!("probe thread: {e}"))?
            .join()
            .map_err(|_| "probe panicked".to_string())?
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("not Linux".into())
    }
}

/// Create a datapath of the chosen implementation (`mode` is Uring or Portable).
pub fn create(mode: IoMode) -> Result<Box<dyn Datapath>, IoError> {
    match mode {
        #[cfg(target_os = "linux")]
        IoMode::Uring => Ok(Box::new(uring::Uring::new()?)),
        #[cfg(not(target_os = "linux"))]
        IoMode::Uring => Err(IoError::UringUnavailable("not Linux".into())),
        IoMode::Auto | IoMode::Portable => Ok(Box::new(portable::Portable::new()?)),
    }
}

/// A socket address as the kernel wants it.
#[cfg(target_os = "linux")]
pub(crate) fn sockaddr_from(addr: &SocketAddr, storage: &mut libc::sockaddr_in6) -> u32 {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in (16 bytes) fits in sockaddr_in6 (28 bytes), both are
            // plain C structs, and the write is unaligned-safe.
            unsafe {
                std::ptr::write_unaligned(
                    (storage as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            std::mem::size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            *storage = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            std::mem::size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

/// Decode a socket address the kernel wrote (`bytes` are the sockaddr's bytes).
#[cfg(target_os = "linux")]
pub(crate) fn sockaddr_to(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    let port = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(bytes.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip.into(),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["127.0.0.1:3478", "[::1]:5349", "[fe80::1%2]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let n = sockaddr_from(&a, &mut s) as usize;
            // SAFETY: `s` is a plain C struct of at least `n` bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts((&s as *const libc::sockaddr_in6).cast::<u8>(), n)
            };
            assert_eq!(sockaddr_to(bytes), Some(a));
        }
        assert_eq!(sockaddr_to(&[0; 3]), None);
    }
}
