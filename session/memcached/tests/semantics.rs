#![allow(clippy::unwrap_used)]
//! Operation semantics against a real memcached.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{client, key};
use ferrocat_memcached::{ClientOptions, Key, McError, NodeClient, SetMode, StoreStatus};
use ferrocat_testkit::Memcached;

#[tokio::test]
async fn set_then_get_returns_value_flags_and_cas() {
    let m = Memcached::start();
    let c = client(&m);
    let k = key("user:1");
    assert_eq!(c.get(&k).await.unwrap(), None);
    assert_eq!(
        c.set(&k, b"hello", 42, 0, SetMode::Set).await.unwrap(),
        StoreStatus::Stored
    );
    let item = c.get(&k).await.unwrap().unwrap();
    assert_eq!(&item.value[..], b"hello");
    assert_eq!(item.flags, 42);
    assert!(item.cas > 0);
}

#[tokio::test]
async fn add_only_stores_missing_and_replace_only_existing() {
    let m = Memcached::start();
    let c = client(&m);
    let k = key("k");
    assert_eq!(
        c.set(&k, b"r", 0, 0, SetMode::Replace).await.unwrap(),
        StoreStatus::NotStored
    );
    assert_eq!(
        c.set(&k, b"a", 0, 0, SetMode::Add).await.unwrap(),
        StoreStatus::Stored
    );
    assert_eq!(
        c.set(&k, b"b", 0, 0, SetMode::Add).await.unwrap(),
        StoreStatus::NotStored
    );
    assert_eq!(&c.get(&k).await.unwrap().unwrap().value[..], b"a");
    assert_eq!(
        c.set(&k, b"r", 0, 0, SetMode::Replace).await.unwrap(),
        StoreStatus::Stored
    );
    assert_eq!(&c.get(&k).await.unwrap().unwrap().value[..], b"r");
}

#[tokio::test]
async fn cas_stores_only_against_the_current_version() {
    let m = Memcached::start();
    let c = client(&m);
    let k = key("k");
    assert_eq!(
        c.set(&k, b"x", 0, 0, SetMode::Cas(1)).await.unwrap(),
        StoreStatus::NotFound
    );
    c.set(&k, b"v1", 0, 0, SetMode::Set).await.unwrap();
    let cas = c.get(&k).await.unwrap().unwrap().cas;
    assert_eq!(
        c.set(&k, b"v2", 0, 0, SetMode::Cas(cas)).await.unwrap(),
        StoreStatus::Stored
    );
    assert_eq!(
        c.set(&k, b"v3", 0, 0, SetMode::Cas(cas)).await.unwrap(),
        StoreStatus::Exists
    );
    assert_eq!(&c.get(&k).await.unwrap().unwrap().value[..], b"v2");
}

#[tokio::test]
async fn a_store_returns_the_cas_value_the_item_got() {
    let m = Memcached::start();
    let c = client(&m);
    let k = key("k");
    let limit = std::time::Duration::from_secs(1);
    let (status, cas1) = c
        .set_bytes_cas_within(&k, "v1".into(), 0, 0, SetMode::Set, limit)
        .await
        .unwrap();
    assert_eq!(status, StoreStatus::Stored);
    assert_eq!(c.get(&k).await.unwrap().unwrap().cas, cas1);
    // The returned value is good for the next conditional write, with no read between.
    let (status, cas2) = c
        .set_bytes_cas_within(&k, "v2".into(), 0, 0, SetMode::Cas(cas1), limit)
        .await
        .unwrap();
    assert_eq!(status, StoreStatus::Stored);
    assert_ne!(cas2, cas1);
    assert_eq!(
        c.set_bytes_cas_within(&k, "v3".into(), 0, 0, SetMode::Cas(cas1), limit)
            .await
            .unwrap(),
        (StoreStatus::Exists, 0)
    );
    let item = c.get(&k).await.unwrap().unwrap();
    assert_eq!((&item.value[..], item.cas), (&b"v2"[..], cas2));
}

#[tokio::test]
async fn delete_reports_whether_the_key_existed() {
    let m = Memcached::start();
    let c = client(&m);
    let k = key("k");
    assert!(!c.delete(&k).await.unwrap());
    c.set(&k, b"v", 0, 0, SetMode::Set).await.unwrap();
    assert!(c.delete(&k).await.unwrap());
    assert_eq!(c.get(&k).await.unwrap(), None);
}

#[tokio::test]
async fn touch_sets_a_new_expiry_without_rewriting() {
    let m = Memcached::start();
    let c = client(&m);
    let k = key("k");
    assert!(!c.touch(&k, 100).await.unwrap());
    c.set(&k, b"v", 7, 0, SetMode::Set).await.unwrap();
    let cas = c.get(&k).await.unwrap().unwrap().cas;
    assert!(c.touch(&k, 1000).await.unwrap());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let dumped = c.metadump().await.unwrap();
    let exp = dumped.iter().find(|d| d.key == "k").unwrap().exp;
    assert!(
        (now + 990..=now + 1010).contains(&exp),
        "exp {exp}, now {now}"
    );
    let item = c.get(&k).await.unwrap().unwrap();
    assert_eq!((&item.value[..], item.flags, item.cas), (&b"v"[..], 7, cas));
}

