//! The shared inner state of the store and its memcached primitives.
//!
//! [`Core`] is shared (`Arc`) by every actix worker and by the health actor.
//! Each primitive here does one operation on one node, bounded by
//! `operation_timeout`, decodes what came back (garbage is counted and
//! becomes [`Stored::Garbage`]), and feeds the node's health: a success
//! clears its consecutive-failure counter (one atomic store, only when it was
//! set), a failure bumps it and tells the health actor by `do_send`, and
//! the node's next operations get a shorter time limit until it answers. The
//! request path reads node health from the published [`HealthSnapshot`]
//! without locks.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::Addr;
use arc_swap::ArcSwap;
use ferrocat_memcached::{DumpedKey, Key, McError, NodeClient, SetMode, StoreStatus};

use super::config::MemcachedStoreConfig;
use super::degraded::Degraded;
use super::health::{HealthActor, HealthSnapshot, NodeFailed};
use super::placement::Placement;
use crate::record::SessionRecord;
use crate::stats::Stats;
use crate::store::StoreError;

/// Backend name in errors and logs.
pub(crate) const BACKEND: &str = "memcached";
/// Key of the warm-up sentinel: present on a node that holds its share of
/// sessions; missing on a node that restarted empty.
pub(crate) const SENTINEL_KEY: &str = "ferrocat:warm";
/// Shortest time limit for an operation on a suspect node.
const SUSPECT_MIN_TIMEOUT: Duration = Duration::from_millis(20);
/// memcached reads an expiry above 30 days as an absolute Unix time.
const MAX_RELATIVE_TTL: u32 = 30 * 24 * 3600;

/// The backup copy's key.
pub(crate) fn backup_key(key: &str) -> String {
    format!("bak:{key}")
}

/// The lock's key.
pub(crate) fn lock_key(key: &str) -> String {
    format!("lock:{key}")
}

/// memcached expiry for an interval in seconds (0 = never).
pub(crate) fn ttl_for(secs: u32) -> u32 {
    if secs <= MAX_RELATIVE_TTL {
        return secs;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(now + u64::from(secs)).unwrap_or(u32::MAX)
}

/// One stored copy as read from a node.
#[derive(Debug, Clone)]
pub(crate) enum Stored {
    /// The node has no such key (expired, evicted, or restarted empty).
    Missing,
    /// The value could not be decoded (counted in `garbage_values`).
    Garbage {
        /// CAS token, so a repair can replace exactly this value.
        cas: u64,
    },
    /// A decoded record.
    Record {
        /// the record
        rec: SessionRecord,
        /// CAS token of the value read
        cas: u64,
        /// Seconds the copy still lives (`None`: never expires)
        ttl: Option<u32>,
    },
}

impl Stored {
    /// The decoded record, if any.
    pub(crate) fn record(&self) -> Option<&SessionRecord> {
        match self {
            Stored::Record { rec, .. } => Some(rec),
            _ => None,
        }
    }
}

/// The newest record among `copies` (`supersedes` decides).
pub(crate) fn newest<'a>(
    copies: impl IntoIterator<Item = &'a SessionRecord>,
) -> Option<&'a SessionRecord> {
    copies.into_iter().fold(None, |best, r| match best {
        Some(b) if !r.supersedes(b) => Some(b),
        _ => Some(r),
    })
}

/// State shared by the store's users and its health actor.
pub(crate) struct Core {
    pub(crate) cfg: MemcachedStoreConfig,
    pub(crate) placement: Placement,
    pub(crate) clients: Vec<NodeClient>,
    pub(crate) stats: Arc<Stats>,
    /// Published by the health actor; read lock-free by every operation.
    pub(crate) health: ArcSwap<HealthSnapshot>,
    /// Consecutive failures per node, as seen by the request path.
    fails: Vec<AtomicU32>,
    /// Where failures are reported; set once the actor is started.
    pub(crate) reporter: OnceLock<Addr<HealthActor>>,
    /// Sessions held in memory while no node could take them.
    pub(crate) degraded: Degraded,
}

