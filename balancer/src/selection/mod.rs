//! Choosing an upstream for a request that is not bound to one by its session route.
//!
//! One [`Selector`] trait, one file per method. A selector is built once per config snapshot for
//! one group of peers (the primaries or the backups) and is shared by all workers, so it is
//! `Send + Sync` and keeps its mutable state in atomics. The caller passes `eligible`, which says
//! whether the peer at a position may take the request now (up, under `max_conns`, not draining,
//! not already tried by this request); a selector never returns a position it rejected.

mod consistent;
mod ip_hash;
mod least_conn;
mod random;
mod round_robin;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Method;
use crate::upstream::Upstream;

pub(crate) use consistent::Ketama;
pub(crate) use ip_hash::IpHash;
pub(crate) use least_conn::LeastConn;
pub(crate) use random::RandomTwo;
pub(crate) use round_robin::SmoothRoundRobin;

/// What a selector may look at in the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SelectCtx<'a> {
    /// The client's address (`ip_hash`).
    pub client: IpAddr,
    /// The evaluated `hash_key` (`hash`); empty for other methods.
    pub key: &'a [u8],
}

/// A load-balancing method over one group of peers.
pub(crate) trait Selector: Send + Sync {
    /// Picks the position of an eligible peer, or `None` when no peer is eligible.
    fn select(&self, ctx: &SelectCtx<'_>, eligible: &mut dyn FnMut(usize) -> bool)
        -> Option<usize>;
}

/// Builds the selector for `method` over `peers` (in config order).
pub(crate) fn build(method: Method, peers: &[Arc<Upstream>]) -> Box<dyn Selector> {
    let weights: Vec<u32> = peers.iter().map(|p| p.cfg.weight).collect();
    match method {
        Method::LeastConn => Box::new(LeastConn::new(peers)),
        Method::IpHash => Box::new(IpHash::new(&weights)),
        Method::Hash => {
            let names: Vec<&str> = peers.iter().map(|p| p.cfg.address.as_str()).collect();
            Box::new(Ketama::new(&names, &weights))
        }
        Method::Random => Box::new(RandomTwo::new(peers)),
        _ => Box::new(SmoothRoundRobin::new(&weights)),
    }
}

/// Scans all positions starting at `start`, returning the first eligible one.
pub(crate) fn scan_from(
    start: usize,
    len: usize,
    eligible: &mut dyn FnMut(usize) -> bool,
) -> Option<usize> {
    (0..len).map(|i| (start + i) % len).find(|&i| eligible(i))
}

/// Compares the load of two peers: `a_active / a_weight < b_active / b_weight` without division.
pub(crate) fn less_loaded(a_active: usize, a_weight: u32, b_active: usize, b_weight: u32) -> bool {
    (a_active as u128) * u128::from(b_weight) < (b_active as u128) * u128::from(a_weight)
}
