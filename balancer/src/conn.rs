//! One client connection: a single task that reads request heads, takes in their bodies, passes
//! each request to the proxy and writes the answers, in order (pipelined requests included).
//!
//! Everything the connection needs is allocated once and reused for every request: the read
//! buffer, the rewritten upstream head, the buffered request body, the response head and two
//! [`LazyTimer`]s (client side and upstream side). A connection waiting for its next request
//! closes on the keep-alive time-out or at once when a stop is requested; a stop during a request
//! lets it finish, then closes.

use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::{self, Intake};
use crate::h1::request::{self, Framing, HeadError};
use crate::io::{self, LazyTimer};
use crate::pages;
use crate::proxy::Worker;
use crate::server::{stop_requested, RunState};

/// Time limits of waits on the client, from the config in force when the current request began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientTimeouts {
    /// nginx `keepalive_timeout`: an idle connection's wait for its next request.
    pub keepalive: Duration,
    /// nginx `client_header_timeout`: the rest of a started head.
    pub header: Duration,
    /// nginx `client_body_timeout`: silence while reading a body.
    pub body: Duration,
    /// nginx `send_timeout`: the client taking response bytes.
    pub send: Duration,
}

impl ClientTimeouts {
    fn of(cfg: &crate::config::BalancerConfig) -> Self {
        Self {
            keepalive: cfg.client_keepalive_timeout,
            header: cfg.client_header_timeout,
            body: cfg.client_body_timeout,
            send: cfg.send_timeout,
        }
    }
}

/// Initial size of the client read buffer.
const READ_BUFFER: usize = 16 * 1024;
/// Reused buffers larger than this are given back after the request that grew them.
const KEEP_BUFFER: usize = 256 * 1024;

/// A client connection and its reusable buffers.
pub(crate) struct Conn {
    pub stream: crate::tls::ClientStream,
    /// Bytes read from the client and not used yet (the next head, body bytes).
    pub rbuf: BytesMut,
    /// Bytes to write to the client (response head and body bytes at hand).
    pub wbuf: Vec<u8>,
    /// The current request's rewritten head, without `Host`, framing and the final CRLF.
    pub head: Vec<u8>,
    /// The request as written to an upstream (head, maybe the body).
    pub wire: Vec<u8>,
    /// The request body read before contacting an upstream (replayable).
    pub body: Vec<u8>,
    /// The evaluated `hash_key`.
    pub key: Vec<u8>,
    /// The evaluated `limit_req_key`.
    pub limit_key: Vec<u8>,
    /// The evaluated `limit_conn_key`.
    pub conn_key: Vec<u8>,
    /// With `gzip`: the client's `Accept-Encoding` takes gzip.
    pub gzip_ok: bool,
    /// A `redirect` rule's status for the current request (0: none) and its `Location`.
    pub redirect: (u16, Vec<u8>),
    /// Time limits of waits on the client.
    pub ctimer: LazyTimer,
    /// How long those waits may be.
    pub timeouts: ClientTimeouts,
    /// Time limits of waits on an upstream.
    pub utimer: LazyTimer,
    /// The connection's address.
    pub ip: IpAddr,
    pub ip_text: String,
    /// The current request's client address: `ip`, or the one a trusted proxy named
    /// (`set_real_ip_from`).
    pub client: IpAddr,
    /// `client` as text, when it is not `ip`.
    pub client_text: String,
    /// What the current request's access log line needs.
    pub log: crate::access_log::Entry,
    /// Requests whose heads were read on this connection.
    pub requests: u32,
    /// The current request's id (`request_id_header`).
    pub request_id: Vec<u8>,
    /// Header lines every page of the balancer's own carries for this request (its id).
    pub page_headers: Vec<u8>,
    /// The config the balancer's own pages follow, when it has something for them: its
    /// `add_header` lines with `add_header_always` (written with the page, when its status is
    /// known), its `error_pages`.
    pub page_add: Option<std::sync::Arc<crate::upstream::Snapshot>>,
    /// What the current request asks of a `[[balancer.static]]` location, if one takes it.
    pub file: crate::files::FileReq,
    /// The current request is a HEAD: the balancer's own pages go without their body.
    pub head_req: bool,
    /// The current request's host name (kept only when `proxy_redirect` names `$host`).
    pub host: Vec<u8>,
    /// The current request's scheme is https (its own TLS, or a trusted proxy's word).
    pub https: bool,
    /// The current request's dealings with the response cache.
    pub cache: crate::cache::CacheReq,
    /// The certificate the client showed on its TLS connection, if any.
    pub client_cert: Option<std::sync::Arc<crate::tls::ClientCert>>,
    /// The `auth_basic` location that guards the current request, if any, and its
    /// `Authorization` value.
    pub auth: (Option<usize>, Vec<u8>),
}

