//! The [`Session`] extractor: what application code uses, whatever the mode.
//!
//! The middleware loads the session before the handler runs and stores it in
//! the request's extensions as an `Rc<RefCell<SessionState>>` (per-worker
//! state, never shared across threads); the handler reads and changes it
//! through [`Session`]; the middleware persists it after the handler.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::serializer::SerializerKind;

/// Errors from reading or writing attributes.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The value could not be encoded or decoded with the session's serializer.
    #[error("session attribute {key:?}: {reason}")]
    Attribute {
        /// attribute name
        key: String,
        /// what went wrong
        reason: String,
    },
}

impl actix_web::ResponseError for SessionError {}

/// Per-request session state, owned by the middleware.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Current id; `None` until the session exists.
    pub id: Option<SessionId>,
    /// Attribute name -> value encoded with `serializer`.
    pub attrs: BTreeMap<String, Vec<u8>>,
    /// The record this request loaded (version, timestamps), if any.
    pub record: Option<SessionRecord>,
    /// Hash of the loaded payload (unchanged sessions are not rewritten).
    pub loaded_hash: Option<u64>,
    /// How long the stored copies still live, if the store said so on load.
    pub expires_in: Option<std::time::Duration>,
    /// What the load saw of the stored copies, for the save.
    pub seen: crate::store::Seen,
    /// Sticky mode: when the store last confirmed the loaded copy (unix ms).
    pub confirmed_ms: u64,
    /// Serializer of the attribute values.
    pub serializer: SerializerKind,
    /// An attribute was inserted or removed.
    pub dirty: bool,
    /// `renew()` was called: new id on the way out.
    pub renew: bool,
    /// `invalidate()` was called.
    pub invalidate: bool,
    /// The request is outside session handling (ignore pattern).
    pub detached: bool,
    /// `set_max_inactive_interval` was called: the session's new interval (seconds, 0 = never
    /// expires).
    pub max_inactive: Option<u32>,
    /// The configured `max_inactive_interval` (seconds), for sessions that set none.
    pub default_max_inactive: u32,
}

impl SessionState {
    /// The interval the session is stored with: set this request, else the one it was
    /// stored with, else the configured one (a new session).
    pub(crate) fn max_inactive_secs(&self) -> u32 {
        self.max_inactive
            .or_else(|| self.record.as_ref().map(|r| r.max_inactive_secs))
            .unwrap_or(self.default_max_inactive)
    }
}

/// The current request's session.
#[derive(Clone)]
pub struct Session(pub(crate) Rc<RefCell<SessionState>>);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Session").field(&self.0.borrow().id).finish()
    }
}

impl Session {
    /// Reads an attribute.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let st = self.0.borrow();
        match st.attrs.get(key) {
            None => Ok(None),
            Some(bytes) => {
                st.serializer
                    .decode_value(bytes)
                    .map(Some)
                    .map_err(|e| SessionError::Attribute {
                        key: key.to_owned(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Sets an attribute.
    pub fn insert<T: Serialize + ?Sized>(
        &self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), SessionError> {
        let key = key.into();
        let mut st = self.0.borrow_mut();
        let bytes = st
            .serializer
            .encode_value(value)
            .map_err(|e| SessionError::Attribute {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        st.attrs.insert(key, bytes);
        st.dirty = true;
        Ok(())
    }

    /// Removes an attribute.
    pub fn remove(&self, key: &str) {
        let mut st = self.0.borrow_mut();
        if st.attrs.remove(key).is_some() {
            st.dirty = true;
        }
    }

    /// Removes every attribute.
    pub fn clear(&self) {
        let mut st = self.0.borrow_mut();
        if !st.attrs.is_empty() {
            st.attrs.clear();
            st.dirty = true;
        }
    }

    /// Attribute names.
    pub fn keys(&self) -> Vec<String> {
        self.0.borrow().attrs.keys().cloned().collect()
    }

    /// Gives the session a new id at the end of this request, keeping its
    /// attributes (call on login: no session fixation). The old id stops working.
    pub fn renew(&self) {
        let mut st = self.0.borrow_mut();
        st.renew = true;
        st.dirty = true;
    }

    /// Ends the session: its copies are invalidated and the cookie removed.
    pub fn invalidate(&self) {
        let mut st = self.0.borrow_mut();
        st.invalidate = true;
        st.attrs.clear();
    }

    /// Sets how long this session lives without a request (Tomcat's
    /// `setMaxInactiveInterval`), instead of the configured
    /// `max_inactive_interval`: e.g. longer after "remember me", shorter for an
    /// admin. The session keeps it from then on, on every app node. Whole seconds,
    /// rounded up; zero: the session never expires (it stays until logout, or until
    /// memcached evicts it).
    pub fn set_max_inactive_interval(&self, interval: std::time::Duration) {
        let secs = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
        let mut st = self.0.borrow_mut();
        st.max_inactive = Some(u32::try_from(secs).unwrap_or(u32::MAX));
        st.dirty = true;
    }

    /// How long this session lives without a request (see
    /// [`Session::set_max_inactive_interval`]); zero: it never expires.
    pub fn max_inactive_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0.borrow().max_inactive_secs().into())
    }

    /// The session id (without the cookie signature), if the session exists.
    pub fn id(&self) -> Option<String> {
        self.0.borrow().id.as_ref().map(ToString::to_string)
    }

    /// True when the request runs without session handling (ignore pattern or
    /// no session middleware): changes are not stored.
    pub fn is_detached(&self) -> bool {
        self.0.borrow().detached
    }
}

impl FromRequest for Session {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Session, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let s = req
            .extensions()
            .get::<Session>()
            .cloned()
            .unwrap_or_else(|| {
                Session(Rc::new(RefCell::new(SessionState {
                    detached: true,
                    ..Default::default()
                })))
            });
        std::future::ready(Ok(s))
    }
}
