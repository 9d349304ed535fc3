//! Request rate limiting per client address (nginx's `limit_req_zone $binary_remote_addr
//! rate=...` with `limit_req burst=... [nodelay]`), or per the value of `limit_req_key` (an
//! API key header, a cookie; a request whose key is empty is not limited).
//!
//! Each client address gets a leaky bucket, kept as GCRA (generic cell rate algorithm) state:
//! the *theoretical arrival time* (TAT) of its next request. A request at time `t` is over the
//! limit when `max(TAT, t) - t` exceeds the burst tolerance (`burst` requests' worth of time);
//! otherwise TAT moves one interval (`1 / rate`) on. Like nginx, a request within the burst is
//! delayed until its turn (`max(TAT, t) - t`), or served at once with `nodelay`; a request over
//! it is answered with `limit_req_status` (503) without reaching an upstream.
//!
//! The state is a fixed table of atomic slots shared by every worker (no lock, no map, no
//! allocation per request): each slot packs a 20-bit fingerprint of the address with its TAT in
//! units of 10 µs. An address hashes (with a per-process random key, so clients cannot aim at
//! each other's slots) to two candidate slots: the one holding its fingerprint, else the one
//! whose client went quiet longest is taken over. So about [`SLOTS`] busy clients are tracked
//! exactly; beyond that, the quietest ones lose their state (they start with a full bucket
//! again), as nginx's zone evicts its least recently used states.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots in the table (a power of two), 8 bytes each: 1 MiB in all.
pub(crate) const SLOTS: usize = 1 << 17;
/// Time unit of the stored TATs, in nanoseconds.
const TICK_NS: u64 = 10_000;
/// Ticks per second.
const TICKS_PER_SEC: u64 = 1_000_000_000 / TICK_NS;
const TAT_BITS: u32 = 44;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

/// A `limit_req_rate` value: `<n>r/s` or `<n>r/m`; the interval between requests in ticks.
pub(crate) fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (n, per_secs) = if let Some(n) = t.strip_suffix("r/s") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix("r/m") {
        (n, 60)
    } else {
        return Err(format!(
            "{text:?}: expected a rate such as \"10r/s\" or \"300r/m\""
        ));
    };
    let n: u64 =
        n.trim().parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            format!("{text:?}: the number of requests must be a whole number >= 1")
        })?;
    let interval = per_secs * TICKS_PER_SEC / n;
    if interval == 0 {
        return Err(format!("{text:?}: at most {TICKS_PER_SEC}r/s"));
    }
    Ok(interval)
}

/// The buckets: shared by every worker, kept across reloads.
pub(crate) struct Table {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
    /// Requests refused (over the burst).
    pub rejected: AtomicU64,
    /// Requests delayed (within the burst, without `nodelay`).
    pub delayed: AtomicU64,
}

impl Table {
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            start: Instant::now(),
            rejected: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // Starts at one tick so that a zero slot is always older than any state.
        (self.start.elapsed().as_nanos() / u128::from(TICK_NS)) as u64 + 1
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Within the burst: serve it after this wait.
    Delay(Duration),
    /// Over the burst.
    Reject,
}

/// `limit_req_*` as the request path uses it.
#[derive(Clone)]
pub(crate) struct RateLimit {
    /// Ticks between requests at the configured rate.
    interval: u64,
    /// How far ahead of now a TAT may run (`burst` intervals).
    tolerance: u64,
    nodelay: bool,
    pub status: http::StatusCode,
    pub table: Arc<Table>,
    /// `limit_req_key`; `None`: the client address.
    pub key: Option<crate::hashkey::HashKey>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("interval_ticks", &self.interval)
            .field("tolerance_ticks", &self.tolerance)
            .field("nodelay", &self.nodelay)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn split(slot: u64) -> (u64, u64) {
    (slot >> TAT_BITS, slot & TAT_MASK)
}

impl RateLimit {
    pub fn new(
        interval: u64,
        burst: u32,
        nodelay: bool,
        status: http::StatusCode,
        table: Arc<Table>,
        key: Option<crate::hashkey::HashKey>,
    ) -> Self {
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            nodelay,
            status,
            table,
            key,
        }
    }

    /// Decides on one request now: from `client`, or, with `limit_req_key`, with the
    /// evaluated `key` (an empty key is not limited).
    pub fn check(&self, client: IpAddr, key: &[u8]) -> Verdict {
        let now = self.table.now();
        match self.key {
            None => self.check_hash(self.table.hasher.hash_one(client.to_canonical()), now),
            Some(_) if key.is_empty() => Verdict::Pass,
            Some(_) => self.check_hash(self.table.hasher.hash_one(key), now),
        }
    }

    #[cfg(test)]
    fn check_at(&self, client: IpAddr, now: u64) -> Verdict {
        self.check_hash(self.table.hasher.hash_one(client.to_canonical()), now)
    }

