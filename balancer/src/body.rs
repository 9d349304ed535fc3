//! Bodies as they pass through the proxy.
//!
//! Request side ([`intake`]): a body is read before any upstream is contacted when it is small
//! (`Content-Length` up to [`REPLAY_LIMIT`]) or chunked with a `client_max_body_size`: in memory
//! up to [`MEMORY_LIMIT`], the rest spooled to a temp file ([`crate::spool`]). Such a body can be
//! sent again on a retry, and an oversized chunked body gets its 413 before any upstream sees
//! it. Other bodies (large `Content-Length`, chunked without a size limit) are streamed
//! ([`send_stream`]) after the head, chunked ones re-framed chunk by chunk, with the
//! size limit enforced as they go. Response side ([`forward`]): the body is copied from the
//! upstream's read buffer to the client by its framing (length, chunked passed through or
//! decoded, until close), with `proxy_read_timeout` between reads.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::Buf as _;
use tokio::io::AsyncWrite as _;

use crate::buffering::Backlog;

use crate::conn::Conn;
use crate::h1::chunked::{write_chunk_header, ChunkedDecoder};
use crate::h1::request::{Framing, Request};
use crate::h1::response::Body;
use crate::io;
use crate::pool::UpConn;
use crate::spool::Spool;

/// `Content-Length` bodies up to this size are read before an upstream is contacted.
pub(crate) const REPLAY_LIMIT: u64 = 64 * 1024;
/// Chunked bodies are kept in memory up to this size while they are read in full; beyond it,
/// the rest goes to a temp file (or, without a size limit, the body streams).
pub(crate) const MEMORY_LIMIT: u64 = 1 << 20;
/// Most bytes read and discarded from a refused body before answering.
const DRAIN_LIMIT: u64 = 16 << 20;
/// Longest time spent discarding a refused body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// The body of a request on its way to an upstream.
#[derive(Debug)]
pub(crate) enum ReqBody {
    /// None, or read in full into [`Conn::body`]: can be sent again.
    Buffered,
    /// A `Content-Length` body still arriving from the client: bytes not yet passed on.
    Length { left: u64 },
    /// A chunked body still arriving: [`Conn::body`] holds the data read so far.
    Chunked(ChunkedDecoder),
    /// Read in full: [`Conn::body`] holds the start, the file the rest. Can be sent again.
    Spooled(Spool),
}

impl ReqBody {
    /// Whether the client has sent the whole body (the connection can read the next request).
    pub fn complete(&self) -> bool {
        match self {
            Self::Buffered | Self::Spooled(_) => true,
            Self::Length { left } => *left == 0,
            Self::Chunked(d) => d.is_done(),
        }
    }
}

/// What reading the start of a request body found.
pub(crate) enum Intake {
    /// A body that can be sent.
    Body(ReqBody),
    /// Larger than `client_max_body_size`: 413 (what arrived of it was discarded).
    TooLarge,
    /// Malformed: 400.
    Bad,
    /// The client went away.
    Gone,
    /// The client sent nothing for `client_body_timeout`: 408, as nginx answers.
    Stalled,
}

/// Why passing a streamed body on failed.
pub(crate) enum StreamError {
    /// The client failed, stalled or sent a malformed body.
    Client,
    /// The body grew past `client_max_body_size`.
    TooLarge,
    /// Writing to the upstream failed.
    Upstream(std::io::Error),
    /// The upstream took nothing for `proxy_send_timeout`.
    Timeout,
    /// The upstream started answering before it had the whole body (its own
    /// 413 or 401, say): what it sent is in the upstream connection's read
    /// buffer; the response is read and passed on, then the client
    /// connection closes (the rest of its body was not read).
    Answered,
}

/// What a send of body bytes to the upstream came to.
pub(crate) enum Sent {
    Done,
    /// The upstream sent something (its answer) meanwhile.
    Answered,
}

