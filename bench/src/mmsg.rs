//! Batched UDP receive and send (recvmmsg/sendmmsg) through `nix`'s safe wrappers,
//! IPv4 only (the harness runs on 127.0.0.1).

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};

/// Datagrams per batch.
pub const BATCH: usize = 32;
/// Largest datagram handled.
pub const MAX_DGRAM: usize = 2048;

/// Receive state: headers and buffers reused across calls.
pub struct RecvBatch {
    hdrs: MultiHeaders<SockaddrIn>,
    pub bufs: Vec<[u8; MAX_DGRAM]>,
    /// Length and source of each datagram of the last batch.
    pub meta: Vec<(usize, SocketAddrV4)>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("received", &self.meta.len())
            .finish()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            hdrs: MultiHeaders::preallocate(BATCH, None),
            bufs: vec![[0u8; MAX_DGRAM]; BATCH],
            meta: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// One non-blocking recvmmsg; returns how many datagrams arrived (0 when none).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<usize> {
        self.meta.clear();
        let mut it = self.bufs.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(it.next().expect("BATCH buffers"))]);
        match recvmmsg(
            fd.as_raw_fd(),
            &mut self.hdrs,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(res) => {
                for m in res {
                    if let Some(a) = m.address {
                        self.meta
                            .push((m.bytes, SocketAddrV4::new(a.ip(), a.port())));
                    }
                }
                Ok(self.meta.len())
            }
            Err(nix::errno::Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The payload of datagram `i` of the last batch.
    pub fn packet(&self, i: usize) -> (&[u8], SocketAddrV4) {
        let (n, a) = self.meta[i];
        (&self.bufs[i][..n.min(MAX_DGRAM)], a)
    }
}

/// Send queue for one socket: datagrams are copied in and flushed with sendmmsg.
pub struct SendBatch {
    hdrs: MultiHeaders<SockaddrIn>,
    bufs: Vec<[u8; MAX_DGRAM]>,
    lens: Vec<usize>,
    addrs: Vec<Option<SockaddrIn>>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("queued", &self.lens.len())
            .finish()
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            hdrs: MultiHeaders::preallocate(BATCH, None),
            bufs: vec![[0u8; MAX_DGRAM]; BATCH],
            lens: Vec::with_capacity(BATCH),
            addrs: Vec::with_capacity(BATCH),
        }
    }
}

impl SendBatch {
    pub fn is_full(&self) -> bool {
        self.lens.len() == BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Queue a datagram built by `fill` (which returns its length) for `to` (None on
    /// a connected socket). The caller flushes when [`Self::is_full`].
    pub fn push(&mut self, to: Option<SocketAddr>, fill: impl FnOnce(&mut [u8]) -> usize) {
        let i = self.lens.len();
        let n = fill(&mut self.bufs[i]);
        self.lens.push(n.min(MAX_DGRAM));
        self.addrs.push(to.and_then(|a| match a {
            SocketAddr::V4(v4) => Some(SockaddrIn::from(v4)),
            SocketAddr::V6(_) => None,
        }));
    }

    /// Send everything queued; datagrams the kernel refuses (full buffer) are dropped
    /// and counted in the return value.
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<usize> {
        let mut dropped = 0;
        let mut start = 0;
        while start < self.lens.len() {
            let (bufs, lens) = (&self.bufs, &self.lens);
            let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
                [IoSlice::new(&bufs[i][..lens.get(i).copied().unwrap_or(0)])]
            });
            match sendmmsg(
                fd.as_raw_fd(),
                &mut self.hdrs,
                iovs[start..lens.len()].iter(),
                &self.addrs[start..],
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(res) => {
                    let sent = res.count();
                    start += sent.max(1);
                    if sent == 0 {
                        dropped += 1;
                    }
                }
                Err(nix::errno::Errno::EAGAIN)
                | Err(nix::errno::Errno::ENOBUFS)
                | Err(nix::errno::Errno::ECONNREFUSED) => {
                    // Drop the head datagram and go on: an open-loop sender never waits.
                    dropped += 1;
                    start += 1;
                }
                Err(e) => {
                    self.lens.clear();
                    self.addrs.clear();
                    return Err(e.into());
                }
            }
        }
        self.lens.clear();
        self.addrs.clear();
        Ok(dropped)
    }
}
