//! Test harness for the sans-IO core: a fake port allocator, a virtual clock and a
//! STUN client that builds requests with the crate's encoder.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_relay::stun::attr;
use tandem_relay::stun::integrity::userhash;
use tandem_relay::stun::{address, message_type, Class, Message, MessageWriter};
use tandem_relay::turn::auth::Key;
use tandem_relay::turn::{
    AllocationId, ClientOutput, Family, FiveTuple, Now, OpenedPort, PortError, PortRequest,
    RelayPorts, Server,
};

pub const LISTEN: &str = "192.0.2.100:3478";

#[derive(Debug, Default)]
pub struct FakePorts {
    pub next: u16,
    pub open: HashMap<AllocationId, SocketAddr>,
    pub reserved: HashSet<SocketAddr>,
    pub released: Vec<SocketAddr>,
    pub closed: Vec<AllocationId>,
    pub exhausted: bool,
    /// Offer IPv6 relayed addresses (2001:db8::100) too.
    pub v6: bool,
    /// Offer no IPv4 relayed addresses.
    pub no_v4: bool,
}

impl RelayPorts for FakePorts {
    fn open(
        &mut self,
        id: AllocationId,
        family: Family,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<OpenedPort, PortError> {
        if dont_fragment {
            return Err(PortError::DontFragment);
        }
        let ip: std::net::IpAddr = match family {
            Family::V4 if !self.no_v4 => "192.0.2.100".parse().unwrap(),
            Family::V6 if self.v6 => "2001:db8::100".parse().unwrap(),
            _ => return Err(PortError::Family),
        };
        if self.exhausted {
            return Err(PortError::Exhausted);
        }
        if self.next == 0 {
            self.next = 50_000;
        }
        let (addr, reserved) = match request {
            PortRequest::Reserved(a) => {
                assert!(self.reserved.remove(&a), "reserved port handed back once");
                (a, None)
            }
            PortRequest::Any => {
                self.next += 2;
                (SocketAddr::new(ip, self.next), None)
            }
            PortRequest::Even { reserve_next } => {
                self.next += 2;
                let a = SocketAddr::new(ip, self.next);
                let r = reserve_next.then(|| SocketAddr::new(a.ip(), a.port() + 1));
                if let Some(r) = r {
                    self.reserved.insert(r);
                }
                (a, r)
            }
        };
        self.open.insert(id, addr);
        Ok(OpenedPort { addr, reserved })
    }

    fn open_tcp(&mut self, id: AllocationId, family: Family) -> Result<OpenedPort, PortError> {
        self.open(id, family, PortRequest::Any, false)
    }

    fn close(&mut self, id: AllocationId) {
        assert!(
            self.open.remove(&id).is_some(),
            "close of an open allocation"
        );
        self.closed.push(id);
    }

    fn release_reservation(&mut self, addr: SocketAddr) {
        self.reserved.remove(&addr);
        self.released.push(addr);
    }
}

pub fn t0() -> Now {
    Now {
        mono: Instant::now(),
        unix_secs: 1_800_000_000,
    }
}

/// How a client authenticates.
#[derive(Debug, Clone)]
pub struct Creds {
    pub username: String,
    pub password: String,
    pub realm: String,
    /// PASSWORD-ALGORITHM to send (None: neither PASSWORD-ALGORITHM(S), i.e. MD5).
    pub algorithm: Option<u16>,
    pub sha256_mi: bool,
    pub userhash: bool,
}

impl Creds {
    pub fn md5(user: &str, pw: &str) -> Self {
        Creds {
            username: user.into(),
            password: pw.into(),
            realm: "tandem".into(),
            algorithm: None,
            sha256_mi: false,
            userhash: false,
        }
    }

