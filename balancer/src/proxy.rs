//! The request path: checks, upstream choice, attempts with retries, and the response.
//!
//! Per request: load the config snapshot (one atomic load), answer 403 for `deny` paths, read the
//! start of the body (413 for oversized bodies before any upstream is contacted), rewrite the
//! headers, find the session route, then try upstreams until one answers or the retry policy says
//! stop. Each attempt takes a pooled keep-alive connection (or opens one), counts itself in the
//! upstream's `active` counter, and reports failures to the health owner without waiting.

use std::future::Future as _;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Incoming};

use crate::body::{self, outcome, Prepared, ReqBody, RespBody, StreamState, UpstreamBody};
use crate::choose::{choose, no_upstream_status, Tried};
use crate::error::AttemptError;
use crate::pages;
use crate::pool::{Pool, Upconn};
use crate::selection::SelectCtx;
use crate::server::Shared;
use crate::upstream::{now_millis, ActiveGuard, LazyNow, Snapshot, Upstream};

/// One worker's view: the shared state and its own connection pool.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub pool: Rc<Pool>,
    pub generation: std::cell::Cell<u64>,
}

/// The client of a connection.
pub(crate) struct Client {
    pub ip: std::net::IpAddr,
    pub ip_header: HeaderValue,
}

fn idempotent(m: &Method) -> bool {
    !matches!(m.as_str(), "POST" | "PATCH" | "LOCK")
}