/// Writes `data` to the upstream within `limit` per wait, watching the
/// upstream for an early answer whenever the write has to wait or fails (an
/// upstream that answers and stops reading would otherwise stall the write
/// until the time-out, or reset the connection and lose its answer).
pub(crate) async fn write_watching(
    up: &mut UpConn,
    data: &[u8],
    timer: &mut io::LazyTimer,
    limit: std::time::Duration,
) -> Result<std::io::Result<Sent>, io::Elapsed> {
    use tokio::io::AsyncWrite as _;
    let mut written = 0;
    let mut failed: Option<std::io::Error> = None;
    let work = std::future::poll_fn(|cx| loop {
        if let Some(e) = failed.take() {
            // The write failed (reset after answering?): the socket is readable now, with the
            // answer if one came; wait for the reactor to say so, then read.
            if up.rbuf.capacity() - up.rbuf.len() < 4096 {
                up.rbuf.reserve(io::READ_CHUNK);
            }
            return match up.stream.poll_read_some(&mut up.rbuf, cx) {
                Poll::Pending => {
                    failed = Some(e);
                    Poll::Pending
                }
                Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Ok(Sent::Answered)),
                Poll::Ready(_) => Poll::Ready(Err(e)),
            };
        }
        if written == data.len() {
            // Plain TCP has nothing to flush; TLS may still hold the last record.
            return match std::pin::Pin::new(&mut up.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Sent::Done)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => match answered(up, cx) {
                    Some(answer) => Poll::Ready(answer),
                    None => Poll::Pending,
                },
            };
        }
        match std::pin::Pin::new(&mut up.stream).poll_write(cx, &data[written..]) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) => written += n,
            // Reset or closed by the upstream: it may have answered first.
            Poll::Ready(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                failed = Some(e)
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            // The upstream takes no more for now: has it answered instead? (Only checked when
            // a write has to wait, so the common small request costs nothing extra.)
            Poll::Pending => {
                if let Some(answer) = answered(up, cx) {
                    return Poll::Ready(answer);
                }
                return Poll::Pending;
            }
        }
    });
    io::within(timer, limit, work).await
}

/// `Some(Answered)` if the upstream has sent bytes (read into its buffer);
/// `None` if nothing arrived (an end of stream alone is left to the write,
/// which then fails as before).
fn answered(up: &mut UpConn, cx: &mut std::task::Context<'_>) -> Option<std::io::Result<Sent>> {
    if !up.rbuf.is_empty() {
        return Some(Ok(Sent::Answered));
    }
    if up.rbuf.capacity() - up.rbuf.len() < 4096 {
        up.rbuf.reserve(io::READ_CHUNK);
    }
    match up.stream.poll_read_some(&mut up.rbuf, cx) {
        Poll::Ready(Ok(n)) if n > 0 => Some(Ok(Sent::Answered)),
        _ => None,
    }
}

/// Waits for more of the client's body, watching the upstream for an early
/// answer meanwhile; `Ok(false)` when the client closed, failed or stalled.
async fn read_client_watching(c: &mut Conn, up: &mut UpConn) -> Result<bool, Sent> {
    let (stream, rbuf) = (&mut c.stream, &mut c.rbuf);
    let wait = std::future::poll_fn(|cx| {
        if let Some(Ok(Sent::Answered)) = answered(up, cx) {
            return Poll::Ready(Err(Sent::Answered));
        }
        io::poll_read(stream, rbuf, cx).map(Ok)
    });
    match io::within(&mut c.ctimer, c.timeouts.body, wait).await {
        Ok(Ok(Ok(n))) => Ok(n > 0),
        Ok(Err(answer)) => Err(answer),
        _ => Ok(false),
    }
}

/// Reads more from the client into `c.rbuf`; false if it closed, failed or stalled.
async fn read_client(c: &mut Conn) -> bool {
    read_body_part(c).await.is_ok()
}

/// Reads more of a body from the client into `c.rbuf`; the `Intake` to end with if none came.
async fn read_body_part(c: &mut Conn) -> Result<(), Intake> {
    match io::read(&mut c.stream, &mut c.rbuf, &mut c.ctimer, c.timeouts.body).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(Intake::Gone),
        Err(_) => Err(Intake::Stalled),
    }
}

