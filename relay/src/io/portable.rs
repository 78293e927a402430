//! The portable datapath: readiness through mio (epoll on Linux, kqueue elsewhere),
//! `recvmmsg`/`sendmmsg` batches of [`BATCH`] datagrams on Linux, one
//! `recv_from`/`send_to` per datagram elsewhere. Buffers are allocated once.

use std::net::UdpSocket;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use super::{Datapath, IoStats, Received, SocketId, Transmit, BUF_SIZE, HEADROOM, MAX_PAYLOAD};

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 32;
/// Batches read from one socket per turn before the others get their turn.
const BATCHES_PER_SOCKET: usize = 8;

/// See the module documentation.
pub struct Portable {
    poll: Poll,
    events: Events,
    sockets: Vec<Option<mio::net::UdpSocket>>,
    free: Vec<SocketId>,
    /// Sockets that were not drained in the last turn (edge-triggered readiness).
    again: Vec<SocketId>,
    again_next: Vec<SocketId>,
    /// `BATCH` buffers of `BUF_SIZE` bytes.
    bufs: Vec<u8>,
    /// The answers of the current batch: (index of the buffer, transmit).
    out: Vec<(usize, Transmit)>,
    stats: IoStats,
}

impl std::fmt::Debug for Portable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portable")
            .field("sockets", &(self.sockets.len() - self.free.len()))
            .finish_non_exhaustive()
    }
}

impl Portable {
    pub fn new() -> std::io::Result<Portable> {
        Ok(Portable {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            sockets: Vec::new(),
            free: Vec::new(),
            again: Vec::new(),
            again_next: Vec::new(),
            bufs: vec![0u8; BATCH * BUF_SIZE],
            out: Vec::with_capacity(BATCH),
            stats: IoStats::default(),
        })
    }

