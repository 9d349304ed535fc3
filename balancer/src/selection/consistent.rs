//! `hash` with ketama consistent hashing on a configurable key (nginx `hash $key consistent`).
//!
//! Every peer gets 160 points per unit of weight on a 32-bit ring (CRC32 of its address and the
//! point number); a key goes to the first point clockwise from its own CRC32. Adding or removing
//! one peer moves only the keys in the arcs it owned. An ineligible peer passes its keys to the
//! next distinct peers on the ring.

use super::{SelectCtx, Selector};

/// Ring points per unit of weight (as nginx).
const POINTS_PER_WEIGHT: u32 = 160;

/// Consistent hash ring.
#[derive(Debug)]
pub(crate) struct Ketama {
    ring: Vec<(u32, usize)>,
    peers: usize,
}

impl Ketama {
    /// Ring for peers named `names` (their addresses) with `weights`.
    pub fn new(names: &[&str], weights: &[u32]) -> Self {
        let mut ring = Vec::new();
        for (i, (name, &w)) in names.iter().zip(weights).enumerate() {
            for point in 0..w * POINTS_PER_WEIGHT {
                let mut h = crc32fast::Hasher::new();
                h.update(name.as_bytes());
                h.update(b"\0");
                h.update(&point.to_le_bytes());
                ring.push((h.finalize(), i));
            }
        }
        ring.sort_unstable();
        Self {
            ring,
            peers: names.len(),
        }
    }
}

impl Selector for Ketama {
    fn select(
        &self,
        ctx: &SelectCtx<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = crc32fast::hash(ctx.key);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let mut rejected = vec![false; self.peers];
        let mut distinct = 0;
        for k in 0..self.ring.len() {
            let (_, peer) = self.ring[(start + k) % self.ring.len()];
            if rejected[peer] {
                continue;
            }
            if eligible(peer) {
                return Some(peer);
            }
            rejected[peer] = true;
            distinct += 1;
            if distinct == self.peers {
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(k: &Ketama, key: &str, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        k.select(
            &SelectCtx {
                client: [127, 0, 0, 1].into(),
                key: key.as_bytes(),
            },
            &mut |i| eligible(i),
        )
    }

    #[test]
    fn same_key_same_peer() {
        let k = Ketama::new(&["a:1", "b:1", "c:1"], &[1, 1, 1]);
        let p = pick(&k, "/cart/42", &|_| true);
        for _ in 0..10 {
            assert_eq!(pick(&k, "/cart/42", &|_| true), p);
        }
    }

    #[test]
    fn removing_a_peer_moves_only_its_keys() {
        let three = Ketama::new(&["a:1", "b:1", "c:1"], &[1, 1, 1]);
        let two = Ketama::new(&["a:1", "b:1"], &[1, 1]);
        let mut moved = 0;
        for n in 0..1000 {
            let key = format!("/item/{n}");
            let before = pick(&three, &key, &|_| true).expect("peer");
            let after = pick(&two, &key, &|_| true).expect("peer");
            if before != 2 {
                assert_eq!(before, after, "{key} moved although its peer stayed");
            } else {
                moved += 1;
            }
        }
        assert!((200..500).contains(&moved), "c owned {moved} of 1000 keys");
    }

    #[test]
    fn weight_scales_share() {
        let k = Ketama::new(&["a:1", "b:1"], &[3, 1]);
        let a = (0..2000)
            .filter(|n| pick(&k, &format!("k{n}"), &|_| true) == Some(0))
            .count();
        assert!((1300..1700).contains(&a), "a got {a} of 2000");
    }

    #[test]
    fn ineligible_peer_passes_keys_on() {
        let k = Ketama::new(&["a:1", "b:1", "c:1"], &[1, 1, 1]);
        let p = pick(&k, "/x", &|_| true).expect("peer");
        let q = pick(&k, "/x", &|i| i != p).expect("peer");
        assert_ne!(p, q);
        assert_eq!(pick(&k, "/x", &|_| false), None);
    }
}
