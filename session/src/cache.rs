//! Temporary stand-in for the sticky cache (replaced by the LRU implementation).
#![allow(missing_docs)]
use std::collections::HashMap;

use parking_lot::Mutex;

#[derive(Debug)]
pub struct SessionCache<V> {
    map: Mutex<HashMap<String, (V, usize)>>,
    max_entries: usize,
}

impl<V: Clone> SessionCache<V> {
    pub fn new(max_entries: usize, _max_bytes: usize) -> Self {
        SessionCache {
            map: Mutex::new(HashMap::new()),
            max_entries,
        }
    }
    pub fn get(&self, key: &str) -> Option<V> {
        self.map.lock().get(key).map(|(v, _)| v.clone())
    }
    pub fn insert(&self, key: String, value: V, size: usize) -> usize {
        let mut m = self.map.lock();
        let mut evicted = 0;
        if m.len() >= self.max_entries && !m.contains_key(&key) {
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
                evicted = 1;
            }
        }
        m.insert(key, (value, size));
        evicted
    }
    pub fn remove(&self, key: &str) -> Option<V> {
        self.map.lock().remove(key).map(|(v, _)| v)
    }
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.map.lock().values().map(|(_, s)| s).sum()
    }
}
