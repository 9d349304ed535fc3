//! The status page (`status_path`): the upstreams' configuration, health and counters as JSON,
//! answered by the balancer itself, as nginx's `stub_status` or HAProxy's stats page.
//!
//! It reads the same atomics the request path reads, so it shows what the next request would
//! see: `state` is `up`, `down` (configured so), `failing` (active health checks), `suspended`
//! (passive: `max_fails` within `fail_timeout`, with `retry_in_ms`) or `full` (`max_conns`).

use serde_json::{json, Value};

use crate::h1::request::Request;
use crate::upstream::{now_millis, LazyNow, Snapshot};

/// True when the rewritten head in `head` asks for `path` with GET or HEAD (query ignored).
pub(crate) fn is_status_request(head: &[u8], path: &str) -> bool {
    let rest = head
        .strip_prefix(b"GET ")
        .or_else(|| head.strip_prefix(b"HEAD "));
    rest.and_then(|r| r.strip_prefix(path.as_bytes()))
        .is_some_and(|r| matches!(r.first(), Some(b' ' | b'?')))
}

/// The page's JSON.
pub(crate) fn render(snap: &Snapshot) -> Value {
    let mut now = LazyNow::default();
    let upstreams: Vec<Value> = snap
        .upstreams
        .iter()
        .map(|u| {
            use std::sync::atomic::Ordering::Relaxed;
            let until = u.down_until.load(Relaxed);
            let retry_in_ms = if until == 0 {
                0
            } else {
                until.saturating_sub(now_millis())
            };
            let active = u.active.load(Relaxed);
            let state = if u.cfg.down {
                "down"
            } else if !u.healthy.load(Relaxed) {
                "failing"
            } else if retry_in_ms > 0 {
                "suspended"
            } else if !u.available(&mut now) {
                "full"
            } else {
                "up"
            };
            json!({
                "address": u.cfg.address,
                "resolved": u.addr.to_string(),
                "route": u.cfg.route,
                "pool": u.cfg.pool,
                "weight": u.cfg.weight,
                "backup": u.cfg.backup,
                "drain": u.cfg.drain,
                "max_conns": u.cfg.max_conns,
                "state": state,
                "retry_in_ms": retry_in_ms,
                "active": active,
                "attempts": u.counts.attempts.load(Relaxed),
                "failures": u.counts.failures.load(Relaxed),
                // Share of its weight while `slow_start` runs; null when whole.
                "warming": u.warming(&mut now),
            })
        })
        .collect();
    let limit_req = snap.limit.as_ref().map(|l| {
        use std::sync::atomic::Ordering::Relaxed;
        json!({
            "rejected": l.table.rejected.load(Relaxed),
            "delayed": l.table.delayed.load(Relaxed),
        })
    });
    let limit_conn = snap.conn_limit.as_ref().map(|l| {
        use std::sync::atomic::Ordering::Relaxed;
        json!({
            "limit": l.max,
            "active": l.table.active(),
            "rejected": l.table.rejected.load(Relaxed),
            "untracked": l.table.untracked.load(Relaxed),
        })
    });
    let cache = snap.cache.as_ref().map(|p| {
        use std::sync::atomic::Ordering::Relaxed;
        let (entries, bytes) = p.store.size();
        let s = &p.store.stats;
        json!({
            "entries": entries,
            "bytes": bytes,
            "max_size": p.max_size,
            "hits": s.hits.load(Relaxed),
            "misses": s.misses.load(Relaxed),
            "expired": s.expired.load(Relaxed),
            "stale": s.stale.load(Relaxed),
            "updating": s.updating.load(Relaxed),
            "revalidated": s.revalidated.load(Relaxed),
            "stored": s.stored.load(Relaxed),
            "evicted": s.evicted.load(Relaxed),
        })
    });
    json!({
        "config_generation": snap.generation,
        "method": format!("{:?}", snap.cfg.method),
        "limit_req": limit_req,
        "limit_conn": limit_conn,
        "cache": cache,
        "upstreams": upstreams,
    })
}

/// Appends the complete response (no body for HEAD) to `out`; returns the body's length.
pub(crate) fn respond(
    out: &mut Vec<u8>,
    snap: &Snapshot,
    req: &Request,
    (accepted, active, requests, tls_failures): (u64, u64, u64, u64),
) -> usize {
    let mut page = render(snap);
    page["connections"] = json!({
        "accepted": accepted,
        "active": active,
        "tls_handshake_failures": tls_failures,
    });
    page["requests"] = json!(requests);
    let body = serde_json::to_vec_pretty(&page).unwrap_or_default();
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n",
    );
    crate::headers::put_content_length(out, body.len() as u64);
    if !req.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if req.head_method {
        return 0;
    }
    out.extend_from_slice(&body);
    body.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_exact_path_match() {
        let p = "/ferrocat/upstreams";
        assert!(is_status_request(
            b"GET /ferrocat/upstreams HTTP/1.1\r\n",
            p
        ));
        assert!(is_status_request(
            b"HEAD /ferrocat/upstreams?x=1 HTTP/1.1\r\n",
            p
        ));
        assert!(!is_status_request(
            b"POST /ferrocat/upstreams HTTP/1.1\r\n",
            p
        ));
        assert!(!is_status_request(
            b"GET /ferrocat/upstreams/x HTTP/1.1\r\n",
            p
        ));
        assert!(!is_status_request(
            b"GET /ferrocat/upstreamsx HTTP/1.1\r\n",
            p
        ));
        assert!(!is_status_request(b"GET /ferrocat HTTP/1.1\r\n", p));
    }
}
