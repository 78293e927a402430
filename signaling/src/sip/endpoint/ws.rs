//! SIP over WebSocket and secure WebSocket (RFC 7118).
//!
//! A connection is a flow like a TCP one (same connection shares, same idle timer,
//! keyed by transport and remote address in [`Flows`]), after an HTTP upgrade that
//! must ask for the `sip` subprotocol (RFC 7118 section 4). Each WebSocket message
//! carries exactly one SIP message (section 5.1), text or binary; we send text
//! (binary only for a message that is not UTF-8, which section 5.1 allows). No
//! framing by Content-Length is needed, and a message or frame over
//! `sip.max_message_size` closes the connection with status 1009. WebSocket pings
//! are answered by the WebSocket layer; a CRLF keep-alive inside a message is
//! ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::Server;
use crate::metrics::DropReason;
use crate::sip::transport::Transport;
use crate::sip::Origin;

/// The WebSocket subprotocol of SIP (RFC 7118 section 4, IANA registry).
pub const SUBPROTOCOL: &str = "sip";

/// How long a closing connection may take to send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers the HTTP upgrade: accepted only when the client offers the `sip`
/// subprotocol, which the answer then names (RFC 7118 section 4; RFC 6455 4.2.2).
/// Anything else gets 400 with a short reason, and the connection closes.
#[allow(clippy::result_large_err)] // the error type is the WebSocket crate's
pub(crate) fn check_subprotocol(
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    let offers_sip = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offers_sip {
        let mut refusal = ErrorResponse::new(Some(
            "SIP over WebSocket needs Sec-WebSocket-Protocol: sip (RFC 7118)\n".to_owned(),
        ));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

impl Server {
    /// Accepts WS (`tls` is `None`) or WSS connections until shutdown.
    pub(super) async fn ws_accept_loop(
        self: Arc<Self>,
        l: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let transport = if tls.is_some() {
            Transport::Wss
        } else {
            Transport::Ws
        };
        loop {
            let (stream, remote) = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let Some((source_slot, permit)) = self.admit(remote) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(remote);
            let me = self.clone();
            let tls = tls.clone();
            self.tracker.spawn(async move {
                let hs = Duration::from_secs(me.cfg.tls_handshake_timeout_secs);
                match tls {
                    None => me.ws_serve(stream, transport, remote, local).await,
                    Some(acc) => match tokio::time::timeout(hs, acc.accept(stream)).await {
                        Ok(Ok(s)) => me.ws_serve(s, transport, remote, local).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed (WSS)"),
                        Err(_) => tracing::debug!("TLS handshake timed out (WSS)"),
                    },
                }
                drop(permit);
                drop(source_slot);
            });
        }
    }

    /// The HTTP upgrade, then one connection's SIP messages until it closes, idles
    /// out, breaks a limit, or its flow is closed from elsewhere.
    async fn ws_serve<S>(
        self: Arc<Self>,
        stream: S,
        transport: Transport,
        remote: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let max = self.cfg.max_message_size;
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let hs = Duration::from_secs(self.cfg.tls_handshake_timeout_secs);
        let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            check_subprotocol,
            Some(config),
        );
        let ws = match tokio::time::timeout(hs, upgrade).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                self.metrics.drop(DropReason::WsHandshake);
                tracing::debug!(transport = transport.as_str(), error = %e, "WebSocket upgrade refused");
                return;
            }
            Err(_) => {
                self.metrics.drop(DropReason::WsHandshake);
                tracing::debug!(
                    transport = transport.as_str(),
                    "WebSocket upgrade timed out"
                );
                return;
            }
        };
        let (mut sink, mut incoming) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let close = self.shutdown.child_token();
        let id = self.flows.add(transport, remote, tx, close.clone());
        tracing::debug!(transport = transport.as_str(), "WebSocket flow open");
        let writer_close = close.clone();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = writer_close.cancelled() => break,
                    m = rx.recv() => match m {
                        Some(bytes) => {
                            let msg = match String::from_utf8(bytes) {
                                Ok(text) => WsMessage::text(text),
                                Err(e) => WsMessage::binary(e.into_bytes()),
                            };
                            if sink.send(msg).await.is_err() {
                                return None;
                            }
                        }
                        None => break,
                    },
                }
            }
            Some(sink)
        });
        let idle = self.cfg.idle_timeout();
        let mut code = CloseCode::Normal;
        loop {
            let next = tokio::select! {
                _ = close.cancelled() => break,
                r = tokio::time::timeout(idle, incoming.next()) => r,
            };
            let data = match next {
                Err(_) => {
                    tracing::debug!(transport = transport.as_str(), "idle connection closed");
                    code = CloseCode::Away;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(WsError::Capacity(e)))) => {
                    // Over sip.max_message_size (frame or message): RFC 6455 7.4.1.
                    self.metrics.drop(DropReason::Oversized);
                    tracing::debug!(transport = transport.as_str(), error = %e, "WebSocket message too large, closing");
                    code = CloseCode::Size;
                    break;
                }
                Ok(Some(Err(e))) => {
                    self.metrics.drop(DropReason::Unparseable);
                    tracing::debug!(transport = transport.as_str(), error = %e, "WebSocket protocol error, closing");
                    code = CloseCode::Protocol;
                    break;
                }
                Ok(Some(Ok(m))) => match m {
                    WsMessage::Text(t) => t.into(),
                    WsMessage::Binary(b) => b,
                    WsMessage::Close(_) => break,
                    // Pings are answered by the WebSocket layer on the next read.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                },
            };
            // A CRLF keep-alive some clients send out of habit (RFC 5626 4.4.1 is
            // for streams; WebSocket has its own pings): nothing to handle.
            if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
                continue;
            }
            self.handle(
                &data,
                Origin {
                    transport,
                    source: remote,
                    local,
                },
            )
            .await;
        }
        self.flows.remove(transport, remote, id);
        close.cancel();
        tracing::debug!(transport = transport.as_str(), "WebSocket flow closed");
        if let Ok(Some(mut sink)) = writer.await {
            let frame = CloseFrame {
                code,
                reason: "".into(),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                let _ = sink.send(WsMessage::Close(Some(frame))).await;
                let _ = sink.close().await;
            })
            .await;
        }
    }
}
