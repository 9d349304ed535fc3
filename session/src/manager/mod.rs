//! The session manager: msm's behaviour behind one session API.
//!
//! * [`SessionManager`]: shared state (settings, backend, cookie signer,
//!   statistics, the sticky cache, locks); cheap to clone (`Arc`).
//! * [`middleware::SessionMiddleware`]: per request: skip ignored URIs, verify
//!   the cookie, lock, load, run the handler, persist, set the cookie, unlock.
//! * [`session::Session`]: the extractor handlers use.
//! * [`persist::Persister`]: the actor that stores sessions when
//!   `session_backup_async = true` (the response goes first).
//! * [`locking`]: locking modes, the read-only learner, in-process locks.

pub mod locking;
pub mod middleware;
pub mod persist;
pub mod request;
pub mod session;

use std::sync::Arc;

use actix::Actor;

use crate::cache::SessionCache;
use crate::config::SessionSettings;
use crate::cookie::CookieSigner;
use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::SessionBackend;

pub use middleware::SessionMiddleware;
pub use session::{Session, SessionError};

/// A session held in the sticky node's cache.
#[derive(Debug, Clone)]
pub struct CachedSession {
    /// Its current id.
    pub id: SessionId,
    /// The last stored record (payload = serialized attributes).
    pub record: SessionRecord,
    /// Hash of the payload.
    pub hash: u64,
    /// What the store held when this node last read or wrote the session
    /// (for memcached: CAS values), so the next save is conditional.
    pub seen: crate::store::Seen,
    /// When the store last confirmed this copy (unix ms): a load, a
    /// revalidation, or a conditional write that landed.
    pub confirmed_ms: u64,
}

/// The sticky cache as the manager and the persistence actor share it.
pub(crate) type Cache = Arc<SessionCache<Arc<CachedSession>>>;

/// After a save of `record` under `id` landed: the cache entry, if it still
/// holds that record, learns what was written and, when `confirmed`, that
/// the store held it now.
pub(crate) fn note_saved(
    cache: &Cache,
    id: &SessionId,
    record: &SessionRecord,
    written: crate::store::Seen,
    confirmed: bool,
) {
    let key = id.key();
    let Some(entry) = cache.get(&key) else { return };
    let holds = |e: &Arc<CachedSession>| {
        e.record.version == record.version
            && e.record.last_access_ms == record.last_access_ms
            && e.record.is_live()
    };
    if !holds(&entry) {
        return; // a newer request's copy, or a logout marker: leave it
    }
    let size = entry.record.payload.len() + 128;
    let updated = Arc::new(CachedSession {
        id: entry.id.clone(),
        record: entry.record.clone(),
        hash: entry.hash,
        seen: written,
        confirmed_ms: if confirmed {
            crate::record::now_ms()
        } else {
            entry.confirmed_ms
        },
    });
    cache.replace_if(key, updated, size, holds);
}

/// After a save of `record` under `id` was refused because the session was
/// logged out (possibly on another app node): the cache entry, if it still
/// holds that record, becomes a logout marker, so this node stops serving it
/// (also when the refusal came after the response, in async mode).
pub(crate) fn note_refused(cache: &Cache, id: &SessionId, record: &SessionRecord) {
    let marker = Arc::new(CachedSession {
        id: id.clone(),
        record: record.tombstone(),
        hash: 0,
        seen: crate::store::Seen::default(),
        confirmed_ms: crate::record::now_ms(),
    });
    cache.replace_if(id.key(), marker, 128, |e| {
        e.record.version == record.version && e.record.last_access_ms == record.last_access_ms
    });
}

pub(crate) struct Inner {
    pub settings: SessionSettings,
    /// This app node's route (Tomcat's jvmRoute), written into every id.
    pub route: String,
    pub backend: Arc<dyn SessionBackend>,
    pub signer: CookieSigner,
    pub stats: Arc<Stats>,
    pub cache: Option<Cache>,
    pub local_locks: locking::LocalLocks,
    pub learner: locking::ReadOnlyLearner,
    pub persister: Option<actix::Addr<persist::Persister>>,
    /// Session writes in flight past their response ([`PendingWrite`]).
    pub pending: Arc<std::sync::atomic::AtomicUsize>,
}

