//! Warm-up: bring a node that returned (restarted empty, or stale after a
//! freeze or partition) up to date without waiting for user traffic.
//!
//! 1. Enumerate the keys of every usable node and of the returned node `r`
//!    (`lru_crawler metadump`, through the client's `metadump`).
//! 2. Group copies by session key `<random>-<node>` (`bak:` copies and
//!    primaries alike). A session concerns `r` when `r` is its primary node,
//!    its rendezvous backup node, or holds any copy of it.
//! 3. Reconcile each such session: read its canonical copies (primary, and
//!    backup on the first usable rendezvous node) plus every copy the dumps
//!    found elsewhere; the newest (`supersedes`: tombstones and moved markers
//!    included) is written to every canonical location that misses it or
//!    holds an older copy, with add-if-absent or CAS so that a write racing
//!    in from a request is never overwritten.
//! 4. Write the sentinel on `r`, so the health actor sees it is warm.
//!
//! Copies written to `r` are counted in `warmup_copied`, others in `repairs`;
//! progress is logged every 1,000 sessions.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ferrocat_memcached::SetMode;
use futures::stream::{self, StreamExt};

use super::inner::{backup_key, ttl_for, Core, SENTINEL_KEY};
use crate::id::SessionId;
use crate::record::SessionRecord;
use crate::store::StoreError;

/// One copy found by a dump: node, key there, expiry (Unix s, -1 never).
#[derive(Debug, Clone)]
struct Loc {
    node: usize,
    key: String,
    exp: i64,
}

/// What one warm-up did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WarmupReport {
    /// Sessions reconciled.
    pub(crate) checked: usize,
    /// Copies written to the returned node.
    pub(crate) copied: usize,
}

/// Decodes `%XX` escapes (metadump URL-encodes keys); invalid escapes stay.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(session key, is backup)` for a session copy's key; `None` for locks,
/// the sentinel and anything that is not ours.
fn classify(key: &str) -> Option<(String, bool)> {
    let (rest, is_bak) = match key.strip_prefix("bak:") {
        Some(r) => (r, true),
        None => (key, false),
    };
    let id = SessionId::parse(rest).ok()?;
    (id.node().is_some() && id.route().is_none()).then(|| (rest.to_owned(), is_bak))
}

