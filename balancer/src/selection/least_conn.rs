//! `least_conn`: the peer with the fewest requests in flight relative to its weight.
//!
//! Reads each peer's shared `active` counter (all workers). Ties are broken by starting the scan
//! at a rotating position, so equally loaded peers take turns instead of the first one winning.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{less_loaded, SelectCtx, Selector};
use crate::upstream::Upstream;

/// Least active requests, weighted.
pub(crate) struct LeastConn {
    peers: Vec<(Arc<AtomicUsize>, u32)>,
    rotate: AtomicUsize,
}

impl LeastConn {
    /// Selector over `peers`, reading their live counters.
    pub fn new(peers: &[Arc<Upstream>]) -> Self {
        let peers = peers
            .iter()
            .map(|p| (p.active.clone(), p.cfg.weight))
            .collect();
        Self {
            peers,
            rotate: AtomicUsize::new(0),
        }
    }

    #[cfg(test)]
    fn from_counters(peers: Vec<(Arc<AtomicUsize>, u32)>) -> Self {
        Self {
            peers,
            rotate: AtomicUsize::new(0),
        }
    }
}

impl Selector for LeastConn {
    fn select(
        &self,
        _ctx: &SelectCtx<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let len = self.peers.len();
        if len == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize, u32)> = None;
        for k in 0..len {
            let i = (start + k) % len;
            let (active, weight) = &self.peers[i];
            let active = active.load(Ordering::Relaxed);
            let better = match best {
                None => true,
                Some((_, b_active, b_weight)) => less_loaded(active, *weight, b_active, b_weight),
            };
            if better && eligible(i) {
                best = Some((i, active, *weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SelectCtx<'static> {
        SelectCtx {
            client: [127, 0, 0, 1].into(),
            key: b"",
        }
    }

    fn counters(loads: &[(usize, u32)]) -> LeastConn {
        LeastConn::from_counters(
            loads
                .iter()
                .map(|&(a, w)| (Arc::new(AtomicUsize::new(a)), w))
                .collect(),
        )
    }

    #[test]
    fn picks_the_least_loaded_peer() {
        let lc = counters(&[(5, 1), (2, 1), (7, 1)]);
        for _ in 0..5 {
            assert_eq!(lc.select(&ctx(), &mut |_| true), Some(1));
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        // 6 active at weight 4 (1.5 each) is less loaded than 2 active at weight 1.
        let lc = counters(&[(2, 1), (6, 4)]);
        assert_eq!(lc.select(&ctx(), &mut |_| true), Some(1));
    }

    #[test]
    fn ties_rotate() {
        let lc = counters(&[(0, 1), (0, 1), (0, 1)]);
        let picks: Vec<_> = (0..3)
            .filter_map(|_| lc.select(&ctx(), &mut |_| true))
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }

    #[test]
    fn ineligible_peers_are_skipped() {
        let lc = counters(&[(0, 1), (9, 1)]);
        assert_eq!(lc.select(&ctx(), &mut |i| i == 1), Some(1));
        assert_eq!(lc.select(&ctx(), &mut |_| false), None);
    }
}
