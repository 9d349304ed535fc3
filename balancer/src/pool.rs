//! Per-worker keep-alive pool of HTTP/1 connections to the upstreams.
//!
//! Each worker thread runs its own current-thread runtime and owns one `Pool` (`Rc`, no lock):
//! idle connections per upstream address, most recently used first. A connection goes back to
//! the pool only after its response body was read to the end (see [`crate::body::RespBody`]),
//! and is dropped when the pool for that address is full or it has been idle too long. The
//! connection's I/O driver runs as a local task next to the proxy tasks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::error::AttemptError;

/// An idle connection and since when it is idle.
type Idle = (SendRequest<ReqBody>, Instant);

/// Idle connections of one worker, by upstream address.
pub(crate) struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    max_idle: Cell<usize>,
    idle_timeout: Cell<Duration>,
}

impl Pool {
    /// An empty pool keeping at most `max_idle` connections per upstream.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: RefCell::default(),
            max_idle: Cell::new(max_idle),
            idle_timeout: Cell::new(idle_timeout),
        }
    }

    /// Applies reloaded limits (connections already idle stay until used or expired).
    pub fn configure(&self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle.set(max_idle);
        self.idle_timeout.set(idle_timeout);
    }

    /// Takes an idle connection to `addr` that is still open, if any.
    pub fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let timeout = self.idle_timeout.get();
        while let Some((tx, since)) = list.pop() {
            if !tx.is_closed() && since.elapsed() < timeout {
                return Some(tx);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, addr: SocketAddr, tx: SendRequest<ReqBody>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle.get() {
            list.push((tx, Instant::now()));
        }
    }

    /// Opens a new connection to `addr` within `timeout` and starts its driver task.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<SendRequest<ReqBody>, AttemptError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(AttemptError::Connect {
                    upstream: addr,
                    source,
                })
            }
            Err(_) => return Err(AttemptError::ConnectTimeout { upstream: addr }),
        };
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| AttemptError::Handshake {
                upstream: addr,
                source,
            })?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                log::debug!("upstream connection to {addr} ended: {e}");
            }
        });
        Ok(tx)
    }
}
