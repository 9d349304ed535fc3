//! Node health: one actor owns it, the request path reads a snapshot.
//!
//! States: `Up` -> `Down` after `failure_threshold` consecutive failures or
//! time-outs, or at once on connection refused (the request path reports
//! failures with `do_send`, successes are never messages; for two client
//! back-offs after a node came back a refusal counts like a time-out, since
//! other threads' connections may still replay the refusal they saw). Every
//! `probe_interval` the actor
//!
//! * probes each `Down` node with `mn`; when it answers the node turns
//!   `Warming` and a warm-up (module `warmup`) brings it up to date, then
//!   it is `Up` (a failed warm-up is retried after 10 probe intervals;
//!   the node stays usable meanwhile, and failure reports take it down if it
//!   really failed again);
//! * reads the warm-up sentinel on each `Up` node: a node that restarted
//!   empty between two probes has lost it, so it is warmed up too (no user
//!   traffic needed to notice). A node that had failures without going down
//!   may have missed writes; it is re-synchronised the same way, at most once
//!   per 30 probe intervals;
//! * flushes sessions parked in memory (degraded mode) once a node is usable.
//!
//! Each change is published as a whole new [`HealthSnapshot`] in an
//! `ArcSwap`; entering and leaving degraded mode (every node down) is logged
//! once per transition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::config::MemcachedStoreConfig;
use super::inner::{Core, SENTINEL_KEY};
use super::warmup::warm_up;

/// Health of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Up,
    /// Answering again, being brought up to date; already used for I/O
    /// (every write to it is version-guarded or newer than what warm-up copies).
    Warming,
    /// Not used; probed until it answers.
    Down,
}

/// One node in a [`HealthSnapshot`].
#[derive(Debug, Clone)]
pub struct NodeHealth {
    /// Node id.
    pub id: String,
    /// Current state.
    pub state: NodeState,
    /// Warm-ups of this node completed since the store started.
    pub warmups_completed: u64,
    /// The node is known to hold its share of sessions: its warm-up
    /// sentinel was seen, or this store warmed it up. False until the
    /// first check after start and while a lost sentinel is being handled.
    pub in_sync: bool,
}

/// Node health as published by the health actor.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    /// In configuration order.
    pub nodes: Vec<NodeHealth>,
}

impl HealthSnapshot {
    pub(crate) fn all_up(cfg: &MemcachedStoreConfig) -> Self {
        HealthSnapshot {
            nodes: cfg
                .nodes
                .iter()
                .map(|n| NodeHealth {
                    id: n.id.clone(),
                    state: NodeState::Up,
                    warmups_completed: 0,
                    in_sync: false,
                })
                .collect(),
        }
    }

    /// True when node number `i` may be used (up or warming).
    pub fn usable(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .is_some_and(|n| n.state != NodeState::Down)
    }

    /// True when every node is down: degraded mode.
    pub fn all_down(&self) -> bool {
        self.nodes.iter().all(|n| n.state == NodeState::Down)
    }

    /// The health of node `id`.
    pub fn node(&self, id: &str) -> Option<&NodeHealth> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// A failed or timed-out operation on a node (from the request path).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct NodeFailed {
    pub(crate) node: usize,
    pub(crate) refused: bool,
    pub(crate) consecutive: u32,
}

struct Track {
    state: NodeState,
    /// A probe or warm-up is in flight.
    busy: bool,
    /// Bumped when the node goes down, so late results of older probes and
    /// warm-ups are ignored.
    generation: u64,
    warmups: u64,
    /// Published as [`NodeHealth::in_sync`].
    in_sync: bool,
    /// Failures seen without going down: it may have missed writes.
    dirty: bool,
    last_sync: Option<Instant>,
    /// When a failed warm-up may be retried.
    retry_at: Option<Instant>,
    /// When the node last came back up (after being down).
    back_since: Option<Instant>,
}

