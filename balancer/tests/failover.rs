//! Failures: upstream killed under load, POST never resent, error page, time-outs, health.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{client, config, get, start, Upstream};
use ferrocat_balancer::{HealthCheckConfig, NextUpstream};

fn error_page() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/html/50x.html")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_load_fails_no_get() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (h, base) = start(config(&[&a, &b])).await;
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..150 {
                let path = if i % 10 == 0 { "/slow/20" } else { "/" };
                let r = http.get(format!("{base}{path}")).send().await;
                if !matches!(r, Ok(ref r) if r.status() == 200) {
                    failed += 1;
                }
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(b.hits() > 0, "b served before it was killed");
    b.kill();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    assert_eq!(failed, 0, "failed GETs");
    assert!(a.hits() > b.hits());
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_that_reached_an_upstream_is_never_sent_again() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut cfg = config(&[&a, &b]);
    cfg.proxy_read_timeout = Duration::from_millis(300);
    cfg.proxy_next_upstream = vec![
        NextUpstream::Error,
        NextUpstream::Timeout,
        NextUpstream::Http502,
    ];
    cfg.upstream.iter_mut().for_each(|u| u.max_fails = 0);
    let (h, base) = start(cfg).await;
    let http = client();
    // Time-out after the POST was sent: 504, not retried.
    let r = http
        .post(format!("{base}/slow/1000"))
        .body("order=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    // 502 from the upstream: passed through, not retried.
    let r = http
        .post(format!("{base}/status/502"))
        .body("order=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        a.posts.load(std::sync::atomic::Ordering::SeqCst)
            + b.posts.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    // The same for GET is retried on the other upstream.
    let before = a.hits() + b.hits();
    let r = http.get(format!("{base}/status/502")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        a.hits() + b.hits() - before,
        2,
        "GET tried on both upstreams"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_goes_to_the_next_upstream_when_the_first_refuses_the_connection() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (h, base) = start(config(&[&a, &b])).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let http = client();
    for i in 0..4 {
        let r = http
            .post(format!("{base}/"))
            .body(format!("n={i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upstream"], "b");
    }
    assert_eq!(b.posts.load(std::sync::atomic::Ordering::SeqCst), 4);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_serves_the_error_page_with_502() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut cfg = config(&[&a, &b]);
    cfg.error_page = Some(error_page());
    let (h, base) = start(cfg).await;
    a.kill();
    b.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let http = client();
    let page = std::fs::read_to_string(error_page()).unwrap();
    // First request: both refuse the connection; later ones: both are marked down.
    for _ in 0..3 {
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(r.text().await.unwrap(), page);
    }
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_times_out_with_504() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.proxy_read_timeout = Duration::from_millis(200);
    cfg.error_page = Some(error_page());
    let (h, base) = start(cfg).await;
    let http = client();
    let started = std::time::Instant::now();
    let r = http.get(format!("{base}/slow/3000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(r.text().await.unwrap().contains("An error occurred"));
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upstream_is_skipped_for_fail_timeout() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut cfg = config(&[&a, &b]);
    cfg.proxy_next_upstream = vec![NextUpstream::Error, NextUpstream::Http503];
    let (h, base) = start(cfg).await;
    let http = client();
    // One 503 from whichever upstream answers /status/503 marks it down (max_fails = 1).
    let r = http.get(format!("{base}/status/503")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "both answered 503, the last answer is passed on"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Both are down now: no live upstream.
    assert_eq!(get(&http, &format!("{base}/")).await.0, 502);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_takes_a_failing_upstream_out() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut cfg = config(&[&a, &b]);
    cfg.health_check = Some(HealthCheckConfig {
        path: "/status/200".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        rise: 1,
        fall: 2,
        expect_status: vec![200],
    });
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Expect a status no upstream answers: every check fails and both go down.
    let mut failing = cfg.clone();
    failing.health_check.as_mut().unwrap().expect_status = vec![299];
    h.reload(failing).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&http, &format!("{base}/")).await.0,
        502,
        "all upstreams failed their checks"
    );
    h.reload(cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&http, &format!("{base}/")).await.0,
        200,
        "checks pass again: back up"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_capped_by_tries() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut cfg = config(&[&a, &b]);
    cfg.proxy_next_upstream_tries = 1;
    cfg.proxy_next_upstream = vec![NextUpstream::Error, NextUpstream::Http503];
    cfg.upstream.iter_mut().for_each(|u| u.max_fails = 0);
    let (h, base) = start(cfg).await;
    let http = client();
    let r = http.get(format!("{base}/status/503")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(a.hits() + b.hits(), 1, "one try only");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_to_a_restarted_upstream_are_replaced_without_errors() {
    let a = Upstream::start("a").await;
    let addr = a.addr;
    let (h, base) = start(config(&[&a])).await;
    let http = client();
    // Fill the keep-alive pool with several connections.
    let warm: Vec<_> = (0..4)
        .map(|_| http.get(format!("{base}/slow/50")).send())
        .collect();
    for r in futures::future::join_all(warm).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    a.kill();
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let again = Upstream::start_at("a2", addr).await;
    let started = std::time::Instant::now();
    for _ in 0..6 {
        assert_eq!(get(&http, &format!("{base}/")).await, (200, "a2".into()));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stale connections cost {:?}",
        started.elapsed()
    );
    assert_eq!(again.hits(), 6);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_silent_in_the_middle_of_a_body_is_cut_after_read_timeout() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.proxy_read_timeout = Duration::from_millis(300);
    let (h, base) = start(cfg).await;
    let http = client();
    let started = std::time::Instant::now();
    let r = http.get(format!("{base}/stall/3000")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head arrived in time");
    assert!(r.bytes().await.is_err(), "the body is cut, not completed");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut after {:?}",
        started.elapsed()
    );
    // A body that keeps coming within the timeout completes.
    let r = http.get(format!("{base}/stall/100")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "partial-end");
    h.stop(true).await;
}

/// nginx's `proxy_ignore_client_abort off`: a client that closes its connection while the
/// upstream is still thinking makes the balancer drop the upstream connection (499), instead of
/// waiting for an answer nobody reads; the upstream sees its connection closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_the_answer_closes_the_upstream_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let mut cfg = ferrocat_balancer::BalancerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        proxy_read_timeout: Duration::from_secs(30),
        upstream: vec![ferrocat_balancer::UpstreamConfig::new(up_addr.to_string())],
        ..ferrocat_balancer::BalancerConfig::default()
    };
    cfg.proxy_next_upstream_tries = 1;
    let (h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();

    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    client
        .write_all(b"GET /think HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The upstream takes the request and never answers.
    let (mut upstream_side, _) = up.accept().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = upstream_side.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /think"));
    drop(client);
    // The balancer must now close the upstream connection (EOF), well before its 30 s read
    // time-out.
    let eof = tokio::time::timeout(Duration::from_secs(5), upstream_side.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
        "upstream connection still open after the client left: {eof:?}"
    );
    h.stop(false).await;
}

/// An upstream that reads what it is sent and closes each connection, without an answer, once
/// `enough` bytes have come on it; returns its address and the bytes it received in all.
async fn swallower(
    enough: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = total.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < enough {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got += n;
                            seen.fetch_add(n, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    (addr, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_put_body_is_sent_whole_again_to_the_next_upstream() {
    // 5 MiB goes through the temp file, 200 KiB stays in memory.
    for size in [5usize << 20, 200 << 10] {
        let (sink, received) = swallower(size).await;
        let a = Upstream::start("a").await;
        let mut cfg = config(&[&a]);
        cfg.upstream
            .insert(0, ferrocat_balancer::UpstreamConfig::new(sink.to_string()));
        cfg.upstream.iter_mut().for_each(|u| u.max_fails = 0);
        cfg.client_max_body_size = 64 << 20;
        let (h, base) = start(cfg).await;
        let http = client();
        for i in 0..2usize {
            // Bytes that differ by position, so a body resent from a wrong offset shows.
            let body: Vec<u8> = (0..size).map(|k| ((k * 7 + i) % 251) as u8).collect();
            let want = common::Digest::of(&body);
            let r = http
                .put(format!("{base}/digest"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "size {size}");
            assert_eq!(r.text().await.unwrap(), want);
        }
        // The first upstream got a whole body (at least once) before it hung up; the other
        // one got every request, each with its full body.
        let got = received.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            got >= size,
            "size {size}: the first upstream got {got} bytes"
        );
        assert_eq!(a.hits(), 2);
        h.stop(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_by_status_win_over_the_error_page() {
    let dir = tempfile::tempdir().unwrap();
    let page = |name: &str| {
        let path = dir.path().join(format!("{name}.html"));
        std::fs::write(&path, format!("<h1>{name}</h1>")).unwrap();
        path
    };
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.error_page = Some(error_page());
    cfg.error_pages = [
        ("403", page("forbidden")),
        ("413", page("too-large")),
        ("502", page("down")),
    ]
    .into_iter()
    .map(|(s, p)| (s.to_owned(), p))
    .collect();
    cfg.deny = vec!["^/secret".into()];
    cfg.client_max_body_size = 1000;
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let r = http.get(format!("{base}/secret/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "<h1>forbidden</h1>");
    let r = http
        .post(format!("{base}/upload"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.text().await.unwrap(), "<h1>too-large</h1>");
    a.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.text().await.unwrap(), "<h1>down</h1>");
    let mut bad = cfg.clone();
    bad.error_pages.insert("600".into(), page("x"));
    assert_eq!(h.reload(bad).unwrap_err().key, "balancer.error_pages.600");
    let mut missing = cfg;
    missing
        .error_pages
        .insert("404".into(), dir.path().join("none.html"));
    assert_eq!(
        missing.check_files().unwrap_err().key,
        "balancer.error_pages.404"
    );
    h.stop(true).await;
}
