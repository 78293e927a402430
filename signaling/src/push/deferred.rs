//! Delivery of deferred messages when their device registers (seed manual, "Deferred
//! messages"): on each registration event the device's pending messages are claimed
//! (a lease, so one deliverer at a time), sent one by one in order as MESSAGE requests
//! with their original Date, and acknowledged in the store on the device's 2xx only.
//! The first failure stops the round and gives the rest back, so order holds and
//! nothing is lost; the next registration tries again.
//!
//! Sending a request and learning its final status needs a client transaction, which
//! the proxy owns: it implements [`RequestSender`].

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::model::{Binding, DeferredMessage};
use crate::registrar::Registered;
use crate::store::Store;

pub use crate::proxy::{RequestSender, SendFuture};

/// How a delivery round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    pub delivered: usize,
    /// Messages given back for a later registration (after a failure).
    pub released: usize,
}

/// The MESSAGE that delivers `m` to `binding` (RFC 3428), From the original sender,
/// To the account's AOR, with the original Date and a Call-ID that is the same on
/// every attempt (see [`DeferredMessage::delivery_call_id`]).
pub fn build_message(m: &DeferredMessage, binding: &Binding, to_aor: &str, host: &str) -> Vec<u8> {
    let transport = binding.transport.to_ascii_uppercase();
    let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
    let tag = format!("{:016x}", rand::random::<u64>());
    // The stored From without any tag of the original request.
    let from = match crate::sip::grammar::name_addr(&m.sender) {
        Some(na) => match &na.display_name {
            Some(d) if !d.is_empty() => format!("\"{}\" <{}>", d.replace(['"', '\\'], ""), na.uri),
            _ => format!("<{}>", na.uri),
        },
        None => format!("<{}>", m.sender.split(';').next().unwrap_or("")),
    };
    let mut out = format!(
        "MESSAGE {uri} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: {from};tag={tag}\r\n\
         To: <{to_aor}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 MESSAGE\r\n",
        uri = binding.contact_uri,
        local = binding.local,
        call_id = m.delivery_call_id(host),
    );
    if let Some(d) = &m.date {
        out.push_str(&format!("Date: {d}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
        m.content_type,
        m.body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&m.body);
    bytes
}

/// Delivers the pending messages of the device behind `binding`, in order; returns
/// what happened. `realm` builds the To AOR (`sip:<login>@<realm>`).
pub async fn deliver_pending(
    store: &Store,
    sender: &dyn RequestSender,
    binding: &Binding,
    realm: &str,
) -> Result<Round, crate::store::StoreError> {
    let now = crate::store::unix_now();
    let msgs = store
        .claim_deferred(binding.account_id, &binding.instance_id, now, LEASE_SECS)
        .await?;
    let mut lease_end = now + LEASE_SECS;
    if msgs.is_empty() {
        return Ok(Round::default());
    }
    let login = store
        .get_account(binding.account_id)
        .await?
        .map(|a| a.login)
        .unwrap_or_default();
    let aor = format!("sip:{login}@{realm}");
    let mut round = Round::default();
    for (i, m) in msgs.iter().enumerate() {
        // The lease must outlive this message's transaction (Timer F), or a later
        // registration could start a second round and deliver out of order.
        let now = crate::store::unix_now();
        if lease_end - now < TIMER_F_SECS + 8 {
            let rest: Vec<i64> = msgs.get(i..).unwrap_or(&[]).iter().map(|m| m.id).collect();
            lease_end = now + LEASE_SECS;
            store.extend_deferred_lease(&rest, lease_end).await?;
        }
        let status = sender
            .send_request(binding, build_message(m, binding, &aor, realm))
            .await;
        match status {
            Some(code) if (200..300).contains(&code) => {
                store
                    .ack_deferred(&[m.id], crate::store::unix_now())
                    .await?;
                round.delivered += 1;
            }
            other => {
                tracing::info!(
                    account = binding.account_id,
                    status = ?other,
                    "deferred message not taken; kept for the next registration"
                );
                let rest: Vec<i64> = msgs.get(i..).unwrap_or(&[]).iter().map(|m| m.id).collect();
                store.release_deferred(&rest).await?;
                round.released = rest.len();
                break;
            }
        }
    }
    Ok(round)
}

/// RFC 3261 Timer F with the default T1: the longest one MESSAGE can take.
const TIMER_F_SECS: i64 = 32;
/// A round's delivery lease; renewed while it sends, so that it always covers the
/// message in flight.
const LEASE_SECS: i64 = 2 * TIMER_F_SECS;

/// Delivery rounds running at once; further registration events wait for a slot.
pub const MAX_ROUNDS: usize = 64;

/// Runs until `shutdown`: for every registration event, delivers that device's
/// pending messages (at most [`MAX_ROUNDS`] devices at once; rounds of one device
/// never overlap thanks to the claim lease).
pub async fn run_delivery(
    store: Store,
    sender: Arc<dyn RequestSender>,
    events: broadcast::Receiver<Registered>,
    realm: String,
    shutdown: CancellationToken,
) {
    run_delivery_reporting(store, sender, events, realm, None, shutdown).await
}

/// [`run_delivery`], also sending how each round ended to `rounds` (when it has
/// room): what tests wait for instead of sleeping and asserting that nothing more
/// happened.
pub async fn run_delivery_reporting(
    store: Store,
    sender: Arc<dyn RequestSender>,
    mut events: broadcast::Receiver<Registered>,
    realm: String,
    rounds: Option<tokio::sync::mpsc::Sender<Round>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ROUNDS));
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "deferred delivery fell behind registrations");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (store, sender, realm) = (store.clone(), sender.clone(), realm.clone());
        let rounds = rounds.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match deliver_pending(&store, sender.as_ref(), &ev.binding, &realm).await {
                Ok(round) => {
                    if let Some(r) = rounds {
                        let _ = r.try_send(round);
                    }
                }
                Err(e) => tracing::error!(error = %e, "deferred delivery failed"),
            }
        });
    }
}
