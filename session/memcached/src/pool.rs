//! Per-thread connection slots, so a client works from any tokio runtime.
//!
//! actix runs one current-thread tokio runtime per worker. A connection task must live on
//! a runtime that is being driven, and crossing threads for every request costs wake-ups.
//! So each thread that uses a client gets its own slots (`ClientOptions::connections`
//! per node), spawned on that thread's current runtime: a worker's memcached i/o runs on
//! the worker itself. A slot whose task is gone (its runtime shut down, the client
//! dropped) shows a closed channel and is replaced on next use. Entries of dropped
//! clients are pruned when a new client registers on the thread.

use std::cell::RefCell;
use std::collections::HashMap;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::client::Inner;
use crate::connection::{self, Request};
use crate::McError;

struct LocalSlots {
    slots: Vec<mpsc::Sender<Request>>,
    next: usize,
}

thread_local! {
    static SLOTS: RefCell<HashMap<u64, LocalSlots>> = RefCell::new(HashMap::new());
}

/// Where a request went: already queued, or the channel was full and the caller must
/// wait for room on this sender.
pub(crate) enum Submitted {
    Queued,
    Wait(mpsc::Sender<Request>, Request),
}

/// Queue `req` on one of this thread's slots for the client `inner`.
pub(crate) fn submit(inner: &Inner, req: Request) -> Result<Submitted, McError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| McError::NoRuntime)?;
    SLOTS.with(|cell| {
        let mut map = cell.borrow_mut();
        if !map.contains_key(&inner.id) {
            map.retain(|_, l| l.slots.iter().any(|s| !s.is_closed()));
        }
        let local = map.entry(inner.id).or_insert_with(|| LocalSlots {
            slots: Vec::new(),
            next: 0,
        });
        let n = inner.opts.connections.max(1);
        while local.slots.len() < n {
            local.slots.push(spawn(inner, &handle));
        }
        let i = local.next % n;
        local.next = local.next.wrapping_add(1);
        let slot = &mut local.slots[i];
        if slot.is_closed() {
            *slot = spawn(inner, &handle);
        }
        match slot.try_send(req) {
            Ok(()) => Ok(Submitted::Queued),
            Err(TrySendError::Full(req)) => Ok(Submitted::Wait(slot.clone(), req)),
            Err(TrySendError::Closed(_)) => Err(McError::Closed),
        }
    })
}

fn spawn(inner: &Inner, handle: &tokio::runtime::Handle) -> mpsc::Sender<Request> {
    connection::spawn(
        handle,
        inner.addr,
        inner.opts.clone(),
        inner.shutdown.subscribe(),
    )
}
