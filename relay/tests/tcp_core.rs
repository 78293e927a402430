//! RFC 6062 TCP allocations in the sans-IO core, on a virtual clock: Allocate with
//! REQUESTED-TRANSPORT TCP, Connect (deferred answer), ConnectionAttempt,
//! ConnectionBind, the bind timeout, limits and teardown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tandem_relay::stun::{attr, integrity, method, Class, Message, MessageWriter};
use tandem_relay::turn::tcp::{connection_bind_id, IncomingError};
use tandem_relay::turn::{
    ClientOutput, Config, FiveTuple, Now, Server, TcpCommand, TcpLimits, Transport,
};

const PEER: &str = "8.8.4.4:5000";

fn config() -> Config {
    Config {
        users: vec![
            ("alice".into(), "wonderland".into()),
            ("bob".into(), "builder".into()),
        ],
        ..Config::default()
    }
}

fn server(cfg: Config) -> (Server, FakePorts, Now) {
    let now = t0();
    (Server::new(cfg, now, [42; 32]), FakePorts::default(), now)
}

/// A client on TCP connection `id`.
fn stream_client(addr: &str, id: u64, user: &str, pw: &str) -> Client {
    let mut c = Client::new(addr, Creds::md5(user, pw));
    c.tuple.transport = Transport::Stream(id);
    c
}

fn tcp(w: &mut MessageWriter<'_>) {
    w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]).unwrap();
}

fn peer_attr(peer: &'static str) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, &peer.parse().unwrap())
            .unwrap()
    }
}

fn conn_id_attr(id: u32) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| w.u32_attr(attr::CONNECTION_ID, id).unwrap()
}

/// Allocate TCP and permit `PEER`.
fn tcp_allocation(srv: &mut Server, now: Now, ports: &mut FakePorts) -> Client {
    let mut c = stream_client("198.51.100.1:40000", 1, "alice", "wonderland");
    let r = c.request(srv, now, ports, method::ALLOCATE, &tcp);
    assert_eq!(error_code(&r), None, "TCP Allocate on a stream succeeds");
    assert!(xor_addr(&r, attr::XOR_RELAYED_ADDRESS).is_some());
    let r = c.request(srv, now, ports, method::CREATE_PERMISSION, &peer_attr(PEER));
    assert_eq!(error_code(&r), None);
    c
}

fn commands(srv: &mut Server) -> Vec<TcpCommand> {
    std::iter::from_fn(|| srv.poll_tcp()).collect()
}

/// Connect to `PEER` and have the driver report success; returns the CONNECTION-ID.
fn connect(srv: &mut Server, now: Now, ports: &mut FakePorts, c: &mut Client) -> u32 {
    let tid = c.tid();
    let p = c.build(method::CONNECT, tid, &peer_attr(PEER), true, true);
    let (o, _) = c.send(srv, now, ports, &p);
    assert_eq!(o, ClientOutput::None, "the answer waits for the connection");
    let cmds = commands(srv);
    let [TcpCommand::Connect {
        connection, peer, ..
    }] = cmds[..]
    else {
        panic!("one Connect command, got {cmds:?}");
    };
    assert_eq!(peer, PEER.parse::<SocketAddr>().unwrap());
    let mut out = vec![0u8; 1500];
    let (to, len) = srv
        .tcp_connect_result(now, connection, true, &mut out)
        .expect("an answer for the client");
    assert_eq!(to, c.tuple, "the answer goes on the control connection");
    let r = &out[..len];
    let m = Message::decode(r).unwrap();
    assert_eq!(m.transaction_id(), &tid);
    assert_eq!(error_code(r), None);
    assert_eq!(u32_attr(r, attr::CONNECTION_ID), Some(connection));
    let mi = m.get(attr::MESSAGE_INTEGRITY).expect("signed");
    assert!(integrity::verify_sha1(&m, &mi, c.creds.key().as_slice()));
    connection
}

