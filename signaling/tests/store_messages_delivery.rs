//! Delivery of deferred messages on registration (push::deferred) against a fake
//! client-transaction layer, on SQLite and PostgreSQL: in order, with the original
//! Date, acknowledged only on 2xx, the rest kept on a failure, once across a reopen
//! of the database, driven by registration events.

mod store_support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store_support::{Backend, TestDb};
use tandem_signaling::model::{Binding, DeviceClass};
use tandem_signaling::push::deferred::{
    deliver_pending, run_delivery_reporting, RequestSender, Round, SendFuture,
};
use tandem_signaling::registrar::Registered;
use tandem_signaling::sip::message::{HeaderName, Message};
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDeferred, NewDevice, Store};
use tokio_util::sync::CancellationToken;

const DEV: &str = "urn:uuid:00000000-0000-4000-8000-0000000000d1";
const REALM: &str = "tandem.local";

/// Records requests; answers from a script (then 200).
#[derive(Default)]
struct FakeUa {
    sent: Mutex<Vec<Vec<u8>>>,
    answers: Mutex<VecDeque<Option<u16>>>,
}

impl RequestSender for FakeUa {
    fn send_request<'a>(&'a self, _binding: &'a Binding, request: Vec<u8>) -> SendFuture<'a> {
        Box::pin(async move {
            self.sent.lock().unwrap().push(request);
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Some(200))
        })
    }
}

impl FakeUa {
    fn script(&self, a: &[Option<u16>]) {
        self.answers.lock().unwrap().extend(a.iter().copied());
    }
    /// (body, Date, Call-ID, To, From) of each request sent, after parsing it.
    fn sent(&self) -> Vec<(String, String, String, String, String)> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                let m = Message::parse(b).expect("a valid SIP request");
                m.validate_request().expect("well formed");
                assert_eq!(m.method(), Some("MESSAGE"));
                assert_eq!(
                    m.request_uri(),
                    Some("sip:alice@127.0.0.1:5070;transport=tcp")
                );
                assert_eq!(
                    m.header(HeaderName::ContentType),
                    Some("text/plain;charset=UTF-8")
                );
                (
                    String::from_utf8(m.body.to_vec()).unwrap(),
                    m.header(HeaderName::Other("Date"))
                        .unwrap_or_default()
                        .to_owned(),
                    m.call_id().unwrap().to_owned(),
                    m.header(HeaderName::To).unwrap().to_owned(),
                    m.header(HeaderName::From).unwrap().to_owned(),
                )
            })
            .collect()
    }
}

async fn setup(store: &Store) -> (i64, Binding) {
    let account = store
        .create_account(&NewAccount {
            login: "alice",
            password: "secret-password",
            realm: REALM,
            country_code: "48",
            display_name: None,
        })
        .await
        .unwrap()
        .id;
    store
        .authorise_device(
            account,
            &NewDevice {
                instance_id: DEV,
                class: DeviceClass::Mobile,
                name: "phone",
                push_provider: None,
                push_token: None,
            },
            &DeviceLimits::default(),
        )
        .await
        .unwrap();
    let binding = Binding {
        account_id: account,
        instance_id: DEV.to_owned(),
        reg_id: 1,
        contact_uri: "sip:alice@127.0.0.1:5070;transport=tcp".to_owned(),
        expires_at: i64::MAX / 2,
        call_id: "reg-1".to_owned(),
        cseq: 1,
        transport: "tcp".to_owned(),
        source: "127.0.0.1:5070".to_owned(),
        local: "127.0.0.1:5060".to_owned(),
        user_agent: None,
        push: None,
    };
    (account, binding)
}

async fn defer(store: &Store, account: i64, body: &str, n: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let date = format!("Sat, 13 Nov 2010 23:29:0{n} GMT");
    store
        .defer_message(&NewDeferred {
            account_id: account,
            instance_id: DEV,
            sender: "\"Bob\" <sip:bob@tandem.local>;tag=orig-tag",
            content_type: "text/plain;charset=UTF-8",
            body: body.as_bytes(),
            date: Some(&date),
            received_at: now - 100 + n,
            expires_at: now + 3600,
        })
        .await
        .unwrap();
}

