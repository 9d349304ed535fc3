//! actix-session compatibility: any [`SessionBackend`] (the in-process store,
//! the replicated memcached store) as an `actix_session::storage::SessionStore`,
//! so an existing actix-web app switches with one line:
//!
//! ```
//! # use std::sync::Arc;
//! # use actix_session::SessionMiddleware;
//! # use actix_web::{cookie::Key, App};
//! # use ferrocat_session::actix_store::BackendSessionStore;
//! # use ferrocat_session::store::memory::MemoryStore;
//! # let backend = Arc::new(MemoryStore::default());
//! # let key = Key::generate();
//! let app = App::new().wrap(SessionMiddleware::new(BackendSessionStore::new(backend), key));
//! ```
//!
//! Data flow: actix-session hands over its state, a map of attribute name to
//! the attribute's JSON text. Each value is encoded as a string with the
//! store's serializer, the map with
//! [`SerializerKind::encode_attributes`], and the result stored as a live
//! [`SessionRecord`] whose max inactive interval is actix-session's TTL. The
//! session key actix-session puts into its (signed) cookie is the ferrocat
//! session id, so the backend places and replicates the session exactly as
//! it does for ferrocat's own sessions.
//!
//! `update` reads the stored copy once before writing, to store the next
//! version (so a stale copy on a node that comes back never wins) and keep
//! the creation time; an update of a session that is gone starts a new one,
//! as actix-session's own stores do.
//!
//! A key that is not a session id, an unknown serializer id or an undecodable
//! payload is a miss (`Ok(None)`, counted in [`BackendSessionStore::garbled`]):
//! the user gets a fresh session, never a 500. A backend failure is an error.
//!
//! Runnable example: `examples/examples/actix_session_store.rs`
//! (`cargo run -p ferrocat-examples --example actix_session_store`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration;

use crate::id::SessionId;
use crate::record::{now_ms, SessionRecord};
use crate::serializer::{Attributes, SerializerError, SerializerKind};
use crate::store::memory::MemoryStore;
use crate::store::{SessionBackend, StoreError};

/// actix-session's state: attribute name -> the attribute's JSON text.
type SessionState = HashMap<String, String>;

/// A [`SessionBackend`] seen as an actix-session [`SessionStore`].
pub struct BackendSessionStore {
    backend: Arc<dyn SessionBackend>,
    serializer: SerializerKind,
    /// `session_attribute_filter`: only attributes whose whole name matches are stored.
    filter: Option<regex::Regex>,
    /// Stored sessions that could not be decoded and were treated as a miss.
    garbled: AtomicU64,
}

impl std::fmt::Debug for BackendSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSessionStore")
            .field("backend", &self.backend.name())
            .field("serializer", &self.serializer)
            .finish()
    }
}

impl BackendSessionStore {
    /// Sessions go to `backend`, encoded with the default serializer.
    pub fn new(backend: Arc<dyn SessionBackend>) -> Self {
        BackendSessionStore {
            backend,
            serializer: SerializerKind::default(),
            filter: None,
            garbled: AtomicU64::new(0),
        }
    }

    /// Sessions live in this process ([`MemoryStore`]).
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryStore::default()))
    }

    /// Writes new and updated sessions with `serializer` (reading follows
    /// each record's header, so copies written with another one still load).
    #[must_use]
    pub fn with_serializer(mut self, serializer: SerializerKind) -> Self {
        self.serializer = serializer;
        self
    }

    /// Stores only the attributes whose whole name matches `pattern` (msm's
    /// `sessionAttributeFilter`, as `session_attribute_filter` in ferrocat's own session
    /// manager: `user|cart` keeps `user` and `cart`, not `username`). The others live for the
    /// request only: actix-session hands over the whole state on every save, and the next load
    /// returns the stored ones. An empty pattern stores everything.
    pub fn with_attribute_filter(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.filter = if pattern.is_empty() {
            None
        } else {
            Some(regex::Regex::new(&format!("^(?:{pattern})$"))?)
        };
        Ok(self)
    }

    /// The backend sessions are stored in.
    pub fn backend(&self) -> &Arc<dyn SessionBackend> {
        &self.backend
    }

    /// How many stored sessions were garbage and treated as a miss.
    pub fn garbled(&self) -> u64 {
        self.garbled.load(Ordering::Relaxed)
    }

    fn encode(&self, state: &SessionState) -> Result<Vec<u8>, SerializerError> {
        let kind = self.serializer;
        let attrs = state
            .iter()
            .filter(|(k, _)| self.filter.as_ref().is_none_or(|f| f.is_match(k)))
            .map(|(k, v)| Ok((k.clone(), kind.encode_value(v.as_str())?)))
            .collect::<Result<Attributes, SerializerError>>()?;
        kind.encode_attributes(&attrs)
    }

    fn decode(record: &SessionRecord) -> Result<SessionState, SerializerError> {
        let kind = SerializerKind::try_from_id(record.serializer)?;
        kind.decode_attributes(&record.payload)?
            .into_iter()
            .map(|(k, v)| Ok((k, kind.decode_value::<String>(&v)?)))
            .collect()
    }

    fn record(
        &self,
        state: &SessionState,
        ttl: &Duration,
    ) -> Result<SessionRecord, SerializerError> {
        Ok(SessionRecord::new_live(
            self.serializer.id(),
            ttl_secs(ttl),
            self.encode(state)?,
        ))
    }

    async fn save_new(&self, record: SessionRecord) -> Result<SessionKey, anyhow::Error> {
        let id = self.backend.new_id(None);
        let stored = self.backend.save(&id, &record).await?;
        Ok(SessionKey::try_from(stored.to_string())?)
    }
}