#[test]
fn tcp_allocate_only_on_streams_and_without_even_port() {
    let (mut srv, mut ports, now) = server(config());
    let mut udp = Client::new("198.51.100.1:40000", Creds::md5("alice", "wonderland"));
    let r = udp.request(&mut srv, now, &mut ports, method::ALLOCATE, &tcp);
    assert_eq!(error_code(&r), Some(442));
    let mut s = stream_client("198.51.100.1:40001", 7, "alice", "wonderland");
    let r = s.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        tcp(w);
        w.attr(attr::EVEN_PORT, &[0x80]).unwrap();
    });
    assert_eq!(error_code(&r), Some(400));
    let r = s.request(&mut srv, now, &mut ports, method::ALLOCATE, &tcp);
    assert_eq!(error_code(&r), None);
    assert_eq!(srv.tcp_counts(), (1, 0));
    // No datagrams on a TCP allocation: ChannelBind is refused.
    let r = s.request(&mut srv, now, &mut ports, method::CHANNEL_BIND, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).unwrap();
        peer_attr(PEER)(w);
    });
    assert_eq!(error_code(&r), Some(400));
    // Connect on a UDP allocation is a bad request.
    let r = udp.request(&mut srv, now, &mut ports, method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    });
    assert_eq!(error_code(&r), None);
    let r = udp.request(&mut srv, now, &mut ports, method::CONNECT, &peer_attr(PEER));
    assert_eq!(error_code(&r), Some(400));
}

#[test]
fn connect_needs_permission_and_policy_then_bind() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = tcp_allocation(&mut srv, now, &mut ports);
    // No permission for this peer.
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECT,
        &peer_attr("8.8.8.8:80"),
    );
    assert_eq!(error_code(&r), Some(403));
    // A denied range (private) is refused whatever the permission.
    let r = c.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECT,
        &peer_attr("10.0.0.1:80"),
    );
    assert_eq!(error_code(&r), Some(403));
    assert!(commands(&mut srv).is_empty(), "nothing to connect");

    let id = connect(&mut srv, now, &mut ports, &mut c);
    // A second Connect to the same peer while the first is pending.
    let r = c.request(&mut srv, now, &mut ports, method::CONNECT, &peer_attr(PEER));
    assert_eq!(error_code(&r), Some(446));

    // ConnectionBind on a new connection, same credentials.
    let mut data = stream_client("198.51.100.1:40002", 2, "alice", "wonderland");
    let p = data.build(
        method::CONNECTION_BIND,
        [1; 12],
        &conn_id_attr(id),
        false,
        true,
    );
    assert_eq!(connection_bind_id(&p), Some(id));
    let r = data.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id),
    );
    assert_eq!(error_code(&r), None, "bound");
    assert_eq!(Message::decode(&r).unwrap().class(), Class::SuccessResponse);
    assert_eq!(srv.tcp_bound(&data.tuple), Some(id));
    // Bound already: on the same connection, and the same id on another one.
    let r = data.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id),
    );
    assert_eq!(error_code(&r), Some(400));
    let mut other = stream_client("198.51.100.1:40003", 3, "alice", "wonderland");
    let r = other.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id),
    );
    assert_eq!(error_code(&r), Some(400));
    // Unknown id.
    let r = other.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id ^ 0x5555),
    );
    assert_eq!(error_code(&r), Some(400));
    // The bind timeout does not touch a bound connection.
    let later = now.advance(Duration::from_secs(31));
    srv.handle_timeout(later, &mut ports);
    assert!(commands(&mut srv).is_empty());
    assert_eq!(srv.tcp_counts(), (1, 1));
    // Either side closing ends it.
    srv.tcp_connection_closed(id);
    assert_eq!(srv.tcp_counts(), (1, 0));
    assert_eq!(srv.tcp_bound(&data.tuple), None);
}