/// Brings node `r` up to date; see the module docs.
pub(crate) async fn warm_up(core: Arc<Core>, r: usize) -> Result<WarmupReport, StoreError> {
    let snap = core.health.load_full();
    let nodes: Vec<usize> = (0..core.placement.len())
        .filter(|&i| i == r || snap.usable(i))
        .collect();
    let dumps = futures::future::join_all(nodes.iter().map(|&i| core.dump(i))).await;
    // session key -> the copies the dumps found
    let mut seen: HashMap<String, Vec<Loc>> = HashMap::new();
    for (&node, dump) in nodes.iter().zip(dumps) {
        let keys = match dump {
            Ok(k) => k,
            Err(e) if node == r => return Err(e),
            Err(e) => {
                log::warn!(
                    "warm-up of {}: cannot enumerate node {}: {e}",
                    core.node_id(r),
                    core.node_id(node)
                );
                continue;
            }
        };
        for dk in keys {
            let raw = percent_decode(&dk.key);
            if let Some((skey, _)) = classify(&raw) {
                seen.entry(skey).or_default().push(Loc {
                    node,
                    key: raw,
                    exp: dk.exp,
                });
            }
        }
    }
    let relevant: Vec<(String, Vec<Loc>)> = seen
        .into_iter()
        .filter(|(skey, locs)| concerns(&core, skey, locs, r))
        .collect();
    log::info!(
        "warm-up of memcached node {}: {} sessions to check",
        core.node_id(r),
        relevant.len()
    );
    let mut report = WarmupReport::default();
    let mut results = stream::iter(relevant)
        .map(|(skey, locs)| {
            let core = core.clone();
            async move { reconcile(&core, &skey, &locs, r).await }
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

/// True when node `r` is the session's primary or backup node, or holds a copy.
fn concerns(core: &Core, skey: &str, locs: &[Loc], r: usize) -> bool {
    if locs.iter().any(|l| l.node == r) {
        return true;
    }
    let Ok(id) = SessionId::parse(skey) else {
        return false;
    };
    let Some(p) = id.node().and_then(|n| core.placement.index(n)) else {
        return false;
    };
    if p == r {
        return true;
    }
    let snap = core.health.load();
    core.placement
        .first_usable(id.random(), &[p], |i| i == r || snap.usable(i))
        == Some(r)
}

/// Makes the canonical copies of one session hold its newest copy, with the
/// remaining lifetime of the copy it came from. Returns the number of copies
/// written to `r`.
async fn reconcile(core: &Core, skey: &str, locs: &[Loc], r: usize) -> usize {
    let Ok(id) = SessionId::parse(skey) else {
        return 0;
    };
    let Some(p) = id.node().and_then(|n| core.placement.index(n)) else {
        return 0;
    };
    let snap = core.health.load_full();
    let usable = |i: usize| i == r || snap.usable(i);
    let mut all: Vec<(usize, String)> = Vec::with_capacity(2 + locs.len());
    if usable(p) {
        all.push((p, skey.to_owned()));
    }
    if let Some(b) = core.placement.first_usable(id.random(), &[p], usable) {
        all.push((b, backup_key(skey)));
    }
    let targets = all.len();
    for l in locs {
        if !all.iter().any(|(n, k)| *n == l.node && *k == l.key) {
            all.push((l.node, l.key.clone()));
        }
    }
    let reads = futures::future::join_all(all.iter().map(|(n, k)| core.read(*n, k))).await;
    let Some((at, winner)) = reads
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.as_ref().ok()?.record()?)))
        .fold(
            None,
            |best: Option<(usize, &SessionRecord)>, (i, r)| match best {
                Some((_, b)) if !r.supersedes(b) => best,
                _ => Some((i, r)),
            },
        )
    else {
        return 0;
    };
    let (wn, wk) = &all[at];
    let exp = locs
        .iter()
        .find(|l| l.node == *wn && l.key == *wk)
        .map(|l| l.exp);
    let Some(ttl) = remaining_ttl(exp, winner.max_inactive_secs) else {
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

/// memcached expiry for a copy of an item whose dump said it expires at
/// `exp` (Unix seconds, -1 never); `None` when it has expired. Without a
/// dump entry, a whole max inactive interval.
fn remaining_ttl(exp: Option<i64>, max_inactive_secs: u32) -> Option<u32> {
    match exp {
        None => Some(ttl_for(max_inactive_secs)),
        Some(e) if e < 0 => Some(0),
        Some(e) => {
            let now = i64::try_from(crate::record::now_ms() / 1000).unwrap_or(i64::MAX);
            let left = e.saturating_sub(now);
            (left > 0).then(|| ttl_for(u32::try_from(left).unwrap_or(u32::MAX)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_metadump_keys() {
        assert_eq!(percent_decode("bak%3Aabc-n1"), "bak:abc-n1");
        assert_eq!(percent_decode("abc%"), "abc%");
        assert_eq!(percent_decode("a%zzb"), "a%zzb");
        assert_eq!(percent_decode("x%41"), "xA");
    }

    #[test]
    fn classifies_session_copies_only() {
        let id = SessionId::generate(Some("n2"), None).key();
        assert_eq!(classify(&id), Some((id.clone(), false)));
        assert_eq!(classify(&format!("bak:{id}")), Some((id.clone(), true)));
        assert_eq!(classify(&format!("lock:{id}")), None);
        assert_eq!(classify(SENTINEL_KEY), None);
        assert_eq!(classify("random-junk"), None);
        let no_node = SessionId::generate(None, None).key();
        assert_eq!(classify(&no_node), None);
    }

    #[test]
    fn copies_keep_the_remaining_lifetime() {
        let now = i64::try_from(crate::record::now_ms() / 1000).unwrap();
        assert_eq!(remaining_ttl(None, 1800), Some(1800));
        assert_eq!(remaining_ttl(Some(-1), 1800), Some(0));
        assert_eq!(remaining_ttl(Some(now - 5), 1800), None);
        let left = remaining_ttl(Some(now + 100), 1800).unwrap();
        assert!((99..=100).contains(&left), "{left}");
    }
}
