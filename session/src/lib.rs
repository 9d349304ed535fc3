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
