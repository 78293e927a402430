//! The store's behaviour, run on SQLite and on PostgreSQL (each test gets a fresh database).

mod store_support;

use std::sync::Arc;

use store_support::{Backend, TestDb};
use tandem_signaling::model::{Binding, DeviceClass, MediaPolicy};
use tandem_signaling::store::{
    ha1, DeviceLimits, LimitOverrides, NewAccount, NewDevice, Store, StoreError,
};

const REALM: &str = "tandem.local";

async fn account(store: &Store, login: &str) -> i64 {
    store
        .create_account(&NewAccount {
            login,
            password: "secret",
            realm: REALM,
            country_code: "48",
            display_name: Some("Alice"),
        })
        .await
        .expect("create account")
        .id
}

fn dev<'a>(instance: &'a str, class: DeviceClass) -> NewDevice<'a> {
    NewDevice {
        instance_id: instance,
        class,
        name: "phone",
        push_provider: None,
        push_token: None,
    }
}

fn binding(account: i64, instance: &str, reg_id: u32, expires_at: i64) -> Binding {
    Binding {
        account_id: account,
        instance_id: instance.to_owned(),
        reg_id,
        contact_uri: format!("sip:alice@127.0.0.1:{}", 5000 + reg_id),
        expires_at,
        call_id: "call-1@host".to_owned(),
        cseq: 7,
        transport: "tcp".to_owned(),
        source: "127.0.0.1:40000".to_owned(),
        local: "127.0.0.1:5060".to_owned(),
        user_agent: Some("test/1".to_owned()),
        push: None,
    }
}

const I1: &str = "urn:uuid:00000000-0000-4000-8000-000000000001";
const I2: &str = "urn:uuid:00000000-0000-4000-8000-000000000002";
const I3: &str = "urn:uuid:00000000-0000-4000-8000-000000000003";
const I4: &str = "urn:uuid:00000000-0000-4000-8000-000000000004";
const I5: &str = "urn:uuid:00000000-0000-4000-8000-000000000005";

async fn ha1_is_rfc7616(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let id = account(&store, "alice").await;
    let creds = store.find_account("alice").await.unwrap().expect("found");
    assert_eq!(creds.id, id);
    assert_eq!(creds.login, "alice");
    // MD5 / SHA-256 of "alice:tandem.local:secret", computed independently.
    assert_eq!(creds.ha1_md5, "23e71ce4eb5fc343c170f03f414440ae");
    assert_eq!(
        creds.ha1_sha256,
        "cfe0fb29d96c76bed0c0ecdcc7ae1c6280abde4906fa230c59ba272a74a0c3c8"
    );
    assert_eq!(ha1("alice", REALM, "secret").0, creds.ha1_md5);
}