/// Owns node health; see the module docs.
pub(crate) struct HealthActor {
    core: Arc<Core>,
    nodes: Vec<Track>,
    flushing: bool,
    /// A warm-up is running (they run one at a time).
    warming: bool,
    /// How long after a node came back a refusal does not mark it down at
    /// once: twice the client's longest reconnect back-off.
    refused_grace: Duration,
}

impl HealthActor {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        let refused_grace = core.clients.first().map_or(Duration::from_secs(2), |c| {
            c.options().reconnect_backoff_max * 2
        });
        let nodes = (0..core.placement.len())
            .map(|_| Track {
                state: NodeState::Up,
                busy: false,
                generation: 0,
                warmups: 0,
                in_sync: false,
                dirty: false,
                last_sync: None,
                retry_at: None,
                back_since: None,
            })
            .collect();
        HealthActor {
            core,
            nodes,
            flushing: false,
            warming: false,
            refused_grace,
        }
    }

    fn publish(&mut self) {
        let before = self.core.health.load().all_down();
        let snap = HealthSnapshot {
            nodes: self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, t)| NodeHealth {
                    id: self.core.node_id(i).to_owned(),
                    state: t.state,
                    warmups_completed: t.warmups,
                    in_sync: t.in_sync,
                })
                .collect(),
        };
        let after = snap.all_down();
        self.core.health.store(Arc::new(snap));
        if after && !before {
            log::error!(
                "every memcached node is down: degraded mode, sessions are kept only in this app node's memory"
            );
        } else if before && !after {
            log::warn!(
                "a memcached node is back: leaving degraded mode, {} sessions to flush",
                self.core.degraded.pending()
            );
        }
    }

    fn mark_down(&mut self, node: usize, why: &str) {
        let t = &mut self.nodes[node];
        if t.state == NodeState::Down {
            return;
        }
        t.state = NodeState::Down;
        t.in_sync = false;
        t.generation += 1;
        t.busy = false;
        log::warn!("memcached node {} is down: {why}", self.core.node_id(node));
        self.publish();
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let resync_every = self.core.cfg.probe_interval * 30;
        for node in 0..self.nodes.len() {
            let t = &self.nodes[node];
            if t.busy {
                continue;
            }
            let gen = t.generation;
            let core = self.core.clone();
            match t.state {
                NodeState::Down => {
                    self.nodes[node].busy = true;
                    let fut = async move {
                        core.timed(node, "noop", core.clients[node].noop())
                            .await
                            .is_ok()
                    };
                    ctx.spawn(fut.into_actor(self).map(move |ok, act, ctx| {
                        if act.nodes[node].generation != gen {
                            return;
                        }
                        act.nodes[node].busy = false;
                        if ok {
                            log::info!("memcached node {} answers again", act.core.node_id(node));
                            act.start_warmup(node, ctx);
                        }
                    }));
                }
                NodeState::Up => {
                    let resync = t.dirty && t.last_sync.is_none_or(|s| s.elapsed() >= resync_every);
                    self.nodes[node].busy = true;
                    let fut = async move { core.exists(node, SENTINEL_KEY).await };
                    ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                        if act.nodes[node].generation != gen {
                            return;
                        }
                        act.nodes[node].busy = false;
                        match res {
                            Ok(true) if !act.nodes[node].in_sync => {
                                act.nodes[node].in_sync = true;
                                act.publish();
                                if resync {
                                    act.start_warmup(node, ctx);
                                }
                            }
                            Ok(false) => {
                                if act.nodes[node].in_sync {
                                    act.nodes[node].in_sync = false;
                                    act.publish();
                                }
                                log::warn!(
                                    "memcached node {} lost its data (restarted empty?): warming it up",
                                    act.core.node_id(node)
                                );
                                act.start_warmup(node, ctx);
                            }
                            Ok(true) if resync => {
                                log::info!(
                                    "memcached node {} had failures: re-synchronising it",
                                    act.core.node_id(node)
                                );
                                act.start_warmup(node, ctx);
                            }
                            _ => {}
                        }
                    }));
                }
                NodeState::Warming => {
                    if t.retry_at.is_none_or(|at| Instant::now() >= at) {
                        self.start_warmup(node, ctx);
                    }
                }
            }
        }
        self.maybe_flush(ctx);
    }

    fn start_warmup(&mut self, node: usize, ctx: &mut Context<Self>) {
        if self.warming {
            // One warm-up at a time: each enumerates every node, and
            // memcached runs one crawler per node. This one waits its turn
            // (the next ticks start it), usable meanwhile.
            if self.nodes[node].state == NodeState::Down {
                self.nodes[node].state = NodeState::Warming;
                self.publish();
            }
            return;
        }
        self.warming = true;
        let t = &mut self.nodes[node];
        let gen = t.generation;
        t.busy = true;
        t.dirty = false;
        t.last_sync = Some(Instant::now());
        t.retry_at = None;
        let was_up = t.state == NodeState::Up;
        if !was_up {
            t.state = NodeState::Warming;
            self.publish();
        }
        let fut = warm_up(self.core.clone(), node);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.warming = false;
            if act.nodes[node].generation != gen {
                return;
            }
            match res {
                Ok(report) => {
                    let t = &mut act.nodes[node];
                    t.busy = false;
                    if t.state != NodeState::Up {
                        t.back_since = Some(Instant::now());
                    }
                    t.state = NodeState::Up;
                    t.warmups += 1;
                    t.in_sync = true;
                    log::info!(
                        "memcached node {} is up to date: {} sessions checked, {} copies written to it",
                        act.core.node_id(node),
                        report.checked,
                        report.copied
                    );
                    act.publish();
                    act.maybe_flush(ctx);
                }
                Err(e) => {
                    // A node that really failed again goes down through the
                    // failure reports; otherwise retry a little later.
                    let t = &mut act.nodes[node];
                    t.busy = false;
                    t.retry_at = Some(Instant::now() + act.core.cfg.probe_interval * 10);
                    log::warn!(
                        "warm-up of memcached node {} failed, will retry: {e}",
                        act.core.node_id(node)
                    );
                }
            }
        }));
    }

    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing
            || self.core.degraded.pending() == 0
            || self.nodes.iter().all(|t| t.state == NodeState::Down)
        {
            return;
        }
        self.flushing = true;
        let core = self.core.clone();
        let fut = async move { core.flush_degraded().await };
        ctx.spawn(fut.into_actor(self).map(|(flushed, left), act, _| {
            act.flushing = false;
            if flushed > 0 {
                log::info!(
                    "degraded mode: flushed {flushed} sessions to memcached, {left} still in memory"
                );
            } else {
                log::debug!("degraded mode: {left} sessions still waiting in memory");
            }
        }));
    }
}

impl Actor for HealthActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
        let every: Duration = self.core.cfg.probe_interval;
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }
}

impl Handler<NodeFailed> for HealthActor {
    type Result = ();

    fn handle(&mut self, msg: NodeFailed, _: &mut Context<Self>) {
        let Some(t) = self.nodes.get_mut(msg.node) else {
            return;
        };
        if t.state == NodeState::Down {
            return;
        }
        // Right after a node came back, other threads' connection slots may
        // still be in their reconnect back-off and report the refusal they
        // saw while it was down: then a refusal counts like a time-out.
        let fresh = t
            .back_since
            .is_some_and(|at| at.elapsed() < self.refused_grace);
        if msg.refused && !fresh {
            self.mark_down(msg.node, "connection refused");
        } else if msg.consecutive >= self.core.cfg.failure_threshold {
            let why = format!("{} consecutive failures or time-outs", msg.consecutive);
            self.mark_down(msg.node, &why);
        } else {
            t.dirty = true;
        }
    }
}