/// Sends `100 Continue` if the client waits for it and nothing of the body has arrived.
async fn continue_if_expected(c: &mut Conn, req: &Request) -> bool {
    if req.expect_continue && c.rbuf.is_empty() {
        c.wbuf.clear();
        c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        c.log.head += c.wbuf.len() as u64;
        return c.flush().await;
    }
    true
}

/// Reads the start of the request body (all of it when it may be buffered; with
/// `buffer_all`, nginx's `proxy_request_buffering on`, every body whose size is bounded).
pub(crate) async fn intake(
    c: &mut Conn,
    req: &Request,
    limit: u64,
    buffer_all: bool,
    temp: &std::path::Path,
) -> Intake {
    c.body.clear();
    match req.framing {
        Framing::None => Intake::Body(ReqBody::Buffered),
        Framing::Length(n) => {
            if limit > 0 && n > limit {
                if !(req.expect_continue && c.rbuf.is_empty()) {
                    drain_length(c, n).await;
                }
                return Intake::TooLarge;
            }
            if !continue_if_expected(c, req).await {
                return Intake::Gone;
            }
            if n > REPLAY_LIMIT {
                if buffer_all {
                    return read_length_in_full(c, n, temp).await;
                }
                return Intake::Body(ReqBody::Length { left: n });
            }
            let n = n as usize;
            while c.rbuf.len() < n {
                if let Err(end) = read_body_part(c).await {
                    return end;
                }
            }
            c.body.extend_from_slice(&c.rbuf[..n]);
            c.rbuf.advance(n);
            Intake::Body(ReqBody::Buffered)
        }
        Framing::Chunked => {
            if !continue_if_expected(c, req).await {
                return Intake::Gone;
            }
            let in_memory_up_to = if limit > 0 {
                limit.min(MEMORY_LIMIT) + 1
            } else {
                REPLAY_LIMIT
            };
            let mut dec = ChunkedDecoder::default();
            loop {
                let body = &mut c.body;
                let Ok(used) = dec.feed(&c.rbuf, |d| body.extend_from_slice(d)) else {
                    return Intake::Bad;
                };
                c.rbuf.advance(used);
                if limit > 0 && dec.total() > limit {
                    drain_chunked(c, dec).await;
                    return Intake::TooLarge;
                }
                if dec.is_done() {
                    return Intake::Body(ReqBody::Buffered);
                }
                if dec.total() >= in_memory_up_to {
                    return if limit > 0 {
                        spool_rest(c, dec, limit, temp).await
                    } else {
                        Intake::Body(ReqBody::Chunked(dec))
                    };
                }
                if let Err(end) = read_body_part(c).await {
                    return end;
                }
            }
        }
    }
}

/// Reads a whole `Content-Length` body of `n` bytes before any upstream is contacted
/// (`proxy_request_buffering`): up to [`MEMORY_LIMIT`] into `c.body`, the rest into a temp
/// file. A slow upload then costs the upstream nothing until it is complete, and the body can be
/// sent again on a retry. Without a temp file the body streams, as with buffering off.
async fn read_length_in_full(c: &mut Conn, n: u64, temp: &std::path::Path) -> Intake {
    let mut spool = None;
    if n > MEMORY_LIMIT {
        match Spool::create(temp).await {
            Ok(s) => spool = Some(s),
            Err(e) => {
                log::warn!("cannot create a temp file for a request body, streaming it: {e}");
                return Intake::Body(ReqBody::Length { left: n });
            }
        }
    }
    let in_memory = n.min(MEMORY_LIMIT) as usize;
    let mut left = n - in_memory as u64;
    loop {
        let take = c.rbuf.len().min(in_memory - c.body.len());
        c.body.extend_from_slice(&c.rbuf[..take]);
        c.rbuf.advance(take);
        if let Some(spool) = spool.as_mut().filter(|_| c.body.len() == in_memory) {
            let take = (c.rbuf.len() as u64).min(left) as usize;
            if take > 0 {
                if let Err(e) = spool.write(&c.rbuf[..take]).await {
                    log::warn!("writing a request body to its temp file failed: {e}");
                    return Intake::Gone;
                }
                c.rbuf.advance(take);
                left -= take as u64;
            }
        }
        if c.body.len() == in_memory && left == 0 {
            break;
        }
        if let Err(end) = read_body_part(c).await {
            return end;
        }
    }
    match spool {
        None => Intake::Body(ReqBody::Buffered),
        Some(mut spool) => {
            if let Err(e) = spool.finish().await {
                log::warn!("writing a request body to its temp file failed: {e}");
                return Intake::Gone;
            }
            Intake::Body(ReqBody::Spooled(spool))
        }
    }
}

