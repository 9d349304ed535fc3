//! Session locking for concurrent requests (msm's `lockingMode`).
//!
//! Two layers, both bounded by `operation_timeout`:
//! * an in-process async mutex per session ([`LocalLocks`]), so parallel
//!   requests inside one app node are serialized without touching the store
//!   (msm's #237 hole: its lock was only in memcached);
//! * the store lock `lock:<key>` (add-if-absent with `lock_expiration`), for
//!   requests of the same session on other app nodes, retried with back-off
//!   from 10 ms doubling to 500 ms.
//!
//! In `auto` mode, [`ReadOnlyLearner`] remembers request patterns (method and
//! path) that never changed their session and stops locking them. Its table
//! is published through `ArcSwap` and read without a lock; only a pattern's
//! first sighting writes (copy-on-write), and the table is bounded.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix_web::dev::ServiceRequest;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use regex::Regex;
use tokio::sync::OwnedMutexGuard;

use super::Inner;
use crate::id::SessionId;
use crate::store::SessionBackend;

/// When to lock a session for the duration of a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LockingMode {
    /// Never lock (msm's default).
    None,
    /// Lock every request that has a session.
    All,
    /// Lock unless the request was learnt to be read-only.
    Auto,
    /// Lock requests whose URI (path and query) matches.
    UriPattern(Regex),
}

impl PartialEq for LockingMode {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LockingMode::UriPattern(a), LockingMode::UriPattern(b)) => a.as_str() == b.as_str(),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl LockingMode {
    /// Parses `none`, `all`, `auto` or `uriPattern:<regex>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(LockingMode::None),
            "all" => Ok(LockingMode::All),
            "auto" => Ok(LockingMode::Auto),
            _ => match s.strip_prefix("uriPattern:") {
                Some(re) => Regex::new(re)
                    .map(LockingMode::UriPattern)
                    .map_err(|e| format!("invalid uriPattern regex: {e}")),
                None => Err(format!(
                    "unknown locking mode {s:?}; use none, all, auto or uriPattern:<regex>"
                )),
            },
        }
    }
}

/// Requests seen unchanged this many times (and never changing) are read-only.
pub const READONLY_AFTER: u32 = 2;
/// Most request patterns the learner remembers.
pub const MAX_PATTERNS: usize = 10_000;
const MODIFYING: u32 = u32::MAX;

/// Learns which request patterns never modify their session (`auto` mode).
#[derive(Debug, Default)]
pub struct ReadOnlyLearner {
    table: ArcSwap<HashMap<String, Arc<AtomicU32>>>,
}

impl ReadOnlyLearner {
    /// True when `pattern` was seen unchanged often enough and never changed.
    pub fn is_readonly(&self, pattern: &str) -> bool {
        self.table.load().get(pattern).is_some_and(|c| {
            let n = c.load(Ordering::Relaxed);
            (READONLY_AFTER..MODIFYING).contains(&n)
        })
    }

    /// Records one request's outcome.
    pub fn record(&self, pattern: &str, modified: bool) {
        let counter = match self.table.load().get(pattern) {
            Some(c) => c.clone(),
            None => {
                if self.table.load().len() >= MAX_PATTERNS {
                    return;
                }
                let fresh = Arc::new(AtomicU32::new(0));
                self.table.rcu(|t| {
                    let mut t = HashMap::clone(t);
                    t.entry(pattern.to_owned()).or_insert_with(|| fresh.clone());
                    t
                });
                match self.table.load().get(pattern) {
                    Some(c) => c.clone(),
                    None => return,
                }
            }
        };
        if modified {
            counter.store(MODIFYING, Ordering::Relaxed);
        } else {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MODIFYING - 1).then(|| n + 1)
            });
        }
    }
}

const SHARDS: usize = 32;

