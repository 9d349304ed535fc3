//! The status page (`status_path`): the upstreams' configuration, health and counters as JSON,
//! answered by the balancer itself, as nginx's `stub_status` or HAProxy's stats page.
//!
//! It reads the same atomics the request path reads, so it shows what the next request would
//! see: `state` is `up`, `down` (configured so), `failing` (active health checks), `suspended`
//! (passive: `max_fails` within `fail_timeout`, with `retry_in_ms`) or `full` (`max_conns`).
//!
//! With `?format=prometheus` in the query, the same figures come in Prometheus' text format
//! (version 0.0.4), so a scraper can watch the balancer without a JSON exporter: counters end
//! in `_total`, each upstream's figures carry its `address`, `route` and `pool` as labels, and
//! `ferrocat_balancer_upstream_state` is 1 for the upstream's current state label.

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

/// Whether the request line at the start of `head` asks for the Prometheus text format
/// (`format=prometheus` in the query).
pub(crate) fn wants_prometheus(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(head);
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    target
        .splitn(2, |&b| b == b'?')
        .nth(1)
        .is_some_and(|q| q.split(|&b| b == b'&').any(|kv| kv == b"format=prometheus"))
}

/// A figure of a section: its JSON field, its Prometheus type and its help text.
type Field = (&'static str, &'static str, &'static str);

/// The page in Prometheus' text exposition format (see the module's notes).
pub(crate) fn prometheus(page: &Value) -> String {
    let mut out = String::new();
    let num = |v: &Value| {
        v.as_f64()
            .or_else(|| v.as_bool().map(|b| f64::from(u8::from(b))))
    };
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        out.push_str(&format!("# HELP ferrocat_balancer_{name} {help}\n"));
        out.push_str(&format!("# TYPE ferrocat_balancer_{name} {kind}\n"));
    };
    let scalars: [(&[&str], &str, &str, &str); 6] = [
        (
            &["requests"],
            "requests_total",
            "counter",
            "Requests read from clients.",
        ),
        (
            &["connections", "accepted"],
            "connections_accepted_total",
            "counter",
            "Client connections accepted.",
        ),
        (
            &["connections", "active"],
            "connections_active",
            "gauge",
            "Client connections open now.",
        ),
        (
            &["connections", "tls_handshake_failures"],
            "tls_handshake_failures_total",
            "counter",
            "Client TLS handshakes that failed.",
        ),
        (
            &["config_generation"],
            "config_generation",
            "gauge",
            "Configurations loaded (1 + reloads).",
        ),
        (
            &["limit_conn", "limit"],
            "limit_conn_limit",
            "gauge",
            "limit_conn: connections allowed per key.",
        ),
    ];
    let sections: [(&str, &[Field]); 3] = [
        (
            "limit_req",
            &[
                ("rejected", "counter", "Requests refused by limit_req."),
                ("delayed", "counter", "Requests delayed by limit_req."),
            ],
        ),
        (
            "limit_conn",
            &[
                ("active", "gauge", "Requests counted by limit_conn now."),
                ("rejected", "counter", "Requests refused by limit_conn."),
                (
                    "untracked",
                    "counter",
                    "Requests limit_conn could not track (table full).",
                ),
            ],
        ),
        (
            "cache",
            &[
                ("entries", "gauge", "Answers kept in the cache."),
                ("bytes", "gauge", "Bytes the kept answers take."),
                ("max_size", "gauge", "proxy_cache_max_size in bytes."),
                ("hits", "counter", "Requests answered from a fresh copy."),
                ("misses", "counter", "Requests the cache had no copy for."),
                (
                    "expired",
                    "counter",
                    "Requests that found the copy expired.",
                ),
                (
                    "stale",
                    "counter",
                    "Expired copies that answered for failed upstreams.",
                ),
                (
                    "updating",
                    "counter",
                    "Expired copies that answered while refreshed.",
                ),
                (
                    "revalidated",
                    "counter",
                    "Expired copies made fresh by an upstream 304.",
                ),
                ("stored", "counter", "Answers kept."),
                ("evicted", "counter", "Copies evicted for room."),
            ],
        ),
    ];
    for (path, name, kind, help) in scalars {
        let v = path.iter().try_fold(page, |v, k| v.get(k)).and_then(num);
        if let Some(v) = v {
            family(&mut out, name, kind, help);
            out.push_str(&format!("ferrocat_balancer_{name} {v}\n"));
        }
    }
    for (section, fields) in sections {
        let Some(obj) = page.get(section).filter(|v| v.is_object()) else {
            continue;
        };
        for (field, kind, help) in fields {
            let Some(v) = obj.get(*field).and_then(num) else {
                continue;
            };
            let suffix = if *kind == "counter" { "_total" } else { "" };
            let name = if *field == "max_size" {
                format!("{section}_max_size_bytes")
            } else {
                format!("{section}_{field}{suffix}")
            };
            family(&mut out, &name, kind, help);
            out.push_str(&format!("ferrocat_balancer_{name} {v}\n"));
        }
    }
    let upstreams = page
        .get("upstreams")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let label = |u: &Value| {
        let text = |k: &str| u.get(k).and_then(Value::as_str).unwrap_or_default();
        format!(
            "address=\"{}\",route=\"{}\",pool=\"{}\"",
            escape(text("address")),
            escape(text("route")),
            escape(text("pool"))
        )
    };
    let per_upstream: [(&str, &str, &str, &str); 5] = [
        (
            "active",
            "upstream_active",
            "gauge",
            "Requests in flight to the upstream.",
        ),
        (
            "attempts",
            "upstream_attempts_total",
            "counter",
            "Attempts sent to the upstream.",
        ),
        (
            "failures",
            "upstream_failures_total",
            "counter",
            "Attempts that failed.",
        ),
        ("weight", "upstream_weight", "gauge", "Configured weight."),
        (
            "retry_in_ms",
            "upstream_retry_in_ms",
            "gauge",
            "Milliseconds until a suspended upstream is tried again.",
        ),
    ];
    if !upstreams.is_empty() {
        for (field, name, kind, help) in per_upstream {
            family(&mut out, name, kind, help);
            for u in upstreams {
                let v = u.get(field).and_then(num).unwrap_or(0.0);
                out.push_str(&format!("ferrocat_balancer_{name}{{{}}} {v}\n", label(u)));
            }
        }
        family(
            &mut out,
            "upstream_state",
            "gauge",
            "1 for the upstream's current state (up, down, failing, suspended, full).",
        );
        for u in upstreams {
            let now = u.get("state").and_then(Value::as_str).unwrap_or_default();
            for state in ["up", "down", "failing", "suspended", "full"] {
                out.push_str(&format!(
                    "ferrocat_balancer_upstream_state{{{},state=\"{state}\"}} {}\n",
                    label(u),
                    u8::from(state == now)
                ));
            }
        }
    }
    out
}