/// Shared session manager; clone it into each worker's middleware.
#[derive(Clone)]
pub struct SessionManager(pub(crate) Arc<Inner>);

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("route", &self.0.route)
            .field("backend", &self.0.backend.name())
            .field("sticky", &self.0.settings.sticky)
            .finish()
    }
}

impl SessionManager {
    /// A manager for the app node `route` over `backend`.
    ///
    /// Must be called inside a running actix `System` when
    /// `session_backup_async` is on (it starts the persistence actor).
    pub fn new(
        settings: SessionSettings,
        route: &str,
        backend: Arc<dyn SessionBackend>,
        stats: Arc<Stats>,
    ) -> Self {
        let signer = match &settings.cookie_secret {
            Some(secret) => match &settings.cookie_secret_previous {
                Some(previous) => CookieSigner::new(secret).with_previous(previous),
                None => CookieSigner::new(secret),
            },
            None => {
                log::warn!(
                    "session.cookie_secret is not set: using a random per-process secret. \
                     Sessions will not survive a restart and cannot move between app nodes; \
                     set the same cookie_secret on every node of a cluster."
                );
                CookieSigner::random()
            }
        };
        let cache: Option<Cache> = settings.sticky.then(|| {
            Arc::new(SessionCache::new(
                settings.cache_max_entries,
                settings.cache_max_bytes,
            ))
        });
        let persister = settings.backup_async.then(|| {
            persist::Persister::new(backend.clone(), stats.clone(), cache.clone()).start()
        });
        SessionManager(Arc::new(Inner {
            settings,
            route: route.to_owned(),
            backend,
            signer,
            stats,
            cache,
            local_locks: Default::default(),
            pending: Default::default(),
            learner: Default::default(),
            persister,
        }))
    }

    /// The middleware to wrap an actix-web `App` with.
    pub fn middleware(&self) -> SessionMiddleware {
        SessionMiddleware::new(self.clone())
    }

    /// Current statistics.
    pub fn stats(&self) -> StatsSnapshot {
        self.0.stats.snapshot()
    }

    /// The shared statistics (backends count into the same object).
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.0.stats.clone()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.0.backend.name()
    }

    /// Sessions held in the sticky cache (0 when not sticky).
    pub fn cached_sessions(&self) -> usize {
        self.0.cache.as_ref().map_or(0, |c| c.len())
    }

    /// Session writes still running after their response left: async
    /// backups, sync writes that outlived `session_backup_timeout`, and the
    /// invalidation of a renewed session's old id.
    pub fn pending_writes(&self) -> usize {
        self.0.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until [`pending_writes`](Self::pending_writes) is zero, at most
    /// `limit`, and returns what is still running then. For a graceful
    /// shutdown: call it after the HTTP server stopped and before the actix
    /// `System` ends, so no change a response already confirmed is lost.
    pub async fn drain(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.pending_writes();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// One session write in flight, counted in `Inner::pending` until dropped.
#[derive(Debug)]
pub(crate) struct PendingWrite(Arc<std::sync::atomic::AtomicUsize>);

impl PendingWrite {
    pub(crate) fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        PendingWrite(count.clone())
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Runs `fut` to completion apart from the request: on the actix `System`'s
/// own arbiter when there is one (it outlives the HTTP workers, so a
/// graceful shutdown can wait for it, see [`SessionManager::drain`]), else
/// on the current tokio runtime.
pub(crate) fn spawn_detached(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Some(system) = actix::System::try_current() {
        system.arbiter().spawn(fut);
    } else if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(fut);
    } else {
        log::warn!("no runtime to finish a session write on; it is dropped");
    }
}
