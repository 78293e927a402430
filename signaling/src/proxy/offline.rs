//! Where push notifications and deferred messages hook into the proxy: the request
//! as the hooks see it, and what they may do with it.

use crate::model::AccountId;
use crate::sip::message::{HeaderName, Message};

/// A request for one of our accounts, as the offline hooks see it.
#[derive(Debug, Clone)]
pub struct ForkedRequest {
    /// The called account.
    pub account: AccountId,
    /// `INVITE` or `MESSAGE`.
    pub method: String,
    pub call_id: String,
    /// The From header value (display name and URI).
    pub from: String,
    pub content_type: Option<String>,
    /// The Date header, when the sender put one.
    pub date: Option<String>,
    pub body: Vec<u8>,
    /// Instances of the devices that got the request live (empty when none did).
    pub live_instances: Vec<String>,
    /// The proxy authenticated the sender as one of our accounts. Anybody else is a
    /// foreign sender, whose From (any name, any user part) proves nothing.
    pub local_sender: bool,
}

/// Boxed future returned by [`OfflineTargets`] hooks.
pub type HookFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where push notifications and deferred messages hook into the proxy. The proxy
/// itself only forks to live bindings; a device that registers while a call rings
/// joins it as a new branch on its own (see `Proxy::registration_loop`).
pub trait OfflineTargets: Send + Sync + 'static {
    /// No device of the account is registered: the status to answer with (for
    /// example 202 after a MESSAGE was stored, or a parked INVITE's final answer).
    fn no_live_binding<'a>(&'a self, req: &'a ForkedRequest)
        -> HookFuture<'a, (u16, &'static str)>;

    /// A MESSAGE was forked to the live devices in `req.live_instances` (called
    /// once, when the fork starts): the place to store it for the devices that are
    /// offline and push them.
    fn forked<'a>(&'a self, req: &'a ForkedRequest) -> HookFuture<'a, ()> {
        let _ = req;
        Box::pin(async {})
    }

    /// Whether [`Self::push_call`] can reach anyone (a push provider is configured).
    /// When it cannot, a call to an account with nobody registered ends at once.
    fn pushes_calls(&self) -> bool {
        false
    }

    /// Pushes `kind` about the call `req` to the devices of the account that have a
    /// push target and are chosen by `to`; returns the instances it was queued for.
    fn push_call<'a>(
        &'a self,
        req: &'a ForkedRequest,
        kind: CallPush,
        to: PushTo,
    ) -> HookFuture<'a, Vec<String>> {
        let _ = (req, kind, to);
        Box::pin(async { Vec::new() })
    }
}

/// The push notifications of a call's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPush {
    /// `incoming_call`: the call is waiting for the device.
    Incoming,
    /// `missed_call`: the caller hung up, or nobody answered in time.
    Missed,
    /// `call_cancelled`: answered or declined on another device.
    Cancelled,
}

/// Which devices of the called account a call push goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTo {
    /// Every device with a push target except these instances.
    AllExcept(Vec<String>),
    /// Only these instances (those that got `incoming_call`).
    Only(Vec<String>),
}

/// The behaviour without push or message storage: 480 Temporarily Unavailable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl OfflineTargets for Unavailable {
    fn no_live_binding<'a>(
        &'a self,
        _req: &'a ForkedRequest,
    ) -> HookFuture<'a, (u16, &'static str)> {
        Box::pin(async { (480, "Temporarily Unavailable") })
    }
}

pub(crate) fn forked_request(
    msg: &Message<'_>,
    account: AccountId,
    live: Vec<String>,
    local_sender: bool,
) -> ForkedRequest {
    ForkedRequest {
        account,
        method: msg.method().unwrap_or("").to_owned(),
        call_id: msg.call_id().unwrap_or("").to_owned(),
        from: msg.header(HeaderName::From).unwrap_or("").to_owned(),
        content_type: msg.header(HeaderName::ContentType).map(str::to_owned),
        date: msg.header(HeaderName::Other("Date")).map(str::to_owned),
        body: msg.body.to_vec(),
        live_instances: live,
        local_sender,
    }
}
