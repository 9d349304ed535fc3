//! The replicated memcached store against real memcached processes: node
//! failures, freezes, empty restarts, logouts during an outage, one node,
//! no node, and garbage. Three nodes unless a test says otherwise.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocat_memcached::{ClientOptions, Key, NodeClient, SetMode};
use ferrocat_session::record::{RecordKind, SessionRecord};
use ferrocat_session::stats::Stats;
use ferrocat_session::store::memcached::{
    MemcachedStoreConfig, NodeState, ReplicatedMemcachedStore,
};
use ferrocat_session::{SessionBackend, SessionId};
use ferrocat_testkit::{wait_until, Cluster};
use futures::stream::{self, StreamExt};

const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// What a request may take beyond `operation_timeout` (relocation writes on
/// healthy nodes, scheduling on a busy 2-core machine).
const MARGIN: Duration = Duration::from_millis(400);

fn store(cluster: &Cluster) -> (ReplicatedMemcachedStore, Arc<Stats>) {
    store_with(cluster, "", Duration::from_millis(50))
}

/// A store over `cluster` with msm's `failover_nodes` and a health probe interval.
fn store_with(
    cluster: &Cluster,
    failover_nodes: &str,
    probe_interval: Duration,
) -> (ReplicatedMemcachedStore, Arc<Stats>) {
    store_from(cluster, failover_nodes, probe_interval, |c| c)
}

/// [`store_with`], the config changed by `f` first.
fn store_from(
    cluster: &Cluster,
    failover_nodes: &str,
    probe_interval: Duration,
    f: impl FnOnce(MemcachedStoreConfig) -> MemcachedStoreConfig,
) -> (ReplicatedMemcachedStore, Arc<Stats>) {
    let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), failover_nodes)
        .unwrap()
        .operation_timeout(OP_TIMEOUT)
        .probe_interval(probe_interval);
    let cfg = f(cfg);
    let stats = Arc::new(Stats::default());
    (
        ReplicatedMemcachedStore::new(cfg, stats.clone()).unwrap(),
        stats,
    )
}

fn live(version: u64, payload: &str) -> SessionRecord {
    let mut r = SessionRecord::new_live(0, 600, payload.as_bytes().to_vec());
    r.version = version;
    r
}

fn warmups(store: &ReplicatedMemcachedStore, node: &str) -> u64 {
    store.health().node(node).unwrap().warmups_completed
}

fn state(store: &ReplicatedMemcachedStore, node: &str) -> NodeState {
    store.health().node(node).unwrap().state
}

/// Waits until every node is up and known to be in sync (start-up checks
/// and warm-ups done).
async fn settled(store: &ReplicatedMemcachedStore) {
    wait_until(
        "start-up checks and warm-ups",
        Duration::from_secs(10),
        || {
            store
                .health()
                .nodes
                .iter()
                .all(|n| n.state == NodeState::Up && n.in_sync)
        },
    )
    .await;
}

/// Restarts `node` empty and waits for `store` to warm it up; returns the copies warm-up wrote.
async fn restart_and_warm_up(
    cluster: &mut Cluster,
    store: &ReplicatedMemcachedStore,
    stats: &Stats,
    node: &str,
) -> u64 {
    let before = warmups(store, node);
    let copied = stats.warmup_copied.load(Relaxed);
    cluster.node(node).restart();
    wait_until(
        "warm-up of the restarted node",
        Duration::from_secs(20),
        || warmups(store, node) > before && state(store, node) == NodeState::Up,
    )
    .await;
    stats.warmup_copied.load(Relaxed) - copied
}

fn raw(cluster: &mut Cluster, node: &str) -> NodeClient {
    NodeClient::new(cluster.node(node).addr(), ClientOptions::default())
}

async fn raw_record(client: &NodeClient, key: &str) -> Option<SessionRecord> {
    let item = client.get(&Key::new(key).unwrap()).await.unwrap()?;
    Some(SessionRecord::decode(&item.value).unwrap())
}

async fn payload(store: &ReplicatedMemcachedStore, id: &SessionId) -> Option<(SessionId, String)> {
    let l = store.load(id).await.unwrap()?;
    Some((l.id, String::from_utf8(l.record.payload).unwrap()))
}

#[actix_rt::test]
async fn primary_down_reads_backup_and_relocates() {
    let mut cluster = Cluster::start(3);
    let (store, stats) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(Some("app1"));
    store.save(&id, &live(1, "visits=1")).await.unwrap();
    let primary = id.node().unwrap().to_owned();

    cluster.node(&primary).kill();
    let loaded = store
        .load(&id)
        .await
        .unwrap()
        .expect("session lost with its primary");
    assert_eq!(loaded.record.payload, b"visits=1");
    assert_ne!(
        loaded.id.node(),
        Some(primary.as_str()),
        "node suffix unchanged"
    );
    assert_eq!(loaded.id.random(), id.random());
    assert_eq!(loaded.id.route(), Some("app1"));
    assert!(stats.memcached_failovers.load(Relaxed) >= 1);

    // visits + 1 under the new id; the id then stays stable
    let mut next = loaded.record.clone();
    next.version += 1;
    next.payload = b"visits=2".to_vec();
    assert_eq!(store.save(&loaded.id, &next).await.unwrap(), loaded.id);
    assert_eq!(
        payload(&store, &loaded.id).await,
        Some((loaded.id.clone(), "visits=2".into()))
    );
    // a request still carrying the old cookie follows the move
    assert_eq!(
        payload(&store, &id).await,
        Some((loaded.id.clone(), "visits=2".into()))
    );
}

