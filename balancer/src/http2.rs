//! HTTP/2 on the TLS listener (nginx `http2 on`), offered through ALPN when `http2 = true`.
//!
//! Each stream of an HTTP/2 connection is bridged to the HTTP/1.1 request path: its request is
//! written as an HTTP/1.1 request (`:authority` as `Host`, split `cookie` fields joined, the body
//! chunked when no `content-length` says its size, `Connection: close`) into an in-memory pipe,
//! at whose other end [`crate::conn::serve_stream`] serves it as it serves a TLS connection; the
//! HTTP/1.1 answer that comes back is turned into the stream's response. So every rule of the
//! request path (deny, access, limits, redirects, body limits, sticky routes, retries, error
//! pages, gzip, headers, the access log with `HTTP/2.0`) applies to HTTP/2 as it is, and the
//! upstreams see HTTP/1.1 with `X-Forwarded-Proto: https`, as behind nginx.
//!
//! Flow control carries the back-pressure both ways: request body bytes are acknowledged to the
//! client (window released) only once the pipe took them, and response bytes are read from the
//! pipe only as the client's window lets them go out, so a slow client or upstream holds at
//! most a stream window and the pipe's buffer per stream; a client whose window stays shut for
//! `send_timeout` has the stream reset. The connection closes after
//! `client_keepalive_timeout` without streams; a stop sends GOAWAY, lets the open streams end,
//! then closes.

use std::future::{poll_fn, Future as _};
use std::net::IpAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use crate::h1::chunked::ChunkedDecoder;
use crate::headers::{self, Kind};
use crate::proxy::Worker;
use crate::server::{stop_requested, RunState};
use crate::tls::ClientStream;

/// Streams one connection may have open at once (nginx `http2_max_concurrent_streams`).
const MAX_STREAMS: u32 = 128;
/// Each stream's receive window: request body bytes in flight per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window.
const CONN_WINDOW: u32 = 1024 * 1024;
/// Largest header list a request may have (the HTTP/1.1 head it becomes is limited too).
const MAX_HEADER_LIST: u32 = 32 * 1024;
/// The pipe between a stream and its HTTP/1.1 request path, each way.
const PIPE: usize = 32 * 1024;
/// Largest answer head read back from the request path.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// Largest number of header lines in an answer.
const MAX_ANSWER_HEADERS: usize = 256;

/// Serves an HTTP/2 connection (TLS with ALPN `h2`) from `ip` until it closes or the balancer
/// stops.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    tls: TlsStream<TcpStream>,
    ip: IpAddr,
    state: watch::Receiver<RunState>,
    client_cert: Option<std::sync::Arc<crate::tls::ClientCert>>,
) {
    let (handshake_limit, idle_limit) = {
        let snap = worker.snapshot();
        (
            snap.cfg.client_header_timeout,
            snap.cfg.client_keepalive_timeout,
        )
    };
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(tls);
    let mut conn = match tokio::time::timeout(handshake_limit, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log::debug!("HTTP/2 preface from {ip} refused: {e}");
            return;
        }
        Err(_) => {
            log::debug!("HTTP/2 preface from {ip} timed out after {handshake_limit:?}");
            return;
        }
    };
    let mut streams = JoinSet::new();
    let mut closing = false;
    let idle = tokio::time::sleep(idle_limit);
    let mut idle = pin!(idle);
    let mut stop_state = state.clone();
    let mut stop = pin!(stop_requested(&mut stop_state));
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    streams.spawn_local(stream(
                        worker.clone(),
                        ip,
                        state.clone(),
                        client_cert.clone(),
                        req,
                        respond,
                    ));
                }
                Some(Err(e)) => {
                    log::debug!("HTTP/2 connection from {ip}: {e}");
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                }
            }
            () = &mut idle, if streams.is_empty() && !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
            () = &mut stop, if !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
        }
    }
    // The connection is gone: streams still open cannot send any more; dropping them ends their
    // requests (the request path sees the client leave).
    drop(streams);
}