async fn accounts_crud(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let b = account(&store, "bob").await;
    assert!(matches!(
        store
            .create_account(&NewAccount {
                login: "alice",
                password: "x",
                realm: REALM,
                country_code: "48",
                display_name: None
            })
            .await,
        Err(StoreError::LoginTaken)
    ));
    let got = store.get_account(a).await.unwrap().unwrap();
    assert_eq!(got.login, "alice");
    assert_eq!(got.display_name.as_deref(), Some("Alice"));
    assert_eq!(got.country_code, "48");
    assert_eq!(got.limits, LimitOverrides::default());

    let all = store.list_accounts(0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.login.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let page = store.list_accounts(a, 100).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, b);
    assert_eq!(store.list_accounts(0, 1).await.unwrap().len(), 1);

    let before = store.find_account("alice").await.unwrap().unwrap();
    let updated = store
        .update_account(
            a,
            Some(("new-password", REALM)),
            Some(None),
            Some("44"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(updated.display_name, None);
    assert_eq!(updated.country_code, "44");
    let after = store.find_account("alice").await.unwrap().unwrap();
    assert_ne!(before.ha1_md5, after.ha1_md5);
    assert_eq!(after.ha1_sha256, ha1("alice", REALM, "new-password").1);
    assert!(matches!(
        store.update_account(9999, None, None, None, None).await,
        Err(StoreError::AccountNotFound)
    ));

    store.add_phone_number(a, "48600345698").await.unwrap();
    store
        .authorise_device(a, &dev(I1, DeviceClass::Mobile), &DeviceLimits::default())
        .await
        .unwrap();
    store
        .save_binding(&binding(a, I1, 1, i64::MAX / 2))
        .await
        .unwrap();
    let devices = store.delete_account(a).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert!(store.get_account(a).await.unwrap().is_none());
    assert!(store.find_account("alice").await.unwrap().is_none());
    assert!(store.find_account("48600345698").await.unwrap().is_none());
    assert!(store.load_bindings().await.unwrap().is_empty());
    assert!(matches!(
        store.delete_account(a).await,
        Err(StoreError::AccountNotFound)
    ));
    // The number is free again.
    store.add_phone_number(b, "48600345698").await.unwrap();
}

async fn phone_numbers_and_lookup(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let b = account(&store, "bob").await;
    store.add_phone_number(a, "48600345698").await.unwrap();
    store.add_phone_number(a, "442085676789").await.unwrap();
    assert!(matches!(
        store.add_phone_number(b, "48600345698").await,
        Err(StoreError::PhoneNumberTaken)
    ));
    assert!(matches!(
        store.add_phone_number(a, "48600345698").await,
        Err(StoreError::PhoneNumberTaken)
    ));
    assert!(matches!(
        store.add_phone_number(9999, "48600000001").await,
        Err(StoreError::AccountNotFound)
    ));
    // An account signed up with its number as login: the number is its own to carry,
    // nobody else's, and no new login may equal a number in use.
    let c = account(&store, "48600999888").await;
    store.add_phone_number(c, "48600999888").await.unwrap();
    assert!(matches!(
        store.add_phone_number(a, "48600999777").await,
        Ok(())
    ));
    let d = account(&store, "48600999666").await;
    assert!(matches!(
        store.add_phone_number(a, "48600999666").await,
        Err(StoreError::PhoneNumberTaken)
    ));
    store.add_phone_number(d, "48600999666").await.unwrap();
    assert!(matches!(
        store
            .create_account(&NewAccount {
                login: "48600999777",
                password: "x",
                realm: REALM,
                country_code: "48",
                display_name: None
            })
            .await,
        Err(StoreError::LoginTaken)
    ));
    assert_eq!(
        store
            .find_account("0600999888")
            .await
            .unwrap()
            .map(|c| c.id),
        Some(c)
    );
    let got = store.get_account(a).await.unwrap().unwrap();
    assert_eq!(
        got.phone_numbers,
        ["442085676789", "48600345698", "48600999777"]
    );

    // Every accepted form finds the account (store default country code is 48).
    for form in [
        "+48 600 345 698",
        "0048600345698",
        "0600345698",
        "600-345-698",
        "48600345698",
        "+44 20 8567 6789",
        "00442085676789",
    ] {
        let found = store.find_account(form).await.unwrap();
        assert_eq!(found.map(|c| c.id), Some(a), "form {form:?}");
    }
    assert!(store
        .find_account("+48 600 000 000")
        .await
        .unwrap()
        .is_none());
    assert!(store.find_account("").await.unwrap().is_none());
    assert!(store
        .find_account(&"x".repeat(10_000))
        .await
        .unwrap()
        .is_none());

    assert!(store.remove_phone_number(a, "48600345698").await.unwrap());
    assert!(!store.remove_phone_number(a, "48600345698").await.unwrap());
    assert!(!store.remove_phone_number(b, "442085676789").await.unwrap());
    assert!(store.find_account("0600345698").await.unwrap().is_none());
}

async fn username_set_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let b = account(&store, "bob").await;
    store.set_username(a, "alice.w").await.unwrap();
    assert!(matches!(
        store.set_username(a, "other").await,
        Err(StoreError::UsernameAlreadySet)
    ));
    assert!(matches!(
        store.set_username(b, "alice.w").await,
        Err(StoreError::UsernameTaken)
    ));
    // A username may not shadow another account's login, nor a login a username.
    assert!(matches!(
        store.set_username(b, "alice").await,
        Err(StoreError::UsernameTaken)
    ));
    assert!(matches!(
        store
            .create_account(&NewAccount {
                login: "alice.w",
                password: "x",
                realm: REALM,
                country_code: "48",
                display_name: None
            })
            .await,
        Err(StoreError::LoginTaken)
    ));
    assert!(matches!(
        store.set_username(9999, "zed").await,
        Err(StoreError::AccountNotFound)
    ));
    assert_eq!(
        store.find_account("alice.w").await.unwrap().map(|c| c.id),
        Some(a)
    );
    assert_eq!(
        store.find_account("alice.w").await.unwrap().unwrap().login,
        "alice"
    );
    store.set_username(b, "bobby").await.unwrap();
    assert_eq!(
        store
            .get_account(b)
            .await
            .unwrap()
            .unwrap()
            .username
            .as_deref(),
        Some("bobby")
    );
}

async fn device_limits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let d = DeviceLimits::default();
    assert_eq!(
        d,
        DeviceLimits {
            mobile: 3,
            desktop: 1,
            web: 1
        }
    );
    let r = store
        .authorise_device(a, &dev(I1, DeviceClass::Mobile), &d)
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(r.device.instance_id, I1);
    assert_eq!(r.device.class, DeviceClass::Mobile);
    store
        .authorise_device(a, &dev(I2, DeviceClass::Mobile), &d)
        .await
        .unwrap();
    store
        .authorise_device(a, &dev(I3, DeviceClass::Tablet), &d)
        .await
        .unwrap();
    match store
        .authorise_device(a, &dev(I4, DeviceClass::Mobile), &d)
        .await
    {
        Err(
            e @ StoreError::DeviceLimitReached {
                label: "mobile/tablet",
                limit: 3,
            },
        ) => {
            assert_eq!(e.to_string(), "mobile/tablet limit of 3 reached")
        }
        other => panic!("expected limit error, got {other:?}"),
    }
    assert!(matches!(
        store
            .authorise_device(a, &dev(I4, DeviceClass::Tablet), &d)
            .await,
        Err(StoreError::DeviceLimitReached { limit: 3, .. })
    ));
    // Re-authorising an existing instance is not a new device: it updates the name.
    let again = store
        .authorise_device(
            a,
            &NewDevice {
                name: "renamed",
                ..dev(I1, DeviceClass::Mobile)
            },
            &d,
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.device.name, "renamed");
    assert!(matches!(
        store
            .authorise_device(a, &dev(I1, DeviceClass::Desktop), &d)
            .await,
        Err(StoreError::DeviceClassMismatch { existing: "mobile" })
    ));

    // Administrator raises the mobile limit: the fourth now fits.
    store
        .set_limits(
            a,
            &LimitOverrides {
                mobile: Some(4),
                desktop: None,
                web: Some(0),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_account(a).await.unwrap().unwrap().limits.mobile,
        Some(4)
    );
    store
        .authorise_device(a, &dev(I4, DeviceClass::Tablet), &d)
        .await
        .unwrap();
    assert!(matches!(
        store
            .authorise_device(a, &dev(I5, DeviceClass::Web), &d)
            .await,
        Err(StoreError::DeviceLimitReached {
            label: "web",
            limit: 0
        })
    ));
    assert!(matches!(
        store.set_limits(9999, &LimitOverrides::default()).await,
        Err(StoreError::AccountNotFound)
    ));
    assert!(matches!(
        store
            .authorise_device(9999, &dev(I1, DeviceClass::Mobile), &d)
            .await,
        Err(StoreError::AccountNotFound)
    ));
    assert_eq!(store.list_devices(a).await.unwrap().len(), 4);
}

async fn desktop_and_web_replace_previous(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let d = DeviceLimits::default();
    store
        .authorise_device(a, &dev(I1, DeviceClass::Desktop), &d)
        .await
        .unwrap();
    store
        .authorise_device(a, &dev(I3, DeviceClass::Web), &d)
        .await
        .unwrap();
    store
        .save_binding(&binding(a, I1, 1, i64::MAX / 2))
        .await
        .unwrap();
    let r = store
        .authorise_device(a, &dev(I2, DeviceClass::Desktop), &d)
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(r.replaced.len(), 1);
    assert_eq!(r.replaced[0].instance_id, I1);
    assert!(store.find_device(a, I1).await.unwrap().is_none());
    assert!(store.find_device(a, I2).await.unwrap().is_some());
    // The replaced desktop's stored binding went with it; web is untouched.
    assert!(store.load_bindings().await.unwrap().is_empty());
    assert!(store.find_device(a, I3).await.unwrap().is_some());
    let r = store
        .authorise_device(a, &dev(I4, DeviceClass::Web), &d)
        .await
        .unwrap();
    assert_eq!(
        r.replaced
            .iter()
            .map(|d| d.instance_id.as_str())
            .collect::<Vec<_>>(),
        [I3]
    );
    let classes: Vec<_> = store
        .list_devices(a)
        .await
        .unwrap()
        .iter()
        .map(|d| d.class)
        .collect();
    assert_eq!(classes.len(), 2);
    assert!(classes.contains(&DeviceClass::Desktop) && classes.contains(&DeviceClass::Web));
}

async fn concurrent_authorisations_respect_the_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let mut tasks = tokio::task::JoinSet::new();
    let ids: Vec<String> = (0..10)
        .map(|i| format!("urn:uuid:00000000-0000-4000-8000-0000000001{i:02}"))
        .collect();
    let ids = Arc::new(ids);
    for i in 0..10 {
        let store = store.clone();
        let ids = ids.clone();
        tasks.spawn(async move {
            store
                .authorise_device(
                    a,
                    &dev(&ids[i], DeviceClass::Mobile),
                    &DeviceLimits::default(),
                )
                .await
        });
    }
    let mut ok = 0;
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::DeviceLimitReached { .. }) => refused += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((ok, refused), (3, 7));
    assert_eq!(store.list_devices(a).await.unwrap().len(), 3);
}

