//! `ip_hash`: the client address picks the peer, so a client keeps its upstream.
//!
//! As nginx: for IPv4 only the first three octets count (clients of one /24 stay together), for
//! IPv6 the whole address. The hash indexes the peers by weight. If that peer is ineligible the
//! hash is stirred and tried again (up to 20 times, as nginx), then any eligible peer is taken.

use super::{scan_from, SelectCtx, Selector};
use std::net::IpAddr;

/// Tries before falling back to a scan.
const MAX_REHASH: usize = 20;

/// Client-address hash.
#[derive(Debug)]
pub(crate) struct IpHash {
    /// Peer position for each unit of weight.
    slots: Vec<usize>,
    peers: usize,
}

impl IpHash {
    /// Selector for peers with `weights`.
    pub fn new(weights: &[u32]) -> Self {
        let slots = weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| std::iter::repeat_n(i, w as usize))
            .collect();
        Self {
            slots,
            peers: weights.len(),
        }
    }
}

fn address_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets()[..3].to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

impl Selector for IpHash {
    fn select(
        &self,
        ctx: &SelectCtx<'_>,
        eligible: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut hash: u32 = 89;
        for b in address_bytes(&ctx.client) {
            hash = hash.wrapping_mul(113).wrapping_add(u32::from(b)) % 6271;
        }
        for _ in 0..MAX_REHASH {
            let peer = self.slots[hash as usize % self.slots.len()];
            if eligible(peer) {
                return Some(peer);
            }
            hash = hash.wrapping_mul(113).wrapping_add(7) % 6271;
        }
        scan_from(hash as usize % self.peers, self.peers, eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(h: &IpHash, ip: [u8; 4], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        h.select(
            &SelectCtx {
                client: ip.into(),
                key: b"",
            },
            &mut |i| eligible(i),
        )
    }

    #[test]
    fn same_client_network_gets_the_same_peer() {
        let h = IpHash::new(&[1, 1, 1, 1]);
        let first = pick(&h, [10, 1, 2, 3], &|_| true);
        for last in 0..=255 {
            assert_eq!(pick(&h, [10, 1, 2, last], &|_| true), first);
        }
    }

    #[test]
    fn clients_spread_over_peers() {
        let h = IpHash::new(&[1, 1, 1]);
        let mut seen = [0usize; 3];
        for c in 0..=255 {
            if let Some(p) = pick(&h, [10, 0, c, 1], &|_| true) {
                seen[p] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
    }

    #[test]
    fn ineligible_peer_moves_its_clients_elsewhere() {
        let h = IpHash::new(&[1, 1]);
        let p = pick(&h, [192, 168, 7, 1], &|_| true).expect("a peer");
        assert_eq!(pick(&h, [192, 168, 7, 1], &|i| i != p), Some(1 - p));
        assert_eq!(pick(&h, [192, 168, 7, 1], &|_| false), None);
    }
}
