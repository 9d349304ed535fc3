//! ferrocat's HTTP load balancer: an nginx-grade reverse proxy in front of any HTTP/1 servers.
//!
//! `ferrocat balancer` runs it alone; `ferrocat all-in-one` runs it in the same process as the
//! local app node (which is then one upstream among others).
//!
//! Components and data flow:
//! - [`config`]: the `[balancer]` section, parsed then validated.
//! - `upstream`: a config becomes a `Snapshot` (upstreams with live atomics, selectors, deny
//!   set, error page) published through an `ArcSwap`; reload swaps it whole.
//! - `server`: worker threads (current-thread runtimes) accept clients; `conn`: one task per
//!   client connection reads request heads (`h1`: `httparse`, rewritten `headers`), takes in
//!   bodies (`body`), answers deny/size checks, and writes responses, pipelining included.
//! - `proxy`: per request, session route (`sticky`), upstream `choose`r and method (`selection`),
//!   attempts over the per-worker keep-alive `pool` of plain TCP connections, retries, streamed
//!   `body`, HTTP Upgrade `tunnel`s; waits are bounded by `io`'s lazy timers.
//! - `access_log`: nginx's `combined` line plus the upstreams tried, buffered per worker and
//!   written by a thread of its own.
//! - `files`: `[[balancer.static]]` locations answered from disk (conditional requests,
//!   ranges), streamed in bounded chunks.
//! - `cache`: the response cache in memory (`proxy_cache`), answered through the live response
//!   path; `refresh`: reading answers to keep, and background refreshes of expired copies.
//! - `status`: the JSON page at `status_path` (upstream state and counters).
//! - `health`: the single owner of upstream health (passive failures reported by the request
//!   path, active `checks`), writing atomics the request path reads without locks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ferrocat_balancer::{Balancer, BalancerConfig, UpstreamConfig};
//! let cfg = BalancerConfig {
//!     listen: "127.0.0.1:0".parse().expect("address"),
//!     upstream: vec![UpstreamConfig::new("127.0.0.1:8081").with_route("app1")],
//!     ..BalancerConfig::default()
//! };
//! let handle = Balancer::start(cfg).await?;
//! println!("balancing on {}", handle.local_addr());
//! handle.stop(true).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access_log;
mod auth;
mod body;
mod buffering;
mod cache;
mod checks;
mod choose;
pub mod config;
mod conn;
mod connlimit;
mod custom_headers;
mod dn;
mod error;
mod files;
mod gzip;
mod h1;
mod hashkey;
mod headers;
mod health;
mod http2;
mod io;
mod netmask;
mod pages;
mod pool;
mod proxy;
mod ratelimit;
mod realip;
mod redirect;
mod refresh;
mod relocate;
mod selection;
mod server;
mod spool;
mod status;
mod sticky;
mod tls;
mod tunnel;
mod units;
mod upstream;
mod upstream_tls;
mod uri;

/// Helpers of the unit tests.
#[cfg(test)]
mod test_support {
    /// Up to `most` parts, each one of `pieces` (with probability `p_piece`) or a random byte:
    /// input that looks enough like the real thing to reach deep into a parser.
    pub(crate) fn garbage(
        rng: &mut impl rand::Rng,
        pieces: &[&[u8]],
        most: usize,
        p_piece: f64,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.gen_range(0..most) {
            if rng.gen_bool(p_piece) {
                out.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            } else {
                out.push(rng.gen());
            }
        }
        out
    }
}

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

pub use config::{
    AuthBasicConfig, BalancerConfig, ConfigError, HealthCheckConfig, Method, NextUpstream,
    PoolConfig, Resolver, Satisfy, SniCertificate, StaticConfig, UpstreamConfig, VerifyClient,
};
pub use units::parse_size;

use health::HealthEvent;
use server::{RunState, Shared};
use upstream::Snapshot;

/// Entry point: starts a balancer.
#[derive(Debug)]
pub struct Balancer;