#[test]
fn bind_needs_the_allocation_credentials() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = tcp_allocation(&mut srv, now, &mut ports);
    let id = connect(&mut srv, now, &mut ports, &mut c);
    let mut bob = stream_client("198.51.100.9:40000", 9, "bob", "builder");
    let r = bob.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id),
    );
    assert_eq!(error_code(&r), Some(441));
    let mut wrong = stream_client("198.51.100.9:40001", 10, "alice", "guess");
    let _ = wrong.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id),
    );
    let tid = wrong.tid();
    let p = wrong.build(method::CONNECTION_BIND, tid, &conn_id_attr(id), true, true);
    let (_, r) = wrong.send(&mut srv, now, &mut ports, &p);
    assert_eq!(
        error_code(&r),
        Some(401),
        "a wrong password is challenged again"
    );
    // Over UDP it is a bad request.
    let mut udp = Client::new("198.51.100.1:40009", Creds::md5("alice", "wonderland"));
    let r = udp.request(
        &mut srv,
        now,
        &mut ports,
        method::CONNECTION_BIND,
        &conn_id_attr(id),
    );
    assert_eq!(error_code(&r), Some(400));
}

#[test]
fn failed_connect_is_447_and_frees_the_slot() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = tcp_allocation(&mut srv, now, &mut ports);
    let tid = c.tid();
    let p = c.build(method::CONNECT, tid, &peer_attr(PEER), true, false);
    let (o, _) = c.send(&mut srv, now, &mut ports, &p);
    assert_eq!(o, ClientOutput::None);
    let Some(TcpCommand::Connect { connection, .. }) = srv.poll_tcp() else {
        panic!("a Connect command");
    };
    assert_eq!(srv.tcp_counts(), (1, 1));
    let mut out = vec![0u8; 1500];
    let (_, len) = srv
        .tcp_connect_result(now, connection, false, &mut out)
        .unwrap();
    assert_eq!(error_code(&out[..len]), Some(447));
    assert_eq!(srv.tcp_counts(), (1, 0));
    assert_eq!(srv.stats().tcp_connect_failures, 1);
    // The peer may be tried again.
    connect(&mut srv, now, &mut ports, &mut c);
}

#[test]
fn incoming_needs_permission_attempt_then_timeout() {
    let (mut srv, mut ports, now) = server(config());
    let c = tcp_allocation(&mut srv, now, &mut ports);
    let alloc = srv.allocation_of(&c.tuple).unwrap();
    let mut out = vec![0u8; 1500];
    let stranger: SocketAddr = "8.8.8.8:1234".parse().unwrap();
    assert_eq!(
        srv.tcp_incoming(now, alloc, stranger, &mut out),
        Err(IncomingError::NoPermission)
    );
    let peer: SocketAddr = "8.8.4.4:4321".parse().unwrap();
    let (id, to, len) = srv.tcp_incoming(now, alloc, peer, &mut out).unwrap();
    assert_eq!(to, c.tuple);
    let ind = &out[..len];
    let m = Message::decode(ind).unwrap();
    assert_eq!(m.class(), Class::Indication);
    assert_eq!(m.method(), method::CONNECTION_ATTEMPT);
    assert_eq!(u32_attr(ind, attr::CONNECTION_ID), Some(id));
    assert_eq!(xor_addr(ind, attr::XOR_PEER_ADDRESS), Some(peer));
    // Not bound within the bind timeout: closed.
    srv.handle_timeout(now.advance(Duration::from_secs(29)), &mut ports);
    assert!(commands(&mut srv).is_empty());
    srv.handle_timeout(now.advance(Duration::from_secs(30)), &mut ports);
    assert_eq!(
        commands(&mut srv),
        vec![TcpCommand::Close { connection: id }]
    );
    assert_eq!(srv.stats().tcp_bind_timeouts, 1);
    assert_eq!(srv.tcp_counts(), (1, 0));
}