async fn in_order_acked_on_2xx_only(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (account, binding) = setup(&store).await;
    for (i, b) in ["first", "second", "third"].iter().enumerate() {
        defer(&store, account, b, i as i64).await;
    }
    let ua = FakeUa::default();
    // The device takes two, then the third times out.
    ua.script(&[Some(200), Some(202), None]);
    let r = deliver_pending(&store, &ua, &binding, REALM).await.unwrap();
    assert_eq!(
        r,
        Round {
            delivered: 2,
            released: 1
        }
    );
    let sent = ua.sent();
    let bodies: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(bodies, ["first", "second", "third"]);
    assert_eq!(sent[0].1, "Sat, 13 Nov 2010 23:29:00 GMT", "original Date");
    assert_eq!(sent[2].1, "Sat, 13 Nov 2010 23:29:02 GMT");
    assert_eq!(sent[0].3, "<sip:alice@tandem.local>");
    assert!(sent[0].4.starts_with("\"Bob\" <sip:bob@tandem.local>;tag="));
    assert!(!sent[0].4.contains("orig-tag"));
    let third_call_id = sent[2].2.clone();

    // The next registration: only the third, with the same Call-ID as before.
    let ua2 = FakeUa::default();
    let r = deliver_pending(&store, &ua2, &binding, REALM)
        .await
        .unwrap();
    assert_eq!(r.delivered, 1);
    let sent2 = ua2.sent();
    assert_eq!(sent2.len(), 1);
    assert_eq!(sent2[0].0, "third");
    assert_eq!(sent2[0].2, third_call_id);

    // Nothing more, ever.
    let ua3 = FakeUa::default();
    let r = deliver_pending(&store, &ua3, &binding, REALM)
        .await
        .unwrap();
    assert_eq!(r, Round::default());
    assert!(ua3.sent().is_empty());

    // A 4xx/5xx from the device also keeps the message.
    defer(&store, account, "fourth", 3).await;
    let ua4 = FakeUa::default();
    ua4.script(&[Some(480)]);
    let r = deliver_pending(&store, &ua4, &binding, REALM)
        .await
        .unwrap();
    assert_eq!((r.delivered, r.released), (0, 1));
    let ua5 = FakeUa::default();
    let r = deliver_pending(&store, &ua5, &binding, REALM)
        .await
        .unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(ua5.sent()[0].0, "fourth");
}

async fn nothing_lost_across_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (account, binding) = setup(&store).await;
    defer(&store, account, "kept", 0).await;
    defer(&store, account, "also kept", 1).await;
    store.close().await;
    drop(store);

    let store = db.store().await;
    let ua = FakeUa::default();
    let r = deliver_pending(&store, &ua, &binding, REALM).await.unwrap();
    assert_eq!(r.delivered, 2);
    let bodies: Vec<String> = ua.sent().into_iter().map(|s| s.0).collect();
    assert_eq!(bodies, ["kept", "also kept"]);
    store.close().await;
    drop(store);

    let store = db.store().await;
    let ua = FakeUa::default();
    assert_eq!(
        deliver_pending(&store, &ua, &binding, REALM).await.unwrap(),
        Round::default()
    );
}

/// The next delivery round's outcome (the task reports each one).
async fn next_round(rounds: &mut tokio::sync::mpsc::Receiver<Round>) -> Round {
    tokio::time::timeout(Duration::from_secs(5), rounds.recv())
        .await
        .expect("a delivery round in time")
        .expect("the delivery task runs")
}

async fn registration_events_drive_delivery(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (account, binding) = setup(&store).await;
    defer(&store, account, "hello", 0).await;
    let ua = Arc::new(FakeUa::default());
    let (tx, rx) = tokio::sync::broadcast::channel(16);
    let (rounds_tx, mut rounds) = tokio::sync::mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_delivery_reporting(
        store.clone(),
        ua.clone(),
        rx,
        REALM.to_owned(),
        Some(rounds_tx),
        shutdown.clone(),
    ));
    tx.send(Registered {
        account,
        instance_id: DEV.to_owned(),
        binding: binding.clone(),
    })
    .unwrap();
    // The round ends once the message is sent and acknowledged in the store.
    assert_eq!(next_round(&mut rounds).await.delivered, 1);
    assert_eq!(ua.sent()[0].0, "hello");
    // A second registration delivers nothing again: its round ends empty.
    tx.send(Registered {
        account,
        instance_id: DEV.to_owned(),
        binding,
    })
    .unwrap();
    assert_eq!(next_round(&mut rounds).await, Round::default());
    assert_eq!(ua.sent().len(), 1, "delivered exactly once");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

on_both_backends!(
    in_order_acked_on_2xx_only,
    nothing_lost_across_a_restart,
    registration_events_drive_delivery
);