async fn devices_push_and_delete(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let b = account(&store, "bob").await;
    let d = DeviceLimits::default();
    store
        .authorise_device(
            a,
            &NewDevice {
                push_provider: Some("fcm"),
                push_token: Some("tok0"),
                ..dev(I1, DeviceClass::Mobile)
            },
            &d,
        )
        .await
        .unwrap();
    let dev1 = store.find_device(a, I1).await.unwrap().unwrap();
    assert_eq!(dev1.push_provider.as_deref(), Some("fcm"));
    assert!(dev1.created_at > 1_600_000_000);
    // Instances are per account.
    assert!(store.find_device(b, I1).await.unwrap().is_none());
    let updated = store
        .set_push_token(a, I1, Some(("apns", "tok1")))
        .await
        .unwrap();
    assert_eq!(
        (
            updated.push_provider.as_deref(),
            updated.push_token.as_deref()
        ),
        (Some("apns"), Some("tok1"))
    );
    let cleared = store.set_push_token(a, I1, None).await.unwrap();
    assert_eq!(cleared.push_token, None);
    assert!(matches!(
        store.set_push_token(a, I2, None).await,
        Err(StoreError::DeviceNotFound)
    ));
    store
        .save_binding(&binding(a, I1, 1, i64::MAX / 2))
        .await
        .unwrap();
    let gone = store.delete_device(a, I1).await.unwrap().unwrap();
    assert_eq!(gone.instance_id, I1);
    assert!(store.delete_device(a, I1).await.unwrap().is_none());
    assert!(store.load_bindings().await.unwrap().is_empty());
}

