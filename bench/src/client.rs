//! A small TURN client (RFC 8656 over UDP) for the load generators, plus the client
//! side of the forwarder's setup exchange.
//!
//! Requests are built with the relay crate's STUN encoder and responses read with its
//! borrowing decoder; what a client needs beyond that (the 401/438 nonce dance,
//! retransmission, REST credentials) is here. Only the parts a load generator uses:
//! Allocate, ChannelBind (which installs the permission) and Refresh, long-term credentials with
//! MD5 keys (what every server supports).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use tandem_relay::stun::{
    address, attr, integrity, message_type, method, Class, Message, MessageWriter, TransactionId,
};
use tokio::net::UdpSocket;

/// How the load generator authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Long-term credentials (`--user NAME:PASSWORD`).
    LongTerm { user: String, password: String },
    /// REST credentials minted from a shared secret (`--secret`), as coturn's
    /// `use-auth-secret`: `username = expiry[:user]`, `password = base64(HMAC-SHA1)`.
    Secret { secret: String },
}

impl Credentials {
    /// The username and password to present.
    pub fn resolve(&self) -> (String, String) {
        match self {
            Credentials::LongTerm { user, password } => (user.clone(), password.clone()),
            Credentials::Secret { secret } => {
                let expiry = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + 3600;
                let user = format!("{expiry}:bench");
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
                    .expect("HMAC takes any key length");
                mac.update(user.as_bytes());
                let pw =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                (user, pw)
            }
        }
    }
}

