//! Degraded mode: sessions kept in this app node's memory while no memcached
//! node can take them.
//!
//! When every node is down (or a write reached no node), the session goes to
//! an in-process [`MemoryStore`] and is remembered as *pending*. Reads and
//! locks in degraded mode are served from that store. When a node is usable
//! again, the health actor flushes the pending sessions to memcached
//! ([`super::ReplicatedMemcachedStore`]'s normal write path, keeping whatever
//! memcached holds if it is newer). Tombstones are parked too, so a logout
//! during an outage still reaches memcached. Entering and leaving degraded
//! mode is logged once per transition by the health actor; every operation
//! served here is counted in `degraded_operations`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::store::memory::MemoryStore;
use crate::store::{Loaded, SessionBackend, StoreError};

/// Sessions waiting in memory for a memcached node.
pub(crate) struct Degraded {
    memory: MemoryStore,
    /// key -> (id, newest record) still to be written to memcached.
    pending: Mutex<HashMap<String, (SessionId, SessionRecord)>>,
    /// `pending.len()`, readable without the lock.
    pending_len: AtomicUsize,
    max: usize,
}

impl Degraded {
    pub(crate) fn new(max: usize) -> Self {
        Degraded {
            memory: MemoryStore::new(max),
            pending: Mutex::new(HashMap::new()),
            pending_len: AtomicUsize::new(0),
            max,
        }
    }

    /// Number of sessions waiting to be flushed.
    pub(crate) fn pending(&self) -> usize {
        self.pending_len.load(Relaxed)
    }

    /// Keeps `rec` in memory until a node can take it. Returns `false` when
    /// the bound is reached (the write is then lost, and logged).
    pub(crate) async fn park(&self, id: &SessionId, rec: &SessionRecord) -> bool {
        {
            let mut p = self.pending.lock();
            let key = id.key();
            if p.len() >= self.max && !p.contains_key(&key) {
                log::error!(
                    "degraded mode: {} sessions already held in memory, dropping a write",
                    self.max
                );
                return false;
            }
            p.insert(key, (id.clone(), rec.clone()));
            self.pending_len.store(p.len(), Relaxed);
        }
        // The memory store never fails.
        let _ = self.memory.save(id, rec).await;
        true
    }

    /// The session as held in memory (live records only).
    pub(crate) async fn load(&self, id: &SessionId) -> Option<Loaded> {
        self.memory.load(id).await.ok().flatten()
    }

    /// The pending record for `id`'s key, tombstones included.
    pub(crate) fn pending_record(&self, id: &SessionId) -> Option<SessionRecord> {
        if self.pending() == 0 {
            return None;
        }
        self.pending.lock().get(&id.key()).map(|(_, r)| r.clone())
    }

    /// Forgets a pending write of `id` that memcached now has a newer copy of.
    pub(crate) fn drop_pending(&self, id: &SessionId) {
        if self.pending() == 0 {
            return;
        }
        let removed = {
            let mut p = self.pending.lock();
            let removed = p.remove(&id.key()).is_some();
            self.pending_len.store(p.len(), Relaxed);
            removed
        };
        if removed {
            self.memory.forget(id);
        }
    }

    /// Refreshes the in-memory expiry.
    pub(crate) async fn touch(&self, id: &SessionId, rec: &SessionRecord) {
        let _ = self.memory.touch(id, rec).await;
    }

    /// A copy of every pending session, for a flush. Entries stay pending
    /// (and keep serving reads) until [`Degraded::settle`] removes them.
    pub(crate) fn pending_snapshot(&self) -> Vec<(SessionId, SessionRecord)> {
        self.pending.lock().values().cloned().collect()
    }

    /// `rec` reached memcached: drop it from memory, unless a newer write of
    /// the same session was parked meanwhile.
    pub(crate) async fn settle(&self, id: &SessionId, rec: &SessionRecord) {
        let removed = {
            let mut p = self.pending.lock();
            let key = id.key();
            let same = p.get(&key).is_some_and(|(_, r)| r == rec);
            if same {
                p.remove(&key);
                self.pending_len.store(p.len(), Relaxed);
            }
            same
        };
        if removed {
            self.memory.forget(id);
        }
    }

    /// Lock held in memory while degraded.
    pub(crate) async fn try_lock(
        &self,
        id: &SessionId,
        expiration: Duration,
    ) -> Result<bool, StoreError> {
        self.memory.try_lock(id, expiration).await
    }

    /// Releases an in-memory lock.
    pub(crate) async fn unlock(&self, id: &SessionId) {
        let _ = self.memory.unlock(id).await;
    }
}
