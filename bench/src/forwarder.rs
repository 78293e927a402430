//! The floor: a minimal UDP forwarder with no TURN logic.
//!
//! Design, so that the same load generator drives it with the same packets and the
//! numbers compare with a TURN relay's:
//! - A relay must, per forwarded packet, receive it on one socket and send it on
//!   another: ChannelData from a client arrives on the listening socket and leaves as a
//!   plain datagram from that client's relayed socket; a datagram from the peer arrives
//!   on the relayed socket and leaves the listening socket as ChannelData. The
//!   forwarder does exactly that and nothing else: one relayed socket per client (as a
//!   TURN allocation has), the 4-byte ChannelData header stripped or written, a lookup
//!   of (client address, channel) and of the relayed socket's one peer. No
//!   authentication, permissions, lifetimes, STUN parsing or counters.
//! - Setup is a three-message exchange that stands in for Allocate/ChannelBind/Refresh
//!   (datagrams starting with 0xFF, a first byte no STUN or ChannelData message has):
//!   `FF 'A'` allocates and answers `FF 'A' ip4 port`; `FF 'B' channel ip4 port` binds
//!   the channel to a peer; `FF 'D'` deletes. The load generator uses it in place of
//!   TURN's transactions (built and parsed on its side by `setup.rs`) and then sends
//!   the very same ChannelData datagrams, so peer and client-to-client modes, packet
//!   sizes and what is counted as forwarded are the same as for the TURN servers.
//! - Batched I/O: recvmmsg on every readable socket, and sendmmsg for the datagrams
//!   that leave the listening socket (several clients per call). Datagrams leaving
//!   relayed sockets are batched only when consecutive ones use the same socket, which
//!   is the honest floor for one socket per allocation without io_uring.
//! - One thread, epoll (level-triggered), a cap of a few batches per socket per turn.
//! - 4 MiB receive buffers (as the load generator has), so that the floor is what the
//!   machine can forward rather than what a default buffer absorbs of scheduling noise.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::mmsg::{RecvBatch, SendBatch};

#[derive(Debug)]
struct Relay {
    sock: UdpSocket,
    client: SocketAddrV4,
    /// Bound channel and its peer.
    bound: Option<(u16, SocketAddrV4)>,
}

const LISTEN_TOKEN: u64 = u64::MAX;
/// Batches taken from one socket per readiness event (bounds the work per turn).
const BATCHES_PER_EVENT: usize = 4;

/// Run the forwarder on `listen` until `limit` has passed.
pub fn run(
    listen: SocketAddr,
    limit: Duration,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let l = UdpSocket::bind(listen)?;
    l.set_nonblocking(true)?;
    crate::sock::set_rcvbuf(&l, crate::sock::SOCKET_BUFFER);
    ready(l.local_addr()?);
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    epoll.add(
        l.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, LISTEN_TOKEN),
    )?;
    let mut relays: Vec<Option<Relay>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut by_client: HashMap<SocketAddrV4, usize> = HashMap::new();
    let mut routes: HashMap<(SocketAddrV4, u16), usize> = HashMap::new();
    let mut rx = RecvBatch::default();
    let mut to_clients = SendBatch::default();
    let mut to_peer = SendBatch::default();
    let mut events = [EpollEvent::empty(); 64];
    let end = Instant::now() + limit;
    while Instant::now() < end {
        // A signal (or a debugger or profiler attaching) interrupts the wait: wait again.
        let n = match epoll.wait(&mut events, EpollTimeout::from(100u16)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTEN_TOKEN {
                for _ in 0..BATCHES_PER_EVENT {
                    if rx.recv(l.as_fd())? == 0 {
                        break;
                    }
                    let mut pending: Option<usize> = None;
                    for i in 0..rx.meta.len() {
                        let (d, src) = rx.packet(i);
                        if d.first() == Some(&0xFF) {
                            control(
                                d,
                                src,
                                &epoll,
                                &mut relays,
                                &mut free,
                                &mut by_client,
                                &mut routes,
                                &mut to_clients,
                            )?;
                        } else if d.len() >= 4 {
                            let ch = u16::from_be_bytes([d[0], d[1]]);
                            let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
                            let Some(payload) = d.get(4..4 + len) else {
                                continue;
                            };
                            let Some(&idx) = routes.get(&(src, ch)) else {
                                continue;
                            };
                            let Some(Some(relay)) = relays.get(idx) else {
                                continue;
                            };
                            let Some((_, peer)) = relay.bound else {
                                continue;
                            };
                            if pending.is_some_and(|p| p != idx) || to_peer.is_full() {
                                flush_relay(&relays, pending, &mut to_peer)?;
                            }
                            pending = Some(idx);
                            to_peer.push(Some(SocketAddr::V4(peer)), |b| {
                                b[..len].copy_from_slice(payload);
                                len
                            });
                        }
                        if to_clients.is_full() {
                            to_clients.flush(l.as_fd())?;
                        }
                    }
                    flush_relay(&relays, pending, &mut to_peer)?;
                }
            } else {
                let idx = token as usize;
                let Some(Some(relay)) = relays.get(idx) else {
                    continue;
                };
                for _ in 0..BATCHES_PER_EVENT {
                    if rx.recv(relay.sock.as_fd())? == 0 {
                        break;
                    }
                    for i in 0..rx.meta.len() {
                        let (d, src) = rx.packet(i);
                        let Some((ch, peer)) = relay.bound else {
                            continue;
                        };
                        if src != peer || d.len() > usize::from(u16::MAX) {
                            continue;
                        }
                        to_clients.push(Some(SocketAddr::V4(relay.client)), |b| {
                            let n = 4 + d.len();
                            if n > b.len() {
                                return 0;
                            }
                            b[..2].copy_from_slice(&ch.to_be_bytes());
                            b[2..4].copy_from_slice(&(d.len() as u16).to_be_bytes());
                            b[4..n].copy_from_slice(d);
                            n
                        });
                        if to_clients.is_full() {
                            to_clients.flush(l.as_fd())?;
                        }
                    }
                }
            }
        }
        if !to_clients.is_empty() {
            to_clients.flush(l.as_fd())?;
        }
    }
    Ok(())
}