/// Serves one stream: bridges it to the HTTP/1.1 request path and back.
async fn stream(
    worker: Rc<Worker>,
    ip: IpAddr,
    state: watch::Receiver<RunState>,
    client_cert: Option<std::sync::Arc<crate::tls::ClientCert>>,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, body) = req.into_parts();
    let chunked =
        !body.is_end_stream() && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let mut head = Vec::with_capacity(1024);
    request_head(&parts, chunked, &mut head);
    let no_body = parts.method == http::Method::HEAD;
    // nginx `send_timeout`: how long a client may keep its window shut.
    let send_limit = worker.snapshot().cfg.send_timeout;
    let (ours, theirs) = tokio::io::duplex(PIPE);
    // Boxed: the request path's future is a few KiB, and the stream's own future (moved when it
    // is spawned and joined) stays small.
    let served = Box::pin(crate::conn::serve_stream(
        worker,
        ClientStream::H2(theirs),
        ip,
        state,
        client_cert,
    ));
    let bridged = async move {
        let (mut rd, mut wr) = tokio::io::split(ours);
        let outcome = {
            let mut up = pin!(send_request(&mut wr, head, body, chunked));
            let mut down = pin!(send_answer(&mut rd, &mut respond, no_body, send_limit));
            let mut sending = true;
            poll_fn(|cx| {
                if sending {
                    match up.as_mut().poll(cx) {
                        Poll::Ready(Ok(())) => sending = false,
                        // The request path stopped reading the body: it answers without it
                        // (413, say), or it gave up and closes.
                        Poll::Ready(Err(Gone::Path)) => sending = false,
                        // The client reset the stream: nothing more to do.
                        Poll::Ready(Err(Gone::Client)) => return Poll::Ready(Ok(())),
                        Poll::Pending => {}
                    }
                }
                down.as_mut().poll(cx)
            })
            .await
        };
        if let Err(Failure::NoAnswer) = outcome {
            // The request path closed without an answer: nothing was sent yet.
            let mut page = http::Response::new(());
            *page.status_mut() = StatusCode::BAD_GATEWAY;
            let _ = respond.send_response(page, true);
        }
        // Dropping the pipe's end here tells the request path the client is gone, if it is
        // still at work.
    };
    tokio::join!(served, bridged);
}

/// Writes the HTTP/1.1 head of an HTTP/2 request into `out`: request line, `Host` from
/// `:authority` (else the `host` field), every field but `host` and `expect` (the body streams
/// anyway), the `cookie` fields joined in one line, `Transfer-Encoding: chunked` when the body
/// has no announced length, and `Connection: close` (one request per bridge).
fn request_head(parts: &http::request::Parts, chunked: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        // CONNECT names only an authority; the request path refuses it.
        None => match parts.uri.authority() {
            Some(a) => out.extend_from_slice(a.as_str().as_bytes()),
            None => out.push(b'/'),
        },
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(a) = authority {
        headers::put(out, b"host", a.as_str().as_bytes());
    }
    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in &parts.headers {
        match headers::kind(name.as_str()) {
            Kind::Cookie => {
                let c = cookies.get_or_insert_with(Vec::new);
                if !c.is_empty() {
                    c.extend_from_slice(b"; ");
                }
                c.extend_from_slice(value.as_bytes());
            }
            Kind::Host if authority.is_some() => {}
            // The body streams anyway; `te: trailers` is all HTTP/2 allows, and hop-by-hop.
            Kind::Expect | Kind::HopByHop => {}
            _ => headers::put(out, name.as_str().as_bytes(), value.as_bytes()),
        }
    }
    if let Some(c) = cookies {
        headers::put(out, b"cookie", &c);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
}

/// Which side ended a request body early.
#[derive(Debug)]
enum Gone {
    /// The client reset the stream.
    Client,
    /// The request path stopped reading (it answered without the body, or gave up).
    Path,
}

/// Writes the request head and streams the body into the pipe, releasing the client's window
/// for each piece the pipe took.
async fn send_request(
    wr: &mut tokio::io::WriteHalf<tokio::io::DuplexStream>,
    head: Vec<u8>,
    mut body: h2::RecvStream,
    chunked: bool,
) -> Result<(), Gone> {
    wr.write_all(&head).await.map_err(|_| Gone::Path)?;
    let mut frame = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(|_| Gone::Client)?;
        let n = data.len();
        if n == 0 {
            continue;
        }
        if chunked {
            frame.clear();
            crate::h1::chunked::write_chunk_header(&mut frame, n);
            wr.write_all(&frame).await.map_err(|_| Gone::Path)?;
        }
        wr.write_all(&data).await.map_err(|_| Gone::Path)?;
        if chunked {
            wr.write_all(b"\r\n").await.map_err(|_| Gone::Path)?;
        }
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n").await.map_err(|_| Gone::Path)?;
    }
    Ok(())
}