/// A Prometheus label value: `\`, `"` and line feeds escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the complete response (no body for HEAD) to `out`; returns the body's length.
pub(crate) fn respond(
    out: &mut Vec<u8>,
    snap: &Snapshot,
    req: &Request,
    head: &[u8],
    (accepted, active, requests, tls_failures): (u64, u64, u64, u64),
) -> usize {
    let mut page = render(snap);
    page["connections"] = json!({
        "accepted": accepted,
        "active": active,
        "tls_handshake_failures": tls_failures,
    });
    page["requests"] = json!(requests);
    let (body, content_type): (Vec<u8>, &[u8]) = if wants_prometheus(head) {
        (
            prometheus(&page).into_bytes(),
            b"text/plain; version=0.0.4; charset=utf-8",
        )
    } else {
        (
            serde_json::to_vec_pretty(&page).unwrap_or_default(),
            b"application/json",
        )
    };
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    crate::headers::put(out, b"Content-Type", content_type);
    out.extend_from_slice(b"Cache-Control: no-store\r\n");
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

    #[test]
    fn the_prometheus_format_is_asked_for_in_the_query_and_labels_are_escaped() {
        assert!(wants_prometheus(
            b"GET /s?format=prometheus HTTP/1.1\r\nHost: a\r\n"
        ));
        assert!(wants_prometheus(
            b"GET /s?a=1&format=prometheus HTTP/1.1\r\n"
        ));
        assert!(!wants_prometheus(b"GET /s?format=prometheusx HTTP/1.1\r\n"));
        assert!(!wants_prometheus(
            b"GET /s HTTP/1.1\r\nX: ?format=prometheus\r\n"
        ));
        assert!(!wants_prometheus(b"GET /s/format=prometheus HTTP/1.1\r\n"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let page = json!({
            "requests": 3,
            "upstreams": [{"address": "h\"x:1", "route": null, "pool": "p", "active": 2,
                           "attempts": 5, "failures": 0, "weight": 1, "retry_in_ms": 0,
                           "state": "full"}],
        });
        let text = prometheus(&page);
        assert!(
            text.contains("ferrocat_balancer_requests_total 3\n"),
            "{text}"
        );
        assert!(text.contains(
            "ferrocat_balancer_upstream_active{address=\"h\\\"x:1\",route=\"\",pool=\"p\"} 2\n"
        ));
        assert!(text.contains(
            "ferrocat_balancer_upstream_state{address=\"h\\\"x:1\",route=\"\",pool=\"p\",state=\"full\"} 1\n"
        ));
        assert!(
            !text.contains("cache_"),
            "no cache section, no cache figures"
        );
    }
}
