//! Statistics like msm's JMX ones, as lock-free counters and timings.
//!
//! One [`Stats`] is shared (`Arc`) by the manager, the persistence actor and
//! the backends; `GET /ferrocat/stats` serializes a [`Stats::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// A timing: count, min, mean and max in microseconds.
#[derive(Debug)]
pub struct Timing {
    count: AtomicU64,
    sum_us: AtomicU64,
    min_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
        }
    }
}

/// What [`Timing`] reports.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TimingSnapshot {
    /// samples
    pub count: u64,
    /// smallest sample, µs
    pub min_us: u64,
    /// mean, µs
    pub mean_us: f64,
    /// largest sample, µs
    pub max_us: u64,
}

impl Timing {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.record_value(us);
    }

    /// Records one raw value (µs, or bytes for sizes).
    pub fn record_value(&self, v: u64) {
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(v, Relaxed);
        self.min_us.fetch_min(v, Relaxed);
        self.max_us.fetch_max(v, Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> TimingSnapshot {
        let count = self.count.load(Relaxed);
        let sum = self.sum_us.load(Relaxed);
        TimingSnapshot {
            count,
            min_us: if count == 0 {
                0
            } else {
                self.min_us.load(Relaxed)
            },
            mean_us: if count == 0 {
                0.0
            } else {
                sum as f64 / count as f64
            },
            max_us: self.max_us.load(Relaxed),
        }
    }
}

/// A size distribution: count, min, mean and max in bytes (the same counters as a
/// [`Timing`], reported with byte units).
#[derive(Debug, Default)]
pub struct Size(Timing);

/// What [`Size`] reports.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SizeSnapshot {
    /// samples
    pub count: u64,
    /// smallest sample, bytes
    pub min_bytes: u64,
    /// mean, bytes
    pub mean_bytes: f64,
    /// largest sample, bytes
    pub max_bytes: u64,
}

impl Size {
    /// Records one size in bytes.
    pub fn record(&self, bytes: u64) {
        self.0.record_value(bytes);
    }

    /// Current values.
    pub fn snapshot(&self) -> SizeSnapshot {
        let t = self.0.snapshot();
        SizeSnapshot {
            count: t.count,
            min_bytes: t.min_us,
            mean_bytes: t.mean_us,
            max_bytes: t.max_us,
        }
    }
}

/// Appends one Prometheus metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write as _;
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let help = help.replace('\\', "\\\\");
    let _ = writeln!(out, "# HELP ferrocat_session_{name} {help}");
    let _ = writeln!(out, "# TYPE ferrocat_session_{name} {kind}");
}

/// Appends a distribution as a Prometheus summary without quantiles (`_count`, `_sum`, in
/// `unit`s: the samples divided by `per_unit`) and gauges of its smallest and largest sample.
fn distribution(
    out: &mut String,
    (name, unit, per_unit): (&str, &str, f64),
    help: &str,
    (count, mean, min, max): (u64, f64, u64, u64),
) {
    use std::fmt::Write as _;
    family(out, &format!("{name}_{unit}"), "summary", help);
    let _ = writeln!(out, "ferrocat_session_{name}_{unit}_count {count}");
    let _ = writeln!(
        out,
        "ferrocat_session_{name}_{unit}_sum {}",
        (mean * count as f64).round() / per_unit
    );
    for (edge, v) in [("min", min), ("max", max)] {
        family(
            out,
            &format!("{name}_{edge}_{unit}"),
            "gauge",
            &format!("{edge} of: {help}"),
        );
        let _ = writeln!(
            out,
            "ferrocat_session_{name}_{edge}_{unit} {}",
            v as f64 / per_unit
        );
    }
}

