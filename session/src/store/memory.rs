//! The in-process store: the embedded default.
//!
//! Sessions live in this process's memory, in shards guarded by short
//! `parking_lot` mutexes (never held across an `.await`). Every entry has a
//! deadline from its max inactive interval; expired entries are dropped when
//! read and swept as the store is written. `max_entries` bounds memory: when
//! full, the entry closest to expiry in the shard is evicted.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Loaded, Revalidated, SessionBackend, StoreError, StoreFuture};
use crate::id::SessionId;
use crate::record::{RecordKind, SessionRecord};

/// The node id written into ids of sessions held by this store.
pub const LOCAL_NODE: &str = "local";
const SHARDS: usize = 16;
/// Lifetime of a logout's tombstone when the logged-out record is unknown.
const DEFAULT_TOMBSTONE_SECS: u32 = 1800;

#[derive(Debug)]
struct Entry {
    record: SessionRecord,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    sessions: HashMap<String, Entry>,
    locks: HashMap<String, Instant>,
}

/// In-process session store.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    max_entries_per_shard: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

impl MemoryStore {
    /// A store holding at most `max_entries` sessions.
    pub fn new(max_entries: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            max_entries_per_shard: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Number of live sessions held.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .sessions
                    .values()
                    .filter(|e| e.deadline > now && e.record.is_live())
                    .count()
            })
            .sum()
    }

    /// Drops whatever is held under `id` (no tombstone): for a holder of
    /// pending writes, not for a logout.
    pub(crate) fn forget(&self, id: &SessionId) {
        let key = id.key();
        let mut shard = self.shard(&key).lock();
        shard.sessions.remove(&key);
        shard.locks.remove(&key);
    }

    /// True when no live session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ttl(record: &SessionRecord) -> Duration {
        if record.max_inactive_secs == 0 {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            Duration::from_secs(u64::from(record.max_inactive_secs))
        }
    }

    fn put(&self, key: String, record: SessionRecord) {
        let now = Instant::now();
        let deadline = now + Self::ttl(&record);
        let mut shard = self.shard(&key).lock();
        if shard.sessions.len() >= self.max_entries_per_shard && !shard.sessions.contains_key(&key)
        {
            shard.sessions.retain(|_, e| e.deadline > now);
            if shard.sessions.len() >= self.max_entries_per_shard {
                let oldest = shard
                    .sessions
                    .iter()
                    .min_by_key(|(_, e)| e.deadline)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    shard.sessions.remove(&k);
                }
            }
        }
        shard.sessions.insert(key, Entry { record, deadline });
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl SessionBackend for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn new_id(&self, route: Option<&str>) -> SessionId {
        SessionId::generate(Some(LOCAL_NODE), route)
    }

    fn load<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Loaded>> {
        let mut id = id.clone();
        // Follow at most a few moved markers (renewal leaves one behind).
        for _ in 0..4 {
            let key = id.key();
            let now = Instant::now();
            let mut shard = self.shard(&key).lock();
            let (record, expires_in) = match shard.sessions.get(&key) {
                Some(e) if e.deadline > now => (e.record.clone(), e.deadline - now),
                Some(_) => {
                    shard.sessions.remove(&key);
                    return ready(Ok(None));
                }
                None => return ready(Ok(None)),
            };
            drop(shard);
            match record.kind {
                RecordKind::Live => {
                    return ready(Ok(Some(Loaded {
                        id,
                        record,
                        expires_in: Some(expires_in),
                        seen: Default::default(),
                    })))
                }
                RecordKind::Deleted => return ready(Ok(None)),
                RecordKind::Moved(ref to) => match SessionId::parse(to) {
                    Ok(next) => id = next.with_route(id.route()),
                    Err(_) => return ready(Ok(None)),
                },
            }
        }
        ready(Ok(None))
    }

    fn save<'a>(
        &'a self,
        id: &'a SessionId,
        record: &'a SessionRecord,
    ) -> StoreFuture<'a, SessionId> {
        let key = id.key();
        if record.is_live() {
            // A request that loaded the session before a logout must not
            // bring it back (the logout left a tombstone, see `invalidate`).
            let shard = self.shard(&key).lock();
            if let Some(e) = shard.sessions.get(&key) {
                if e.record.kind == RecordKind::Deleted && e.deadline > Instant::now() {
                    return ready(Err(StoreError::Invalidated));
                }
            }
        }
        self.put(key, record.clone());
        ready(Ok(id.clone()))
    }

    fn revalidate<'a>(
        &'a self,
        id: &'a SessionId,
        cached: &'a SessionRecord,
    ) -> StoreFuture<'a, Revalidated> {
        let key = id.key();
        let kind = {
            let shard = self.shard(&key).lock();
            match shard.sessions.get(&key) {
                Some(e) if e.deadline > Instant::now() => Some(e.record.kind.clone()),
                _ => None,
            }
        };
        Box::pin(async move {
            Ok(match kind {
                None => Revalidated::Unknown,
                Some(RecordKind::Deleted) => Revalidated::LoggedOut,
                Some(_) => match self.load(id).await? {
                    Some(l) if l.record.supersedes(cached) || l.id.key() != key => {
                        Revalidated::Newer(l)
                    }
                    Some(l) => Revalidated::Current(l.seen),
                    None => Revalidated::Unknown,
                },
            })
        })
    }

    fn touch<'a>(&'a self, id: &'a SessionId, record: &'a SessionRecord) -> StoreFuture<'a, ()> {
        let key = id.key();
        let mut shard = self.shard(&key).lock();
        if let Some(e) = shard.sessions.get_mut(&key) {
            e.deadline = Instant::now() + Self::ttl(record);
        }
        ready(Ok(()))
    }

    fn invalidate<'a>(
        &'a self,
        id: &'a SessionId,
        last: Option<&'a SessionRecord>,
    ) -> StoreFuture<'a, ()> {
        // A tombstone, kept for one interval, instead of removing the entry:
        // a request that loaded the session before the logout then cannot
        // write it back (its save is refused).
        let key = id.key();
        let tomb = match last {
            Some(r) => r.tombstone(),
            None => SessionRecord::new_live(0, DEFAULT_TOMBSTONE_SECS, Vec::new()).tombstone(),
        };
        let deadline = Instant::now() + Self::ttl(&tomb);
        let mut shard = self.shard(&key).lock();
        shard.locks.remove(&key);
        shard.sessions.insert(
            key,
            Entry {
                record: tomb,
                deadline,
            },
        );
        ready(Ok(()))
    }

    fn try_lock<'a>(&'a self, id: &'a SessionId, expiration: Duration) -> StoreFuture<'a, bool> {
        let key = id.key();
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        let taken = match shard.locks.get(&key) {
            Some(until) if *until > now => false,
            _ => {
                shard.locks.insert(key, now + expiration);
                true
            }
        };
        ready(Ok(taken))
    }

    fn unlock<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        let key = id.key();
        self.shard(&key).lock().locks.remove(&key);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_max_entries() {
        let store = MemoryStore::new(SHARDS * 2);
        futures::executor::block_on(async {
            for _ in 0..1000 {
                let id = store.new_id(None);
                let rec = SessionRecord::new_live(0, 60, vec![1]);
                store.save(&id, &rec).await.unwrap();
            }
        });
        assert!(store.len() <= SHARDS * 2);
    }

    #[test]
    fn moved_marker_is_followed() {
        futures::executor::block_on(async {
            let store = MemoryStore::default();
            let old = store.new_id(None);
            let new = store.new_id(None);
            let rec = SessionRecord::new_live(0, 60, b"x".to_vec());
            store.save(&new, &rec).await.unwrap();
            store
                .save(&old, &rec.moved_to(&new.to_string()))
                .await
                .unwrap();
            let got = store.load(&old).await.unwrap().unwrap();
            assert_eq!(got.id, new);
            assert_eq!(got.record.payload, b"x");
        });
    }
}
