//! `random two`: two weighted random draws, the less loaded one wins (nginx `random two`).
//!
//! The power of two choices keeps the load nearly as even as `least_conn` while needing no
//! shared rotation state. Draws land on ineligible peers are redrawn a few times, then the peers
//! are scanned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::{less_loaded, scan_from, SelectCtx, Selector};
use crate::upstream::Upstream;

/// Draw attempts per choice before scanning.
const MAX_DRAWS: usize = 8;

/// Random with two choices.
pub(crate) struct RandomTwo {
    peers: Vec<(Arc<AtomicUsize>, u32)>,
    /// Running sums of the weights, for a weighted draw by binary search.
    cumulative: Vec<u64>,
}

impl RandomTwo {
    /// Selector over `peers`.
    pub fn new(peers: &[Arc<Upstream>]) -> Self {
        Self::from_counters(
            peers
                .iter()
                .map(|p| (p.active.clone(), p.cfg.weight))
                .collect(),
        )
    }

    fn from_counters(peers: Vec<(Arc<AtomicUsize>, u32)>) -> Self {
        let mut sum = 0u64;
        let cumulative = peers
            .iter()
            .map(|(_, w)| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        Self { peers, cumulative }
    }

    fn draw(&self, eligible: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let mut rng = rand::thread_rng();
        for _ in 0..MAX_DRAWS {
            let x = rng.gen_range(0..total);
            let i = self.cumulative.partition_point(|&c| c <= x);
            if eligible(i) {
                return Some(i);
            }
        }
        scan_from(
            rng.gen_range(0..self.peers.len()),
            self.peers.len(),
            eligible,
        )
    }
}

impl Selector for RandomTwo {
    fn select(
        &self,
        _ctx: &SelectCtx<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let a = self.draw(eligible)?;
        let b = self.draw(eligible).unwrap_or(a);
        let load = |i: usize| (self.peers[i].0.load(Ordering::Relaxed), self.peers[i].1);
        let ((la, wa), (lb, wb)) = (load(a), load(b));
        Some(if less_loaded(lb, wb, la, wa) { b } else { a })
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

    fn counters(loads: &[(usize, u32)]) -> RandomTwo {
        RandomTwo::from_counters(
            loads
                .iter()
                .map(|&(a, w)| (Arc::new(AtomicUsize::new(a)), w))
                .collect(),
        )
    }

    #[test]
    fn idle_peers_share_by_weight() {
        let r = counters(&[(0, 1), (0, 3)]);
        let b = (0..4000)
            .filter(|_| r.select(&ctx(), &mut |_| true) == Some(1))
            .count();
        // Each draw picks b with 3/4; b wins unless both draws are a (ties keep the first draw).
        assert!(b > 2800, "b got {b} of 4000");
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let r = counters(&[(100, 1), (0, 1)]);
        let b = (0..1000)
            .filter(|_| r.select(&ctx(), &mut |_| true) == Some(1))
            .count();
        // a wins only when both draws are a: about a quarter.
        assert!((650..850).contains(&b), "b got {b} of 1000");
    }

    #[test]
    fn only_eligible_peers_are_chosen() {
        let r = counters(&[(0, 1), (0, 1), (0, 1)]);
        for _ in 0..200 {
            assert_eq!(r.select(&ctx(), &mut |i| i == 2), Some(2));
        }
        assert_eq!(r.select(&ctx(), &mut |_| false), None);
    }
}