#[tokio::test]
async fn ttl_is_applied_on_set() {
    let m = Memcached::start();
    let c = client(&m);
    c.set(&key("t"), b"v", 0, 500, SetMode::Set).await.unwrap();
    c.set(&key("forever"), b"v", 0, 0, SetMode::Set)
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let dumped = c.metadump().await.unwrap();
    let exp = |k: &str| dumped.iter().find(|d| d.key == k).unwrap().exp;
    assert!((now + 490..=now + 510).contains(&exp("t")));
    assert_eq!(exp("forever"), -1);
}

#[tokio::test]
async fn binary_values_round_trip_including_crlf() {
    let m = Memcached::start();
    let c = client(&m);
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let values: [&[u8]; 5] = [b"", b"\r\n", b"a\r\nEND\r\nmn\r\n", b"\0\xff\r", &all_bytes];
    for (i, v) in values.iter().enumerate() {
        let k = key(&format!("bin{i}"));
        c.set(&k, v, 0, 0, SetMode::Set).await.unwrap();
        assert_eq!(&c.get(&k).await.unwrap().unwrap().value[..], *v);
    }
}

#[tokio::test]
async fn values_up_to_the_limit_pass_and_larger_are_rejected_before_sending() {
    let m = Memcached::start_with_args(&["-I", "2m"]);
    let c = NodeClient::new(m.addr(), ClientOptions::default().max_value_size(1_500_000));
    let big = vec![7u8; 1_500_000];
    c.set(&key("big"), &big, 0, 0, SetMode::Set).await.unwrap();
    assert_eq!(
        c.get(&key("big")).await.unwrap().unwrap().value.len(),
        big.len()
    );
    let err = c
        .set(&key("big"), &[0u8; 1_500_001], 0, 0, SetMode::Set)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        McError::ValueTooLarge {
            size: 1_500_001,
            ..
        }
    ));
    c.noop().await.unwrap();
}

#[tokio::test]
async fn server_rejecting_a_value_is_a_server_error_and_the_connection_stays_usable() {
    let m = Memcached::start(); // default 1 MiB item limit
    let c = NodeClient::new(m.addr(), ClientOptions::default().max_value_size(4 << 20));
    let err = c
        .set(&key("huge"), &vec![1u8; 2 << 20], 0, 0, SetMode::Set)
        .await
        .unwrap_err();
    assert!(matches!(err, McError::Server { .. }), "{err:?}");
    assert!(!err.is_node_failure());
    c.set(&key("small"), b"ok", 0, 0, SetMode::Set)
        .await
        .unwrap();
    assert_eq!(
        &c.get(&key("small")).await.unwrap().unwrap().value[..],
        b"ok"
    );
}

#[test]
fn keys_that_could_inject_commands_are_rejected() {
    for bad in [
        "",
        "a b",
        "k\r\nflush_all",
        "k\n",
        "tab\there",
        &"x".repeat(251),
    ] {
        let err = Key::new(bad).unwrap_err();
        assert!(matches!(err, McError::InvalidKey { .. }), "{bad:?}");
        assert!(!err.is_node_failure());
    }
    assert!(Key::new("x".repeat(250)).is_ok());
}

#[tokio::test]
async fn noop_answers() {
    let m = Memcached::start();
    client(&m).noop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_ops_from_many_tasks_get_their_own_replies() {
    let m = Memcached::start();
    let c = client(&m);
    let mut tasks = Vec::new();
    for t in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let k = key(&format!("t{t}-i{i}"));
                let v = format!("value of task {t} item {i}").repeat(i + 1);
                let prev = key(&format!("t{t}-i{}", i.saturating_sub(1)));
                let (set, get) =
                    tokio::join!(c.set(&k, v.as_bytes(), t, 0, SetMode::Set), c.get(&prev));
                assert_eq!(set.unwrap(), StoreStatus::Stored);
                get.unwrap();
                let item = c.get(&k).await.unwrap().unwrap();
                assert_eq!(item.value, v.as_bytes());
                assert_eq!(item.flags, t);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn a_client_works_from_several_runtimes_and_threads() {
    let m = Memcached::start();
    let c = client(&m);
    let rt1 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt1.block_on(c.set(&key("shared"), b"1", 0, 0, SetMode::Set))
        .unwrap();
    drop(rt1); // the first runtime's connection tasks are gone
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    assert_eq!(
                        &c.get(&key("shared")).await.unwrap().unwrap().value[..],
                        b"1"
                    );
                    c.set(&key(&format!("th{i}")), b"x", 0, 0, SetMode::Set)
                        .await
                        .unwrap();
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rt2 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt2.block_on(async {
        for i in 0..3 {
            assert!(c.get(&key(&format!("th{i}"))).await.unwrap().is_some());
        }
    });
}

#[test]
fn using_the_client_outside_a_runtime_is_an_error_not_a_panic() {
    let m = Memcached::start();
    let c = client(&m);
    let err = futures::executor::block_on(c.noop()).unwrap_err();
    assert!(matches!(err, McError::NoRuntime));
}
