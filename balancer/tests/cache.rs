//! The response cache (`proxy_cache`): answers that say they may be kept are served from memory
//! without reaching the upstream, exactly as they first came (plain, chunked, HEAD, gzip);
//! answers that must not be kept, and requests that must not be served from it (session
//! cookie, `Authorization`, `POST`), go to the upstream every time; `proxy_cache_valid` keeps
//! answers by status; an expired copy answers while the upstream is down
//! (`proxy_cache_use_stale`); concurrent misses wait for one fill (`proxy_cache_lock`);
//! `Vary` keeps variants; a pool can turn caching off; a browser's conditional miss still
//! fills; `proxy_cache_revalidate` refreshes expired copies with the upstream's 304; a `HEAD`
//! miss fills as a `GET`; the keys are read from TOML.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ferrocat_balancer::{BalancerConfig, PoolConfig};

use common::{client, config, get_json, start, text_body, Upstream};

const STATUS: &str = "x-cache-status";

fn caching(up: &Upstream) -> BalancerConfig {
    let mut cfg = config(&[up]);
    cfg.proxy_cache = true;
    cfg.proxy_cache_status_header = "X-Cache-Status".into();
    cfg.status_path = Some("/_status".into());
    cfg
}

/// GETs `url` until the cache status is `HIT` (at most 100 times, 20 ms apart, for a background
/// refresh to land); returns the last cache status.
async fn until_hit(http: &reqwest::Client, url: &str) -> String {
    let mut status = String::new();
    for _ in 0..100 {
        status = fetch(http, url, &[]).await.1;
        if status == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    status
}

/// GETs `url` with extra headers: (status, cache status, body).
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get(STATUS)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_answers_are_served_from_memory_as_they_came() {
    let a = Upstream::start("a").await;
    let (h, base) = start(caching(&a)).await;
    let http = client();
    let url = format!("{base}/text/5000?cc=max-age=60");
    let (s, c, first) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "MISS"));
    assert_eq!(first, text_body(5000));
    for _ in 0..5 {
        let (s, c, body) = fetch(&http, &url, &[]).await;
        assert_eq!((s, c.as_str()), (200, "HIT"));
        assert_eq!(body, first);
    }
    assert_eq!(a.hits(), 1, "the hits did not reach the upstream");
    // HEAD is answered from the same copy, without a body.
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.headers()[STATUS], "HIT");
    assert_eq!(head.headers()["content-length"], "5000");
    assert!(head.bytes().await.unwrap().is_empty());
    // A chunked answer is kept whole too.
    let chunked = format!("{base}/text/50000?cc=max-age=60&stream=1");
    let (_, c1, b1) = fetch(&http, &chunked, &[]).await;
    let (_, c2, b2) = fetch(&http, &chunked, &[]).await;
    assert_eq!((c1.as_str(), c2.as_str()), ("MISS", "HIT"));
    assert_eq!(b1, text_body(50000));
    assert_eq!(b2, b1);
    // A client that has the answer already (its ETag) gets a 304 from the copy.
    let tagged = format!("{base}/text/100?cc=max-age=60&etag=%22v1%22");
    assert_eq!(fetch(&http, &tagged, &[]).await.1, "MISS");
    let (s, c, body) = fetch(&http, &tagged, &[("if-none-match", "\"v0\", W/\"v1\"")]).await;
    assert_eq!((s, c.as_str()), (304, "HIT"));
    assert!(body.is_empty());
    let (s, c, body) = fetch(&http, &tagged, &[("if-none-match", "\"v2\"")]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "HIT", 100));
    // Another query is another key.
    let (_, c, _) = fetch(&http, &format!("{url}&x=1"), &[]).await;
    assert_eq!(c, "MISS");
    assert_eq!(a.hits(), 4);
    let page = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(page["cache"]["hits"], 9);
    assert_eq!(page["cache"]["misses"], 4);
    assert_eq!(page["cache"]["entries"], 4);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_kept_or_shared_reaches_the_upstream_every_time() {
    let a = Upstream::start("a").await;
    let (h, base) = start(caching(&a)).await;
    let http = client();
    // Answers that say no, or carry a cookie, or say nothing (no proxy_cache_valid).
    for query in [
        "cc=no-store",
        "cc=private,max-age=60",
        "cc=no-cache",
        "cc=max-age=60&cookie=id%3D1",
        "vary=*&cc=max-age=60",
        "",
    ] {
        let before = a.hits();
        for _ in 0..2 {
            let (s, c, _) = fetch(&http, &format!("{base}/text/100?{query}"), &[]).await;
            assert_eq!((s, c.as_str()), (200, "MISS"), "{query}");
        }
        assert_eq!(a.hits() - before, 2, "{query}");
    }
    // Kept, but these requests do not use it.
    let url = format!("{base}/text/100?cc=max-age=60");
    fetch(&http, &url, &[]).await;
    let before = a.hits();
    for headers in [
        [("cookie", "JSESSIONID=abc.app1")],
        [("authorization", "Basic dTpw")],
        [("if-match", "\"x\"")],
        [("upgrade", "websocket")],
    ] {
        let (_, c, _) = fetch(&http, &url, &headers).await;
        assert_eq!(c, "BYPASS", "{headers:?}");
    }
    let post = http.post(&url).body("x").send().await.unwrap();
    assert!(post.headers().get(STATUS).is_none());
    assert_eq!(a.hits() - before, 5);
    // A session-less request still gets the kept copy.
    assert_eq!(fetch(&http, &url, &[]).await.1, "HIT");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cache_valid_keeps_answers_by_status_and_x_accel_expires_wins() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_valid = vec!["200 1m".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    for _ in 0..3 {
        assert_eq!(fetch(&http, &format!("{base}/"), &[]).await.0, 200);
        assert_eq!(
            fetch(&http, &format!("{base}/status/404"), &[]).await.0,
            404
        );
    }
    // One fill for `/`; the 404 is not listed, so every one goes up.
    assert_eq!(a.hits(), 4);
    // X-Accel-Expires: 0 overrides proxy_cache_valid.
    let before = a.hits();
    for _ in 0..2 {
        fetch(&http, &format!("{base}/text/10?xae=0"), &[]).await;
    }
    assert_eq!(a.hits() - before, 2);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_copy_answers_while_the_upstream_is_down() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_use_stale = vec!["error".into(), "timeout".into()];
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let url = format!("{base}/text/700?cc=max-age=1");
    let (_, c, kept) = fetch(&http, &url, &[]).await;
    assert_eq!(c, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Expired, upstream up: refreshed.
    assert_eq!(fetch(&http, &url, &[]).await.1, "EXPIRED");
    a.kill();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "STALE"));
    assert_eq!(body, kept);
    // Not kept at all: the error page.
    assert_eq!(fetch(&http, &format!("{base}/text/5"), &[]).await.0, 502);
    // Without proxy_cache_use_stale the client gets the failure.
    cfg.proxy_cache_use_stale.clear();
    h.reload(cfg).unwrap();
    assert_eq!(fetch(&http, &url, &[]).await.0, 502);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_wait_for_one_fill() {
    for lock in [true, false] {
        let a = Upstream::start("a").await;
        let mut cfg = caching(&a);
        cfg.proxy_cache_valid = vec!["200 1m".into()];
        cfg.proxy_cache_lock = lock;
        let (h, base) = start(cfg).await;
        let http = client();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (http, url) = (http.clone(), format!("{base}/slow/400"));
                tokio::spawn(async move { fetch(&http, &url, &[]).await })
            })
            .collect();
        for t in tasks {
            let (s, _, body) = t.await.unwrap();
            assert_eq!(s, 200);
            assert_eq!(body, b"a");
        }
        if lock {
            assert_eq!(a.hits(), 1, "one request filled, the others waited for it");
        } else {
            assert!(
                a.hits() >= 4,
                "without the lock the misses all go up: {}",
                a.hits()
            );
        }
        h.stop(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_a_variant_per_header_value_and_a_pool_may_not_cache() {
    let (a, s) = (Upstream::start("a").await, Upstream::start("s").await);
    let mut cfg = caching(&a);
    cfg.upstream.push(s.config().in_pool("static"));
    cfg.pool = vec![PoolConfig {
        proxy_cache: Some(false),
        strip_prefix: Some("/nocache".into()),
        ..PoolConfig::new("static", &["^/nocache/"])
    }];
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/text/300?cc=max-age=60&vary=Accept-Language");
    for round in 0..2 {
        for lang in ["en", "fr"] {
            let (_, c, _) = fetch(&http, &url, &[("accept-language", lang)]).await;
            assert_eq!(c, if round == 0 { "MISS" } else { "HIT" }, "{lang}");
        }
    }
    assert_eq!(a.hits(), 2);
    for _ in 0..2 {
        let (_, c, _) = fetch(&http, &format!("{base}/nocache/text/10?cc=max-age=60"), &[]).await;
        assert_eq!(c, "");
    }
    assert_eq!(s.hits(), 2);
    h.stop(true).await;
}

#[test]
fn cache_keys_are_read_from_toml() {
    let toml = r#"
proxy_cache = true
proxy_cache_max_size = "16m"
proxy_cache_max_entry_size = "256k"
proxy_cache_valid = ["200 302 10m", "404 1m"]
proxy_cache_use_stale = ["error", "timeout", "http_503", "updating"]
proxy_cache_lock = false
proxy_cache_lock_timeout = "2s"
proxy_cache_inactive = "30m"
proxy_cache_session = true
proxy_cache_revalidate = true
proxy_cache_convert_head = false
proxy_cache_background_update = true
proxy_cache_min_uses = 2
proxy_cache_status_header = "X-Cache"
proxy_cache_key = "$scheme$host$request_uri$cookie_lang"
proxy_cache_bypass = ["$arg_nocache", "$http_pragma"]
proxy_no_cache = ["$arg_preview"]
proxy_ignore_headers = ["Cache-Control", "Expires"]

[[upstream]]
address = "127.0.0.1:9"

[[pool]]
name = "api"
paths = ["^/api/"]
proxy_cache = false
"#;
    let cfg: BalancerConfig = toml::from_str(toml).unwrap();
    assert!(cfg.proxy_cache && !cfg.proxy_cache_lock && cfg.proxy_cache_session);
    assert!(cfg.proxy_cache_revalidate && !cfg.proxy_cache_convert_head);
    assert!(cfg.proxy_cache_background_update && cfg.proxy_cache_min_uses == 2);
    let defaults = BalancerConfig::default();
    assert!(!defaults.proxy_cache_revalidate && defaults.proxy_cache_convert_head);
    assert_eq!(cfg.proxy_cache_max_size, 16 << 20);
    assert_eq!(cfg.proxy_cache_max_entry_size, 256 << 10);
    assert_eq!(cfg.proxy_cache_valid.len(), 2);
    assert_eq!(cfg.proxy_cache_lock_timeout, Duration::from_secs(2));
    assert_eq!(cfg.proxy_cache_inactive, Duration::from_secs(1800));
    assert_eq!(cfg.pool[0].proxy_cache, Some(false));
    assert_eq!(cfg.proxy_cache_status_header, "X-Cache");
    assert_eq!(cfg.proxy_cache_key, "$scheme$host$request_uri$cookie_lang");
    assert_eq!(cfg.proxy_cache_bypass.len(), 2);
    assert_eq!(cfg.proxy_no_cache, ["$arg_preview"]);
    assert_eq!(cfg.proxy_ignore_headers, ["Cache-Control", "Expires"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_answer_is_compressed_for_clients_that_take_gzip() {
    use std::io::Read as _;
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.gzip = true;
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/text/20000?cc=max-age=60");
    let (_, c, plain) = fetch(&http, &url, &[]).await;
    assert_eq!(c, "MISS");
    assert_eq!(plain, text_body(20000));
    for _ in 0..2 {
        let resp = http
            .get(&url)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()[STATUS], "HIT");
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        let body = resp.bytes().await.unwrap();
        assert!(body.len() < plain.len() / 2);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
    }
    assert_eq!(a.hits(), 1);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_bypass_and_no_cache_conditions_are_templates() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_key = "$host$uri".into();
    cfg.proxy_cache_bypass = vec!["$arg_nocache".into()];
    cfg.proxy_no_cache = vec!["$http_x_no_store".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    let at = |q: &str| format!("{base}/text/100?cc=max-age=60&{q}");
    // The key leaves the query out: another query is the same copy.
    assert_eq!(fetch(&http, &at("v=1"), &[]).await.1, "MISS");
    assert_eq!(fetch(&http, &at("v=2"), &[]).await.1, "HIT");
    assert_eq!(a.hits(), 1);
    // Bypassed: asked upstream, and the copy refreshed; "0" is no condition.
    assert_eq!(fetch(&http, &at("nocache=1"), &[]).await.1, "BYPASS");
    assert_eq!(fetch(&http, &at("nocache=0"), &[]).await.1, "HIT");
    assert_eq!(a.hits(), 2);
    // Not kept while the request says so.
    let other = format!("{base}/text/200?cc=max-age=60");
    assert_eq!(fetch(&http, &other, &[("x-no-store", "1")]).await.1, "MISS");
    assert_eq!(fetch(&http, &other, &[]).await.1, "MISS");
    assert_eq!(fetch(&http, &other, &[]).await.1, "HIT");
    assert_eq!(a.hits(), 4);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_headers_let_proxy_cache_valid_keep_a_private_page() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_valid = vec!["200 1m".into()];
    let url = |base: &str| format!("{base}/text/50?cc=private");
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    for _ in 0..2 {
        assert_eq!(fetch(&http, &url(&base), &[]).await.1, "MISS");
    }
    h.stop(true).await;
    cfg.proxy_ignore_headers = vec!["Cache-Control".into()];
    let (h, base) = start(cfg).await;
    assert_eq!(fetch(&http, &url(&base), &[]).await.1, "MISS");
    assert_eq!(fetch(&http, &url(&base), &[]).await.1, "HIT");
    assert_eq!(a.hits(), 3);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_kept_answers_for_allowed_clients_only() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_purge_allow = vec!["127.0.0.1/32".into()];
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let one = format!("{base}/text/10?cc=max-age=60");
    let two = format!("{base}/text/20?cc=max-age=60");
    for url in [&one, &two] {
        assert_eq!(fetch(&http, url, &[]).await.1, "MISS");
        assert_eq!(fetch(&http, url, &[]).await.1, "HIT");
    }
    let r = http.request(purge.clone(), &one).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"purged\":1}\n");
    assert_eq!(fetch(&http, &one, &[]).await.1, "MISS");
    assert_eq!(fetch(&http, &two, &[]).await.1, "HIT");
    // Nothing kept there: 404. A trailing `*` takes every key it starts.
    let r = http
        .request(purge.clone(), format!("{base}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .request(purge.clone(), format!("{base}/text/*"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "{\"purged\":2}\n");
    assert_eq!(fetch(&http, &two, &[]).await.1, "MISS");
    let hits = a.hits();
    h.stop(true).await;
    // Not an allowed client: 403, and nothing is removed or passed on.
    cfg.proxy_cache_purge_allow = vec!["10.0.0.0/8".into()];
    let (h, base) = start(cfg.clone()).await;
    let url = format!("{base}/text/10?cc=max-age=60");
    fetch(&http, &url, &[]).await;
    let r = http.request(purge, &url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(fetch(&http, &url, &[]).await.1, "HIT");
    assert_eq!(a.hits(), hits + 1);
    h.stop(true).await;
    cfg.proxy_cache_purge_allow = vec!["not a net".into()];
    assert_eq!(
        cfg.validate().unwrap_err().key,
        "balancer.proxy_cache_purge_allow[0]"
    );
}

/// An upstream of the test's own whose answers change with time: `/flip` answers 200
/// (`max-age=1`) the first time and 503 after; `/slow` answers `v1` (`max-age=1`) at once the
/// first time and `v2` after 800 ms later on; `/swr` as `/slow` (sharing its count), its first
/// answer with `stale-while-revalidate=30`. Returns its address.
async fn changing_upstream() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (flips, slows) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (flips, slows) = (flips.clone(), slows.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let (status, cc, body) = if head.starts_with("GET /swr") {
                            match slows.fetch_add(1, Ordering::SeqCst) {
                                0 => ("200 OK", "max-age=1, stale-while-revalidate=30", "v1"),
                                _ => {
                                    tokio::time::sleep(Duration::from_millis(800)).await;
                                    ("200 OK", "max-age=60", "v2")
                                }
                            }
                        } else if head.starts_with("GET /flip") {
                            match flips.fetch_add(1, Ordering::SeqCst) {
                                0 => ("200 OK", "max-age=1", "fresh"),
                                _ => ("503 Service Unavailable", "no-store", "down"),
                            }
                        } else {
                            match slows.fetch_add(1, Ordering::SeqCst) {
                                0 => ("200 OK", "max-age=1", "v1"),
                                _ => {
                                    tokio::time::sleep(Duration::from_millis(800)).await;
                                    ("200 OK", "max-age=60", "v2")
                                }
                            }
                        };
                        let answer = format!(
                            "HTTP/1.1 {status}\r\nCache-Control: {cc}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_copy_answers_for_an_upstream_5xx_and_while_another_request_refreshes() {
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(
        changing_upstream().await,
    )];
    cfg.upstream[0].max_fails = 0;
    cfg.proxy_cache = true;
    cfg.proxy_cache_status_header = "X-Cache-Status".into();
    cfg.proxy_cache_use_stale = vec!["http_503".into(), "updating".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    // http_503: the upstream's 503 is replaced by the expired copy.
    assert_eq!(fetch(&http, &format!("{base}/flip"), &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &format!("{base}/flip"), &[]).await;
    assert_eq!(
        (s, c.as_str(), body.as_slice()),
        (200, "STALE", &b"fresh"[..])
    );
    // updating: while one request waits for the slow refresh, another gets the old copy at once.
    assert_eq!(fetch(&http, &format!("{base}/slow"), &[]).await.2, b"v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refresh = {
        let (http, url) = (http.clone(), format!("{base}/slow"));
        tokio::spawn(async move { fetch(&http, &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // `UPDATING` is given only to a request that did not wait for the refresh.
    let (_, c, body) = fetch(&http, &format!("{base}/slow"), &[]).await;
    assert_eq!((c.as_str(), body.as_slice()), ("UPDATING", &b"v1"[..]));
    let (_, c, body) = refresh.await.unwrap();
    assert_eq!((c.as_str(), body.as_slice()), ("EXPIRED", &b"v2"[..]));
    assert_eq!(fetch(&http, &format!("{base}/slow"), &[]).await.2, b"v2");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_miss_still_fills_and_the_client_gets_its_304_from_the_copy() {
    let a = Upstream::start("a").await;
    let (h, base) = start(caching(&a)).await;
    let http = client();
    // A browser revalidating a page the cache does not have yet: the upstream is asked for the
    // whole answer (its 304 could not be kept), and the browser still gets its 304.
    let url = format!("{base}/text/300?cc=max-age=60&etag=%22e1%22");
    let (s, c, body) = fetch(&http, &url, &[("if-none-match", "\"e1\"")]).await;
    assert_eq!((s, c.as_str(), body.len()), (304, "MISS", 0));
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "HIT"), "the miss filled the cache");
    assert_eq!(body, text_body(300));
    assert_eq!(a.hits(), 1);
    // A conditional that does not match gets the whole answer, and fills too.
    let other = format!("{base}/text/400?cc=max-age=60&etag=%22e2%22");
    let (s, c, body) = fetch(&http, &other, &[("if-none-match", "\"old\"")]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "MISS", 400));
    assert_eq!(fetch(&http, &other, &[]).await.1, "HIT");
    // The same by date.
    let lm = "Tue, 01 Dec 2026 10:00:00 GMT";
    let dated =
        format!("{base}/text/500?cc=max-age=60&lm=Tue%2C%2001%20Dec%202026%2010%3A00%3A00%20GMT");
    let (s, c, _) = fetch(&http, &dated, &[("if-modified-since", lm)]).await;
    assert_eq!((s, c.as_str()), (304, "MISS"));
    let (s, c, body) = fetch(&http, &dated, &[]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "HIT", 500));
    assert_eq!(a.hits(), 3);
    // An answer that cannot be kept: a matching client still gets a 304.
    let unkept = format!("{base}/text/600?cc=no-store&etag=%22e3%22");
    let (s, c, body) = fetch(&http, &unkept, &[("if-none-match", "\"e3\"")]).await;
    assert_eq!((s, c.as_str(), body.len()), (304, "MISS", 0));
    // Preconditions the copy does not answer bypass the cache (here: the upstream's 200).
    let (s, c, body) = fetch(&http, &url, &[("if-match", "\"e1\"")]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "BYPASS", 300));
    assert_eq!(a.hits(), 5);
    // Without proxy_cache_revalidate, an expired copy is fetched whole again.
    let short = format!("{base}/text/200?cc=max-age=1&etag=%22s1%22");
    assert_eq!(fetch(&http, &short, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &short, &[]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "EXPIRED", 200));
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cache_revalidate_refreshes_an_expired_copy_with_the_upstreams_304() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_revalidate = true;
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/text/2000?cc=max-age=1&etag=%22r1%22");
    assert_eq!(fetch(&http, &url, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The upstream got the copy's ETag and answered 304: the copy answers, fresh again.
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "REVALIDATED"));
    assert_eq!(body, text_body(2000));
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "HIT", 2000));
    assert_eq!(a.hits(), 2);
    // A client with the answer gets its 304 from the revalidated copy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &url, &[("if-none-match", "W/\"r1\"")]).await;
    assert_eq!((s, c.as_str(), body.len()), (304, "REVALIDATED", 0));
    // By Last-Modified alone.
    let dated =
        format!("{base}/text/700?cc=max-age=1&lm=Tue%2C%2001%20Dec%202026%2010%3A00%3A00%20GMT");
    assert_eq!(fetch(&http, &dated, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &dated, &[]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "REVALIDATED", 700));
    // A copy without validators is fetched whole.
    let plain = format!("{base}/text/100?cc=max-age=1");
    assert_eq!(fetch(&http, &plain, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fetch(&http, &plain, &[]).await.1, "EXPIRED");
    let page = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(page["cache"]["revalidated"], 3);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_misses_is_sent_as_a_get_and_fills_the_cache() {
    let a = Upstream::start("a").await;
    let (h, base) = start(caching(&a)).await;
    let http = client();
    let url = format!("{base}/text/700?cc=max-age=60");
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()[STATUS], "MISS");
    assert_eq!(head.headers()["content-length"], "700");
    assert!(head.bytes().await.unwrap().is_empty());
    // The upstream was asked with a GET: its body was kept for this GET.
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "HIT"));
    assert_eq!(body, text_body(700));
    assert_eq!(a.hits(), 1);
    // An answer too large to keep: the HEAD gets its head at once, nothing of the body.
    let big = format!("{base}/big/50000000");
    let head = tokio::time::timeout(Duration::from_secs(5), http.head(&big).send())
        .await
        .expect("answered without the whole body")
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());
    // The connection goes on serving.
    let (s, c, _) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "HIT"));
    // Off: the HEAD goes to the upstream as a HEAD and fills nothing.
    let b = Upstream::start("b").await;
    let mut cfg = caching(&b);
    cfg.proxy_cache_convert_head = false;
    let (h2, base2) = start(cfg).await;
    let url = format!("{base2}/text/700?cc=max-age=60");
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.headers()[STATUS], "MISS");
    assert_eq!(fetch(&http, &url, &[]).await.1, "MISS");
    assert_eq!(b.hits(), 2);
    h2.stop(true).await;
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_cut_from_a_fresh_copy_and_never_fills() {
    let a = Upstream::start("a").await;
    let (h, base) = start(caching(&a)).await;
    let http = client();
    let url = format!("{base}/text/5000?cc=max-age=60&etag=%22g1%22");
    let whole = text_body(5000);
    // On a miss the range goes to the upstream as it came (which sends it all) and fills nothing.
    let (s, c, body) = fetch(&http, &url, &[("range", "bytes=10-19")]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "MISS", 5000));
    assert_eq!(
        fetch(&http, &url, &[]).await.1,
        "MISS",
        "the range filled nothing"
    );
    assert_eq!(a.hits(), 2);
    let part = |range: &str, if_range: Option<&str>| {
        let (http, url) = (http.clone(), url.clone());
        let range = range.to_owned();
        let if_range = if_range.map(str::to_owned);
        async move {
            let mut req = http.get(&url).header("range", range);
            if let Some(v) = if_range {
                req = req.header("if-range", v);
            }
            let resp = req.send().await.unwrap();
            let h = resp.headers().clone();
            let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
            let (cr, cs) = (get("content-range"), get(STATUS));
            (
                resp.status().as_u16(),
                cr,
                cs,
                resp.bytes().await.unwrap().to_vec(),
            )
        }
    };
    let (s, cr, cs, body) = part("bytes=10-19", None).await;
    assert_eq!(
        (s, cr.as_deref(), cs.as_deref()),
        (206, Some("bytes 10-19/5000"), Some("HIT"))
    );
    assert_eq!(body, whole[10..20]);
    let (s, cr, _, body) = part("bytes=-5", None).await;
    assert_eq!((s, cr.as_deref()), (206, Some("bytes 4995-4999/5000")));
    assert_eq!(body, whole[4995..]);
    let (s, cr, _, body) = part("bytes=4990-", None).await;
    assert_eq!(
        (s, cr.as_deref(), body.len()),
        (206, Some("bytes 4990-4999/5000"), 10)
    );
    let (s, cr, _, body) = part("bytes=9000-", None).await;
    assert_eq!(
        (s, cr.as_deref(), body.len()),
        (416, Some("bytes */5000"), 0)
    );
    // Several ranges: the whole copy (a valid answer to them).
    let (s, cr, _, body) = part("bytes=0-1,5-6", None).await;
    assert_eq!((s, cr, body.len()), (200, None, 5000));
    // If-Range: the part while the client's tag is the copy's, else the whole copy.
    let (s, _, _, body) = part("bytes=0-99", Some("\"g1\"")).await;
    assert_eq!((s, body.len()), (206, 100));
    let (s, _, _, body) = part("bytes=0-99", Some("\"g0\"")).await;
    assert_eq!((s, body.len()), (200, 5000));
    let (s, _, _, body) = part("bytes=0-99", Some("W/\"g1\"")).await;
    assert_eq!(
        (s, body.len()),
        (200, 5000),
        "a weak tag never matches If-Range"
    );
    assert_eq!(a.hits(), 2, "every part came from the copy");
    // A copy that came chunked answers ranges whole.
    let chunked = format!("{base}/text/30000?cc=max-age=60&stream=1");
    assert_eq!(fetch(&http, &chunked, &[]).await.1, "MISS");
    let (s, c, body) = fetch(&http, &chunked, &[("range", "bytes=0-9")]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "HIT", 30000));
    h.stop(true).await;
}

/// An upstream of the test's own: it answers `v1` at once the first time; every later request
/// waits for a permit of the returned semaphore, then answers `v<n>`, or 503 while the returned
/// flag is set. Every 200 is fresh for 1 s. Returns its address, the gate, the flag and the
/// request count.
async fn gated_upstream() -> (
    String,
    Arc<tokio::sync::Semaphore>,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let fail = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (g, f, n) = (gate.clone(), fail.clone(), count.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (gate, fail, count) = (g.clone(), f.clone(), n.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        if n > 1 {
                            gate.acquire().await.unwrap().forget();
                        }
                        let answer = if fail.load(Ordering::SeqCst) {
                            "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy".to_owned()
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\nCache-Control: max-age=1\r\n\
                                 Content-Length: 2\r\n\r\nv{n}"
                            )
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, gate, fail, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_update_answers_from_the_expired_copy_while_it_is_refreshed() {
    use std::sync::atomic::Ordering;
    let (addr, gate, fail, count) = gated_upstream().await;
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(addr)];
    cfg.upstream[0].max_fails = 0;
    cfg.proxy_cache = true;
    cfg.proxy_cache_status_header = "X-Cache-Status".into();
    cfg.proxy_cache_use_stale = vec!["updating".into()];
    cfg.proxy_cache_background_update = true;
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/gate");
    // Every request below must be answered without the upstream (which holds them at the gate).
    let quick = |http: reqwest::Client, url: String| async move {
        tokio::time::timeout(Duration::from_secs(5), fetch(&http, &url, &[]))
            .await
            .expect("answered while the upstream holds the refresh")
    };
    assert_eq!(fetch(&http, &url, &[]).await.2, b"v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The upstream holds the refresh until the gate opens, yet the requests are answered: the
    // one that found the copy expired and started the refresh, and those that come meanwhile.
    for _ in 0..3 {
        let (s, c, body) = quick(http.clone(), url.clone()).await;
        assert_eq!(
            (s, c.as_str(), body.as_slice()),
            (200, "UPDATING", &b"v1"[..])
        );
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "one refresh, not one per request"
    );
    gate.add_permits(1);
    let mut got = (String::new(), Vec::new());
    for _ in 0..100 {
        let (_, c, body) = quick(http.clone(), url.clone()).await;
        got = (c, body);
        if got.1 != b"v1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((got.0.as_str(), got.1.as_slice()), ("HIT", &b"v2"[..]));
    // A refresh that gets a 5xx leaves the expired copy in place (and does not make the key
    // go to the upstream: those requests would wait at the gate).
    fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, c, body) = quick(http.clone(), url.clone()).await;
    assert_eq!((c.as_str(), body.as_slice()), ("UPDATING", &b"v2"[..]));
    gate.add_permits(1);
    while count.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let (_, c, body) = quick(http.clone(), url.clone()).await;
        assert_eq!((c.as_str(), body.as_slice()), ("UPDATING", &b"v2"[..]));
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "the next refresh started and waits"
    );
    gate.add_permits(10);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_update_revalidates_with_the_copys_validators() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_use_stale = vec!["updating".into()];
    cfg.proxy_cache_background_update = true;
    cfg.proxy_cache_revalidate = true;
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/text/300?cc=max-age=1&etag=%22b1%22");
    assert_eq!(fetch(&http, &url, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str(), body.len()), (200, "UPDATING", 300));
    let status = until_hit(&http, &url).await;
    assert_eq!(
        status, "HIT",
        "the upstream's 304 made the copy fresh again"
    );
    assert_eq!(a.hits(), 2);
    let page = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(page["cache"]["revalidated"], 1);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_stale_while_revalidate_and_stale_if_error_let_the_copy_answer() {
    // stale-while-revalidate: without `updating` in proxy_cache_use_stale, a request gets the
    // expired copy while another one refreshes it.
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(
        changing_upstream().await,
    )];
    cfg.proxy_cache = true;
    cfg.proxy_cache_status_header = "X-Cache-Status".into();
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/swr");
    assert_eq!(fetch(&http, &url, &[]).await.2, b"v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refresh = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { fetch(&http, &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((c.as_str(), body.as_slice()), ("UPDATING", &b"v1"[..]));
    let (_, c, body) = refresh.await.unwrap();
    assert_eq!((c.as_str(), body.as_slice()), ("EXPIRED", &b"v2"[..]));
    h.stop(true).await;

    // stale-if-error: without proxy_cache_use_stale, the expired copy answers while the
    // upstream is down; a copy without it does not.
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.upstream[0].max_fails = 0;
    let (h, base) = start(cfg).await;
    let lasting = format!("{base}/text/100?cc=max-age%3D1%2C%20stale-if-error%3D60");
    let plain = format!("{base}/text/100?cc=max-age%3D1");
    assert_eq!(fetch(&http, &lasting, &[]).await.1, "MISS");
    assert_eq!(fetch(&http, &plain, &[]).await.1, "MISS");
    a.kill();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body) = fetch(&http, &lasting, &[]).await;
    assert_eq!((s, c.as_str(), body), (200, "STALE", text_body(100)));
    assert_eq!(fetch(&http, &plain, &[]).await.0, 502);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cache_min_uses_keeps_an_answer_from_its_nth_request_on() {
    let a = Upstream::start("a").await;
    let mut cfg = caching(&a);
    cfg.proxy_cache_min_uses = 3;
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/text/100?cc=max-age=60");
    for _ in 0..3 {
        assert_eq!(fetch(&http, &url, &[]).await.1, "MISS");
    }
    let (s, c, body) = fetch(&http, &url, &[]).await;
    assert_eq!((s, c.as_str(), body), (200, "HIT", text_body(100)));
    assert_eq!(a.hits(), 3, "kept from the third request on");
    // Another key is counted on its own.
    let other = format!("{base}/text/200?cc=max-age=60");
    assert_eq!(fetch(&http, &other, &[]).await.1, "MISS");
    assert_eq!(fetch(&http, &other, &[]).await.1, "MISS");
    let page = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(page["cache"]["entries"], 1);
    h.stop(true).await;
    let mut bad = caching(&a);
    bad.proxy_cache_min_uses = 0;
    let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
    assert!(err.to_string().contains("proxy_cache_min_uses"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_tries_the_next_upstream_after_a_failure() {
    let a = Upstream::start("a").await;
    let dead = Upstream::start("dead").await;
    dead.kill();
    let mut cfg = config(&[&dead, &a]);
    // The dead one is chosen first nearly every time, and never suspended.
    cfg.upstream[0].weight = 1000;
    cfg.upstream[0].max_fails = 0;
    cfg.proxy_cache = true;
    cfg.proxy_cache_status_header = "X-Cache-Status".into();
    cfg.proxy_cache_use_stale = vec!["updating".into()];
    cfg.proxy_cache_background_update = true;
    let (h, base) = start(cfg).await;
    let http = client();
    let url = format!("{base}/text/100?cc=max-age=1");
    assert_eq!(fetch(&http, &url, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fetch(&http, &url, &[]).await.1, "UPDATING");
    let status = until_hit(&http, &url).await;
    assert_eq!(status, "HIT", "the refresh went on to the live upstream");
    assert_eq!(a.hits(), 2, "one fill, one refresh");
    h.stop(true).await;
}