/// What happens to the connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    KeepAlive,
    Close,
}

impl Conn {
    /// Notes, for the access log, an answer of the balancer's own about to be flushed: its
    /// status, and that all of `wbuf` but the last `body` bytes is its head.
    pub fn answered(&mut self, status: StatusCode, body: usize) {
        self.log.status = status.as_u16();
        self.log.head += self.wbuf.len().saturating_sub(body) as u64;
    }

    /// Writes `wbuf` to the client and clears it; false if the client is gone.
    pub async fn flush(&mut self) -> bool {
        let buf = std::mem::take(&mut self.wbuf);
        let ok = self.send(&buf).await;
        self.wbuf = buf;
        self.wbuf.clear();
        ok
    }

    /// Writes `buf` to the client (bounded by `send_timeout`); false if the client is gone.
    pub async fn send(&mut self, buf: &[u8]) -> bool {
        self.log.sent += buf.len() as u64;
        let (timer, limit) = (&mut self.ctimer, self.timeouts.send);
        let mut ok = matches!(
            io::write_all(&mut self.stream, buf, timer, limit).await,
            Ok(Ok(()))
        );
        if ok && self.stream.is_tls() {
            // A TLS write can return with records still held back (the socket was full): they
            // must go now, not with the next write that may never come.
            ok = matches!(io::flush(&mut self.stream, timer, limit).await, Ok(Ok(())));
        }
        ok
    }

    /// Adds `page_headers` and, with `add_header_always`, the `add_header` lines (`$status`
    /// is this page's) to the page of the balancer's own that `wbuf` holds (nothing but that
    /// page).
    fn page_headers(&mut self, status: StatusCode) {
        let mut lines = std::borrow::Cow::Borrowed(&self.page_headers);
        if let Some(snap) = self.page_add.as_ref().filter(|s| s.cfg.add_header_always) {
            let vars = crate::custom_headers::ResponseVars {
                upstream: None,
                status: status.as_u16(),
                client: self.client,
                request_id: &self.request_id,
            };
            let _ = snap.add_headers.write(lines.to_mut(), None, Some(&vars));
        }
        if lines.is_empty() {
            return;
        }
        if let Some(end) = self.wbuf.windows(4).position(|w| w == b"\r\n\r\n") {
            let at = end + 2;
            self.wbuf.splice(at..at, lines.iter().copied());
        }
    }

    /// Refuses `req` with `status` (`limit_req_status`, `limit_conn_status`) before any
    /// upstream is asked; 502 to 504 get the `error_page`.
    async fn refuse(
        &mut self,
        snap: &crate::upstream::Snapshot,
        req: &request::Request,
        status: StatusCode,
    ) -> Next {
        // A body that was not read makes the connection unusable.
        let close = !req.keep_alive || req.framing != Framing::None;
        self.wbuf.clear();
        let body = pages::error(
            &mut self.wbuf,
            status,
            snap.page_for(status.as_u16()),
            close,
        );
        self.send_page(status, body, close).await
    }

    /// Answers with a page of the balancer's own (its `error_pages` one, if the status has
    /// one).
    pub async fn page(&mut self, status: StatusCode, close: bool) -> Next {
        self.wbuf.clear();
        let page = self
            .page_add
            .as_ref()
            .and_then(|s| s.error_pages.get(&status.as_u16()));
        let body = pages::error(&mut self.wbuf, status, page.map(|p| &p[..]), close);
        self.send_page(status, body, close).await
    }

