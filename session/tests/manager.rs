//! The session manager's behaviour over the in-process store: locking modes,
//! the ignore pattern, unchanged sessions, sync/async backups, renewal,
//! invalidation and the sticky cache bounds. (The same behaviour over real
//! memcached is covered in the server's cluster tests.)
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::cookie::Cookie;
use actix_web::dev::ServiceResponse;
use actix_web::{test, web, App, HttpResponse};
use ferrocat_session::id::SessionId;
use ferrocat_session::record::SessionRecord;
use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
use ferrocat_session::store::memory::MemoryStore;
use ferrocat_session::store::{Loaded, SessionBackend, StoreFuture};
use ferrocat_session::{Session, SessionConfig, SessionManager, Stats};
use ferrocat_testkit::Cluster;

fn manager(backend: Arc<dyn SessionBackend>, f: impl FnOnce(&mut SessionConfig)) -> SessionManager {
    manager_with(backend, Arc::new(Stats::default()), f)
}

fn manager_with(
    backend: Arc<dyn SessionBackend>,
    stats: Arc<Stats>,
    f: impl FnOnce(&mut SessionConfig),
) -> SessionManager {
    let mut cfg = SessionConfig {
        cookie_secret: Some("x".repeat(32)),
        ..Default::default()
    };
    f(&mut cfg);
    SessionManager::new(cfg.validate().unwrap(), "app1", backend, stats)
}

/// Which store a test runs on: the behaviour must be the same on both.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    /// Three real memcached processes, replicated store.
    Memcached,
}

/// A manager over `kind`; keep the returned cluster alive for the test.
fn manager_on(kind: Kind, f: impl FnOnce(&mut SessionConfig)) -> (SessionManager, Option<Cluster>) {
    let stats = Arc::new(Stats::default());
    match kind {
        Kind::Memory => (
            manager_with(Arc::new(MemoryStore::default()), stats, f),
            None,
        ),
        Kind::Memcached => {
            let cluster = Cluster::start(3);
            let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), "")
                .unwrap()
                .operation_timeout(Duration::from_millis(500));
            let store = ReplicatedMemcachedStore::new(cfg, stats.clone()).unwrap();
            (manager_with(Arc::new(store), stats, f), Some(cluster))
        }
    }
}

/// Runs a test body once per store.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn in_process() {
                super::$name(super::Kind::Memory).await;
            }
            #[actix_rt::test]
            async fn memcached() {
                super::$name(super::Kind::Memcached).await;
            }
        }
    )*};
}

on_every_store!(
    locking_all_loses_no_parallel_attribute,
    locking_none_can_lose_parallel_attributes,
    uri_pattern_locks_only_matching_requests,
    auto_mode_learns_read_only_requests_and_stops_locking_them,
    ignored_requests_neither_load_nor_store,
    an_unchanged_session_is_not_written_again,
    renew_gives_a_new_id_and_kills_the_old_one,
    invalidate_removes_the_session_and_the_cookie,
    an_unchanged_non_sticky_session_is_touched_once_per_quarter_interval,
    a_request_that_loaded_the_session_before_a_logout_does_not_bring_it_back,
    sticky_a_request_served_from_the_cache_before_a_logout_does_not_bring_it_back,
    sticky_a_node_that_was_bypassed_serves_the_store_copy_not_its_stale_cache,
    sticky_a_write_from_a_stale_cache_does_not_undo_a_logout_on_another_node,
    sticky_async_a_write_from_a_stale_cache_does_not_undo_a_logout_on_another_node,
    non_sticky_only_the_attributes_the_filter_keeps_are_stored,
    sticky_the_cache_keeps_every_attribute_the_store_the_filtered_ones,
);

async fn add_attr(session: Session, path: web::Path<String>) -> HttpResponse {
    // Read, work a little (yield), then write: the classic lost-update window.
    let _ = session.keys();
    actix_rt::time::sleep(Duration::from_millis(5)).await;
    session.insert(path.into_inner(), &true).unwrap();
    HttpResponse::Ok().finish()
}

async fn read(session: Session) -> HttpResponse {
    HttpResponse::Ok().json(session.keys())
}

async fn set_same(session: Session) -> HttpResponse {
    session.insert("v", &1u32).unwrap();
    HttpResponse::Ok().finish()
}

async fn login(session: Session) -> HttpResponse {
    session.insert("user", "alice").unwrap();
    session.renew();
    HttpResponse::Ok().finish()
}

async fn slow_attr(session: Session, path: web::Path<String>) -> HttpResponse {
    // Loaded at the start; a logout runs while this request works.
    let _ = session.keys();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    session.insert(path.into_inner(), &true).unwrap();
    HttpResponse::Ok().finish()
}

/// Sets this session's max inactive interval to `secs` (Tomcat's `setMaxInactiveInterval`).
async fn set_interval(session: Session, secs: web::Path<u64>) -> HttpResponse {
    session.set_max_inactive_interval(Duration::from_secs(secs.into_inner()));
    HttpResponse::Ok().finish()
}

async fn interval(session: Session) -> HttpResponse {
    HttpResponse::Ok().json(session.max_inactive_interval().as_secs())
}

async fn remove_attr(session: Session, path: web::Path<String>) -> HttpResponse {
    session.remove(&path);
    HttpResponse::Ok().finish()
}

