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
}

pub(crate) struct Inner {
    pub settings: SessionSettings,
    /// This app node's route (Tomcat's jvmRoute), written into every id.
    pub route: String,
    pub backend: Arc<dyn SessionBackend>,
    pub signer: CookieSigner,
    pub stats: Arc<Stats>,
    pub cache: Option<SessionCache<Arc<CachedSession>>>,
    pub local_locks: locking::LocalLocks,
    pub learner: locking::ReadOnlyLearner,
    pub persister: Option<actix::Addr<persist::Persister>>,
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
            Some(secret) => CookieSigner::new(secret),
            None => {
                log::warn!(
                    "session.cookie_secret is not set: using a random per-process secret. \
                     Sessions will not survive a restart and cannot move between app nodes; \
                     set the same cookie_secret on every node of a cluster."
                );
                CookieSigner::random()
            }
        };
        let cache = settings
            .sticky
            .then(|| SessionCache::new(settings.cache_max_entries, settings.cache_max_bytes));
        let persister = settings
            .backup_async
            .then(|| persist::Persister::new(backend.clone(), stats.clone()).start());
        SessionManager(Arc::new(Inner {
            settings,
            route: route.to_owned(),
            backend,
            signer,
            stats,
            cache,
            local_locks: Default::default(),
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
        self.0.cache.as_ref().map_or(0, SessionCache::len)
    }
}