    fn check_hash(&self, hash: u64, now: u64) -> Verdict {
        let t = &*self.table;
        // A nonzero fingerprint: an empty slot (0) never matches.
        let fp = (hash >> TAT_BITS) | 1;
        let mask = (SLOTS - 1) as u64;
        let (i1, i2) = ((hash & mask) as usize, ((hash >> 17) & mask) as usize);
        loop {
            let (a, b) = (
                t.slots[i1].load(Ordering::Acquire),
                t.slots[i2].load(Ordering::Acquire),
            );
            let (slot, cur) = if split(a).0 == fp {
                (i1, a)
            } else if split(b).0 == fp {
                (i2, b)
            } else if split(a).1 <= split(b).1 {
                (i1, a)
            } else {
                (i2, b)
            };
            let (cur_fp, cur_tat) = split(cur);
            let tat = if cur_fp == fp { cur_tat.max(now) } else { now };
            let ahead = tat - now;
            if ahead > self.tolerance {
                t.rejected.fetch_add(1, Ordering::Relaxed);
                return Verdict::Reject;
            }
            let next = (fp << TAT_BITS) | ((tat + self.interval) & TAT_MASK);
            if t.slots[slot]
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if ahead == 0 || self.nodelay {
                    return Verdict::Pass;
                }
                t.delayed.fetch_add(1, Ordering::Relaxed);
                return Verdict::Delay(Duration::from_nanos(ahead * TICK_NS));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: &str, burst: u32, nodelay: bool) -> RateLimit {
        RateLimit::new(
            parse_rate(rate).unwrap(),
            burst,
            nodelay,
            http::StatusCode::SERVICE_UNAVAILABLE,
            Arc::new(Table::new()),
            None,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_or_name_the_problem() {
        assert_eq!(parse_rate("10r/s"), Ok(TICKS_PER_SEC / 10));
        assert_eq!(parse_rate(" 60r/m "), Ok(TICKS_PER_SEC));
        for bad in ["10", "0r/s", "-1r/s", "1.5r/s", "10r/h", "1000000r/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        // 10 r/s, burst 3, nodelay: 4 at once (1 + burst), then one per 100 ms.
        let l = limit("10r/s", 3, true);
        let a = ip("192.0.2.1");
        let t0 = 1000;
        let v: Vec<Verdict> = (0..6).map(|_| l.check_at(a, t0)).collect();
        assert_eq!(&v[..4], &[Verdict::Pass; 4]);
        assert_eq!(&v[4..], &[Verdict::Reject; 2]);
        let tick = TICKS_PER_SEC / 10;
        assert_eq!(l.check_at(a, t0 + tick / 2), Verdict::Reject);
        assert_eq!(l.check_at(a, t0 + tick), Verdict::Pass);
        assert_eq!(l.check_at(a, t0 + tick), Verdict::Reject);
        // Another client has its own bucket.
        assert_eq!(l.check_at(ip("192.0.2.2"), t0), Verdict::Pass);
        // A quiet client gets its whole burst back.
        let later = t0 + 10 * tick;
        assert!((0..4).all(|_| l.check_at(a, later) == Verdict::Pass));
        assert_eq!(l.table.rejected.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn without_nodelay_the_burst_is_spread_out() {
        let l = limit("10r/s", 2, false);
        let a = ip("2001:db8::1");
        assert_eq!(l.check_at(a, 5), Verdict::Pass);
        assert_eq!(l.check_at(a, 5), Verdict::Delay(Duration::from_millis(100)));
        assert_eq!(l.check_at(a, 5), Verdict::Delay(Duration::from_millis(200)));
        assert_eq!(l.check_at(a, 5), Verdict::Reject);
        // IPv4-mapped IPv6 is the same client as IPv4.
        let b = ip("198.51.100.7");
        assert_eq!(l.check_at(b, 5), Verdict::Pass);
        assert!(matches!(
            l.check_at(ip("::ffff:198.51.100.7"), 5),
            Verdict::Delay(_)
        ));
    }

    #[test]
    fn many_clients_at_once_each_get_their_first_request() {
        // Far fewer clients than slots: with two choices, none is limited by another.
        let l = limit("1r/m", 0, true);
        let refused = (0..2_000u32)
            .filter(|i| l.check_at(IpAddr::from(i.to_be_bytes()), 7) == Verdict::Reject)
            .count();
        assert_eq!(refused, 0);
        // And each one's second request is refused.
        let second = (0..2_000u32)
            .filter(|i| l.check_at(IpAddr::from(i.to_be_bytes()), 7) == Verdict::Reject)
            .count();
        // Both of a client's slots taken by others is rare (about (2000 / SLOTS)^2).
        assert!(second >= 1_990, "{second}");
    }
}