async fn logout(session: Session) -> HttpResponse {
    session.invalidate();
    HttpResponse::Ok().finish()
}

macro_rules! app {
    ($mgr:expr) => {
        test::init_service(
            App::new()
                .wrap($mgr.middleware())
                .route("/attr/{name}", web::post().to(add_attr))
                .route("/remove/{name}", web::post().to(remove_attr))
                .route("/slow/{name}", web::post().to(slow_attr))
                .route("/read", web::get().to(read))
                .route("/same", web::post().to(set_same))
                .route("/login", web::post().to(login))
                .route("/logout", web::post().to(logout))
                .route("/interval/{secs}", web::post().to(set_interval))
                .route("/interval", web::get().to(interval))
                .route("/static/a.css", web::get().to(read)),
        )
        .await
    };
}

fn cookie_of<B>(res: &ServiceResponse<B>) -> Option<Cookie<'static>> {
    res.response()
        .cookies()
        .find(|c| c.name() == "JSESSIONID")
        .map(|c| c.into_owned())
}

macro_rules! keys {
    ($app:expr, $cookie:expr) => {{
        let req = test::TestRequest::get()
            .uri("/read")
            .cookie($cookie.clone())
            .to_request();
        let v: Vec<String> = test::call_and_read_body_json($app, req).await;
        v
    }};
}

async fn twenty_parallel_attrs(mode: &str, kind: Kind) -> usize {
    let (mgr, _cluster) = manager_on(kind, |c| c.locking_mode = mode.into());
    let app = app!(mgr);
    let res = test::call_service(
        &app,
        test::TestRequest::post().uri("/attr/first").to_request(),
    )
    .await;
    let cookie = cookie_of(&res).unwrap();
    let calls = (0..20).map(|i| {
        let req = test::TestRequest::post()
            .uri(&format!("/attr/a{i}"))
            .cookie(cookie.clone())
            .to_request();
        test::call_service(&app, req)
    });
    for res in futures::future::join_all(calls).await {
        assert!(res.status().is_success());
    }
    // Let the last stores land.
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    keys!(&app, cookie)
        .iter()
        .filter(|k| k.starts_with('a'))
        .count()
}

async fn locking_all_loses_no_parallel_attribute(kind: Kind) {
    assert_eq!(twenty_parallel_attrs("all", kind).await, 20);
}

async fn locking_none_can_lose_parallel_attributes(kind: Kind) {
    // Without a lock the parallel requests overwrite each other: this is what
    // `all` prevents, and it shows the test above can fail.
    assert!(twenty_parallel_attrs("none", kind).await < 20);
}

async fn uri_pattern_locks_only_matching_requests(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |c| c.locking_mode = "uriPattern:^/attr/".into());
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    let _ = keys!(&app, cookie);
    assert_eq!(mgr.stats().locks_acquired, 0);
    let req = test::TestRequest::post()
        .uri("/attr/y")
        .cookie(cookie.clone())
        .to_request();
    test::call_service(&app, req).await;
    assert_eq!(mgr.stats().locks_acquired, 1);
}

async fn auto_mode_learns_read_only_requests_and_stops_locking_them(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |c| c.locking_mode = "auto".into());
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    for _ in 0..5 {
        let _ = keys!(&app, cookie);
    }
    let s = mgr.stats();
    // The first two reads were locked while being learnt; the rest were not.
    assert_eq!(s.locks_acquired, 2, "{s:?}");
    assert_eq!(s.lock_skipped_readonly, 3, "{s:?}");
    // Modifying requests stay locked.
    let req = test::TestRequest::post()
        .uri("/attr/y")
        .cookie(cookie.clone())
        .to_request();
    test::call_service(&app, req).await;
    assert_eq!(mgr.stats().locks_acquired, 3);
}

async fn ignored_requests_neither_load_nor_store(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |_| {});
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    let before = mgr.stats();
    let req = test::TestRequest::get()
        .uri("/static/a.css")
        .cookie(cookie.clone())
        .to_request();
    let res = test::call_service(&app, req).await;
    assert!(res.status().is_success());
    assert!(cookie_of(&res).is_none());
    let after = mgr.stats();
    assert_eq!(after.store_loads, before.store_loads);
    assert_eq!(after.backups, before.backups);
    assert_eq!(after.requests_ignored, before.requests_ignored + 1);
}

async fn an_unchanged_non_sticky_session_is_touched_once_per_quarter_interval(kind: Kind) {
    // Interval 6 s: a touch is due 1.5 s after the last write or touch
    // (memcached counts lifetimes in whole seconds, hence the margins).
    let (mgr, _cluster) = manager_on(kind, |c| c.max_inactive_interval = Duration::from_secs(6));
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    for _ in 0..3 {
        assert_eq!(keys!(&app, cookie), ["x"]);
    }
    assert_eq!(mgr.stats().touches, 0);
    actix_rt::time::sleep(Duration::from_millis(2600)).await;
    // Past a quarter: the first read touches, the next ones see the fresh
    // lifetime of the copies (before, every read past the quarter touched
    // again, as a touch does not move the stored last access).
    for _ in 0..6 {
        assert_eq!(keys!(&app, cookie), ["x"]);
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mgr.stats().touches, 1, "{:?}", mgr.stats());
    // 6.4 s after the write (the copies' first lifetime has run out), 3.7 s
    // after the touch: still there only because the touch refreshed them.
    actix_rt::time::sleep(Duration::from_millis(3700)).await;
    assert_eq!(keys!(&app, cookie), ["x"], "{:?}", mgr.stats());
    let s = mgr.stats();
    assert_eq!((s.backups, s.store_load_misses), (1, 0), "{s:?}");
}

