//! ferrocat's session manager: msm's behaviour for actix-web apps.
//!
//! Components and data flow:
//!
//! ```text
//!  request ──> SessionMiddleware ── cookie ─> cookie::CookieSigner (verify "<sig>.<id>")
//!                 │  lock (manager::locking: in-process mutex + store lock)
//!                 │  load (sticky: cache::SessionCache, else/then store::SessionBackend)
//!                 ▼
//!              handler uses manager::Session (get/insert/renew/invalidate)
//!                 │
//!                 ▼  serialize (serializer) -> record (header + payload)
//!              unchanged? touch : save (sync: wait <= session_backup_timeout;
//!                                       async: manager::persist::Persister actor)
//!              Set-Cookie when the id is new, renewed, relocated or taken over
//! ```
//!
//! * [`id`]: session ids `<random>-<node>[.<route>]`.
//! * [`record`]: the stored form (versioned header + payload).
//! * [`serializer`]: pluggable attribute serializers.
//! * [`store`]: the [`store::SessionBackend`] trait and its backends
//!   (in-process, replicated memcached).
//! * [`manager`]: the middleware, the [`Session`] extractor, locking, persistence.
//! * [`config`]: the `[session]` config section.
//! * [`stats`]: msm-like statistics.
//!
//! Two rules that hold without locking (`locking_mode = none`), across app nodes:
//! * A logout stands. Invalidation writes tombstones instead of deleting; the
//!   load remembers what it read of each copy ([`store::Seen`]: memcached CAS
//!   values) and the save writes those copies only if they did not change, so
//!   a request that loaded the session before another request (or app node)
//!   logged it out cannot write it back: its save is refused
//!   ([`store::StoreError::Invalidated`], `saves_refused_after_logout`) and its
//!   response removes the cookie. Live writes racing each other still land
//!   (last write wins, as in msm). In sticky mode the cache keeps, with each
//!   session, the CAS values its own last save got back (`ms ... c`), so its
//!   next save is conditional in the same way: a node that was bypassed while
//!   another app node took the session over and logged it out cannot write it
//!   back from its cache. Within one node the save and the invalidation take
//!   the session's in-process lock and the logout leaves a marker in the cache.
//! * A sticky node does not serve an outdated cached copy for long: a cached
//!   session the store has not confirmed for `cache_revalidate_after`
//!   (default 1 s; a load, a revalidation or a conditional save that landed
//!   confirms it) is read from the store before it is served. A newer copy
//!   (another node changed it) replaces the cached one, a tombstone ends it;
//!   when the store cannot tell (no node answers, or no copy left), the
//!   cached copy is served, so a memcached outage logs nobody out.
//!   A change kept in memory while no memcached node answered (degraded mode)
//!   does not outlive a logout made meanwhile on another app node: once the
//!   nodes answer, a load that finds the tombstone drops the kept copy, and so
//!   does the flush. (While this node still reaches no node at all, it serves
//!   its kept copy: it cannot know of the logout.)
//! * An unchanged session is refreshed, not rewritten, once per quarter of its
//!   max inactive interval: the load reads the copies' remaining lifetime.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actix_store;
pub mod cache;
pub mod config;
pub mod cookie;
pub mod id;
pub mod manager;
pub mod record;
pub mod serializer;
pub mod stats;
pub mod store;

pub use config::{SessionConfig, SessionSettings};
pub use id::SessionId;
pub use manager::{Session, SessionError, SessionManager, SessionMiddleware};
pub use record::SessionRecord;
pub use stats::{Stats, StatsSnapshot};
pub use store::{Loaded, Seen, SessionBackend, StoreError};
