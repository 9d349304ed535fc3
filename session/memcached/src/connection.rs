//! One connection slot: a task that connects lazily, pipelines requests and reconnects.
//!
//! Data flow: callers put a [`Request`] (command + oneshot reply) into the slot's bounded
//! channel. The task's writer takes everything queued, encodes it into one buffer, records
//! each request in the FIFO `pending` queue *before* writing, and writes the batch with a
//! single `write_all` (that is the pipelining). The reader, polled in the same task,
//! parses responses and completes the oldest pending request, checking the echoed opaque.
//!
//! Failure: a broken connection or garbage from the node fails every pending request with
//! that error and the slot reconnects on the next request. A watchdog treats a connection
//! whose oldest request waited more than twice the operation timeout (at least 1 s) as
//! dead, so a peer that vanished without a reset cannot stall the slot forever. A refused connect fails the
//! queued requests and starts a back-off during which new requests fail at once (never
//! hang); the pause doubles up to the configured maximum. The task ends when the client
//! is dropped (its shutdown watch closes) or the channel's senders are gone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::protocol::{self, Command, Response, Status};
use crate::{ClientOptions, McError};

/// Requests waiting in one slot's channel before callers wait to enqueue.
pub(crate) const QUEUE_DEPTH: usize = 4096;
/// Stop collecting a batch once this many bytes are encoded.
const BATCH_BYTES: usize = 256 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// A request travelling to a connection task.
pub(crate) struct Request {
    pub(crate) cmd: Command,
    pub(crate) reply: oneshot::Sender<Result<Response, McError>>,
}

/// A request written to the socket, waiting for its response.
struct Pending {
    opaque: Option<u32>,
    /// When its batch was written; the watchdog drops a connection whose oldest request
    /// has waited too long (a dead peer that sent no RST would otherwise hang forever).
    sent_at: Instant,
    reply: oneshot::Sender<Result<Response, McError>>,
}

/// Start a slot on the current runtime; returns the sender callers use.
pub(crate) fn spawn(
    handle: &tokio::runtime::Handle,
    addr: SocketAddr,
    opts: Arc<ClientOptions>,
    shutdown: watch::Receiver<()>,
) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    handle.spawn(supervise(addr, opts, rx, shutdown));
    tx
}

fn fail(req: Request, err: &McError) {
    let _ = req.reply.send(Err(err.clone()));
}

async fn supervise(
    addr: SocketAddr,
    opts: Arc<ClientOptions>,
    mut rx: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut backoff = opts.reconnect_backoff_min;
    loop {
        // Connect lazily: only when there is something to send.
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.changed() => return,
        };
        let stream = match connect(addr, &opts).await {
            Ok(s) => s,
            Err(err) => {
                log::warn!("{err}; next connect attempt in {backoff:?}");
                fail(first, &err);
                let until = Instant::now() + backoff;
                backoff = (backoff * 2).min(opts.reconnect_backoff_max);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        r = rx.recv() => match r { Some(r) => fail(r, &err), None => return },
                        _ = shutdown.changed() => return,
                    }
                }
                continue;
            }
        };
        backoff = opts.reconnect_backoff_min;
        log::debug!("memcached {addr}: connected");
        match run(addr, &opts, stream, first, &mut rx, &mut shutdown).await {
            Some(err) => log::warn!("memcached {addr}: connection lost: {err}"),
            None => return,
        }
    }
}

async fn connect(addr: SocketAddr, opts: &ClientOptions) -> Result<TcpStream, McError> {
    let mut stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| McError::Timeout {
            addr,
            op: "connect",
        })?
        .map_err(|e| McError::from_io(addr, "connect", e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| McError::from_io(addr, "connect", e))?;
    if let Some(creds) = &opts.credentials {
        crate::auth::authenticate(&mut stream, addr, creds, opts.connect_timeout).await?;
    }
    Ok(stream)
}