/// actix-session's TTL as a max inactive interval (at least one second; 0
/// would mean "never expires").
fn ttl_secs(ttl: &Duration) -> u32 {
    u32::try_from(ttl.whole_seconds().max(1)).unwrap_or(u32::MAX)
}

/// The session id in a key, or `None` for a key that is not one (a miss).
fn parse_key(key: &SessionKey) -> Option<SessionId> {
    SessionId::parse(key.as_ref()).ok()
}

impl SessionStore for BackendSessionStore {
    async fn load(&self, session_key: &SessionKey) -> Result<Option<SessionState>, LoadError> {
        let Some(id) = parse_key(session_key) else {
            return Ok(None);
        };
        let loaded = self
            .backend
            .load(&id)
            .await
            .map_err(|e| LoadError::Other(e.into()))?;
        let Some(loaded) = loaded else {
            return Ok(None);
        };
        match Self::decode(&loaded.record) {
            Ok(state) => Ok(Some(state)),
            Err(e) => {
                self.garbled.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}: stored session {id:?} is garbage, treated as a miss: {e}",
                    self.backend.name()
                );
                Ok(None)
            }
        }
    }

    async fn save(
        &self,
        session_state: SessionState,
        ttl: &Duration,
    ) -> Result<SessionKey, SaveError> {
        let record = self
            .record(&session_state, ttl)
            .map_err(|e| SaveError::Serialization(e.into()))?;
        self.save_new(record).await.map_err(SaveError::Other)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        session_state: SessionState,
        ttl: &Duration,
    ) -> Result<SessionKey, UpdateError> {
        let mut record = self
            .record(&session_state, ttl)
            .map_err(|e| UpdateError::Serialization(e.into()))?;
        let existing = match parse_key(&session_key) {
            Some(id) => self
                .backend
                .load(&id)
                .await
                .map_err(|e| UpdateError::Other(e.into()))?,
            None => None,
        };
        let Some(mut existing) = existing else {
            // Gone (expired, invalidated, evicted): start a new session, as
            // actix-session's own stores do.
            return self.save_new(record).await.map_err(UpdateError::Other);
        };
        // Supersede the stored copy: newer version, same creation time.
        record.version = existing.record.version.saturating_add(1);
        record.created_ms = existing.record.created_ms;
        let stored = match self
            .backend
            .save_seen(&existing.id, &record, &mut existing.seen)
            .await
        {
            Ok(id) => id,
            // Purged since the load above: start a new session, as when it was already gone.
            Err(StoreError::Invalidated) => {
                return self.save_new(record).await.map_err(UpdateError::Other)
            }
            Err(e) => return Err(UpdateError::Other(e.into())),
        };
        SessionKey::try_from(stored.to_string()).map_err(|e| UpdateError::Other(e.into()))
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        ttl: &Duration,
    ) -> Result<(), anyhow::Error> {
        let Some(id) = parse_key(session_key) else {
            return Ok(());
        };
        if let Some(mut loaded) = self.backend.load(&id).await? {
            loaded.record.max_inactive_secs = ttl_secs(ttl);
            loaded.record.last_access_ms = now_ms();
            self.backend.touch(&loaded.id, &loaded.record).await?;
        }
        Ok(())
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        if let Some(id) = parse_key(session_key) {
            self.backend.invalidate(&id, None).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use actix_session::{Session, SessionMiddleware};
    use actix_web::cookie::{Cookie, Key};
    use actix_web::{test, web, App, HttpResponse};

    use super::*;
    use crate::store::SessionBackend;

    fn key(s: &str) -> SessionKey {
        SessionKey::try_from(s.to_owned()).unwrap()
    }

    fn state(pairs: &[(&str, &str)]) -> SessionState {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const TTL: Duration = Duration::minutes(30);

    #[actix_rt::test]
    async fn saved_state_loads_back_with_every_serializer() {
        for kind in SerializerKind::ALL {
            let store = BackendSessionStore::in_memory().with_serializer(kind);
            let st = state(&[("user", "\"alice\""), ("cart", r#"[{"sku":"a1","qty":2}]"#)]);
            let k = store.save(st.clone(), &TTL).await.unwrap();
            // The key is a ferrocat session id placed by the backend.
            let id = SessionId::parse(k.as_ref()).unwrap();
            assert_eq!(id.node(), Some("local"));
            assert_eq!(store.load(&k).await.unwrap(), Some(st), "{kind}");
        }
    }

    #[actix_rt::test]
    async fn the_attribute_filter_stores_only_whole_name_matches() {
        let store = BackendSessionStore::in_memory()
            .with_attribute_filter("user|cart")
            .unwrap();
        let st = state(&[
            ("user", "\"alice\""),
            ("username", "\"x\""),
            ("cart", "[]"),
            ("csrf", "\"t\""),
        ]);
        let k = store.save(st, &TTL).await.unwrap();
        let want = state(&[("user", "\"alice\""), ("cart", "[]")]);
        assert_eq!(store.load(&k).await.unwrap(), Some(want));
        // An update is filtered the same way.
        let k = store
            .update(
                key(k.as_ref()),
                state(&[("user", "\"bob\""), ("tmp", "1")]),
                &TTL,
            )
            .await
            .unwrap();
        assert_eq!(
            store.load(&k).await.unwrap(),
            Some(state(&[("user", "\"bob\"")]))
        );
        assert!(BackendSessionStore::in_memory()
            .with_attribute_filter("(")
            .is_err());
        // Empty: everything is stored.
        let all = BackendSessionStore::in_memory()
            .with_attribute_filter("")
            .unwrap();
        let k = all.save(state(&[("a", "1")]), &TTL).await.unwrap();
        assert_eq!(all.load(&k).await.unwrap(), Some(state(&[("a", "1")])));
    }

    #[actix_rt::test]
    async fn update_keeps_the_key_and_supersedes_the_stored_copy() {
        let backend = Arc::new(MemoryStore::default());
        let store = BackendSessionStore::new(backend.clone());
        let k = store.save(state(&[("n", "1")]), &TTL).await.unwrap();
        let k2 = store
            .update(key(k.as_ref()), state(&[("n", "2")]), &TTL)
            .await
            .unwrap();
        assert_eq!(k2, k);
        assert_eq!(store.load(&k).await.unwrap(), Some(state(&[("n", "2")])));
        let id = SessionId::parse(k.as_ref()).unwrap();
        let rec = backend.load(&id).await.unwrap().unwrap().record;
        assert_eq!((rec.version, rec.max_inactive_secs), (2, 1800));
        store.update_ttl(&k, &Duration::seconds(60)).await.unwrap();
        assert!(store.load(&k).await.unwrap().is_some());
    }

    /// A backend whose sessions are purged right after each load (a logout landing between
    /// `update`'s load and its save).
    struct PurgedAfterLoad(MemoryStore);

    impl SessionBackend for PurgedAfterLoad {
        fn name(&self) -> &'static str {
            "purged-after-load"
        }
        fn new_id(&self, route: Option<&str>) -> SessionId {
            self.0.new_id(route)
        }
        fn load<'a>(
            &'a self,
            id: &'a SessionId,
        ) -> crate::store::StoreFuture<'a, Option<crate::store::Loaded>> {
            Box::pin(async move {
                let loaded = self.0.load(id).await?;
                self.0.invalidate(id, None).await?;
                Ok(loaded)
            })
        }
        fn save<'a>(
            &'a self,
            id: &'a SessionId,
            record: &'a SessionRecord,
        ) -> crate::store::StoreFuture<'a, SessionId> {
            self.0.save(id, record)
        }
        fn touch<'a>(
            &'a self,
            id: &'a SessionId,
            record: &'a SessionRecord,
        ) -> crate::store::StoreFuture<'a, ()> {
            self.0.touch(id, record)
        }
        fn invalidate<'a>(
            &'a self,
            id: &'a SessionId,
            last: Option<&'a SessionRecord>,
        ) -> crate::store::StoreFuture<'a, ()> {
            self.0.invalidate(id, last)
        }
        fn try_lock<'a>(
            &'a self,
            id: &'a SessionId,
            expiration: std::time::Duration,
        ) -> crate::store::StoreFuture<'a, bool> {
            self.0.try_lock(id, expiration)
        }
        fn unlock<'a>(&'a self, id: &'a SessionId) -> crate::store::StoreFuture<'a, ()> {
            self.0.unlock(id)
        }
    }

    #[actix_rt::test]
    async fn update_of_a_session_purged_meanwhile_starts_a_new_one() {
        let backend = Arc::new(PurgedAfterLoad(MemoryStore::default()));
        let store = BackendSessionStore::new(backend.clone());
        let old = backend.new_id(None);
        backend
            .save(&old, &SessionRecord::new_live(0, 60, Vec::new()))
            .await
            .unwrap();
        let k = store
            .update(key(&old.to_string()), state(&[("a", "1")]), &TTL)
            .await
            .expect("a new session, not an error");
        assert_ne!(k.as_ref(), old.to_string());
        // The purged one stays purged.
        assert!(backend.0.load(&old).await.unwrap().is_none());
    }

    #[actix_rt::test]
    async fn update_of_a_vanished_session_starts_a_new_one() {
        let store = BackendSessionStore::in_memory();
        let gone = store.backend().new_id(None).to_string();
        let k = store
            .update(key(&gone), state(&[("a", "1")]), &TTL)
            .await
            .unwrap();
        assert_ne!(k.as_ref(), gone);
        assert_eq!(store.load(&k).await.unwrap(), Some(state(&[("a", "1")])));
    }

    #[actix_rt::test]
    async fn unknown_or_garbled_keys_and_payloads_are_misses() {
        let backend = Arc::new(MemoryStore::default());
        let store = BackendSessionStore::new(backend.clone());
        for bad in [
            "",
            "nope",
            "../etc/passwd",
            "0123456789abcdef0123456789abcdef-n1\r\nset",
        ] {
            assert_eq!(store.load(&key(bad)).await.unwrap(), None);
            store.delete(&key(bad)).await.unwrap();
            store.update_ttl(&key(bad), &TTL).await.unwrap();
        }
        let absent = backend.new_id(None).to_string();
        assert_eq!(store.load(&key(&absent)).await.unwrap(), None);
        // Records the store cannot decode: unknown serializer id, garbage payload.
        for (ser, payload) in [(99u8, b"{}".to_vec()), (4, b"\xff\x00garbage".to_vec())] {
            let id = backend.new_id(None);
            let rec = SessionRecord::new_live(ser, 60, payload);
            backend.save(&id, &rec).await.unwrap();
            assert_eq!(store.load(&key(&id.to_string())).await.unwrap(), None);
        }
        assert_eq!(store.garbled(), 2);
    }

    #[actix_rt::test]
    async fn delete_invalidates_in_the_backend() {
        let backend = Arc::new(MemoryStore::default());
        let store = BackendSessionStore::new(backend.clone());
        let k = store.save(state(&[("a", "1")]), &TTL).await.unwrap();
        assert_eq!(backend.len(), 1);
        store.delete(&k).await.unwrap();
        assert_eq!(backend.len(), 0);
        assert_eq!(store.load(&k).await.unwrap(), None);
    }

    async fn incr(session: Session) -> actix_web::Result<HttpResponse> {
        let n = session.get::<u32>("n")?.unwrap_or(0) + 1;
        session.insert("n", n)?;
        Ok(HttpResponse::Ok().body(n.to_string()))
    }

    async fn logout(session: Session) -> HttpResponse {
        session.purge();
        HttpResponse::Ok().finish()
    }

    #[actix_rt::test]
    async fn actix_session_middleware_keeps_state_across_requests_and_purges() {
        let backend = Arc::new(MemoryStore::default());
        let app = test::init_service(
            App::new()
                .wrap(
                    SessionMiddleware::builder(
                        BackendSessionStore::new(backend.clone()),
                        Key::generate(),
                    )
                    .cookie_secure(false)
                    .build(),
                )
                .route("/incr", web::post().to(incr))
                .route("/logout", web::post().to(logout)),
        )
        .await;

        let mut cookie: Option<Cookie<'static>> = None;
        for expect in 1..=3 {
            let mut req = test::TestRequest::post().uri("/incr");
            if let Some(c) = &cookie {
                req = req.cookie(c.clone());
            }
            let resp = test::call_service(&app, req.to_request()).await;
            assert!(resp.status().is_success());
            if let Some(c) = resp.response().cookies().next() {
                cookie = Some(c.into_owned());
            }
            assert_eq!(test::read_body(resp).await, expect.to_string());
        }
        assert_eq!(backend.len(), 1, "one session in the backend");

        let old = cookie.clone().unwrap();
        let req = test::TestRequest::post().uri("/logout").cookie(old.clone());
        let resp = test::call_service(&app, req.to_request()).await;
        assert!(resp.status().is_success());
        assert_eq!(
            backend.len(),
            0,
            "purge deleted the session from the backend"
        );

        // The old cookie now starts a fresh session.
        let req = test::TestRequest::post().uri("/incr").cookie(old);
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(test::read_body(resp).await, "1");
    }
}
