//! One acceptance suite for every session backend: the in-process store, a
//! single memcached node and a replicated set of three. Each backend must
//! give the manager the same semantics: ids name a node, a saved session
//! loads back newest-first, touch extends the expiry without a rewrite,
//! invalidation is final and drops the lock, locks are exclusive and expire,
//! and sessions expire after their max inactive interval.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocat_session::record::SessionRecord;
use ferrocat_session::stats::Stats;
use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
use ferrocat_session::store::memory::MemoryStore;
use ferrocat_session::{SessionBackend, SessionId};
use ferrocat_testkit::Cluster;

fn live(version: u64, max_inactive_secs: u32, payload: &str) -> SessionRecord {
    let mut r = SessionRecord::new_live(0, max_inactive_secs, payload.as_bytes().to_vec());
    r.version = version;
    r
}

async fn payload_of(store: &dyn SessionBackend, id: &SessionId) -> Option<String> {
    let loaded = store.load(id).await.unwrap()?;
    Some(String::from_utf8(loaded.record.payload).unwrap())
}

/// Everything that does not wait for time to pass.
async fn immediate_semantics(store: &dyn SessionBackend, name: &str) {
    // ids: a node, the route kept, fresh randomness
    let id = store.new_id(Some("app1"));
    assert!(id.node().is_some(), "{name}: id without node");
    assert_eq!(id.route(), Some("app1"), "{name}");
    assert_ne!(store.new_id(None).random(), id.random(), "{name}");

    // unknown -> None
    assert!(
        store.load(&id).await.unwrap().is_none(),
        "{name}: unknown id loaded"
    );

    // save/load roundtrip, same id back
    let v1 = live(1, 600, "visits=1");
    assert_eq!(store.save(&id, &v1).await.unwrap(), id, "{name}");
    let got = store.load(&id).await.unwrap().unwrap();
    assert_eq!(got.id, id, "{name}");
    assert_eq!(got.record.payload, b"visits=1", "{name}");
    assert!(got.record.is_live(), "{name}");

    // a newer save wins
    let v2 = live(got.record.version + 1, 600, "visits=2");
    assert_eq!(store.save(&id, &v2).await.unwrap(), id, "{name}");
    assert_eq!(
        payload_of(store, &id).await.as_deref(),
        Some("visits=2"),
        "{name}"
    );

    // touch keeps it unchanged
    store.touch(&id, &v2).await.unwrap();
    assert_eq!(
        payload_of(store, &id).await.as_deref(),
        Some("visits=2"),
        "{name}"
    );

    // locks are exclusive until unlocked
    let lock = Duration::from_secs(5);
    assert!(
        store.try_lock(&id, lock).await.unwrap(),
        "{name}: first lock"
    );
    assert!(
        !store.try_lock(&id, lock).await.unwrap(),
        "{name}: second lock"
    );
    store.unlock(&id).await.unwrap();
    assert!(
        store.try_lock(&id, lock).await.unwrap(),
        "{name}: lock after unlock"
    );

    // invalidate is final and drops the lock
    store.invalidate(&id, Some(&v2)).await.unwrap();
    assert!(
        store.load(&id).await.unwrap().is_none(),
        "{name}: invalidated session loaded"
    );
    assert!(
        store.try_lock(&id, lock).await.unwrap(),
        "{name}: lock survived invalidate"
    );
    store.unlock(&id).await.unwrap();
    // a late save of the pre-logout state does not matter for a new id, and
    // invalidating what is unknown is fine
    store.invalidate(&store.new_id(None), None).await.unwrap();

    // another session is unaffected by all this
    let other = store.new_id(None);
    store.save(&other, &live(1, 600, "other")).await.unwrap();
    assert_eq!(
        payload_of(store, &other).await.as_deref(),
        Some("other"),
        "{name}"
    );
}

/// Expiry of sessions and locks; touch extends. memcached's clock ticks in
/// whole seconds and may lag by one, so each check keeps half a second clear
/// of both edges: untouched 3 s gone before 4 s, touched at 3 s for 3 s kept
/// past 5 s.
async fn expiry_semantics(store: &dyn SessionBackend, name: &str) {
    let start = Instant::now();
    let short = store.new_id(None);
    let touched = store.new_id(None);
    let untouched = store.new_id(None);
    let short_rec = live(1, 2, "short");
    let t_rec = live(1, 3, "touched");
    store.save(&short, &short_rec).await.unwrap();
    store.save(&touched, &t_rec).await.unwrap();
    store
        .save(&untouched, &live(1, 3, "untouched"))
        .await
        .unwrap();
    assert!(
        store
            .try_lock(&short, Duration::from_secs(1))
            .await
            .unwrap(),
        "{name}"
    );

    tokio::time::sleep_until((start + Duration::from_millis(3000)).into()).await;
    store.touch(&touched, &t_rec).await.unwrap();
    assert!(
        store
            .try_lock(&short, Duration::from_secs(1))
            .await
            .unwrap(),
        "{name}: lock did not expire"
    );

    tokio::time::sleep_until((start + Duration::from_millis(4500)).into()).await;
    assert!(
        store.load(&short).await.unwrap().is_none(),
        "{name}: 2 s session alive at 4.5 s"
    );
    assert!(
        store.load(&untouched).await.unwrap().is_none(),
        "{name}: untouched 3 s session alive at 4.5 s"
    );
    assert_eq!(
        payload_of(store, &touched).await.as_deref(),
        Some("touched"),
        "{name}: touch did not extend the expiry"
    );
}

async fn suite(store: Arc<dyn SessionBackend>, name: &str) {
    immediate_semantics(store.as_ref(), name).await;
    expiry_semantics(store.as_ref(), name).await;
}

fn memcached_store(cluster: &Cluster) -> Arc<dyn SessionBackend> {
    let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), "")
        .unwrap()
        .operation_timeout(Duration::from_millis(500))
        .probe_interval(Duration::from_millis(100));
    Arc::new(ReplicatedMemcachedStore::new(cfg, Arc::new(Stats::default())).unwrap())
}

#[actix_rt::test]
async fn every_backend_passes_the_acceptance_suite() {
    let one = Cluster::start(1);
    let three = Cluster::start(3);
    let memory: Arc<dyn SessionBackend> = Arc::new(MemoryStore::default());
    let single = memcached_store(&one);
    let replicated = memcached_store(&three);
    futures::join!(
        suite(memory, "memory"),
        suite(single, "single memcached"),
        suite(replicated, "replicated memcached"),
    );
}