impl Balancer {
    /// Validates `cfg`, binds `cfg.listen` (port 0 allowed) and starts the worker threads and the
    /// health owner. Returns once the socket is bound; works on any tokio runtime (actix included).
    pub async fn start(cfg: BalancerConfig) -> std::io::Result<BalancerHandle> {
        let invalid = |e: ConfigError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let listen = cfg.listen;
        let workers = cfg.effective_workers();
        let snapshot = Snapshot::build(cfg.clone(), None).map_err(invalid)?;
        let listeners = server::bind(listen, workers).await?;
        let local_addr = listeners
            .first()
            .map(|l| l.local_addr())
            .transpose()?
            .unwrap_or(listen);
        let ssl_listen = cfg.ssl_listen;
        let mut tls_listeners = match ssl_listen {
            Some(at) => server::bind(at, workers).await?,
            None => Vec::new(),
        };
        let tls_addr = tls_listeners.first().map(|l| l.local_addr()).transpose()?;
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            health: health_tx,
            traffic: std::sync::Mutex::new(Vec::new()),
            tls_port: tls_addr.map_or(443, |a| a.port()),
            reload: Mutex::new(()),
        });
        let (state_tx, state_rx) = watch::channel(RunState::Running);
        let (stopped_tx, stopped_rx) = watch::channel(false);

        let mut threads = Vec::new();
        tls_listeners.reverse();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (shared, state) = (shared.clone(), state_rx.clone());
            let tls_listener = tls_listeners.pop();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ferrocat-bal-{i}"))
                    .spawn(move || server::run_worker(listener, tls_listener, shared, state))?,
            );
        }
        let health = {
            let (shared, state) = (shared.clone(), state_rx.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name("ferrocat-bal-health".into())
                .spawn(move || rt.block_on(health::run(shared, health_rx, state)))?
        };
        let shared_for_log = shared.clone();
        std::thread::Builder::new()
            .name("ferrocat-bal-supervisor".into())
            .spawn(move || {
                for t in threads {
                    match t.join() {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::error!("balancer worker failed: {e}"),
                        Err(_) => log::error!("balancer worker panicked"),
                    }
                }
                let _ = health.join();
                // The workers flushed their access log buffers when they stopped: let the writer
                // finish before anyone is told the balancer stopped (the process may exit then).
                if let Some(log) = &shared_for_log.snapshot.load().access_log {
                    log.sync(std::time::Duration::from_secs(5));
                }
                let _ = stopped_tx.send(true);
            })?;
        match tls_addr {
            Some(tls) => log::info!(
                "balancer listening on {local_addr} and {tls} (TLS) with {workers} worker(s)"
            ),
            None => log::info!("balancer listening on {local_addr} with {workers} worker(s)"),
        }
        Ok(BalancerHandle {
            inner: Arc::new(Inner {
                shared,
                local_addr,
                listen,
                tls_addr,
                ssl_listen,
                workers: cfg.workers,
                state: state_tx,
                stopped: stopped_rx,
            }),
        })
    }
}

/// Controls a running balancer; cheap to clone.
#[derive(Clone)]
pub struct BalancerHandle {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listen: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ssl_listen: Option<SocketAddr>,
    workers: usize,
    state: watch::Sender<RunState>,
    stopped: watch::Receiver<bool>,
}

impl std::fmt::Debug for BalancerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerHandle")
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

impl BalancerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The bound TLS address (`ssl_listen`), if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.inner.tls_addr
    }

    /// Applies a new config without dropping connections: new upstream set, weights, drain,
    /// limits, timeouts. Upstreams whose address stays keep their counters and health. `listen`
    /// and `workers` cannot change without a restart.
    pub fn reload(&self, cfg: BalancerConfig) -> Result<(), ConfigError> {
        let _serial = self.inner.shared.reload.lock();
        if cfg.listen != self.inner.listen {
            return Err(ConfigError::new(
                "balancer.listen",
                "changing the listen address needs a restart",
            ));
        }
        if cfg.ssl_listen != self.inner.ssl_listen {
            return Err(ConfigError::new(
                "balancer.ssl_listen",
                "changing the TLS listen address needs a restart",
            ));
        }
        if cfg.workers != self.inner.workers {
            return Err(ConfigError::new(
                "balancer.workers",
                "changing the number of workers needs a restart",
            ));
        }
        let current = self.inner.shared.snapshot.load_full();
        let next = Snapshot::build(cfg, Some(&current))?;
        self.inner.shared.snapshot.store(Arc::new(next));
        let _ = self.inner.shared.health.send(HealthEvent::Reloaded);
        log::info!("balancer config reloaded");
        Ok(())
    }

    /// Stops the balancer. Graceful: stop accepting, let in-flight requests finish (at most
    /// `shutdown_timeout`), then return. Otherwise connections are dropped at once.
    pub async fn stop(&self, graceful: bool) {
        let mode = if graceful {
            RunState::Graceful
        } else {
            RunState::Immediate
        };
        self.inner.state.send_if_modified(|s| {
            let change = *s == RunState::Running
                || (*s == RunState::Graceful && mode == RunState::Immediate);
            if change {
                *s = mode;
            }
            change
        });
        self.stopped().await;
    }

    /// Resolves when the balancer has stopped.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}
