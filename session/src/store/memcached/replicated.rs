//! Reading a session: both copies, the newer wins, failover and repair.
//!
//! `load(id)`:
//! 1. Read the primary `<random>-<node>` (node named in the id) and the backup
//!    `bak:<random>-<node>` (first usable rendezvous node) concurrently, each
//!    bounded by `operation_timeout`. The copy that `supersedes` the other
//!    wins; garbage counts as a miss. A missing, stale or garbage copy is
//!    repaired from the winner (add-if-absent or CAS, so a racing newer write
//!    wins). When both miss, the backups on the remaining usable nodes are
//!    read too (a backup written while its node was down).
//! 2. Tombstone -> `None`. Moved marker -> follow it (bounded hops; a marker
//!    leading back to a key already visited is stale, the live copy seen
//!    there wins).
//! 3. Primary down or failing: read the backups on every usable node; a live
//!    winner is *relocated*: same random part, the first usable rendezvous
//!    node as new primary, added there with a version two above the
//!    winner's, plus a new backup (one round trip; a leftover moved marker or
//!    older copy is replaced by CAS, a concurrent relocation or a tombstone
//!    wins). Only then the old id's reachable backup locations get a moved
//!    marker (winner + 1). The caller gets the new id (new cookie).
//!
//! Request-path reads give a node whose last operation failed only a tenth
//! of `operation_timeout`, so a frozen node costs about one timeout per
//! request until the health actor marks it down.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferrocat_memcached::{SetMode, StoreStatus};

use super::health::HealthSnapshot;
use super::inner::{backup_key, newest, Core, Stored};
use crate::id::SessionId;
use crate::record::{RecordKind, SessionRecord};
use crate::store::{Loaded, Revalidated, Seen, SeenCopy, StoreError};

/// Moved markers followed at most per load.
const MAX_HOPS: usize = 4;

/// What one key resolved to.
enum Resolved {
    /// A live session (possibly under a new id after relocation).
    Live {
        id: SessionId,
        rec: SessionRecord,
        /// Shortest remaining lifetime of the copies that hold `rec` (only
        /// when read in one pass with nothing rewritten).
        expires_in: Option<std::time::Duration>,
        /// What was read, for the save that follows.
        seen: Seen,
    },
    /// Expired, or nothing reachable.
    Gone,
    /// A logout's tombstone: final, whatever waits in degraded memory.
    LoggedOut,
    /// A moved marker; `live` is the newest live copy it beat at this key.
    Moved {
        to: SessionId,
        live: Option<SessionRecord>,
    },
}

fn bump(n: &std::sync::atomic::AtomicU64) {
    n.fetch_add(1, Relaxed);
}

/// What a load found, with a logout told apart from a missing session.
/// Returned once per load and never stored: boxing `Found` would cost every
/// load an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    Found(Loaded),
    Missing,
    LoggedOut,
}

impl From<Option<Loaded>> for Outcome {
    fn from(l: Option<Loaded>) -> Outcome {
        l.map_or(Outcome::Missing, Outcome::Found)
    }
}

impl Core {
    /// `SessionBackend::load` (the manager counts loads and misses).
    pub(crate) async fn load(&self, id: &SessionId) -> Result<Option<Loaded>, StoreError> {
        Ok(match self.load_outcome(id).await? {
            Outcome::Found(l) => Some(l),
            Outcome::Missing | Outcome::LoggedOut => None,
        })
    }

    /// `SessionBackend::revalidate`: a whole load (both copies, failover,
    /// moved markers), compared with the caller's cached copy.
    pub(crate) async fn revalidate(
        &self,
        id: &SessionId,
        cached: &SessionRecord,
    ) -> Result<Revalidated, StoreError> {
        Ok(match self.load_outcome(id).await {
            Ok(Outcome::Found(l)) if l.record.supersedes(cached) || l.id.key() != id.key() => {
                Revalidated::Newer(l)
            }
            Ok(Outcome::Found(l)) => Revalidated::Current(l.seen),
            Ok(Outcome::LoggedOut) => Revalidated::LoggedOut,
            Ok(Outcome::Missing) | Err(_) => Revalidated::Unknown,
        })
    }