/// Drive one established connection. `Some(err)`: it failed; `None`: the client is gone.
async fn run(
    addr: SocketAddr,
    opts: &ClientOptions,
    mut stream: TcpStream,
    first: Request,
    rx: &mut mpsc::Receiver<Request>,
    shutdown: &mut watch::Receiver<()>,
) -> Option<McError> {
    let pending: Mutex<VecDeque<Pending>> = Mutex::new(VecDeque::with_capacity(256));
    let (mut rd, mut wr) = stream.split();

    let writer = async {
        let mut wbuf = BytesMut::with_capacity(16 * 1024);
        let mut opaque: u32 = 0;
        let mut next = Some(first);
        loop {
            let req = match next.take() {
                Some(r) => r,
                None => match rx.recv().await {
                    Some(r) => r,
                    // Every sender is gone: let in-flight replies arrive, then stop.
                    None => {
                        tokio::time::sleep(opts.operation_timeout).await;
                        return None;
                    }
                },
            };
            // Record the request as pending at once: if the connection fails while this
            // task yields below, it gets the connection's error like any request in flight.
            let busy = {
                let mut p = pending.lock();
                let busy = !p.is_empty() || !rx.is_empty();
                enqueue(req, Instant::now(), &mut opaque, &mut wbuf, &mut p);
                busy
            };
            // Under load (answers outstanding, or more requests queued), let every task
            // that is already runnable, and whatever the next I/O poll makes runnable,
            // queue its request first: the scheduler runs this task again afterwards and
            // one write (one memcached wake-up, one read on each side) carries them all.
            // An idle connection writes at once, so a lone request waits for nothing.
            if busy {
                tokio::task::yield_now().await;
            }
            {
                let mut p = pending.lock();
                let now = Instant::now();
                while wbuf.len() < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(r) => enqueue(r, now, &mut opaque, &mut wbuf, &mut p),
                        Err(_) => break,
                    }
                }
            }
            if wbuf.is_empty() {
                continue;
            }
            if let Err(e) = wr.write_all(&wbuf).await {
                return Some(McError::from_io(addr, "write", e));
            }
            if wbuf.capacity() > 4 * BATCH_BYTES {
                wbuf = BytesMut::with_capacity(16 * 1024);
            } else {
                wbuf.clear();
            }
        }
    };

    let reader = async {
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            loop {
                match protocol::parse(&mut rbuf, opts.max_value_size) {
                    Ok(Some(resp)) => {
                        if let Err(detail) = deliver(&pending, resp) {
                            return McError::Protocol { addr, detail };
                        }
                    }
                    Ok(None) => break,
                    Err(detail) => return McError::Protocol { addr, detail },
                }
            }
            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                rbuf.reserve(READ_CHUNK);
            }
            match rd.read_buf(&mut rbuf).await {
                Ok(0) if !rbuf.is_empty() => {
                    return McError::Protocol {
                        addr,
                        detail: format!(
                            "connection closed inside a response ({} bytes of it received)",
                            rbuf.len()
                        ),
                    };
                }
                Ok(0) => {
                    let eof = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed by memcached",
                    );
                    return McError::from_io(addr, "connection", eof);
                }
                Ok(_) => {}
                Err(e) => return McError::from_io(addr, "connection", e),
            }
        }
    };

    let stall = stall_limit(opts);
    let watchdog = async {
        let mut tick = tokio::time::interval(stall / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let oldest = pending.lock().front().map(|p| p.sent_at.elapsed());
            if oldest.is_some_and(|waited| waited > stall) {
                return McError::Timeout {
                    addr,
                    op: "response (connection stalled)",
                };
            }
        }
    };

    let outcome = tokio::select! {
        r = writer => r,
        e = reader => Some(e),
        e = watchdog => Some(e),
        _ = shutdown.changed() => None,
    };
    let err = outcome.clone().unwrap_or(McError::Closed);
    for p in pending.lock().drain(..) {
        let _ = p.reply.send(Err(err.clone()));
    }
    outcome
}

/// How long the oldest request may wait before the connection is declared dead:
/// twice the operation timeout, at least a second.
fn stall_limit(opts: &ClientOptions) -> Duration {
    (opts.operation_timeout * 2).max(Duration::from_secs(1))
}

/// Encode `req` into the batch and record it as pending (unless its caller gave up).
fn enqueue(
    req: Request,
    now: Instant,
    opaque: &mut u32,
    wbuf: &mut BytesMut,
    pending: &mut VecDeque<Pending>,
) {
    if req.reply.is_closed() {
        return; // the caller timed out while it was queued: do not send it
    }
    *opaque = opaque.wrapping_add(1);
    let echoed = req.cmd.encode(*opaque, wbuf);
    pending.push_back(Pending {
        opaque: echoed.then_some(*opaque),
        sent_at: now,
        reply: req.reply,
    });
}

/// Hand `resp` to the oldest pending request; an unsolicited or mismatched response
/// means the stream is out of step, which is a protocol error for the whole connection.
fn deliver(pending: &Mutex<VecDeque<Pending>>, resp: Response) -> Result<(), String> {
    let mut p = pending.lock();
    let Some(front) = p.front() else {
        return Err(format!("unsolicited response {:?}", resp.status));
    };
    // SERVER_ERROR carries no opaque; it answers the oldest request.
    if resp.status != Status::ServerError && resp.opaque != front.opaque {
        return Err(format!(
            "response {:?} with opaque {:?} does not match the request's {:?}",
            resp.status, resp.opaque, front.opaque
        ));
    }
    if let Some(front) = p.pop_front() {
        let _ = front.reply.send(Ok(resp));
    }
    Ok(())
}
