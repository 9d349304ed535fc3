//! Reading an answer to keep, and refreshing an expired copy in the background (nginx
//! `proxy_cache_background_update`).
//!
//! With `proxy_cache_background_update` (and `updating` in `proxy_cache_use_stale`), the request
//! that finds a copy expired does not wait for the upstream either: it takes the key's fill
//! lock, starts a task on its worker that asks an upstream for the answer, and is answered from
//! the expired copy at once (`UPDATING`), as every request is until the task has kept the new
//! answer. The task's request is the client's, as the upstream would have got it, without the
//! client's conditionals (with the copy's validators under `proxy_cache_revalidate`). It tries
//! the upstreams as a live request does (the next one after a failure or a 5xx that
//! `proxy_next_upstream` names, at most `proxy_next_upstream_tries`; a reused connection that
//! turns out closed is replaced once); an answer that cannot be kept, a 5xx or a failure of all
//! leaves the expired copy in place, and failures count against the upstreams as a live
//! request's would.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf as _;

use crate::cache::{Entry, Filling, Policy};
use crate::h1::response::{self, Body, HeadError, Response};
use crate::io::{self, LazyTimer};
use crate::pool::{Pool, UpConn};
use crate::selection::SelectCtx;
use crate::server::Shared;
use crate::upstream::{ActiveGuard, LazyNow, Snapshot, Upstream};

/// Reads the rest of an answer to keep into `conn.rbuf` (its raw head `head`, already taken off
/// the buffer) and keeps it under `key` for request head `req`; returns it as kept. An answer
/// that cannot be kept marks the key "pass" (see `crate::cache`); one that was cut or went
/// silent is not kept.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_kept(
    cache: &Policy,
    conn: &mut UpConn,
    resp: &Response,
    (head, key, req): (&[u8], &[u8], &[u8]),
    up: &Upstream,
    timer: &mut LazyTimer,
    limit: Duration,
) -> Option<Arc<Entry>> {
    let Some((ttl, vary)) = cache.storable(resp.status, head) else {
        cache.store.pass(key);
        return None;
    };
    let room = cache.max_entry.saturating_sub(head.len() as u64);
    let body_len = match resp.body {
        Body::None => 0,
        Body::Length(n) if n <= room => {
            while (conn.rbuf.len() as u64) < n {
                match io::read(&mut conn.stream, &mut conn.rbuf, timer, limit).await {
                    Ok(Ok(k)) if k > 0 => {}
                    // Cut or silent: nothing is kept, and forwarding meets the same end.
                    _ => return None,
                }
            }
            n as usize
        }
        Body::Chunked => {
            let mut dec = crate::h1::chunked::ChunkedDecoder::default();
            let mut fed = 0;
            loop {
                let Ok(used) = dec.feed(&conn.rbuf[fed..], |_| {}) else {
                    return None;
                };
                fed += used;
                if dec.is_done() {
                    break fed;
                }
                if conn.rbuf.len() as u64 > room {
                    cache.store.pass(key);
                    return None;
                }
                match io::read(&mut conn.stream, &mut conn.rbuf, timer, limit).await {
                    Ok(Ok(k)) if k > 0 => {}
                    _ => return None,
                }
            }
        }
        _ => {
            cache.store.pass(key);
            return None;
        }
    };
    let mut raw = Vec::with_capacity(head.len() + body_len);
    raw.extend_from_slice(head);
    raw.extend_from_slice(&conn.rbuf[..body_len]);
    let entry = Entry::new(raw.into(), head.len(), &up.cfg.address, ttl, vary, req)
        .with_stale_extensions(cache.stale_extensions(head));
    cache.insert(key, entry)
}

/// An upstream connection whose answer was read whole (`body_len` bytes of body left in its
/// buffer) goes back to `pool`, or is closed.
pub(crate) fn release(pool: &Pool, mut conn: UpConn, resp: &Response, body_len: usize) {
    conn.rbuf.advance(body_len.min(conn.rbuf.len()));
    if resp.reusable && conn.rbuf.is_empty() && pool.enabled() {
        pool.put(conn);
    }
}

/// A refresh to run in the background.
pub(crate) struct Refresh {
    pub pool: Rc<Pool>,
    pub shared: Arc<Shared>,
    pub snap: Arc<Snapshot>,
    /// The request's pool and its client (for `ip_hash`) and `hash_key`.
    pub target: usize,
    pub client: IpAddr,
    pub hash_key: Vec<u8>,
    /// The request head for the upstream (its lines ending in CRLF, without the empty line);
    /// `has_host`: it names a `Host`.
    pub head: Vec<u8>,
    pub has_host: bool,
    /// The key, and the client's request head (for `Vary`).
    pub key: Vec<u8>,
    pub req: Vec<u8>,
    /// The expired copy, if its validators are in `head`.
    pub revalidating: Option<Arc<Entry>>,
    /// The key's fill lock, held until the refresh ends.
    pub filling: Filling,
}

/// Starts `r` on this worker (a `LocalSet` task).
pub(crate) fn start(r: Refresh) {
    tokio::task::spawn_local(run(r));
}

