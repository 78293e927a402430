//! Connection-oriented flows (TCP, TLS, WebSocket) and where to send a message.
//!
//! Every accepted TCP/TLS/WS/WSS connection is a flow keyed by (transport, remote
//! address). A WebSocket client (a browser, RFC 7118) has no address of its own that
//! could be reached: its Contact host is a made-up `.invalid` name, so its flow is the
//! only way to it.
//! Requests to a device that registered over TCP/TLS go back over that flow (RFC 5626
//! connection reuse); responses go over the connection the request came on
//! (RFC 3261 18.2.2). A flow can be closed from elsewhere (a replaced or revoked
//! binding) through its cancellation token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// SIP transport of a flow or datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    /// SIP over WebSocket (RFC 7118).
    Ws,
    /// SIP over secure WebSocket (RFC 7118).
    Wss,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The transport's name in a Via header (RFC 3261 20.42, RFC 7118 5).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Whether the transport runs over TLS (`sips:` in a Record-Route we write).
    pub fn secure(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            "ws" => Some(Transport::Ws),
            "wss" => Some(Transport::Wss),
            _ => None,
        }
    }

    pub fn reliable(self) -> bool {
        self != Transport::Udp
    }
}

#[derive(Debug)]
struct Flow {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    close: CancellationToken,
}

/// Boxed future of [`Connector::connect`].
pub type ConnectFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// Opens a new outbound connection, which becomes a flow like an accepted one (the
/// SIP endpoint implements it). Resolves to whether the flow is open.
pub trait Connector: Send + Sync {
    fn connect(&self, t: Transport, remote: SocketAddr) -> ConnectFuture<'_>;
}

/// The open flows and the UDP socket.
#[derive(Default)]
pub struct Flows {
    next_id: AtomicU64,
    flows: Mutex<HashMap<(Transport, SocketAddr), Flow>>,
    udp: Mutex<Option<Arc<UdpSocket>>>,
    connector: Mutex<Option<Arc<dyn Connector>>>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("open", &self.len())
            .finish_non_exhaustive()
    }
}

impl Flows {
    /// Where new outbound connections come from.
    pub fn set_connector(&self, c: Arc<dyn Connector>) {
        if let Ok(mut g) = self.connector.lock() {
            *g = Some(c);
        }
    }

    /// Like [`Flows::send`], but over TCP a connection is opened first when none is
    /// open to `remote` (a request to a device whose registration's connection is
    /// gone, after a restart for one: RFC 3261 18.1.1). Requests only: responses go
    /// back over the connection the request came on, or nowhere.
    pub async fn send_or_connect(&self, t: Transport, remote: SocketAddr, bytes: Vec<u8>) -> bool {
        if t.reliable() && !self.is_open(t, remote) {
            let c = self.connector.lock().ok().and_then(|g| g.clone());
            let Some(c) = c else { return false };
            if !c.connect(t, remote).await {
                return false;
            }
        }
        self.send(t, remote, bytes).await
    }

    pub fn set_udp(&self, s: Arc<UdpSocket>) {
        if let Ok(mut g) = self.udp.lock() {
            *g = Some(s);
        }
    }

    /// Registers a new flow; returns its id (for [`Flows::remove`]). A previous flow
    /// from the same address is closed.
    pub fn add(
        &self,
        t: Transport,
        remote: SocketAddr,
        tx: mpsc::Sender<Vec<u8>>,
        close: CancellationToken,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.flows.lock() {
            if let Some(old) = g.insert((t, remote), Flow { id, tx, close }) {
                old.close.cancel();
            }
        }
        id
    }

    pub fn remove(&self, t: Transport, remote: SocketAddr, id: u64) {
        if let Ok(mut g) = self.flows.lock() {
            if g.get(&(t, remote)).is_some_and(|f| f.id == id) {
                g.remove(&(t, remote));
            }
        }
    }

    /// Closes the flow, if open.
    pub fn close(&self, t: Transport, remote: SocketAddr) {
        if let Ok(mut g) = self.flows.lock() {
            if let Some(f) = g.remove(&(t, remote)) {
                f.close.cancel();
            }
        }
    }

    pub fn is_open(&self, t: Transport, remote: SocketAddr) -> bool {
        self.flows
            .lock()
            .map(|g| g.contains_key(&(t, remote)))
            .unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.flows.lock().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `bytes` to `remote` over `t`: the UDP socket, or the open flow. Returns
    /// false when there is no way to send (flow gone, queue full).
    pub async fn send(&self, t: Transport, remote: SocketAddr, bytes: Vec<u8>) -> bool {
        match t {
            Transport::Udp => {
                let sock = self.udp.lock().ok().and_then(|g| g.clone());
                match sock {
                    Some(s) => s.send_to(&bytes, remote).await.is_ok(),
                    None => false,
                }
            }
            _ => {
                let tx = self
                    .flows
                    .lock()
                    .ok()
                    .and_then(|g| g.get(&(t, remote)).map(|f| f.tx.clone()));
                match tx {
                    Some(tx) => tx.try_send(bytes).is_ok(),
                    None => false,
                }
            }
        }
    }
}
