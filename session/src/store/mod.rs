//! Session backends: one trait, one file per implementation.
//!
//! * [`memory::MemoryStore`]: the in-process store, the embedded default.
//! * `memcached::ReplicatedMemcachedStore`: named memcached nodes, every session
//!   on a primary and a backup node.
//!
//! The manager talks to a backend only through [`SessionBackend`]; records are
//! [`SessionRecord`]s (header + opaque payload), so backends never need to know
//! the serializer. Futures are boxed so a backend can be used as
//! `Arc<dyn SessionBackend>`.

pub mod memcached;
pub mod memory;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::id::SessionId;
use crate::record::SessionRecord;

/// What a backend future resolves to.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A store error: where it came from and whether another node may succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No node could serve the operation.
    #[error("{backend}: no node available for {op}")]
    Unavailable {
        /// backend name
        backend: &'static str,
        /// operation
        op: &'static str,
    },
    /// A node did not answer within `operation_timeout`.
    #[error("node {node}: {op} timed out")]
    Timeout {
        /// node id
        node: String,
        /// operation
        op: &'static str,
    },
    /// A node failed (connection refused/reset, protocol error, ...).
    #[error("node {node}: {op} failed: {reason}")]
    Node {
        /// node id
        node: String,
        /// operation
        op: &'static str,
        /// what happened
        reason: String,
    },
    /// The session was invalidated (logged out) after this request loaded
    /// it: the save was refused and no live copy was written.
    #[error("session invalidated meanwhile; the save was refused")]
    Invalidated,
}

impl StoreError {
    /// True when the same operation on another node may succeed (failover).
    pub fn retry_elsewhere(&self) -> bool {
        matches!(self, StoreError::Timeout { .. } | StoreError::Node { .. })
    }
}

/// A session as loaded from a backend.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The id the session lives under now. It differs from the requested id
    /// when the backend relocated the session (primary down) or followed a
    /// moved marker; the caller must then send a new cookie.
    pub id: SessionId,
    /// The newest live copy.
    pub record: SessionRecord,
    /// How long the stored copies still live, when the backend can tell (the
    /// shortest remaining lifetime of the current copies); `None` when it
    /// cannot. The manager refreshes an unchanged session's expiry only when
    /// a quarter of its max inactive interval has passed since the last
    /// refresh, and without this it can only go by the last write.
    pub expires_in: Option<std::time::Duration>,
    /// What the load saw of the stored copies, for the save that follows
    /// ([`SessionBackend::save_seen`]).
    pub seen: Seen,
}

/// What [`SessionBackend::revalidate`] found.
#[derive(Debug)]
pub enum Revalidated {
    /// The store holds the cached copy (or an older one, which the next save
    /// replaces); `Seen` is what was read, for that save.
    Current(Seen),
    /// The store holds a newer copy, or the session moved to another id: use
    /// this instead of the cached copy.
    Newer(Loaded),
    /// The session was invalidated (logged out): the cached copy must not be
    /// served again.
    LoggedOut,
    /// The store cannot tell (no copy found, or no node answered): the
    /// cached copy stands.
    Unknown,
}

/// What a load saw of a session's stored copies (for memcached: each copy's
/// location and CAS value, or that it was missing), handed to the save that
/// follows so that the save cannot overwrite a logout that happened in
/// between. Opaque to the manager; the default means "nothing seen" and
/// makes a save write as [`SessionBackend::save`] does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Primary, then backup.
    pub(crate) copies: [Option<SeenCopy>; 2],
}

/// One copy as a load saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeenCopy {
    /// Node index.
    pub(crate) node: usize,
    /// CAS value of the copy read; `None` when it was missing.
    pub(crate) cas: Option<u64>,
}

/// A session backend. Implementations are shared by all actix workers.
pub trait SessionBackend: Send + Sync + 'static {
    /// Short name for logs and errors (`memory`, `memcached`).
    fn name(&self) -> &'static str;

    /// An id for a new session: the backend picks its primary node (a random
    /// live node) and writes it into the id. `route` is the app node's route
    /// (sticky mode) or `None`.
    fn new_id(&self, route: Option<&str>) -> SessionId;

    /// The newest live copy of a session, or `None` when it does not exist,
    /// expired, was invalidated, or only garbage was found.
    fn load<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, Option<Loaded>>;

    /// Stores `record` (primary and backup). Returns the id the session is
    /// stored under, which differs from `id` after a relocation.
    fn save<'a>(
        &'a self,
        id: &'a SessionId,
        record: &'a SessionRecord,
    ) -> StoreFuture<'a, SessionId>;

    /// [`SessionBackend::save`] for a session this request loaded: `seen` is
    /// what that load saw. A backend that can tell refuses to write over a
    /// copy that became a tombstone since (the session was invalidated by a
    /// concurrent request or another app node) and fails with
    /// [`StoreError::Invalidated`]; a live copy written meanwhile is
    /// overwritten as by `save` (last write wins, as without locking).
    ///
    /// On success `seen` becomes what this save wrote (for memcached: the
    /// CAS value of each copy), so that the next save of a session kept in
    /// memory (sticky mode) is conditional too without reading first; the
    /// default when the backend cannot tell.
    fn save_seen<'a>(
        &'a self,
        id: &'a SessionId,
        record: &'a SessionRecord,
        seen: &'a mut Seen,
    ) -> StoreFuture<'a, SessionId> {
        Box::pin(async move {
            let stored = self.save(id, record).await?;
            *seen = Seen::default();
            Ok(stored)
        })
    }

    /// Sticky mode: what the store holds now of a session this app node
    /// keeps in memory (`cached` is the node's copy). Another app node may
    /// have taken the session over (failover) and changed or invalidated it.
    /// The default answers [`Revalidated::Unknown`]: the cached copy stands.
    fn revalidate<'a>(
        &'a self,
        id: &'a SessionId,
        cached: &'a SessionRecord,
    ) -> StoreFuture<'a, Revalidated> {
        let _ = (id, cached);
        Box::pin(async { Ok(Revalidated::Unknown) })
    }

    /// Refreshes the expiry of an unchanged session without rewriting it.
    fn touch<'a>(&'a self, id: &'a SessionId, record: &'a SessionRecord) -> StoreFuture<'a, ()>;

    /// Invalidates a session for good: no copy of it may ever be loaded again,
    /// also from a node that was unreachable now and returns later. `last` is
    /// the newest record the caller knows, if any. Also removes the lock.
    fn invalidate<'a>(
        &'a self,
        id: &'a SessionId,
        last: Option<&'a SessionRecord>,
    ) -> StoreFuture<'a, ()>;

    /// Tries once to take the session's lock (`lock:<key>`, add-if-absent with
    /// `expiration`). `Ok(true)` when this caller now holds it.
    fn try_lock<'a>(&'a self, id: &'a SessionId, expiration: Duration) -> StoreFuture<'a, bool>;

    /// Releases the session's lock.
    fn unlock<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()>;
}
