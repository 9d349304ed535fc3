//! Where a session's copies live.
//!
//! * Primary: the node named in the id (`<random>-<node>`). A new session gets
//!   a random usable regular node; failover nodes only when no regular node is
//!   usable.
//! * Backup (`bak:<random>-<node>`) and relocation target: rendezvous hashing.
//!   Every node gets the score `xxh3(random ‖ 0 ‖ node id)`; regular nodes
//!   rank before failover nodes, then by score, highest first. The backup is
//!   the first usable node of that ranking other than the primary. The ranking
//!   depends only on the id and the node list, so every app node computes the
//!   same placement, and when a node fails its backups spread over all
//!   survivors instead of landing on one neighbour (msm's "next node").

use rand::Rng;
use xxhash_rust::xxh3::xxh3_64;

use super::config::MemcachedStoreConfig;

/// Node ids and roles in configuration order; indices are node numbers.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    ids: Vec<String>,
    failover: Vec<bool>,
}

/// Rendezvous score of `node` for a session's random part.
fn score(random: &str, node: &str) -> u64 {
    let mut buf = Vec::with_capacity(random.len() + 1 + node.len());
    buf.extend_from_slice(random.as_bytes());
    buf.push(0);
    buf.extend_from_slice(node.as_bytes());
    xxh3_64(&buf)
}

impl Placement {
    pub(crate) fn new(cfg: &MemcachedStoreConfig) -> Self {
        Placement {
            ids: cfg.nodes.iter().map(|n| n.id.clone()).collect(),
            failover: cfg.nodes.iter().map(|n| cfg.is_failover(&n.id)).collect(),
        }
    }

    /// Number of configured nodes.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The node number of a node id.
    pub(crate) fn index(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|n| n == id)
    }

    /// The id of node number `i`.
    pub(crate) fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// All nodes in rendezvous order for `random`: regular nodes first.
    pub(crate) fn ranked(&self, random: &str) -> Vec<usize> {
        let mut order: Vec<(bool, u64, usize)> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (self.failover[i], u64::MAX - score(random, id), i))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    /// The first usable node of the ranking that is not in `exclude`: the
    /// backup of a session whose primary is in `exclude`, or the target of a
    /// relocation away from it.
    pub(crate) fn first_usable(
        &self,
        random: &str,
        exclude: &[usize],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.ranked(random)
            .into_iter()
            .find(|i| !exclude.contains(i) && usable(*i))
    }

    /// The primary for a new session: a random usable regular node, else a
    /// random usable failover node, else (every node down) a random regular
    /// node, so the id stays valid once nodes return.
    pub(crate) fn new_primary(&self, usable: impl Fn(usize) -> bool) -> usize {
        let pick = |pred: &dyn Fn(usize) -> bool| {
            let c: Vec<usize> = (0..self.len()).filter(|&i| pred(i)).collect();
            if c.is_empty() {
                None
            } else {
                Some(c[rand::thread_rng().gen_range(0..c.len())])
            }
        };
        pick(&|i| !self.failover[i] && usable(i))
            .or_else(|| pick(&|i| self.failover[i] && usable(i)))
            .or_else(|| pick(&|i| !self.failover[i]))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::NodeSpec;
    use super::*;
    use crate::id::SessionId;

    fn placement(n: usize, failover: &[&str]) -> Placement {
        let nodes = (1..=n)
            .map(|i| NodeSpec {
                id: format!("n{i}"),
                addr: ([127, 0, 0, 1], 10_000 + i as u16).into(),
            })
            .collect();
        let cfg = MemcachedStoreConfig::new(nodes)
            .failover_nodes(failover.iter().map(|s| s.to_string()).collect());
        Placement::new(&cfg)
    }

    #[test]
    fn backup_is_deterministic_and_never_the_primary() {
        let p = placement(4, &[]);
        for _ in 0..200 {
            let id = SessionId::generate(Some("n2"), None);
            let a = p.first_usable(id.random(), &[1], |_| true);
            let b = placement(4, &[]).first_usable(id.random(), &[1], |_| true);
            assert_eq!(a, b);
            assert_ne!(a, Some(1));
        }
    }

    #[test]
    fn a_failed_nodes_backups_spread_over_all_survivors() {
        let p = placement(4, &[]);
        let mut moved_to = [0usize; 4];
        for _ in 0..3000 {
            let id = SessionId::generate(Some("n1"), None);
            let normal = p.first_usable(id.random(), &[0], |_| true);
            let down = p.first_usable(id.random(), &[0], |i| i != 1);
            if normal == Some(1) {
                let d = down.unwrap();
                moved_to[d] += 1;
            } else {
                // Sessions not backed up on the failed node keep their backup.
                assert_eq!(normal, down);
            }
        }
        assert_eq!(moved_to[0] + moved_to[1], 0);
        assert!(moved_to[2] > 300 && moved_to[3] > 300, "{moved_to:?}");
    }

    #[test]
    fn failover_nodes_only_when_no_regular_node_is_usable() {
        let p = placement(3, &["n3"]);
        for _ in 0..100 {
            let id = SessionId::generate(Some("n1"), None);
            assert_eq!(p.first_usable(id.random(), &[0], |_| true), Some(1));
            assert_eq!(p.first_usable(id.random(), &[0], |i| i != 1), Some(2));
            assert_ne!(p.new_primary(|_| true), 2);
        }
        assert_eq!(p.new_primary(|i| i == 2), 2);
        // Nothing usable: still a regular node, so the id stays meaningful.
        assert_ne!(p.new_primary(|_| false), 2);
    }

    #[test]
    fn new_sessions_spread_over_usable_nodes() {
        let p = placement(3, &[]);
        let mut seen = [0usize; 3];
        for _ in 0..600 {
            seen[p.new_primary(|i| i != 0)] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 200 && seen[2] > 200, "{seen:?}");
    }
}
