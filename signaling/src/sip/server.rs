//! The SIP server: binds the listeners and drives the registrar.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::registrar::{RegistrarConfig, RegistrarHandle, RegistrarStore};
use crate::sip::SipConfig;

/// Errors starting or running the SIP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {transport} listener on {addr}: {source}")]
    Bind { transport: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("loading stored bindings: {0}")]
    Store(String),
    #[error("server task failed: {0}")]
    Task(String),
}

/// Addresses the listeners are bound to (useful when configured with port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAddrs {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

/// A running SIP server.
#[derive(Debug)]
pub struct SipServer {
    addrs: SipAddrs,
    registrar: RegistrarHandle,
    tasks: tokio::task::JoinSet<()>,
}

impl SipServer {
    /// Binds the listeners, loads stored bindings (dropping expired ones), starts serving
    /// until `shutdown` is cancelled.
    pub async fn start<S: RegistrarStore>(
        cfg: &SipConfig,
        reg: &RegistrarConfig,
        store: S,
        shutdown: CancellationToken,
    ) -> Result<SipServer, SipError> {
        cfg.validate().map_err(SipError::Config)?;
        reg.validate().map_err(SipError::Config)?;
        let _ = (Arc::new(store), shutdown);
        Err(SipError::Task("not yet implemented".into()))
    }

    pub fn registrar(&self) -> RegistrarHandle {
        self.registrar.clone()
    }

    pub fn local_addrs(&self) -> SipAddrs {
        self.addrs
    }

    /// Resolves when the server has stopped after shutdown.
    pub async fn wait(mut self) -> Result<(), SipError> {
        while let Some(r) = self.tasks.join_next().await {
            r.map_err(|e| SipError::Task(e.to_string()))?;
        }
        Ok(())
    }
}
