//! `limit_req_rate` / `limit_req_burst` / `limit_req_nodelay` / `limit_req_status` (nginx's
//! `limit_req` per client address): a burst passes, the rest is refused before any upstream is
//! contacted, each client has its own bucket, the burst is spaced out without `nodelay`, a
//! reload keeps the buckets.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, config, get_json, start, Upstream};

/// GET `path` as client `ip` (named through `X-Real-IP` by the trusted loopback proxy).
async fn get_as(http: &reqwest::Client, base: &str, ip: &str) -> (u16, String) {
    let r = http
        .get(format!("{base}/"))
        .header("x-real-ip", ip)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_passes_then_requests_are_refused_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("50x.html");
    std::fs::write(&page, "<h1>busy, come back later</h1>").unwrap();
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.workers = 2;
    cfg.set_real_ip_from = vec!["127.0.0.1".into()];
    // One request a minute: nothing refills while the test runs.
    cfg.limit_req_rate = "1r/m".into();
    cfg.limit_req_burst = 2;
    cfg.limit_req_nodelay = true;
    cfg.error_page = Some(page);
    cfg.status_path = Some("/_status".into());
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    for i in 0..3 {
        assert_eq!(
            get_as(&http, &base, "203.0.113.1").await.0,
            200,
            "request {i}"
        );
    }
    let (status, body) = get_as(&http, &base, "203.0.113.1").await;
    assert_eq!(status, 503);
    assert!(body.contains("busy, come back later"), "{body}");
    assert_eq!(a.hits(), 3, "a refused request reaches no upstream");
    // Another client has a bucket of its own.
    assert_eq!(get_as(&http, &base, "203.0.113.2").await.0, 200);
    let status = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(status["limit_req"]["rejected"], 1, "{status}");

    // A reload keeps the buckets; one that removes the limit lets the client through.
    h.reload(cfg.clone()).unwrap();
    assert_eq!(get_as(&http, &base, "203.0.113.1").await.0, 503);
    cfg.limit_req_rate = String::new();
    h.reload(cfg).unwrap();
    assert_eq!(get_as(&http, &base, "203.0.113.1").await.0, 200);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nodelay_the_burst_is_spaced_out_at_the_rate() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.limit_req_rate = "10r/s".into();
    cfg.limit_req_burst = 3;
    let (h, base) = start(cfg).await;
    let http = client();
    let t0 = Instant::now();
    let answers = futures::future::join_all((0..4).map(|_| {
        let (http, url) = (http.clone(), format!("{base}/"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert_eq!(answers, [200; 4]);
    // 1 at once, then one per 100 ms: the last waited about 300 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_status_and_bad_settings() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.limit_req_rate = "1r/m".into();
    cfg.limit_req_nodelay = true;
    cfg.limit_req_status = 429;
    let (h, base) = start(cfg).await;
    let http = client();
    assert_eq!(get_as(&http, &base, "x").await.0, 200);
    let (status, body) = get_as(&http, &base, "x").await;
    assert_eq!(status, 429);
    assert!(body.contains("429 Too Many Requests"), "{body}");
    h.stop(true).await;

    use ferrocat_balancer::Balancer;
    for (rate, status, key) in [
        ("fast", 503, "balancer.limit_req_rate"),
        ("0r/s", 503, "balancer.limit_req_rate"),
        ("10r/s", 200, "balancer.limit_req_status"),
    ] {
        let mut cfg = config(&[&a]);
        cfg.limit_req_rate = rate.into();
        cfg.limit_req_status = status;
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{rate} {status} accepted")
        };
        assert!(e.to_string().contains(key), "{e}");
    }
}

/// GET `/` with `x-api-key: key` (none when `None`), from the one loopback client.
async fn get_with_key(http: &reqwest::Client, base: &str, key: Option<&str>) -> u16 {
    let mut r = http.get(format!("{base}/"));
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_key_buckets_by_the_evaluated_key_and_an_empty_key_is_not_limited() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.limit_req_rate = "1r/m".into();
    cfg.limit_req_burst = 1;
    cfg.limit_req_nodelay = true;
    cfg.limit_req_key = "$http_x_api_key".into();
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    // All requests come from 127.0.0.1; the key tells the callers apart.
    assert_eq!(get_with_key(&http, &base, Some("k1")).await, 200);
    assert_eq!(get_with_key(&http, &base, Some("k1")).await, 200);
    assert_eq!(get_with_key(&http, &base, Some("k1")).await, 503);
    assert_eq!(get_with_key(&http, &base, Some("k2")).await, 200);
    assert_eq!(get_with_key(&http, &base, Some("k2")).await, 200);
    assert_eq!(get_with_key(&http, &base, Some("k2")).await, 503);
    // No key: not limited (nginx does not account an empty key).
    for i in 0..5 {
        assert_eq!(get_with_key(&http, &base, None).await, 200, "request {i}");
    }
    assert_eq!(a.hits(), 4 + 5);

    // Back to the default key (the client address): the address's own bucket applies.
    cfg.limit_req_key = String::new();
    h.reload(cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get_with_key(&http, &base, Some("k3")).await);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 503], "keyed on 127.0.0.1 again");
    h.stop(true).await;
}