async fn sticky_a_request_served_from_the_cache_before_a_logout_does_not_bring_it_back(kind: Kind) {
    logout_race(kind, true).await;
}

async fn a_request_that_loaded_the_session_before_a_logout_does_not_bring_it_back(kind: Kind) {
    logout_race(kind, false).await;
}

async fn logout_race(kind: Kind, sticky: bool) {
    // locking_mode none (the default): nothing serializes the two requests.
    let (mgr, _cluster) = manager_on(kind, |c| c.sticky = sticky);
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/a").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    let slow = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/slow/b")
            .cookie(cookie.clone())
            .to_request(),
    );
    let logout = async {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let req = test::TestRequest::post()
            .uri("/logout")
            .cookie(cookie.clone())
            .to_request();
        test::call_service(&app, req).await
    };
    let (slow, _) = futures::join!(slow, logout);
    // The slow request's save came after the logout: refused, cookie removed.
    let removed = cookie_of(&slow).is_some_and(|c| c.value().is_empty());
    assert!(removed, "the slow request removes the cookie");
    assert!(
        keys!(&app, cookie).is_empty(),
        "the session came back: {:?}",
        mgr.stats()
    );
    let s = mgr.stats();
    assert_eq!(
        (s.saves_refused_after_logout, s.sessions_invalidated),
        (1, 1),
        "{s:?}"
    );
}

async fn an_unchanged_session_is_not_written_again(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |_| {});
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/same").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(mgr.stats().backups, 1);
    for _ in 0..3 {
        // Sets the same value again: serialized form unchanged.
        let req = test::TestRequest::post()
            .uri("/same")
            .cookie(cookie.clone())
            .to_request();
        let res = test::call_service(&app, req).await;
        assert!(
            cookie_of(&res).is_none(),
            "no new cookie for an unchanged session"
        );
        let _ = keys!(&app, cookie);
    }
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    let s = mgr.stats();
    assert_eq!(s.backups, 1, "{s:?}");
    assert_eq!(s.unchanged_sessions_skipped, 3, "{s:?}");
}

async fn renew_gives_a_new_id_and_kills_the_old_one(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |_| {});
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let old = cookie_of(&res).unwrap();
    let req = test::TestRequest::post()
        .uri("/login")
        .cookie(old.clone())
        .to_request();
    let res = test::call_service(&app, req).await;
    let new = cookie_of(&res).unwrap();
    assert_ne!(old.value(), new.value());
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    let mut on_new = keys!(&app, new);
    on_new.sort();
    assert_eq!(on_new, ["user", "x"]);
    assert!(keys!(&app, old).is_empty(), "the pre-login id must be dead");
}

async fn invalidate_removes_the_session_and_the_cookie(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |_| {});
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    let req = test::TestRequest::post()
        .uri("/logout")
        .cookie(cookie.clone())
        .to_request();
    let res = test::call_service(&app, req).await;
    let removal = cookie_of(&res).unwrap();
    assert_eq!(removal.value(), "");
    assert!(keys!(&app, cookie).is_empty());
    assert_eq!(mgr.stats().sessions_invalidated, 1);
}

/// The in-process store with a slow `save`, to make backup timing visible.
struct SlowSaves {
    inner: MemoryStore,
    delay: Duration,
}

impl SessionBackend for SlowSaves {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn new_id(&self, route: Option<&str>) -> SessionId {
        self.inner.new_id(route)
    }
    fn load<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Loaded>> {
        self.inner.load(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a SessionId,
        record: &'a SessionRecord,
    ) -> StoreFuture<'a, SessionId> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.save(id, record).await
        })
    }
    fn touch<'a>(&'a self, id: &'a SessionId, record: &'a SessionRecord) -> StoreFuture<'a, ()> {
        self.inner.touch(id, record)
    }
    fn invalidate<'a>(
        &'a self,
        id: &'a SessionId,
        last: Option<&'a SessionRecord>,
    ) -> StoreFuture<'a, ()> {
        self.inner.invalidate(id, last)
    }
    fn try_lock<'a>(&'a self, id: &'a SessionId, exp: Duration) -> StoreFuture<'a, bool> {
        self.inner.try_lock(id, exp)
    }
    fn unlock<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        self.inner.unlock(id)
    }
}

async fn timed_write(async_backup: bool) -> (Duration, u64, SessionManager) {
    let backend = Arc::new(SlowSaves {
        inner: MemoryStore::default(),
        delay: Duration::from_millis(600),
    });
    let mgr = manager(backend, |c| {
        c.session_backup_async = async_backup;
        c.session_backup_timeout = Duration::from_millis(150);
    });
    let app = app!(mgr);
    let started = Instant::now();
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let took = started.elapsed();
    assert!(res.status().is_success());
    let backups_at_response = mgr.stats().backups;
    (took, backups_at_response, mgr)
}

