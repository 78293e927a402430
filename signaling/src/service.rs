//! The SIP service: the one place that wires the layers together. It is the
//! endpoint's [`TransactionUser`]: REGISTER goes to the registrar, OPTIONS to us is
//! answered here, CANCEL is matched to the INVITE it cancels, everything else goes to
//! the proxy. [`SipServer::start`] assembles registrar -> endpoint -> proxy -> service.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::metrics::SipMetrics;
use crate::proxy::{DialPlanConfig, OfflineTargets, Proxy, ProxyConfig, RequestSender, SipSide};
use crate::registrar::{RegistrarConfig, RegistrarError, RegistrarHandle, RegistrarStore};
use crate::sip::endpoint::TuFuture;
use crate::sip::message::{HeaderName, Message};
use crate::sip::transport::Flows;
use crate::sip::{
    BoundEndpoint, Endpoint, Handled, Origin, Request, SipAddrs, SipConfig, SipError,
    TransactionUser, Upstream, ALLOW,
};

/// Option tags we support (RFC 3261 8.2.2.3). Not `path`: Path headers (RFC 3327) are
/// not stored yet, so a REGISTER that requires them gets 420.
const SUPPORTED: &[&str] = &["outbound"];

/// Errors starting the SIP side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error(transparent)]
    Sip(#[from] SipError),
    #[error(transparent)]
    Registrar(#[from] RegistrarError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Routes new requests to the registrar, the proxy or an answer of our own.
#[derive(Debug)]
pub struct Service {
    registrar: RegistrarHandle,
    proxy: Arc<Proxy>,
}

impl Service {
    pub fn new(registrar: RegistrarHandle, proxy: Arc<Proxy>) -> Service {
        Service { registrar, proxy }
    }

    async fn route(&self, req: Request<'_>, upstream: Upstream) -> Handled {
        let msg = req.msg;
        let method = msg.method().unwrap_or("");
        if !crate::methods::is_known(method) {
            return Handled::Reply(
                req.reply(501, "Not Implemented")
                    .header("Allow", ALLOW)
                    .reply(),
            );
        }
        let uri = msg.request_uri().unwrap_or("");
        let scheme = uri.split(':').next().unwrap_or("");
        if !["sip", "sips", "tel"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Handled::Reply(req.reply(416, "Unsupported URI Scheme").reply());
        }
        let required = msg.list(HeaderName::Require).unwrap_or_default();
        let unsupported: Vec<&str> = required
            .into_iter()
            .filter(|r| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(r)))
            .collect();
        if !unsupported.is_empty() && method != "CANCEL" {
            return Handled::Reply(
                req.reply(420, "Bad Extension")
                    .header("Unsupported", &unsupported.join(", "))
                    .reply(),
            );
        }
        let to_us_out_of_dialog = msg.header(HeaderName::Route).is_none()
            && !msg.to().is_some_and(|t| t.params.contains("tag"));
        match method {
            "REGISTER" => {
                let (reply, saved) = self
                    .registrar
                    .handle_register(msg, req.origin, req.top_via)
                    .await;
                // After the 200 OK: a parked call or deferred messages may now go to
                // the device.
                let registrar = self.registrar.clone();
                Handled::ReplyThen(reply, Box::new(move || registrar.announce(saved)))
            }
            "OPTIONS" if to_us_out_of_dialog => Handled::Reply(
                req.reply(200, "OK")
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .reply(),
            ),
            // RFC 3261 16.10: answered here, and the matching INVITE is cancelled on
            // every branch once the 200 is out.
            "CANCEL" => match self.proxy.cancel(req.invite_key) {
                Some(pending) => {
                    Handled::ReplyThen(req.reply(200, "OK").reply(), Box::new(|| pending.fire()))
                }
                None => Handled::Reply(req.reply(481, "Call/Transaction Does Not Exist").reply()),
            },
            _ => self.proxy.handle_request(&req, upstream).await,
        }
    }
}

impl TransactionUser for Service {
    fn on_request<'a>(&'a self, req: Request<'a>, upstream: Upstream) -> TuFuture<'a, Handled> {
        Box::pin(self.route(req, upstream))
    }

    fn on_ack<'a>(&'a self, msg: &'a Message<'a>, origin: Origin) -> TuFuture<'a, ()> {
        Box::pin(self.proxy.forward_ack(msg, origin))
    }

    fn on_response(&self, msg: &Message<'_>, raw: &[u8]) -> bool {
        self.proxy.handle_response(msg, raw)
    }
}