impl Worker {
    /// Answers one client request.
    pub async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<RespBody> {
        let snap = self.shared.snapshot.load_full();
        if snap.generation != self.generation.get() {
            self.generation.set(snap.generation);
            self.pool
                .configure(snap.cfg.keepalive, snap.cfg.keepalive_timeout);
        }
        let (mut parts, incoming) = req.into_parts();
        if !snap.deny.is_empty() && snap.deny.is_match(parts.uri.path()) {
            return pages::plain(StatusCode::FORBIDDEN);
        }
        // Boxed: reading a body is the rare case, and keeping its state out of this future keeps
        // the per-request future small (it is moved into hyper's dispatcher on every request).
        let prepared = if incoming.is_end_stream() {
            Prepared::Body(ReqBody::Full(None))
        } else {
            Box::pin(body::prepare(incoming, snap.cfg.client_max_body_size)).await
        };
        let body = match prepared {
            Prepared::Body(b) => b,
            Prepared::TooLarge(rest) => {
                if let Some(rest) = rest {
                    body::drain(rest).await;
                }
                let mut resp = pages::plain(StatusCode::PAYLOAD_TOO_LARGE);
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
            Prepared::ClientError => return pages::plain(StatusCode::BAD_REQUEST),
        };
        crate::headers::to_upstream(&mut parts.headers, &client.ip_header);
        if parts.uri.scheme().is_some() {
            // absolute-form request target: upstreams get origin-form.
            let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        parts.version = http::Version::HTTP_11;
        let bound = crate::sticky::route(&parts.headers, &snap.cfg.sticky_cookie)
            .and_then(|r| snap.routes.get(r).copied());
        let key = snap
            .hash_key
            .as_ref()
            .map(|k| k.eval(&parts, client.ip))
            .unwrap_or_default();
        let ctx = SelectCtx {
            client: client.ip,
            key: &key,
        };
        self.attempts(&snap, parts, body, bound, &ctx).await
    }

    async fn attempts(
        &self,
        snap: &Arc<Snapshot>,
        parts: http::request::Parts,
        body: ReqBody,
        bound: Option<usize>,
        ctx: &SelectCtx<'_>,
    ) -> Response<RespBody> {
        let policy = snap.retry;
        let max_tries = if policy.tries == 0 {
            snap.upstreams.len().max(1)
        } else {
            policy.tries as usize
        };
        let deadline = (!policy.timeout.is_zero()).then(|| Instant::now() + policy.timeout);
        let may_resend = idempotent(&parts.method) || policy.non_idempotent;
        let stream_state = body.stream_state();
        let mut tried = Tried::default();
        let mut next = Some((parts, body));
        let mut last_status = None;
        let mut stale_retry_used = false;
        while let Some((parts, body)) = next.take() {
            let mut now = LazyNow::default();
            let idx = match choose(snap, ctx, tried.as_slice(), bound, &mut now) {
                Some(i) => i,
                None => break,
            };
            let up = &snap.upstreams[idx];
            tried.push(idx);
            let spare = body.try_clone().map(|b| (clone_parts(&parts), b));
            let out_of_tries =
                tried.len() >= max_tries || deadline.is_some_and(|d| Instant::now() >= d);
            let guard = ActiveGuard::new(up);
            let mut req = Request::from_parts(parts, body);
            if !req.headers().contains_key(http::header::HOST) {
                req.headers_mut()
                    .insert(http::header::HOST, up.authority.clone());
            }
            match self.exchange(snap, up, req, stream_state.as_deref()).await {
                Ok((resp, conn)) => {
                    let status = resp.status().as_u16();
                    if policy.retries_status(status) {
                        self.shared.report_failure(up);
                        if may_resend && !out_of_tries && spare.is_some() {
                            log::warn!(
                                "upstream {} answered {status}, trying the next one",
                                up.addr
                            );
                            next = spare;
                            continue;
                        }
                    }
                    return self.respond(resp, conn, guard, snap);
                }
                Err(Failure::TooLarge) => return pages::plain(StatusCode::PAYLOAD_TOO_LARGE),
                Err(Failure::Client) => return pages::plain(StatusCode::BAD_REQUEST),
                Err(Failure::Stale(e))
                    if !stale_retry_used && spare.is_some() && idempotent(&req_method(&spare)) =>
                {
                    // A kept-alive connection the upstream closed just as we reused it: try a
                    // fresh connection to the same upstream once, without counting a failure.
                    log::debug!("{e}; retrying on a new connection");
                    stale_retry_used = true;
                    tried.pop();
                    next = spare;
                }
                Err(Failure::Stale(e)) => {
                    // A kept-alive connection closed under us says nothing about the upstream.
                    log::warn!("{e}");
                    last_status = Some(e.status());
                    if !e.maybe_sent() || may_resend {
                        next = spare.filter(|_| !out_of_tries);
                    }
                }
                Err(Failure::Upstream(e)) => {
                    log::warn!("{e}");
                    self.shared.report_failure(up);
                    last_status = Some(e.status());
                    let wanted = if e.is_timeout() {
                        policy.on_timeout
                    } else {
                        policy.on_error
                    };
                    if wanted && !out_of_tries && (!e.maybe_sent() || may_resend) {
                        next = spare;
                    }
                }
            }
        }
        let status = last_status.unwrap_or_else(|| no_upstream_status(snap, tried.as_slice()));
        pages::error(status, snap.error_page.as_ref())
    }

    /// One exchange with `up`: a pooled or new connection, the request, the response head.
    async fn exchange(
        &self,
        snap: &Snapshot,
        up: &Upstream,
        req: Request<ReqBody>,
        stream: Option<&StreamState>,
    ) -> Result<(Response<Incoming>, Upconn), Failure> {
        let mut req = req;
        loop {
            let (mut conn, reused) = match self.pool.checkout(up.addr) {
                Some(conn) => (conn, true),
                None => (
                    Box::pin(Pool::connect(up.addr, snap.cfg.proxy_connect_timeout))
                        .await
                        .map_err(Failure::Upstream)?,
                    false,
                ),
            };
            if reused && !conn.ready().await {
                continue;
            }
            let result = {
                let mut send = pin!(conn.tx.try_send_request(req));
                // The connection is driven from this task while the request goes out.
                let driven = std::future::poll_fn(|cx| {
                    conn.drive(cx);
                    send.as_mut().poll(cx)
                });
                with_timeouts(pin!(driven), up, snap, stream).await?
            };
            match result {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => {
                    let back = e.take_message();
                    let sent = back.is_none();
                    if let (Some(back), true) = (back, reused) {
                        // Never written: the connection closed while idle. Use another one.
                        req = back;
                        continue;
                    }
                    if let Some(st) = stream {
                        match st.outcome.load(Ordering::Relaxed) {
                            outcome::TOO_LARGE => return Err(Failure::TooLarge),
                            outcome::CLIENT_ERROR => return Err(Failure::Client),
                            _ => {}
                        }
                    }
                    let source = e.into_error();
                    let stale = reused && (source.is_incomplete_message() || source.is_canceled());
                    let err = AttemptError::Exchange {
                        upstream: up.addr,
                        sent,
                        source,
                    };
                    return Err(if stale {
                        Failure::Stale(err)
                    } else {
                        Failure::Upstream(err)
                    });
                }
            }
        }
    }

    fn respond(
        &self,
        resp: Response<Incoming>,
        conn: Upconn,
        guard: ActiveGuard,
        snap: &Snapshot,
    ) -> Response<RespBody> {
        let (mut parts, incoming) = resp.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        let body = UpstreamBody {
            incoming,
            done: false,
            conn: Some(conn),
            pool: (snap.cfg.keepalive > 0).then(|| self.pool.clone()),
            guard: Some(guard),
            read_timeout: snap.cfg.proxy_read_timeout,
            idle: None,
        };
        Response::from_parts(parts, RespBody::Upstream(body))
    }
}

/// How an exchange failed, from the proxy's point of view.
enum Failure {
    /// The upstream (or the way to it) failed.
    Upstream(AttemptError),
    /// A reused keep-alive connection broke before any answer.
    Stale(AttemptError),
    /// The client's body grew past `client_max_body_size` while streaming.
    TooLarge,
    /// The client failed while sending its body.
    Client,
}

fn req_method(spare: &Option<(http::request::Parts, ReqBody)>) -> Method {
    spare
        .as_ref()
        .map_or(Method::POST, |(p, _)| p.method.clone())
}

type TrySend = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ReqBody>>>;

/// Waits for the response head: `proxy_read_timeout` of silence is a time-out, except while a
/// streamed request body still moves (then `proxy_send_timeout` of no progress is one).
async fn with_timeouts(
    mut fut: std::pin::Pin<&mut (impl std::future::Future<Output = TrySend> + ?Sized)>,
    up: &Upstream,
    snap: &Snapshot,
    stream: Option<&StreamState>,
) -> Result<TrySend, Failure> {
    let read = snap.cfg.proxy_read_timeout;
    let send = snap.cfg.proxy_send_timeout;
    let mut sleep = pin!(tokio::time::sleep(read));
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return Ok(r),
            () = &mut sleep => {
                if let Some(st) = stream {
                    match st.outcome.load(Ordering::Relaxed) {
                        outcome::STREAMING => {
                            let idle = Duration::from_millis(now_millis().saturating_sub(st.progress.load(Ordering::Relaxed)));
                            if idle >= send {
                                return Err(Failure::Upstream(AttemptError::Timeout { upstream: up.addr, phase: "sending the request" }));
                            }
                            sleep.as_mut().reset(tokio::time::Instant::now() + (send - idle).min(read));
                            continue;
                        }
                        outcome::TOO_LARGE => return Err(Failure::TooLarge),
                        outcome::CLIENT_ERROR => return Err(Failure::Client),
                        _ => {}
                    }
                }
                return Err(Failure::Upstream(AttemptError::Timeout { upstream: up.addr, phase: "reading the response head" }));
            }
        }
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}