/// Why an answer could not be passed on.
#[derive(Debug)]
enum Failure {
    /// The request path closed before an answer head (nothing was sent to the client).
    NoAnswer,
    /// The client reset the stream or the connection went away (or, the answer having broken
    /// off after its head, the stream was reset).
    ClientGone,
}

/// How the answer's body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// Reads the HTTP/1.1 answer from the pipe and sends it as the stream's response.
async fn send_answer(
    rd: &mut tokio::io::ReadHalf<tokio::io::DuplexStream>,
    respond: &mut h2::server::SendResponse<Bytes>,
    no_body: bool,
    send_limit: std::time::Duration,
) -> Result<(), Failure> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let (status, headers, framing) = loop {
        match parse_answer(&buf, no_body) {
            Ok(Some((used, status, headers, framing))) => {
                let _ = buf.split_to(used);
                if status.is_informational() {
                    continue; // an interim answer (103): the final one follows
                }
                break (status, headers, framing);
            }
            Ok(None) if buf.len() < MAX_ANSWER_HEAD => {}
            Ok(None) | Err(()) => return Err(Failure::NoAnswer),
        }
        // A client that resets the stream while the answer is awaited ends the request: the
        // pipe closes and the request path gives the upstream up, as for a client that leaves.
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = poll_fn(|cx| respond.poll_reset(cx)) => return Err(Failure::ClientGone),
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => return Err(Failure::NoAnswer),
        }
    };
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    let end = matches!(framing, Framing::None | Framing::Length(0));
    let mut send = respond
        .send_response(response, end)
        .map_err(|_| Failure::ClientGone)?;
    if end {
        return Ok(());
    }
    let mut framing = framing;
    let mut decoded = BytesMut::new();
    loop {
        // Bytes of the body at hand in `buf`, decoded into `out`.
        let (out, done) = match &mut framing {
            Framing::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                (buf.split_to(n).freeze(), *left == 0)
            }
            Framing::Chunked(dec) => {
                decoded.clear();
                let Ok(used) = dec.feed(&buf, |d| decoded.extend_from_slice(d)) else {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Err(Failure::ClientGone);
                };
                let _ = buf.split_to(used);
                (decoded.split().freeze(), dec.is_done())
            }
            Framing::UntilClose => (buf.split().freeze(), false),
            Framing::None => (Bytes::new(), true),
        };
        if !out.is_empty() {
            send_data(&mut send, out, send_limit).await?;
        }
        if done {
            return send
                .send_data(Bytes::new(), true)
                .map_err(|_| Failure::ClientGone);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return Err(Failure::ClientGone),
        };
        match read {
            Ok(n) if n > 0 => {}
            _ if matches!(framing, Framing::UntilClose) => {
                return send
                    .send_data(Bytes::new(), true)
                    .map_err(|_| Failure::ClientGone);
            }
            _ => {
                // Cut inside the body: the client must not take it for whole.
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(Failure::ClientGone);
            }
        }
    }
}

/// Sends `data` as the client's window lets it go; a window that stays shut for `limit` resets
/// the stream (a client that stops reading must not hold it forever).
async fn send_data(
    send: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    limit: std::time::Duration,
) -> Result<(), Failure> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match tokio::time::timeout(limit, poll_fn(|cx| send.poll_capacity(cx))).await
        {
            Ok(Some(Ok(n))) => n,
            Ok(_) => return Err(Failure::ClientGone),
            Err(_) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(Failure::ClientGone);
            }
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, false)
            .map_err(|_| Failure::ClientGone)?;
    }
    Ok(())
}

