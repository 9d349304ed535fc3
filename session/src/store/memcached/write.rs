//! Writing a session: save, touch, invalidate, locks, degraded flush.
//!
//! * `save`: primary and backup written concurrently (expiry = the record's
//!   max inactive interval). A failed backup goes to the next rendezvous
//!   node. A failed or down primary relocates the session (same random part,
//!   first usable rendezvous node), leaves a moved marker at the old backup
//!   location and returns the new id. A write that reaches no node is parked
//!   in memory (degraded mode).
//! * `touch`: refreshes both copies' expiry; a copy found missing is added
//!   from the caller's record.
//! * `invalidate`: writes a tombstone (version at least
//!   [`TOMBSTONE_VERSION`], above any live write) to both copy locations
//!   instead of deleting, so a node that missed the logout and returns with
//!   its old copy never resurrects the session; removes the lock.
//! * locks: `lock:<key>` added if absent, with expiry, on the primary (the
//!   backup node when the primary is down or fails).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use ferrocat_memcached::{SetMode, StoreStatus};

use super::inner::{backup_key, lock_key, ttl_for, Core, Stored};
use crate::id::SessionId;
use crate::record::{now_ms, RecordKind, SessionRecord, HEADER_LEN};
use crate::store::{Seen, SeenCopy, StoreError};

/// Lowest version of a tombstone: far above any count of writes, so no live
/// copy written before or racing with the logout can supersede it.
pub const TOMBSTONE_VERSION: u64 = 1 << 62;

/// Where a save landed.
enum Placed {
    /// Under this id (a new one after a relocation); what was written
    /// where (see [`SessionBackend::save_seen`](crate::store::SessionBackend::save_seen)).
    At(SessionId, Seen),
    /// No node took it.
    Nowhere,
    /// The session was invalidated since the load; nothing live written.
    Refused,
}

/// What a write to one copy location did.
enum Landed {
    Written,
    /// The copy is a tombstone (the one found; boxed, it is rare).
    Refused(Box<SessionRecord>),
}

impl Seen {
    /// How to write copy `which` (0 primary, 1 backup) on `node`: with the
    /// CAS value the load saw there, add-if-absent where it saw nothing, and
    /// unconditionally where it did not look (another node, no load).
    fn mode(&self, which: usize, node: usize) -> SetMode {
        match self.copies[which] {
            Some(SeenCopy {
                node: n,
                cas: Some(cas),
            }) if n == node => SetMode::Cas(cas),
            Some(SeenCopy { node: n, cas: None }) if n == node => SetMode::Add,
            _ => SetMode::Set,
        }
    }
}

fn bump(n: &std::sync::atomic::AtomicU64) {
    n.fetch_add(1, Relaxed);
}