/// Reads the rest of a chunked body into a temp file, up to `limit`.
async fn spool_rest(
    c: &mut Conn,
    mut dec: ChunkedDecoder,
    limit: u64,
    temp: &std::path::Path,
) -> Intake {
    let mut spool = match Spool::create(temp).await {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot create a temp file for a request body, streaming it: {e}");
            return Intake::Body(ReqBody::Chunked(dec));
        }
    };
    loop {
        c.wire.clear();
        let scratch = &mut c.wire;
        let Ok(used) = dec.feed(&c.rbuf, |d| scratch.extend_from_slice(d)) else {
            return Intake::Bad;
        };
        c.rbuf.advance(used);
        if limit > 0 && dec.total() > limit {
            drain_chunked(c, dec).await;
            return Intake::TooLarge;
        }
        if let Err(e) = spool.write(&c.wire).await {
            log::warn!("writing a request body to its temp file failed: {e}");
            return Intake::Gone;
        }
        if dec.is_done() {
            if let Err(e) = spool.finish().await {
                log::warn!("writing a request body to its temp file failed: {e}");
                return Intake::Gone;
            }
            return Intake::Body(ReqBody::Spooled(spool));
        }
        if let Err(end) = read_body_part(c).await {
            return end;
        }
    }
}

/// After an early answer: discards what is left of the client's body (bounded by
/// `DRAIN_LIMIT` and `DRAIN_TIME`) before the connection closes, so that a client still sending
/// reads the answer instead of a connection reset.
pub(crate) async fn linger(c: &mut Conn, body: &ReqBody) {
    match body {
        ReqBody::Length { left } if *left > 0 => drain_length(c, *left).await,
        ReqBody::Chunked(dec) if !dec.is_done() => drain_length(c, DRAIN_LIMIT).await,
        _ => {}
    }
}

/// Discards the rest of a refused `Content-Length` body (bounded), so that the client, still
/// sending, reads the answer instead of a connection reset (nginx's lingering close).
async fn drain_length(c: &mut Conn, n: u64) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = n.min(DRAIN_LIMIT);
        loop {
            let take = (c.rbuf.len() as u64).min(left);
            c.rbuf.advance(take as usize);
            left -= take;
            if left == 0 || !read_client(c).await {
                break;
            }
        }
    })
    .await;
}

/// Discards the rest of a refused chunked body (bounded).
async fn drain_chunked(c: &mut Conn, mut dec: ChunkedDecoder) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let start = dec.total();
        while let Ok(used) = dec.feed(&c.rbuf, |_| {}) {
            c.rbuf.advance(used);
            if dec.is_done() || dec.total() - start > DRAIN_LIMIT || !read_client(c).await {
                break;
            }
        }
    })
    .await;
}