    async fn load_outcome(&self, id: &SessionId) -> Result<Outcome, StoreError> {
        let route = id.route();
        if self.health.load().all_down() {
            bump(&self.stats.degraded_operations);
            let l = Box::pin(self.degraded.load(id)).await.map(|l| Loaded {
                id: l.id.with_route(route),
                record: l.record,
                expires_in: None,
                seen: Seen::default(),
            });
            return Ok(l.into());
        }
        let mut cur = id.with_route(None);
        let mut visited: Vec<(SessionId, Option<SessionRecord>)> = Vec::new();
        for _ in 0..MAX_HOPS {
            match self.resolve(&cur).await? {
                Resolved::Live {
                    id: at,
                    rec,
                    expires_in,
                    seen,
                } => {
                    let read = (rec.version, rec.last_access_ms);
                    let l = self.with_pending(&at, Some(rec), route).map(|mut l| {
                        // Unless a newer copy waiting in degraded memory won.
                        if (l.record.version, l.record.last_access_ms) == read {
                            l.expires_in = expires_in;
                            l.seen = seen;
                        }
                        l
                    });
                    return Ok(l.into());
                }
                Resolved::Gone => return Ok(self.with_pending(&cur, None, route).into()),
                Resolved::LoggedOut => {
                    // A change parked while memcached was unreachable must
                    // not bring back a session logged out meanwhile.
                    self.degraded.drop_pending(&cur);
                    return Ok(Outcome::LoggedOut);
                }
                Resolved::Moved { to, live } => {
                    if let Some((_, seen)) = visited.iter().find(|(v, _)| *v == to) {
                        // The marker points back: the session returned to
                        // that key later, and its live copy there is current.
                        return Ok(self.with_pending(&to, seen.clone(), route).into());
                    }
                    visited.push((cur, live));
                    cur = to.with_route(None);
                }
            }
        }
        log::warn!("session {id:?}: more than {MAX_HOPS} moved markers, treated as missing");
        Ok(Outcome::Missing)
    }

    /// The result for key `at`, unless a newer copy waits in degraded memory.
    fn with_pending(
        &self,
        at: &SessionId,
        found: Option<SessionRecord>,
        route: Option<&str>,
    ) -> Option<Loaded> {
        let rec = match (self.degraded.pending_record(at), found) {
            (Some(p), Some(f)) if !p.supersedes(&f) => Some(f),
            (Some(p), _) => p.is_live().then_some(p),
            (None, f) => f,
        };
        rec.map(|record| Loaded {
            id: at.with_route(route),
            record,
            expires_in: None,
            seen: Seen::default(),
        })
    }

    async fn resolve(&self, id: &SessionId) -> Result<Resolved, StoreError> {
        let key = id.key();
        let bkey = backup_key(&key);
        let snap = self.health.load_full();
        let Some(p) = id.node().and_then(|n| self.placement.index(n)) else {
            // A node not (or no longer) configured: only backups can help.
            return Box::pin(self.failover(id, None, Vec::new(), &snap)).await;
        };
        if !snap.usable(p) {
            return Box::pin(self.failover(id, Some(p), Vec::new(), &snap)).await;
        }
        let b = self
            .placement
            .first_usable(id.random(), &[p], |i| snap.usable(i));
        let (pr, br) = futures::join!(self.read_fast(p, &key), self.read_opt(b, &bkey));
        let pr = match pr {
            Ok(s) => s,
            Err(e) => {
                log::debug!("session {id:?}: primary failed ({e}), failing over");
                let known = b.zip(br.and_then(Result::ok)).into_iter().collect();
                return Box::pin(self.failover(id, Some(p), known, &snap)).await;
            }
        };
        let mut copies = vec![(p, key, pr)];
        if let (Some(b), Some(Ok(s))) = (b, br) {
            copies.push((b, bkey.clone(), s));
        }
        let mut winner = newest(copies.iter().filter_map(|c| c.2.record())).cloned();
        if winner.is_none() {
            let others: Vec<usize> = (0..self.placement.len())
                .filter(|&i| i != p && Some(i) != b && snap.usable(i))
                .collect();
            let reads =
                futures::future::join_all(others.iter().map(|&o| self.read_fast(o, &bkey))).await;
            winner = newest(reads.iter().filter_map(|r| r.as_ref().ok()?.record())).cloned();
        }
        let Some(w) = winner else {
            return Ok(Resolved::Gone);
        };
        // Copies that hold the winner need nothing (the common case: no
        // futures, no allocation).
        let stale = |s: &Stored| match s {
            Stored::Record { rec, .. } => w.supersedes(rec),
            _ => true,
        };
        if copies.iter().any(|c| stale(&c.2)) {
            let fixes = futures::future::join_all(
                copies
                    .iter()
                    .filter(|c| stale(&c.2))
                    .map(|(n, k, s)| self.repair(*n, k, s, &w)),
            )
            .await;
            for _ in fixes.iter().filter(|r| matches!(r, Ok(true))) {
                bump(&self.stats.repairs);
            }
        }
        if copies[0].2.record() != Some(&w) && w.is_live() {
            // Served from the backup: the primary missed it or was stale.
            bump(&self.stats.memcached_failovers);
        }
        // The newest live copy matters only when a moved marker won.
        let live = match w.kind {
            RecordKind::Moved(_) => newest(
                copies
                    .iter()
                    .filter_map(|c| c.2.record())
                    .filter(|r| r.is_live()),
            )
            .cloned(),
            _ => None,
        };
        // How long the copies that already held the winner still live (the
        // ones just repaired got a whole interval).
        let expires_in = copies
            .iter()
            .filter_map(|(_, _, s)| match s {
                Stored::Record { rec, ttl, .. } if *rec == w => *ttl,
                _ => None,
            })
            .min()
            .map(|secs| std::time::Duration::from_secs(secs.into()));
        // Where the copies were and their CAS values, for the save that
        // follows (it must not overwrite a logout's tombstone written since).
        let seen_copy = |node: usize, s: &Stored| SeenCopy {
            node,
            cas: match s {
                Stored::Missing => None,
                Stored::Garbage { cas } | Stored::Record { cas, .. } => Some(*cas),
            },
        };
        let seen = Seen {
            copies: [
                copies.first().map(|c| seen_copy(c.0, &c.2)),
                copies.get(1).map(|c| seen_copy(c.0, &c.2)),
            ],
        };
        Ok(self.outcome(id, w, live, expires_in, seen))
    }

