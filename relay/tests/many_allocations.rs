//! Heap held per allocation by the TURN core at 100,000 concurrent allocations: a
//! counting global allocator (`tandem_relay::io::alloc_count`) measures the bytes live
//! before and after 100,000 clients each Allocate (after the 401 round) and bind a
//! channel to a peer, as a WebRTC client does. The relayed ports are handed out by a
//! stand-in that keeps nothing, so what is counted is the core's state: the
//! allocation, its permission and channel, the 5-tuple index and the timer heap. The
//! driver adds a relayed socket (kernel memory) and a few small table entries per
//! allocation; the whole relay is measured by `bench/many-allocations.sh`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::*;
use tandem_relay::io::alloc_count::CountingAlloc;
use tandem_relay::stun::{attr, method, Message, MessageWriter};
use tandem_relay::turn::{
    AllocationId, ClientOutput, Config, Family, OpenedPort, PortError, PortRequest, Quotas,
    RelayPorts, Server,
};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

const N: u32 = 100_000;
/// The goal: under 1 KiB of state per allocation beyond the kernel's socket buffers.
const BUDGET: i64 = 1024;

/// Relayed addresses computed from the allocation's index; nothing is stored.
struct NoStorePorts;

impl RelayPorts for NoStorePorts {
    fn open(
        &mut self,
        id: AllocationId,
        _family: Family,
        _request: PortRequest,
        _dont_fragment: bool,
    ) -> Result<OpenedPort, PortError> {
        let i = id.index;
        let ip = Ipv4Addr::new(192, 0, 2, 1 + (i / 60_000) as u8);
        Ok(OpenedPort {
            addr: SocketAddr::new(IpAddr::V4(ip), 1024 + (i % 60_000) as u16),
            reserved: None,
        })
    }
    fn close(&mut self, _id: AllocationId) {}
    fn release_reservation(&mut self, _addr: SocketAddr) {}
}

fn client_addr(i: u32) -> String {
    // 100,000 distinct 5-tuples: 10.x.y.z:40000.
    format!(
        "10.{}.{}.{}:40000",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

#[test]
fn core_state_per_allocation_at_100k_is_under_1_kib() {
    let cfg = Config {
        users: vec![("alice".into(), "wonderland".into())],
        quotas: Quotas {
            allocations_per_user: 0,
            total_allocations: 0,
            unauthorized_per_sec: 0,
            ..Quotas::default()
        },
        ..Config::default()
    };
    let now = t0();
    let mut srv = Server::new(cfg, now, [9; 32]);
    let mut ports = NoStorePorts;
    let mut out = vec![0u8; 1500];
    let udp =
        |w: &mut MessageWriter<'_>| w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
    let bind = |w: &mut MessageWriter<'_>| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, &"8.8.4.4:5000".parse().unwrap())
            .unwrap();
    };
    // Everything the first requests set up once (nonce key state, buffers) is
    // allocated before the measurement starts.
    let mut send = |srv: &mut Server, c: &Client, p: &[u8], out: &mut Vec<u8>| -> Vec<u8> {
        match srv.handle_client(now, c.tuple, p, out, &mut ports) {
            ClientOutput::Reply { len } => out[..len].to_vec(),
            o => panic!("no reply: {o:?}"),
        }
    };
    let mut make = |srv: &mut Server, i: u32, out: &mut Vec<u8>| {
        let mut c = Client::new(&client_addr(i), Creds::md5("alice", "wonderland"));
        let tid = c.tid();
        let r = send(
            srv,
            &c,
            &c.build(method::ALLOCATE, tid, &udp, false, true),
            out,
        );
        assert_eq!(error_code(&r), Some(401));
        let nonce = Message::decode(&r)
            .unwrap()
            .get(attr::NONCE)
            .unwrap()
            .value
            .to_vec();
        c.nonce = Some(nonce);
        let tid = c.tid();
        let r = send(
            srv,
            &c,
            &c.build(method::ALLOCATE, tid, &udp, true, true),
            out,
        );
        assert_eq!(error_code(&r), None, "allocation {i}");
        let tid = c.tid();
        let r = send(
            srv,
            &c,
            &c.build(method::CHANNEL_BIND, tid, &bind, true, true),
            out,
        );
        assert_eq!(error_code(&r), None, "channel bind {i}");
    };
    make(&mut srv, N, &mut out);
    let before = GLOBAL.live_bytes();
    for i in 0..N {
        make(&mut srv, i, &mut out);
    }
    let after = GLOBAL.live_bytes();
    assert_eq!(srv.allocation_count(), N as usize + 1);
    let per = (after - before) / i64::from(N);
    println!(
        "core heap: {} bytes for {N} allocations with a permission and a channel each: \
         {per} bytes per allocation (size_of Allocation {} bytes)",
        after - before,
        std::mem::size_of::<tandem_relay::turn::allocation::Allocation>()
    );
    assert!(per < BUDGET, "{per} bytes per allocation");
}
