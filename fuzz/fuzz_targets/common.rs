// Shared by the relay fuzz targets: one TURN server with an allocation and a bound
// channel, fed the fuzz input from the client and the peer side.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use tandem_relay::stun::{attr, message_type, method, Class, Message, MessageWriter};
use tandem_relay::turn::auth::Key;
use tandem_relay::turn::{
    AllocationId, Config, Family, FiveTuple, Now, OpenedPort, PortError, PortRequest, RelayPorts,
    Server, PEER_HEADROOM, PEER_TAILROOM,
};

pub struct Ports(u16);

impl RelayPorts for Ports {
    fn open(
        &mut self,
        _: AllocationId,
        _: Family,
        _: PortRequest,
        _: bool,
    ) -> Result<OpenedPort, PortError> {
        self.0 = self.0.wrapping_add(2).max(50_000);
        Ok(OpenedPort {
            addr: SocketAddr::from(([192, 0, 2, 1], self.0)),
            reserved: None,
        })
    }
    fn close(&mut self, _: AllocationId) {}
    fn release_reservation(&mut self, _: SocketAddr) {}
}

pub struct World {
    pub server: Server,
    pub ports: Ports,
    pub now: Now,
    pub tuple: FiveTuple,
    pub out: Vec<u8>,
    #[allow(dead_code)] // used by channel_data only
    pub peer_buf: Vec<u8>,
}

pub static WORLD: Mutex<Option<World>> = Mutex::new(None);

pub fn with_world(f: impl FnOnce(&mut World)) {
    let mut g = WORLD.lock().unwrap_or_else(|p| p.into_inner());
    let w = g.get_or_insert_with(|| {
        let mut w = make_world();
        setup(&mut w);
        w
    });
    f(w);
}

fn make_world() -> World {
    {
        let now = Now {
            mono: Instant::now(),
            unix_secs: 1_800_000_000,
        };
        let cfg = Config {
            users: vec![("alice".into(), "wonderland".into())],
            auth_secrets: vec!["secret".into()],
            ..Config::default()
        };
        World {
            server: Server::new(cfg, now, [7; 32]),
            ports: Ports(50_000),
            now,
            tuple: FiveTuple {
                local: SocketAddr::from(([192, 0, 2, 1], 3478)),
                client: SocketAddr::from(([198, 51, 100, 1], 40_000)),
                transport: tandem_relay::turn::Transport::Udp,
            },
            out: vec![0; 1500],
            peer_buf: vec![0; PEER_HEADROOM + 65_535 + PEER_TAILROOM],
        }
    }
}

/// Authenticate, allocate, bind channel 0x4000 to 8.8.8.8:9 and permit 8.8.8.8, so
/// fuzz input reaches the relaying paths.
fn setup(w: &mut World) {
    let key = Key::derive(1, b"alice", b"tandem", b"wonderland");
    let mut nonce = Vec::new();
    let peer = SocketAddr::from(([8, 8, 8, 8], 9));
    for (i, m) in [method::ALLOCATE, method::ALLOCATE, method::CHANNEL_BIND]
        .into_iter()
        .enumerate()
    {
        let mut buf = [0u8; 512];
        let mut wr =
            MessageWriter::new(&mut buf, message_type(m, Class::Request), &[i as u8; 12]).unwrap();
        if m == method::ALLOCATE {
            wr.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).unwrap();
        } else {
            wr.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]).unwrap();
            wr.xor_address(attr::XOR_PEER_ADDRESS, &peer).unwrap();
        }
        if i > 0 {
            wr.attr(attr::USERNAME, b"alice").unwrap();
            wr.attr(attr::REALM, b"tandem").unwrap();
            wr.attr(attr::NONCE, &nonce).unwrap();
            wr.integrity_sha1(key.as_slice()).unwrap();
        }
        let n = wr.finish();
        let o = w
            .server
            .handle_client(w.now, w.tuple, &buf[..n], &mut w.out, &mut w.ports);
        if let tandem_relay::turn::ClientOutput::Reply { len } = o {
            if let Ok(msg) = Message::decode(&w.out[..len]) {
                if let Some(a) = msg.get(attr::NONCE) {
                    nonce = a.value.to_vec();
                }
            }
        }
    }
    assert!(
        w.server.allocation_of(&w.tuple).is_some(),
        "fuzz world has an allocation"
    );
}