    fn outcome(
        &self,
        id: &SessionId,
        w: SessionRecord,
        live: Option<SessionRecord>,
        expires_in: Option<std::time::Duration>,
        seen: Seen,
    ) -> Resolved {
        match w.kind {
            RecordKind::Live => Resolved::Live {
                id: id.clone(),
                rec: w,
                expires_in,
                seen,
            },
            RecordKind::Deleted => Resolved::LoggedOut,
            RecordKind::Moved(ref to) => match SessionId::parse(to) {
                Ok(to) if to.key() != id.key() => Resolved::Moved { to, live },
                _ => Resolved::Gone,
            },
        }
    }

    /// The primary `p` is down or failing: find the newest backup on any
    /// usable node (`known`: backup copies already read) and relocate.
    async fn failover(
        &self,
        id: &SessionId,
        p: Option<usize>,
        known: Vec<(usize, Stored)>,
        snap: &HealthSnapshot,
    ) -> Result<Resolved, StoreError> {
        let bkey = backup_key(&id.key());
        let others: Vec<usize> = (0..self.placement.len())
            .filter(|&i| Some(i) != p && snap.usable(i) && !known.iter().any(|(n, _)| *n == i))
            .collect();
        let reads =
            futures::future::join_all(others.iter().map(|&o| self.read_fast(o, &bkey))).await;
        let mut copies = known;
        copies.extend(
            others
                .into_iter()
                .zip(reads)
                .filter_map(|(n, r)| Some((n, r.ok()?))),
        );
        if copies.is_empty() {
            // No node answered: nothing to serve but degraded memory.
            bump(&self.stats.degraded_operations);
            return Ok(Resolved::Gone);
        }
        let Some(w) = newest(copies.iter().filter_map(|c| c.1.record())).cloned() else {
            return Ok(Resolved::Gone);
        };
        match (&w.kind, p) {
            (RecordKind::Live, Some(p)) => Ok(self.relocate(id, p, w, &copies).await),
            (RecordKind::Live, None) => {
                // Unknown node: place it afresh like a relocation from nowhere.
                Ok(self.relocate(id, usize::MAX, w, &copies).await)
            }
            _ => Ok(self.outcome(id, w, None, None, Seen::default())),
        }
    }