async fn run(r: Refresh) {
    let Some(cache) = r.snap.cache.as_ref() else {
        return;
    };
    let ctx = SelectCtx {
        client: r.client,
        key: &r.hash_key,
    };
    let retry = &r.snap.retry;
    let max_tries = match retry.tries {
        0 => r.snap.pools[r.target].len.max(1),
        n => n as usize,
    };
    let mut tried = Vec::new();
    let mut timer = LazyTimer::new();
    // As a live request's attempts: the next upstream after a failure, or after a 5xx that
    // `proxy_next_upstream` names.
    let (up, _guard, mut conn, resp, head) = loop {
        if tried.len() >= max_tries {
            return;
        }
        let mut now = LazyNow::default();
        let Some(idx) = crate::choose::choose(&r.snap, r.target, &ctx, &tried, None, &mut now)
        else {
            log::debug!("cache refresh: no upstream available");
            return;
        };
        tried.push(idx);
        let up = &r.snap.upstreams[idx];
        let guard = ActiveGuard::new(up);
        up.counts.attempts.fetch_add(1, Relaxed);
        match attempt(&r, up, &mut timer).await {
            Ok((_, resp, _)) if resp.status >= 500 => {
                // The expired copy stays.
                log::info!(
                    "cache refresh: upstream {} answered {}",
                    up.addr,
                    resp.status
                );
                if !retry.retries_status(resp.status) {
                    return;
                }
                up.counts.failures.fetch_add(1, Relaxed);
                r.shared.report_failure(up);
            }
            Ok((conn, resp, head)) => break (up, guard, conn, resp, head),
            Err(why) => failed(&r, up, why),
        }
    };
    let cfg = &r.snap.cfg;
    if resp.status == 304 {
        if let Some(old) = &r.revalidating {
            cache.refresh(&r.key, old, &head, &up.cfg.address, &r.req);
            release(&r.pool, conn, &resp, 0);
            return;
        }
    }
    let limit = cfg.proxy_read_timeout;
    let kept = read_kept(
        cache,
        &mut conn,
        &resp,
        (&head, &r.key, &r.req),
        up,
        &mut timer,
        limit,
    )
    .await;
    if let Some(e) = kept {
        release(&r.pool, conn, &resp, e.body_len());
    }
    drop(r.filling);
}

/// One attempt on `up`: a pooled connection (replaced once by a new one if the upstream had
/// closed it) or a new one, the request, and the answer's head.
async fn attempt(
    r: &Refresh,
    up: &Upstream,
    timer: &mut LazyTimer,
) -> Result<(UpConn, Response, Vec<u8>), String> {
    let mut wire = r.head.clone();
    if !r.has_host {
        crate::headers::put(&mut wire, b"Host", up.authority.as_bytes());
    }
    if !r.pool.enabled() {
        wire.extend_from_slice(b"Connection: close\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    let cfg = &r.snap.cfg;
    let mut pooled = r.pool.checkout(up.addr, up.tls.is_some());
    loop {
        let reused = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(conn) => conn,
            None => Pool::connect(up.addr, up.tls.as_ref(), cfg.proxy_connect_timeout)
                .await
                .map_err(|e| e.to_string())?,
        };
        conn.requests = conn.requests.saturating_add(1);
        match exchange(&mut conn, &wire, timer, cfg).await {
            Ok((resp, head)) => return Ok((conn, resp, head)),
            // A kept-alive connection the upstream had closed: once more on a new one.
            Err(_) if reused => {}
            Err(why) => return Err(why.to_owned()),
        }
    }
}

/// Sends `wire` and reads the answer's head: the answer and its raw head (taken off
/// `conn.rbuf`).
async fn exchange(
    conn: &mut UpConn,
    wire: &[u8],
    timer: &mut LazyTimer,
    cfg: &crate::config::BalancerConfig,
) -> Result<(Response, Vec<u8>), &'static str> {
    match io::write_all(&mut conn.stream, wire, timer, cfg.proxy_send_timeout).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err("sending the request failed"),
        Err(_) => return Err("timed out sending the request"),
    }
    match io::flush(&mut conn.stream, timer, cfg.proxy_send_timeout).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err("sending the request failed"),
        Err(_) => return Err("timed out sending the request"),
    }
    let mut scratch = Vec::new();
    loop {
        if !conn.rbuf.is_empty() {
            scratch.clear();
            let rewrites = response::Rewrites::default();
            match response::parse(&conn.rbuf, false, &mut scratch, None, None, None, &rewrites) {
                Ok(r) if r.status < 200 => {
                    conn.rbuf.advance(r.head_len);
                    continue;
                }
                Ok(r) => {
                    let head = conn.rbuf[..r.head_len].to_vec();
                    conn.rbuf.advance(r.head_len);
                    return Ok((r, head));
                }
                Err(HeadError::Partial) => {}
                Err(HeadError::Bad(why)) => return Err(why),
            }
        }
        match io::read(
            &mut conn.stream,
            &mut conn.rbuf,
            timer,
            cfg.proxy_read_timeout,
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err("connection closed before a complete response head"),
            Err(_) => return Err("timed out reading the response head"),
        }
    }
}

/// A refresh that could not reach `up`: logged and counted; the expired copy stays.
fn failed(r: &Refresh, up: &Upstream, why: String) {
    log::warn!("cache refresh from upstream {} failed: {why}", up.addr);
    up.counts.failures.fetch_add(1, Relaxed);
    r.shared.report_failure(up);
}