    pub fn key(&self) -> Key {
        Key::derive(
            self.algorithm.unwrap_or(1),
            self.username.as_bytes(),
            self.realm.as_bytes(),
            self.password.as_bytes(),
        )
    }
}

/// A simulated client on one 5-tuple.
#[derive(Debug)]
pub struct Client {
    pub tuple: FiveTuple,
    pub creds: Creds,
    pub nonce: Option<Vec<u8>>,
    pub tid_counter: u32,
}

pub type Attrs<'a> = &'a dyn Fn(&mut MessageWriter<'_>);

impl Client {
    pub fn new(client: &str, creds: Creds) -> Self {
        Client {
            tuple: FiveTuple {
                local: LISTEN.parse().unwrap(),
                client: client.parse().unwrap(),
                transport: tandem_relay::turn::Transport::Udp,
            },
            creds,
            nonce: None,
            tid_counter: 0,
        }
    }

    pub fn tid(&mut self) -> [u8; 12] {
        self.tid_counter += 1;
        let mut t = [7u8; 12];
        t[..4].copy_from_slice(&self.tid_counter.to_be_bytes());
        t[4] = self.tuple.client.port() as u8;
        t
    }

    /// Build a request; with `auth` the credentials and the last nonce are added.
    pub fn build(
        &self,
        method: u16,
        tid: [u8; 12],
        attrs: Attrs<'_>,
        auth: bool,
        fingerprint: bool,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut w =
            MessageWriter::new(&mut buf, message_type(method, Class::Request), &tid).unwrap();
        attrs(&mut w);
        if auth {
            let c = &self.creds;
            if c.userhash {
                w.attr(
                    attr::USERHASH,
                    &userhash(c.username.as_bytes(), c.realm.as_bytes()),
                )
                .unwrap();
            } else {
                w.attr(attr::USERNAME, c.username.as_bytes()).unwrap();
            }
            w.attr(attr::REALM, c.realm.as_bytes()).unwrap();
            w.attr(attr::NONCE, self.nonce.as_deref().unwrap_or(b"none"))
                .unwrap();
            if let Some(alg) = c.algorithm {
                w.attr(attr::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0])
                    .unwrap();
                let a = alg.to_be_bytes();
                w.attr(attr::PASSWORD_ALGORITHM, &[a[0], a[1], 0, 0])
                    .unwrap();
            }
            let key = c.key();
            if c.sha256_mi {
                w.integrity_sha256(key.as_slice()).unwrap();
            } else {
                w.integrity_sha1(key.as_slice()).unwrap();
            }
        }
        if fingerprint {
            w.fingerprint().unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// Send a packet; returns the reply bytes (if the output is a reply).
    pub fn send(
        &self,
        srv: &mut Server,
        now: Now,
        ports: &mut FakePorts,
        packet: &[u8],
    ) -> (ClientOutput, Vec<u8>) {
        let mut out = vec![0u8; 1500];
        let o = srv.handle_client(now, self.tuple, packet, &mut out, ports);
        let reply = match &o {
            ClientOutput::Reply { len } => out[..*len].to_vec(),
            _ => Vec::new(),
        };
        (o, reply)
    }

    /// Send an authenticated request, doing the 401/438 round first when needed.
    /// Returns the final response.
    pub fn request(
        &mut self,
        srv: &mut Server,
        now: Now,
        ports: &mut FakePorts,
        method: u16,
        attrs: Attrs<'_>,
    ) -> Vec<u8> {
        for _ in 0..3 {
            let tid = self.tid();
            let p = self.build(method, tid, attrs, self.nonce.is_some(), true);
            let (_, r) = self.send(srv, now, ports, &p);
            assert!(!r.is_empty(), "no answer");
            let m = Message::decode(&r).unwrap();
            match error_code(&r) {
                Some(401) | Some(438) if self.nonce.is_none() || error_code(&r) == Some(438) => {
                    self.nonce = Some(
                        m.get(attr::NONCE)
                            .expect("challenge carries NONCE")
                            .value
                            .to_vec(),
                    );
                }
                _ => return r,
            }
        }
        panic!("could not authenticate");
    }
}

/// The error code of a response, None for success.
pub fn error_code(resp: &[u8]) -> Option<u16> {
    let m = Message::decode(resp).expect("response decodes");
    match m.class() {
        Class::ErrorResponse => {
            let v = m.get(attr::ERROR_CODE).expect("ERROR-CODE").value;
            Some(u16::from(v[2] & 7) * 100 + u16::from(v[3]))
        }
        Class::SuccessResponse => None,
        c => panic!("unexpected class {c:?}"),
    }
}

pub fn xor_addr(resp: &[u8], typ: u16) -> Option<SocketAddr> {
    let m = Message::decode(resp).unwrap();
    address::decode_xor(m.get(typ)?.value, m.transaction_id())
}

pub fn u32_attr(resp: &[u8], typ: u16) -> Option<u32> {
    let m = Message::decode(resp).unwrap();
    Some(u32::from_be_bytes(m.get(typ)?.value.try_into().ok()?))
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