#[actix_rt::test]
async fn successive_failures_move_the_session_to_the_last_node() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    store.save(&id, &live(1, "cart=3")).await.unwrap();

    let first = id.node().unwrap().to_owned();
    cluster.node(&first).kill();
    let moved = store.load(&id).await.unwrap().unwrap().id;
    let second = moved.node().unwrap().to_owned();
    assert_ne!(second, first);

    cluster.node(&second).kill();
    let (last_id, data) = payload(&store, &moved)
        .await
        .expect("session lost on the second failure");
    assert_eq!(data, "cart=3");
    let last = last_id.node().unwrap();
    assert!(
        last != first && last != second,
        "not on the surviving node: {last}"
    );
    assert_eq!(state(&store, last), NodeState::Up);
    // and it keeps working there
    assert_eq!(
        store.save(&last_id, &live(9, "cart=4")).await.unwrap(),
        last_id
    );
    assert_eq!(payload(&store, &last_id).await.unwrap().1, "cart=4");
}

/// A relocation whose first-choice target hangs too (frozen, and not yet
/// marked down: a high failure threshold) moves on to the next
/// node instead of leaving the session on its dead primary.
#[actix_rt::test]
async fn relocation_passes_over_a_target_that_fails_too() {
    let mut cluster = Cluster::start(3);
    let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), "")
        .unwrap()
        .operation_timeout(OP_TIMEOUT)
        .probe_interval(Duration::from_millis(50))
        .failure_threshold(1_000_000);
    let store = ReplicatedMemcachedStore::new(cfg, Arc::new(Stats::default())).unwrap();
    settled(&store).await;
    // Sessions on n1; their backups are spread over n2 and n3.
    let mut ids = Vec::new();
    while ids.len() < 24 {
        let id = store.new_id(None);
        if id.node() == Some("n1") {
            store.save(&id, &live(1, "cart=3")).await.unwrap();
            ids.push(id);
        }
    }
    // n1 hangs: each session moves to the node that holds its backup.
    cluster.node("n1").freeze();
    let moved: Vec<SessionId> = stream::iter(&ids)
        .map(|id| async { store.load(id).await.unwrap().expect("session lost").id })
        .buffer_unordered(24)
        .collect()
        .await;
    assert!(moved.iter().all(|m| m.node() != Some("n1")));
    // n2 dies: the sessions on it move again. For about half of them n1
    // ranks before n3, and n1 still counts as up.
    cluster.node("n2").kill();
    let last: Vec<(SessionId, String)> = stream::iter(&moved)
        .map(|id| async {
            payload(&store, id)
                .await
                .expect("session lost on the second failure")
        })
        .buffer_unordered(24)
        .collect()
        .await;
    for (id, data) in &last {
        assert_eq!(data, "cart=3");
        assert_eq!(id.node(), Some("n3"), "not on the surviving node: {id:?}");
    }
    assert_eq!(state(&store, "n1"), NodeState::Up, "n1 was marked down");
}

#[actix_rt::test]
async fn frozen_primary_costs_at_most_the_operation_timeout_and_never_serves_stale_data() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    store.save(&id, &live(1, "visits=1")).await.unwrap();
    let primary = id.node().unwrap().to_owned();
    let before = warmups(&store, &primary);

    cluster.node(&primary).freeze();
    let t = Instant::now();
    let loaded = store
        .load(&id)
        .await
        .unwrap()
        .expect("session lost while primary frozen");
    assert!(
        t.elapsed() < OP_TIMEOUT + MARGIN,
        "load took {:?}",
        t.elapsed()
    );
    assert_ne!(loaded.id, id);
    let mut v = loaded.record.clone();
    v.version += 1;
    v.payload = b"visits=2".to_vec();
    let t = Instant::now();
    let saved = store.save(&loaded.id, &v).await.unwrap();
    assert!(
        t.elapsed() < OP_TIMEOUT + MARGIN,
        "save took {:?}",
        t.elapsed()
    );
    assert_eq!(saved, loaded.id);
    // other sessions created now avoid the frozen node once it is marked down
    for i in 0..5 {
        let other = store.new_id(None);
        let t = Instant::now();
        store
            .save(&other, &live(1, &format!("o{i}")))
            .await
            .unwrap();
        assert!(
            t.elapsed() < OP_TIMEOUT + MARGIN,
            "save took {:?}",
            t.elapsed()
        );
    }
    wait_until("frozen node marked down", Duration::from_secs(5), || {
        state(&store, &primary) == NodeState::Down
    })
    .await;

    cluster.node(&primary).unfreeze();
    // the frozen node still holds visits=1 under the old key: never served
    assert_eq!(payload(&store, &id).await.unwrap().1, "visits=2");
    assert_eq!(payload(&store, &loaded.id).await.unwrap().1, "visits=2");
    wait_until("warm-up after SIGCONT", Duration::from_secs(10), || {
        warmups(&store, &primary) > before && state(&store, &primary) == NodeState::Up
    })
    .await;
    // warm-up replaced the stale copy with the moved marker
    let old = raw_record(&raw(&mut cluster, &primary), &id.key())
        .await
        .unwrap();
    assert!(
        matches!(old.kind, RecordKind::Moved(_)),
        "stale copy kept: {:?}",
        old.kind
    );
    assert_eq!(payload(&store, &id).await.unwrap().1, "visits=2");
}

