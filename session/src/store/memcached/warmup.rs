//! Warm-up: bring a node that returned (restarted empty, or stale after a
//! freeze or partition) up to date without waiting for user traffic.
//!
//! 1. Enumerate the keys of every usable node and of the returned node `r`
//!    (`lru_crawler metadump`, streamed through the client's `metadump_each`).
//! 2. Keep only what concerns `r`: a session whose primary node or rendezvous
//!    backup node is `r`, or that has any copy on `r`. Each such session is kept
//!    once, by its key `<random>-<node>`, with the locations of any copies found
//!    outside its two canonical places (left by a failover; rare). Memory is
//!    one short key per session, not the dumps: about 80 bytes a session.
//! 3. Reconcile each session: read its canonical copies (primary, and backup on
//!    the first usable rendezvous node), plus any stray copies found; the
//!    newest (`supersedes`: tombstones and moved markers included) is written
//!    to every canonical location that misses it or holds an older copy, with
//!    the remaining lifetime memcached reports for it, by add-if-absent or
//!    CAS so that a write racing in from a request is never overwritten.
//!    Each session is reconciled once.
//! 4. Write the sentinel on `r`, so the health actor sees it is warm.
//!
//! Copies written to `r` are counted in `warmup_copied`, others in `repairs`;
//! progress is logged every 1,000 sessions.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferrocat_memcached::{DumpedKey, SetMode};
use futures::stream::{self, StreamExt};

use super::inner::{backup_key, ttl_for, Core, Stored, SENTINEL_KEY};
use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::store::StoreError;

/// What one warm-up did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WarmupReport {
    /// Sessions reconciled.
    pub(crate) checked: usize,
    /// Copies written to the returned node.
    pub(crate) copied: usize,
}

/// `(session key, is backup)` for a session copy's key; `None` for locks,
/// the sentinel and anything that is not ours.
fn classify(key: &str) -> Option<(&str, bool)> {
    let (rest, is_bak) = match key.strip_prefix("bak:") {
        Some(r) => (r, true),
        None => (key, false),
    };
    let id = SessionId::parse(rest).ok()?;
    (id.node().is_some() && id.route().is_none()).then_some((rest, is_bak))
}

/// The sessions the dumps found that concern the returned node.
#[derive(Default)]
struct Found {
    /// Session keys whose copies were found where they belong, each once.
    sessions: HashSet<Box<str>>,
    /// Sessions with copies found elsewhere: where (node, key there). A
    /// session listed here is reconciled once, with all of them.
    strays: HashMap<Box<str>, Vec<(usize, Box<str>)>>,
}

impl Found {
    /// Takes one dumped key of `node` if its session concerns `r`.
    fn add(
        &mut self,
        core: &Core,
        usable: &dyn Fn(usize) -> bool,
        node: usize,
        raw: &str,
        r: usize,
    ) {
        let Some(raw) = core.own_key(raw) else {
            return; // another app's key (a different `key_prefix`)
        };
        let Some((skey, is_bak)) = classify(raw) else {
            return;
        };
        let Some((p, b)) = canonical_nodes(core, skey, usable) else {
            return;
        };
        if node != r && p != r && b != Some(r) {
            return;
        }
        if is_canonical(p, b, node, is_bak) {
            if !self.sessions.contains(skey) {
                self.sessions.insert(skey.into());
            }
        } else {
            let at = self.strays.entry(skey.into()).or_default();
            if !at.iter().any(|(n, k)| *n == node && **k == *raw) {
                at.push((node, raw.into()));
            }
        }
    }
}

/// The session's primary node and its backup node (first usable rendezvous
/// node after the primary); `None` for a node name not in the list.
fn canonical_nodes(
    core: &Core,
    skey: &str,
    usable: &dyn Fn(usize) -> bool,
) -> Option<(usize, Option<usize>)> {
    let id = SessionId::parse(skey).ok()?;
    let p = core.placement.index(id.node()?)?;
    Some((p, core.placement.first_usable(id.random(), &[p], usable)))
}

/// True when a copy on `node` is where the session keeps it: its primary
/// copy on the primary node `p`, its backup copy on the backup node `b`.
fn is_canonical(p: usize, b: Option<usize>, node: usize, is_bak: bool) -> bool {
    if is_bak {
        b == Some(node)
    } else {
        p == node
    }
}

