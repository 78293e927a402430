//! The io_uring datapath (Linux): one ring per worker, no SQPOLL.
//!
//! Each socket has one multishot `RecvMsg` that draws buffers from a provided-buffer
//! ring of [`NBUF`] buffers of [`BUF_SIZE`] bytes. The kernel writes each datagram as
//! `io_uring_recvmsg_out` (16 bytes), the source address (room for `NAME_LEN` (32)
//! bytes) and the payload, so the payload starts at exactly [`HEADROOM`]: the header
//! and address are read out first, and that space becomes the headroom the TURN core
//! writes its ChannelData or Data indication header into. An answer is sent with a
//! `Send` (sendto: buffer and destination address, no `msghdr` to copy in) from the
//! same buffer, which goes back to the buffer ring when the send completes.
//!
//! What a turn costs is mostly how often it enters the kernel, so:
//! - The ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them
//!   (6.1), else `COOP_TASKRUN`: work that a datagram's arrival queues for the ring
//!   runs when the worker waits for completions, not by interrupting it like a signal.
//! - Sends carry `MSG_DONTWAIT`, so each completes (or fails as UDP would, when the
//!   socket buffer is full) inline while it is submitted, never parked on a poll.
//! - The sends a turn produces are not submitted at its end but by the next turn's one
//!   `io_uring_enter`, which submits them and waits for one more completion than it
//!   submitted sends: their own completions, posted inline, do not end the wait, a
//!   datagram (or the timeout) does. A busy worker thus enters the kernel once per turn,
//!   with every send of the previous turn and every receive of the next one.
//! - Buffers given back are published to the kernel once per turn (one release store
//!   of the buffer ring's tail).

use std::alloc::Layout;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring, Probe};

use super::{Datapath, IoStats, Received, SocketId, Transmit, BUF_SIZE, HEADROOM, MAX_PAYLOAD};

/// Buffers in the provided-buffer ring (a power of two).
pub const NBUF: usize = 512;
/// Room for the source address in front of the payload: `io_uring_recvmsg_out` (16)
/// plus this puts the payload at [`HEADROOM`].
const NAME_LEN: usize = HEADROOM - 16;
/// Buffer group id of the ring.
const BGID: u16 = 0;
/// Submission queue entries.
const ENTRIES: u32 = 1024;

const KIND_RECV: u64 = 0;
const KIND_SEND: u64 = 1;
const KIND_CANCEL: u64 = 2;

fn recv_data(id: SocketId, gen: u32) -> u64 {
    (KIND_RECV << 62) | ((id as u64 & 0x3fff_ffff) << 32) | u64::from(gen)
}

fn send_data(slot: usize) -> u64 {
    (KIND_SEND << 62) | slot as u64
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// The multishot receive is in flight.
    Armed,
    /// Removed; the socket stays open until the receive's last completion.
    Closing,
}

struct Slot {
    sock: Option<UdpSocket>,
    gen: u32,
    state: State,
}

/// What one in-flight `Send` points at; kept in a boxed slice so the address stays
/// fixed while the kernel reads it.
struct SendSlot {
    name: libc::sockaddr_in6,
    bid: u16,
}

/// See the module documentation.
pub struct Uring {
    ring: IoUring,
    /// `NBUF * BUF_SIZE` bytes, handed to the kernel through the buffer ring.
    bufs: NonNull<u8>,
    /// The buffer ring: `NBUF` entries, page aligned.
    br: NonNull<BufRingEntry>,
    br_tail: u16,
    /// Whether `br_tail` moved since it was last published to the kernel.
    br_dirty: bool,
    /// The `msghdr` every multishot receive was submitted with (only the name and
    /// control lengths matter); boxed so its address is stable.
    recv_hdr: Box<libc::msghdr>,
    sockets: Vec<Slot>,
    free: Vec<SocketId>,
    sends: Box<[SendSlot]>,
    free_sends: Vec<usize>,
    /// Operations submitted whose last completion has not been seen.
    inflight: usize,
    /// Sends queued (possibly already submitted) since the last wait: each posts its
    /// completion inline while it is submitted, so the wait asks for one more.
    unwaited_sends: usize,
    /// How the ring was set up (for the log).
    setup: &'static str,
    /// Completions copied out of the queue, a batch at a time; kept here so that a
    /// turn does not zero 512 bytes of stack for it twice (the last, empty, batch
    /// included) when it finds one datagram.
    cq_batch: [(u64, i32, u32); CQ_BATCH],
    stats: IoStats,
}