async fn bindings_round_trip(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    let mut b1 = binding(a, I1, 1, 2_000_000_000);
    let b2 = binding(a, I1, 2, 2_000_000_000);
    let b3 = binding(a, I2, 0, 100);
    for b in [&b1, &b2, &b3] {
        store.save_binding(b).await.unwrap();
    }
    // Upsert: same key, new values.
    b1.contact_uri = "sip:alice@127.0.0.1:6000;transport=tcp".to_owned();
    b1.cseq = u32::MAX;
    b1.reg_id = 1;
    b1.user_agent = None;
    store.save_binding(&b1).await.unwrap();
    let all = store.load_bindings().await.unwrap();
    assert_eq!(all, vec![b1.clone(), b2.clone(), b3.clone()]);

    assert_eq!(store.delete_expired_bindings(1_000).await.unwrap(), 1);
    store.delete_binding(a, I1, 2).await.unwrap();
    assert_eq!(store.load_bindings().await.unwrap(), vec![b1.clone()]);
    store.save_binding(&b2).await.unwrap();
    store.delete_instance_bindings(a, I1).await.unwrap();
    assert!(store.load_bindings().await.unwrap().is_empty());

    // Reconnecting (migrations already applied) sees the same data.
    store.save_binding(&b1).await.unwrap();
    store.close().await;
    let again = db.store().await;
    assert_eq!(again.load_bindings().await.unwrap(), vec![b1]);
    assert!(again.find_account("alice").await.unwrap().is_some());
}

