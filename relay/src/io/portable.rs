//! The portable datapath: readiness through mio (epoll on Linux, kqueue elsewhere),
//! `recvmmsg`/`sendmmsg` batches of [`BATCH`] datagrams on Linux, one
//! `recv_from`/`send_to` per datagram elsewhere. Buffers are allocated once.
//!
//! Call media is many sockets with a few dozen datagrams a second each, so a wake-up
//! usually finds one datagram: what a turn costs must grow with the datagrams it
//! handles, not with the batch it could have handled. The `recvmmsg`/`sendmmsg`
//! headers are therefore built once, pointing at their buffers for good; a receive
//! resets only the name lengths the kernel overwrote, a send fills only the entries it
//! uses, and a turn walks only the readiness events it got. `recvmmsg` and `sendmmsg`
//! are called through `syscall(2)`: glibc's wrappers are thread cancellation points,
//! and switching asynchronous cancellation on and off around each call cost about as
//! much as the rest of the wrapper; the relay never cancels a thread.

use std::alloc::Layout;
use std::net::UdpSocket;
use std::ptr::NonNull;
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
    /// Sockets that were not drained in the last turn (edge-triggered readiness).
    again: Vec<SocketId>,
    again_next: Vec<SocketId>,
    io: Sockets,
}

/// The sockets and the batch memory: apart from `Portable` so that a turn can walk
/// its readiness events while it drains the sockets they name.
struct Sockets {
    sockets: Vec<Option<mio::net::UdpSocket>>,
    free: Vec<SocketId>,
    /// `BATCH` buffers of `BUF_SIZE` bytes. Every pointer to them (the kernel's, in
    /// `hdrs`, and the slices handed to the handler) is derived from this one.
    bufs: NonNull<u8>,
    #[cfg(target_os = "linux")]
    hdrs: NonNull<Headers>,
    /// The answers of the current batch: (index of the buffer, transmit).
    out: Vec<(usize, Transmit)>,
    stats: IoStats,
}

/// The headers `recvmmsg` and `sendmmsg` read, built once (see the module
/// documentation): entry `i` of each message array points at entry `i` of the name
/// and iovec arrays next to it, and receive iovec `i` at buffer `i`'s payload.
#[cfg(target_os = "linux")]
struct Headers {
    recv_names: [libc::sockaddr_in6; BATCH],
    recv_iovs: [libc::iovec; BATCH],
    recv_msgs: [libc::mmsghdr; BATCH],
    send_names: [libc::sockaddr_in6; BATCH],
    send_iovs: [libc::iovec; BATCH],
    send_msgs: [libc::mmsghdr; BATCH],
}

/// Room for a source address (`sockaddr_in6`).
#[cfg(target_os = "linux")]
const NAME_LEN: u32 = std::mem::size_of::<libc::sockaddr_in6>() as u32;

// SAFETY: the raw pointers (`bufs`, `hdrs` and the pointers inside `hdrs`) refer only
// to allocations this value owns, used only through `&mut self`; they move with it and
// are never shared between threads.
unsafe impl Send for Sockets {}

fn bufs_layout() -> Layout {
    Layout::from_size_align(BATCH * BUF_SIZE, 64).expect("constant layout")
}

impl Drop for Sockets {
    fn drop(&mut self) {
        // SAFETY: `bufs` was allocated in `Portable::new` with this layout, and no
        // pointer to it outlives `self`.
        unsafe { std::alloc::dealloc(self.bufs.as_ptr(), bufs_layout()) };
        #[cfg(target_os = "linux")]
        // SAFETY: `hdrs` came from `Box::leak` in `Portable::new` and is freed only here.
        drop(unsafe { Box::from_raw(self.hdrs.as_ptr()) });
    }
}

impl std::fmt::Debug for Portable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portable")
            .field("sockets", &(self.io.sockets.len() - self.io.free.len()))
            .finish_non_exhaustive()
    }
}

impl Portable {
    pub fn new() -> std::io::Result<Portable> {
        let poll = Poll::new()?;
        // SAFETY: the layout has a non-zero size.
        let bufs = NonNull::new(unsafe { std::alloc::alloc_zeroed(bufs_layout()) })
            .ok_or_else(|| std::io::Error::other("out of memory"))?;
        #[cfg(target_os = "linux")]
        let hdrs = {
            // SAFETY: all-zero is a valid value for these plain C structs.
            let h: Box<Headers> = Box::new(unsafe { std::mem::zeroed() });
            let h = NonNull::from(Box::leak(h));
            let p = h.as_ptr();
            for i in 0..BATCH {
                // SAFETY: `p` is the live allocation just made, reached only through
                // this pointer; `i * BUF_SIZE + HEADROOM + MAX_PAYLOAD` is within
                // `bufs` (BATCH * BUF_SIZE bytes).
                unsafe {
                    (*p).recv_iovs[i] = libc::iovec {
                        iov_base: bufs.as_ptr().add(i * BUF_SIZE + HEADROOM).cast(),
                        iov_len: MAX_PAYLOAD,
                    };
                    let m = &mut (*p).recv_msgs[i].msg_hdr;
                    m.msg_name = (&raw mut (*p).recv_names[i]).cast();
                    m.msg_namelen = NAME_LEN;
                    m.msg_iov = &raw mut (*p).recv_iovs[i];
                    m.msg_iovlen = 1;
                    let m = &mut (*p).send_msgs[i].msg_hdr;
                    m.msg_name = (&raw mut (*p).send_names[i]).cast();
                    m.msg_iov = &raw mut (*p).send_iovs[i];
                    m.msg_iovlen = 1;
                }
            }
            h
        };
        Ok(Portable {
            poll,
            events: Events::with_capacity(256),
            again: Vec::new(),
            again_next: Vec::new(),
            io: Sockets {
                sockets: Vec::new(),
                free: Vec::new(),
                bufs,
                #[cfg(target_os = "linux")]
                hdrs,
                out: Vec::with_capacity(BATCH),
                stats: IoStats::default(),
            },
        })
    }
}