macro_rules! stats {
    (
        counters { $( $(#[doc = $doc:literal])* $c:ident; )* }
        timings { $( $(#[doc = $tdoc:literal])* $t:ident; )* }
        sizes { $( $(#[doc = $sdoc:literal])* $z:ident; )* }
    ) => {
        /// All session statistics.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $c: AtomicU64, )*
            $( $(#[doc = $tdoc])* pub $t: Timing, )*
            $( $(#[doc = $sdoc])* pub $z: Size, )*
        }

        /// A point-in-time copy of [`Stats`], serialized as JSON.
        #[derive(Debug, Clone, Serialize)]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])* pub $c: u64, )*
            $( $(#[doc = $tdoc])* pub $t: TimingSnapshot, )*
            $( $(#[doc = $sdoc])* pub $z: SizeSnapshot, )*
        }

        impl StatsSnapshot {
            /// The same figures in Prometheus' text format (0.0.4): each counter as
            /// `ferrocat_session_<name>_total`, each timing as a summary
            /// `ferrocat_session_<name>_seconds` (count and sum) with `_min_seconds` and
            /// `_max_seconds` gauges, each size likewise in bytes.
            pub fn to_prometheus(&self) -> String {
                use std::fmt::Write as _;
                let mut out = String::new();
                $(
                    family(&mut out, concat!(stringify!($c), "_total"), "counter",
                        concat!($($doc, " "),*));
                    let _ = writeln!(out, "ferrocat_session_{}_total {}", stringify!($c), self.$c);
                )*
                $(
                    let t = &self.$t;
                    distribution(&mut out, (stringify!($t), "seconds", 1e6),
                        concat!($($tdoc, " "),*), (t.count, t.mean_us, t.min_us, t.max_us));
                )*
                $(
                    let z = &self.$z;
                    distribution(&mut out, (stringify!($z), "bytes", 1.0),
                        concat!($($sdoc, " "),*),
                        (z.count, z.mean_bytes, z.min_bytes, z.max_bytes));
                )*
                out
            }
        }

        impl Stats {
            /// Current values of every counter, timing and size.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $c: self.$c.load(Relaxed), )*
                    $( $t: self.$t.snapshot(), )*
                    $( $z: self.$z.snapshot(), )*
                }
            }
        }
    };
}

stats! {
    counters {
    /// Requests that had a session (loaded or created).
    requests_with_session;
    /// Requests that ran without touching a session.
    requests_without_session;
    /// Requests skipped by `request_uri_ignore_pattern`.
    requests_ignored;
    /// Sessions created.
    sessions_created;
    /// Sessions invalidated (logout).
    sessions_invalidated;
    /// Session ids renewed (login).
    sessions_renewed;
    /// Cookies that were garbled, oversized, forged or unknown.
    invalid_cookies;
    /// Store reads.
    store_loads;
    /// Store reads that found nothing.
    store_load_misses;
    /// Successful backups (writes of a changed session).
    backups;
    /// Failed or timed-out backups.
    backup_failures;
    /// Saves refused because the session was invalidated (logged out) after
    /// the request loaded it; the logout stands.
    saves_refused_after_logout;
    /// Writes skipped because the serialized session was unchanged.
    unchanged_sessions_skipped;
    /// Expiry refreshes of unchanged sessions.
    touches;
    /// Sessions taken over from another app node (sticky failover, msm's "tomcat failover").
    tomcat_failovers;
    /// Sessions read from the backup or moved to another memcached node.
    memcached_failovers;
    /// Copies repaired (a missing or stale copy rewritten from the newer one).
    repairs;
    /// Sessions copied to a recovered node by warm-up.
    warmup_copied;
    /// Values from memcached that could not be decoded (treated as a miss).
    garbage_values;
    /// Operations that ran with every memcached node down (memory-only degraded mode).
    degraded_operations;
    /// Lock acquisitions.
    locks_acquired;
    /// Lock acquisitions that had to wait.
    lock_waits;
    /// Lock acquisitions that gave up (operation timeout).
    lock_failures;
    /// Requests served without a lock in `auto` mode (learnt read-only).
    lock_skipped_readonly;
    /// Sessions evicted from the sticky cache by its bounds.
    cache_evictions;
    /// Sticky cache misses served from the store.
    cache_misses;
    /// Sticky cache hits idle past their max inactive interval: dropped, and
    /// the store asked instead.
    cache_expired;
    /// Sticky cache hits checked against the store (`cache_revalidate_after`).
    cache_revalidations;
    /// Revalidations that found the cached copy outdated (another app node
    /// changed the session, or logged it out).
    cache_stale;
    }
    timings {
    /// Time to lock.
    lock_wait;
    /// Time to load (store read + decode).
    load;
    /// Time to serialize attributes.
    serialization;
    /// Time to store (write primary + backup).
    store;
    }
    sizes {
    /// Size of stored sessions (their serialized attributes), in bytes.
    stored_size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_has_every_figure_with_help_and_type() {
        let s = Stats::default();
        s.store_loads.fetch_add(7, Relaxed);
        s.load.record(Duration::from_micros(100));
        s.load.record(Duration::from_micros(300));
        s.stored_size.record(512);
        let text = s.snapshot().to_prometheus();
        assert!(text.contains(
            "# HELP ferrocat_session_store_loads_total Store reads.\n\
             # TYPE ferrocat_session_store_loads_total counter\n\
             ferrocat_session_store_loads_total 7\n"
        ));
        assert!(text.contains("# TYPE ferrocat_session_load_seconds summary\n"));
        assert!(text.contains("ferrocat_session_load_seconds_count 2\n"));
        assert!(
            text.contains("ferrocat_session_load_seconds_sum 0.0004\n"),
            "{text}"
        );
        assert!(text.contains("ferrocat_session_load_min_seconds 0.0001\n"));
        assert!(text.contains("ferrocat_session_load_max_seconds 0.0003\n"));
        assert!(text.contains("ferrocat_session_stored_size_bytes_sum 512\n"));
        // Every sample line follows its family's HELP and TYPE; one line per counter.
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, helps);
        let json = serde_json::to_value(s.snapshot()).unwrap();
        let obj = json.as_object().unwrap();
        let counters = obj.values().filter(|v| v.is_u64()).count();
        let dists = obj.values().filter(|v| v.is_object()).count();
        assert_eq!(samples, counters + dists * 4);
        assert_eq!(types, counters + dists * 3);
    }

    #[test]
    fn timing_tracks_min_mean_max() {
        let t = Timing::default();
        assert_eq!(t.snapshot().min_us, 0);
        t.record(Duration::from_micros(10));
        t.record(Duration::from_micros(30));
        let s = t.snapshot();
        assert_eq!((s.count, s.min_us, s.max_us), (2, 10, 30));
        assert!((s.mean_us - 20.0).abs() < f64::EPSILON);
    }

    #[test]
    fn snapshot_serializes_every_counter() {
        let s = Stats::default();
        s.backups.fetch_add(3, Relaxed);
        let json = serde_json::to_value(s.snapshot()).unwrap();
        assert_eq!(json["backups"], 3);
        assert_eq!(json["store"]["count"], 0);
        assert_eq!(json["store"]["max_us"], 0);
    }

    #[test]
    fn sizes_are_reported_in_bytes() {
        let s = Stats::default();
        s.stored_size.record(100);
        s.stored_size.record(300);
        let json = serde_json::to_value(s.snapshot()).unwrap();
        let size = &json["stored_size"];
        assert_eq!(size["count"], 2);
        assert_eq!(size["min_bytes"], 100);
        assert_eq!(size["mean_bytes"], 200.0);
        assert_eq!(size["max_bytes"], 300);
        assert!(size.get("max_us").is_none(), "{size}");
    }
}