#[actix_rt::test]
async fn restarted_primary_is_warmed_up_so_losing_the_backup_node_loses_nothing() {
    const SESSIONS: usize = 1000;
    let mut cluster = Cluster::start(3);
    let (store, stats) = store(&cluster);
    settled(&store).await;
    let ids: Vec<SessionId> = (0..SESSIONS).map(|_| store.new_id(None)).collect();
    stream::iter(ids.iter().enumerate())
        .for_each_concurrent(32, |(i, id)| {
            let store = &store;
            async move {
                store.save(id, &live(1, &format!("user{i}"))).await.unwrap();
            }
        })
        .await;
    // every session with a copy on n1 needs exactly one copy back on it
    let on_n1 = ids
        .iter()
        .filter(|id| {
            let c = store.copy_nodes(id);
            c.primary.as_deref() == Some("n1") || c.backup.as_deref() == Some("n1")
        })
        .count() as u64;
    let copied = restart_and_warm_up(&mut cluster, &store, &stats, "n1").await;
    assert_eq!(copied, on_n1);
    eprintln!(
        "warm-up of n1: {on_n1} of {SESSIONS} sessions had a copy on n1, {copied} copied back"
    );

    cluster.node("n2").kill();
    let lost: Vec<usize> = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let store = &store;
            async move {
                match payload(store, id).await {
                    Some((_, p)) if p == format!("user{i}") => None,
                    _ => Some(i),
                }
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(
        lost.is_empty(),
        "{} of {SESSIONS} sessions lost: {lost:?}",
        lost.len()
    );
}

/// A copy outside the session's two places (left by an earlier failover) that
/// is newer than both is what warm-up copies back, and the copy keeps that
/// copy's remaining lifetime, not a fresh max inactive interval.
#[actix_rt::test]
async fn warm_up_takes_a_newer_stray_copy_with_its_remaining_lifetime() {
    let mut cluster = Cluster::start(3);
    let (store, _stats) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    store.save(&id, &live(1, "old")).await.unwrap();
    let copies = store.copy_nodes(&id);
    let (p, b) = (copies.primary.unwrap(), copies.backup.unwrap());
    let third = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != p && *n != b)
        .unwrap();
    let bak = format!("bak:{}", id.key());
    raw(&mut cluster, third)
        .set(
            &Key::new(&bak).unwrap(),
            &live(5, "newest").encode(),
            0,
            100,
            SetMode::Set,
        )
        .await
        .unwrap();

    let before = warmups(&store, &p);
    cluster.node(&p).restart();
    wait_until(
        "warm-up of the restarted primary",
        Duration::from_secs(20),
        || warmups(&store, &p) > before && state(&store, &p) == NodeState::Up,
    )
    .await;

    let primary = raw(&mut cluster, &p);
    let item = primary.get(&Key::new(id.key()).unwrap()).await.unwrap();
    let item = item.expect("warm-up wrote the primary copy");
    let rec = SessionRecord::decode(&item.value).unwrap();
    assert_eq!((rec.version, rec.payload.as_slice()), (5, &b"newest"[..]));
    let ttl = item.ttl.expect("the copy expires");
    assert!((90..=100).contains(&ttl), "primary copy lives {ttl} s");
    let backup = raw_record(&raw(&mut cluster, &b), &bak).await.unwrap();
    assert_eq!(
        backup.version, 5,
        "the backup copy was brought up to date too"
    );
    assert_eq!(payload(&store, &id).await.unwrap().1, "newest");
}

#[actix_rt::test]
async fn logout_while_primary_frozen_is_never_undone() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    let rec = live(5, "logged-in");
    store.save(&id, &rec).await.unwrap();
    let primary = id.node().unwrap().to_owned();

    cluster.node(&primary).freeze();
    let t = Instant::now();
    store.invalidate(&id, Some(&rec)).await.unwrap();
    assert!(
        t.elapsed() < OP_TIMEOUT + MARGIN,
        "invalidate took {:?}",
        t.elapsed()
    );
    assert!(store.load(&id).await.unwrap().is_none());

    cluster.node(&primary).unfreeze();
    // the primary answers again with its old live copy: rejected
    assert!(
        store.load(&id).await.unwrap().is_none(),
        "logged-out session came back"
    );
    // and the tombstone reaches the returned node
    let client = raw(&mut cluster, &primary);
    let start = Instant::now();
    loop {
        let r = raw_record(&client, &id.key()).await;
        if r.as_ref().is_some_and(|r| r.kind == RecordKind::Deleted) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stale copy still live: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.load(&id).await.unwrap().is_none());
}