#[test]
fn limits_per_allocation_and_in_total() {
    let cfg = Config {
        tcp: TcpLimits {
            per_allocation: 1,
            total: 2,
            bind_timeout: Duration::from_secs(5),
        },
        ..config()
    };
    let (mut srv, mut ports, now) = server(cfg);
    let mut c = tcp_allocation(&mut srv, now, &mut ports);
    let alloc = srv.allocation_of(&c.tuple).unwrap();
    let mut out = vec![0u8; 1500];
    srv.tcp_incoming(now, alloc, "8.8.4.4:1".parse().unwrap(), &mut out)
        .unwrap();
    assert_eq!(
        srv.tcp_incoming(now, alloc, "8.8.4.4:2".parse().unwrap(), &mut out),
        Err(IncomingError::Limit)
    );
    let r = c.request(&mut srv, now, &mut ports, method::CONNECT, &peer_attr(PEER));
    assert_eq!(error_code(&r), Some(508));
    // A second allocation takes the last one of the total, then the total is reached.
    let mut d = stream_client("198.51.100.2:40000", 5, "bob", "builder");
    let r = d.request(&mut srv, now, &mut ports, method::ALLOCATE, &tcp);
    assert_eq!(error_code(&r), None);
    let r = d.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer_attr(PEER),
    );
    assert_eq!(error_code(&r), None);
    let alloc2 = srv.allocation_of(&d.tuple).unwrap();
    srv.tcp_incoming(now, alloc2, "8.8.4.4:3".parse().unwrap(), &mut out)
        .unwrap();
    let mut e = stream_client("198.51.100.3:40000", 6, "bob", "builder");
    let r = e.request(&mut srv, now, &mut ports, method::ALLOCATE, &tcp);
    assert_eq!(error_code(&r), None);
    let r = e.request(
        &mut srv,
        now,
        &mut ports,
        method::CREATE_PERMISSION,
        &peer_attr(PEER),
    );
    assert_eq!(error_code(&r), None);
    let alloc3 = srv.allocation_of(&e.tuple).unwrap();
    assert_eq!(
        srv.tcp_incoming(now, alloc3, "8.8.4.4:4".parse().unwrap(), &mut out),
        Err(IncomingError::Limit)
    );
}

#[test]
fn deleting_or_closing_the_allocation_closes_its_connections() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = tcp_allocation(&mut srv, now, &mut ports);
    let alloc = srv.allocation_of(&c.tuple).unwrap();
    let a = connect(&mut srv, now, &mut ports, &mut c);
    let mut out = vec![0u8; 1500];
    let (b, _, _) = srv
        .tcp_incoming(now, alloc, "8.8.4.4:9".parse().unwrap(), &mut out)
        .unwrap();
    let r = c.request(&mut srv, now, &mut ports, method::REFRESH, &|w| {
        w.u32_attr(attr::LIFETIME, 0).unwrap()
    });
    assert_eq!(error_code(&r), None);
    let mut closed: Vec<u32> = commands(&mut srv)
        .into_iter()
        .map(|c| match c {
            TcpCommand::Close { connection } => connection,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    closed.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(closed, want);
    assert_eq!(srv.tcp_counts(), (0, 0));
    assert_eq!(ports.closed, vec![alloc]);

    // The control connection closing does the same.
    let c = tcp_allocation(&mut srv, now, &mut ports);
    let alloc = srv.allocation_of(&c.tuple).unwrap();
    let (x, _, _) = srv
        .tcp_incoming(now, alloc, "8.8.4.4:10".parse().unwrap(), &mut out)
        .unwrap();
    srv.stream_closed(&c.tuple, &mut ports);
    assert_eq!(
        commands(&mut srv),
        vec![TcpCommand::Close { connection: x }]
    );
    // A Connect answered after the allocation went has nobody to go to.
    let _: FiveTuple = c.tuple;
}

#[test]
fn bind_accepts_the_nonce_of_the_control_connection() {
    let (mut srv, mut ports, now) = server(config());
    let mut c = tcp_allocation(&mut srv, now, &mut ports);
    let id = connect(&mut srv, now, &mut ports, &mut c);
    // A new connection (another address) sends the control connection's nonce at
    // once, as coturn's client does.
    let mut data = stream_client("198.51.100.1:40005", 11, "alice", "wonderland");
    data.nonce = c.nonce.clone();
    let tid = data.tid();
    let p = data.build(method::CONNECTION_BIND, tid, &conn_id_attr(id), true, true);
    let (_, r) = data.send(&mut srv, now, &mut ports, &p);
    assert_eq!(
        error_code(&r),
        None,
        "bound with the control connection's nonce"
    );
    // That nonce is good for nothing else on this connection.
    let tid = data.tid();
    let p = data.build(method::ALLOCATE, tid, &tcp, true, true);
    let (_, r) = data.send(&mut srv, now, &mut ports, &p);
    assert_eq!(error_code(&r), Some(401));
}
