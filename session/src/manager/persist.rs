//! The persistence actor: stores sessions when `session_backup_async = true`.
//!
//! The middleware sends one [`Persist`] message per changed session and the
//! response leaves at once; the actor runs the store on its own arbiter,
//! counts the outcome, then releases the session's store lock and the
//! in-process lock it was handed, so a following request of the same session
//! never reads an older copy than the one being written.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, AsyncContext, Context, Handler, Message};

use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::stats::Stats;
use crate::store::{Seen, SessionBackend, StoreError};

/// Store `record` under `id`, then release the locks held for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    /// Where to store.
    pub id: SessionId,
    /// What to store.
    pub record: SessionRecord,
    /// Unlock the store lock afterwards.
    pub unlock: bool,
    /// The in-process lock, dropped when the store is done.
    pub local_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// What the request's load saw (see [`SessionBackend::save_seen`]).
    pub seen: Seen,
    /// Sticky mode: a landed save confirms the cached copy (see
    /// [`super::note_saved`]).
    pub confirm: bool,
    /// Counts this write until it ended ([`super::SessionManager::drain`]).
    pub(crate) pending: Option<super::PendingWrite>,
}

/// Owns asynchronous session persistence.
pub struct Persister {
    backend: Arc<dyn SessionBackend>,
    stats: Arc<Stats>,
    cache: Option<super::Cache>,
}

impl Persister {
    /// A persister over `backend`; `cache` is the sticky cache, if any.
    pub(crate) fn new(
        backend: Arc<dyn SessionBackend>,
        stats: Arc<Stats>,
        cache: Option<super::Cache>,
    ) -> Self {
        Persister {
            backend,
            stats,
            cache,
        }
    }
}

impl Actor for Persister {
    type Context = Context<Self>;
}

impl Handler<Persist> for Persister {
    type Result = ();

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) {
        let backend = self.backend.clone();
        let stats = self.stats.clone();
        let cache = self.cache.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut msg = msg;
            let started = Instant::now();
            match backend.save_seen(&msg.id, &msg.record, &mut msg.seen).await {
                Ok(_) => {
                    stats.backups.fetch_add(1, Relaxed);
                    stats.store.record(started.elapsed());
                    if let Some(cache) = &cache {
                        let written = std::mem::take(&mut msg.seen);
                        super::note_saved(cache, &msg.id, &msg.record, written, msg.confirm);
                    }
                }
                Err(StoreError::Invalidated) => {
                    stats.saves_refused_after_logout.fetch_add(1, Relaxed);
                    if let Some(cache) = &cache {
                        super::note_refused(cache, &msg.id, &msg.record);
                    }
                    log::info!("session {:?} was invalidated meanwhile; not saved", msg.id);
                }
                Err(e) => {
                    stats.backup_failures.fetch_add(1, Relaxed);
                    log::warn!("async session backup failed: {e}");
                }
            }
            if msg.unlock {
                if let Err(e) = backend.unlock(&msg.id).await {
                    log::debug!("unlock after async backup failed: {e}");
                }
            }
            drop(msg.local_guard);
            drop(msg.pending);
        }));
    }
}