#[actix_rt::test]
async fn sync_backup_waits_at_most_the_timeout_and_still_completes() {
    let (took, backups, mgr) = timed_write(false).await;
    assert!(
        took >= Duration::from_millis(150),
        "sync waits for the store: {took:?}"
    );
    assert!(
        took < Duration::from_millis(550),
        "but not past session_backup_timeout: {took:?}"
    );
    assert_eq!(backups, 0);
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        mgr.stats().backups,
        1,
        "the store finishes after the response"
    );
}

#[actix_rt::test]
async fn async_backup_responds_first_and_the_actor_stores() {
    let (took, backups, mgr) = timed_write(true).await;
    assert!(
        took < Duration::from_millis(100),
        "async does not wait: {took:?}"
    );
    assert_eq!(backups, 0);
    actix_rt::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(mgr.stats().backups, 1);
}

#[actix_rt::test]
async fn sticky_cache_is_bounded_and_evicted_sessions_come_from_the_store() {
    let store = Arc::new(MemoryStore::default());
    let mgr = manager(store.clone(), |c| {
        c.sticky = true;
        c.cache_max_entries = 100;
    });
    let app = app!(mgr);
    let mut cookies = Vec::new();
    for i in 0..1000 {
        let req = test::TestRequest::post()
            .uri(&format!("/attr/s{i}"))
            .to_request();
        let res = test::call_service(&app, req).await;
        cookies.push(cookie_of(&res).unwrap());
    }
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    assert!(
        mgr.cached_sessions() <= 100,
        "cache holds {}",
        mgr.cached_sessions()
    );
    assert!(mgr.stats().cache_evictions >= 900);
    // The oldest session was evicted from the cache but is served from the store.
    assert_eq!(keys!(&app, cookies[0]), ["s0"]);
    assert!(mgr.stats().cache_misses >= 1);
    assert_eq!(store.len(), 1000);
    let stats = mgr.stats_handle();
    assert!(stats.requests_with_session.load(Relaxed) >= 1001);
}

#[actix_rt::test]
async fn an_unchanged_sticky_session_is_kept_alive_by_touches_not_writes() {
    let store = Arc::new(MemoryStore::default());
    let mgr = manager(store.clone(), |c| {
        c.sticky = true;
        c.max_inactive_interval = Duration::from_secs(2);
    });
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    // 3 s of reads, longer than the 2 s max inactive interval.
    for _ in 0..5 {
        actix_rt::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(keys!(&app, cookie), ["x"]);
        assert_eq!(keys!(&app, cookie), ["x"]);
    }
    // The store copy outlived its 2 s interval because it was touched.
    let id = SessionId::parse(cookie.value().split_once('.').unwrap().1).unwrap();
    assert!(
        store.load(&id).await.unwrap().is_some(),
        "store copy expired"
    );
    let s = mgr.stats();
    assert_eq!(s.backups, 1, "unchanged: never rewritten: {s:?}");
    assert_eq!(
        s.touches, 5,
        "one touch per quarter interval, not per request: {s:?}"
    );
}

#[actix_rt::test]
async fn a_session_written_with_another_serializer_is_still_read() {
    let store: Arc<dyn SessionBackend> = Arc::new(MemoryStore::default());
    let json = manager(store.clone(), |c| c.serializer = "json".into());
    let bincode = manager(store, |c| c.serializer = "bincode".into());
    let (app_json, app_bincode) = (app!(json), app!(bincode));
    let res = test::call_service(
        &app_json,
        test::TestRequest::post().uri("/attr/x").to_request(),
    )
    .await;
    let cookie = cookie_of(&res).unwrap();
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    // A node configured with bincode reads the JSON copy (the record names its serializer)...
    assert_eq!(keys!(&app_bincode, cookie), ["x"]);
    // ...and keeps writing it consistently.
    let req = test::TestRequest::post()
        .uri("/attr/y")
        .cookie(cookie.clone())
        .to_request();
    test::call_service(&app_bincode, req).await;
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(keys!(&app_json, cookie), ["x", "y"]);
    assert_eq!(bincode.stats().garbage_values, 0);
}

/// Two sticky app nodes, `app1` and `app2`, over one store: a memcached
/// cluster with a store client each, as two processes would have, or one
/// shared in-process store. Keep the returned cluster alive for the test.
fn sticky_pair(
    kind: Kind,
    revalidate_app1: Duration,
    backup_async: bool,
) -> (SessionManager, SessionManager, Option<Cluster>) {
    sticky_pair_with(kind, revalidate_app1, backup_async, |_| {})
}

/// [`sticky_pair`] with `f` applied to both nodes' configuration.
fn sticky_pair_with(
    kind: Kind,
    revalidate_app1: Duration,
    backup_async: bool,
    f: impl Fn(&mut SessionConfig),
) -> (SessionManager, SessionManager, Option<Cluster>) {
    let cluster = matches!(kind, Kind::Memcached).then(|| Cluster::start(3));
    let shared: Arc<dyn SessionBackend> = Arc::new(MemoryStore::default());
    let node = |route: &str, revalidate: Duration| {
        let stats = Arc::new(Stats::default());
        let store: Arc<dyn SessionBackend> = match &cluster {
            Some(cluster) => {
                let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), "")
                    .unwrap()
                    .operation_timeout(Duration::from_millis(500));
                Arc::new(ReplicatedMemcachedStore::new(cfg, stats.clone()).unwrap())
            }
            None => shared.clone(),
        };
        let mut c = SessionConfig {
            cookie_secret: Some("x".repeat(32)),
            sticky: true,
            cache_revalidate_after: revalidate,
            session_backup_async: backup_async,
            ..Default::default()
        };
        c.max_inactive_interval = Duration::from_secs(600);
        f(&mut c);
        SessionManager::new(c.validate().unwrap(), route, store, stats)
    };
    let app1 = node("app1", revalidate_app1);
    let app2 = node("app2", Duration::from_secs(3600));
    (app1, app2, cluster)
}

