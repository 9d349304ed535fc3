//! Concurrent requests per client address (nginx's `limit_conn_zone $binary_remote_addr` with
//! `limit_conn N`), or per the value of `limit_conn_key` (an API key header, a cookie; a request
//! whose key is empty is not limited).
//!
//! A request counts from the moment its head is read until its response (or its tunnel) has
//! ended; one over the limit is answered with `limit_conn_status` (503) without reaching an
//! upstream. In HTTP/1.1 a connection carries one request at a time, so this is nginx's count of
//! connections busy with a request.
//!
//! The counts are a fixed table of atomic slots shared by every worker (no lock, no map, no
//! allocation per request), kept across reloads: each slot packs a 40-bit fingerprint of the key
//! with its count. A key hashes (with a per-process random key, so clients cannot aim at each
//! other's slots) to two buckets of four adjacent slots (half a cache line each): it uses the
//! slot holding its fingerprint with a count above zero, else a free one (count zero) in the
//! emptier bucket. When all eight are busy with other keys (some 30,000 clients or more with
//! requests in flight at once), the request is let through uncounted, and `untracked` counts it.
//!
//! Lock-free means approximate in one corner: if another key's slot frees up just while two
//! requests of one key are being admitted, they may take two different slots and so get one
//! place more than the limit for as long as they last.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Slots in the table (a power of two), 8 bytes each: 512 KiB in all.
pub(crate) const SLOTS: usize = 1 << 16;
/// Adjacent slots in one bucket.
const BUCKET: usize = 4;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Largest `limit_conn` the table can count.
pub(crate) const MAX_LIMIT: u32 = COUNT_MASK as u32;

/// The counts: shared by every worker, kept across reloads.
pub(crate) struct Table {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// Requests refused (over the limit).
    pub rejected: AtomicU64,
    /// Requests let through uncounted (both candidate slots busy with other keys).
    pub untracked: AtomicU64,
}

impl Table {
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            rejected: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    /// Requests counted now, over every key.
    pub fn active(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed) & COUNT_MASK)
            .sum()
    }

    /// The eight slots a key may use: two buckets of `BUCKET` adjacent slots.
    fn candidates(hash: u64) -> [usize; 2 * BUCKET] {
        let buckets = (SLOTS / BUCKET) as u64;
        let (b1, b2) = (hash % buckets, (hash >> 16) % buckets);
        std::array::from_fn(|i| {
            let b = if i < BUCKET { b1 } else { b2 };
            b as usize * BUCKET + i % BUCKET
        })
    }

    fn acquire(self: &Arc<Self>, hash: u64, max: u32) -> Admit {
        let fp = (hash >> COUNT_BITS) | 1;
        let ours = |s: u64| s >> COUNT_BITS == fp && s & COUNT_MASK > 0;
        let free = |s: u64| s & COUNT_MASK == 0;
        let slots = Self::candidates(hash);
        loop {
            let seen = slots.map(|i| self.slots[i].load(Ordering::Acquire));
            // Its own slot; else a free one in the emptier bucket (two choices keep the
            // fullest bucket far from full).
            let busy = |b: usize| {
                seen[b * BUCKET..][..BUCKET]
                    .iter()
                    .filter(|&&s| !free(s))
                    .count()
            };
            let order = if busy(1) < busy(0) { [1, 0] } else { [0, 1] };
            let at = seen.iter().position(|&s| ours(s)).or_else(|| {
                order
                    .iter()
                    .find_map(|&b| (b * BUCKET..(b + 1) * BUCKET).find(|&i| free(seen[i])))
            });
            let Some(at) = at else {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return Admit::Pass(None);
            };
            let (slot, cur) = (slots[at], seen[at]);
            let n = cur & COUNT_MASK;
            if n >= u64::from(max) {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Admit::Reject;
            }
            let next = (fp << COUNT_BITS) | (n + 1);
            if self.slots[slot]
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Admit::Pass(Some(Held {
                    table: self.clone(),
                    slot,
                }));
            }
        }
    }
}

/// One counted request; dropping it (the request ended) counts it off.
pub(crate) struct Held {
    table: Arc<Table>,
    slot: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The count is the low bits and at least one (this request): the fingerprint stays.
        self.table.slots[self.slot].fetch_sub(1, Ordering::AcqRel);
    }
}

/// What to do with a request.
pub(crate) enum Admit {
    /// Serve it; keep the guard (if counted) until it has ended.
    Pass(Option<Held>),
    /// Over the limit.
    Reject,
}

