//! Which upstream an attempt goes to: the session's bound route while it is available, else the
//! method's pick among the primaries, then the backups; and the status when none is left.

use http::StatusCode;

use crate::selection::SelectCtx;
use crate::upstream::{LazyNow, Snapshot};

/// Upstreams already tried by one request, kept inline (no allocation per request).
#[derive(Default)]
pub(crate) struct Tried {
    inline: [usize; 8],
    len: usize,
    more: Vec<usize>,
}

impl Tried {
    pub fn push(&mut self, i: usize) {
        if self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.inline);
            }
            self.more.push(i);
        }
    }

    pub fn pop(&mut self) {
        if !self.more.is_empty() {
            self.more.pop();
            if self.more.len() == self.inline.len() {
                self.more.clear();
            }
        } else {
            self.len = self.len.saturating_sub(1);
        }
    }

    pub fn as_slice(&self) -> &[usize] {
        if self.more.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
}

/// Picks the upstream of `pool` for the next attempt: the bound route while it is available,
/// else the pool's primaries (not draining), else its backups; draining upstreams only if
/// nothing else is left. `bound` must be a member of the pool.
pub(crate) fn choose(
    snap: &Snapshot,
    pool: usize,
    ctx: &SelectCtx<'_>,
    tried: &[usize],
    bound: Option<usize>,
    now: &mut LazyNow,
) -> Option<usize> {
    if let Some(i) = bound {
        if !tried.contains(&i) && snap.upstreams[i].available(now) {
            return Some(i);
        }
    }
    let pool = &snap.pools[pool];
    for allow_drain in [false, true] {
        for group in [&pool.primary, &pool.backup] {
            // First with `slow_start`: an upstream still warming up takes a request with the
            // probability of how far it is (the pick moves on to the next peer otherwise, so
            // the others keep their ratios). If that leaves nobody (all of them warming),
            // the group is asked again without it: a warming upstream beats a backup.
            let mut skipped = false;
            for gate in [true, false] {
                if !gate && !skipped {
                    break;
                }
                let mut eligible = |pos: usize| {
                    let i = group.members[pos];
                    let u = &snap.upstreams[i];
                    let usable =
                        (allow_drain || !u.cfg.drain) && !tried.contains(&i) && u.available(now);
                    if !usable {
                        return false;
                    }
                    match u.warming(now) {
                        Some(share) if gate && rand::random::<f64>() >= share => {
                            skipped = true;
                            false
                        }
                        _ => true,
                    }
                };
                if let Some(pos) = group.selector.select(ctx, &mut eligible) {
                    return Some(group.members[pos]);
                }
            }
        }
    }
    None
}

/// Status when no attempt could be made: 503 if every live upstream of the pool is at
/// `max_conns` (busy), 502 otherwise (no live upstream, as nginx).
pub(crate) fn no_upstream_status(snap: &Snapshot, pool: usize, tried: &[usize]) -> StatusCode {
    let mut now = LazyNow::default();
    let busy = snap
        .upstreams
        .iter()
        .enumerate()
        .any(|(i, u)| u.pool == pool && !tried.contains(&i) && u.up(&mut now));
    if busy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    }
}

#[cfg(test)]
mod tests {
    use super::Tried;

    #[test]
    fn tried_set_grows_past_its_inline_capacity_and_shrinks_back() {
        let mut t = Tried::default();
        for i in 0..12 {
            t.push(i);
        }
        assert_eq!(t.as_slice(), (0..12).collect::<Vec<_>>().as_slice());
        for _ in 0..5 {
            t.pop();
        }
        assert_eq!(t.as_slice(), (0..7).collect::<Vec<_>>().as_slice());
        assert_eq!(t.len(), 7);
    }
}