macro_rules! post {
    ($app:expr, $uri:expr, $cookie:expr) => {{
        let req = test::TestRequest::post()
            .uri($uri)
            .cookie($cookie.clone())
            .to_request();
        test::call_service($app, req).await
    }};
}

/// Sticky failover and back: app1 serves a session, app2 takes it over
/// (app1 was unreachable for the balancer), changes it and logs it out. A
/// request that still names app1 (a replayed cookie, or one in flight) must
/// get what the store holds, not app1's cached copy.
async fn sticky_a_node_that_was_bypassed_serves_the_store_copy_not_its_stale_cache(kind: Kind) {
    let (app1, app2, _cluster) = sticky_pair(kind, Duration::ZERO, false);
    let (a1, a2) = (app!(app1), app!(app2));
    let res = test::call_service(&a1, test::TestRequest::post().uri("/attr/a").to_request()).await;
    let on_app1 = cookie_of(&res).unwrap();
    assert!(on_app1.value().ends_with(".app1"), "{}", on_app1.value());
    // app2 takes the session over and adds an attribute.
    let res = post!(&a2, "/attr/b", on_app1);
    let on_app2 = cookie_of(&res).expect("taken over: new cookie");
    assert!(on_app2.value().ends_with(".app2"), "{}", on_app2.value());
    assert_eq!(app2.stats().tomcat_failovers, 1);
    // app1 still caches ["a"]; it must serve the store's newer copy.
    assert_eq!(keys!(&a1, on_app1), ["a", "b"], "{:?}", app1.stats());
    assert!(app1.stats().cache_stale >= 1, "{:?}", app1.stats());
    // Logged out on app2: the old cookie is dead on app1 too.
    post!(&a2, "/logout", on_app2);
    assert!(
        keys!(&a1, on_app1).is_empty(),
        "app1 served a logged-out session from its cache: {:?}",
        app1.stats()
    );
    assert!(keys!(&a2, on_app2).is_empty());
    assert!(keys!(&a2, on_app1).is_empty());
}

/// The same story with app1 trusting its cache for an hour: within that
/// window app1 may serve its copy, but a write from it is conditional on what
/// it last wrote, so it cannot undo the logout made on app2.
async fn sticky_a_write_from_a_stale_cache_does_not_undo_a_logout_on_another_node(kind: Kind) {
    stale_write_after_logout(kind, false).await;
}

/// As above with `session_backup_async`: the persistence actor's save is
/// conditional too, and it marks the cache entry logged out when refused.
async fn sticky_async_a_write_from_a_stale_cache_does_not_undo_a_logout_on_another_node(
    kind: Kind,
) {
    stale_write_after_logout(kind, true).await;
}

async fn stale_write_after_logout(kind: Kind, backup_async: bool) {
    let (app1, app2, _cluster) = sticky_pair(kind, Duration::from_secs(3600), backup_async);
    let (a1, a2) = (app!(app1), app!(app2));
    // In async mode each write lands after its response: wait for it.
    let pause = Duration::from_millis(if backup_async { 200 } else { 0 });
    let res = test::call_service(&a1, test::TestRequest::post().uri("/attr/a").to_request()).await;
    let on_app1 = cookie_of(&res).unwrap();
    actix_rt::time::sleep(pause).await;
    // A second write on app1: its next save is conditional on this one's CAS values.
    post!(&a1, "/attr/b", on_app1);
    actix_rt::time::sleep(pause).await;
    let res = post!(&a2, "/attr/c", on_app1);
    let on_app2 = cookie_of(&res).expect("taken over: new cookie");
    actix_rt::time::sleep(pause).await;
    post!(&a2, "/logout", on_app2);
    // The replayed cookie writes on app1 (still caching ["a", "b"]).
    let res = post!(&a1, "/attr/d", on_app1);
    actix_rt::time::sleep(pause).await;
    if !backup_async {
        let removed = cookie_of(&res).is_some_and(|c| c.value().is_empty());
        assert!(removed, "app1's refused save removes the cookie");
    }
    assert_eq!(
        app1.stats().saves_refused_after_logout,
        1,
        "{:?}",
        app1.stats()
    );
    for (app, cookie) in [(&a1, &on_app1), (&a2, &on_app2), (&a2, &on_app1)] {
        assert!(
            keys!(app, cookie).is_empty(),
            "the logged-out session came back: {:?} / {:?}",
            app1.stats(),
            app2.stats()
        );
    }
}