impl Core {
    pub(crate) fn new(
        cfg: MemcachedStoreConfig,
        clients: Vec<NodeClient>,
        stats: Arc<Stats>,
    ) -> Self {
        let placement = Placement::new(&cfg);
        let health = ArcSwap::from_pointee(HealthSnapshot::all_up(&cfg));
        Core {
            fails: (0..cfg.nodes.len()).map(|_| AtomicU32::new(0)).collect(),
            degraded: Degraded::new(cfg.degraded_max_sessions),
            placement,
            clients,
            stats,
            health,
            reporter: OnceLock::new(),
            cfg,
        }
    }

    /// The node id of node number `node`.
    pub(crate) fn node_id(&self, node: usize) -> &str {
        self.placement.id(node)
    }

    /// The patience of a request-path read on `node`: `operation_timeout`,
    /// or a tenth of it (at least 20 ms) while a usable node's last
    /// operation failed. A node that just timed out is likely frozen, and a
    /// read has the other copy to fall back on: the next request should not
    /// wait a whole timeout again before the health actor marks the node
    /// down (memcached answers in well under a millisecond when healthy).
    /// Writes, probes and warm-up always get the full time.
    fn read_limit(&self, node: usize) -> Duration {
        let full = self.cfg.operation_timeout;
        if self.fails[node].load(Relaxed) > 0 && self.health.load().usable(node) {
            (full / 10).max(SUSPECT_MIN_TIMEOUT).min(full)
        } else {
            full
        }
    }

    /// Runs one memcached operation on `node` and feeds the outcome into the
    /// node's health. The operation is bounded by the client itself
    /// (`operation_timeout`, or the limit given to a `*_within` call): one
    /// timer per operation; a time-out comes back as a timed-out `McError`.
    ///
    /// Not an `async fn`: the client's future is boxed before anything awaits,
    /// so it lives in one small heap block instead of being copied into every
    /// enclosing future (an `async fn` keeps its arguments in its own state;
    /// the request path's futures, boxed once per request, stay small).
    pub(crate) fn timed<'a, T: 'a>(
        &'a self,
        node: usize,
        op: &'static str,
        fut: impl Future<Output = Result<T, McError>> + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + 'a {
        let fut = Box::pin(fut);
        async move {
            let outcome = fut.await;
            self.after_op(node, op, outcome)
        }
    }