    /// Moves a live session away from its unreachable primary `p`.
    async fn relocate(
        &self,
        id: &SessionId,
        p: usize,
        w: SessionRecord,
        old_backups: &[(usize, Stored)],
    ) -> Resolved {
        let snap = self.health.load_full();
        let mut rec = w.clone();
        rec.version = w.version.saturating_add(2);
        // A target whose write failed is skipped: a node that just died may
        // still look usable (one failed operation on an open connection does
        // not mark it down), and the session should land on a node that
        // holds it rather than stay on its unreachable primary.
        // At most two targets, as a relocation on save: a request waits at
        // most one extra operation time-out.
        let mut skip = vec![p];
        let (t, new, nbkey, nb, added) = loop {
            let Some(t) = self
                .placement
                .first_usable(id.random(), &skip, |i| snap.usable(i))
                .filter(|_| skip.len() <= 2)
            else {
                bump(&self.stats.memcached_failovers);
                return Resolved::Live {
                    id: id.clone(),
                    rec: w,
                    expires_in: None,
                    seen: Seen::default(),
                };
            };
            let new = id.with_node(Some(self.node_id(t))).with_route(None);
            let nkey = new.key();
            let nbkey = backup_key(&nkey);
            skip.push(t);
            let nb = self
                .placement
                .first_usable(id.random(), &skip, |i| snap.usable(i));
            // One round trip in the common case: add the new primary and backup.
            let (placed, added) = futures::join!(self.write(t, &nkey, &rec, SetMode::Add), async {
                match nb {
                    Some(nb) => Some(self.write(nb, &nbkey, &rec, SetMode::Add).await),
                    None => None,
                }
            });
            match placed {
                Ok(StoreStatus::Stored) => break (t, new, nbkey, nb, added),
                Ok(_) => {
                    // Something is there already: a concurrent relocation or a
                    // tombstone wins; a leftover moved marker or older copy is
                    // replaced (CAS, so a racing write still wins).
                    let ours = match self.read(t, &nkey).await {
                        Ok(Stored::Record { rec: e, .. }) if e.kind == RecordKind::Deleted => {
                            return Resolved::Gone
                        }
                        Ok(Stored::Record { rec: e, .. })
                            if e.is_live() && e.version >= rec.version =>
                        {
                            false
                        }
                        Ok(found) => {
                            matches!(self.repair(t, &nkey, &found, &rec).await, Ok(true))
                        }
                        Err(_) => false,
                    };
                    if !ours {
                        return Resolved::Moved {
                            to: new,
                            live: None,
                        };
                    }
                    break (t, new, nbkey, nb, added);
                }
                // The target failed too: try the next one. Copies this
                // attempt left (the backup just added, or the primary if a
                // frozen target applies the write late) carry an id no
                // client holds and expire with the session's lifetime.
                Err(_) => continue,
            }
        };
        // Only now that the new primary holds the session: point the old
        // backup locations at it, and fix a backup location that held
        // something older.
        let marker = w.moved_to(&new.to_string());
        let bkey = backup_key(&id.key());
        let backup = async {
            match (nb, added) {
                (Some(_), Some(Ok(StoreStatus::Stored))) => true,
                (Some(nb), Some(Ok(_))) => match self.read(nb, &nbkey).await {
                    Ok(found) => self.repair(nb, &nbkey, &found, &rec).await.is_ok(),
                    Err(_) => false,
                },
                _ => false,
            }
        };
        let markers = futures::future::join_all(
            old_backups
                .iter()
                .map(|(n, found)| self.repair(*n, &bkey, found, &marker)),
        );
        let (backed_up, _) = futures::join!(backup, markers);
        bump(&self.stats.memcached_failovers);
        if !backed_up && self.placement.len() > 1 {
            bump(&self.stats.backup_failures);
        }
        log::debug!(
            "session {id:?} relocated from {} to {}",
            id.node().unwrap_or("?"),
            self.node_id(t)
        );
        Resolved::Live {
            id: new,
            rec,
            expires_in: None,
            seen: Seen::default(),
        }
    }

    /// The newest copy of `id`'s key anywhere reachable, without repairing
    /// or relocating (degraded flush).
    pub(crate) async fn newest_copy(&self, id: &SessionId) -> Option<SessionRecord> {
        let key = id.key();
        let bkey = backup_key(&key);
        let snap: Arc<HealthSnapshot> = self.health.load_full();
        let p = id.node().and_then(|n| self.placement.index(n));
        let reads =
            futures::future::join_all((0..self.placement.len()).filter(|&i| snap.usable(i)).map(
                |i| {
                    let k = if Some(i) == p {
                        key.clone()
                    } else {
                        bkey.clone()
                    };
                    async move { self.read(i, &k).await }
                },
            ))
            .await;
        newest(reads.iter().filter_map(|r| r.as_ref().ok()?.record())).cloned()
    }
}
