//! Per-worker keep-alive pool of HTTP/1 connections to the upstreams.
//!
//! Each worker thread runs its own current-thread runtime and owns one `Pool` (`Rc`, no lock):
//! idle connections per upstream address, most recently used first. A connection goes back to
//! the pool only after its response body was read to the end (see [`crate::body::RespBody`]),
//! and is dropped when the pool for that address is full or it has been idle too long.
//!
//! A connection's I/O is not a task of its own: whoever uses the connection drives it
//! ([`Upconn::drive`]) from the request's own task, first while waiting for the response head,
//! then from the response body's `poll_frame`. That saves two task wake-ups per request compared
//! with a spawned connection task, and an idle connection costs nothing until it is used again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::error::AttemptError;

/// hyper's I/O state machine of one upstream connection.
type ConnIo = Connection<TokioIo<TcpStream>, ReqBody>;

/// One HTTP/1 connection to an upstream: the request sender and the I/O state machine.
pub(crate) struct Upconn {
    /// Sends requests on this connection.
    pub tx: SendRequest<ReqBody>,
    /// The connection's state machine; dropped as soon as it ends, which cancels requests still
    /// queued on it (they come back unsent through `TrySendError::take_message`).
    io: Option<Pin<Box<ConnIo>>>,
    addr: SocketAddr,
}

impl Upconn {
    /// Makes progress on the connection's reads and writes (call before polling what waits on it).
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(io) = &mut self.io else { return };
        if let Poll::Ready(result) = io.as_mut().poll(cx) {
            self.io = None;
            if let Err(e) = result {
                log::debug!("upstream connection to {} ended: {e}", self.addr);
            }
        }
    }

    /// Whether the connection can still carry requests, as far as is known without polling it.
    pub fn is_open(&self) -> bool {
        self.io.is_some() && !self.tx.is_closed()
    }

    /// Waits until the connection accepts the next request (false if it closed meanwhile).
    pub async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.tx.poll_ready(cx)
        })
        .await
        .is_ok()
    }
}

/// An idle connection and since when it is idle.
type Idle = (Upconn, Instant);

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
    pub fn checkout(&self, addr: SocketAddr) -> Option<Upconn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let timeout = self.idle_timeout.get();
        while let Some((conn, since)) = list.pop() {
            if conn.is_open() && since.elapsed() < timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, conn: Upconn) {
        if !conn.is_open() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.addr).or_default();
        if list.len() < self.max_idle.get() {
            list.push((conn, Instant::now()));
        }
    }

    /// Opens a new connection to `addr` within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Upconn, AttemptError> {
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
        let (tx, io) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| AttemptError::Handshake {
                upstream: addr,
                source,
            })?;
        Ok(Upconn {
            tx,
            io: Some(Box::pin(io)),
            addr,
        })
    }
}
