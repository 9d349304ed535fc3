//! One request's session life cycle: lock, load, then persist and unlock.
//!
//! The middleware calls `Inner::begin` before the handler and
//! `Inner::finish` after it. In sync mode the store write runs inline; if it
//! outlives `session_backup_timeout`, or the request is dropped, the rest of
//! it finishes as a task that owns the request's locks, so it still completes
//! (and unlocks) after the response has left. In async mode the persistence
//! actor writes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::ServiceRequest;

use super::locking::{LockingMode, RequestLocks};
use super::session::SessionState;
use super::{CachedSession, Inner};
use crate::id::SessionId;
use crate::record::{now_ms, SessionRecord};
use crate::serializer::SerializerKind;
use crate::store::{Revalidated, Seen, StoreError};

/// What to do with the cookie on the way out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// Leave it.
    Keep,
    /// Send a cookie for this id.
    Set(SessionId),
    /// Remove it (invalidated).
    Remove,
}

/// How a store ended, as far as the response is concerned.
enum Saved {
    /// Stored under the same id (or still running after the backup time-out).
    Same,
    /// Stored under a new id (relocated): the cookie changes.
    Moved(SessionId),
    /// Refused: the session was invalidated since this request loaded it.
    Invalidated,
}

/// What a sticky cache revalidation decided.
enum Checked {
    /// Serve this cached entry.
    Serve(Arc<CachedSession>),
    /// The store's copy is newer (boxed: large and rare).
    Newer(Box<crate::store::Loaded>),
    /// The session was logged out (the cache now holds its marker).
    LoggedOut,
}

/// A changed session's serialized attributes.
struct Encoded {
    /// What the store gets: the attributes `session_attribute_filter` keeps.
    stored: Vec<u8>,
    /// Sticky mode, when the filter left attributes out: all of them, for the cache.
    local: Option<Vec<u8>>,
}

/// What `begin` found, for `finish`.
pub(crate) struct Begun {
    pub cookie_id: Option<SessionId>,
    /// The cookie was signed with `cookie_secret_previous`: it is signed again.
    pub resign: bool,
    pub locks: RequestLocks,
    pub pattern: Option<String>,
}

/// A boxed future that, if dropped before it completed, finishes as a task.
struct OnDrop<T: Send + 'static> {
    fut: Option<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> OnDrop<T> {
    fn spawn_rest(fut: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>) -> Self {
        OnDrop { fut: Some(fut) }
    }
}

impl<T: Send + 'static> std::future::Future for OnDrop<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        let Some(fut) = self.fut.as_mut() else {
            return std::task::Poll::Pending;
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        std::task::Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for OnDrop<T> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            super::spawn_detached(async move {
                fut.await;
            });
        }
    }
}

/// The values of the cookies named `name` in the request's `Cookie` headers
/// (`a=1; b=2`; optional double quotes around a value are removed).
fn cookie_values<'a>(
    headers: &'a actix_web::http::header::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            if k.trim() != name {
                return None;
            }
            let v = v.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v),
            )
        })
}