fn flush_relay(
    relays: &[Option<Relay>],
    idx: Option<usize>,
    q: &mut SendBatch,
) -> std::io::Result<()> {
    if let Some(Some(r)) = idx.and_then(|i| relays.get(i)) {
        q.flush(r.sock.as_fd())?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn control(
    d: &[u8],
    src: SocketAddrV4,
    epoll: &Epoll,
    relays: &mut Vec<Option<Relay>>,
    free: &mut Vec<usize>,
    by_client: &mut HashMap<SocketAddrV4, usize>,
    routes: &mut HashMap<(SocketAddrV4, u16), usize>,
    out: &mut SendBatch,
) -> anyhow::Result<()> {
    let to = Some(SocketAddr::V4(src));
    match d.get(1) {
        Some(b'A') => {
            let idx = match by_client.get(&src) {
                Some(&i) => i,
                None => {
                    let sock = UdpSocket::bind((*src.ip(), 0))?;
                    sock.set_nonblocking(true)?;
                    crate::sock::set_rcvbuf(&sock, crate::sock::SOCKET_BUFFER);
                    let idx = free.pop().unwrap_or(relays.len());
                    epoll.add(
                        sock.as_fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, idx as u64),
                    )?;
                    let r = Relay {
                        sock,
                        client: src,
                        bound: None,
                    };
                    if idx == relays.len() {
                        relays.push(Some(r));
                    } else {
                        relays[idx] = Some(r);
                    }
                    by_client.insert(src, idx);
                    idx
                }
            };
            let Some(Some(r)) = relays.get(idx) else {
                return Ok(());
            };
            let SocketAddr::V4(a) = r.sock.local_addr()? else {
                return Ok(());
            };
            out.push(to, |b| {
                b[0] = 0xFF;
                b[1] = b'A';
                b[2..6].copy_from_slice(&a.ip().octets());
                b[6..8].copy_from_slice(&a.port().to_be_bytes());
                8
            });
        }
        Some(b'B') if d.len() >= 10 => {
            let ch = u16::from_be_bytes([d[2], d[3]]);
            let peer = SocketAddrV4::new(
                Ipv4Addr::new(d[4], d[5], d[6], d[7]),
                u16::from_be_bytes([d[8], d[9]]),
            );
            if let Some(&idx) = by_client.get(&src) {
                if let Some(Some(r)) = relays.get_mut(idx) {
                    r.bound = Some((ch, peer));
                    routes.insert((src, ch), idx);
                    out.push(to, |b| {
                        b[..2].copy_from_slice(&[0xFF, b'B']);
                        2
                    });
                }
            }
        }
        Some(b'D') => {
            if let Some(idx) = by_client.remove(&src) {
                routes.retain(|_, v| *v != idx);
                if let Some(r) = relays.get_mut(idx).and_then(Option::take) {
                    let _ = epoll.delete(r.sock.as_fd());
                }
                free.push(idx);
            }
            out.push(to, |b| {
                b[..2].copy_from_slice(&[0xFF, b'D']);
                2
            });
        }
        _ => {}
    }
    Ok(())
}