/// memcached's own counter `name` (`stats`), summed over the cluster's nodes.
fn memcached_stat(cluster: &mut Cluster, name: &str) -> u64 {
    use std::io::{BufRead, BufReader, Write};
    let mut total = 0;
    for id in ["n1", "n2", "n3"] {
        let mut conn = std::net::TcpStream::connect(cluster.node(id).addr()).unwrap();
        conn.write_all(b"stats\r\n").unwrap();
        for line in BufReader::new(conn).lines() {
            let line = line.unwrap();
            if line == "END" {
                break;
            }
            if let Some(v) = line.strip_prefix(&format!("STAT {name} ")) {
                total += v.parse::<u64>().unwrap();
            }
        }
    }
    total
}

/// A sticky node's saves are conditional on the CAS values its own previous
/// save got back, so a logout elsewhere is noticed, and in the normal case
/// (nobody else wrote) they land at once: no conflict, no extra read.
#[actix_rt::test]
async fn sticky_saves_are_conditional_on_the_nodes_own_last_write() {
    let (app1, _app2, cluster) = sticky_pair(Kind::Memcached, Duration::from_secs(3600), false);
    let mut cluster = cluster.unwrap();
    let a1 = app!(app1);
    let res = test::call_service(&a1, test::TestRequest::post().uri("/attr/k0").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    for i in 1..10 {
        post!(&a1, &format!("/attr/k{i}"), cookie);
    }
    let s = app1.stats();
    assert_eq!((s.backups, s.store_loads), (10, 0), "{s:?}");
    // Nine conditional saves of two copies each, none of them refused.
    assert_eq!(memcached_stat(&mut cluster, "cas_hits"), 18);
    assert_eq!(memcached_stat(&mut cluster, "cas_badval"), 0);
    assert_eq!(memcached_stat(&mut cluster, "cas_misses"), 0);
}

/// A session idle for longer than its max inactive interval is gone, also on
/// a sticky node that still holds it in its cache (the cache must not keep
/// alive what the store let expire).
async fn an_idle_session_expires_after_max_inactive_interval(kind: Kind, sticky: bool) {
    let (mgr, _cluster) = manager_on(kind, |c| {
        c.sticky = sticky;
        c.max_inactive_interval = Duration::from_secs(1);
    });
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let cookie = cookie_of(&res).unwrap();
    assert_eq!(keys!(&app, cookie), ["x"]);
    // memcached counts whole seconds: 2.5 s idle is past any rounding of 1 s.
    actix_rt::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        keys!(&app, cookie).is_empty(),
        "sticky = {sticky}: still alive"
    );
    assert_eq!(mgr.stats().cache_expired, u64::from(sticky));
}

async fn sticky_an_idle_session_expires_after_max_inactive_interval(kind: Kind) {
    an_idle_session_expires_after_max_inactive_interval(kind, true).await;
}

async fn non_sticky_an_idle_session_expires_after_max_inactive_interval(kind: Kind) {
    an_idle_session_expires_after_max_inactive_interval(kind, false).await;
}

on_every_store!(
    sticky_an_idle_session_expires_after_max_inactive_interval,
    non_sticky_an_idle_session_expires_after_max_inactive_interval,
);

/// Tomcat's `setMaxInactiveInterval`: one session lives longer than the
/// configured interval, another one with the default expires; the interval is
/// kept with the session (read back on a later request, on any node).
async fn a_session_keeps_its_own_max_inactive_interval(kind: Kind, sticky: bool) {
    let (mgr, _cluster) = manager_on(kind, |c| {
        c.sticky = sticky;
        c.max_inactive_interval = Duration::from_secs(1);
    });
    let app = app!(mgr);
    let post = |uri: &str, cookie: Option<&Cookie<'static>>| {
        let mut r = test::TestRequest::post().uri(uri);
        if let Some(c) = cookie {
            r = r.cookie(c.clone());
        }
        r.to_request()
    };
    let long = cookie_of(&test::call_service(&app, post("/attr/long", None)).await).unwrap();
    let short = cookie_of(&test::call_service(&app, post("/attr/short", None)).await).unwrap();
    let res = test::call_service(&app, post("/interval/60", Some(&long))).await;
    assert!(res.status().is_success());
    let secs = |c: &Cookie<'static>| {
        test::TestRequest::get()
            .uri("/interval")
            .cookie(c.clone())
            .to_request()
    };
    let s: u64 = test::call_and_read_body_json(&app, secs(&long)).await;
    assert_eq!(s, 60);
    let s: u64 = test::call_and_read_body_json(&app, secs(&short)).await;
    assert_eq!(s, 1);
    actix_rt::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(keys!(&app, long), ["long"], "sticky = {sticky}");
    assert!(keys!(&app, short).is_empty(), "sticky = {sticky}");
    // A change of the interval alone is written (and nothing else changed).
    let backups = mgr.stats().backups;
    test::call_service(&app, post("/interval/120", Some(&long))).await;
    assert_eq!(mgr.stats().backups, backups + 1);
    test::call_service(&app, post("/interval/120", Some(&long))).await;
    assert_eq!(mgr.stats().backups, backups + 1, "same interval: no write");
}

async fn sticky_a_session_keeps_its_own_max_inactive_interval(kind: Kind) {
    a_session_keeps_its_own_max_inactive_interval(kind, true).await;
}