/// The SIP side built but not serving yet: the registrar (with its stored
/// bindings), the endpoint's bound listeners and the proxy. What plugs into them
/// (push hooks, deferred delivery) is attached before [`SipParts::serve`], so no
/// request arrives before it is in place.
pub struct SipParts {
    clock: Clock,
    metrics: SipMetrics,
    registrar: RegistrarHandle,
    proxy: Arc<Proxy>,
    bound: BoundEndpoint,
    tasks: TaskTracker,
}

impl std::fmt::Debug for SipParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipParts")
            .field("addrs", &self.bound.local_addrs())
            .finish_non_exhaustive()
    }
}

impl SipParts {
    /// Registrar -> endpoint (bound) -> proxy.
    pub async fn build<S: RegistrarStore>(
        cfg: &SipConfig,
        reg: &RegistrarConfig,
        proxy: &ProxyConfig,
        dialplan: &DialPlanConfig,
        store: S,
        shutdown: CancellationToken,
    ) -> Result<SipParts, ServiceError> {
        cfg.validate().map_err(SipError::Config)?;
        reg.validate().map_err(ServiceError::Config)?;
        proxy.validate().map_err(ServiceError::Config)?;
        dialplan.validate().map_err(ServiceError::Config)?;
        let tasks = TaskTracker::new();
        let flows = Arc::new(Flows::default());
        let metrics = SipMetrics::default();
        let clock = Clock::system();
        let (registrar, expiry) = RegistrarHandle::start(
            reg,
            &cfg.realm,
            Arc::new(store),
            flows.clone(),
            metrics.clone(),
            clock.clone(),
            shutdown.clone(),
        )
        .await?;
        tasks.spawn(async move {
            let _ = expiry.await;
        });
        let bound = Endpoint::bind(cfg, flows.clone()).await?;
        let proxy = Arc::new(Proxy::new(
            proxy.clone(),
            dialplan.clone(),
            registrar.clone(),
            SipSide {
                realm: cfg.realm.clone(),
                addrs: bound.local_addrs(),
                flows,
                timers: crate::sip::transaction::TimerConfig::default(),
                metrics: metrics.clone(),
                clock: clock.clone(),
            },
        ));
        tasks.spawn(
            proxy
                .clone()
                .registration_loop(registrar.subscribe_registrations(), shutdown),
        );
        Ok(SipParts {
            clock,
            metrics,
            registrar,
            proxy,
            bound,
            tasks,
        })
    }

    /// The clock every part reads (one instance, so a test's skew reaches all).
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    pub fn registrar(&self) -> RegistrarHandle {
        self.registrar.clone()
    }

    pub fn metrics(&self) -> SipMetrics {
        self.metrics.clone()
    }

    /// Installs the hooks for accounts whose devices are offline (push, deferred
    /// messages); without them such requests get 480.
    pub fn set_offline_targets(&self, hooks: Arc<dyn OfflineTargets>) {
        self.proxy.set_offline(hooks);
    }

    /// Calls' media goes through these relays (see [`SipServer::set_media_relays`]).
    pub fn set_media_relays(
        &self,
        relays: Arc<dyn crate::relays::MediaRelays>,
        shutdown: CancellationToken,
    ) {
        self.proxy.set_relays(relays, shutdown);
    }

    /// Sends requests of our own to registered devices (deferred delivery).
    pub fn request_sender(&self) -> Arc<dyn RequestSender> {
        self.proxy.clone()
    }

