//! Deferred messages and RFC 8599 binding parameters in the store, on SQLite and on
//! PostgreSQL (each test gets a fresh database).

mod store_support;

use store_support::{Backend, TestDb};
use tandem_signaling::model::{Binding, DeviceClass, PushParams};
use tandem_signaling::store::{DeviceLimits, NewAccount, NewDeferred, NewDevice, Store};

const A: &str = "urn:uuid:00000000-0000-4000-8000-00000000000a";
const B: &str = "urn:uuid:00000000-0000-4000-8000-00000000000b";
const NOW: i64 = 1_800_000_000;

async fn account(store: &Store, login: &str) -> i64 {
    let id = store
        .create_account(&NewAccount {
            login,
            password: "secret-password",
            realm: "tandem.local",
            country_code: "48",
            display_name: None,
        })
        .await
        .expect("create account")
        .id;
    for inst in [A, B] {
        store
            .authorise_device(
                id,
                &NewDevice {
                    instance_id: inst,
                    class: DeviceClass::Mobile,
                    name: "phone",
                    push_provider: None,
                    push_token: None,
                },
                &DeviceLimits::default(),
            )
            .await
            .expect("authorise");
    }
    id
}

fn msg<'a>(account: i64, instance: &'a str, body: &'a [u8], at: i64) -> NewDeferred<'a> {
    NewDeferred {
        account_id: account,
        instance_id: instance,
        sender: "\"Bob\" <sip:bob@tandem.local>",
        content_type: "text/plain;charset=UTF-8",
        body,
        date: Some("Sat, 13 Nov 2010 23:29:00 GMT"),
        received_at: at,
        expires_at: at + 7 * 24 * 3600,
    }
}

async fn in_order_exactly_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let acc = account(&store, "alice").await;
    for i in 0..5u8 {
        let body = [b'm', b'0' + i];
        store
            .defer_message(&msg(acc, A, &body, NOW + i64::from(i)))
            .await
            .unwrap();
    }
    // Binary body, and another device's message, must not mix in.
    store
        .defer_message(&msg(acc, B, &[0, 159, 146, 150, 255], NOW))
        .await
        .unwrap();

    let got = store.claim_deferred(acc, A, NOW + 10, 32).await.unwrap();
    let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, [b"m0", b"m1", b"m2", b"m3", b"m4"]);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(
        got[0].date.as_deref(),
        Some("Sat, 13 Nov 2010 23:29:00 GMT")
    );
    assert_eq!(got[0].sender, "\"Bob\" <sip:bob@tandem.local>");
    assert_eq!(got[0].received_at, NOW);

    // While the lease is live a second deliverer gets nothing (no duplicate, no reorder).
    assert!(store
        .claim_deferred(acc, A, NOW + 11, 32)
        .await
        .unwrap()
        .is_empty());
    // The device confirmed the first three; the other two come back after the lease.
    let ids: Vec<i64> = got.iter().take(3).map(|m| m.id).collect();
    assert_eq!(store.ack_deferred(&ids, NOW + 12).await.unwrap(), 3);
    assert_eq!(store.ack_deferred(&ids, NOW + 12).await.unwrap(), 0);
    let again = store.claim_deferred(acc, A, NOW + 50, 32).await.unwrap();
    let bodies: Vec<&[u8]> = again.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, [b"m3", b"m4"]);
    // A round that is still sending extends its lease: nobody else gets them.
    let ids: Vec<i64> = again.iter().map(|m| m.id).collect();
    store.extend_deferred_lease(&ids, NOW + 150).await.unwrap();
    assert!(store
        .claim_deferred(acc, A, NOW + 90, 32)
        .await
        .unwrap()
        .is_empty());
    // Released at once when the deliverer gives up.
    store.release_deferred(&ids).await.unwrap();
    let again = store.claim_deferred(acc, A, NOW + 51, 32).await.unwrap();
    assert_eq!(again.len(), 2);
    store
        .ack_deferred(&again.iter().map(|m| m.id).collect::<Vec<_>>(), NOW + 52)
        .await
        .unwrap();
    assert!(store
        .claim_deferred(acc, A, NOW + 200, 32)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .pending_deferred(acc, A, NOW + 200)
        .await
        .unwrap()
        .is_empty());

    // Device B's message untouched, binary intact; instance IDs compare canonically.
    let b = store
        .pending_deferred(
            acc,
            &B.to_ascii_uppercase().replace("URN:UUID:", "urn:uuid:"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].body, [0, 159, 146, 150, 255]);
}