async fn non_sticky_a_session_keeps_its_own_max_inactive_interval(kind: Kind) {
    a_session_keeps_its_own_max_inactive_interval(kind, false).await;
}

on_every_store!(
    sticky_a_session_keeps_its_own_max_inactive_interval,
    non_sticky_a_session_keeps_its_own_max_inactive_interval,
);

/// `cookie_path`, `cookie_domain`, `cookie_same_site`: on the cookie that
/// starts the session and on the one that removes it (a removal with another
/// Path or Domain would leave the browser's cookie in place).
#[actix_rt::test]
async fn cookie_attributes_are_configurable_and_kept_on_removal() {
    let (mgr, _) = manager_on(Kind::Memory, |c| {
        c.cookie_path = "/shop".into();
        c.cookie_domain = ".example.com".into();
        c.cookie_same_site = "strict".into();
    });
    let app = app!(mgr);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/x").to_request()).await;
    let c = cookie_of(&res).unwrap();
    assert_eq!(c.path(), Some("/shop"));
    assert_eq!(c.domain(), Some("example.com"));
    assert_eq!(c.same_site(), Some(actix_web::cookie::SameSite::Strict));
    assert_eq!(c.http_only(), Some(true));
    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/logout")
            .cookie(c.clone())
            .to_request(),
    )
    .await;
    let gone = cookie_of(&res).unwrap();
    assert_eq!(gone.value(), "");
    assert_eq!(
        gone.max_age(),
        Some(actix_web::cookie::time::Duration::ZERO)
    );
    assert_eq!(gone.path(), Some("/shop"));
    assert_eq!(gone.domain(), Some("example.com"));
}

/// A sticky node that takes over a session written long ago but kept alive by
/// touches since (a read-mostly session) caches it as alive: its cache does
/// not count the session as expired from its last write.
#[actix_rt::test]
async fn sticky_takeover_of_a_touched_session_is_not_taken_for_expired() {
    let cluster = Cluster::start(2);
    let node = |route: &str| {
        let stats = Arc::new(Stats::default());
        let cfg = MemcachedStoreConfig::from_msm(&cluster.memcached_nodes(), "")
            .unwrap()
            .operation_timeout(Duration::from_millis(500));
        let store = Arc::new(ReplicatedMemcachedStore::new(cfg, stats.clone()).unwrap());
        let c = SessionConfig {
            cookie_secret: Some("x".repeat(32)),
            sticky: true,
            max_inactive_interval: Duration::from_secs(2),
            ..Default::default()
        };
        SessionManager::new(c.validate().unwrap(), route, store, stats)
    };
    let (app1, app2) = (node("app1"), node("app2"));
    let (a1, a2) = (app!(app1), app!(app2));
    let res = test::call_service(&a1, test::TestRequest::post().uri("/attr/a").to_request()).await;
    let on_app1 = cookie_of(&res).unwrap();
    // 3 s of reads on app1, past the 2 s interval: kept alive by touches, never rewritten.
    for _ in 0..10 {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(keys!(&a1, on_app1), ["a"]);
    }
    assert_eq!(app1.stats().backups, 1);
    // app2 takes it over (app1 went away), then serves it from its cache.
    let res = test::call_service(
        &a2,
        test::TestRequest::get()
            .uri("/read")
            .cookie(on_app1.clone())
            .to_request(),
    )
    .await;
    let on_app2 = cookie_of(&res).expect("taken over: new cookie");
    assert_eq!(keys!(&a2, on_app2), ["a"]);
    assert_eq!(keys!(&a2, on_app2), ["a"]);
    let s = app2.stats();
    assert_eq!(s.cache_expired, 0, "{s:?}");
    assert_eq!(s.tomcat_failovers, 1, "{s:?}");
}

/// msm's `sessionAttributeFilter`, non-sticky: an attribute whose name the
/// filter does not match is not stored, so the next request (which loads the
/// session) does not have it, and changing only such attributes writes nothing.
async fn non_sticky_only_the_attributes_the_filter_keeps_are_stored(kind: Kind) {
    let (mgr, _cluster) = manager_on(kind, |c| c.session_attribute_filter = "user|cart".into());
    let app = app!(mgr);
    let res = test::call_service(
        &app,
        test::TestRequest::post().uri("/attr/user").to_request(),
    )
    .await;
    let cookie = cookie_of(&res).unwrap();
    assert_eq!(mgr.stats().backups, 1);
    // Not matched as a whole name: "username" and "scratch" stay out of the store.
    for name in ["scratch", "username"] {
        let res = post!(&app, &format!("/attr/{name}"), cookie);
        assert!(res.status().is_success());
        assert!(cookie_of(&res).is_none(), "same session, no new cookie");
    }
    let s = mgr.stats();
    assert_eq!(
        (s.backups, s.unchanged_sessions_skipped),
        (1, 2),
        "only filtered-out attributes changed: nothing written ({s:?})"
    );
    assert_eq!(keys!(&app, cookie), ["user"]);
    post!(&app, "/attr/cart", cookie);
    assert_eq!(mgr.stats().backups, 2);
    assert_eq!(keys!(&app, cookie), ["cart", "user"]);
}