/// Passes the rest of a streamed body from the client to the upstream.
pub(crate) async fn send_stream(
    c: &mut Conn,
    up: &mut UpConn,
    body: &mut ReqBody,
    limit: u64,
    send_timeout: std::time::Duration,
) -> Result<(), StreamError> {
    loop {
        c.wire.clear();
        match body {
            ReqBody::Buffered => return Ok(()),
            ReqBody::Spooled(spool) => {
                return spool
                    .send(up, &mut c.wire, &mut c.utimer, send_timeout)
                    .await
                    .map_err(|e| match e {
                        crate::spool::SpoolSendError::File(e) => {
                            log::warn!("reading a spooled request body failed: {e}");
                            StreamError::Client
                        }
                        crate::spool::SpoolSendError::Upstream(e) => StreamError::Upstream(e),
                        crate::spool::SpoolSendError::Timeout => StreamError::Timeout,
                        crate::spool::SpoolSendError::Answered => StreamError::Answered,
                    });
            }
            ReqBody::Length { left } => {
                if *left == 0 {
                    return Ok(());
                }
                let take = (c.rbuf.len() as u64).min(*left) as usize;
                if take > 0 {
                    let data = &c.rbuf[..take];
                    match write_watching(up, data, &mut c.utimer, send_timeout).await {
                        Ok(Ok(Sent::Done)) => {}
                        Ok(Ok(Sent::Answered)) => return Err(StreamError::Answered),
                        Ok(Err(e)) => return Err(StreamError::Upstream(e)),
                        Err(_) => return Err(StreamError::Timeout),
                    }
                    c.rbuf.advance(take);
                    *left -= take as u64;
                }
            }
            ReqBody::Chunked(dec) => {
                if dec.is_done() {
                    return Ok(());
                }
                // The prefix in `c.body` went out with the head: reuse it as scratch space.
                c.body.clear();
                let scratch = &mut c.body;
                let used = dec
                    .feed(&c.rbuf, |d| scratch.extend_from_slice(d))
                    .map_err(|_| StreamError::Client)?;
                c.rbuf.advance(used);
                if limit > 0 && dec.total() > limit {
                    return Err(StreamError::TooLarge);
                }
                if !c.body.is_empty() {
                    write_chunk_header(&mut c.wire, c.body.len());
                    c.wire.extend_from_slice(&c.body);
                    c.wire.extend_from_slice(b"\r\n");
                }
                if dec.is_done() {
                    c.wire.extend_from_slice(b"0\r\n\r\n");
                }
                if !c.wire.is_empty() {
                    match write_watching(up, &c.wire, &mut c.utimer, send_timeout).await {
                        Ok(Ok(Sent::Done)) => {}
                        Ok(Ok(Sent::Answered)) => return Err(StreamError::Answered),
                        Ok(Err(e)) => return Err(StreamError::Upstream(e)),
                        Err(_) => return Err(StreamError::Timeout),
                    }
                }
            }
        }
        if !body.complete() && c.rbuf.is_empty() {
            match read_client_watching(c, up).await {
                Ok(true) => {}
                Ok(false) => return Err(StreamError::Client),
                Err(_) => return Err(StreamError::Answered),
            }
        }
    }
}

/// How the response body is written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToClient {
    /// Byte for byte (length, chunked to an HTTP/1.1 client, or until close).
    AsIs,
    /// An until-close body re-framed as chunked (HTTP/1.1 client).
    Rechunk,
    /// A chunked body decoded, delimited by closing (HTTP/1.0 client).
    Dechunk,
    /// Decoded and gzip-compressed (see [`forward_gzip`]); chunked for an HTTP/1.1 client
    /// (`true`), delimited by closing for HTTP/1.0.
    Gzip(bool),
}

/// How forwarding a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// The whole body reached the client.
    Complete,
    /// The upstream failed, stalled or sent garbage: the client's answer is cut.
    Cut,
    /// The client went away.
    ClientGone,
}

