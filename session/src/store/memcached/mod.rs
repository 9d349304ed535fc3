//! The replicated memcached store: every session on two named nodes.
//!
//! Components and data flow:
//!
//! * [`config`]: msm's `memcached_nodes` / `failover_nodes` parsed and
//!   validated into a [`MemcachedStoreConfig`].
//! * `placement`: primary = the node named in the id; backup and relocation
//!   target = rendezvous hashing over the other usable nodes.
//! * `health`: an actix actor owning per-node state (up / warming / down),
//!   fed by failure reports from the request path, probing nodes, and
//!   publishing a [`HealthSnapshot`] (`ArcSwap`) read lock-free by requests.
//! * `replicated`: `load`: both copies read concurrently, the newer wins,
//!   stale/missing copies repaired, failover and relocation.
//! * `write`: `save`, `touch`, `invalidate` (tombstones), locks.
//! * `warmup`: a node that returns is brought up to date from the others
//!   (key enumeration with `lru_crawler metadump`), no user traffic needed.
//! * `degraded`: every node down -> sessions kept in this process's memory,
//!   flushed to memcached when a node returns.
//!
//! Every memcached operation is bounded by `operation_timeout`, so a frozen
//! node costs a request about that long, until the health actor marks it
//! down and requests stop waiting for it.
//!
//! Statistics bumped here: `memcached_failovers` (served from a backup, or
//! relocated), `repairs`, `warmup_copied`, `garbage_values`,
//! `degraded_operations`, and `backup_failures` for a save whose backup copy
//! found no node (or that had to be parked in memory). The session manager
//! counts `store_loads`, `store_load_misses` and `backups` itself, so the
//! store does not, to avoid counting twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferrocat_session::stats::Stats;
//! use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
//!
//! // inside an actix System (e.g. `#[actix_web::main]`)
//! let cfg = MemcachedStoreConfig::from_msm("n1:127.0.0.1:11211 n2:127.0.0.1:11212", "")?;
//! let store = Arc::new(ReplicatedMemcachedStore::new(cfg, Arc::new(Stats::default()))?);
//! # Ok(()) }
//! ```

pub mod config;
mod degraded;
pub mod health;
mod inner;
mod placement;
mod replicated;
mod warmup;
mod write;

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, System};
use ferrocat_memcached::{ClientOptions, NodeClient};

pub use self::config::{
    check_key_prefix, parse_memcached_nodes, MemcachedStoreConfig, NodeSpec, MAX_KEY_PREFIX_LEN,
};
pub use self::health::{HealthSnapshot, NodeHealth, NodeState};
pub use self::write::TOMBSTONE_VERSION;

use self::health::HealthActor;
use self::inner::Core;
use super::{Loaded, Revalidated, Seen, SessionBackend, StoreFuture};
use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::stats::Stats;

/// Why the store could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemcachedStoreError {
    /// The configuration is inconsistent; the message names the field.
    #[error("invalid memcached store configuration: {0}")]
    Config(String),
    /// The health actor needs an actix System on the calling thread.
    #[error("the memcached store must be created inside an actix System (e.g. under #[actix_web::main])")]
    NoActixSystem,
    /// The health actor's thread could not be started.
    #[error("cannot start the memcached health arbiter: {0}")]
    Arbiter(#[from] std::io::Error),
}

/// Where a session's copies belong right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyNodes {
    /// The node named in the id.
    pub primary: Option<String>,
    /// The first usable rendezvous node other than the primary.
    pub backup: Option<String>,
}

/// Sessions on named memcached nodes, each with a backup copy; see the
/// module docs. Shared by all actix workers (`Send + Sync`).
pub struct ReplicatedMemcachedStore {
    core: Arc<Core>,
    _health: Addr<HealthActor>,
    /// The health actor's own thread; stopped when the store is dropped.
    arbiter: Arbiter,
}

impl std::fmt::Debug for ReplicatedMemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedMemcachedStore")
            .field("nodes", &self.core.cfg.nodes)
            .finish_non_exhaustive()
    }
}