#[actix_rt::test]
async fn one_node_works_without_writing_a_backup() {
    let mut cluster = Cluster::start(1);
    let (store, stats) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    assert_eq!(id.node(), Some("n1"));
    store.save(&id, &live(1, "solo")).await.unwrap();
    assert_eq!(payload(&store, &id).await.unwrap().1, "solo");
    let client = raw(&mut cluster, "n1");
    let bak = client
        .get(&Key::new(format!("bak:{}", id.key())).unwrap())
        .await
        .unwrap();
    assert!(bak.is_none(), "a backup was written on a single node");
    assert_eq!(stats.backup_failures.load(Relaxed), 0);
    store.invalidate(&id, None).await.unwrap();
    assert!(store.load(&id).await.unwrap().is_none());
}

#[actix_rt::test]
async fn all_nodes_down_is_a_counted_degraded_mode_that_recovers() {
    let mut cluster = Cluster::start(3);
    let (store, stats) = store(&cluster);
    settled(&store).await;
    for n in ["n1", "n2", "n3"] {
        cluster.node(n).kill();
    }
    wait_until("degraded mode", Duration::from_secs(5), || {
        store.is_degraded()
    })
    .await;

    let id = store.new_id(None);
    let t = Instant::now();
    assert_eq!(store.save(&id, &live(1, "offline")).await.unwrap(), id);
    assert_eq!(payload(&store, &id).await.unwrap().1, "offline");
    assert!(store.try_lock(&id, Duration::from_secs(5)).await.unwrap());
    store.unlock(&id).await.unwrap();
    assert!(
        t.elapsed() < OP_TIMEOUT,
        "degraded operations must not wait on dead nodes"
    );
    assert!(stats.degraded_operations.load(Relaxed) >= 4);
    assert_eq!(store.degraded_pending(), 1);

    cluster.node("n2").restart();
    wait_until("recovery and flush", Duration::from_secs(10), || {
        !store.is_degraded() && store.degraded_pending() == 0
    })
    .await;
    // served from memcached now (the flush dropped the in-memory copy)
    let Some((at, data)) = payload(&store, &id).await else {
        panic!(
            "degraded session lost on recovery; health {:?}, stats {:?}",
            store.health(),
            stats.snapshot()
        );
    };
    assert_eq!(data, "offline");
    assert_eq!(at.node(), Some("n2"));
    let stored = raw_record(&raw(&mut cluster, "n2"), &at.key()).await;
    assert!(stored.is_some_and(|r| r.is_live()));
}

#[actix_rt::test]
async fn garbage_under_a_session_key_is_counted_and_treated_as_a_miss() {
    let mut cluster = Cluster::start(3);
    let (store, stats) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    let good = live(3, "fine");
    store.save(&id, &good).await.unwrap();
    let primary = raw(&mut cluster, id.node().unwrap());
    let backup_node = store.copy_nodes(&id).backup.unwrap();
    let backup = raw(&mut cluster, &backup_node);
    let key = Key::new(id.key()).unwrap();
    let bak = Key::new(format!("bak:{}", id.key())).unwrap();

    // garbage on the primary only: served from the backup, primary repaired
    primary
        .set(&key, b"\x00garbage", 0, 60, SetMode::Set)
        .await
        .unwrap();
    assert_eq!(payload(&store, &id).await.unwrap().1, "fine");
    assert_eq!(stats.garbage_values.load(Relaxed), 1);
    assert!(stats.repairs.load(Relaxed) >= 1);
    assert_eq!(raw_record(&primary, &id.key()).await, Some(good.clone()));

    // a truncated record and a wrong header on both copies: a miss, no panic
    let encoded = good.encode();
    primary
        .set(&key, &encoded[..20], 0, 60, SetMode::Set)
        .await
        .unwrap();
    let mut wrong = encoded.clone();
    wrong[0] = b'X';
    backup.set(&bak, &wrong, 0, 60, SetMode::Set).await.unwrap();
    assert!(store.load(&id).await.unwrap().is_none());
    assert!(stats.garbage_values.load(Relaxed) >= 3);
    // and the session can be saved again over the garbage
    store.save(&id, &live(4, "again")).await.unwrap();
    assert_eq!(payload(&store, &id).await.unwrap().1, "again");
}

#[test]
fn creation_needs_an_actix_system_and_a_valid_config() {
    let cfg = MemcachedStoreConfig::from_msm("n1:127.0.0.1:1", "").unwrap();
    let err = ReplicatedMemcachedStore::new(cfg, Arc::new(Stats::default())).unwrap_err();
    assert!(err.to_string().contains("actix System"), "{err}");
    let bad = MemcachedStoreConfig::from_msm("n1:127.0.0.1:1", "")
        .unwrap()
        .operation_timeout(Duration::ZERO);
    let err = ReplicatedMemcachedStore::new(bad, Arc::new(Stats::default())).unwrap_err();
    assert!(err.to_string().contains("operation_timeout"), "{err}");
}