fn hash_payload(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

impl Inner {
    /// True when the request's path matches `request_uri_ignore_pattern`.
    pub(crate) fn is_ignored(&self, path: &str) -> bool {
        self.settings
            .ignore
            .as_ref()
            .is_some_and(|re| re.is_match(path))
    }

    /// The verified session id from the request's cookie, if any.
    ///
    /// Reads the `Cookie` headers directly (no parsed cookie jar is built per
    /// request). When several cookies carry the name (e.g. set for different
    /// paths), the first one with a valid signature wins.
    /// The flag tells a cookie signed with the previous secret (see
    /// [`CookieSigner::verify_rotating`](crate::cookie::CookieSigner::verify_rotating)).
    pub(crate) fn cookie_id(&self, req: &ServiceRequest) -> Option<(SessionId, bool)> {
        let mut rejected = None;
        for value in cookie_values(req.headers(), &self.settings.cookie_name) {
            match self.signer.verify_rotating(value) {
                Ok(found) => return Some(found),
                Err(e) => rejected = Some(e),
            }
        }
        if let Some(e) = rejected {
            self.stats.invalid_cookies.fetch_add(1, Relaxed);
            log::debug!("rejected session cookie: {e}");
        }
        None
    }

    pub(crate) async fn begin(&self, req: &ServiceRequest) -> (SessionState, Begun) {
        let (cookie_id, resign) = match self.cookie_id(req) {
            Some((id, resign)) => (Some(id), resign),
            None => (None, false),
        };
        let pattern = matches!(self.settings.locking, LockingMode::Auto)
            .then(|| format!("{} {}", req.method(), req.path()));
        let mut locks = RequestLocks::default();
        let mut state = SessionState {
            serializer: self.settings.serializer,
            default_max_inactive: self.max_inactive_secs(),
            ..Default::default()
        };
        if let Some(id) = &cookie_id {
            if self.wants_lock(req, pattern.as_deref().unwrap_or("")) {
                locks = self.acquire(id).await;
            }
            self.load(id, &mut state).await;
        }
        (
            state,
            Begun {
                cookie_id,
                resign,
                locks,
                pattern,
            },
        )
    }

    fn fill_state(
        &self,
        state: &mut SessionState,
        id: SessionId,
        record: SessionRecord,
        hash: u64,
    ) -> bool {
        let Some(serializer) = SerializerKind::from_id(record.serializer) else {
            self.stats.garbage_values.fetch_add(1, Relaxed);
            return false;
        };
        match serializer.decode_attributes(&record.payload) {
            Ok(attrs) => {
                state.id = Some(id);
                state.attrs = attrs;
                state.serializer = serializer;
                state.loaded_hash = Some(hash);
                state.record = Some(record);
                true
            }
            Err(e) => {
                // msm #253 deleted such sessions; we only treat it as a miss.
                self.stats.garbage_values.fetch_add(1, Relaxed);
                log::warn!("undecodable session payload ({e}); starting a fresh session");
                false
            }
        }
    }

    async fn load(&self, id: &SessionId, state: &mut SessionState) {
        let started = Instant::now();
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(&id.key()) {
                if !hit.record.is_live() {
                    return; // logged out on this node (a marker, see `finish_invalidated`)
                }
                if hit.record.is_expired(now_ms()) {
                    // Idle past its interval: the store let its copies expire at the same time
                    // (they were written or touched with the cached record's last access). The
                    // store decides, in case another node kept it alive meanwhile.
                    let key = id.key();
                    if cache.get(&key).is_some_and(|e| Arc::ptr_eq(&e, &hit)) {
                        cache.remove(&key);
                    }
                    self.stats.cache_expired.fetch_add(1, Relaxed);
                    return Box::pin(self.load_from_store(id, state, started)).await;
                }
                let age_ms = now_ms().saturating_sub(hit.confirmed_ms);
                let hit = if u128::from(age_ms) < self.settings.cache_revalidate_after.as_millis() {
                    Some(hit)
                } else {
                    // Boxed apart: rare for a busy session, and it keeps this future small.
                    match Box::pin(self.revalidate(cache, hit)).await {
                        Checked::Serve(hit) => Some(hit),
                        Checked::Newer(loaded) => {
                            self.use_loaded(state, *loaded);
                            self.stats.load.record(started.elapsed());
                            return;
                        }
                        Checked::LoggedOut => return,
                    }
                };
                if let Some(hit) = hit {
                    let c = CachedSession::clone(&hit);
                    if self.fill_state(state, c.id, c.record, c.hash) {
                        state.seen = c.seen;
                        state.confirmed_ms = c.confirmed_ms;
                        return;
                    }
                }
            }
            self.stats.cache_misses.fetch_add(1, Relaxed);
        }
        self.load_from_store(id, state, started).await;
    }

    /// Loads the session from the store (not the sticky cache).
    async fn load_from_store(&self, id: &SessionId, state: &mut SessionState, started: Instant) {
        self.stats.store_loads.fetch_add(1, Relaxed);
        // The backend bounds each operation; this outer bound only guards
        // against a backend that does not.
        let bound = self.settings.operation_timeout * 3;
        match tokio::time::timeout(bound, self.backend.load(id)).await {
            Ok(Ok(Some(loaded))) => self.use_loaded(state, loaded),
            Ok(Ok(None)) => {
                self.stats.store_load_misses.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) => log::warn!("session load failed: {e}"),
            Err(_) => log::warn!("session load timed out after {bound:?}"),
        }
        self.stats.load.record(started.elapsed());
    }

    /// Fills the state from a copy read from the store (taking the session
    /// over from another app node in sticky mode).
    fn use_loaded(&self, state: &mut SessionState, loaded: crate::store::Loaded) {
        let mut new_id = loaded.id;
        if self.settings.sticky && new_id.route() != Some(self.route.as_str()) {
            // Another app node's session (it failed or was drained): take it over.
            self.stats.tomcat_failovers.fetch_add(1, Relaxed);
            new_id = new_id.with_route(Some(&self.route));
        } else if new_id.route().is_none() {
            new_id = new_id.with_route(Some(&self.route));
        }
        let hash = hash_payload(&loaded.record.payload);
        let mut record = loaded.record;
        if let (Some(_), Some(left)) = (&self.cache, loaded.expires_in) {
            // Sticky: the cached copy's last access decides its expiry (`load`). The record
            // tells its last write; touches since (here or on another node) moved the store's
            // expiry on, and how long the copies still live tells when the last one was.
            let interval = u64::from(record.max_inactive_secs) * 1000;
            let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            let touched = now_ms().saturating_sub(interval.saturating_sub(left));
            if record.max_inactive_secs > 0 && touched > record.last_access_ms {
                record.last_access_ms = touched;
            }
        }
        if self.fill_state(state, new_id, record, hash) {
            state.expires_in = loaded.expires_in;
            state.seen = loaded.seen;
            state.confirmed_ms = now_ms();
        }
    }

    /// Sticky mode: asks the store whether a cached session not confirmed
    /// for `cache_revalidate_after` is still current. Another app node may
    /// have taken it over while this one was unreachable, then changed it or
    /// logged it out; a replayed cookie naming this node must not bring the
    /// old copy back. When the store cannot tell, the cached copy is served
    /// (memcached being down must not log anyone out).
    async fn revalidate(&self, cache: &super::Cache, hit: Arc<CachedSession>) -> Checked {
        self.stats.cache_revalidations.fetch_add(1, Relaxed);
        let key = hit.id.key();
        let bound = self.settings.operation_timeout * 3;
        let outcome = tokio::time::timeout(bound, self.backend.revalidate(&hit.id, &hit.record));
        let same = |e: &Arc<CachedSession>| Arc::ptr_eq(e, &hit);
        match outcome.await {
            Ok(Ok(Revalidated::Current(seen))) => {
                let entry = Arc::new(CachedSession {
                    id: hit.id.clone(),
                    record: hit.record.clone(),
                    hash: hit.hash,
                    seen,
                    confirmed_ms: now_ms(),
                });
                let size = entry.record.payload.len() + 128;
                cache.replace_if(key, entry.clone(), size, same);
                Checked::Serve(entry)
            }
            Ok(Ok(Revalidated::Newer(loaded))) => {
                self.stats.cache_stale.fetch_add(1, Relaxed);
                self.stats.store_loads.fetch_add(1, Relaxed);
                // The request's save (or the unchanged path) caches the
                // store's copy under the id it ends with.
                if cache.get(&key).is_some_and(|e| same(&e)) {
                    cache.remove(&key);
                }
                Checked::Newer(Box::new(loaded))
            }
            Ok(Ok(Revalidated::LoggedOut)) => {
                self.stats.cache_stale.fetch_add(1, Relaxed);
                let marker = Arc::new(CachedSession {
                    id: hit.id.clone(),
                    record: hit.record.tombstone(),
                    hash: 0,
                    seen: Seen::default(),
                    confirmed_ms: now_ms(),
                });
                cache.replace_if(key, marker, 128, same);
                Checked::LoggedOut
            }
            Ok(Ok(Revalidated::Unknown)) => Checked::Serve(hit),
            Ok(Err(e)) => {
                log::debug!("sticky cache revalidation failed: {e}");
                Checked::Serve(hit)
            }
            Err(_) => {
                log::debug!("sticky cache revalidation timed out after {bound:?}");
                Checked::Serve(hit)
            }
        }
    }

    /// Persists the state after the handler and decides the cookie.
    pub(crate) async fn finish(&self, state: &mut SessionState, begun: Begun) -> CookieAction {
        let Begun {
            cookie_id,
            resign,
            locks,
            pattern,
        } = begun;
        if state.invalidate {
            // Boxed apart (rare): keeps this future, boxed per request, small.
            return Box::pin(self.finish_invalidated(state, cookie_id, locks)).await;
        }
        if state.id.is_none() && state.attrs.is_empty() {
            self.stats.requests_without_session.fetch_add(1, Relaxed);
            locks.release();
            return CookieAction::Keep;
        }
        self.stats.requests_with_session.fetch_add(1, Relaxed);

        let mut retired = None;
        if state.renew && state.id.is_some() {
            retired = state.id.take();
            self.stats.sessions_renewed.fetch_add(1, Relaxed);
        }
        let is_new = state.id.is_none();
        let id = match state.id.clone() {
            Some(id) => id,
            None => {
                if retired.is_none() {
                    self.stats.sessions_created.fetch_add(1, Relaxed);
                }
                let id = self.backend.new_id(Some(&self.route));
                state.id = Some(id.clone());
                id
            }
        };

        let (mut payload, mut local) = match (state.dirty || is_new)
            .then(|| self.encode(state))
            .flatten()
        {
            Some(Encoded { stored, local }) => (Some(stored), local),
            None => (None, None),
        };
        let hash = payload.as_deref().map(hash_payload);
        let interval = state.max_inactive_secs();
        let interval_changed = state
            .record
            .as_ref()
            .is_some_and(|r| r.max_inactive_secs != interval);
        let changed = is_new || (hash.is_some() && (hash != state.loaded_hash || interval_changed));
        if let Some(p) = &pattern {
            self.learner.record(p, changed);
        }
        // Sticky, nothing to store: every attribute as the cache should now hold them (with
        // `session_attribute_filter`, those the store does not get may still have changed).
        let unstored = match (&self.cache, changed) {
            (Some(_), false) => local.take().or_else(|| payload.take()),
            _ => None,
        };

        let mut locks = locks;
        if let (true, Some(payload), Some(hash)) = (changed, payload, hash) {
            if let Some(cache) = &self.cache {
                // Sticky: the cache is the session's truth on this node. Saving and logging out
                // take the session's in-process lock, so a logout cannot fall between the check
                // and the save; after a logout the cache holds its marker.
                if locks.local.is_none() {
                    let mutex = self.local_locks.get(&id.key());
                    locks.local = Some(mutex.lock_owned().await);
                }
                if cache.get(&id.key()).is_some_and(|c| !c.record.is_live()) {
                    self.stats.saves_refused_after_logout.fetch_add(1, Relaxed);
                    locks.release();
                    state.id = None;
                    return if cookie_id.is_some() {
                        CookieAction::Remove
                    } else {
                        CookieAction::Keep
                    };
                }
            }
            let now = now_ms();
            let record = match &state.record {
                Some(prev) if !is_new || retired.is_some() => SessionRecord {
                    version: prev.version + 1,
                    last_access_ms: now,
                    payload,
                    serializer: state.serializer.id(),
                    max_inactive_secs: interval,
                    // Field by field: `..prev.clone()` would copy the old payload only to drop it.
                    kind: prev.kind.clone(),
                    created_ms: prev.created_ms,
                },
                _ => SessionRecord::new_live(state.serializer.id(), interval, payload),
            };
            self.stats.stored_size.record(record.payload.len() as u64);
            // What the load saw applies to the id it loaded, not to a renewed one.
            let seen = match retired {
                None => std::mem::take(&mut state.seen),
                Some(_) => Seen::default(),
            };
            // A conditional write that lands confirms that the store held what
            // this node last saw; so does the first write of a new id.
            let confirm = seen.copies[0].is_some() || is_new || retired.is_some();
            if let Some(cache) = &self.cache {
                // With `session_attribute_filter`, the cache keeps every attribute; the
                // store gets the ones the filter keeps (same version, so they match).
                let cached = match local {
                    Some(all) => record.with_payload(all),
                    None => record.clone(),
                };
                let size = cached.payload.len() + 128;
                let entry = Arc::new(CachedSession {
                    id: id.clone(),
                    record: cached,
                    hash,
                    seen: seen.clone(),
                    confirmed_ms: state.confirmed_ms,
                });
                let evicted = cache.insert(id.key(), entry, size);
                self.stats
                    .cache_evictions
                    .fetch_add(evicted as u64, Relaxed);
            }
            // Boxed apart: the write's state does not inflate this future (see
            // `request_path_futures_fit_the_allocator_cache`).
            match Box::pin(self.store(id.clone(), record, locks, seen, confirm)).await {
                Saved::Same => {}
                Saved::Moved(new_id) => state.id = Some(new_id),
                Saved::Invalidated => {
                    // Logged out by another request since this one loaded the
                    // session: the logout stands (the store turned the cache
                    // entry into a logout marker, see `note_refused`).
                    state.id = None;
                    return if cookie_id.is_some() {
                        CookieAction::Remove
                    } else {
                        CookieAction::Keep
                    };
                }
            }
        } else {
            if !state.dirty {
                // Loaded and untouched: nothing to write.
            } else {
                self.stats.unchanged_sessions_skipped.fetch_add(1, Relaxed);
            }
            let touched = self.refresh_expiry(&id, state.record.as_ref(), state.expires_in);
            if let (Some(cache), Some(record), Some(h)) =
                (&self.cache, &state.record, state.loaded_hash)
            {
                // Keep (or take over into) the cache under the current id; a
                // touched session remembers when, so the next requests do not
                // touch it again.
                let cached = cache.get(&id.key());
                let logged_out = cached.as_ref().is_some_and(|c| !c.record.is_live());
                // Only attributes the store does not get changed: the cache takes them.
                let local = unstored.filter(|all| *all != record.payload);
                if !logged_out && (touched || local.is_some() || cached.is_none_or(|c| c.id != id))
                {
                    let mut record = match local {
                        Some(all) => record.with_payload(all),
                        None => record.clone(),
                    };
                    if touched {
                        record.last_access_ms = now_ms();
                    }
                    let entry = Arc::new(CachedSession {
                        id: id.clone(),
                        record,
                        hash: h,
                        seen: state.seen.clone(),
                        confirmed_ms: state.confirmed_ms,
                    });
                    let size = entry.record.payload.len() + 128;
                    let evicted = cache.insert(id.key(), entry, size);
                    self.stats
                        .cache_evictions
                        .fetch_add(evicted as u64, Relaxed);
                }
            }
            locks.release();
        }

        if let Some(old) = retired {
            self.retire(old, state.id.clone());
        }
        match &state.id {
            Some(id) if resign || Some(id) != cookie_id.as_ref() => CookieAction::Set(id.clone()),
            _ => CookieAction::Keep,
        }
    }

    /// Serializes a changed session's attributes: all of them, or with
    /// `session_attribute_filter` the ones it keeps for the store (and in sticky
    /// mode all of them for the cache, when the filter left any out).
    fn encode(&self, state: &SessionState) -> Option<Encoded> {
        let t = Instant::now();
        let filter = self
            .settings
            .attribute_filter
            .as_ref()
            .filter(|f| state.attrs.keys().any(|k| !f.is_match(k)));
        let encoded = match filter {
            None => state
                .serializer
                .encode_attributes(&state.attrs)
                .map(|stored| Encoded {
                    stored,
                    local: None,
                }),
            Some(f) => {
                let kept: crate::serializer::Attributes = state
                    .attrs
                    .iter()
                    .filter(|(k, _)| f.is_match(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                state
                    .serializer
                    .encode_attributes(&kept)
                    .and_then(|stored| {
                        let local = match self.cache {
                            Some(_) => Some(state.serializer.encode_attributes(&state.attrs)?),
                            None => None,
                        };
                        Ok(Encoded { stored, local })
                    })
            }
        };
        match encoded {
            Ok(e) => {
                self.stats.serialization.record(t.elapsed());
                Some(e)
            }
            Err(e) => {
                log::error!("session attributes could not be serialized: {e}");
                self.stats.backup_failures.fetch_add(1, Relaxed);
                None
            }
        }
    }

    fn max_inactive_secs(&self) -> u32 {
        u32::try_from(self.settings.max_inactive.as_secs()).unwrap_or(u32::MAX)
    }

    /// Refreshes the store expiry of an unchanged session, at most about four
    /// times per max inactive interval (msm refreshes, it does not rewrite).
    /// Returns true when a touch was sent.
    ///
    /// When the load told how long the stored copies still live, a touch is
    /// due once a quarter of the interval has passed since they were last
    /// written or touched. Otherwise (sticky cache hits, backends that cannot
    /// tell) the record's last access decides, which the sticky cache moves
    /// forward when it touches.
    fn refresh_expiry(
        &self,
        id: &SessionId,
        record: Option<&SessionRecord>,
        expires_in: Option<std::time::Duration>,
    ) -> bool {
        let Some(record) = record else { return false };
        let interval = std::time::Duration::from_secs(record.max_inactive_secs.into());
        if interval.is_zero() {
            return false; // never expires: nothing to refresh
        }
        let quarter = interval / 4;
        let due = match expires_in {
            Some(left) => left + quarter < interval,
            None => {
                let age_ms = now_ms().saturating_sub(record.last_access_ms);
                age_ms >= quarter.as_millis() as u64
            }
        };
        if !due {
            return false;
        }
        self.stats.touches.fetch_add(1, Relaxed);
        let backend = self.backend.clone();
        let (id, record) = (id.clone(), record.clone());
        tokio::spawn(async move {
            if let Err(e) = backend.touch(&id, &record).await {
                log::debug!("session touch failed: {e}");
            }
        });
        true
    }

    /// Writes a changed session: whether the backend relocated it within the
    /// wait, or refused it because the session was invalidated meanwhile.
    async fn store(
        &self,
        id: SessionId,
        record: SessionRecord,
        mut locks: RequestLocks,
        mut seen: Seen,
        confirm: bool,
    ) -> Saved {
        let pending = super::PendingWrite::new(&self.pending);
        if let Some(persister) = &self.persister {
            persister.do_send(super::persist::Persist {
                unlock: locks.store.take().is_some(),
                local_guard: locks.local.take(),
                id,
                record,
                seen,
                confirm,
                pending: Some(pending),
            });
            return Saved::Same;
        }
        let backend = self.backend.clone();
        let stats = self.stats.clone();
        let cache = self.cache.clone();
        // The write owns the request's locks and releases them when it ends.
        // It runs inline while the response waits (no task, no channel); if
        // it outlives `session_backup_timeout`, or the request is dropped
        // (client gone), what is left of it goes on as a task.
        let work = OnDrop::spawn_rest(Box::pin(async move {
            let started = Instant::now();
            let result = backend.save_seen(&id, &record, &mut seen).await;
            match &result {
                Ok(_) => {
                    stats.backups.fetch_add(1, Relaxed);
                    stats.store.record(started.elapsed());
                    if let Some(cache) = &cache {
                        super::note_saved(cache, &id, &record, seen, confirm);
                    }
                }
                Err(StoreError::Invalidated) => {
                    stats.saves_refused_after_logout.fetch_add(1, Relaxed);
                    if let Some(cache) = &cache {
                        super::note_refused(cache, &id, &record);
                    }
                    log::info!("session {id:?} was invalidated while this request ran; not saved");
                }
                Err(e) => {
                    stats.backup_failures.fetch_add(1, Relaxed);
                    log::warn!("session backup failed: {e}");
                }
            }
            locks.release();
            drop(pending);
            match result {
                Ok(new) if new != id => Saved::Moved(new),
                Err(StoreError::Invalidated) => Saved::Invalidated,
                _ => Saved::Same,
            }
        }));
        match tokio::time::timeout(self.settings.backup_timeout, work).await {
            Ok(saved) => saved,
            Err(_) => {
                log::debug!(
                    "session backup still running after session_backup_timeout ({:?}); responding",
                    self.settings.backup_timeout
                );
                Saved::Same
            }
        }
    }

    /// Makes a renewed session's old id unusable.
    fn retire(&self, old: SessionId, _new: Option<SessionId>) {
        if let Some(cache) = &self.cache {
            cache.remove(&old.key());
        }
        let backend = self.backend.clone();
        let pending = super::PendingWrite::new(&self.pending);
        super::spawn_detached(async move {
            if let Err(e) = backend.invalidate(&old, None).await {
                log::warn!("could not invalidate the renewed session's old id: {e}");
            }
            drop(pending);
        });
    }

    async fn finish_invalidated(
        &self,
        state: &mut SessionState,
        cookie_id: Option<SessionId>,
        locks: RequestLocks,
    ) -> CookieAction {
        let Some(id) = state.id.take().or(cookie_id.clone()) else {
            locks.release();
            return CookieAction::Keep;
        };
        self.stats.sessions_invalidated.fetch_add(1, Relaxed);
        let mut locks = locks;
        if let Some(cache) = &self.cache {
            if locks.local.is_none() {
                let mutex = self.local_locks.get(&id.key());
                locks.local = Some(mutex.lock_owned().await);
            }
            // A marker instead of nothing: a request of this session that is still running
            // (served from the cache before the logout) sees it and does not save.
            let base = state.record.clone().unwrap_or_else(|| {
                SessionRecord::new_live(0, self.max_inactive_secs(), Vec::new())
            });
            let marker = Arc::new(CachedSession {
                id: id.clone(),
                record: base.tombstone(),
                hash: 0,
                seen: Seen::default(),
                confirmed_ms: now_ms(),
            });
            let evicted = cache.insert(id.key(), marker, 128);
            self.stats
                .cache_evictions
                .fetch_add(evicted as u64, Relaxed);
        }
        let bound = self.settings.operation_timeout * 3;
        match tokio::time::timeout(bound, self.backend.invalidate(&id, state.record.as_ref())).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("session invalidation incomplete: {e}"),
            Err(_) => log::warn!("session invalidation timed out"),
        }
        locks.release();
        if cookie_id.is_some() {
            CookieAction::Remove
        } else {
            CookieAction::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderValue, COOKIE};

    use super::cookie_values;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn cookie_values_finds_the_named_cookie_in_every_header() {
        let h = headers(&["a=1; JSESSIONID=abc.def ;b=2", "JSESSIONID=\"q.v\"", "x=y"]);
        let found: Vec<&str> = cookie_values(&h, "JSESSIONID").collect();
        assert_eq!(found, ["abc.def", "q.v"]);
    }

    #[test]
    fn cookie_values_ignores_similar_names_and_garbage() {
        let h = headers(&["XJSESSIONID=1; JSESSIONIDX=2; novalue; =3; JSESSIONID"]);
        assert_eq!(cookie_values(&h, "JSESSIONID").count(), 0);
        assert_eq!(cookie_values(&HeaderMap::new(), "JSESSIONID").count(), 0);
    }
}

#[cfg(test)]
mod future_sizes {
    use std::sync::Arc;

    /// Every request boxes `begin`, `finish` and (for a changed session) the
    /// store; glibc serves blocks up to 1,032 bytes from its per-thread cache,
    /// larger ones go through the arena (with `malloc_consolidate`), which
    /// showed up in the session overhead profile when `finish` was 1,040 bytes.
    #[actix_web::test]
    async fn request_path_futures_fit_the_allocator_cache() {
        let settings = crate::SessionConfig::default()
            .validate()
            .expect("settings");
        let stats = Arc::new(crate::Stats::default());
        let store = Arc::new(crate::store::memory::MemoryStore::new(1000));
        let mgr = crate::SessionManager::new(settings, "app1", store, stats);
        let inner = &mgr.0;
        let req = actix_web::test::TestRequest::default().to_srv_request();
        let begin = inner.begin(&req);
        let begin_size = std::mem::size_of_val(&begin);
        let (mut state, begun) = begin.await;
        let finish_size = std::mem::size_of_val(&inner.finish(&mut state, begun));
        let id = inner.backend.new_id(None);
        let record = crate::record::SessionRecord::new_live(0, 60, Vec::new());
        let store = inner.store(id, record, Default::default(), Default::default(), false);
        let store_size = std::mem::size_of_val(&store);
        drop(store);
        for (what, size) in [
            ("begin", begin_size),
            ("finish", finish_size),
            ("store", store_size),
        ] {
            assert!(size <= 1024, "{what} future is {size} bytes");
        }
    }
}
