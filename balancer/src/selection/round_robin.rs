//! nginx's smooth weighted round robin, made lock-free.
//!
//! nginx keeps a `current_weight` per peer under a lock: each pick adds every peer's weight to
//! its current weight, takes the peer with the largest, and subtracts the total from it. For
//! weights 5,1,1 that yields `a a b a c a a`, spreading the heavy peer instead of `a a a a a b c`.
//! The sequence is periodic with period `sum(weights)`, so it is computed once per snapshot and
//! workers walk it with one atomic counter. A pick that lands on an ineligible peer draws the
//! next position, so the eligible peers keep their weight ratios among themselves.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{SelectCtx, Selector};

/// Smooth weighted round robin over a precomputed cycle.
#[derive(Debug)]
pub(crate) struct SmoothRoundRobin {
    cycle: Vec<usize>,
    next: AtomicUsize,
}

impl SmoothRoundRobin {
    /// Computes the cycle for `weights` (each >= 1).
    pub fn new(weights: &[u32]) -> Self {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            cycle.push(best);
        }
        Self {
            cycle,
            next: AtomicUsize::new(0),
        }
    }
}

impl Selector for SmoothRoundRobin {
    fn select(
        &self,
        _ctx: &SelectCtx<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let len = self.cycle.len();
        for _ in 0..len {
            let peer = self.cycle[self.next.fetch_add(1, Ordering::Relaxed) % len];
            if eligible(peer) {
                return Some(peer);
            }
        }
        None
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

    fn picks(rr: &SmoothRoundRobin, n: usize, eligible: &dyn Fn(usize) -> bool) -> String {
        (0..n)
            .map(|_| {
                rr.select(&ctx(), &mut |i| eligible(i))
                    .map_or('-', |i| (b'a' + i as u8) as char)
            })
            .collect()
    }

    #[test]
    fn weights_5_1_1_are_interleaved_like_nginx() {
        let rr = SmoothRoundRobin::new(&[5, 1, 1]);
        assert_eq!(picks(&rr, 14, &|_| true), "aabacaaaabacaa");
    }

    #[test]
    fn equal_weights_alternate() {
        let rr = SmoothRoundRobin::new(&[1, 1, 1]);
        assert_eq!(picks(&rr, 6, &|_| true), "abcabc");
    }

    #[test]
    fn ineligible_peer_is_skipped_and_others_keep_their_ratio() {
        let rr = SmoothRoundRobin::new(&[5, 1, 1]);
        let s = picks(&rr, 70, &|i| i != 0);
        assert_eq!(s.matches('b').count(), 35);
        assert_eq!(s.matches('c').count(), 35);
    }

    #[test]
    fn no_eligible_peer_gives_none() {
        let rr = SmoothRoundRobin::new(&[2, 3]);
        assert_eq!(picks(&rr, 3, &|_| false), "---");
        assert_eq!(
            SmoothRoundRobin::new(&[]).select(&ctx(), &mut |_| true),
            None
        );
    }
}