/// Writes `c.wbuf` (the response head) and the body arriving on `up` to the client.
pub(crate) async fn forward(
    c: &mut Conn,
    up: &mut UpConn,
    framing: Body,
    mode: ToClient,
    read_timeout: std::time::Duration,
    backlog: &mut Option<Backlog<'_>>,
) -> Forwarded {
    let mut left = match framing {
        Body::Length(n) => n,
        _ => 0,
    };
    let mut dec = ChunkedDecoder::default();
    let mut done = framing == Body::None || framing == Body::Length(0);
    loop {
        if !done && !up.rbuf.is_empty() {
            match framing {
                Body::None => {}
                Body::Length(_) => {
                    let take = (up.rbuf.len() as u64).min(left) as usize;
                    c.wbuf.extend_from_slice(&up.rbuf[..take]);
                    up.rbuf.advance(take);
                    left -= take as u64;
                    done = left == 0;
                }
                Body::Chunked => {
                    let wbuf = &mut c.wbuf;
                    let used = if mode == ToClient::Dechunk {
                        dec.feed(&up.rbuf, |d| wbuf.extend_from_slice(d))
                    } else {
                        dec.feed(&up.rbuf, |_| {})
                            .inspect(|&n| wbuf.extend_from_slice(&up.rbuf[..n]))
                    };
                    let Ok(used) = used else {
                        log::warn!("upstream sent a malformed chunked body");
                        return Forwarded::Cut;
                    };
                    up.rbuf.advance(used);
                    done = dec.is_done();
                }
                Body::Close => {
                    if mode == ToClient::Rechunk {
                        write_chunk_header(&mut c.wbuf, up.rbuf.len());
                        c.wbuf.extend_from_slice(&up.rbuf);
                        c.wbuf.extend_from_slice(b"\r\n");
                    } else {
                        c.wbuf.extend_from_slice(&up.rbuf);
                    }
                    up.rbuf.clear();
                }
            }
        }
        if !c.wbuf.is_empty() {
            if let Err(end) = emit(c, backlog).await {
                return end;
            }
        }
        if done {
            return Forwarded::Complete;
        }
        match next_body_bytes(c, up, framing, read_timeout, backlog).await {
            Ok(None | Some(false)) => {}
            Ok(Some(true)) => {
                if mode == ToClient::Rechunk {
                    c.wbuf.extend_from_slice(b"0\r\n\r\n");
                    if let Err(end) = emit(c, backlog).await {
                        return end;
                    }
                }
                return Forwarded::Complete;
            }
            Err(cut) => return cut,
        }
    }
}

/// Hands `c.wbuf` (emptied) to the client. Without a backlog: written, waiting as long as the
/// client needs (bounded by `send_timeout`). With one (`proxy_buffering`): written at once as
/// far as the client takes it, the rest queued behind what waits already; the wait for the
/// client comes only when the backlog is full.
async fn emit(c: &mut Conn, backlog: &mut Option<Backlog<'_>>) -> Result<(), Forwarded> {
    let Some(q) = backlog else {
        return if c.flush().await {
            Ok(())
        } else {
            Err(Forwarded::ClientGone)
        };
    };
    if q.is_empty() {
        // The fast path: a client that keeps up gets the bytes now, as without buffering.
        let written = poll_fn(|cx| {
            let mut n = 0;
            while n < c.wbuf.len() {
                match Pin::new(&mut c.stream).poll_write(cx, &c.wbuf[n..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(k)) => n += k,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Pending => break,
                }
            }
            Poll::Ready(Ok(n))
        })
        .await
        .map_err(|()| Forwarded::ClientGone)?;
        c.log.sent += written as u64;
        if c.stream.is_tls() && written > 0 {
            q.set_unflushed();
        }
        if written == c.wbuf.len() {
            c.wbuf.clear();
            return Ok(());
        }
        c.wbuf.drain(..written);
        q.client_deadline = Some(tokio::time::Instant::now() + c.timeouts.send);
    }
    if let Err(e) = q.push(&mut c.wbuf).await {
        log::error!("response buffering: writing the temp file failed: {e}");
        return Err(Forwarded::Cut);
    }
    while !q.has_room() {
        // Memory and file are full: the client must take some first (back-pressure).
        send_backlog(c, q, None, NO_READ).await?;
    }
    Ok(())
}

/// The read time-out of a [`send_backlog`] that does not read the upstream (unused).
const NO_READ: std::time::Duration = std::time::Duration::ZERO;

/// What [`send_backlog`] saw.
enum Waited {
    /// The client took the memory part of the backlog.
    Sent,
    /// The upstream sent bytes (`Ok(n)`, 0 at its end) or failed.
    Read(std::io::Result<usize>),
}

