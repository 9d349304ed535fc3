//! Per-thread connection slots, so a client works from any tokio runtime.
//!
//! actix runs one current-thread tokio runtime per worker. A connection task must live on
//! a runtime that is being driven, and crossing threads for every request costs wake-ups.
//! So each thread that uses a client gets its own slots (`ClientOptions::connections`
//! per node), spawned on that thread's current runtime: a worker's memcached i/o runs on
//! the worker itself. Requests fill the first slot up to `FILL_PER_SLOT` in flight before
//! using the next (slots connect lazily, so an idle thread holds one connection). A slot whose task is gone (its runtime shut down, the client
//! dropped) shows a closed channel and is replaced on next use. Entries of dropped
//! clients are pruned when a new client registers on the thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::client::Inner;
use crate::connection::{self, Request};
use crate::McError;

/// A slot takes new requests until this many are in flight on it; then the next slot is
/// used. Filling the first slot keeps a lightly loaded thread on one warm connection
/// (measured: round-robin over idle connections doubled the latency at concurrency 1,
/// each connection waking a different memcached thread), while heavy load still spreads.
const FILL_PER_SLOT: usize = 32;

struct Slot {
    tx: mpsc::Sender<Request>,
    /// Requests submitted on this slot and not yet answered (or given up).
    in_flight: Arc<AtomicUsize>,
}

struct LocalSlots {
    slots: Vec<Slot>,
}

thread_local! {
    static SLOTS: RefCell<HashMap<u64, LocalSlots>> = RefCell::new(HashMap::new());
}

/// Counts one request in flight on a slot until dropped.
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request went: already queued, or the channel was full and the caller must
/// wait for room on this sender.
pub(crate) enum Submitted {
    Queued,
    Wait(mpsc::Sender<Request>, Request),
}

/// Queue `req` on one of this thread's slots for the client `inner`.
pub(crate) fn submit(inner: &Inner, req: Request) -> Result<(Submitted, InFlight), McError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| McError::NoRuntime)?;
    SLOTS.with(|cell| {
        let mut map = cell.borrow_mut();
        if !map.contains_key(&inner.id) {
            map.retain(|_, l| l.slots.iter().any(|s| !s.tx.is_closed()));
        }
        let local = map
            .entry(inner.id)
            .or_insert_with(|| LocalSlots { slots: Vec::new() });
        let n = inner.opts.connections.max(1);
        while local.slots.len() < n {
            local.slots.push(spawn(inner, &handle));
        }
        let load = |s: &Slot| s.in_flight.load(Ordering::Relaxed);
        let i = local
            .slots
            .iter()
            .position(|s| load(s) < FILL_PER_SLOT)
            .or_else(|| (0..n).min_by_key(|&i| load(&local.slots[i])))
            .unwrap_or(0);
        let slot = &mut local.slots[i];
        if slot.tx.is_closed() {
            *slot = spawn(inner, &handle);
        }
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(slot.in_flight.clone());
        match slot.tx.try_send(req) {
            Ok(()) => Ok((Submitted::Queued, guard)),
            Err(TrySendError::Full(req)) => Ok((Submitted::Wait(slot.tx.clone(), req), guard)),
            Err(TrySendError::Closed(_)) => Err(McError::Closed),
        }
    })
}

fn spawn(inner: &Inner, handle: &tokio::runtime::Handle) -> Slot {
    Slot {
        tx: connection::spawn(
            handle,
            inner.addr,
            inner.opts.clone(),
            inner.shutdown.subscribe(),
        ),
        in_flight: Arc::new(AtomicUsize::new(0)),
    }
}