/// Parses an answer head at the start of `buf`: `Ok(None)` while incomplete, `Err` when it is
/// not HTTP/1.1. Returns its length, status, the fields HTTP/2 may carry and the framing.
#[allow(clippy::type_complexity)]
fn parse_answer(
    buf: &[u8],
    no_body: bool,
) -> Result<Option<(usize, StatusCode, HeaderMap, Framing)>, ()> {
    // Most answers have a few header lines: try with a small table first (cheap to set up),
    // then with the largest.
    let mut few = [httparse::EMPTY_HEADER; 16];
    match parse_with(buf, no_body, &mut few) {
        Err(Some(httparse::Error::TooManyHeaders)) => {}
        r => return r.map_err(|_| ()),
    }
    let mut lines = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    parse_with(buf, no_body, &mut lines).map_err(|_| ())
}

/// [`parse_answer`] with a table of `lines`; `Err(Some(e))` when httparse refused the head.
#[allow(clippy::type_complexity)]
fn parse_with<'b>(
    buf: &'b [u8],
    no_body: bool,
    lines: &mut [httparse::Header<'b>],
) -> Result<Option<(usize, StatusCode, HeaderMap, Framing)>, Option<httparse::Error>> {
    let mut answer = httparse::Response::new(lines);
    let used = match answer.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Some(e)),
    };
    let status = answer
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(None)?;
    let mut headers = HeaderMap::with_capacity(answer.headers.len());
    let (mut length, mut chunked) = (None, false);
    for h in answer.headers.iter() {
        match headers::kind(h.name) {
            Kind::TransferEncoding => {
                chunked = headers::last_coding(h.value).eq_ignore_ascii_case(b"chunked");
                continue;
            }
            Kind::ContentLength => length = headers::content_length(h.value),
            // Connection-specific fields have no place in HTTP/2.
            Kind::Connection | Kind::Upgrade | Kind::HopByHop => continue,
            _ => {}
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| None)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| None)?;
        headers.append(name, value);
    }
    let framing = if no_body
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if chunked {
        headers.remove(http::header::CONTENT_LENGTH);
        Framing::Chunked(ChunkedDecoder::default())
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some((used, status, headers, framing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(req: http::Request<()>, chunked: bool) -> String {
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        request_head(&parts, chunked, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_becomes_an_http1_head() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://shop.example:8443/cart?x=1")
            .header("host", "ignored.example")
            .header("cookie", "a=1")
            .header("cookie", "FERROCAT_SESSION=abc-n1.app2")
            .header("expect", "100-continue")
            .header("te", "trailers")
            .header("x-thing", "v")
            .body(())
            .unwrap();
        assert_eq!(
            head_of(req, true),
            "POST /cart?x=1 HTTP/1.1\r\nhost: shop.example:8443\r\nx-thing: v\r\n\
             cookie: a=1; FERROCAT_SESSION=abc-n1.app2\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n"
        );
    }

    #[test]
    fn without_authority_the_host_field_is_kept() {
        let req = http::Request::builder()
            .uri("/a")
            .header("host", "h.example")
            .body(())
            .unwrap();
        assert_eq!(
            head_of(req, false),
            "GET /a HTTP/1.1\r\nhost: h.example\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn answers_lose_connection_fields_and_keep_their_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nKeep-Alive: timeout=5\r\n\
                    Transfer-Encoding: chunked\r\nContent-Length: 9\r\nX-Upstream: a\r\n\r\n";
        let Ok(Some((used, status, headers, framing))) = parse_answer(raw, false) else {
            panic!("not parsed");
        };
        assert_eq!(used, raw.len());
        assert_eq!(status, StatusCode::OK);
        assert!(matches!(framing, Framing::Chunked(_)));
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-upstream"], "a");

        let raw = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n";
        let Ok(Some((_, _, _, framing))) = parse_answer(raw, false) else {
            panic!("not parsed");
        };
        assert!(matches!(framing, Framing::None));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        let Ok(Some((_, _, h, framing))) = parse_answer(raw, true) else {
            panic!("not parsed");
        };
        assert!(matches!(framing, Framing::None));
        assert_eq!(h["content-length"], "12");
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        ));
        assert!(parse_answer(b"SSH-2.0\r\n\r\n", false).is_err());

        // More lines than the small first table holds.
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..40 {
            raw.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let Ok(Some((_, _, h, framing))) = parse_answer(&raw, false) else {
            panic!("not parsed");
        };
        assert_eq!(h.len(), 41);
        assert_eq!(h["x-h39"], "39");
        assert!(matches!(framing, Framing::Length(0)));
    }
}