/// What the client talks to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Any RFC 8656 TURN server.
    Turn(Credentials),
    /// The harness's own forwarder (setup exchange of [`crate::setup`]).
    Forwarder,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: no response after retransmissions")]
    Timeout { what: &'static str },
    #[error("{what}: error response {code} {reason}")]
    Rejected {
        what: &'static str,
        code: u16,
        reason: String,
    },
    #[error("{what}: malformed response ({detail})")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

/// Retransmission schedule (RFC 8489 section 6.2.1 uses RTO 500 ms doubling; on
/// loopback a shorter first timeout keeps a lost packet from stalling the setup).
const RTO: [u64; 6] = [250, 500, 1000, 1000, 1000, 1000];

/// One client 5-tuple with its allocation.
#[derive(Debug)]
pub struct TurnClient {
    pub sock: UdpSocket,
    session: Session,
}

/// Everything of a [`TurnClient`] but its socket (kept while the socket is lent to
/// the synchronous datapath).
#[derive(Debug)]
pub struct Session {
    target: Target,
    user: String,
    /// Resolved once: REST usernames embed a timestamp, so the password is bound to
    /// the username minted with it.
    password: String,
    key: Vec<u8>,
    realm: Vec<u8>,
    nonce: Vec<u8>,
}

fn error_code(m: &Message<'_>) -> (u16, String) {
    match m.get(attr::ERROR_CODE) {
        Some(a) if a.value.len() >= 4 => {
            let code = u16::from(a.value[2] & 7) * 100 + u16::from(a.value[3]);
            (code, String::from_utf8_lossy(&a.value[4..]).into_owned())
        }
        _ => (0, String::new()),
    }
}

impl TurnClient {
    /// Bind a fresh local port on 127.0.0.1 and connect it to `server`.
    pub async fn connect(server: SocketAddr, target: Target) -> Result<Self, ClientError> {
        Self::connect_from(std::net::Ipv4Addr::LOCALHOST.into(), server, target).await
    }

    /// Bind a fresh local port on `local` (a loopback address) and connect it to `server`.
    pub async fn connect_from(
        local: std::net::IpAddr,
        server: SocketAddr,
        target: Target,
    ) -> Result<Self, ClientError> {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
        sock.connect(server).await?;
        let (user, password) = match &target {
            Target::Turn(c) => c.resolve(),
            Target::Forwarder => (String::new(), String::new()),
        };
        Ok(TurnClient {
            sock,
            session: Session {
                target,
                user,
                key: Vec::new(), // the MD5 key, once the realm is known
                password,
                realm: Vec::new(),
                nonce: Vec::new(),
            },
        })
    }

    /// Lend the socket to blocking code (non-blocking mode stays on).
    pub fn into_std(self) -> std::io::Result<(std::net::UdpSocket, Session)> {
        Ok((self.sock.into_std()?, self.session))
    }

    /// Take the socket back (inside a tokio runtime).
    pub fn from_std(sock: std::net::UdpSocket, session: Session) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(TurnClient {
            sock: UdpSocket::from_std(sock)?,
            session,
        })
    }

    /// Send `req` and wait for the datagram `accept` recognises as its answer.
    async fn exchange(
        &self,
        what: &'static str,
        req: &[u8],
        accept: impl Fn(&[u8]) -> bool,
        buf: &mut [u8],
    ) -> Result<usize, ClientError> {
        for rto in RTO {
            self.sock.send(req).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(rto);
            loop {
                match tokio::time::timeout_at(deadline, self.sock.recv(buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        // ICMP from a server that is not up yet: retry after the timeout.
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(n)) if accept(&buf[..n]) => return Ok(n),
                    Ok(Ok(_)) => continue, // stray datagram (late retransmission answer)
                }
            }
        }
        Err(ClientError::Timeout { what })
    }

    /// One authenticated STUN transaction; handles 401 (first contact) and 438
    /// (stale nonce) by retrying with the new realm and nonce.
    async fn transaction(
        &mut self,
        what: &'static str,
        meth: u16,
        add: &(dyn Fn(&mut MessageWriter<'_>, &TransactionId) + Sync),
        out: &mut [u8],
    ) -> Result<usize, ClientError> {
        let mut req = [0u8; 512];
        for _attempt in 0..3 {
            let tid: TransactionId = rand::rng().random();
            let mut w = MessageWriter::new(&mut req, message_type(meth, Class::Request), &tid)
                .map_err(|_| ClientError::Malformed {
                    what,
                    detail: "encode",
                })?;
            add(&mut w, &tid);
            let authed = !self.session.nonce.is_empty();
            if authed {
                let enc =
                    |w: &mut MessageWriter<'_>| -> Result<(), tandem_relay::stun::EncodeError> {
                        w.attr(attr::USERNAME, self.session.user.as_bytes())?;
                        w.attr(attr::REALM, &self.session.realm)?;
                        w.attr(attr::NONCE, &self.session.nonce)?;
                        w.integrity_sha1(&self.session.key)?;
                        w.fingerprint()
                    };
                enc(&mut w).map_err(|_| ClientError::Malformed {
                    what,
                    detail: "encode",
                })?;
            } else {
                let _ = w.fingerprint();
            }
            let n = w.finish();
            let got = self
                .exchange(
                    what,
                    &req[..n],
                    |d| Message::decode(d).is_ok_and(|m| *m.transaction_id() == tid),
                    out,
                )
                .await?;
            let m = Message::decode(&out[..got]).map_err(|_| ClientError::Malformed {
                what,
                detail: "undecodable",
            })?;
            match m.class() {
                Class::SuccessResponse => return Ok(got),
                Class::ErrorResponse => {
                    let (code, reason) = error_code(&m);
                    let retry = (code == 401 && !authed) || code == 438;
                    if retry {
                        if let (Some(r), Some(nonce)) = (m.get(attr::REALM), m.get(attr::NONCE)) {
                            if code == 401 || self.session.realm.is_empty() {
                                self.session.realm = r.value.to_vec();
                                self.session.key = integrity::long_term_key_md5(
                                    self.session.user.as_bytes(),
                                    &self.session.realm,
                                    self.session.password.as_bytes(),
                                )
                                .to_vec();
                            }
                            self.session.nonce = nonce.value.to_vec();
                            continue;
                        }
                    }
                    return Err(ClientError::Rejected { what, code, reason });
                }
                _ => {
                    return Err(ClientError::Malformed {
                        what,
                        detail: "not a response",
                    })
                }
            }
        }
        Err(ClientError::Rejected {
            what,
            code: 401,
            reason: "authentication loop".into(),
        })
    }

    /// Allocate a UDP relayed address; returns it.
    pub async fn allocate(&mut self) -> Result<SocketAddr, ClientError> {
        let mut out = [0u8; 1500];
        if let Target::Forwarder = self.session.target {
            let n = self
                .exchange(
                    "allocate",
                    &[0xFF, b'A'],
                    |d| d.starts_with(&[0xFF, b'A']),
                    &mut out,
                )
                .await?;
            return crate::setup::parse_alloc_reply(&out[..n]).ok_or(ClientError::Malformed {
                what: "allocate",
                detail: "forwarder reply",
            });
        }
        let n = self
            .transaction(
                "allocate",
                method::ALLOCATE,
                &|w, _| {
                    let _ = w.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
                },
                &mut out,
            )
            .await?;
        let m = Message::decode(&out[..n]).map_err(|_| ClientError::Malformed {
            what: "allocate",
            detail: "undecodable",
        })?;
        m.get(attr::XOR_RELAYED_ADDRESS)
            .and_then(|a| address::decode_xor(a.value, m.transaction_id()))
            .ok_or(ClientError::Malformed {
                what: "allocate",
                detail: "no XOR-RELAYED-ADDRESS",
            })
    }

    /// Bind `channel` to `peer` (this also installs the permission).
    pub async fn channel_bind(
        &mut self,
        channel: u16,
        peer: SocketAddr,
    ) -> Result<(), ClientError> {
        let mut out = [0u8; 1500];
        if let Target::Forwarder = self.session.target {
            let req = crate::setup::bind_request(channel, peer).ok_or(ClientError::Malformed {
                what: "channel bind",
                detail: "forwarder takes IPv4 only",
            })?;
            self.exchange(
                "channel bind",
                &req,
                |d| d.starts_with(&[0xFF, b'B']),
                &mut out,
            )
            .await?;
            return Ok(());
        }
        self.transaction(
            "channel bind",
            method::CHANNEL_BIND,
            &|w, _| {
                let mut v = [0u8; 4];
                v[..2].copy_from_slice(&channel.to_be_bytes());
                let _ = w.attr(attr::CHANNEL_NUMBER, &v);
                let _ = w.xor_address(attr::XOR_PEER_ADDRESS, &peer);
            },
            &mut out,
        )
        .await?;
        Ok(())
    }

    /// Refresh the allocation; lifetime 0 deletes it.
    pub async fn refresh(&mut self, lifetime: u32) -> Result<(), ClientError> {
        let mut out = [0u8; 1500];
        if let Target::Forwarder = self.session.target {
            self.exchange(
                "refresh",
                &[0xFF, b'D'],
                |d| d.starts_with(&[0xFF, b'D']),
                &mut out,
            )
            .await?;
            return Ok(());
        }
        self.transaction(
            "refresh",
            method::REFRESH,
            &|w, _| {
                let _ = w.u32_attr(attr::LIFETIME, lifetime);
            },
            &mut out,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_follow_the_shared_secret_scheme() {
        let (user, pw) = Credentials::Secret {
            secret: "s3cret".into(),
        }
        .resolve();
        let (expiry, name) = user.split_once(':').unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry > now && expiry <= now + 3601);
        assert_eq!(name, "bench");
        // base64 of a 20-byte HMAC-SHA1, checked against the relay's own verifier key
        // derivation input: same username and secret give the same password.
        assert_eq!(pw.len(), 28);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        mac.update(user.as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(pw, want);
    }

    #[test]
    fn error_code_is_read() {
        let mut buf = [0u8; 64];
        let tid = [1u8; 12];
        let mut w = MessageWriter::new(
            &mut buf,
            message_type(method::ALLOCATE, Class::ErrorResponse),
            &tid,
        )
        .unwrap();
        w.error_code(437, "Allocation Mismatch").unwrap();
        let n = w.finish();
        let m = Message::decode(&buf[..n]).unwrap();
        assert_eq!(error_code(&m), (437, "Allocation Mismatch".to_string()));
    }
}
