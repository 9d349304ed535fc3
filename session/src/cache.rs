//! The sticky node's bounded session cache.
//!
//! In sticky mode an app node keeps the sessions it owns in memory and only
//! backs them up to the store; this cache bounds that memory by a number of
//! entries *and* a number of bytes (the caller gives each entry's size, e.g.
//! its serialized length), evicting the least recently used entry first. An
//! evicted session is not lost: the next request loads it from the store.
//! This is the fix for "the app server ran out of memory and its sessions were
//! lost".
//!
//! Layout: the key space is split over shards (by a keyed hash), each a
//! `parking_lot` mutex around an LRU list kept in a slab (`Vec` of nodes
//! linked by index) plus a `HashMap` from key to slot, so every operation is
//! O(1). Locks are held for a few pointer updates and never across an
//! `.await`. Each shard gets `1/shards` of both budgets, so the global bounds
//! always hold; the price is that LRU order is exact within a shard and
//! approximate across shards, and that one entry can use at most
//! [`SessionCache::max_entry_bytes`] (a larger one is not cached).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::Mutex;

/// Shards used by [`SessionCache::new`] (fewer when the budgets are tiny).
pub const DEFAULT_SHARDS: usize = 16;

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node<V> {
    key: String,
    value: V,
    size: usize,
    /// towards the most recently used end
    prev: usize,
    /// towards the least recently used end
    next: usize,
}