#[actix_rt::test]
async fn one_store_serves_workers_on_other_threads() {
    let cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    let store = Arc::new(store);
    // like actix-web workers: one thread and one single-threaded runtime each
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut ids = Vec::new();
                    for i in 0..50 {
                        let id = store.new_id(Some(&format!("app{w}")));
                        store
                            .save(&id, &live(1, &format!("{w}/{i}")))
                            .await
                            .unwrap();
                        ids.push(id);
                    }
                    ids
                })
            })
        })
        .collect();
    let mut all = Vec::new();
    for (w, h) in workers.into_iter().enumerate() {
        for (i, id) in h.join().unwrap().into_iter().enumerate() {
            all.push((id, format!("{w}/{i}")));
        }
    }
    // every session written by any worker is readable here
    for (id, expect) in &all {
        assert_eq!(payload(&store, id).await.unwrap().1, *expect);
    }
}

#[actix_rt::test]
async fn failover_nodes_are_used_only_when_no_regular_node_is_up() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store_with(&cluster, "n3", Duration::from_millis(50));
    settled(&store).await;
    for i in 0..20 {
        let id = store.new_id(None);
        assert_ne!(id.node(), Some("n3"));
        store.save(&id, &live(1, &format!("s{i}"))).await.unwrap();
    }
    let n3 = raw(&mut cluster, "n3");
    let keys = n3.metadump().await.unwrap();
    assert!(
        keys.iter().all(|k| !k.key.contains('-')),
        "session copies on the failover node while regular nodes are up: {keys:?}"
    );

    cluster.node("n1").kill();
    let id = store.new_id(None);
    store.save(&id, &live(1, "late")).await.unwrap();
    wait_until("n1 down", Duration::from_secs(5), || {
        state(&store, "n1") == NodeState::Down
    })
    .await;
    let id = store.new_id(None);
    assert_eq!(id.node(), Some("n2"));
    store.save(&id, &live(1, "late")).await.unwrap();
    assert_eq!(store.copy_nodes(&id).backup.as_deref(), Some("n3"));
    assert!(raw_record(&n3, &format!("bak:{}", id.key()))
        .await
        .is_some());
}

#[actix_rt::test]
async fn two_app_nodes_agree_on_placement_and_relocation() {
    let mut cluster = Cluster::start(3);
    let (a, _) = store(&cluster);
    let (b, _) = store(&cluster);
    settled(&a).await;
    settled(&b).await;
    let id = a.new_id(None);
    a.save(&id, &live(1, "shared")).await.unwrap();
    assert_eq!(a.copy_nodes(&id), b.copy_nodes(&id));
    assert_eq!(payload(&b, &id).await.unwrap().1, "shared");

    cluster.node(id.node().unwrap()).kill();
    let (moved_b, data_b) = payload(&b, &id).await.unwrap();
    let (moved_a, data_a) = payload(&a, &id).await.unwrap();
    assert_ne!(moved_b, id);
    assert_eq!(
        moved_a, moved_b,
        "app nodes relocated the session to different ids"
    );
    assert_eq!((data_a.as_str(), data_b.as_str()), ("shared", "shared"));
}

#[actix_rt::test]
async fn a_session_can_move_back_to_a_recovered_node() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    // a session on n1 whose relocation target B would in turn relocate back to n1
    let (id, b) = loop {
        let id = SessionId::generate(Some("n1"), None);
        let b = store.copy_nodes(&id).backup.unwrap();
        if store.copy_nodes(&id.with_node(Some(&b))).backup.as_deref() == Some("n1") {
            break (id, b);
        }
    };
    store.save(&id, &live(1, "a")).await.unwrap();
    cluster.node("n1").kill();
    let at_b = store.load(&id).await.unwrap().unwrap();
    assert_eq!(at_b.id.node(), Some(b.as_str()));
    let mut v = at_b.record.clone();
    v.version += 1;
    v.payload = b"b".to_vec();
    store.save(&at_b.id, &v).await.unwrap();

    let before = warmups(&store, "n1");
    cluster.node("n1").restart();
    wait_until("warm-up of n1", Duration::from_secs(10), || {
        warmups(&store, "n1") > before && state(&store, "n1") == NodeState::Up
    })
    .await;
    // This thread's connections to n1 saw it refused while it was down; let
    // their reconnect back-off (50 ms at first) pass, or n1 looks down here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.node(&b).kill();
    // n1 holds a moved marker for this very key: the session moves back anyway
    let back = store
        .load(&at_b.id)
        .await
        .unwrap()
        .expect("lost moving back");
    assert_eq!(back.id, id);
    assert_eq!(back.record.payload, b"b");
    let mut v = back.record.clone();
    v.version += 1;
    v.payload = b"c".to_vec();
    assert_eq!(store.save(&back.id, &v).await.unwrap(), id);
    assert_eq!(payload(&store, &id).await, Some((id.clone(), "c".into())));
    assert_eq!(
        payload(&store, &at_b.id).await,
        Some((id.clone(), "c".into()))
    );
}