async fn survives_reopen(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let acc = account(&store, "carol").await;
    let ids = store
        .defer_message_to(&msg(acc, "", b"hello", NOW), &[A, B])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // Claimed but never acknowledged: a crash of the deliverer.
    assert_eq!(
        store.claim_deferred(acc, A, NOW, 32).await.unwrap().len(),
        1
    );
    store.close().await;
    drop(store);

    let store = db.store().await;
    // Within the lease nothing is handed out twice; afterwards it comes back.
    assert!(store
        .claim_deferred(acc, A, NOW + 5, 32)
        .await
        .unwrap()
        .is_empty());
    let got = store.claim_deferred(acc, A, NOW + 40, 32).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"hello");
    store.ack_deferred(&[got[0].id], NOW + 41).await.unwrap();
    store.close().await;
    drop(store);

    let store = db.store().await;
    assert!(store
        .claim_deferred(acc, A, NOW + 100, 32)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .pending_deferred(acc, B, NOW + 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn expiry(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let acc = account(&store, "dave").await;
    let mut short = msg(acc, A, b"short-lived", NOW);
    short.expires_at = NOW + 60;
    store.defer_message(&short).await.unwrap();
    store
        .defer_message(&msg(acc, A, b"week", NOW))
        .await
        .unwrap();
    // An expired message is never handed out, even before the sweep ran.
    let got = store.claim_deferred(acc, A, NOW + 60, 32).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"week");
    store.release_deferred(&[got[0].id]).await.unwrap();
    assert_eq!(store.expire_deferred(NOW + 60).await.unwrap(), 1);
    assert_eq!(store.expire_deferred(NOW + 60).await.unwrap(), 0);
    assert_eq!(store.pending_deferred(acc, A, NOW).await.unwrap().len(), 1);
    assert_eq!(store.expire_deferred(NOW + 7 * 24 * 3600).await.unwrap(), 1);
    assert!(store
        .pending_deferred(acc, A, NOW)
        .await
        .unwrap()
        .is_empty());

    // A revoked device's messages go with the next sweep.
    store
        .defer_message(&msg(acc, B, b"for b", NOW))
        .await
        .unwrap();
    assert_eq!(store.expire_deferred(NOW).await.unwrap(), 0);
    store.delete_device(acc, B).await.unwrap().unwrap();
    assert_eq!(store.expire_deferred(NOW).await.unwrap(), 1);
}

async fn binding_push_params_round_trip(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let acc = account(&store, "erin").await;
    let mut b = Binding {
        account_id: acc,
        instance_id: A.to_owned(),
        reg_id: 1,
        contact_uri: "sip:erin@127.0.0.1:5070;transport=tcp".to_owned(),
        expires_at: NOW + 3600,
        call_id: "c1".to_owned(),
        cseq: 1,
        transport: "tcp".to_owned(),
        source: "127.0.0.1:5070".to_owned(),
        local: "127.0.0.1:5060".to_owned(),
        user_agent: None,
        push: Some(PushParams {
            provider: "apns".to_owned(),
            prid: "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0".to_owned(),
            param: Some("DEF123GHIJ.com.example.tandem.voip".to_owned()),
        }),
    };
    store.save_binding(&b).await.unwrap();
    assert_eq!(store.load_bindings().await.unwrap(), vec![b.clone()]);
    // A refresh without pn-* parameters clears them.
    b.push = None;
    b.cseq = 2;
    store.save_binding(&b).await.unwrap();
    assert_eq!(store.load_bindings().await.unwrap(), vec![b]);
}

on_both_backends!(
    in_order_exactly_once,
    survives_reopen,
    expiry,
    binding_push_params_round_trip
);