impl Sockets {
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
        let h = self.hdrs.as_ptr();
        // SAFETY: `h` is the live header allocation, whose receive headers point at its
        // own names and iovecs and at `bufs` (see `Headers`); none of them is borrowed
        // during the call; the kernel writes at most `iov_len` (MAX_PAYLOAD) bytes at
        // offset HEADROOM of each buffer, inside its BUF_SIZE bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvmmsg,
                fd,
                (&raw mut (*h).recv_msgs).cast::<libc::mmsghdr>(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        if n <= 0 {
            return 0;
        }
        let n = (n as usize).min(BATCH);
        for i in 0..n {
            // SAFETY: `h` is live and nothing else refers to its headers now. The name
            // length the kernel overwrote is reset for the next call (nothing else in
            // a receive header changes: the kernel reads the iovecs, never writes them).
            let (len, flags, namelen) = unsafe {
                let m = &mut (*h).recv_msgs[i];
                let r = (
                    m.msg_len as usize,
                    m.msg_hdr.msg_flags,
                    m.msg_hdr.msg_namelen,
                );
                m.msg_hdr.msg_namelen = NAME_LEN;
                r
            };
            if flags & libc::MSG_TRUNC != 0 {
                self.stats.oversized += 1;
                continue;
            }
            // SAFETY: `recv_names[i]` is a plain struct of NAME_LEN bytes in the live
            // allocation; we view its first `namelen` (at most NAME_LEN) bytes.
            let name = unsafe {
                std::slice::from_raw_parts(
                    (&raw const (*h).recv_names[i]).cast::<u8>(),
                    namelen.min(NAME_LEN) as usize,
                )
            };
            let Some(from) = super::sockaddr_to(name) else {
                continue;
            };
            self.stats.received += 1;
            // SAFETY: buffer `i` is BUF_SIZE bytes inside `bufs`; the kernel is done
            // with it, and no other reference to it exists while the handler runs.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(i * BUF_SIZE), BUF_SIZE)
            };
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
            // SAFETY: buffer `i` is BUF_SIZE bytes inside `bufs`, and no other
            // reference to it exists while it is used here.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(i * BUF_SIZE), BUF_SIZE)
            };
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
            let h = self.hdrs.as_ptr();
            for (k, (i, t)) in self.out[start..end].iter().enumerate() {
                // SAFETY: `h` is the live header allocation and nothing else refers to
                // it now; `k < BATCH` (a batch queues at most BATCH answers, and the
                // array index is checked). `i < BATCH` and `t.range.end <= BUF_SIZE`
                // (checked when the answer was queued), so the iovec lies inside buffer
                // `i` of `bufs`. The entry's name and iovec pointers were set once.
                unsafe {
                    let namelen = super::sockaddr_from(&t.to, &mut (*h).send_names[k]);
                    (*h).send_iovs[k] = libc::iovec {
                        iov_base: self.bufs.as_ptr().add(i * BUF_SIZE + t.range.start).cast(),
                        iov_len: t.range.len(),
                    };
                    (*h).send_msgs[k].msg_hdr.msg_namelen = namelen;
                }
            }
            let mut done = 0;
            while done < run {
                // SAFETY: send headers `done..run` were filled above and point into
                // `hdrs` and `bufs`, which outlive the call and are not borrowed
                // during it; the kernel only reads them (and writes `msg_len`).
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_sendmmsg,
                        fd,
                        (&raw mut (*h).send_msgs).cast::<libc::mmsghdr>().add(done),
                        (run - done) as libc::c_uint,
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
            // SAFETY: `i < BATCH` and `t.range` lies inside BUF_SIZE (checked when the
            // answer was queued), so this is inside buffer `i` of `bufs`, which nothing
            // else refers to now.
            let data = unsafe {
                std::slice::from_raw_parts(
                    self.bufs.as_ptr().add(i * BUF_SIZE + t.range.start),
                    t.range.len(),
                )
            };
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
        let io = &mut self.io;
        let id = match io.free.pop() {
            Some(i) => i,
            None => {
                io.sockets.push(None);
                io.sockets.len() - 1
            }
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(id), Interest::READABLE)
        {
            io.free.push(id);
            return Err(e);
        }
        io.sockets[id] = Some(sock);
        // Datagrams may have arrived before registration.
        self.again.push(id);
        Ok(id)
    }

    fn remove(&mut self, id: SocketId) {
        if let Some(slot) = self.io.sockets.get_mut(id) {
            if let Some(mut s) = slot.take() {
                let _ = self.poll.registry().deregister(&mut s);
                self.io.free.push(id);
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
        // Readiness events first, then the sockets left undrained last turn; those
        // not drained now are kept in `again_next` for the next turn.
        for ev in self.events.iter() {
            let id = ev.token().0;
            let (n, more) = self.io.drain(id, handler);
            handled += n;
            if more && !self.again_next.contains(&id) {
                self.again_next.push(id);
            }
        }
        for k in 0..self.again.len() {
            let id = self.again[k];
            let (n, more) = self.io.drain(id, handler);
            handled += n;
            if more && !self.again_next.contains(&id) {
                self.again_next.push(id);
            }
        }
        self.again.clear();
        std::mem::swap(&mut self.again, &mut self.again_next);
        Ok(handled)
    }

    fn stats(&self) -> IoStats {
        self.io.stats
    }
}