    /// Feeds an operation's outcome into the node's health and maps errors.
    fn after_op<T>(
        &self,
        node: usize,
        op: &'static str,
        outcome: Result<T, McError>,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(v) => {
                if self.fails[node].load(Relaxed) != 0 {
                    self.fails[node].store(0, Relaxed);
                }
                Ok(v)
            }
            Err(e) => {
                if e.is_timeout() || e.is_node_failure() || e.is_refused() {
                    self.report_failure(node, e.is_refused());
                }
                if e.is_timeout() {
                    return Err(StoreError::Timeout {
                        node: self.node_id(node).to_owned(),
                        op,
                    });
                }
                Err(StoreError::Node {
                    node: self.node_id(node).to_owned(),
                    op,
                    reason: e.to_string(),
                })
            }
        }
    }

    fn report_failure(&self, node: usize, refused: bool) {
        let consecutive = self.fails[node].fetch_add(1, Relaxed).saturating_add(1);
        if let Some(addr) = self.reporter.get() {
            addr.do_send(NodeFailed {
                node,
                refused,
                consecutive,
            });
        }
    }

    /// The memcached key for `key`: with `<key_prefix>:` before it when one is set.
    fn key(&self, node: usize, key: &str, op: &'static str) -> Result<Key, StoreError> {
        let made = if self.cfg.key_prefix.is_empty() {
            Key::new(key)
        } else {
            Key::new(format!("{}:{key}", self.cfg.key_prefix))
        };
        made.map_err(|e| StoreError::Node {
            node: self.node_id(node).to_owned(),
            op,
            reason: format!("invalid key: {e}"),
        })
    }

    /// A key as enumerated on a node, without this store's prefix; `None` when it does not
    /// carry the prefix (another app's key).
    pub(crate) fn own_key<'a>(&self, raw: &'a str) -> Option<&'a str> {
        if self.cfg.key_prefix.is_empty() {
            return Some(raw);
        }
        raw.strip_prefix(self.cfg.key_prefix.as_str())?
            .strip_prefix(':')
    }

    /// Reads and decodes one copy.
    pub(crate) async fn read(&self, node: usize, key: &str) -> Result<Stored, StoreError> {
        self.read_within(node, key, self.cfg.operation_timeout)
            .await
    }

    /// [`Core::read`] for the request path: shorter patience with a node
    /// that just failed (see `read_limit`).
    pub(crate) async fn read_fast(&self, node: usize, key: &str) -> Result<Stored, StoreError> {
        self.read_within(node, key, self.read_limit(node)).await
    }

    async fn read_within(
        &self,
        node: usize,
        key: &str,
        limit: Duration,
    ) -> Result<Stored, StoreError> {
        let k = self.key(node, key, "get")?;
        let item = self
            .timed(node, "get", self.clients[node].get_within(&k, limit))
            .await?;
        Ok(match item {
            None => Stored::Missing,
            Some(item) => match SessionRecord::decode(&item.value) {
                Ok(rec) => Stored::Record {
                    rec,
                    cas: item.cas,
                    ttl: item.ttl,
                },
                Err(e) => {
                    self.stats.garbage_values.fetch_add(1, Relaxed);
                    log::warn!(
                        "memcached node {}: undecodable value under a session key ({} bytes): {e}",
                        self.node_id(node),
                        item.value.len()
                    );
                    Stored::Garbage { cas: item.cas }
                }
            },
        })
    }

    /// [`Core::read_fast`] on a node that may not exist (`None`: no such location).
    pub(crate) async fn read_opt(
        &self,
        node: Option<usize>,
        key: &str,
    ) -> Option<Result<Stored, StoreError>> {
        match node {
            Some(n) => Some(self.read_fast(n, key).await),
            None => None,
        }
    }

    /// Writes a record with `mode`, expiring after its max inactive interval.
    pub(crate) async fn write(
        &self,
        node: usize,
        key: &str,
        rec: &SessionRecord,
        mode: SetMode,
    ) -> Result<StoreStatus, StoreError> {
        self.write_ttl(node, key, rec, mode, ttl_for(rec.max_inactive_secs))
            .await
    }

    /// [`Core::write`] with an explicit memcached expiry.
    pub(crate) async fn write_ttl(
        &self,
        node: usize,
        key: &str,
        rec: &SessionRecord,
        mode: SetMode,
        ttl: u32,
    ) -> Result<StoreStatus, StoreError> {
        self.write_encoded(node, key, bytes::Bytes::from(rec.encode()), mode, ttl)
            .await
    }

    /// Writes an encoded record (`SessionRecord::encode`) with `mode` and
    /// expiry `ttl`; the copies of one save share one buffer.
    pub(crate) async fn write_encoded(
        &self,
        node: usize,
        key: &str,
        value: bytes::Bytes,
        mode: SetMode,
        ttl: u32,
    ) -> Result<StoreStatus, StoreError> {
        let k = self.key(node, key, "set")?;
        self.timed(
            node,
            "set",
            self.clients[node].set_bytes(&k, value, 0, ttl, mode),
        )
        .await
    }

    /// [`Core::write_encoded`] that also puts the CAS value the stored copy
    /// got into `cas` (0 when it was not stored; memcached's start at 1).
    pub(crate) async fn write_encoded_cas(
        &self,
        node: usize,
        key: &str,
        value: bytes::Bytes,
        mode: SetMode,
        ttl: u32,
        cas: &mut u64,
    ) -> Result<StoreStatus, StoreError> {
        let k = self.key(node, key, "set")?;
        let write = self.clients[node].set_bytes_cas_within(
            &k,
            value,
            0,
            ttl,
            mode,
            self.clients[node].options().operation_timeout,
        );
        let (status, got) = self.timed(node, "set", write).await?;
        *cas = got;
        Ok(status)
    }

    /// Writes raw bytes (locks, sentinel).
    pub(crate) async fn write_raw(
        &self,
        node: usize,
        key: &str,
        value: &[u8],
        ttl: u32,
        mode: SetMode,
    ) -> Result<StoreStatus, StoreError> {
        let k = self.key(node, key, "set")?;
        self.timed(node, "set", self.clients[node].set(&k, value, 0, ttl, mode))
            .await
    }

    /// Refreshes a key's expiry; `false` when the key is missing.
    pub(crate) async fn touch_key(
        &self,
        node: usize,
        key: &str,
        ttl: u32,
    ) -> Result<bool, StoreError> {
        let k = self.key(node, key, "touch")?;
        self.timed(node, "touch", self.clients[node].touch(&k, ttl))
            .await
    }

    /// Deletes a key; `false` when it was missing.
    pub(crate) async fn delete_key(&self, node: usize, key: &str) -> Result<bool, StoreError> {
        let k = self.key(node, key, "delete")?;
        self.timed(node, "delete", self.clients[node].delete(&k))
            .await
    }

    /// Makes the copy at (`node`, `key`), last read as `found`, hold `winner`
    /// unless it already does or holds something newer. A missing copy is
    /// added (add-if-absent), a stale or garbage one replaced by CAS, so a
    /// write that raced in meanwhile is never overwritten. Returns whether
    /// this call wrote.
    pub(crate) async fn repair(
        &self,
        node: usize,
        key: &str,
        found: &Stored,
        winner: &SessionRecord,
    ) -> Result<bool, StoreError> {
        self.repair_ttl(node, key, found, winner, ttl_for(winner.max_inactive_secs))
            .await
    }

    /// [`Core::repair`] with an explicit memcached expiry (warm-up keeps the
    /// source copy's remaining lifetime instead of granting a new interval).
    pub(crate) async fn repair_ttl(
        &self,
        node: usize,
        key: &str,
        found: &Stored,
        winner: &SessionRecord,
        ttl: u32,
    ) -> Result<bool, StoreError> {
        let mode = match found {
            Stored::Missing => SetMode::Add,
            Stored::Garbage { cas } => SetMode::Cas(*cas),
            Stored::Record { rec, cas, .. } => {
                if !winner.supersedes(rec) {
                    return Ok(false);
                }
                SetMode::Cas(*cas)
            }
        };
        let status = self.write_ttl(node, key, winner, mode, ttl).await?;
        Ok(status == StoreStatus::Stored)
    }

    /// True when `key` exists on `node` (raw, no decoding).
    pub(crate) async fn exists(&self, node: usize, key: &str) -> Result<bool, StoreError> {
        let k = self.key(node, key, "get")?;
        let item = self.timed(node, "get", self.clients[node].get(&k)).await?;
        Ok(item.is_some())
    }

    /// Every key of `node` (for warm-up), handed to `sink` as it arrives (see
    /// `NodeClient::metadump_each`), bounded by `warmup_timeout`.
    pub(crate) async fn dump_each(
        &self,
        node: usize,
        sink: &mut dyn FnMut(DumpedKey, bool),
    ) -> Result<(), StoreError> {
        let id = || self.node_id(node).to_owned();
        let work = self.clients[node].metadump_each(sink);
        match tokio::time::timeout(self.cfg.warmup_timeout, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Node {
                node: id(),
                op: "metadump",
                reason: e.to_string(),
            }),
            Err(_) => Err(StoreError::Timeout {
                node: id(),
                op: "metadump",
            }),
        }
    }
}
