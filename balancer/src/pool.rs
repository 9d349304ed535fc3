//! Per-worker keep-alive pool of plain TCP connections to the upstreams.
//!
//! Each worker thread runs its own current-thread runtime and owns one `Pool` (`Rc`, no lock):
//! idle connections per upstream address, most recently used first, each with its read buffer.
//! A connection goes back to the pool only after its response was read to the end with nothing
//! more after it, and is dropped when the pool for that address is full or it has been idle too
//! long. An idle connection is not a task: on checkout, the readiness the reactor already knows
//! tells whether the upstream closed it meanwhile (then it is dropped, no system call otherwise).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::error::AttemptError;

/// Initial read buffer of an upstream connection.
const READ_BUFFER: usize = 16 * 1024;

/// One connection to an upstream and what has been read from it but not used yet.
pub(crate) struct UpConn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    addr: SocketAddr,
}

impl UpConn {
    /// Whether the connection still looks usable: nothing (not even an end of stream) arrived
    /// while it was idle.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Readable while idle: an end of stream, an error, or bytes nobody asked for.
                matches!(self.stream.try_read_buf(&mut self.rbuf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    && self.rbuf.is_empty()
            }
        }
    }
}

/// An idle connection and since when it is idle.
type Idle = (UpConn, Instant);

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

    /// Whether connections are kept at all.
    pub fn enabled(&self) -> bool {
        self.max_idle.get() > 0
    }

    /// Takes an idle connection to `addr` that is still open, if any.
    pub fn checkout(&self, addr: SocketAddr) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let timeout = self.idle_timeout.get();
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() < timeout && conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, conn: UpConn) {
        if !conn.rbuf.is_empty() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.addr).or_default();
        if list.len() < self.max_idle.get() {
            list.push((conn, Instant::now()));
        }
    }

    /// Opens a new connection to `addr` within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<UpConn, AttemptError> {
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
        Ok(UpConn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            addr,
        })
    }
}