    /// Sends the page of the balancer's own that `wbuf` holds (its last `body` bytes the
    /// body) with `page_headers`.
    pub async fn send_page(&mut self, status: StatusCode, mut body: usize, close: bool) -> Next {
        self.page_headers(status);
        if self.head_req {
            // The head alone, its `Content-Length` the GET's (a body would be read as the
            // start of the next answer on a kept-alive connection).
            self.wbuf.truncate(self.wbuf.len().saturating_sub(body));
            body = 0;
        }
        self.answered(status, body);
        if self.flush().await && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

/// Serves one client connection until it closes or the balancer stops.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    state: watch::Receiver<RunState>,
    tls: bool,
) {
    let _ = stream.set_nodelay(true);
    let counted = worker.clone();
    let _open = OpenConn::new(&counted.traffic);
    let ip = peer.ip().to_canonical();
    let stream = if tls {
        // The certificate of the config current now; the handshake gets the head's time limit.
        let snap = worker.snapshot();
        let Some(acceptor) = snap.tls.clone() else {
            return;
        };
        let limit = snap.cfg.client_header_timeout;
        drop(snap);
        match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                let cert = crate::tls::client_cert(&s);
                return crate::http2::serve(worker, s, ip, state, cert).await;
            }
            Ok(Ok(s)) => {
                let cert = crate::tls::client_cert(&s);
                return serve_stream(
                    worker,
                    crate::tls::ClientStream::Tls(Box::new(s)),
                    ip,
                    state,
                    cert,
                )
                .await;
            }
            Ok(Err(e)) => {
                log::debug!("TLS handshake with {ip} failed: {e}");
                worker
                    .traffic
                    .tls_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Err(_) => {
                log::debug!("TLS handshake with {ip} timed out after {limit:?}");
                worker
                    .traffic
                    .tls_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    } else {
        crate::tls::ClientStream::Plain(stream)
    };
    serve_stream(worker, stream, ip, state, None).await;
}

/// Serves requests from `stream` (a client connection, or one bridged HTTP/2 stream) from the
/// address `ip` until it closes or the balancer stops.
pub(crate) async fn serve_stream(
    worker: Rc<Worker>,
    stream: crate::tls::ClientStream,
    ip: IpAddr,
    mut state: watch::Receiver<RunState>,
    client_cert: Option<std::sync::Arc<crate::tls::ClientCert>>,
) {
    let mut c = Conn {
        stream,
        rbuf: BytesMut::with_capacity(READ_BUFFER),
        wbuf: Vec::with_capacity(4096),
        head: Vec::with_capacity(1024),
        wire: Vec::with_capacity(1024),
        body: Vec::new(),
        key: Vec::new(),
        limit_key: Vec::new(),
        conn_key: Vec::new(),
        gzip_ok: false,
        redirect: (0, Vec::new()),
        ctimer: LazyTimer::new(),
        timeouts: ClientTimeouts::of(&worker.snapshot().cfg),
        utimer: LazyTimer::new(),
        ip,
        ip_text: ip.to_string(),
        client: ip,
        client_text: String::new(),
        log: crate::access_log::Entry::default(),
        requests: 0,
        request_id: Vec::new(),
        page_headers: Vec::new(),
        page_add: None,
        file: crate::files::FileReq::default(),
        head_req: false,
        host: Vec::new(),
        https: false,
        cache: crate::cache::CacheReq::default(),
        client_cert,
        auth: (None, Vec::new()),
    };
    let mut stop = pin!(stop_requested(&mut state));
    loop {
        let next = one_request(&worker, &mut c, stop.as_mut()).await;
        // An idle connection must not keep an old config (and its log file) alive.
        c.page_add = None;
        if c.log.on {
            let who = if c.client == c.ip {
                &c.ip_text
            } else {
                &c.client_text
            };
            worker.log.record(who, &c.log);
        }
        if next == Next::Close || worker.stopping.get() {
            break;
        }
        if c.body.capacity() > KEEP_BUFFER {
            c.body = Vec::new();
        }
        if c.wbuf.capacity() > KEEP_BUFFER {
            c.wbuf = Vec::with_capacity(4096);
        }
    }
    if c.stream.is_tls() {
        // TLS: say `close_notify` (the client can tell an end from a cut), briefly.
        use tokio::io::AsyncWriteExt as _;
        let _ = tokio::time::timeout(Duration::from_secs(1), c.stream.shutdown()).await;
    }
}

/// Counts a client connection as accepted and, while it lives, active.
struct OpenConn<'a>(&'a crate::server::Traffic);

impl<'a> OpenConn<'a> {
    fn new(t: &'a crate::server::Traffic) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        t.accepted.fetch_add(1, Relaxed);
        t.active.fetch_add(1, Relaxed);
        Self(t)
    }
}

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies what the access log shows of a request: its line, `Referer` and `User-Agent`.
fn note_request(log: &mut crate::access_log::Entry, v: &request::View<'_>, h2: bool) {
    use crate::access_log::escape_into;
    escape_into(&mut log.line, v.method.as_bytes());
    log.line.push(b' ');
    escape_into(&mut log.line, v.path_and_query.as_bytes());
    log.line.extend_from_slice(if h2 {
        b" HTTP/2.0"
    } else if v.minor == 0 {
        b" HTTP/1.0"
    } else {
        b" HTTP/1.1"
    });
    if let Some(r) = v.header("referer") {
        escape_into(&mut log.referer, r);
    }
    if let Some(a) = v.header("user-agent") {
        escape_into(&mut log.agent, a);
    }
}

/// Notes the first line of `raw` (up to its line feed, without the carriage return) as the
/// access log's request line, escaped and cut like every field.
fn note_raw_line(log: &mut crate::access_log::Entry, raw: &[u8]) {
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    crate::access_log::escape_into(&mut log.line, line);
}

/// Notes the request id in the access log and puts it and the `add_header_always` headers in
/// `page_headers`, for the pages the balancer answers with itself.
fn own_page_headers(snap: &std::sync::Arc<crate::upstream::Snapshot>, c: &mut Conn) {
    if let Some(name) = &snap.request_id {
        if c.log.on {
            crate::access_log::escape_into(&mut c.log.request_id, &c.request_id);
        }
        crate::headers::put(&mut c.page_headers, name.as_bytes(), &c.request_id);
    }
    // nginx `always`: the pages the balancer makes itself get the added headers too; and
    // `error_pages` are theirs.
    if (snap.cfg.add_header_always && !snap.add_headers.is_empty()) || !snap.error_pages.is_empty()
    {
        c.page_add = Some(snap.clone());
    }
}

/// `PURGE <path>`: removes the kept answers for its key from the cache, for the clients of
/// `proxy_cache_purge_allow` (others get 403); 200 with `{"purged": n}`, 404 when nothing was
/// kept.
async fn purge(c: &mut Conn, snap: &crate::upstream::Snapshot, req: &request::Request) -> Next {
    let close = !req.keep_alive || req.framing != Framing::None;
    let Some(cache) = &snap.cache else {
        return c.page(StatusCode::NOT_FOUND, close).await;
    };
    if !cache.purge_allow.iter().any(|n| n.contains(c.client)) {
        return c.page(StatusCode::FORBIDDEN, close).await;
    }
    let n = cache.store.purge(&c.cache.key, c.cache.purge_prefix);
    let status = if n > 0 {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let body = format!("{{\"purged\":{n}}}\n");
    c.wbuf.clear();
    crate::pages::status_line(&mut c.wbuf, status, std::time::SystemTime::now());
    c.wbuf
        .extend_from_slice(b"Content-Type: application/json\r\nCache-Control: no-store\r\n");
    crate::headers::put_content_length(&mut c.wbuf, body.len() as u64);
    if close {
        c.wbuf.extend_from_slice(b"Connection: close\r\n");
    }
    c.wbuf.extend_from_slice(b"\r\n");
    c.wbuf.extend_from_slice(body.as_bytes());
    c.send_page(status, body.len(), close).await
}

/// Reads one request head (waiting for it at most the keep-alive time-out, or until a stop is
/// requested while nothing of it has arrived) and serves the request.
async fn one_request(
    worker: &Worker,
    c: &mut Conn,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    c.log.reset(worker.log.enabled());
    c.request_id.clear();
    c.page_headers.clear();
    c.page_add = None;
    c.redirect.0 = 0;
    c.file.loc = None;
    c.head_req = false;
    c.client = c.ip;
    // The config is taken when the request's first bytes are at hand, not before the idle wait,
    // so a reload applies to the next request on a kept-alive connection too. Until then the
    // previous request's time limits apply.
    let mut snap = None;
    // When the first bytes of this head arrived: the whole head gets `client_header_timeout`.
    let mut head_started = None;
    // Set when the path cannot be normalized (`..` above the root, a bad escape): 400.
    let mut bad_uri: Option<crate::uri::Invalid> = None;
    let parsed = loop {
        if !c.rbuf.is_empty() {
            let snap = snap.get_or_insert_with(|| {
                let s = worker.snapshot();
                c.timeouts = ClientTimeouts::of(&s.cfg);
                c.log.on = worker.log.enabled();
                c.log.with_request_id = s.request_id.is_some();
                s
            });
            c.log.start();
            c.head.clear();
            let (key, limit_key, conn_key, log, redirect, gzip_ok, file, host, https, cache, auth) = (
                &mut c.key,
                &mut c.limit_key,
                &mut c.conn_key,
                &mut c.log,
                &mut c.redirect,
                &mut c.gzip_ok,
                &mut c.file,
                &mut c.host,
                &mut c.https,
                &mut c.cache,
                &mut c.auth,
            );
            let (tls, tls_port) = (c.stream.is_tls(), worker.shared.tls_port);
            let h2 = c.stream.is_h2();
            let bad_uri = &mut bad_uri;
            let inspect = |v: &request::View<'_>| {
                if log.on {
                    note_request(log, v, h2);
                }
                // `deny` and the pools see the path as the upstream will resolve it.
                let path = match crate::uri::normalize(v.path()) {
                    Ok(p) => p,
                    Err(why) => {
                        *bad_uri = Some(why);
                        return None;
                    }
                };
                redirect.0 = if let Some(status) = (!snap.host_redirects.is_empty())
                    .then(|| {
                        snap.host_redirects.find(
                            v.header("host"),
                            v.path_and_query,
                            &mut redirect.1,
                        )
                    })
                    .flatten()
                {
                    status
                } else if snap.redirects.is_empty() {
                    0
                } else {
                    let req = crate::redirect::RequestVars {
                        host: v.header("host"),
                        tls,
                    };
                    // A rule naming `$host` with no usable `Host`: refused (403), not sent on.
                    snap.redirects
                        .find(v.path(), v.query(), req, &mut redirect.1)
                        .ok()?
                        .unwrap_or(0)
                };
                if redirect.0 == 0
                    && snap.cfg.ssl_redirect
                    && !tls
                    && snap.cfg.status_path.as_deref() != Some(v.path())
                {
                    // A `Host` that names no plain host gets no redirect, and no plain answer.
                    redirect.0 = crate::redirect::to_https(
                        v.header("host"),
                        tls_port,
                        v.method,
                        v.path_and_query,
                        &mut redirect.1,
                    )?;
                }
                if !snap.deny.is_empty() && snap.deny.is_match(&path) {
                    return None;
                }
                auth.0 = None;
                if !snap.auth.is_empty() {
                    auth.0 = snap.auth.find(&path);
                    auth.1.clear();
                    if let (Some(_), Some(v)) = (auth.0, v.header("authorization")) {
                        auth.1.extend_from_slice(v);
                    }
                }
                if !snap.files.is_empty() {
                    if let Some(i) = snap.files.find(&path) {
                        file.note(i, &path, v);
                    }
                }
                *https = v.https;
                if snap.relocate.uses_host || snap.cookies.uses_host {
                    host.clear();
                    if let Some(name) = v.header("host").and_then(crate::redirect::host_name) {
                        host.extend_from_slice(name);
                    }
                }
                // The `Host` is looked at only when there are pools to choose from.
                let pool = if snap.pools.len() > 1 {
                    snap.pool_for(v.header("host").and_then(crate::redirect::host_name), &path)
                } else {
                    0
                };
                match &snap.pools[pool].hash_key {
                    Some(k) => k.eval(v, v.client, key),
                    None => key.clear(),
                }
                cache.on = false;
                cache.bypass = false;
                cache.purge = false;
                cache.range = false;
                cache.status = "";
                if let Some(policy) = snap.cache.as_ref().filter(|p| !p.purge_allow.is_empty()) {
                    if v.method == "PURGE" {
                        policy.key_of(v, &mut cache.key);
                        cache.purge_prefix = cache.key.last() == Some(&b'*');
                        if cache.purge_prefix {
                            cache.key.pop();
                        }
                        cache.purge = true;
                    }
                }
                if let (Some(policy), true) = (&snap.cache, snap.pools[pool].cache) {
                    cache.on = policy.admits(v, &snap.cfg.sticky_cookie, cache);
                    cache.bypass = !cache.on && (v.method == "GET" || v.method == "HEAD");
                }
                if let Some(k) = snap.limit.as_ref().and_then(|l| l.key.as_ref()) {
                    k.eval(v, v.client, limit_key);
                }
                if let Some(k) = snap.conn_limit.as_ref().and_then(|l| l.key.as_ref()) {
                    k.eval(v, v.client, conn_key);
                }
                *gzip_ok = snap.gzip.is_some()
                    && v.header("accept-encoding")
                        .is_some_and(crate::gzip::accepts);
                // A route binds only to an upstream of the request's pool (a session of the
                // app pool says nothing about where static files come from).
                let bound = crate::sticky::route(v.cookies(), &snap.cfg.sticky_cookie)
                    .or_else(|| crate::sticky::url_route(v.path(), &snap.cfg.sticky_cookie))
                    .and_then(|r| snap.routes.get(r).copied())
                    .filter(|&i| snap.upstreams[i].pool == pool);
                Some((pool, bound))
            };
            let peer = request::Peer {
                ip: c.ip,
                text: &c.ip_text,
                real_ip: snap.real_ip.as_ref(),
                set: &snap.set_headers,
                tls: c.stream.is_tls(),
                client_cert: c.client_cert.as_deref(),
            };
            let rid = snap
                .request_id
                .as_deref()
                .map(|name| (name, &mut c.request_id));
            let outcome = request::parse(&c.rbuf, &peer, rid, &mut c.head, inspect);
            if c.log.on
                && c.log.line.is_empty()
                && !matches!(outcome, Ok(_) | Err(HeadError::Partial))
            {
                // Refused before its line was noted: log what the client sent as its first
                // line, as nginx does for a bad request.
                note_raw_line(&mut c.log, &c.rbuf);
            }
            let refused = !matches!(outcome, Ok(_) | Err(HeadError::Partial));
            if refused {
                // Refused heads get the request id and the `add_header_always` headers too; a
                // head refused before its id was read gets a new one.
                if snap.request_id.is_some() && c.request_id.is_empty() {
                    crate::h1::request::new_request_id(&mut c.request_id);
                }
                own_page_headers(snap, c);
            }
            match outcome {
                Ok(parsed) => break parsed,
                Err(HeadError::Partial) => {}
                Err(HeadError::TooLarge) => {
                    return c
                        .page(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, true)
                        .await
                }
                Err(HeadError::UriTooLong) => return c.page(StatusCode::URI_TOO_LONG, true).await,
                Err(HeadError::Bad(why)) => {
                    log::debug!("bad request from {}: {why}", c.ip);
                    return c.page(StatusCode::BAD_REQUEST, true).await;
                }
                Err(HeadError::NotAllowed) => {
                    return c.page(StatusCode::METHOD_NOT_ALLOWED, true).await
                }
            }
        }
        let idle = c.rbuf.is_empty();
        let limit = if idle {
            c.timeouts.keepalive
        } else {
            let started = *head_started.get_or_insert_with(tokio::time::Instant::now);
            c.timeouts.header.saturating_sub(started.elapsed())
        };
        let (stream, rbuf) = (&mut c.stream, &mut c.rbuf);
        let read = poll_fn(|cx| {
            if let Poll::Ready(r) = io::poll_read(stream, rbuf, cx) {
                return Poll::Ready(Some(r));
            }
            if idle && stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        });
        match io::within(&mut c.ctimer, limit, read).await {
            Ok(Some(Ok(n))) if n > 0 => {}
            _ => return Next::Close,
        }
    };
    let Some(snap) = snap else {
        return Next::Close; // not reached: a head was parsed, so the config was taken
    };
    let (mut req, verdict) = parsed;
    c.head_req = req.head_method;
    worker
        .traffic
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if req.client != c.ip {
        c.client = req.client;
        c.client_text.clear();
        let _ = write!(c.client_text, "{}", req.client);
    }
    own_page_headers(&snap, c);
    c.rbuf.advance(req.head_len);
    c.requests = c.requests.saturating_add(1);
    let most = snap.cfg.client_keepalive_requests;
    if most > 0 && c.requests >= most {
        // nginx's `keepalive_requests`: this answer says `Connection: close` and is the last.
        req.keep_alive = false;
    }
    if let Some(why) = bad_uri {
        log::debug!("bad request from {}: {why}", c.ip);
        return c.page(StatusCode::BAD_REQUEST, true).await;
    }
    if c.redirect.0 != 0 {
        // nginx's rewrite phase comes before its access checks and limits.
        let status = StatusCode::from_u16(c.redirect.0).unwrap_or(StatusCode::FOUND);
        crate::headers::put(&mut c.page_headers, b"Location", &c.redirect.1);
        return c
            .page(status, !req.keep_alive || req.framing != Framing::None)
            .await;
    }
    let verdict = verdict.filter(|_| snap.access.is_empty() || snap.access.allows(c.client));
    let Some(target) = verdict else {
        // Denied (`deny` path, or `access` rule). A body that was not read makes the
        // connection unusable.
        return c
            .page(
                StatusCode::FORBIDDEN,
                !req.keep_alive || req.framing != Framing::None,
            )
            .await;
    };
    if c.cache.purge {
        return purge(c, &snap, &req).await;
    }
    if let Some(path) = &snap.cfg.status_path {
        if req.framing == Framing::None && crate::status::is_status_request(&c.head, path) {
            if !snap.status_allow.iter().any(|n| n.contains(c.client)) {
                return c.page(StatusCode::FORBIDDEN, !req.keep_alive).await;
            }
            c.wbuf.clear();
            let body =
                crate::status::respond(&mut c.wbuf, &snap, &req, &c.head, worker.shared.traffic());
            c.answered(StatusCode::OK, body);
            return if c.flush().await && req.keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
    }
    // Counted until this function returns: the response (or tunnel) has ended by then.
    let _in_flight = match &snap.conn_limit {
        None => None,
        Some(limit) => match limit.admit(c.client, &c.conn_key) {
            crate::connlimit::Admit::Pass(held) => held,
            crate::connlimit::Admit::Reject => {
                return c.refuse(&snap, &req, limit.status).await;
            }
        },
    };
    if let Some(limit) = &snap.limit {
        match limit.check(c.client, &c.limit_key) {
            crate::ratelimit::Verdict::Pass => {}
            crate::ratelimit::Verdict::Delay(wait) => tokio::time::sleep(wait).await,
            crate::ratelimit::Verdict::Reject => {
                return c.refuse(&snap, &req, limit.status).await;
            }
        }
    }
    if let Some(i) = c.auth.0 {
        // nginx's access phase: after the address rules and the limits (so `limit_req` slows a
        // password guesser down first), before anything is answered or passed on.
        let close = !req.keep_alive || req.framing != Framing::None;
        match snap.auth.check(i, c.client, &c.auth.1, &worker.auth).await {
            crate::auth::Verdict::Pass(user) => {
                if let (true, Some(user)) = (c.log.on, user) {
                    crate::access_log::escape_into(&mut c.log.user, user.as_bytes());
                }
            }
            crate::auth::Verdict::Forbidden => {
                return c.page(StatusCode::FORBIDDEN, close).await;
            }
            crate::auth::Verdict::Unauthorized => {
                crate::headers::put(
                    &mut c.page_headers,
                    b"WWW-Authenticate",
                    snap.auth.challenge(i),
                );
                return c.page(StatusCode::UNAUTHORIZED, close).await;
            }
        }
    }
    if c.file.loc.is_some() {
        // A `[[balancer.static]]` location: answered from disk (a missing file with
        // `try_upstream` goes on to the upstreams).
        if let Some(next) = crate::files::serve(c, &snap, &worker.files, &req).await {
            return next;
        }
    }
    let pool = &snap.pools[target.0];
    if let Some(prefix) = &pool.strip_prefix {
        crate::h1::request::strip_path_prefix(&mut c.head, prefix);
    }
    if let Some(prefix) = &pool.upstream_prefix {
        crate::h1::request::add_path_prefix(&mut c.head, prefix);
    }
    let (buffer_all, temp) = (snap.cfg.proxy_request_buffering, &snap.buffering.body_dir);
    match body::intake(c, &req, pool.max_body, buffer_all, temp).await {
        Intake::Body(mut b) => {
            let keep = worker.proxy(c, &snap, &req, target, &mut b).await;
            if keep {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        Intake::TooLarge => c.page(StatusCode::PAYLOAD_TOO_LARGE, true).await,
        Intake::Bad => c.page(StatusCode::BAD_REQUEST, true).await,
        Intake::Gone => Next::Close,
        Intake::Stalled => c.page(StatusCode::REQUEST_TIMEOUT, true).await,
    }
}