#[actix_rt::test]
async fn an_oversized_session_is_an_error_not_a_failover() {
    let cluster = Cluster::start(3);
    let (store, stats) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    let huge = SessionRecord::new_live(0, 600, vec![b'x'; 2 * 1024 * 1024]);
    assert!(store.save(&id, &huge).await.is_err());
    assert_eq!(store.degraded_pending(), 0);
    assert_eq!(stats.memcached_failovers.load(Relaxed), 0);
    assert!(store.load(&id).await.unwrap().is_none());
}

#[actix_rt::test]
async fn a_locked_request_on_a_frozen_primary_waits_about_one_timeout() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    let id = store.new_id(None);
    store.save(&id, &live(1, "visits=1")).await.unwrap();
    cluster.node(id.node().unwrap()).freeze();

    // what a non-sticky request with locking does: lock, load, save, unlock
    let t = Instant::now();
    assert!(store.try_lock(&id, Duration::from_secs(5)).await.unwrap());
    let loaded = store.load(&id).await.unwrap().unwrap();
    let mut v = loaded.record.clone();
    v.version += 1;
    v.payload = b"visits=2".to_vec();
    let saved = store.save(&loaded.id, &v).await.unwrap();
    store.unlock(&saved).await.unwrap();
    let took = t.elapsed();
    assert!(took < OP_TIMEOUT + MARGIN, "request took {took:?}");
    assert_eq!(payload(&store, &saved).await.unwrap().1, "visits=2");
}

/// Two app nodes (two stores) over the same memcached nodes, no locking: a
/// save based on a load made before another node's logout is refused, and
/// both copies stay tombstones; saves racing with live writes still land
/// (last write wins).
#[actix_rt::test]
async fn a_save_loaded_before_a_logout_on_another_node_is_refused() {
    let mut cluster = Cluster::start(3);
    let (a, _) = store(&cluster);
    let (b, _) = store(&cluster);
    settled(&a).await;
    settled(&b).await;
    let id = a.new_id(None);
    a.save(&id, &live(1, "cart=1")).await.unwrap();

    // B loads, A logs the session out, B saves its change.
    let seen_by_b = b.load(&id).await.unwrap().expect("loaded");
    a.invalidate(&id, Some(&seen_by_b.record)).await.unwrap();
    let mut next = seen_by_b.record.clone();
    next.version += 1;
    next.payload = b"cart=2".to_vec();
    let refused = b.save_seen(&id, &next, &mut seen_by_b.seen.clone()).await;
    assert!(
        matches!(refused, Err(ferrocat_session::StoreError::Invalidated)),
        "{refused:?}"
    );
    assert!(a.load(&id).await.unwrap().is_none());
    assert!(b.load(&id).await.unwrap().is_none());
    // Both copies are tombstones in memcached itself.
    let key = id.key();
    let mut tombs = 0;
    for node in ["n1", "n2", "n3"] {
        let c = NodeClient::new(cluster.node(node).addr(), ClientOptions::default());
        for k in [key.clone(), format!("bak:{key}")] {
            if let Some(r) = raw_record(&c, &k).await {
                assert_eq!(r.kind, RecordKind::Deleted, "{node} {k}: {r:?}");
                tombs += 1;
            }
        }
    }
    assert_eq!(tombs, 2);

    // Live writes racing each other: both land, the last one wins.
    let id = a.new_id(None);
    a.save(&id, &live(1, "v=1")).await.unwrap();
    let la = a.load(&id).await.unwrap().unwrap();
    let lb = b.load(&id).await.unwrap().unwrap();
    let mut ra = la.record.clone();
    ra.version += 1;
    ra.payload = b"v=a".to_vec();
    a.save_seen(&id, &ra, &mut la.seen.clone()).await.unwrap();
    let mut rb = lb.record.clone();
    rb.version += 1;
    rb.last_access_ms += 1;
    rb.payload = b"v=b".to_vec();
    b.save_seen(&id, &rb, &mut lb.seen.clone()).await.unwrap();
    assert_eq!(payload(&a, &id).await, Some((id.clone(), "v=b".into())));
}

