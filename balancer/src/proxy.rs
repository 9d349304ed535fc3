//! The request path after the head and body intake: upstream choice, attempts with retries,
//! the exchange on a pooled connection, and the response.
//!
//! Per request: find the session route (done while parsing), then try upstreams until one
//! answers or the retry policy says stop. Each attempt takes a pooled keep-alive connection (or
//! opens one), counts itself in the upstream's `active` counter, writes the rewritten head (with
//! a buffered body, in one write), streams a large body, and reads the response head; failures
//! are reported to the health owner without waiting. A reused connection that fails before any
//! byte of the answer was stale: the request is tried once more on a fresh connection.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf as _;
use http::StatusCode;

use crate::body::{self, Forwarded, ReqBody, StreamError, ToClient};
use crate::choose::{choose, no_upstream_status, Tried};
use crate::conn::{Conn, Next};
use crate::error::AttemptError;
use crate::h1::request::{Framing, Request};
use crate::h1::response::{self, Body, HeadError, Response};
use crate::headers;
use crate::io;
use crate::pages;
use crate::pool::{Pool, UpConn};
use crate::selection::SelectCtx;
use crate::server::Shared;
use crate::upstream::{ActiveGuard, LazyNow, Snapshot, Upstream};

/// One worker's view: the shared state and its own connection pool.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    /// This worker's traffic counters (see `Shared::traffic`).
    pub traffic: Arc<crate::server::Traffic>,
    pub pool: Rc<Pool>,
    pub generation: Cell<u64>,
    /// Set once a stop was requested: connections close after their current request.
    pub stopping: Cell<bool>,
    /// This worker's access log buffer.
    pub log: crate::access_log::WorkerLog,
    /// This worker's cache of `[[balancer.static]]` look-ups.
    pub files: crate::files::FileCache,
    /// The `auth_basic` credentials this worker accepted.
    pub auth: crate::auth::Remembered,
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
    /// The client closed its connection while the upstream had not answered yet (nginx: 499,
    /// `proxy_ignore_client_abort off`): the upstream connection is dropped, nothing is retried.
    ClientGone,
}