    /// The service on top, and the endpoint starts serving it.
    pub fn serve(self, shutdown: CancellationToken) -> SipServer {
        let SipParts {
            clock,
            metrics,
            registrar,
            proxy,
            bound,
            tasks,
        } = self;
        tasks.close();
        let addrs = bound.local_addrs();
        let service = Arc::new(Service::new(registrar.clone(), proxy.clone()));
        let endpoint = bound.serve(service, metrics.clone(), clock.clone(), shutdown);
        SipServer {
            clock,
            metrics,
            addrs,
            registrar,
            proxy,
            endpoint,
            tasks,
        }
    }
}

/// The SIP side of the server, assembled: registrar, endpoint, proxy, service.
#[derive(Debug)]
pub struct SipServer {
    clock: Clock,
    metrics: SipMetrics,
    addrs: SipAddrs,
    registrar: RegistrarHandle,
    proxy: Arc<Proxy>,
    endpoint: Endpoint,
    tasks: TaskTracker,
}

impl SipServer {
    /// Binds the listeners, loads stored bindings (dropping expired ones), starts serving
    /// until `shutdown` is cancelled.
    pub async fn start<S: RegistrarStore>(
        cfg: &SipConfig,
        reg: &RegistrarConfig,
        store: S,
        shutdown: CancellationToken,
    ) -> Result<SipServer, ServiceError> {
        Self::start_with_proxy(
            cfg,
            reg,
            &ProxyConfig::default(),
            &DialPlanConfig::default(),
            store,
            shutdown,
        )
        .await
    }

    /// As [`SipServer::start`] with the forking proxy's settings and dial plan.
    pub async fn start_with_proxy<S: RegistrarStore>(
        cfg: &SipConfig,
        reg: &RegistrarConfig,
        proxy: &ProxyConfig,
        dialplan: &DialPlanConfig,
        store: S,
        shutdown: CancellationToken,
    ) -> Result<SipServer, ServiceError> {
        Ok(
            SipParts::build(cfg, reg, proxy, dialplan, store, shutdown.clone())
                .await?
                .serve(shutdown),
        )
    }

    /// Installs the hooks for accounts whose devices are offline (push, deferred
    /// messages); without them such requests get 480.
    pub fn set_offline_targets(&self, hooks: Arc<dyn OfflineTargets>) {
        self.proxy.set_offline(hooks);
    }

    /// Calls' media goes through these relays from now on (SDP rewritten, one
    /// session per call); calls whose session ends on the relay's side get a BYE.
    pub fn set_media_relays(
        &self,
        relays: Arc<dyn crate::relays::MediaRelays>,
        shutdown: CancellationToken,
    ) {
        self.proxy.set_relays(relays, shutdown);
    }

    /// Sends requests of our own to registered devices as client transactions of the
    /// proxy (deferred message delivery).
    pub fn request_sender(&self) -> Arc<dyn RequestSender> {
        self.proxy.clone()
    }

    /// The clock the registrar and the proxy read; tests advance it instead of
    /// sleeping.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The SIP metrics (register them with [`SipMetrics::register`]).
    pub fn metrics(&self) -> SipMetrics {
        self.metrics.clone()
    }

    pub fn registrar(&self) -> RegistrarHandle {
        self.registrar.clone()
    }

    pub fn local_addrs(&self) -> SipAddrs {
        self.addrs
    }

    /// Starts draining: new out-of-dialog requests get 503 with `Retry-After`, and
    /// every forked request still deciding ends (branches cancelled, the caller
    /// answered 503). Returns how many requests were told to end.
    pub fn drain(&self) -> usize {
        self.proxy.drain()
    }

    /// Requests the proxy still holds (deciding, or finishing their cancels).
    pub fn requests_in_progress(&self) -> usize {
        self.proxy.requests_in_progress()
    }

    /// Forked requests whose caller has no final response yet.
    pub fn requests_deciding(&self) -> usize {
        self.proxy.requests_deciding()
    }

    /// Resolves when everything has stopped after shutdown.
    pub async fn wait(self) -> Result<(), SipError> {
        let r = self.endpoint.wait().await;
        self.tasks.wait().await;
        r
    }
}