impl ReplicatedMemcachedStore {
    /// Validates `cfg`, creates one lazily connecting client per node and
    /// starts the health actor on its own arbiter. Must be called inside an
    /// actix System; the counters go to `stats`.
    pub fn new(cfg: MemcachedStoreConfig, stats: Arc<Stats>) -> Result<Self, MemcachedStoreError> {
        cfg.validate().map_err(MemcachedStoreError::Config)?;
        if System::try_current().is_none() {
            return Err(MemcachedStoreError::NoActixSystem);
        }
        let mut opts = ClientOptions::default()
            .connections(cfg.connections_per_node)
            .operation_timeout(cfg.operation_timeout)
            .connect_timeout(cfg.operation_timeout)
            .credentials(cfg.credentials.clone());
        opts.metadump_timeout = cfg.warmup_timeout;
        let clients = cfg
            .nodes
            .iter()
            .map(|n| NodeClient::new(n.addr, opts.clone()))
            .collect();
        let core = Arc::new(Core::new(cfg, clients, stats));
        let arbiter = Arbiter::try_new()?;
        let for_actor = core.clone();
        let addr =
            HealthActor::start_in_arbiter(&arbiter.handle(), move |_| HealthActor::new(for_actor));
        let _ = core.reporter.set(addr.clone());
        log::info!(
            "memcached session store: nodes {}",
            core.cfg
                .nodes
                .iter()
                .map(|n| format!("{}={}", n.id, n.addr))
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(ReplicatedMemcachedStore {
            core,
            _health: addr,
            arbiter,
        })
    }

    /// Node health as last published by the health actor.
    pub fn health(&self) -> Arc<HealthSnapshot> {
        self.core.health.load_full()
    }

    /// The configuration in force.
    pub fn config(&self) -> &MemcachedStoreConfig {
        &self.core.cfg
    }

    /// Where `id`'s primary and backup copies belong with the current health.
    pub fn copy_nodes(&self, id: &SessionId) -> CopyNodes {
        let snap = self.core.health.load();
        let p = id.node().and_then(|n| self.core.placement.index(n));
        let exclude: Vec<usize> = p.into_iter().collect();
        CopyNodes {
            primary: id.node().map(str::to_owned),
            backup: self
                .core
                .placement
                .first_usable(id.random(), &exclude, |i| snap.usable(i))
                .map(|b| self.core.node_id(b).to_owned()),
        }
    }

    /// True while every node is down (sessions live in this process only).
    pub fn is_degraded(&self) -> bool {
        self.core.health.load().all_down()
    }

    /// Sessions held in memory waiting for a memcached node.
    pub fn degraded_pending(&self) -> usize {
        self.core.degraded.pending()
    }

    /// The operation bound in force.
    pub fn operation_timeout(&self) -> Duration {
        self.core.cfg.operation_timeout
    }
}

impl Drop for ReplicatedMemcachedStore {
    fn drop(&mut self) {
        self.arbiter.stop();
    }
}

impl SessionBackend for ReplicatedMemcachedStore {
    fn name(&self) -> &'static str {
        self::inner::BACKEND
    }

    fn new_id(&self, route: Option<&str>) -> SessionId {
        self.core.new_id(route)
    }

    fn load<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Loaded>> {
        Box::pin(self.core.load(id))
    }

    fn save<'a>(
        &'a self,
        id: &'a SessionId,
        record: &'a SessionRecord,
    ) -> StoreFuture<'a, SessionId> {
        Box::pin(self.core.save(id, record))
    }

    fn save_seen<'a>(
        &'a self,
        id: &'a SessionId,
        record: &'a SessionRecord,
        seen: &'a mut Seen,
    ) -> StoreFuture<'a, SessionId> {
        Box::pin(self.core.save_seen(id, record, seen))
    }

    fn revalidate<'a>(
        &'a self,
        id: &'a SessionId,
        cached: &'a SessionRecord,
    ) -> StoreFuture<'a, Revalidated> {
        Box::pin(self.core.revalidate(id, cached))
    }

    fn touch<'a>(&'a self, id: &'a SessionId, record: &'a SessionRecord) -> StoreFuture<'a, ()> {
        Box::pin(self.core.touch(id, record))
    }

    fn invalidate<'a>(
        &'a self,
        id: &'a SessionId,
        last: Option<&'a SessionRecord>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.core.invalidate(id, last))
    }

    fn try_lock<'a>(&'a self, id: &'a SessionId, expiration: Duration) -> StoreFuture<'a, bool> {
        Box::pin(self.core.try_lock(id, expiration))
    }

    fn unlock<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(self.core.unlock(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request path's futures are boxed once per call (the `SessionBackend` trait):
    /// their size is copied into a fresh heap block on every request, so the rare paths
    /// (failover, relocation, degraded mode) are boxed separately and the common path's
    /// future stays small.
    #[test]
    fn request_path_futures_stay_small() {
        let cfg =
            MemcachedStoreConfig::from_msm("n1:127.0.0.1:1 n2:127.0.0.1:2", "").expect("node list");
        let clients = cfg
            .nodes
            .iter()
            .map(|n| NodeClient::new(n.addr, ClientOptions::default()))
            .collect();
        let core = Core::new(cfg, clients, Arc::new(Stats::default()));
        let id = SessionId::generate(Some("n1"), Some("app1"));
        let rec = SessionRecord::new_live(1, 60, vec![1, 2, 3]);
        let load = std::mem::size_of_val(&core.load(&id));
        let save = std::mem::size_of_val(&core.save(&id, &rec));
        let touch = std::mem::size_of_val(&core.touch(&id, &rec));
        let key = ferrocat_memcached::Key::new("k").expect("key");
        eprintln!(
            "future sizes: load {load} B, save {save} B, touch {touch} B, read {} B, write {} B, get {} B, set {} B, save_to_nodes {} B",
            std::mem::size_of_val(&core.read_fast(0, "k")),
            std::mem::size_of_val(&core.write(0, "k", &rec, ferrocat_memcached::SetMode::Set)),
            std::mem::size_of_val(&core.clients[0].get(&key)),
            std::mem::size_of_val(&core.clients[0].set(&key, b"v", 0, 0, ferrocat_memcached::SetMode::Set)),
            std::mem::size_of_val(&core.save_to_nodes(&id, &rec)),
        );
        assert!(load <= 1024, "load future is {load} bytes");
        assert!(save <= 1024, "save future is {save} bytes");
    }
}