/// Writes the backlog to the client and, with `up`, reads the upstream at the same time, until
/// the memory part is sent or a read completes. `Err(ClientGone)` when the client took nothing
/// for `send_timeout` (counted from when it last took something, across calls) or failed;
/// `Err(Cut)` when the temp file failed or the upstream was silent for `read_timeout`.
async fn send_backlog(
    c: &mut Conn,
    q: &mut Backlog<'_>,
    mut up: Option<&mut UpConn>,
    read_timeout: std::time::Duration,
) -> Result<Waited, Forwarded> {
    if q.needs_refill() {
        if let Err(e) = q.refill().await {
            log::error!("response buffering: reading the temp file failed: {e}");
            return Err(Forwarded::Cut);
        }
    }
    let send_timeout = c.timeouts.send;
    let Conn {
        stream,
        ctimer,
        utimer,
        log,
        ..
    } = c;
    let mut read_armed = false;
    let reading = up.is_some() && q.has_room();
    let waited = poll_fn(|cx| {
        let mut sent = 0;
        let polled = q.poll_send(stream, cx, &mut sent);
        log.sent += sent;
        match polled {
            Poll::Ready(Ok(())) => {
                q.client_deadline = None;
                return Poll::Ready(Ok(Waited::Sent));
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Err(Forwarded::ClientGone)),
            Poll::Pending => {
                let now = tokio::time::Instant::now();
                let deadline = match q.client_deadline {
                    // Checked here too: while the upstream keeps sending, this wait ends with
                    // a read every time, before the timer could fire.
                    Some(d) if sent == 0 && now >= d => {
                        return Poll::Ready(Err(Forwarded::ClientGone));
                    }
                    Some(d) if sent == 0 => d,
                    _ => {
                        let d = now + send_timeout;
                        q.client_deadline = Some(d);
                        d
                    }
                };
                ctimer.arm_until(deadline);
            }
        }
        if let Some(up) = up.as_deref_mut().filter(|_| reading) {
            match crate::io::poll_read(&mut up.stream, &mut up.rbuf, cx) {
                Poll::Ready(r) => return Poll::Ready(Ok(Waited::Read(r))),
                Poll::Pending if !read_armed => {
                    utimer.arm(read_timeout);
                    read_armed = true;
                }
                Poll::Pending => {}
            }
        }
        if ctimer.poll_expired(cx).is_ready() {
            return Poll::Ready(Err(Forwarded::ClientGone));
        }
        if read_armed && utimer.poll_expired(cx).is_ready() {
            log::warn!("upstream silent for {read_timeout:?} in the middle of a response body");
            return Poll::Ready(Err(Forwarded::Cut));
        }
        Poll::Pending
    })
    .await?;
    Ok(waited)
}

/// Waits for more of the response body: `Ok(Some(ended))` after a read (see [`read_body`]),
/// `Ok(None)` when only the client took bytes of the backlog meanwhile.
async fn next_body_bytes(
    c: &mut Conn,
    up: &mut UpConn,
    framing: Body,
    read_timeout: std::time::Duration,
    backlog: &mut Option<Backlog<'_>>,
) -> Result<Option<bool>, Forwarded> {
    let Some(q) = backlog.as_mut().filter(|q| !q.is_empty()) else {
        return read_body(c, up, framing, read_timeout).await.map(Some);
    };
    match send_backlog(c, q, Some(up), read_timeout).await? {
        Waited::Sent => Ok(None),
        Waited::Read(Ok(0)) if framing == Body::Close => Ok(Some(true)),
        Waited::Read(Ok(n)) if n > 0 => Ok(Some(false)),
        Waited::Read(Ok(_)) => {
            log::warn!("upstream closed the connection in the middle of a response body");
            Err(Forwarded::Cut)
        }
        Waited::Read(Err(e)) => {
            log::warn!("reading a response body failed: {e}");
            Err(Forwarded::Cut)
        }
    }
}