/// The conditional save's other paths: a copy that was missing at load time and written by
/// someone else meanwhile is replaced (add-if-absent fails, the copy is read again, written with
/// its CAS); a logout whose tombstone reached only the primary still refuses the save, and the
/// tombstone then covers the backup too.
#[actix_rt::test]
async fn conditional_saves_settle_missing_copies_and_half_written_logouts() {
    let mut cluster = Cluster::start(3);
    let (store, _) = store(&cluster);
    settled(&store).await;
    let clients: Vec<(String, NodeClient)> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let c = NodeClient::new(cluster.node(n).addr(), ClientOptions::default());
            ((*n).to_owned(), c)
        })
        .collect();

    // 1. Backup missing when loaded, then rewritten by another writer.
    let id = store.new_id(None);
    store.save(&id, &live(1, "a")).await.unwrap();
    let bkey = format!("bak:{}", id.key());
    let bnode = store.copy_nodes(&id).backup.expect("backup node");
    let bclient = &clients.iter().find(|(n, _)| *n == bnode).unwrap().1;
    bclient.delete(&Key::new(&bkey).unwrap()).await.unwrap();
    let loaded = store.load(&id).await.unwrap().unwrap();
    // (the load repaired the backup; remove it again so the save's add-if-absent is what runs)
    bclient.delete(&Key::new(&bkey).unwrap()).await.unwrap();
    let other = live(5, "other writer");
    bclient
        .set(
            &Key::new(&bkey).unwrap(),
            &other.encode(),
            0,
            600,
            SetMode::Set,
        )
        .await
        .unwrap();
    let mut next = loaded.record.clone();
    next.version += 1;
    next.payload = b"ours".to_vec();
    store
        .save_seen(&id, &next, &mut loaded.seen.clone())
        .await
        .unwrap();
    assert_eq!(raw_record(bclient, &bkey).await.unwrap().payload, b"ours");

    // 2. A logout that reached only the primary.
    let id = store.new_id(None);
    store.save(&id, &live(1, "b")).await.unwrap();
    let loaded = store.load(&id).await.unwrap().unwrap();
    let pclient = &clients
        .iter()
        .find(|(n, _)| Some(n.as_str()) == id.node())
        .unwrap()
        .1;
    let mut tomb = loaded.record.tombstone();
    tomb.version = tomb
        .version
        .max(ferrocat_session::store::memcached::TOMBSTONE_VERSION);
    pclient
        .set(
            &Key::new(id.key()).unwrap(),
            &tomb.encode(),
            0,
            600,
            SetMode::Set,
        )
        .await
        .unwrap();
    let mut next = loaded.record.clone();
    next.version += 1;
    let refused = store.save_seen(&id, &next, &mut loaded.seen.clone()).await;
    assert!(
        matches!(refused, Err(ferrocat_session::StoreError::Invalidated)),
        "{refused:?}"
    );
    let bkey = format!("bak:{}", id.key());
    let bnode = store.copy_nodes(&id).backup.expect("backup node");
    let bclient = &clients.iter().find(|(n, _)| *n == bnode).unwrap().1;
    assert_eq!(
        raw_record(bclient, &bkey).await.unwrap().kind,
        RecordKind::Deleted,
        "the backup copy was left live"
    );
    assert!(store.load(&id).await.unwrap().is_none());
}

/// A change that found no node (every node frozen) waits in memory. If the user logs out on
/// another app node before it is flushed, the logout stands: a load sees the tombstone instead of
/// the parked copy (before: the parked copy was served, and the save after it overwrote the
/// tombstone), and the flush drops the parked copy.
#[actix_rt::test]
async fn a_change_parked_during_an_outage_does_not_undo_a_logout_made_meanwhile() {
    let mut cluster = Cluster::start(3);
    // A probes rarely, so its flush of parked sessions does not run during the test's steps.
    let (a, stats_a) = store_with(&cluster, "", Duration::from_secs(60));
    let (b, _) = store(&cluster);
    // (A starts with every node usable; its first probe would come after a minute.)
    settled(&b).await;
    let id = a.new_id(None);
    a.save(&id, &live(1, "cart=1")).await.unwrap();
    let seen_by_b = b.load(&id).await.unwrap().expect("loaded by B");

    // Every node frozen: A's save of the next change lands nowhere and is parked in memory.
    for n in ["n1", "n2", "n3"] {
        cluster.node(n).freeze();
    }
    a.save(&id, &live(3, "cart=1,2,3")).await.unwrap();
    assert_eq!(a.degraded_pending(), 1, "stats {:?}", stats_a.snapshot());
    for n in ["n1", "n2", "n3"] {
        cluster.node(n).unfreeze();
    }
    assert!(
        !a.is_degraded(),
        "the test needs A to see memcached usable: {:?}",
        a.health()
    );

    // The user logs out on B.
    wait_until("B sees every node up", Duration::from_secs(10), || {
        b.health().nodes.iter().all(|n| n.state == NodeState::Up)
    })
    .await;
    b.invalidate(&id, Some(&seen_by_b.record)).await.unwrap();

    assert!(
        a.load(&id).await.unwrap().is_none(),
        "A served its parked copy of a session logged out on B"
    );
    assert_eq!(a.degraded_pending(), 0, "the parked copy must be dropped");
    assert!(b.load(&id).await.unwrap().is_none());
}

