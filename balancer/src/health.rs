//! The health owner: the single writer of every upstream's health.
//!
//! It is one tokio task on its own thread that owns all health state (failure windows, check
//! streaks) and talks to the rest by message, i.e. an actor. It is a plain tokio task rather than
//! an actix actor because the proxy workers are plain tokio runtimes and
//! [`crate::Balancer::start`] must work whether or not the caller runs an actix `System`.
//!
//! Inputs: `Failure` messages sent by the request path without waiting (passive checks,
//! nginx `max_fails` within `fail_timeout`), `Reloaded` after a config reload, and its own timer
//! for active HTTP checks (`health_check`: path, interval, timeout, rise, fall, expected status).
//! Output: the upstreams' `down_until` and `healthy` atomics, which the request path reads
//! without a lock.
//!
//! With `resolve_interval`, it also resolves the upstream addresses given as host names again
//! (on the blocking pool) and, when one no longer resolves to the address in use, rebuilds the
//! snapshot as a reload does; that upstream's health starts afresh at its new address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::checks::{self, Streak};
use crate::server::{RunState, Shared};
use crate::upstream::now_millis;

/// A message to the health owner.
#[derive(Debug)]
pub(crate) enum HealthEvent {
    /// An attempt on this upstream failed.
    Failure {
        address: String,
        down_until: Arc<AtomicU64>,
        max_fails: u32,
        fail_timeout: Duration,
    },
    /// The config was reloaded: re-read the upstream set and the check settings.
    Reloaded,
}

/// nginx's passive failure accounting for one upstream.
#[derive(Debug, Default, Clone)]
pub(crate) struct FailureWindow {
    started: Option<Instant>,
    fails: u32,
}

impl FailureWindow {
    /// Counts a failure at `now`; true when it reaches `max_fails` within `fail_timeout`
    /// (the upstream then goes down for `fail_timeout` and counting starts over).
    pub fn record(&mut self, now: Instant, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        if self
            .started
            .is_none_or(|s| now.duration_since(s) >= fail_timeout)
        {
            self.started = Some(now);
            self.fails = 0;
        }
        self.fails += 1;
        if self.fails >= max_fails {
            *self = Self::default();
            return true;
        }
        false
    }
}

/// Runs the health owner until the balancer stops.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut inbox: mpsc::UnboundedReceiver<HealthEvent>,
    mut state: watch::Receiver<RunState>,
) {
    let mut windows: HashMap<String, FailureWindow> = HashMap::new();
    let mut streaks: HashMap<String, Streak> = HashMap::new();
    let mut checks_running: JoinSet<(String, bool)> = JoinSet::new();
    let mut ticker = new_ticker(&shared);
    let mut resolve_tick = tokio::time::interval(Duration::from_secs(1));
    resolve_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resolve = Instant::now();
    let mut resolving: JoinSet<Vec<String>> = JoinSet::new();
    loop {
        tokio::select! {
            () = crate::server::stop_requested(&mut state) => break,
            event = inbox.recv() => match event {
                None => break,
                Some(HealthEvent::Failure { address, down_until, max_fails, fail_timeout }) => {
                    let window = windows.entry(address.clone()).or_default();
                    if window.record(Instant::now(), max_fails, fail_timeout) {
                        let ms = u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX);
                        down_until.store(now_millis().saturating_add(ms), Ordering::Relaxed);
                        log::warn!("upstream {address} marked down for {fail_timeout:?} after {max_fails} failure(s)");
                    }
                }
                Some(HealthEvent::Reloaded) => {
                    let snap = shared.snapshot.load();
                    windows.retain(|a, _| snap.upstreams.iter().any(|u| &u.cfg.address == a));
                    streaks.retain(|a, _| snap.upstreams.iter().any(|u| &u.cfg.address == a));
                    if snap.cfg.health_check.is_none() {
                        for u in &snap.upstreams {
                            u.healthy.store(true, Ordering::Relaxed);
                        }
                        streaks.clear();
                    }
                    ticker = new_ticker(&shared);
                }
            },
            _ = tick(&mut ticker) => {
                let snap = shared.snapshot.load();
                if let Some(hc) = &snap.cfg.health_check {
                    for u in &snap.upstreams {
                        if u.cfg.down {
                            continue;
                        }
                        let (address, addr, hc, tls) = (u.cfg.address.clone(), u.addr, hc.clone(), u.tls.clone());
                        checks_running.spawn(async move {
                            let passed = checks::probe(addr, &address, tls.as_ref(), &hc).await;
                            (address, passed)
                        });
                    }
                }
            }
            _ = resolve_tick.tick() => {
                let every = shared.snapshot.load().cfg.resolve_interval;
                if !every.is_zero() && last_resolve.elapsed() >= every && resolving.is_empty() {
                    last_resolve = Instant::now();
                    let shared = shared.clone();
                    resolving.spawn_blocking(move || crate::upstream::follow_names(&shared));
                }
            }
            Some(done) = resolving.join_next(), if !resolving.is_empty() => {
                let moved = done.unwrap_or_default();
                if !moved.is_empty() {
                    for address in &moved {
                        windows.remove(address);
                        streaks.remove(address);
                    }
                    ticker = new_ticker(&shared);
                }
            }
            Some(done) = checks_running.join_next(), if !checks_running.is_empty() => {
                let Ok((address, passed)) = done else { continue };
                let snap = shared.snapshot.load();
                let (Some(hc), Some(up)) = (&snap.cfg.health_check, snap.upstreams.iter().find(|u| u.cfg.address == address)) else { continue };
                let streak = streaks.entry(address.clone()).or_insert_with(|| Streak::new(up.healthy.load(Ordering::Relaxed)));
                if let Some(healthy) = streak.observe(passed, hc.rise, hc.fall) {
                    if healthy {
                        up.recovered_at.store(now_millis(), Ordering::Relaxed);
                    }
                    up.healthy.store(healthy, Ordering::Relaxed);
                    log::warn!("upstream {address} is now {} (active health check)", if healthy { "up" } else { "down" });
                }
            }
        }
    }
    checks_running.shutdown().await;
    // A look-up in progress is not waited for (a stop does not wait on a slow name server).
    resolving.detach_all();
}

fn new_ticker(shared: &Shared) -> Option<tokio::time::Interval> {
    let snap = shared.snapshot.load();
    snap.cfg.health_check.as_ref().map(|hc| {
        let mut t = tokio::time::interval(hc.interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_fail_timeout_marks_down() {
        let t0 = Instant::now();
        let mut w = FailureWindow::default();
        let ft = Duration::from_secs(10);
        assert!(!w.record(t0, 3, ft));
        assert!(!w.record(t0 + Duration::from_secs(1), 3, ft));
        assert!(w.record(t0 + Duration::from_secs(2), 3, ft));
        // counting starts over after marking down
        assert!(!w.record(t0 + Duration::from_secs(3), 3, ft));
    }

    #[test]
    fn failures_spread_beyond_fail_timeout_do_not_mark_down() {
        let t0 = Instant::now();
        let mut w = FailureWindow::default();
        let ft = Duration::from_secs(10);
        for i in 0..5 {
            assert!(!w.record(t0 + ft * i, 2, ft), "failure {i}");
        }
    }

    #[test]
    fn single_failure_with_max_fails_1_marks_down_and_0_never() {
        let t0 = Instant::now();
        assert!(FailureWindow::default().record(t0, 1, Duration::from_secs(10)));
        assert!(!FailureWindow::default().record(t0, 0, Duration::from_secs(10)));
    }
}