impl Worker {
    /// The current config snapshot (applying reloaded pool settings once per generation).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snap = self.shared.snapshot.load_full();
        if snap.generation != self.generation.get() {
            self.generation.set(snap.generation);
            self.pool.configure(
                snap.cfg.keepalive,
                snap.cfg.keepalive_timeout,
                snap.cfg.keepalive_requests,
            );
            self.log.set_sink(snap.access_log.clone());
            self.files.clear();
            self.auth.clear();
        }
        snap
    }

    /// Passes one request on and answers the client; true if the connection stays open.
    pub async fn proxy(
        &self,
        c: &mut Conn,
        snap: &Arc<Snapshot>,
        req: &Request,
        (pool, bound): (usize, Option<usize>),
        body: &mut ReqBody,
    ) -> bool {
        let key = std::mem::take(&mut c.key);
        let keep = match &snap.cache {
            Some(cache) if c.cache.on || c.cache.bypass => {
                self.through_cache(c, snap, cache, req, (pool, bound), body, &key)
                    .await
            }
            _ => self.attempts(c, snap, req, (pool, bound), body, &key).await,
        };
        c.key = key;
        keep
    }

    /// A request of a caching pool: answered from the cache, or passed on and its answer kept
    /// (see `crate::cache`).
    #[allow(clippy::too_many_arguments)]
    async fn through_cache(
        &self,
        c: &mut Conn,
        snap: &Arc<Snapshot>,
        cache: &crate::cache::Policy,
        req: &Request,
        target: (usize, Option<usize>),
        body: &mut ReqBody,
        key: &[u8],
    ) -> bool {
        use crate::cache::Found;
        c.cache.stale = None;
        c.cache.fill = false;
        c.cache.cond.clear();
        c.cache.revalidating = None;
        c.cache.converted = false;
        if !c.cache.on {
            c.cache.status = "BYPASS";
            return self.attempts(c, snap, req, target, body, key).await;
        }
        let stats = &cache.store.stats;
        if !c.cache.read {
            // `proxy_cache_bypass`: from the upstream, and kept (unless `proxy_no_cache`),
            // which refreshes the copy.
            c.cache.status = "BYPASS";
            // A range request fills nothing (its answer is a part).
            c.cache.fill = !req.head_method && c.cache.store && !c.cache.range;
            if c.cache.fill {
                crate::cache::take_conditionals(&mut c.head, &mut c.cache.cond);
            }
            let keep = self.attempts(c, snap, req, target, body, key).await;
            return keep;
        }
        let mut found = cache.lookup(&c.cache.key, &c.head);
        if c.cache.range {
            // A part of a fresh copy, or the upstream (which gets the request as it came).
            if let Found::Fresh(e) = found {
                if let Some(keep) = self.answer_cached(c, snap, req, body, &e, "HIT").await {
                    stats.hits.fetch_add(1, Relaxed);
                    return keep;
                }
            }
            c.cache.status = "MISS";
            stats.misses.fetch_add(1, Relaxed);
            return self.attempts(c, snap, req, target, body, key).await;
        }
        let mut filling = None;
        // `proxy_cache_min_uses`: a key without a copy is kept from its n-th request on.
        let wanted = !matches!(found, Found::None) || cache.used_enough(&c.cache.key);
        if !matches!(found, Found::Fresh(_) | Found::Pass(_)) {
            // A HEAD fills only as a GET, else it does not hold the key's lock either.
            if wanted && (!req.head_method || cache.convert_head) {
                filling = cache.store.try_fill(&c.cache.key);
            }
            // (Not for a request whose answer `proxy_no_cache` keeps out of the cache.)
            if let (Found::Stale(e), true, false, true) = (
                &found,
                cache.background_update,
                req.head_method,
                c.cache.store,
            ) {
                // `proxy_cache_background_update`: this request gets the copy too, and a
                // request of our own refreshes it.
                let e = e.clone();
                if let Some(lock) = filling.take() {
                    self.refresh_later(c, snap, cache, req, target, key, &e, lock);
                    if let Some(keep) = self.answer_cached(c, snap, req, body, &e, "UPDATING").await
                    {
                        stats.updating.fetch_add(1, Relaxed);
                        return keep;
                    }
                }
            }
            if filling.is_none() && cache.store.is_filling(&c.cache.key) {
                // Another request is filling this key.
                let updating = match &found {
                    Found::Stale(e) if cache.stale.while_updating(e) => Some(e.clone()),
                    _ => None,
                };
                if let Some(e) = updating {
                    if let Some(keep) = self.answer_cached(c, snap, req, body, &e, "UPDATING").await
                    {
                        stats.updating.fetch_add(1, Relaxed);
                        return keep;
                    }
                }
                if cache.lock {
                    cache
                        .store
                        .wait_fill(&c.cache.key, cache.lock_timeout)
                        .await;
                    found = cache.lookup(&c.cache.key, &c.head);
                }
            }
        }
        let pass = matches!(found, Found::Pass(_));
        match found {
            Found::Fresh(e) => {
                if let Some(keep) = self.answer_cached(c, snap, req, body, &e, "HIT").await {
                    stats.hits.fetch_add(1, Relaxed);
                    return keep;
                }
                c.cache.status = "MISS";
                stats.misses.fetch_add(1, Relaxed);
            }
            Found::Stale(e) => {
                c.cache.stale = Some(e);
                c.cache.status = "EXPIRED";
                stats.expired.fetch_add(1, Relaxed);
            }
            Found::Pass(stale) => {
                c.cache.stale = stale;
                c.cache.status = "MISS";
                stats.misses.fetch_add(1, Relaxed);
            }
            Found::None => {
                c.cache.status = "MISS";
                stats.misses.fetch_add(1, Relaxed);
            }
        }
        // A GET fills, and a HEAD sent as a GET (a HEAD's answer has no body to keep).
        c.cache.fill = (!req.head_method || cache.convert_head) && !pass && c.cache.store && wanted;
        if c.cache.fill {
            crate::cache::take_conditionals(&mut c.head, &mut c.cache.cond);
            if req.head_method && c.head.starts_with(b"HEAD ") {
                c.head.splice(..4, *b"GET");
                c.cache.converted = true;
            }
            if let Some(e) = c.cache.stale.as_ref().filter(|_| cache.revalidate) {
                if e.put_validators(&mut c.head) {
                    c.cache.revalidating = Some(e.clone());
                }
            }
        }
        c.cache.filling = filling;
        let keep = self.attempts(c, snap, req, target, body, key).await;
        c.cache.stale = None;
        c.cache.filling = None;
        c.cache.revalidating = None;
        keep
    }

    /// Starts the background refresh of expired copy `e` (see `crate::refresh`), which holds
    /// the key's fill lock `lock` until it ends.
    #[allow(clippy::too_many_arguments)]
    fn refresh_later(
        &self,
        c: &Conn,
        snap: &Arc<Snapshot>,
        cache: &crate::cache::Policy,
        req: &Request,
        (pool, _): (usize, Option<usize>),
        key: &[u8],
        e: &Arc<crate::cache::Entry>,
        lock: crate::cache::Filling,
    ) {
        let mut head = c.head.clone();
        let mut conditionals = Vec::new();
        crate::cache::take_conditionals(&mut head, &mut conditionals);
        let revalidating = (cache.revalidate && e.put_validators(&mut head)).then(|| e.clone());
        crate::refresh::start(crate::refresh::Refresh {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
            snap: snap.clone(),
            target: pool,
            client: c.client,
            hash_key: key.to_vec(),
            head,
            has_host: req.has_host,
            key: c.cache.key.clone(),
            req: c.head.clone(),
            revalidating,
            filling: lock,
        });
    }

    /// Answers with a kept answer, as if its upstream had just sent it; `None` when that
    /// upstream is no longer configured (then the request is passed on).
    async fn answer_cached(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        req: &Request,
        body: &ReqBody,
        entry: &crate::cache::Entry,
        status: &'static str,
    ) -> Option<bool> {
        let up = snap
            .upstreams
            .iter()
            .find(|u| u.cfg.address == entry.upstream)?;
        // A client that has this answer already gets a 304 made of it (its conditionals are in
        // `cond` if a fill took them out of the upstream request).
        let asked = if c.cache.cond.is_empty() {
            &c.head
        } else {
            &c.cache.cond
        };
        let mut conn = match entry.not_modified(asked) {
            Some(head) => Pool::memory(&head, up.addr),
            None => match c.cache.range.then(|| entry.ranged(&c.head)).flatten() {
                Some(part) => Pool::memory(&part, up.addr),
                None => Pool::memory(&entry.raw, up.addr),
            },
        };
        c.cache.fill = false;
        c.cache.converted = false;
        let resp = self
            .read_head(c, &mut conn, snap, up, req, false)
            .await
            .ok()?;
        c.cache.status = status;
        self.put_cache_status(c, snap);
        Some(self.respond(c, conn, resp, None, snap, req, body).await)
    }

    /// The `proxy_cache_status_header`, if one is set, into the response head.
    fn put_cache_status(&self, c: &mut Conn, snap: &Snapshot) {
        if let Some(name) = snap.cache.as_ref().and_then(|p| p.status_header.as_ref()) {
            if (c.cache.on || c.cache.bypass) && !c.cache.status.is_empty() {
                headers::put(&mut c.wbuf, name.as_bytes(), c.cache.status.as_bytes());
            }
        }
    }

    /// An upstream connection whose answer was read whole (`body_len` bytes of body left in
    /// its buffer) goes back to the pool, or is closed.
    fn release(&self, conn: UpConn, resp: &Response, body_len: usize) {
        crate::refresh::release(&self.pool, conn, resp, body_len);
    }

    /// The upstream answered a fill's request with the copy's validators with 304: the copy is
    /// refreshed and answers (`REVALIDATED`).
    #[allow(clippy::too_many_arguments)]
    async fn revalidated(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        (conn, resp, guard): (UpConn, Response, ActiveGuard),
        up: &Upstream,
        old: &crate::cache::Entry,
        req: &Request,
        body: &ReqBody,
    ) -> bool {
        self.release(conn, &resp, 0);
        drop(guard);
        c.cache.filling = None;
        let Some(cache) = &snap.cache else {
            return self.error_page(c, snap, req, body, 502).await;
        };
        let entry = cache.refresh(&c.cache.key, old, &c.cache.head, &up.cfg.address, &c.head);
        match self
            .answer_cached(c, snap, req, body, &entry, "REVALIDATED")
            .await
        {
            Some(keep) => keep,
            // Not reached: the refreshed copy names the upstream that just answered.
            None => self.error_page(c, snap, req, body, 502).await,
        }
    }

    /// Reads the rest of a cacheable answer into `conn.rbuf` and keeps it (returned as kept);
    /// see [`crate::refresh::read_kept`].
    async fn keep_answer(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        conn: &mut UpConn,
        resp: &Response,
        up: &Upstream,
    ) -> Option<Arc<crate::cache::Entry>> {
        let cache = snap.cache.as_ref()?;
        let what = (&c.cache.head[..], &c.cache.key[..], &c.head[..]);
        let limit = snap.cfg.proxy_read_timeout;
        crate::refresh::read_kept(cache, conn, resp, what, up, &mut c.utimer, limit).await
    }

    /// After a fill: a `HEAD` sent as a `GET`, and a client whose conditionals were taken out,
    /// are answered from the copy (the head only; a 304 when the client has it). `None`: the
    /// live answer goes to the client as it is.
    #[allow(clippy::too_many_arguments)]
    async fn answer_from_fill(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        (conn, resp): (&mut UpConn, &Response),
        up: &Upstream,
        kept: Option<Arc<crate::cache::Entry>>,
        req: &Request,
        body: &ReqBody,
    ) -> Option<bool> {
        if !c.cache.converted && !c.cache.asked_conditionally() {
            return None;
        }
        let (entry, body_len) = match kept {
            Some(e) => {
                let n = e.body_len();
                (e, Some(n))
            }
            // Not kept: a converted HEAD still gets only the head, and a client that has the
            // answer a 304; the rest of the GET's body is not read (the connection is closed).
            None => {
                let head = bytes::Bytes::copy_from_slice(&c.cache.head);
                let n = head.len();
                let e = crate::cache::Entry::new(
                    head,
                    n,
                    &up.cfg.address,
                    std::time::Duration::ZERO,
                    Vec::new(),
                    &c.head,
                );
                (Arc::new(e), None)
            }
        };
        if !c.cache.converted && entry.not_modified(&c.cache.cond).is_none() {
            return None;
        }
        let conn = std::mem::replace(conn, Pool::memory(b"", up.addr));
        match body_len {
            Some(n) => self.release(conn, resp, n),
            None => drop(conn),
        }
        let status = c.cache.status;
        match self.answer_cached(c, snap, req, body, &entry, status).await {
            Some(keep) => Some(keep),
            None => Some(self.error_page(c, snap, req, body, 502).await),
        }
    }

    /// Answers with the expired copy kept for this request, if there is one (and its upstream
    /// is still configured).
    async fn answer_stale(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        req: &Request,
        body: &ReqBody,
    ) -> Option<bool> {
        let entry = c.cache.stale.take()?;
        let keep = self
            .answer_cached(c, snap, req, body, &entry, "STALE")
            .await?;
        if let Some(cache) = &snap.cache {
            cache.store.stats.stale.fetch_add(1, Relaxed);
        }
        Some(keep)
    }

    async fn attempts(
        &self,
        c: &mut Conn,
        snap: &Arc<Snapshot>,
        req: &Request,
        (pool, bound): (usize, Option<usize>),
        body: &mut ReqBody,
        key: &[u8],
    ) -> bool {
        let ctx = SelectCtx {
            client: c.client,
            key,
        };
        let policy = snap.retry;
        let max_tries = if policy.tries == 0 {
            snap.pools[pool].len.max(1)
        } else {
            policy.tries as usize
        };
        let deadline = (!policy.timeout.is_zero()).then(|| Instant::now() + policy.timeout);
        let may_resend = req.idempotent || policy.non_idempotent;
        let mut tried = Tried::default();
        let mut last_status = None;
        let mut stale_retry_used = false;
        // Whether the body can still be sent: buffered, or streamed but not started.
        let mut replayable = true;
        let mut again = true;
        while again {
            let mut now = LazyNow::default();
            let Some(idx) = choose(snap, pool, &ctx, tried.as_slice(), bound, &mut now) else {
                break;
            };
            let up = &snap.upstreams[idx];
            tried.push(idx);
            let out_of_tries =
                tried.len() >= max_tries || deadline.is_some_and(|d| Instant::now() >= d);
            let guard = ActiveGuard::new(up);
            up.counts.attempts.fetch_add(1, Relaxed);
            let result = self.exchange(c, snap, up, req, body, &mut replayable).await;
            match result {
                Ok((mut conn, resp)) => {
                    c.log.attempt(up.addr, resp.status);
                    if policy.retries_status(resp.status) {
                        up.counts.failures.fetch_add(1, Relaxed);
                        self.shared.report_failure(up);
                        if may_resend && !out_of_tries && replayable {
                            log::warn!(
                                "upstream {} answered {}, trying the next one",
                                up.addr,
                                resp.status
                            );
                            again = true;
                            continue;
                        }
                    }
                    let stale = c.cache.stale.as_deref().zip(snap.cache.as_ref());
                    if stale.is_some_and(|(e, p)| p.stale.for_status(resp.status, e)) {
                        // `proxy_cache_use_stale http_5xx` (or the copy's `stale-if-error`):
                        // the expired copy instead.
                        drop(conn);
                        drop(guard);
                        if let Some(keep) = self.answer_stale(c, snap, req, body).await {
                            return keep;
                        }
                        return self.error_page(c, snap, req, body, resp.status).await;
                    }
                    if snap.cfg.proxy_intercept_errors && matches!(resp.status, 500 | 502..=504) {
                        // nginx `proxy_intercept_errors`: the client gets the error page, not
                        // the upstream's (a stack trace, say). Its body is not read, so its
                        // connection is closed rather than pooled.
                        drop(conn);
                        drop(guard);
                        return self.error_page(c, snap, req, body, resp.status).await;
                    }
                    if resp.status == 304 {
                        if let Some(old) = c.cache.revalidating.take() {
                            return self
                                .revalidated(c, snap, (conn, resp, guard), up, &old, req, body)
                                .await;
                        }
                    }
                    if c.cache.fill {
                        let kept = self.keep_answer(c, snap, &mut conn, &resp, up).await;
                        // Kept or not, the requests waiting for this key may go.
                        c.cache.filling = None;
                        if let Some(keep) = self
                            .answer_from_fill(c, snap, (&mut conn, &resp), up, kept, req, body)
                            .await
                        {
                            drop(guard);
                            return keep;
                        }
                    }
                    self.put_cache_status(c, snap);
                    return self
                        .respond(c, conn, resp, Some(guard), snap, req, body)
                        .await;
                }
                Err(Failure::TooLarge) => {
                    return c.page(StatusCode::PAYLOAD_TOO_LARGE, true).await
                        == crate::conn::Next::KeepAlive
                }
                Err(Failure::Client) => {
                    return c.page(StatusCode::BAD_REQUEST, true).await
                        == crate::conn::Next::KeepAlive
                }
                Err(Failure::ClientGone) => {
                    log::info!(
                        "client {} closed the connection before upstream {} answered (499)",
                        c.ip_text,
                        up.addr
                    );
                    return false;
                }
                Err(Failure::Stale(e)) if !stale_retry_used && replayable && req.idempotent => {
                    // A kept-alive connection the upstream closed just as we reused it: try a
                    // fresh connection to the same upstream once, without counting a failure.
                    log::debug!("{e}; retrying on a new connection");
                    stale_retry_used = true;
                    tried.pop();
                    again = true;
                }
                Err(Failure::Stale(e)) => {
                    // A kept-alive connection closed under us says nothing about the upstream.
                    log::warn!("{e}");
                    c.log.attempt(up.addr, e.status().as_u16());
                    last_status = Some(e.status());
                    again = (!e.maybe_sent() || may_resend) && replayable && !out_of_tries;
                }
                Err(Failure::Upstream(e)) => {
                    log::warn!("{e}");
                    c.log.attempt(up.addr, e.status().as_u16());
                    up.counts.failures.fetch_add(1, Relaxed);
                    self.shared.report_failure(up);
                    last_status = Some(e.status());
                    let wanted = if e.is_timeout() {
                        policy.on_timeout
                    } else {
                        policy.on_error
                    };
                    again =
                        wanted && !out_of_tries && (!e.maybe_sent() || may_resend) && replayable;
                }
            }
        }
        let status =
            last_status.unwrap_or_else(|| no_upstream_status(snap, pool, tried.as_slice()));
        let stale = c.cache.stale.as_deref().zip(snap.cache.as_ref());
        if stale.is_some_and(|(e, p)| p.stale.for_failure(status.as_u16(), e)) {
            // `proxy_cache_use_stale error timeout` (or the copy's `stale-if-error`): the
            // upstreams failed, the copy answers.
            if let Some(keep) = self.answer_stale(c, snap, req, body).await {
                return keep;
            }
        }
        self.error_page(c, snap, req, body, status.as_u16()).await
    }

    /// The error page (`error_page`) with `status`; true if the client connection stays open.
    async fn error_page(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        req: &Request,
        body: &ReqBody,
        status: u16,
    ) -> bool {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let close = !req.keep_alive || !body.complete() || self.stopping.get();
        c.wbuf.clear();
        let n = pages::error(&mut c.wbuf, status, snap.page_for(status.as_u16()), close);
        c.send_page(status, n, close).await == Next::KeepAlive
    }

    /// One exchange with `up`: a pooled or new connection, the request, the response head
    /// (which is left in `c.wbuf`, rewritten for the client).
    async fn exchange(
        &self,
        c: &mut Conn,
        snap: &Snapshot,
        up: &Upstream,
        req: &Request,
        body: &mut ReqBody,
        replayable: &mut bool,
    ) -> Result<(UpConn, Response), Failure> {
        loop {
            let tls = up.tls.is_some();
            let mut pooled = self.pool.checkout(up.addr, tls);
            if pooled.is_none() && self.pool.enabled() {
                // None idle: let the exchanges that finish in this same pass of the scheduler
                // (their answers are already readable) hand their connections back first, and
                // take one of those instead of opening a new one. Under a burst of more clients
                // than `keepalive`, this takes 2/3 of the lost throughput back (README).
                tokio::task::yield_now().await;
                pooled = self.pool.checkout(up.addr, tls);
            }
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => (
                    Pool::connect(up.addr, up.tls.as_ref(), snap.cfg.proxy_connect_timeout)
                        .await
                        .map_err(Failure::Upstream)?,
                    false,
                ),
            };
            self.assemble(c, up, req, body);
            conn.requests = conn.requests.saturating_add(1);
            let send = snap.cfg.proxy_send_timeout;
            let mut answered = false;
            match body::write_watching(&mut conn, &c.wire, &mut c.utimer, send).await {
                Ok(Ok(body::Sent::Done)) => {}
                // Answered already (a reused connection's stale bytes are
                // caught by the pool's check before it is handed out).
                Ok(Ok(body::Sent::Answered)) => {
                    answered = true;
                    conn.answered_early = true;
                }
                // Closed while idle, so nothing of this request was taken: use another one.
                Ok(Err(e)) if reused => {
                    log::debug!("pooled connection to {} was closed: {e}", up.addr);
                    continue;
                }
                Ok(Err(source)) => {
                    return Err(Failure::Upstream(AttemptError::Exchange {
                        upstream: up.addr,
                        sent: true,
                        source,
                    }))
                }
                Err(_) => return Err(timeout(up, "sending the request")),
            }
            if !answered && !matches!(body, ReqBody::Buffered) {
                // A spooled body is read back from its file on every attempt.
                *replayable &= matches!(body, ReqBody::Spooled(_));
                let limit = snap.cfg.client_max_body_size;
                match body::send_stream(c, &mut conn, body, limit, send).await {
                    // An early answer (the upstream's own 413, say) is read
                    // and passed on like any response; the client
                    // connection closes after it (`respond`: body incomplete).
                    Ok(()) => {}
                    Err(StreamError::Answered) => conn.answered_early = true,
                    Err(StreamError::Client) => return Err(Failure::Client),
                    Err(StreamError::TooLarge) => return Err(Failure::TooLarge),
                    Err(StreamError::Timeout) => return Err(timeout(up, "sending the request")),
                    Err(StreamError::Upstream(source)) => {
                        return Err(Failure::Upstream(AttemptError::Exchange {
                            upstream: up.addr,
                            sent: true,
                            source,
                        }))
                    }
                }
            }
            let resp = self.read_head(c, &mut conn, snap, up, req, reused).await?;
            return Ok((conn, resp));
        }
    }

    /// Puts the request as the upstream gets it into `c.wire`.
    fn assemble(&self, c: &mut Conn, up: &Upstream, req: &Request, body: &ReqBody) {
        let w = &mut c.wire;
        w.clear();
        w.extend_from_slice(&c.head);
        if !req.has_host {
            headers::put(w, b"Host", up.authority.as_bytes());
        }
        if !self.pool.enabled() && !req.upgrade {
            w.extend_from_slice(b"Connection: close\r\n");
        }
        match body {
            ReqBody::Buffered if req.framing != Framing::None => {
                headers::put_content_length(w, c.body.len() as u64);
            }
            ReqBody::Buffered => {}
            ReqBody::Length { left } => headers::put_content_length(w, *left),
            ReqBody::Spooled(spool) => {
                headers::put_content_length(w, c.body.len() as u64 + spool.len());
            }
            ReqBody::Chunked(_) => w.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        w.extend_from_slice(b"\r\n");
        match body {
            ReqBody::Buffered | ReqBody::Spooled(_) => w.extend_from_slice(&c.body),
            ReqBody::Chunked(_) if !c.body.is_empty() => {
                crate::h1::chunked::write_chunk_header(w, c.body.len());
                w.extend_from_slice(&c.body);
                w.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
    }

    /// Reads the response head (skipping interim 1xx answers) into `c.wbuf`.
    async fn read_head(
        &self,
        c: &mut Conn,
        conn: &mut UpConn,
        snap: &Snapshot,
        up: &Upstream,
        req: &Request,
        reused: bool,
    ) -> Result<Response, Failure> {
        let mut got_any = false;
        let mut watching = true;
        loop {
            if !conn.rbuf.is_empty() {
                got_any = true;
                c.wbuf.clear();
                let vars = crate::custom_headers::ResponseVars {
                    upstream: Some(up.addr),
                    status: 0,
                    client: c.client,
                    request_id: &c.request_id,
                };
                let add = (&snap.add_headers, snap.cfg.add_header_always, &vars);
                let rid = snap
                    .request_id
                    .as_deref()
                    .map(|name| (name, c.request_id.as_slice()));
                let gzip = snap.gzip.as_ref().map(|p| (p, c.gzip_ok));
                let pool = &snap.pools[up.pool];
                let rewrites = response::Rewrites {
                    hide: &snap.cfg.proxy_hide_header,
                    relocate: (!snap.relocate.is_empty()).then_some(&snap.relocate),
                    cookies: (!snap.cookies.is_empty()).then_some(&snap.cookies),
                    vars: crate::relocate::Vars {
                        host: &c.host,
                        https: c.https,
                        upstream: &up.cfg.address,
                        prefix: pool.strip_prefix.as_deref().unwrap_or(""),
                        upstream_prefix: pool.upstream_prefix.as_deref().unwrap_or(""),
                        upstream_tls: up.tls.is_some(),
                    },
                };
                match response::parse(
                    &conn.rbuf,
                    // A HEAD sent as a GET gets the GET's answer.
                    req.head_method && !c.cache.converted,
                    &mut c.wbuf,
                    Some(add),
                    rid,
                    gzip,
                    &rewrites,
                ) {
                    Ok(r) if r.status == 101 && !req.upgrade => {
                        return Err(protocol(up, "101 to a request without Upgrade"));
                    }
                    Ok(r) if r.status < 200 && r.status != 101 => {
                        conn.rbuf.advance(r.head_len);
                        continue;
                    }
                    Ok(r) => {
                        if c.cache.fill {
                            c.cache.head.clear();
                            c.cache.head.extend_from_slice(&conn.rbuf[..r.head_len]);
                        }
                        conn.rbuf.advance(r.head_len);
                        return Ok(r);
                    }
                    Err(HeadError::Partial) => {}
                    Err(HeadError::Bad(reason)) => return Err(protocol(up, reason)),
                }
            }
            let limit = snap.cfg.proxy_read_timeout;
            let read = io::read(&mut conn.stream, &mut conn.rbuf, &mut c.utimer, limit);
            let Some(read) =
                io::watch_client(&mut c.stream, &mut c.rbuf, &mut watching, read).await
            else {
                return Err(Failure::ClientGone);
            };
            let source = match read {
                Ok(Ok(n)) if n > 0 => continue,
                Ok(Ok(_)) => std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response head",
                ),
                Ok(Err(e)) => e,
                Err(_) => return Err(timeout(up, "reading the response head")),
            };
            let e = AttemptError::Exchange {
                upstream: up.addr,
                sent: true,
                source,
            };
            return Err(if reused && !got_any {
                Failure::Stale(e)
            } else {
                Failure::Upstream(e)
            });
        }
    }

    /// Completes the response head and forwards the response; true if the client connection
    /// stays open.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        c: &mut Conn,
        mut conn: UpConn,
        resp: Response,
        guard: Option<ActiveGuard>,
        snap: &Snapshot,
        req: &Request,
        body: &ReqBody,
    ) -> bool {
        if resp.status == 101 {
            // Only a live upstream switches protocols (a 101 is never cached).
            if let Some(guard) = guard {
                c.log.status = 101;
                crate::tunnel::run(c, conn, guard, snap.cfg.proxy_send_timeout).await;
            }
            return false;
        }
        let mode = match (resp.body, req.minor) {
            _ if resp.gzip => ToClient::Gzip(req.minor == 1),
            (Body::Chunked, 0) => ToClient::Dechunk,
            (Body::Close, 1) => ToClient::Rechunk,
            _ => ToClient::AsIs,
        };
        let delimited_by_close = matches!(
            (resp.body, mode),
            (Body::Close, ToClient::AsIs)
                | (Body::Chunked, ToClient::Dechunk)
                | (_, ToClient::Gzip(false))
        );
        let close =
            !req.keep_alive || delimited_by_close || !body.complete() || self.stopping.get();
        if matches!(mode, ToClient::Rechunk | ToClient::Gzip(true))
            || (resp.body == Body::Chunked && mode == ToClient::AsIs)
        {
            c.wbuf.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if close {
            c.wbuf.extend_from_slice(b"Connection: close\r\n");
        } else if req.minor == 0 {
            c.wbuf.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        c.wbuf.extend_from_slice(b"\r\n");
        c.log.status = resp.status;
        c.log.head += c.wbuf.len() as u64;
        let mut backlog = snap
            .buffering
            .applies(resp.buffering)
            .then(|| crate::buffering::Backlog::new(&snap.buffering));
        let outcome = match (mode, &snap.gzip) {
            (ToClient::Gzip(chunked), Some(policy)) => {
                let encoder = policy.encoder();
                body::forward_gzip(
                    c,
                    &mut conn,
                    resp.body,
                    encoder,
                    chunked,
                    snap.cfg.proxy_read_timeout,
                    &mut backlog,
                )
                .await
            }
            _ => {
                body::forward(
                    c,
                    &mut conn,
                    resp.body,
                    mode,
                    snap.cfg.proxy_read_timeout,
                    &mut backlog,
                )
                .await
            }
        };
        if !body.complete() {
            // Answered before the whole body was sent: let the client finish
            // sending before the close (nginx's lingering close).
            body::linger(c, body).await;
        }
        // Not after an early answer: the upstream did not get the whole body.
        if outcome == Forwarded::Complete && resp.reusable && body.complete() && self.pool.enabled()
        {
            self.pool.put(conn);
        } else {
            drop(conn);
        }
        drop(guard);
        // The upstream is free (pooled or closed); what its client has not taken yet follows,
        // also when the upstream cut the answer short: the client gets every byte that came
        // (a download can resume from there), then the close.
        let delivered = match backlog.as_mut() {
            Some(q) if outcome != Forwarded::ClientGone => body::drain_backlog(c, q).await,
            _ => true,
        };
        outcome == Forwarded::Complete && delivered && !close
    }
}

fn timeout(up: &Upstream, phase: &'static str) -> Failure {
    Failure::Upstream(AttemptError::Timeout {
        upstream: up.addr,
        phase,
    })
}

fn protocol(up: &Upstream, reason: &'static str) -> Failure {
    Failure::Upstream(AttemptError::Protocol {
        upstream: up.addr,
        reason,
    })
}