/// Writes what the backlog still holds to the client (after the upstream's answer was read to
/// its end); false if the client is gone.
pub(crate) async fn drain_backlog(c: &mut Conn, q: &mut Backlog<'_>) -> bool {
    while !q.is_empty() {
        if send_backlog(c, q, None, NO_READ).await.is_err() {
            return false;
        }
    }
    true
}

/// Reads more of a response body from `up` into its buffer: `Ok(true)` when a body delimited by
/// closing has ended, `Ok(false)` when bytes arrived, `Err(Forwarded::Cut)` when the upstream
/// failed, closed too early or went silent for `read_timeout`.
async fn read_body(
    c: &mut Conn,
    up: &mut UpConn,
    framing: Body,
    read_timeout: std::time::Duration,
) -> Result<bool, Forwarded> {
    match io::read(&mut up.stream, &mut up.rbuf, &mut c.utimer, read_timeout).await {
        Ok(Ok(0)) if framing == Body::Close => Ok(true),
        Ok(Ok(n)) if n > 0 => Ok(false),
        Ok(Ok(_)) => {
            log::warn!("upstream closed the connection in the middle of a response body");
            Err(Forwarded::Cut)
        }
        Ok(Err(e)) => {
            log::warn!("reading a response body failed: {e}");
            Err(Forwarded::Cut)
        }
        Err(_) => {
            log::warn!("upstream silent for {read_timeout:?} in the middle of a response body");
            Err(Forwarded::Cut)
        }
    }
}

/// Writes `c.wbuf` (the response head) and the body arriving on `up` to the client, decoded
/// from its framing and gzip-compressed by `encoder`: what each read brought is compressed and
/// flushed to the client before the next read, so memory stays at the read buffer and the
/// compressor's window.
pub(crate) async fn forward_gzip(
    c: &mut Conn,
    up: &mut UpConn,
    framing: Body,
    encoder: crate::gzip::Encoder,
    chunked: bool,
    read_timeout: std::time::Duration,
    backlog: &mut Option<Backlog<'_>>,
) -> Forwarded {
    let mut left = match framing {
        Body::Length(n) => n,
        _ => 0,
    };
    let mut dec = ChunkedDecoder::default();
    let mut plain = Vec::new();
    let mut done = framing == Body::None || framing == Body::Length(0);
    let mut encoder = Some(encoder);
    loop {
        if !done && !up.rbuf.is_empty() {
            plain.clear();
            match framing {
                Body::None => {}
                Body::Length(_) => {
                    let take = (up.rbuf.len() as u64).min(left) as usize;
                    plain.extend_from_slice(&up.rbuf[..take]);
                    up.rbuf.advance(take);
                    left -= take as u64;
                    done = left == 0;
                }
                Body::Chunked => {
                    let Ok(used) = dec.feed(&up.rbuf, |d| plain.extend_from_slice(d)) else {
                        log::warn!("upstream sent a malformed chunked body");
                        return Forwarded::Cut;
                    };
                    up.rbuf.advance(used);
                    done = dec.is_done();
                }
                Body::Close => {
                    plain.extend_from_slice(&up.rbuf);
                    up.rbuf.clear();
                }
            }
            if let Some(enc) = encoder.as_mut().filter(|_| !plain.is_empty()) {
                if enc.feed(&plain, &mut c.wbuf, chunked).is_err() {
                    return Forwarded::Cut;
                }
            }
        }
        let ended = done;
        if let Some(enc) = encoder.take_if(|_| ended) {
            // The last compressed bytes and the gzip trailer go with the last write.
            if enc.finish(&mut c.wbuf, chunked).is_err() {
                return Forwarded::Cut;
            }
        }
        if !c.wbuf.is_empty() {
            if let Err(end) = emit(c, backlog).await {
                return end;
            }
        }
        if ended {
            return Forwarded::Complete;
        }
        match next_body_bytes(c, up, framing, read_timeout, backlog).await {
            Ok(None) => {}
            Ok(Some(ended)) => done = ended,
            Err(cut) => return cut,
        }
    }
}
