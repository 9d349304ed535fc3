//! Warm-up memory: bringing back an empty node that must receive 100,000
//! sessions keeps the app process's memory growth to a short key per session,
//! not the nodes' whole key dumps. Its own test binary, so no other test
//! allocates meanwhile; the peak is the kernel's (`VmHWM`, reset before).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ferrocat_session::record::SessionRecord;
use ferrocat_session::stats::Stats;
use ferrocat_session::store::memcached::{
    MemcachedStoreConfig, NodeState, ReplicatedMemcachedStore,
};
use ferrocat_session::SessionBackend;
use ferrocat_testkit::{wait_until, Cluster, Memcached};
use futures::stream::{self, StreamExt};

const SESSIONS: usize = 100_000;
/// Peak growth allowed per session. Collecting the dumps took about 450 bytes.
const BYTES_PER_SESSION: u64 = 200;

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[actix_rt::test]
async fn warming_up_an_empty_node_holds_a_short_key_per_session() {
    let mut cluster = Cluster {
        nodes: (0..2)
            .map(|_| Memcached::start_with_args(&["-m", "512"]))
            .collect(),
    };
    let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), "").unwrap();
    let stats = Arc::new(Stats::default());
    let store = ReplicatedMemcachedStore::new(cfg, stats.clone()).unwrap();
    let in_sync = || {
        let h = store.health();
        h.nodes
            .iter()
            .all(|n| n.state == NodeState::Up && n.in_sync)
    };
    wait_until("start-up checks", Duration::from_secs(10), in_sync).await;
    stream::iter(0..SESSIONS)
        .for_each_concurrent(128, |i| {
            let store = &store;
            async move {
                let id = store.new_id(None);
                let payload = format!("user{i}-cart-0123456789").into_bytes();
                let rec = SessionRecord::new_live(0, 1800, payload);
                store.save(&id, &rec).await.unwrap();
            }
        })
        .await;

    let warmups = || store.health().node("n1").unwrap().warmups_completed;
    let before = warmups();
    let copied_before = stats.warmup_copied.load(Relaxed);
    std::fs::write("/proc/self/clear_refs", "5").unwrap(); // resets VmHWM
    let rss = status_kib("VmRSS:");
    cluster.node("n1").restart();
    wait_until("warm-up of n1", Duration::from_secs(120), || {
        warmups() > before && store.health().node("n1").unwrap().state == NodeState::Up
    })
    .await;
    let growth = (status_kib("VmHWM:").saturating_sub(rss)) * 1024;

    // every session has a copy on n1 (two nodes), so every one came back
    let copied = stats.warmup_copied.load(Relaxed) - copied_before;
    assert_eq!(copied, SESSIONS as u64);
    let per_session = growth / SESSIONS as u64;
    eprintln!("warm-up of {SESSIONS} sessions: peak memory growth {growth} bytes, {per_session} a session");
    assert!(
        per_session <= BYTES_PER_SESSION,
        "warm-up grew the process by {per_session} bytes a session (limit {BYTES_PER_SESSION})"
    );
}
