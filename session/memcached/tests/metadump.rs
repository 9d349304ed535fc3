#![allow(clippy::unwrap_used)]
//! Key enumeration for warm-up must be complete.

mod common;

use std::collections::HashSet;

use common::{client, key};
use ferrocat_memcached::SetMode;
use ferrocat_testkit::Memcached;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadump_returns_every_key_of_twenty_thousand() {
    let m = Memcached::start();
    let c = client(&m);
    let n = 20_000;
    let mut written = HashSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops = chunk.iter().map(|i| {
            let c = c.clone();
            // Keys with characters memcached URL-encodes in dumps.
            let k = format!("bak:sess{i}-n1.app%1");
            async move {
                c.set(
                    &key(&k),
                    b"0123456789",
                    0,
                    if i % 2 == 0 { 0 } else { 3600 },
                    SetMode::Set,
                )
                .await
                .unwrap();
                k
            }
        });
        written.extend(futures::future::join_all(ops).await);
    }
    let dumped = c.metadump().await.unwrap();
    let got: HashSet<String> = dumped.iter().map(|d| d.key.clone()).collect();
    assert_eq!(dumped.len(), n, "duplicates or missing keys");
    assert_eq!(got, written);
    assert!(dumped.iter().any(|d| d.exp == -1) && dumped.iter().any(|d| d.exp > 0));
}

#[tokio::test]
async fn metadump_of_an_empty_node_is_empty_and_repeatable() {
    let m = Memcached::start();
    let c = client(&m);
    assert!(c.metadump().await.unwrap().is_empty());
    c.set(&key("one"), b"1", 0, 0, SetMode::Set).await.unwrap();
    let (a, b) = tokio::join!(c.metadump(), c.metadump()); // second may find the crawler busy
    assert_eq!(a.unwrap().len(), 1);
    assert_eq!(b.unwrap().len(), 1);
}

#[tokio::test]
async fn metadump_of_a_dead_node_is_refused() {
    let mut m = Memcached::start();
    let c = client(&m);
    m.kill();
    assert!(c.metadump().await.unwrap_err().is_refused());
}