    /// Read and handle up to `BATCHES_PER_SOCKET` batches from `id`. Returns the
    /// number handled and whether the socket may still have datagrams queued.
    fn drain(
        &mut self,
        id: SocketId,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> (usize, bool) {
        let mut handled = 0;
        for _ in 0..BATCHES_PER_SOCKET {
            let n = self.recv_batch(id, handler);
            handled += n;
            self.flush();
            if n < BATCH {
                return (handled, false);
            }
        }
        (handled, true)
    }

    #[cfg(target_os = "linux")]
    fn recv_batch(
        &mut self,
        id: SocketId,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> usize {
        use std::os::fd::AsRawFd;
        let Some(Some(sock)) = self.sockets.get(id) else {
            return 0;
        };
        let fd = sock.as_raw_fd();
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut names: [libc::sockaddr_in6; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: `i * BUF_SIZE + HEADROOM + MAX_PAYLOAD` is within `bufs`
            // (BATCH * BUF_SIZE bytes), so the pointer stays in the allocation.
            iovs[i].iov_base = unsafe { base.add(i * BUF_SIZE + HEADROOM) }.cast();
            iovs[i].iov_len = MAX_PAYLOAD;
            msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in6).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH valid headers whose name and iovec pointers point
        // into `names`, `iovs` and `bufs`, all alive and not otherwise borrowed for the
        // duration of the call; the kernel writes at most `iov_len` bytes per buffer.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        let n = n as usize;
        for i in 0..n.min(BATCH) {
            let len = msgs[i].msg_len as usize;
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.oversized += 1;
                continue;
            }
            let namelen = (msgs[i].msg_hdr.msg_namelen as usize).min(28);
            // SAFETY: `names[i]` is a plain struct of 28 bytes; we view its first
            // `namelen` (at most 28) bytes.
            let name = unsafe {
                std::slice::from_raw_parts(
                    (&names[i] as *const libc::sockaddr_in6).cast::<u8>(),
                    namelen,
                )
            };
            let Some(from) = super::sockaddr_to(name) else {
                continue;
            };
            self.stats.received += 1;
            let buf = &mut self.bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE];
            if let Some(t) = handler(Received {
                socket: id,
                from,
                buf,
                payload: HEADROOM..HEADROOM + len,
            }) {
                if t.range.end <= BUF_SIZE && t.range.start <= t.range.end {
                    self.out.push((i, t));
                }
            }
        }
        n
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_batch(
        &mut self,
        id: SocketId,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> usize {
        let mut n = 0;
        while n < BATCH {
            let Some(Some(sock)) = self.sockets.get(id) else {
                return n;
            };
            let i = n;
            let buf = &mut self.bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE];
            // One byte more than the largest datagram tells a truncated one apart.
            let (len, from) = match sock.recv_from(&mut buf[HEADROOM..HEADROOM + MAX_PAYLOAD + 1]) {
                Ok(x) => x,
                Err(_) => return n,
            };
            n += 1;
            if len > MAX_PAYLOAD {
                self.stats.oversized += 1;
                continue;
            }
            self.stats.received += 1;
            if let Some(t) = handler(Received {
                socket: id,
                from,
                buf,
                payload: HEADROOM..HEADROOM + len,
            }) {
                if t.range.end <= BUF_SIZE && t.range.start <= t.range.end {
                    self.out.push((i, t));
                }
            }
        }
        n
    }

    /// Send the answers of the batch: one `sendmmsg` per run of answers from the same
    /// socket.
    #[cfg(target_os = "linux")]
    fn flush(&mut self) {
        use std::os::fd::AsRawFd;
        let mut start = 0;
        while start < self.out.len() {
            let sock_id = self.out[start].1.socket;
            let mut end = start + 1;
            while end < self.out.len() && self.out[end].1.socket == sock_id {
                end += 1;
            }
            let run = end - start;
            let Some(Some(sock)) = self.sockets.get(sock_id) else {
                self.stats.send_errors += run as u64;
                start = end;
                continue;
            };
            let fd = sock.as_raw_fd();
            // SAFETY: all-zero is a valid value for these plain C structs.
            let mut names: [libc::sockaddr_in6; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let base = self.bufs.as_mut_ptr();
            for (k, (i, t)) in self.out[start..end].iter().enumerate() {
                let namelen = super::sockaddr_from(&t.to, &mut names[k]);
                // SAFETY: `i < BATCH` and `t.range.end <= BUF_SIZE` (checked when the
                // answer was queued), so the range lies inside buffer `i` of `bufs`.
                iovs[k].iov_base = unsafe { base.add(i * BUF_SIZE + t.range.start) }.cast();
                iovs[k].iov_len = t.range.len();
                msgs[k].msg_hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_in6).cast();
                msgs[k].msg_hdr.msg_namelen = namelen;
                msgs[k].msg_hdr.msg_iov = &mut iovs[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
            }
            let mut done = 0;
            while done < run {
                // SAFETY: `msgs[done..run]` are valid headers pointing into `names`,
                // `iovs` and `bufs`, which outlive the call; the kernel only reads them.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        msgs.as_mut_ptr().add(done),
                        (run - done) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    // The first datagram of the rest failed (full buffer, ICMP error
                    // reported late, EMSGSIZE with DF): drop it, as UDP would.
                    self.stats.send_errors += 1;
                    done += 1;
                } else {
                    self.stats.sent += r as u64;
                    done += r as usize;
                }
            }
            start = end;
        }
        self.out.clear();
    }

    #[cfg(not(target_os = "linux"))]
    fn flush(&mut self) {
        for (i, t) in &self.out {
            let Some(Some(sock)) = self.sockets.get(t.socket) else {
                self.stats.send_errors += 1;
                continue;
            };
            let data = &self.bufs[i * BUF_SIZE + t.range.start..i * BUF_SIZE + t.range.end];
            match sock.send_to(data, t.to) {
                Ok(_) => self.stats.sent += 1,
                Err(_) => self.stats.send_errors += 1,
            }
        }
        self.out.clear();
    }
}

impl Datapath for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn add(&mut self, sock: UdpSocket) -> std::io::Result<SocketId> {
        sock.set_nonblocking(true)?;
        let mut sock = mio::net::UdpSocket::from_std(sock);
        let id = match self.free.pop() {
            Some(i) => i,
            None => {
                self.sockets.push(None);
                self.sockets.len() - 1
            }
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(id), Interest::READABLE)
        {
            self.free.push(id);
            return Err(e);
        }
        self.sockets[id] = Some(sock);
        // Datagrams may have arrived before registration.
        self.again.push(id);
        Ok(id)
    }

    fn remove(&mut self, id: SocketId) {
        if let Some(slot) = self.sockets.get_mut(id) {
            if let Some(mut s) = slot.take() {
                let _ = self.poll.registry().deregister(&mut s);
                self.free.push(id);
            }
        }
    }

    fn turn(
        &mut self,
        timeout: Duration,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> std::io::Result<usize> {
        let timeout = if self.again.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut handled = 0;
        let mut again = std::mem::take(&mut self.again);
        let mut next = std::mem::take(&mut self.again_next);
        next.clear();
        // Readiness events first (their ids are copied out: `drain` needs `&mut self`).
        let ready: [Option<SocketId>; 256] = {
            let mut r = [None; 256];
            for (slot, ev) in r.iter_mut().zip(self.events.iter()) {
                *slot = Some(ev.token().0);
            }
            r
        };
        for id in ready.into_iter().flatten().chain(again.drain(..)) {
            let (n, more) = self.drain(id, handler);
            handled += n;
            if more && !next.contains(&id) {
                next.push(id);
            }
        }
        self.again = next;
        self.again_next = again;
        Ok(handled)
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}