/// Completions copied out of the queue at a time.
const CQ_BATCH: usize = 32;

// SAFETY: the raw pointers are owned allocations used only through `&mut self`; the
// ring and buffers move with the value and are never shared between threads.
unsafe impl Send for Uring {}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("sockets", &(self.sockets.len() - self.free.len()))
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

fn bufs_layout() -> Layout {
    Layout::from_size_align(NBUF * BUF_SIZE, 64).expect("constant layout")
}

fn ring_layout() -> Layout {
    Layout::from_size_align(NBUF * std::mem::size_of::<BufRingEntry>(), 4096)
        .expect("constant layout")
}

impl Uring {
    pub fn new() -> std::io::Result<Uring> {
        // Deferred task work (6.1) first, then cooperative task work (5.19), then plain.
        let (ring, setup) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(ENTRIES)
        {
            Ok(r) => (r, "single-issuer, defer-taskrun"),
            Err(_) => match IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(ENTRIES)
            {
                Ok(r) => (r, "coop-taskrun"),
                Err(_) => (IoUring::builder().build(ENTRIES)?, "plain"),
            },
        };
        if !ring.params().is_feature_ext_arg() {
            return Err(std::io::Error::other(
                "io_uring lacks EXT_ARG (kernel < 5.11)",
            ));
        }
        // SAFETY: the layouts have non-zero size.
        let bufs = NonNull::new(unsafe { std::alloc::alloc_zeroed(bufs_layout()) })
            .ok_or_else(|| std::io::Error::other("out of memory"))?;
        // SAFETY: as above.
        let br = match NonNull::new(unsafe { std::alloc::alloc_zeroed(ring_layout()) }) {
            Some(p) => p.cast::<BufRingEntry>(),
            None => {
                // SAFETY: `bufs` was allocated above with this layout.
                unsafe { std::alloc::dealloc(bufs.as_ptr(), bufs_layout()) };
                return Err(std::io::Error::other("out of memory"));
            }
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as u32;
        let sends = (0..NBUF)
            .map(|_| SendSlot {
                // SAFETY: all-zero is a valid value for this plain C struct.
                name: unsafe { std::mem::zeroed() },
                bid: 0,
            })
            .collect();
        let mut u = Uring {
            ring,
            bufs,
            br,
            br_tail: 0,
            br_dirty: false,
            recv_hdr,
            sockets: Vec::new(),
            free: Vec::new(),
            sends,
            free_sends: (0..NBUF).rev().collect(),
            inflight: 0,
            unwaited_sends: 0,
            setup,
            cq_batch: [(0, 0, 0); CQ_BATCH],
            stats: IoStats::default(),
        };
        // SAFETY: `br` is a page-aligned, zeroed allocation of NBUF entries that lives
        // until `Drop`, which unregisters it before freeing.
        unsafe {
            u.ring.submitter().register_buf_ring_with_flags(
                u.br.as_ptr() as u64,
                NBUF as u16,
                BGID,
                0,
            )?
        };
        for bid in 0..NBUF as u16 {
            u.give_back(bid);
        }
        u.publish_buffers();
        tracing::debug!(setup = u.setup, "io_uring ring");
        Ok(u)
    }

    /// How the ring was set up: `single-issuer, defer-taskrun`, `coop-taskrun` or
    /// `plain`, depending on what the kernel allows.
    pub fn setup(&self) -> &'static str {
        self.setup
    }

    /// Return buffer `bid` to the buffer ring; the kernel sees it once
    /// [`Self::publish_buffers`] runs (before every submission).
    fn give_back(&mut self, bid: u16) {
        let idx = usize::from(self.br_tail) & (NBUF - 1);
        // SAFETY: `idx < NBUF`, so the entry is inside the ring allocation. The kernel
        // reads only entries between its head and the published tail; this one is at
        // the tail, not yet published, so nobody else reads it while it is written.
        // `set_*` write only addr, len and bid, never the tail that overlays entry 0.
        unsafe {
            let e = &mut *self.br.as_ptr().add(idx);
            e.set_addr(self.bufs.as_ptr().add(usize::from(bid) * BUF_SIZE) as u64);
            e.set_len((HEADROOM + MAX_PAYLOAD) as u32);
            e.set_bid(bid);
        }
        self.br_tail = self.br_tail.wrapping_add(1);
        self.br_dirty = true;
    }