/// Sticky with `session_attribute_filter`: the node that serves the session
/// keeps every attribute in its cache (also across its revalidations against
/// the store), the store gets the filtered ones, and a node that takes the
/// session over gets those.
async fn sticky_the_cache_keeps_every_attribute_the_store_the_filtered_ones(kind: Kind) {
    let (app1, app2, _cluster) = sticky_pair_with(kind, Duration::ZERO, false, |c| {
        c.session_attribute_filter = "user|v".into();
    });
    let (a1, a2) = (app!(app1), app!(app2));
    let res = test::call_service(
        &a1,
        test::TestRequest::post().uri("/attr/user").to_request(),
    )
    .await;
    let on_app1 = cookie_of(&res).unwrap();
    assert_eq!(app1.stats().backups, 1);
    post!(&a1, "/attr/scratch", on_app1);
    let s = app1.stats();
    assert_eq!(
        (s.backups, s.unchanged_sessions_skipped),
        (1, 1),
        "a filtered-out attribute is not written ({s:?})"
    );
    // Revalidated before every request (cache_revalidate_after = 0): the store's copy is the
    // same version, so the cached one (with every attribute) is served.
    assert_eq!(
        keys!(&a1, on_app1),
        ["scratch", "user"],
        "{:?}",
        app1.stats()
    );
    assert_eq!(keys!(&a1, on_app1), ["scratch", "user"]);
    assert_eq!(app1.stats().cache_stale, 0, "{:?}", app1.stats());
    // A stored attribute is added: written (filtered), the cache keeps all three.
    post!(&a1, "/same", on_app1);
    assert_eq!(app1.stats().backups, 2, "{:?}", app1.stats());
    assert_eq!(keys!(&a1, on_app1), ["scratch", "user", "v"]);
    assert_eq!(app1.stats().cache_stale, 0, "{:?}", app1.stats());
    // Removing the filtered-out attribute again writes nothing and sticks in the cache.
    post!(&a1, "/remove/scratch", on_app1);
    assert_eq!(keys!(&a1, on_app1), ["user", "v"], "{:?}", app1.stats());
    assert_eq!(app1.stats().backups, 2, "{:?}", app1.stats());
    post!(&a1, "/attr/scratch", on_app1);
    assert_eq!(keys!(&a1, on_app1), ["scratch", "user", "v"]);
    // app2 takes the session over from the store: the filtered attributes only.
    let req = test::TestRequest::get()
        .uri("/read")
        .cookie(on_app1.clone())
        .to_request();
    let res = test::call_service(&a2, req).await;
    let on_app2 = cookie_of(&res).expect("taken over: new cookie");
    assert!(on_app2.value().ends_with(".app2"), "{}", on_app2.value());
    let body: Vec<String> = test::read_body_json(res).await;
    assert_eq!(body, ["user", "v"]);
}

#[actix_rt::test]
async fn a_rotated_cookie_secret_logs_nobody_out() {
    let store: Arc<dyn SessionBackend> = Arc::new(MemoryStore::default());
    let before = manager(store.clone(), |c| c.cookie_secret = Some("x".repeat(32)));
    let app = app!(before);
    let res = test::call_service(&app, test::TestRequest::post().uri("/attr/a").to_request()).await;
    let old = cookie_of(&res).unwrap();
    actix_rt::time::sleep(Duration::from_millis(20)).await;

    // The nodes get the new secret, with the old one as `cookie_secret_previous`.
    let rotated = manager(store.clone(), |c| {
        c.cookie_secret = Some("y".repeat(32));
        c.cookie_secret_previous = Some("x".repeat(32));
    });
    let app = app!(rotated);
    let req = test::TestRequest::get()
        .uri("/read")
        .cookie(old.clone())
        .to_request();
    let res = test::call_service(&app, req).await;
    let new = cookie_of(&res).expect("the old cookie is signed again with the new secret");
    let v: Vec<String> = test::read_body_json(res).await;
    assert_eq!(v, ["a"], "still logged in");
    let id = |c: &Cookie<'_>| c.value().split_once('.').unwrap().1.to_owned();
    assert_eq!(id(&new), id(&old), "same session");
    assert_ne!(new.value(), old.value());
    // The new cookie needs no more re-signing.
    let req = test::TestRequest::get()
        .uri("/read")
        .cookie(new.clone())
        .to_request();
    let res = test::call_service(&app, req).await;
    assert!(cookie_of(&res).is_none());
    assert_eq!(rotated.stats().invalid_cookies, 0);

    // Once the previous secret is dropped, a cookie signed with it is refused.
    let after = manager(store, |c| c.cookie_secret = Some("y".repeat(32)));
    let app = app!(after);
    assert!(
        keys!(&app, old).is_empty(),
        "the old signature is no longer accepted"
    );
    assert_eq!(keys!(&app, new), ["a"]);
    assert_eq!(after.stats().invalid_cookies, 1);

    // Config errors name the key.
    for f in [
        (|c: &mut SessionConfig| c.cookie_secret_previous = Some("short".into()))
            as fn(&mut SessionConfig),
        |c| {
            c.cookie_secret = None;
            c.cookie_secret_previous = Some("x".repeat(32));
        },
    ] {
        let mut cfg = SessionConfig {
            cookie_secret: Some("y".repeat(32)),
            ..Default::default()
        };
        f(&mut cfg);
        assert_eq!(
            cfg.validate().unwrap_err().key,
            "session.cookie_secret_previous"
        );
    }
}