/// msm's `storageKeyPrefix`: two apps on the same memcached nodes, even with the
/// same session id, never see, lock or warm up each other's sessions.
#[actix_rt::test]
async fn apps_with_their_own_key_prefix_share_the_nodes_apart() {
    let mut cluster = Cluster::start(2);
    let with_prefix = |prefix: &str| {
        store_from(&cluster, "", Duration::from_millis(50), |c| {
            c.key_prefix(prefix)
        })
    };
    let (shop, shop_stats) = with_prefix("shop");
    let (shop2, _) = with_prefix("shop");
    let (blog, _) = with_prefix("blog");
    let (plain, _) = store(&cluster);
    for s in [&shop, &shop2, &blog, &plain] {
        settled(s).await;
    }
    let id = shop.new_id(None);
    shop.save(&id, &live(1, "cart")).await.unwrap();
    assert_eq!(payload(&shop2, &id).await.unwrap().1, "cart");
    assert!(payload(&blog, &id).await.is_none());
    assert!(payload(&plain, &id).await.is_none());
    // The other app's session under the same id is its own.
    blog.save(&id, &live(1, "post")).await.unwrap();
    assert_eq!(payload(&shop, &id).await.unwrap().1, "cart");
    assert_eq!(payload(&blog, &id).await.unwrap().1, "post");
    // On the nodes: `<prefix>:<key>` and `<prefix>:bak:<key>`.
    let nodes = shop.copy_nodes(&id);
    let (p, b) = (nodes.primary.unwrap(), nodes.backup.unwrap());
    let primary = raw(&mut cluster, &p);
    let backup = raw(&mut cluster, &b);
    let key = id.key();
    assert!(raw_record(&primary, &format!("shop:{key}")).await.is_some());
    assert!(raw_record(&backup, &format!("shop:bak:{key}"))
        .await
        .is_some());
    assert!(raw_record(&primary, &key).await.is_none());
    // A lock taken by one app does not hold the other.
    assert!(shop.try_lock(&id, Duration::from_secs(5)).await.unwrap());
    assert!(blog.try_lock(&id, Duration::from_secs(5)).await.unwrap());
    assert!(!shop2.try_lock(&id, Duration::from_secs(5)).await.unwrap());
    shop.unlock(&id).await.unwrap();
    blog.unlock(&id).await.unwrap();

    // The primary comes back empty while only the shop runs: its warm-up copies the
    // shop's session back and leaves the blog's keys alone (the blog warms up its own).
    drop(blog);
    drop(shop2);
    drop(plain);
    assert_eq!(
        restart_and_warm_up(&mut cluster, &shop, &shop_stats, &p).await,
        1
    );
    let primary = raw(&mut cluster, &p);
    assert_eq!(
        raw_record(&primary, &format!("shop:{key}"))
            .await
            .map(|r| r.payload),
        Some(b"cart".to_vec())
    );
    assert!(raw_record(&primary, &format!("blog:{key}")).await.is_none());
    assert!(raw_record(&primary, &key).await.is_none());
}

/// Nodes started with `memcached -Y <authfile>` (ASCII authentication, msm's
/// `username`/`password`): with the right credentials the store works,
/// warm-up's key dump included; a wrong password or none is an error that
/// says so, and the password is never stored on a node that wants none.
#[actix_rt::test]
async fn nodes_that_require_authentication() {
    use ferrocat_memcached::{Credentials, McError};
    let dir = std::env::temp_dir().join(format!("ferrocat-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let authfile = dir.join("authfile");
    std::fs::write(&authfile, "app:s3cret\n").unwrap();
    let mut cluster = Cluster::start_with_args(2, &["-Y", authfile.to_str().unwrap()]);
    let creds = |user: &str, pass: &str| Some(Credentials::new(user, pass).unwrap());
    let (store, stats) = store_from(&cluster, "", Duration::from_millis(50), |c| {
        c.credentials(creds("app", "s3cret"))
    });
    settled(&store).await;
    let id = store.new_id(None);
    store.save(&id, &live(1, "cart")).await.unwrap();
    assert_eq!(payload(&store, &id).await.unwrap().1, "cart");
    assert_eq!(stats.degraded_operations.load(Relaxed), 0);

    // Warm-up enumerates keys over an authenticated connection too.
    let p = store.copy_nodes(&id).primary.unwrap();
    assert_eq!(
        restart_and_warm_up(&mut cluster, &store, &stats, &p).await,
        1
    );

    // A wrong password, or none, is refused with a clear error.
    let addr = cluster.node(&p).addr();
    let key = Key::new("k").unwrap();
    let wrong = NodeClient::new(
        addr,
        ClientOptions::default().credentials(creds("app", "wrong")),
    );
    let e = wrong.get(&key).await.unwrap_err();
    assert!(matches!(e, McError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(e.is_node_failure());
    let none = NodeClient::new(addr, ClientOptions::default());
    assert!(none.get(&key).await.is_err());

    // Credentials sent to a node that wants none leave nothing readable behind.
    let mut open = Cluster::start(1);
    let plain = NodeClient::new(
        open.node("n1").addr(),
        ClientOptions::default().credentials(creds("app", "s3cret")),
    );
    plain.set(&key, b"v", 0, 60, SetMode::Set).await.unwrap();
    assert!(raw(&mut open, "n1")
        .get(&Key::new("ferrocat:auth").unwrap())
        .await
        .unwrap()
        .is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