    /// Publish the buffers given back since the last call (one store of the tail).
    fn publish_buffers(&mut self) {
        if !self.br_dirty {
            return;
        }
        self.br_dirty = false;
        // SAFETY: the tail field lies in entry 0 of the ring allocation and is 2-byte
        // aligned; the kernel reads it with acquire semantics, so it is accessed here
        // only atomically, and the release store publishes the entries written before.
        unsafe {
            let tail = BufRingEntry::tail(self.br.as_ptr()) as *const AtomicU16;
            (*tail).store(self.br_tail, Ordering::Release);
        }
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: every entry pushed points only at memory that outlives the
            // operation: the boxed `recv_hdr`, the boxed send slots (freed for reuse
            // only after their completion) and the buffers (returned only after use).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.publish_buffers();
            self.ring.submit()?;
        }
    }

    fn arm(&mut self, id: SocketId) -> std::io::Result<()> {
        let slot = &self.sockets[id];
        let Some(sock) = &slot.sock else {
            return Ok(());
        };
        let e = opcode::RecvMsgMulti::new(Fd(sock.as_raw_fd()), &*self.recv_hdr, BGID)
            .build()
            .user_data(recv_data(id, slot.gen));
        self.push(e)?;
        self.inflight += 1;
        Ok(())
    }

    fn close_slot(&mut self, id: SocketId) {
        if let Some(s) = self.sockets.get_mut(id) {
            if s.sock.take().is_some() {
                s.gen = s.gen.wrapping_add(1);
                self.free.push(id);
            }
        }
    }

    /// Queue a send of `buf[range]` of buffer `bid`; the buffer goes back on completion.
    fn queue_send(&mut self, bid: u16, t: &Transmit) {
        let fd = match self.sockets.get(t.socket) {
            Some(Slot {
                sock: Some(s),
                state: State::Armed,
                ..
            }) => s.as_raw_fd(),
            _ => {
                self.stats.send_errors += 1;
                self.give_back(bid);
                return;
            }
        };
        let Some(k) = self.free_sends.pop() else {
            // Cannot happen: there is a send slot per buffer.
            self.stats.no_buffer += 1;
            self.give_back(bid);
            return;
        };
        let s = &mut self.sends[k];
        let namelen = super::sockaddr_from(&t.to, &mut s.name);
        s.bid = bid;
        // SAFETY: `bid < NBUF` and `t.range.end <= BUF_SIZE` (checked by the caller),
        // so the range lies inside buffer `bid`.
        let data = unsafe {
            self.bufs
                .as_ptr()
                .add(usize::from(bid) * BUF_SIZE + t.range.start)
        };
        // MSG_DONTWAIT: complete inline at submission, or fail (dropped, as UDP would)
        // when the socket buffer is full, rather than wait on a poll.
        let e = opcode::Send::new(Fd(fd), data, t.range.len() as u32)
            .dest_addr((&s.name as *const libc::sockaddr_in6).cast())
            .dest_addr_len(namelen)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(send_data(k));
        match self.push(e) {
            Ok(()) => {
                self.inflight += 1;
                self.unwaited_sends += 1;
            }
            Err(_) => {
                self.stats.send_errors += 1;
                self.free_sends.push(k);
                self.give_back(bid);
            }
        }
    }

    fn complete(
        &mut self,
        user_data: u64,
        result: i32,
        flags: u32,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> usize {
        match user_data >> 62 {
            KIND_SEND => {
                self.inflight -= 1;
                let k = (user_data & 0xffff_ffff) as usize;
                let Some(bid) = self.sends.get(k).map(|s| s.bid) else {
                    return 0;
                };
                if result < 0 {
                    self.stats.send_errors += 1;
                } else {
                    self.stats.sent += 1;
                }
                self.free_sends.push(k);
                self.give_back(bid);
                0
            }
            KIND_RECV => {
                let id = ((user_data >> 32) & 0x3fff_ffff) as usize;
                let gen = (user_data & 0xffff_ffff) as u32;
                let current = self
                    .sockets
                    .get(id)
                    .is_some_and(|s| s.gen == gen && s.sock.is_some());
                let mut handled = 0;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    handled = self.received(id, bid, result, current, handler);
                } else if result == -libc::ENOBUFS {
                    self.stats.no_buffer += 1;
                }
                if !cqueue::more(flags) {
                    // The multishot receive ended: re-arm, or finish closing.
                    self.inflight -= 1;
                    if current {
                        let state = self.sockets[id].state;
                        let fatal = result == -libc::EBADF || result == -libc::EINVAL;
                        if state == State::Closing || fatal || self.arm(id).is_err() {
                            self.close_slot(id);
                        }
                    }
                }
                handled
            }
            _ => {
                self.inflight -= 1;
                0
            }
        }
    }

    fn received(
        &mut self,
        id: SocketId,
        bid: u16,
        result: i32,
        current: bool,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> usize {
        if usize::from(bid) >= NBUF {
            return 0;
        }
        let live = current && self.sockets[id].state == State::Armed;
        if result < 0 || !live {
            self.give_back(bid);
            return 0;
        }
        let len = (result as usize).min(HEADROOM + MAX_PAYLOAD);
        // SAFETY: the kernel handed buffer `bid` to us with this completion and does
        // not touch it again until it is given back; it lies inside `bufs`
        // (`bid < NBUF`), and no other reference to it exists.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                self.bufs.as_ptr().add(usize::from(bid) * BUF_SIZE),
                BUF_SIZE,
            )
        };
        let (from, payload) = {
            let Ok(out) = RecvMsgOut::parse(&buf[..len], &self.recv_hdr) else {
                self.give_back(bid);
                return 0;
            };
            if out.is_payload_truncated() {
                self.stats.oversized += 1;
                self.give_back(bid);
                return 0;
            }
            let from = if out.is_name_data_truncated() {
                None
            } else {
                super::sockaddr_to(out.name_data())
            };
            let start = out.payload_data().as_ptr() as usize - buf.as_ptr() as usize;
            (from, start..start + out.payload_data().len())
        };
        let Some(from) = from else {
            self.give_back(bid);
            return 0;
        };
        debug_assert_eq!(payload.start, HEADROOM);
        self.stats.received += 1;
        let t = handler(Received {
            socket: id,
            from,
            buf,
            payload,
        });
        match t {
            Some(t) if t.range.start <= t.range.end && t.range.end <= BUF_SIZE => {
                self.queue_send(bid, &t)
            }
            _ => self.give_back(bid),
        }
        1
    }
}