/// One shard: an LRU list in a slab.
#[derive(Debug)]
struct Lru<V> {
    index: HashMap<String, usize>,
    slots: Vec<Option<Node<V>>>,
    free: Vec<usize>,
    /// most recently used
    head: usize,
    /// least recently used: evicted first
    tail: usize,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<V> Lru<V> {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Lru {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    fn node(&mut self, i: usize) -> Option<&mut Node<V>> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    fn unlink(&mut self, i: usize) {
        let Some(n) = self.node(i) else { return };
        let (prev, next) = (n.prev, n.next);
        n.prev = NIL;
        n.next = NIL;
        match self.node(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.node(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        let old_head = self.head;
        if let Some(n) = self.node(i) {
            n.prev = NIL;
            n.next = old_head;
        }
        match self.node(old_head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn get(&mut self, key: &str) -> Option<&V> {
        let i = *self.index.get(key)?;
        self.unlink(i);
        self.push_front(i);
        self.slots.get(i)?.as_ref().map(|n| &n.value)
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let i = *self.index.get(key)?;
        self.remove_at(i).map(|n| n.value)
    }

    /// Unlinks and frees slot `i`, dropping its index entry.
    fn remove_at(&mut self, i: usize) -> Option<Node<V>> {
        self.unlink(i);
        let node = self.slots.get_mut(i)?.take()?;
        self.index.remove(&node.key);
        self.free.push(i);
        self.bytes -= node.size;
        Some(node)
    }

    /// Inserts or replaces; returns how many entries left the cache.
    fn insert(&mut self, key: String, value: V, size: usize) -> usize {
        if size > self.max_bytes || self.max_entries == 0 {
            // Cannot be cached at all; a stale older value must not stay.
            return usize::from(self.remove(&key).is_some());
        }
        if let Some(&i) = self.index.get(&key) {
            if let Some(n) = self.node(i) {
                let old = std::mem::replace(&mut n.size, size);
                n.value = value;
                self.bytes = self.bytes - old + size;
            }
            self.unlink(i);
            self.push_front(i);
        } else {
            let node = Node {
                key: key.clone(),
                value,
                size,
                prev: NIL,
                next: NIL,
            };
            let i = match self.free.pop() {
                Some(i) => {
                    self.slots[i] = Some(node);
                    i
                }
                None => {
                    self.slots.push(Some(node));
                    self.slots.len() - 1
                }
            };
            self.index.insert(key, i);
            self.push_front(i);
            self.bytes += size;
        }
        let mut evicted = 0;
        // The newest entry fits alone, so this stops before evicting it.
        while (self.index.len() > self.max_entries || self.bytes > self.max_bytes)
            && self.remove_at(self.tail).is_some()
        {
            evicted += 1;
        }
        evicted
    }
}

/// A bounded, thread-safe LRU cache of sessions keyed by session key.
#[derive(Debug)]
pub struct SessionCache<V> {
    shards: Box<[Mutex<Lru<V>>]>,
    hasher: RandomState,
    max_entry_bytes: usize,
}

impl<V: Clone> SessionCache<V> {
    /// A cache holding at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let shards = DEFAULT_SHARDS.min(max_entries).min(max_bytes).max(1);
        Self::with_shards(max_entries, max_bytes, shards)
    }

    /// Like [`new`](Self::new) with an explicit shard count (1 gives exact
    /// LRU order). Each shard gets `max / shards` (rounded down) of each budget.
    pub fn with_shards(max_entries: usize, max_bytes: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        let per_bytes = max_bytes / shards;
        SessionCache {
            shards: (0..shards)
                .map(|_| Mutex::new(Lru::new(max_entries / shards, per_bytes)))
                .collect(),
            hasher: RandomState::new(),
            max_entry_bytes: per_bytes,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Lru<V>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// The value for `key`, marking it most recently used.
    pub fn get(&self, key: &str) -> Option<V> {
        self.shard(key).lock().get(key).cloned()
    }

    /// Inserts or replaces `key`, whose value takes `size` bytes, evicting
    /// least recently used entries until both bounds hold again. Returns the
    /// number of entries evicted. A value larger than
    /// [`max_entry_bytes`](Self::max_entry_bytes) is not cached (and an older
    /// value under `key` is dropped, counted as evicted).
    pub fn insert(&self, key: String, value: V, size: usize) -> usize {
        self.shard(&key).lock().insert(key, value, size)
    }

    /// Replaces the value under `key` only if there is one and `current`
    /// accepts it, checked under the shard's lock (no insert of another
    /// thread falls between check and replace). Returns the entries evicted,
    /// or `None` when nothing was replaced.
    pub fn replace_if(
        &self,
        key: String,
        value: V,
        size: usize,
        current: impl FnOnce(&V) -> bool,
    ) -> Option<usize> {
        let mut shard = self.shard(&key).lock();
        if !shard.get(&key).is_some_and(current) {
            return None;
        }
        Some(shard.insert(key, value, size))
    }

    /// Removes `key`, returning its value.
    pub fn remove(&self, key: &str) -> Option<V> {
        self.shard(key).lock().remove(key)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().index.len()).sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (sum of the sizes given on insert).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// The largest entry that can be cached (`max_bytes / shards`).
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_if_replaces_only_an_accepted_current_value() {
        let cache = SessionCache::new(10, 1000);
        assert_eq!(cache.replace_if("a".into(), 1, 1, |_| true), None);
        assert_eq!(cache.get("a"), None);
        cache.insert("a".into(), 1, 1);
        assert_eq!(cache.replace_if("a".into(), 2, 1, |v| *v == 7), None);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.replace_if("a".into(), 2, 1, |v| *v == 1), Some(0));
        assert_eq!(cache.get("a"), Some(2));
    }

    #[test]
    fn bounds_by_entries_and_bytes_hold_after_100k_inserts() {
        let max_entries = 1_000;
        let max_bytes = 64 * 1024;
        let cache = SessionCache::new(max_entries, max_bytes);
        let mut evicted = 0;
        for i in 0..100_000usize {
            // Sizes 1..=200: sometimes the entry bound binds, sometimes bytes.
            evicted += cache.insert(format!("s{i}"), i, 1 + (i * 7919) % 200);
            if i % 97 == 0 {
                assert!(cache.len() <= max_entries, "len {}", cache.len());
                assert!(cache.bytes() <= max_bytes, "bytes {}", cache.bytes());
            }
        }
        assert!(cache.len() <= max_entries && cache.bytes() <= max_bytes);
        assert_eq!(evicted + cache.len(), 100_000);
        // The cache is actually used, not emptied.
        assert!(cache.len() > max_entries / 4, "len {}", cache.len());
        // The newest entry survives.
        assert_eq!(cache.get("s99999"), Some(99_999));
    }

    #[test]
    fn bound_by_bytes_alone() {
        let cache = SessionCache::new(usize::MAX, 10_000);
        for i in 0..100_000usize {
            cache.insert(i.to_string(), (), 100);
            assert!(cache.bytes() <= 10_000);
        }
        assert!(cache.len() <= 100);
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let cache = SessionCache::with_shards(3, 1_000, 1);
        assert_eq!(cache.insert("a".into(), 1, 10), 0);
        assert_eq!(cache.insert("b".into(), 2, 10), 0);
        assert_eq!(cache.insert("c".into(), 3, 10), 0);
        assert_eq!(cache.get("a"), Some(1)); // a is now the most recent
        assert_eq!(cache.insert("d".into(), 4, 10), 1);
        assert_eq!(cache.get("b"), None);
        assert_eq!(cache.insert("e".into(), 5, 10), 1);
        assert_eq!(cache.get("c"), None);
        for (k, v) in [("a", 1), ("d", 4), ("e", 5)] {
            assert_eq!(cache.get(k), Some(v));
        }
        // A big entry pushes out as many old ones as its bytes need.
        assert_eq!(cache.insert("big".into(), 6, 985), 2);
        assert_eq!((cache.len(), cache.bytes()), (2, 995));
        assert_eq!(cache.get("e"), Some(5));
    }

    #[test]
    fn replacing_a_key_updates_bytes_and_recency() {
        let cache = SessionCache::with_shards(2, 100, 1);
        cache.insert("a".into(), "v1", 10);
        cache.insert("b".into(), "x", 10);
        assert_eq!(cache.insert("a".into(), "v2", 30), 0);
        assert_eq!((cache.len(), cache.bytes()), (2, 40));
        assert_eq!(cache.get("a"), Some("v2"));
        cache.insert("a".into(), "v3", 5);
        assert_eq!(cache.bytes(), 15);
        // "a" was refreshed by the replace, so "b" goes first.
        cache.insert("c".into(), "y", 1);
        assert_eq!(cache.get("b"), None);
        assert_eq!(cache.remove("a"), Some("v3"));
        assert_eq!((cache.len(), cache.bytes()), (1, 1));
        assert_eq!(cache.remove("a"), None);
    }

    #[test]
    fn oversized_value_is_not_cached_and_drops_the_old_one() {
        let cache = SessionCache::with_shards(10, 100, 1);
        cache.insert("a".into(), 1, 10);
        assert_eq!(cache.insert("a".into(), 2, 101), 1);
        assert_eq!(cache.get("a"), None);
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        let none = SessionCache::new(0, 0);
        assert_eq!(none.insert("a".into(), 1, 0), 0);
        assert!(none.is_empty());
    }

    #[test]
    fn bounds_hold_under_concurrent_use() {
        let cache = std::sync::Arc::new(SessionCache::new(500, 50_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000usize {
                        let k = format!("{t}-{}", i % 3000);
                        cache.insert(k.clone(), i, 1 + i % 150);
                        let _ = cache.get(&k);
                        if i % 5 == 0 {
                            cache.remove(&format!("{t}-{}", (i * 31) % 3000));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(cache.len() <= 500 && cache.bytes() <= 50_000);
    }
}
