//! Worker threads: accept loop, client connections, graceful and immediate stop.
//!
//! Every worker is an OS thread with a current-thread tokio runtime and a `LocalSet`, its own
//! listening socket on the shared port (`SO_REUSEPORT` when there are several workers, so the
//! kernel spreads connections) and its own upstream [`Pool`]. Nothing is shared between workers
//! but [`Shared`]: the config snapshot (`ArcSwap`), the upstreams' atomics and the sender to the
//! health owner. On stop the accept loop closes its socket; a graceful stop then lets each
//! connection finish its current request within `shutdown_timeout` (idle keep-alive connections
//! close at once, see [`crate::conn`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::health::HealthEvent;
use crate::pool::Pool;
use crate::proxy::Worker;
use crate::upstream::{Snapshot, Upstream};

/// Listen backlog (as nginx's default 511, rounded).
const BACKLOG: u32 = 1024;

/// What the workers are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Serve.
    Running,
    /// Stop accepting, finish in-flight requests.
    Graceful,
    /// Stop now, dropping connections.
    Immediate,
}

/// State shared by all workers.
pub(crate) struct Shared {
    /// The current config snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Inbox of the health owner.
    pub health: mpsc::UnboundedSender<HealthEvent>,
    /// Each worker's traffic counters (registered once at its start; read by the status page).
    pub traffic: std::sync::Mutex<Vec<Arc<Traffic>>>,
    /// The port `ssl_listen` is bound to (`ssl_redirect` sends clients there).
    pub tls_port: u16,
    /// Serializes snapshot rebuilds (reloads, and moves of upstreams found at new addresses).
    pub reload: parking_lot::Mutex<()>,
}

/// One worker's client traffic, for the status page (nginx `stub_status`). Only its worker
/// writes them: no cache line is shared between workers on the request path.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// Client connections accepted.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Client connections open now.
    pub active: std::sync::atomic::AtomicU64,
    /// Request heads read.
    pub requests: std::sync::atomic::AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The totals over every worker: (accepted, active, requests, failed TLS handshakes).
    pub fn traffic(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let list = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().fold((0, 0, 0, 0), |(a, o, r, f), t| {
            (
                a + t.accepted.load(Relaxed),
                o + t.active.load(Relaxed),
                r + t.requests.load(Relaxed),
                f + t.tls_failures.load(Relaxed),
            )
        })
    }
}

impl Shared {
    /// Tells the health owner that an attempt on `up` failed (no waiting).
    pub fn report_failure(&self, up: &Upstream) {
        if up.cfg.max_fails > 0 {
            let _ = self.health.send(HealthEvent::Failure {
                address: up.cfg.address.clone(),
                down_until: up.down_until.clone(),
                max_fails: up.cfg.max_fails,
                fail_timeout: up.cfg.fail_timeout,
            });
        }
    }
}

/// Binds `count` listening sockets on `addr` (the first decides the port when it is 0).
pub(crate) async fn bind(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if count > 1 {
            socket.set_reuseport(true)?;
        }
        socket.set_nodelay(true)?;
        socket.bind(at)?;
        let listener = socket.listen(BACKLOG)?;
        at = listener.local_addr()?;
        out.push(listener.into_std()?);
    }
    Ok(out)
}

/// Threads of a worker's blocking pool (file I/O).
const BLOCKING_THREADS: usize = 32;

/// Runs one worker on the current thread until stopped.
pub(crate) fn run_worker(
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    mut state: watch::Receiver<RunState>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // File I/O (static files, temp files) runs here; as nginx's default `thread_pool`
        // (32 threads), not tokio's 512: many slow clients queue their file writes instead
        // of each holding a thread with its stack and allocator heap.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener)?;
        let tls_listener = tls_listener.map(TcpListener::from_std).transpose()?;
        let cfg = shared.snapshot.load();
        let worker = Rc::new(Worker {
            pool: Rc::new(Pool::new(
                cfg.cfg.keepalive,
                cfg.cfg.keepalive_timeout,
                cfg.cfg.keepalive_requests,
            )),
            generation: Cell::new(cfg.generation),
            shared: shared.clone(),
            traffic: {
                let t = Arc::new(Traffic::default());
                shared
                    .traffic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.clone());
                t
            },
            stopping: Cell::new(false),
            log: crate::access_log::WorkerLog::default(),
            files: crate::files::FileCache::default(),
            auth: crate::auth::Remembered::default(),
        });
        worker.log.set_sink(cfg.access_log.clone());
        drop(cfg);
        // Buffered access log lines go out at least once a second.
        let ticker = {
            let worker = worker.clone();
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    worker.log.flush();
                }
            })
        };
        let mut conns = JoinSet::new();
        let (mut accept_failures, mut last_accept_log) = (0u64, None);
        loop {
            tokio::select! {
                biased;
                () = stop_requested(&mut state) => break,
                accepted = accept(&listener, tls_listener.as_ref()) => match accepted {
                    Ok((stream, peer, tls)) => {
                        conns.spawn_local(crate::conn::serve(worker.clone(), stream, peer, state.clone(), tls));
                    }
                    Err(e) => {
                        // Out of file descriptors, say: back off, and log once a second
                        // at most, with the count, instead of a line every 10 ms.
                        accept_failures += 1;
                        if last_accept_log.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(1)) {
                            log::warn!("accept failed ({accept_failures}x since last logged): {e}");
                            accept_failures = 0;
                            last_accept_log = Some(std::time::Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        drop(tls_listener);
        worker.stopping.set(true);
        if *state.borrow() == RunState::Graceful {
            let limit = shared.snapshot.load().cfg.shutdown_timeout;
            let drained =
                tokio::time::timeout(limit, async { while conns.join_next().await.is_some() {} });
            if drained.await.is_err() {
                log::warn!(
                    "graceful stop: {} connections still busy after {limit:?}, closing them",
                    conns.len()
                );
            }
        }
        conns.shutdown().await;
        ticker.abort();
        worker.log.flush();
        Ok(())
    })
}

/// The next connection on either listener, and whether it came in on the TLS one.
async fn accept(
    plain: &TcpListener,
    tls: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr, bool)> {
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = plain.poll_accept(cx) {
            return std::task::Poll::Ready(r.map(|(s, p)| (s, p, false)));
        }
        match tls {
            Some(l) => l.poll_accept(cx).map(|r| r.map(|(s, p)| (s, p, true))),
            None => std::task::Poll::Pending,
        }
    })
    .await
}

/// Resolves once a stop is requested. If every handle was dropped without a stop, the balancer
/// keeps serving (this never resolves) instead of spinning on a closed channel.
pub(crate) async fn stop_requested(state: &mut watch::Receiver<RunState>) {
    if state.wait_for(|s| *s != RunState::Running).await.is_err() {
        std::future::pending::<()>().await;
    }
}