/// memcached expiry for a lock.
fn lock_ttl(expiration: Duration) -> u32 {
    let secs = expiration.as_secs() + u64::from(expiration.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

impl Core {
    /// `SessionBackend::new_id`.
    pub(crate) fn new_id(&self, route: Option<&str>) -> SessionId {
        let snap = self.health.load();
        let node = self.placement.new_primary(|i| snap.usable(i));
        SessionId::generate(Some(self.node_id(node)), route)
    }

    /// `SessionBackend::save`.
    pub(crate) async fn save(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
    ) -> Result<SessionId, StoreError> {
        self.save_seen(id, rec, &mut Seen::default()).await
    }

    /// `SessionBackend::save_seen`: a copy the load saw is written with its
    /// CAS value (a missing one add-if-absent), so a logout's tombstone
    /// written in between is noticed instead of overwritten. On success
    /// `seen` becomes what this save wrote.
    pub(crate) async fn save_seen(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
        seen: &mut Seen,
    ) -> Result<SessionId, StoreError> {
        let max = self.clients[0].options().max_value_size;
        let size = HEADER_LEN + rec.payload.len();
        if size > max {
            // No node will take it: an error for the caller, not a failover.
            return Err(StoreError::Node {
                node: id.node().unwrap_or("?").to_owned(),
                op: "set",
                reason: format!("session of {size} bytes exceeds the {max} byte item limit"),
            });
        }
        if !self.health.load().all_down() {
            match self.place(id, rec, seen).await {
                Placed::At(at, written) => {
                    self.degraded.drop_pending(id);
                    self.degraded.drop_pending(&at);
                    *seen = written;
                    return Ok(at.with_route(id.route()));
                }
                Placed::Refused => return Err(StoreError::Invalidated),
                Placed::Nowhere => {}
            }
            bump(&self.stats.backup_failures);
        }
        bump(&self.stats.degraded_operations);
        Box::pin(self.degraded.park(id, rec)).await;
        *seen = Seen::default();
        Ok(id.clone())
    }

    /// Writes `rec` to memcached; the id it landed under, or `None` when no
    /// node took it.
    pub(crate) async fn save_to_nodes(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
    ) -> Option<SessionId> {
        match self.place(id, rec, &Seen::default()).await {
            Placed::At(at, _) => Some(at),
            Placed::Refused | Placed::Nowhere => None,
        }
    }

    /// Writes `rec` to memcached (see [`Core::save_seen`] for `seen`).
    async fn place(&self, id: &SessionId, rec: &SessionRecord, seen: &Seen) -> Placed {
        // Borrowed, not a route-less copy: the future stays small (the key
        // and the copy locations do not depend on the route).
        if !rec.is_live() {
            return match Box::pin(self.write_tombstone(id, rec)).await {
                true => Placed::At(id.with_route(None), Seen::default()),
                false => Placed::Nowhere,
            };
        }
        let snap = self.health.load_full();
        let p = id.node().and_then(|n| self.placement.index(n));
        if let Some(p) = p {
            if snap.usable(p) {
                let key = id.key();
                let bkey = backup_key(&key);
                let b = self
                    .placement
                    .first_usable(id.random(), &[p], |i| snap.usable(i));
                // One encoding for both copies (they share the buffer).
                let value = bytes::Bytes::from(rec.encode());
                let ttl = ttl_for(rec.max_inactive_secs);
                // The CAS values the copies got, for `written` below; 0 for
                // a copy not written here.
                let (mut pcas, mut bcas) = (0u64, 0u64);
                let (pw, bw) = futures::join!(
                    self.write_encoded_cas(p, &key, value.clone(), seen.mode(0, p), ttl, &mut pcas),
                    async {
                        match b {
                            Some(b) => Some(
                                self.write_encoded_cas(
                                    b,
                                    &bkey,
                                    value,
                                    seen.mode(1, b),
                                    ttl,
                                    &mut bcas,
                                )
                                .await,
                            ),
                            None => None,
                        }
                    }
                );
                // A conditional write that did not land (the copy changed
                // since the load) is settled apart: rare, and boxed so this
                // future stays small.
                let conflict = |r: &Result<StoreStatus, StoreError>| matches!(r, Ok(s) if *s != StoreStatus::Stored);
                let (pw, bw) = if conflict(&pw) || bw.as_ref().is_some_and(conflict) {
                    match Box::pin(self.settle_both(
                        id,
                        (p, &key, pw),
                        b.map(|b| (b, bkey.as_str())),
                        bw,
                        rec,
                    ))
                    .await
                    {
                        Some(settled) => settled,
                        None => return Placed::Refused,
                    }
                } else {
                    (pw.map(drop), bw.map(|r| r.map(drop)))
                };
                if pw.is_ok() {
                    let backed_up = match (b, bw) {
                        (Some(b), Some(Err(_))) => {
                            Box::pin(self.backup_elsewhere(id, &[p, b], &bkey, rec)).await
                        }
                        (_, bw) => bw.is_some(),
                    };
                    self.count_backup(backed_up);
                    // What this save left in memcached, for the next save of
                    // a session the caller keeps in memory (sticky).
                    let copy = |node: usize, cas: u64| {
                        (cas != 0).then_some(SeenCopy {
                            node,
                            cas: Some(cas),
                        })
                    };
                    let written = Seen {
                        copies: [copy(p, pcas), b.and_then(|b| copy(b, bcas))],
                    };
                    return Placed::At(id.with_route(None), written);
                }
            }
        }
        // The primary is down or failed: relocate (boxed: the rare path keeps
        // the common path's future small).
        let exclude = p.into_iter().collect();
        let id = id.with_route(None);
        match Box::pin(self.relocate_on_save(&id, p, exclude, rec)).await {
            Some(at) => Placed::At(at, Seen::default()),
            None => Placed::Nowhere,
        }
    }

    /// Settles the conditional writes of a save that did not land; `None`
    /// when a copy turned out to be a tombstone (the session was invalidated:
    /// the tombstone then goes to both copies, so no copy of this write
    /// stays live).
    #[allow(clippy::type_complexity)]
    async fn settle_both(
        &self,
        id: &SessionId,
        (p, key, pw): (usize, &str, Result<StoreStatus, StoreError>),
        backup: Option<(usize, &str)>,
        bw: Option<Result<StoreStatus, StoreError>>,
        rec: &SessionRecord,
    ) -> Option<(Result<(), StoreError>, Option<Result<(), StoreError>>)> {
        let pw = match pw {
            Ok(StoreStatus::Stored) => Ok(Landed::Written),
            Ok(_) => self.settle(p, key, rec).await,
            Err(e) => Err(e),
        };
        let bw = match (backup, bw) {
            (_, Some(Ok(StoreStatus::Stored))) => Some(Ok(Landed::Written)),
            (Some((b, bkey)), Some(Ok(_))) => Some(self.settle(b, bkey, rec).await),
            (_, Some(Err(e))) => Some(Err(e)),
            (None, _) | (_, None) => None,
        };
        let refused = match (&pw, &bw) {
            (Ok(Landed::Refused(t)), _) | (_, Some(Ok(Landed::Refused(t)))) => Some(t),
            _ => None,
        };
        if let Some(tomb) = refused {
            self.write_tombstone(id, tomb).await;
            return None;
        }
        Some((pw.map(drop), bw.map(|r| r.map(drop))))
    }

    /// A conditional write of `rec` to `key` on `node` found the copy
    /// changed since the load: read it again. A tombstone refuses the write
    /// (the session was invalidated); a live copy written meanwhile is
    /// replaced (last write wins, as without locking), with CAS so that a
    /// tombstone arriving now is still noticed.
    async fn settle(
        &self,
        node: usize,
        key: &str,
        rec: &SessionRecord,
    ) -> Result<Landed, StoreError> {
        for _ in 0..3 {
            let mode = match self.read(node, key).await? {
                Stored::Record { rec: found, .. } if found.kind == RecordKind::Deleted => {
                    return Ok(Landed::Refused(Box::new(found)));
                }
                Stored::Record { cas, .. } | Stored::Garbage { cas } => SetMode::Cas(cas),
                Stored::Missing => SetMode::Add,
            };
            if self.write(node, key, rec, mode).await? == StoreStatus::Stored {
                return Ok(Landed::Written);
            }
        }
        // Still racing with other writers after three rounds: write as a
        // save without a load does.
        self.write(node, key, rec, SetMode::Set).await?;
        Ok(Landed::Written)
    }

    /// `save_to_nodes` when the primary is down or failed: writes the session
    /// under a new primary and leaves a moved marker at the old backup.
    async fn relocate_on_save(
        &self,
        id: &SessionId,
        p: Option<usize>,
        mut exclude: Vec<usize>,
        rec: &SessionRecord,
    ) -> Option<SessionId> {
        let snap = self.health.load_full();
        for _ in 0..2 {
            let t = self
                .placement
                .first_usable(id.random(), &exclude, |i| snap.usable(i))?;
            let new = id.with_node(Some(self.node_id(t)));
            let nkey = new.key();
            let nbkey = backup_key(&nkey);
            let mut skip = exclude.clone();
            skip.push(t);
            let nb = self
                .placement
                .first_usable(id.random(), &skip, |i| snap.usable(i));
            let (tw, bw) = futures::join!(self.write(t, &nkey, rec, SetMode::Set), async {
                match nb {
                    Some(nb) => self.write(nb, &nbkey, rec, SetMode::Set).await.is_ok(),
                    None => false,
                }
            });
            if tw.is_err() {
                exclude.push(t);
                continue;
            }
            self.count_backup(bw);
            bump(&self.stats.memcached_failovers);
            if let Some(p) = p {
                // Requests still carrying the old id follow this marker.
                let ob = self
                    .placement
                    .first_usable(id.random(), &[p], |i| snap.usable(i));
                if let Some(ob) = ob {
                    let marker = rec.moved_to(&new.to_string());
                    let _ = self
                        .write(ob, &backup_key(&id.key()), &marker, SetMode::Set)
                        .await;
                }
            }
            log::debug!(
                "session {id:?} relocated on save from {} to {}",
                id.node().unwrap_or("?"),
                self.node_id(t)
            );
            return Some(new);
        }
        None
    }

    async fn backup_elsewhere(
        &self,
        id: &SessionId,
        skip: &[usize],
        bkey: &str,
        rec: &SessionRecord,
    ) -> bool {
        let snap = self.health.load_full();
        match self
            .placement
            .first_usable(id.random(), skip, |i| snap.usable(i))
        {
            Some(n) => self.write(n, bkey, rec, SetMode::Set).await.is_ok(),
            None => false,
        }
    }

    /// The manager counts saves (`backups`); the store counts the saves
    /// that found no node for the backup copy.
    fn count_backup(&self, backed_up: bool) {
        if !backed_up && self.placement.len() > 1 {
            bump(&self.stats.backup_failures);
        }
    }

    /// The nodes holding `id`'s copies now: primary (if usable) and backup.
    fn copy_locations(&self, id: &SessionId) -> Vec<(usize, String)> {
        let snap = self.health.load();
        let key = id.key();
        let p = id.node().and_then(|n| self.placement.index(n));
        let mut out = Vec::with_capacity(2);
        if let Some(p) = p.filter(|&p| snap.usable(p)) {
            out.push((p, key.clone()));
        }
        let exclude: Vec<usize> = p.into_iter().collect();
        if let Some(b) = self
            .placement
            .first_usable(id.random(), &exclude, |i| snap.usable(i))
        {
            out.push((b, backup_key(&key)));
        }
        out
    }

    /// `SessionBackend::touch`.
    pub(crate) async fn touch(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
    ) -> Result<(), StoreError> {
        if self.health.load().all_down() {
            bump(&self.stats.degraded_operations);
            Box::pin(self.degraded.touch(id, rec)).await;
            return Ok(());
        }
        let ttl = ttl_for(rec.max_inactive_secs);
        let locs = self.copy_locations(id);
        let results =
            futures::future::join_all(locs.iter().map(|(n, k)| self.touch_key(*n, k, ttl))).await;
        let mut any = false;
        for ((n, k), r) in locs.iter().zip(results) {
            match r {
                Ok(true) => any = true,
                Ok(false) => {
                    // The copy is gone (node restarted empty): put it back.
                    if let Ok(StoreStatus::Stored) = self.write(*n, k, rec, SetMode::Add).await {
                        bump(&self.stats.repairs);
                        any = true;
                    }
                }
                Err(_) => {}
            }
        }
        if !any {
            bump(&self.stats.degraded_operations);
            Box::pin(self.degraded.park(id, rec)).await;
        }
        Ok(())
    }

    /// `SessionBackend::invalidate`.
    pub(crate) async fn invalidate(
        &self,
        id: &SessionId,
        last: Option<&SessionRecord>,
    ) -> Result<(), StoreError> {
        let base = match last {
            Some(r) => Some(r.clone()),
            None if !self.health.load().all_down() => self.newest_copy(id).await,
            None => None,
        };
        let mut tomb = match base {
            Some(r) => r.tombstone(),
            None => SessionRecord {
                kind: RecordKind::Deleted,
                serializer: 0,
                version: 0,
                created_ms: now_ms(),
                last_access_ms: now_ms(),
                max_inactive_secs: self.cfg.default_max_inactive_secs,
                payload: Vec::new(),
            },
        };
        tomb.version = tomb.version.max(TOMBSTONE_VERSION);
        let id = id.with_route(None);
        if self.health.load().all_down() {
            bump(&self.stats.degraded_operations);
            self.degraded.park(&id, &tomb).await;
            self.degraded.unlock(&id).await;
            return Ok(());
        }
        // Tombstones and lock removal at once: a frozen node costs one timeout.
        let lock = lock_key(&id.key());
        let unlocks = futures::future::join_all(
            self.lock_nodes(&id)
                .into_iter()
                .map(|n| self.delete_key(n, &lock)),
        );
        let (written, _) = futures::join!(self.write_tombstone(&id, &tomb), unlocks);
        if written {
            self.degraded.drop_pending(&id);
        } else {
            bump(&self.stats.degraded_operations);
            self.degraded.park(&id, &tomb).await;
        }
        Ok(())
    }

    /// Writes a tombstone to both copy locations; true when one took it.
    async fn write_tombstone(&self, id: &SessionId, tomb: &SessionRecord) -> bool {
        let locs = self.copy_locations(id);
        let results = futures::future::join_all(
            locs.iter()
                .map(|(n, k)| self.write(*n, k, tomb, SetMode::Set)),
        )
        .await;
        results.iter().any(Result::is_ok)
    }

    /// Where `id`'s lock lives: the primary, else the backup node.
    fn lock_nodes(&self, id: &SessionId) -> Vec<usize> {
        self.copy_locations(id)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// `SessionBackend::try_lock`.
    pub(crate) async fn try_lock(
        &self,
        id: &SessionId,
        expiration: Duration,
    ) -> Result<bool, StoreError> {
        if self.health.load().all_down() {
            bump(&self.stats.degraded_operations);
            return self.degraded.try_lock(id, expiration).await;
        }
        let key = lock_key(&id.key());
        let mut last = StoreError::Unavailable {
            backend: super::inner::BACKEND,
            op: "lock",
        };
        for n in self.lock_nodes(id) {
            match self
                .write_raw(n, &key, b"1", lock_ttl(expiration), SetMode::Add)
                .await
            {
                Ok(StoreStatus::Stored) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `SessionBackend::unlock`.
    pub(crate) async fn unlock(&self, id: &SessionId) -> Result<(), StoreError> {
        if self.health.load().all_down() {
            bump(&self.stats.degraded_operations);
            self.degraded.unlock(id).await;
            return Ok(());
        }
        let key = lock_key(&id.key());
        let mut last = None;
        for n in self.lock_nodes(id) {
            match self.delete_key(n, &key).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes one parked session. With its primary node still down it is not
    /// relocated (the user's cookie still names the old id, and a relocation
    /// would hang on a moved marker): backup copies go to the first two
    /// usable rendezvous nodes, and the user's next load relocates it.
    async fn flush_one(&self, id: &SessionId, rec: &SessionRecord) -> bool {
        let snap = self.health.load_full();
        let p = id.node().and_then(|n| self.placement.index(n));
        let Some(p) = p.filter(|&p| rec.is_live() && !snap.usable(p)) else {
            return self.save_to_nodes(id, rec).await.is_some();
        };
        let bkey = backup_key(&id.key());
        let nodes: Vec<usize> = self
            .placement
            .ranked(id.random())
            .into_iter()
            .filter(|&i| i != p && snap.usable(i))
            .take(2)
            .collect();
        let writes = futures::future::join_all(
            nodes
                .iter()
                .map(|&n| self.write(n, &bkey, rec, SetMode::Set)),
        )
        .await;
        writes.iter().any(Result::is_ok)
    }

    /// Writes the sessions parked in memory to memcached, keeping
    /// memcached's copy where it is newer or a logout's tombstone. Returns
    /// (flushed or dropped, still parked).
    pub(crate) async fn flush_degraded(&self) -> (usize, usize) {
        let (mut flushed, mut left) = (0, 0);
        for (id, rec) in self.degraded.pending_snapshot() {
            let current = self.newest_copy(&id).await;
            let written = match current {
                // Also a logout's tombstone: its version (at least
                // `TOMBSTONE_VERSION`) beats any live change parked meanwhile.
                Some(cur) if !rec.supersedes(&cur) => true,
                _ => self.flush_one(&id, &rec).await,
            };
            if written {
                self.degraded.settle(&id, &rec).await;
                flushed += 1;
            } else {
                left += 1;
            }
        }
        (flushed, left)
    }
}
