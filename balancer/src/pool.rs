//! Per-worker keep-alive pool of connections to the upstreams (plain TCP, or TLS for `tls`
//! upstreams).
//!
//! Each worker thread runs its own current-thread runtime and owns one `Pool` (`Rc`, no lock):
//! idle connections per upstream address, most recently used first, each with its read buffer.
//! A connection goes back to the pool only after its response was read to the end with nothing
//! more after it; when the pool for that address is full, its least recently used connection is
//! closed to make room (nginx's `keepalive`), and a connection idle too long is dropped. An idle connection is not a task: on checkout, the readiness the reactor already knows
//! tells whether the upstream closed it meanwhile (then it is dropped, no system call otherwise).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::error::AttemptError;
use crate::upstream_tls::{UpStream, UpTls};

/// Initial read buffer of an upstream connection.
const READ_BUFFER: usize = 16 * 1024;

/// One connection to an upstream and what has been read from it but not used yet.
pub(crate) struct UpConn {
    pub stream: UpStream,
    pub rbuf: BytesMut,
    addr: SocketAddr,
    /// The upstream answered before it had the whole request: never reused.
    pub answered_early: bool,
    /// Requests sent over this connection so far.
    pub requests: u32,
}

impl UpConn {
    /// Whether the connection still looks usable: nothing (not even an end of stream) arrived
    /// while it was idle.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Readable while idle: an end of stream, an error, or bytes nobody asked for. (A TLS
        // upstream's session tickets are taken in and read as nothing.)
        self.stream
            .poll_read_some(&mut self.rbuf, &mut cx)
            .is_pending()
            && self.rbuf.is_empty()
    }
}

/// An idle connection and since when it is idle.
type Idle = (UpConn, Instant);

/// Idle connections of one worker, by upstream address.
pub(crate) struct Pool {
    idle: RefCell<HashMap<SocketAddr, VecDeque<Idle>>>,
    max_idle: Cell<usize>,
    idle_timeout: Cell<Duration>,
    /// Requests after which a connection is closed instead of kept (0 = no limit).
    max_requests: Cell<u32>,
}

impl Pool {
    /// An empty pool keeping at most `max_idle` connections per upstream, each idle at most
    /// `idle_timeout` and used for at most `max_requests` requests (0 = no limit).
    pub fn new(max_idle: usize, idle_timeout: Duration, max_requests: u32) -> Self {
        Self {
            idle: RefCell::default(),
            max_idle: Cell::new(max_idle),
            idle_timeout: Cell::new(idle_timeout),
            max_requests: Cell::new(max_requests),
        }
    }

    /// Applies reloaded limits (connections already idle stay until used or expired).
    pub fn configure(&self, max_idle: usize, idle_timeout: Duration, max_requests: u32) {
        self.max_idle.set(max_idle);
        self.idle_timeout.set(idle_timeout);
        self.max_requests.set(max_requests);
    }

    /// Whether connections are kept at all.
    pub fn enabled(&self) -> bool {
        self.max_idle.get() > 0
    }

    /// Takes an idle connection to `addr` that is still open, if any, speaking TLS if `tls`
    /// (a reload may have turned an address's `tls` on or off).
    pub fn checkout(&self, addr: SocketAddr, tls: bool) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let timeout = self.idle_timeout.get();
        while let Some((mut conn, since)) = list.pop_back() {
            if since.elapsed() < timeout && conn.stream.is_tls() == tls && conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, conn: UpConn) {
        let max_requests = self.max_requests.get();
        if !conn.rbuf.is_empty()
            || conn.stream.is_memory()
            || conn.answered_early
            || (max_requests > 0 && conn.requests >= max_requests)
        {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.addr).or_default();
        let max = self.max_idle.get();
        if max == 0 {
            return;
        }
        // Full: the least recently used connection goes (nginx's `keepalive`), the one that
        // has just proved itself stays.
        while list.len() >= max {
            list.pop_front();
        }
        list.push_back((conn, Instant::now()));
    }

    /// A cached answer (`raw`: its head and body) dressed as a connection that has read it.
    pub fn memory(raw: &[u8], addr: SocketAddr) -> UpConn {
        UpConn {
            stream: UpStream::Memory,
            rbuf: BytesMut::from(raw),
            addr,
            answered_early: false,
            requests: 1,
        }
    }

    /// Opens a new connection to `addr` within `timeout`, with the TLS handshake if `tls` (in
    /// the same time, as nginx's `proxy_connect_timeout`).
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<&UpTls>,
        timeout: Duration,
    ) -> Result<UpConn, AttemptError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
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
        let stream = match tls {
            None => UpStream::Plain(stream),
            Some(tls) => {
                match tokio::time::timeout_at(deadline, crate::upstream_tls::handshake(tls, stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(source)) => {
                        return Err(AttemptError::Handshake {
                            upstream: addr,
                            source,
                        })
                    }
                    Err(_) => return Err(AttemptError::ConnectTimeout { upstream: addr }),
                }
            }
        };
        Ok(UpConn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            addr,
            answered_early: false,
            requests: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_full_pool_closes_its_least_recently_used_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool = Pool::new(2, Duration::from_secs(60), 0);
        let mut peers = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let conn = Pool::connect(addr, None, Duration::from_secs(5))
                .await
                .expect("connect");
            ports.push(
                conn.stream
                    .tcp()
                    .expect("tcp")
                    .local_addr()
                    .expect("local")
                    .port(),
            );
            peers.push(listener.accept().await.expect("accept").0);
            pool.put(conn);
        }
        // The first one (least recently used) was closed to make room for the third.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), peers[0].read(&mut buf))
            .await
            .expect("the evicted connection is closed")
            .expect("read");
        assert_eq!(n, 0);
        // Most recently used first.
        let port = |c: Option<UpConn>| {
            c.map(|c| {
                c.stream
                    .tcp()
                    .expect("tcp")
                    .local_addr()
                    .expect("local")
                    .port()
            })
        };
        assert_eq!(port(pool.checkout(addr, false)), Some(ports[2]));
        assert_eq!(port(pool.checkout(addr, false)), Some(ports[1]));
        assert_eq!(port(pool.checkout(addr, false)), None);
        // A plain connection is not handed out for an address that now speaks TLS (a reload
        // turned `tls` on): it is closed instead.
        let conn = Pool::connect(addr, None, Duration::from_secs(5))
            .await
            .expect("connect");
        let mut peer = listener.accept().await.expect("accept").0;
        pool.put(conn);
        assert_eq!(port(pool.checkout(addr, true)), None);
        assert_eq!(port(pool.checkout(addr, false)), None);
        let n = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
            .await
            .expect("the plain connection is closed")
            .expect("read");
        assert_eq!(n, 0);
    }
}