/// `limit_conn*` as the request path uses it.
#[derive(Clone)]
pub(crate) struct ConnLimit {
    /// Requests one key may have in flight at once.
    pub max: u32,
    pub status: http::StatusCode,
    pub table: Arc<Table>,
    /// `limit_conn_key`; `None`: the client address.
    pub key: Option<crate::hashkey::HashKey>,
}

impl std::fmt::Debug for ConnLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimit")
            .field("max", &self.max)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ConnLimit {
    /// Admits one request from `client`, or, with `limit_conn_key`, with the evaluated `key`
    /// (an empty key is not limited).
    pub fn admit(&self, client: IpAddr, key: &[u8]) -> Admit {
        let h = &self.table.hasher;
        let hash = match self.key {
            None => h.hash_one(client.to_canonical()),
            Some(_) if key.is_empty() => return Admit::Pass(None),
            Some(_) => h.hash_one(key),
        };
        self.table.acquire(hash, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32) -> ConnLimit {
        ConnLimit {
            max,
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            table: Arc::new(Table::new()),
            key: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn held(a: Admit) -> Held {
        match a {
            Admit::Pass(Some(h)) => h,
            Admit::Pass(None) => panic!("passed uncounted"),
            Admit::Reject => panic!("rejected"),
        }
    }

    #[test]
    fn a_client_gets_its_limit_and_a_place_back_when_a_request_ends() {
        let l = limit(2);
        let a = ip("127.0.0.1");
        let first = held(l.admit(a, b""));
        let _second = held(l.admit(a, b""));
        assert!(matches!(l.admit(a, b""), Admit::Reject));
        // Another client is not affected.
        let _other = held(l.admit(ip("127.0.0.2"), b""));
        assert_eq!(l.table.active(), 3);
        drop(first);
        let _third = held(l.admit(a, b""));
        assert!(matches!(l.admit(a, b""), Admit::Reject));
        assert_eq!(l.table.rejected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn counts_go_back_to_zero_and_slots_are_reused() {
        let l = limit(1);
        for round in 0..3 {
            let guards: Vec<Held> = (0..1000u32)
                .map(|i| held(l.admit(IpAddr::from(i.to_be_bytes()), b"")))
                .collect();
            assert_eq!(l.table.active(), 1000, "round {round}");
            drop(guards);
            assert_eq!(l.table.active(), 0, "round {round}");
        }
        assert_eq!(l.table.untracked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn thousands_of_clients_at_once_are_all_counted() {
        // 20,000 clients with a request in flight each: 31% of the slots. Every one of them is
        // counted (with two candidate slots and no buckets, a simulation left about 1,900 of 30,000
        // uncounted; with these buckets, none or one of 30,000, 15 of 40,000, 400 of 50,000).
        let l = limit(1);
        let guards: Vec<Held> = (0..20_000u32)
            .map(|i| held(l.admit(IpAddr::from((i + 1).to_be_bytes()), b"")))
            .collect();
        assert_eq!(l.table.active(), 20_000);
        drop(guards);
        assert_eq!(l.table.active(), 0);
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_client() {
        let l = limit(1);
        let _g = held(l.admit(ip("127.0.0.1"), b""));
        assert!(matches!(
            l.admit(ip("::ffff:127.0.0.1"), b""),
            Admit::Reject
        ));
    }

    #[test]
    fn with_a_key_template_an_empty_key_is_not_limited() {
        let mut l = limit(1);
        l.key = Some(crate::hashkey::HashKey::parse("$http_x_api_key"));
        let a = ip("127.0.0.1");
        let _k1 = held(l.admit(a, b"k1"));
        let _k2 = held(l.admit(a, b"k2"));
        assert!(matches!(l.admit(a, b"k1"), Admit::Reject));
        for _ in 0..3 {
            assert!(matches!(l.admit(a, b""), Admit::Pass(None)));
        }
    }

    #[test]
    fn threads_racing_never_exceed_the_limit() {
        let l = limit(3);
        let peak = Arc::new(AtomicU64::new(0));
        let inside = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (l, peak, inside) = (l.clone(), peak.clone(), inside.clone());
                s.spawn(move || {
                    for _ in 0..20_000 {
                        if let Admit::Pass(Some(g)) = l.admit(ip("127.0.0.1"), b"") {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(g);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(l.table.active(), 0);
    }
}