/// In-process per-session async mutexes.
#[derive(Debug)]
pub struct LocalLocks {
    shards: Vec<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for LocalLocks {
    fn default() -> Self {
        LocalLocks {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl LocalLocks {
    /// The mutex for `key` (created on first use; dropped with its last user).
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut shard = self.shards[(self.hasher.hash_one(key) as usize) % SHARDS].lock();
        if let Some(m) = shard.get(key).and_then(Weak::upgrade) {
            return m;
        }
        if shard.len() > 1024 {
            shard.retain(|_, w| w.strong_count() > 0);
        }
        let m = Arc::new(tokio::sync::Mutex::new(()));
        shard.insert(key.to_owned(), Arc::downgrade(&m));
        m
    }
}

/// Longest back-off between two store lock attempts (msm: 500 ms).
const LOCK_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// First back-off between two store lock attempts (msm: 10 ms).
const LOCK_BACKOFF_START: Duration = Duration::from_millis(10);

/// Locks one request holds on its session.
#[derive(Default)]
pub(crate) struct RequestLocks {
    pub(crate) local: Option<OwnedMutexGuard<()>>,
    pub(crate) store: Option<(Arc<dyn SessionBackend>, SessionId)>,
}

impl RequestLocks {
    /// Releases both locks (the store one in the background).
    pub(crate) fn release(mut self) {
        if let Some((backend, id)) = self.store.take() {
            tokio::spawn(async move {
                if let Err(e) = backend.unlock(&id).await {
                    log::debug!("session unlock failed: {e}");
                }
            });
        }
    }
}

impl Drop for RequestLocks {
    fn drop(&mut self) {
        // A handler error or a dropped future must not leave the store lock
        // behind until it expires.
        if let Some((backend, id)) = self.store.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(async move {
                    let _ = backend.unlock(&id).await;
                });
            }
        }
    }
}

impl Inner {
    pub(crate) fn wants_lock(&self, req: &ServiceRequest, pattern: &str) -> bool {
        match &self.settings.locking {
            LockingMode::None => false,
            LockingMode::All => true,
            LockingMode::Auto => {
                if self.learner.is_readonly(pattern) {
                    self.stats.lock_skipped_readonly.fetch_add(1, Relaxed);
                    false
                } else {
                    true
                }
            }
            LockingMode::UriPattern(re) => {
                let uri = req.uri();
                re.is_match(uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()))
            }
        }
    }

    /// Verifies the cookie, locks and loads. Returns the state for the handler.
    pub(crate) async fn acquire(&self, id: &SessionId) -> RequestLocks {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.operation_timeout;
        let mut waited = false;
        let mut locks = RequestLocks::default();
        let mutex = self.local_locks.get(&id.key());
        locks.local = match mutex.clone().try_lock_owned() {
            Ok(g) => Some(g),
            Err(_) => {
                waited = true;
                tokio::time::timeout_at(deadline, mutex.lock_owned())
                    .await
                    .ok()
            }
        };
        let mut failed = locks.local.is_none();
        // The store lock serializes requests on other app nodes; a sticky
        // session has one owner, so the in-process lock is enough.
        if !self.settings.sticky && !failed {
            let mut backoff = LOCK_BACKOFF_START;
            loop {
                let attempt = self.backend.try_lock(id, self.settings.lock_expiration);
                match tokio::time::timeout_at(deadline, attempt).await {
                    Ok(Ok(true)) => {
                        locks.store = Some((self.backend.clone(), id.clone()));
                        break;
                    }
                    Ok(Ok(false)) => {
                        waited = true;
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            failed = true;
                            break;
                        }
                        tokio::time::sleep(backoff.min(deadline - now)).await;
                        backoff = (backoff * 2).min(LOCK_BACKOFF_MAX);
                    }
                    Ok(Err(e)) => {
                        // Store unreachable: proceed unlocked rather than fail the request.
                        log::warn!("session lock unavailable: {e}");
                        failed = true;
                        break;
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if waited {
            self.stats.lock_waits.fetch_add(1, Relaxed);
        }
        if failed {
            self.stats.lock_failures.fetch_add(1, Relaxed);
            log::warn!(
                "could not lock session {id:?} within operation_timeout; continuing unlocked"
            );
        } else {
            self.stats.locks_acquired.fetch_add(1, Relaxed);
        }
        self.stats.lock_wait.record(started.elapsed());
        locks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(LockingMode::parse("none").unwrap(), LockingMode::None);
        assert_eq!(LockingMode::parse("all").unwrap(), LockingMode::All);
        assert_eq!(LockingMode::parse("auto").unwrap(), LockingMode::Auto);
        match LockingMode::parse("uriPattern:^/api/").unwrap() {
            LockingMode::UriPattern(re) => assert!(re.is_match("/api/cart")),
            m => panic!("{m:?}"),
        }
        assert!(LockingMode::parse("All").is_err());
        assert!(LockingMode::parse("uriPattern:(").is_err());
    }

    #[test]
    fn learner_marks_readonly_then_modifying_wins() {
        let l = ReadOnlyLearner::default();
        assert!(!l.is_readonly("GET /a"));
        l.record("GET /a", false);
        assert!(!l.is_readonly("GET /a"));
        l.record("GET /a", false);
        assert!(l.is_readonly("GET /a"));
        l.record("GET /a", true);
        assert!(!l.is_readonly("GET /a"));
        l.record("GET /a", false);
        assert!(
            !l.is_readonly("GET /a"),
            "a pattern that ever modified stays locked"
        );
    }

    #[test]
    fn local_lock_is_shared_per_key() {
        let locks = LocalLocks::default();
        let a = locks.get("k");
        let b = locks.get("k");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &locks.get("other")));
    }
}
