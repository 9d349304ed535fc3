//! `limit_conn` / `limit_conn_key` / `limit_conn_status` (nginx's `limit_conn` per client
//! address): a client with its limit of requests in flight is refused further ones before any
//! upstream is contacted, other clients are not, the place comes back when a request ends, a
//! reload keeps the counts, and a key template counts per key.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, config, get_json, start, Upstream};

/// GET `path` as client `ip` (named through `X-Real-IP` by the trusted loopback proxy), with
/// `x-api-key: key` if given.
async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    ip: &str,
    key: Option<&str>,
) -> (u16, String) {
    let mut r = http.get(format!("{base}{path}")).header("x-real-ip", ip);
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Waits until the upstream has seen `n` requests.
async fn hits_reach(up: &Upstream, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while up.hits() < n {
        assert!(Instant::now() < until, "upstream saw {} of {n}", up.hits());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_limit_is_refused_until_a_request_ends() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("50x.html");
    std::fs::write(&page, "<h1>too many at once</h1>").unwrap();
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.workers = 2;
    cfg.set_real_ip_from = vec!["127.0.0.1".into()];
    cfg.limit_conn = 2;
    cfg.error_page = Some(page);
    cfg.status_path = Some("/_status".into());
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    // Two slow requests of one client in flight (on two connections, whichever worker).
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move { get(&http, &base, "/slow/1500", "203.0.113.1", None).await })
        })
        .collect();
    hits_reach(&a, 2).await;
    let (status, body) = get(&http, &base, "/", "203.0.113.1", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("too many at once"), "{body}");
    assert_eq!(a.hits(), 2, "a refused request reaches no upstream");
    // Another client is not limited by them.
    assert_eq!(get(&http, &base, "/", "203.0.113.2", None).await.0, 200);
    let s = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(s["limit_conn"]["rejected"], 1, "{s}");
    assert_eq!(s["limit_conn"]["active"], 2, "{s}");
    // A reload keeps the counts of the requests in flight.
    h.reload(cfg.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&http, &base, "/", "203.0.113.1", None).await.0, 503);
    for t in slow {
        assert_eq!(t.await.unwrap().0, 200);
    }
    // Ended: the places are back.
    for i in 0..3 {
        assert_eq!(
            get(&http, &base, "/", "203.0.113.1", None).await.0,
            200,
            "request {i}"
        );
    }
    // The places come back once the requests have ended on the balancer's side, which may be
    // a moment after their clients got the answers (seen once in CI under load).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = get_json(&http, &format!("{base}/_status")).await;
        if s["limit_conn"]["active"] == 0 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["limit_conn"]["active"], 0, "{s}");
    // A reload that lowers the limit counts the requests already in flight; one that removes
    // it refuses nothing.
    let held = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { get(&http, &base, "/slow/800", "203.0.113.1", None).await })
    };
    let seen = a.hits();
    hits_reach(&a, seen + 1).await;
    cfg.limit_conn = 1;
    h.reload(cfg.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&http, &base, "/", "203.0.113.1", None).await.0, 503);
    cfg.limit_conn = 0;
    h.reload(cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&http, &base, "/", "203.0.113.1", None).await.0, 200);
    assert_eq!(held.await.unwrap().0, 200);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_key_counts_per_key_and_an_empty_key_is_not_limited() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.limit_conn = 1;
    cfg.limit_conn_key = "$http_x_api_key".into();
    cfg.limit_conn_status = 429;
    let (h, base) = start(cfg).await;
    let http = client();
    // All from 127.0.0.1: one slow request for key k1, and one without a key.
    let slow: Vec<_> = [Some("k1"), None]
        .into_iter()
        .map(|k| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move { get(&http, &base, "/slow/1000", "127.0.0.1", k).await })
        })
        .collect();
    hits_reach(&a, 2).await;
    let (status, body) = get(&http, &base, "/", "127.0.0.1", Some("k1")).await;
    assert_eq!(status, 429);
    assert!(body.contains("429 Too Many Requests"), "{body}");
    assert_eq!(get(&http, &base, "/", "127.0.0.1", Some("k2")).await.0, 200);
    for i in 0..3 {
        assert_eq!(
            get(&http, &base, "/", "127.0.0.1", None).await.0,
            200,
            "keyless request {i}"
        );
    }
    for t in slow {
        assert_eq!(t.await.unwrap().0, 200);
    }
    assert_eq!(get(&http, &base, "/", "127.0.0.1", Some("k1")).await.0, 200);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limit_conn_settings_name_the_key() {
    use ferrocat_balancer::Balancer;
    let a = Upstream::start("a").await;
    for (limit, key, status, named) in [
        (2, "", 200, "balancer.limit_conn_status"),
        (0, "$http_x_api_key", 503, "balancer.limit_conn_key"),
        (1 << 24, "", 503, "balancer.limit_conn"),
    ] {
        let mut cfg = config(&[&a]);
        cfg.limit_conn = limit;
        cfg.limit_conn_key = key.into();
        cfg.limit_conn_status = status;
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{limit} {key:?} {status} accepted")
        };
        assert!(e.to_string().contains(&format!("{named}:")), "{e}");
    }
}

/// A client that goes away in the middle of its request gives its place back: the count is
/// held by the request, whatever way it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_request_gives_its_place_back() {
    use tokio::io::AsyncWriteExt;
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.limit_conn = 1;
    cfg.status_path = Some("/_status".into());
    let (h, base) = start(cfg).await;
    let http = client();
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    hits_reach(&a, 1).await;
    assert_eq!(get(&http, &base, "/", "127.0.0.1", None).await.0, 503);
    drop(s);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let st = get_json(&http, &format!("{base}/_status")).await;
        if st["limit_conn"]["active"] == 0 {
            break;
        }
        assert!(Instant::now() < until, "the place was not given back: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&http, &base, "/", "127.0.0.1", None).await.0, 200);
    h.stop(true).await;
}