impl Datapath for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn add(&mut self, sock: UdpSocket) -> std::io::Result<SocketId> {
        sock.set_nonblocking(true)?;
        let id = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.sockets.len() >= 0x3fff_ffff {
                    return Err(std::io::Error::other("too many sockets"));
                }
                self.sockets.push(Slot {
                    sock: None,
                    gen: 0,
                    state: State::Armed,
                });
                self.sockets.len() - 1
            }
        };
        let s = &mut self.sockets[id];
        s.sock = Some(sock);
        s.state = State::Armed;
        if let Err(e) = self.arm(id) {
            self.close_slot(id);
            return Err(e);
        }
        Ok(id)
    }

    fn remove(&mut self, id: SocketId) {
        let Some(s) = self.sockets.get_mut(id) else {
            return;
        };
        if s.sock.is_none() || s.state == State::Closing {
            return;
        }
        s.state = State::Closing;
        let target = recv_data(id, s.gen);
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(KIND_CANCEL << 62);
        match self.push(e) {
            Ok(()) => self.inflight += 1,
            Err(_) => {
                // The receive stays armed until the ring is dropped; keep the socket
                // open until then rather than close it under the kernel.
            }
        }
    }

    fn turn(
        &mut self,
        timeout: Duration,
        handler: &mut dyn FnMut(Received<'_>) -> Option<Transmit>,
    ) -> std::io::Result<usize> {
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        // One enter: submit what the last turn queued, and wait for one completion more
        // than the sends among it (which complete inline, see the module doc).
        self.publish_buffers();
        let want = self.unwaited_sends + 1;
        self.unwaited_sends = 0;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut handled = 0;
        // Bound the work of one turn to one completion queue's worth.
        let cap = self.ring.completion().capacity();
        let mut cq = 0;
        while cq < cap {
            // Completions are copied out a batch at a time (the queue's head is
            // published once per batch, not per entry).
            let mut n = 0;
            for (slot, cqe) in self.cq_batch.iter_mut().zip(self.ring.completion()) {
                *slot = (cqe.user_data(), cqe.result(), cqe.flags());
                n += 1;
            }
            if n == 0 {
                break;
            }
            cq += n;
            for k in 0..n {
                let (user_data, result, flags) = self.cq_batch[k];
                handled += self.complete(user_data, result, flags, handler);
            }
        }
        // What this turn queued is submitted by the next turn's enter (or `flush`).
        Ok(handled)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.publish_buffers();
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel every receive and wait (bounded) until the kernel has let go of every
        // buffer; only then may the memory be freed.
        for id in 0..self.sockets.len() {
            self.remove(id);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.inflight > 0 && Instant::now() < deadline {
            let mut ignore = |_: Received<'_>| None;
            if self.turn(Duration::from_millis(20), &mut ignore).is_err() {
                break;
            }
        }
        if self.inflight > 0 {
            // The kernel may still write into the buffers: leak them rather than free
            // memory it can reach.
            tracing::warn!(
                inflight = self.inflight,
                "io_uring did not drain; leaking its buffers"
            );
            return;
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        // SAFETY: both were allocated in `new` with these layouts; nothing is in flight
        // and the buffer ring is unregistered, so the kernel holds no reference.
        unsafe {
            std::alloc::dealloc(self.bufs.as_ptr(), bufs_layout());
            std::alloc::dealloc(self.br.as_ptr().cast(), ring_layout());
        }
    }
}

/// Whether io_uring can run this datapath here: the ring can be created, the opcodes
/// are supported, and a multishot receive on a loopback socket delivers a datagram.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("probe: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RecvMsg"),
        (opcode::Send::CODE, "Send"),
        (opcode::AsyncCancel::CODE, "AsyncCancel"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    drop(ring);
    let mut u = Uring::new().map_err(|e| format!("ring setup: {e}"))?;
    let rx = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("probe socket: {e}"))?;
    let to = rx.local_addr().map_err(|e| e.to_string())?;
    let tx = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("probe socket: {e}"))?;
    let id = u.add(rx).map_err(|e| format!("multishot RecvMsg: {e}"))?;
    tx.send_to(b"probe", to).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut got = false;
    while !got && Instant::now() < deadline {
        let mut h = |r: Received<'_>| {
            got |= &r.buf[r.payload] == b"probe";
            None
        };
        u.turn(Duration::from_millis(50), &mut h)
            .map_err(|e| format!("io_uring_enter: {e}"))?;
    }
    u.remove(id);
    if got {
        Ok(())
    } else {
        Err("multishot RecvMsg with a buffer ring delivered nothing (kernel < 6.0?)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_in_place_when_available() {
        if let Err(e) = probe() {
            eprintln!("io_uring unavailable here ({e}); nothing to test");
            return;
        }
        let mut u = Uring::new().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a_addr = a.local_addr().unwrap();
        let id = u.add(a).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        for i in 0..3000u32 {
            client.send_to(&i.to_be_bytes(), a_addr).unwrap();
            let mut n = 0;
            while n == 0 {
                n = u
                    .turn(Duration::from_millis(100), &mut |r| {
                        // Prefix a 4-byte header in the headroom, in place.
                        let s = r.payload.start - 4;
                        r.buf[s..r.payload.start].copy_from_slice(b"hdr:");
                        Some(Transmit {
                            socket: r.socket,
                            to: r.from,
                            range: s..r.payload.end,
                        })
                    })
                    .unwrap();
            }
            u.flush().unwrap();
            let mut b = [0u8; 64];
            let (n, _) = client.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], [&b"hdr:"[..], &i.to_be_bytes()].concat());
        }
        // Every echo arrived; reap the last send completions.
        let deadline = Instant::now() + Duration::from_secs(2);
        while u.stats().sent < 3000 && Instant::now() < deadline {
            u.turn(Duration::from_millis(10), &mut |_| None).unwrap();
        }
        assert_eq!(u.stats().sent, 3000);
        assert_eq!(u.stats().received, 3000);
        u.remove(id);
    }
}