/// Brings node `r` up to date; see the module docs.
pub(crate) async fn warm_up(core: Arc<Core>, r: usize) -> Result<WarmupReport, StoreError> {
    let snap = core.health.load_full();
    let usable = |i: usize| i == r || snap.usable(i);
    let nodes: Vec<usize> = (0..core.placement.len()).filter(|&i| usable(i)).collect();
    let found = RefCell::new(Found::default());
    let dumps = futures::future::join_all(nodes.iter().map(|&node| {
        let (core, found, usable) = (&core, &found, &usable);
        async move {
            let mut sink = |k: DumpedKey, _again: bool| {
                found.borrow_mut().add(core, usable, node, &k.key, r);
            };
            core.dump_each(node, &mut sink).await
        }
    }))
    .await;
    for (&node, dump) in nodes.iter().zip(dumps) {
        match dump {
            Ok(()) => {}
            Err(e) if node == r => return Err(e),
            Err(e) => log::warn!(
                "warm-up of {}: cannot enumerate node {}: {e}",
                core.node_id(r),
                core.node_id(node)
            ),
        }
    }
    let Found {
        mut sessions,
        strays,
    } = found.into_inner();
    sessions.retain(|s| !strays.contains_key(s));
    log::info!(
        "warm-up of memcached node {}: {} sessions to check ({} with copies outside their places)",
        core.node_id(r),
        sessions.len() + strays.len(),
        strays.len()
    );
    let work = sessions.into_iter().map(|s| (s, Vec::new())).chain(strays);
    let mut report = WarmupReport::default();
    let mut results = stream::iter(work)
        .map(|(skey, strays)| {
            let core = core.clone();
            async move { reconcile(&core, &skey, strays, r).await }
        })
        .buffer_unordered(core.cfg.warmup_concurrency);
    while let Some(copied) = results.next().await {
        report.checked += 1;
        report.copied += copied;
        if report.checked % 1000 == 0 {
            log::info!(
                "warm-up of memcached node {}: {} sessions checked, {} copied",
                core.node_id(r),
                report.checked,
                report.copied
            );
        }
    }
    let token = format!("warm {}", crate::record::now_ms());
    core.write_raw(r, SENTINEL_KEY, token.as_bytes(), 0, SetMode::Set)
        .await?;
    Ok(report)
}

/// Makes the canonical copies of one session hold its newest copy (of those
/// and the `strays`), with the remaining lifetime of the copy it came from.
/// Returns the number of copies written to `r`.
async fn reconcile(core: &Core, skey: &str, strays: Vec<(usize, Box<str>)>, r: usize) -> usize {
    let snap = core.health.load_full();
    let usable = |i: usize| i == r || snap.usable(i);
    let Some((p, b)) = canonical_nodes(core, skey, &usable) else {
        return 0;
    };
    let mut all: Vec<(usize, String)> = Vec::with_capacity(2 + strays.len());
    if usable(p) {
        all.push((p, skey.to_owned()));
    }
    if let Some(b) = b {
        all.push((b, backup_key(skey)));
    }
    let targets = all.len();
    for (n, k) in strays {
        if !all.iter().any(|(an, ak)| *an == n && **ak == *k) {
            all.push((n, k.into()));
        }
    }
    let reads = futures::future::join_all(all.iter().map(|(n, k)| core.read(*n, k))).await;
    let Some((winner, left)) = reads
        .iter()
        .filter_map(|r| match r {
            Ok(Stored::Record { rec, ttl, .. }) => Some((rec, *ttl)),
            _ => None,
        })
        .fold(
            None,
            |best: Option<(&SessionRecord, Option<u32>)>, (rec, ttl)| match best {
                Some((b, _)) if !rec.supersedes(b) => best,
                _ => Some((rec, ttl)),
            },
        )
    else {
        return 0;
    };
    let Some(ttl) = remaining_ttl(left) else {
        return 0; // expired meanwhile
    };
    let mut copied = 0;
    for ((node, key), read) in all[..targets].iter().zip(&reads) {
        let Ok(found) = read else { continue };
        if let Ok(true) = core.repair_ttl(*node, key, found, winner, ttl).await {
            if *node == r {
                copied += 1;
                core.stats.warmup_copied.fetch_add(1, Relaxed);
            } else {
                core.stats.repairs.fetch_add(1, Relaxed);
            }
        }
    }
    copied
}

/// memcached expiry for a copy of an item that memcached says lives `left`
/// more seconds (`None`: never expires); `None` when it is about to expire.
fn remaining_ttl(left: Option<u32>) -> Option<u32> {
    match left {
        None => Some(0),
        Some(0) => None,
        Some(s) => Some(ttl_for(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_session_copies_only() {
        let id = SessionId::generate(Some("n2"), None).key();
        assert_eq!(classify(&id), Some((id.as_str(), false)));
        assert_eq!(classify(&format!("bak:{id}")), Some((id.as_str(), true)));
        assert_eq!(classify(&format!("lock:{id}")), None);
        assert_eq!(classify(SENTINEL_KEY), None);
        assert_eq!(classify("random-junk"), None);
        // Another app's keys (with a `key_prefix`) are not sessions of a store without one.
        assert_eq!(classify(&format!("shop:{id}")), None);
        assert_eq!(classify(&format!("shop:bak:{id}")), None);
        let no_node = SessionId::generate(None, None).key();
        assert_eq!(classify(&no_node), None);
    }

    #[test]
    fn copies_keep_the_remaining_lifetime() {
        assert_eq!(remaining_ttl(None), Some(0));
        assert_eq!(remaining_ttl(Some(0)), None);
        assert_eq!(remaining_ttl(Some(100)), Some(100));
    }
}