on_both_backends!(
    ha1_is_rfc7616,
    accounts_crud,
    phone_numbers_and_lookup,
    username_set_once,
    device_limits,
    desktop_and_web_replace_previous,
    concurrent_authorisations_respect_the_limit,
    devices_push_and_delete,
    bindings_round_trip,
);

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let dir = std::env::temp_dir().join(format!("tandem_wal_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("nested/dir/signaling.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists());
    store.close().await;
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    for url in ["mysql://localhost/x", "sqlite://", "", "file.db"] {
        assert!(
            matches!(Store::connect(url).await, Err(StoreError::UnsupportedUrl)),
            "{url}"
        );
    }
}

async fn concurrent_writers_do_not_fail(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.spawn(async move {
            let login = format!("user{i}");
            let id = account(&store, &login).await;
            store
                .add_phone_number(id, &format!("4860000{i:04}"))
                .await
                .unwrap();
            store.set_username(id, &format!("name{i}")).await.unwrap();
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(store.list_accounts(0, 100).await.unwrap().len(), 20);
}

on_both_backends!(concurrent_writers_do_not_fail);

/// The media policy: `ice` by default, set and read back on the account and on the
/// credentials the proxy loads for a call (by login, username and number).
async fn media_policy(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let a = account(&store, "alice").await;
    store.add_phone_number(a, "48600111222").await.unwrap();
    assert_eq!(
        store.get_account(a).await.unwrap().unwrap().media,
        MediaPolicy::Ice
    );
    assert_eq!(
        store.find_account("alice").await.unwrap().unwrap().media,
        MediaPolicy::Ice
    );
    store
        .set_media_policy(a, MediaPolicy::ForceRelay)
        .await
        .unwrap();
    assert_eq!(
        store.get_account(a).await.unwrap().unwrap().media,
        MediaPolicy::ForceRelay
    );
    let dialled = store
        .find_account_dialled("0600111222", Some("48"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dialled.media, MediaPolicy::ForceRelay);
    store.set_media_policy(a, MediaPolicy::Off).await.unwrap();
    assert_eq!(
        store.list_accounts(0, 10).await.unwrap()[0].media,
        MediaPolicy::Off
    );
    assert!(matches!(
        store.set_media_policy(a + 1000, MediaPolicy::Off).await,
        Err(StoreError::AccountNotFound)
    ));
}

on_both_backends!(media_policy);
