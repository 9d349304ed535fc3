//! 413, 403 and the headers passed to upstreams.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{client, config, get, start, Upstream};

/// Sends `count` chunks of `size` bytes of `byte` as a chunked body (no Content-Length).
async fn send_chunked(
    req: reqwest::RequestBuilder,
    count: usize,
    size: usize,
    byte: u8,
) -> reqwest::Response {
    let chunks = (0..count).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![byte; size])));
    req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_before_any_upstream_is_contacted() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.client_max_body_size = 1 << 20;
    let (h, base) = start(cfg).await;
    let http = client();
    // Content-Length larger than the limit.
    let r = http
        .post(format!("{base}/upload"))
        .body(vec![0u8; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Chunked body that grows past the limit.
    let r = send_chunked(http.post(format!("{base}/upload")), 40, 32 * 1024, 1).await;
    assert_eq!(r.status(), 413);
    assert_eq!(a.hits(), 0, "the upstream was never contacted");
    // Within the limit: passed on, chunked too.
    let r = send_chunked(http.post(format!("{base}/upload")), 8, 32 * 1024, 1).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), (8 * 32 * 1024).to_string());
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_paths_get_403() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.deny = vec!["^/(WEB-INF)/".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    assert_eq!(get(&http, &format!("{base}/WEB-INF/web.xml")).await.0, 403);
    assert_eq!(get(&http, &format!("{base}/static/WEB-INF/x")).await.0, 200);
    assert_eq!(a.hits(), 1);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_host_real_ip_and_forwarded_headers() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let http = client();
    let text = http
        .get(format!("{base}/headers"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("host: shop.example\n"), "{text}");
    assert!(text.contains("x-real-ip: 127.0.0.1\n"), "{text}");
    assert!(
        text.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(!text.contains("x-hop"), "{text}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_over_a_large_limit_get_413_before_any_upstream_is_contacted() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.client_max_body_size = 3 << 20;
    let (h, base) = start(cfg).await;
    let http = client();
    // 4 MiB chunked, over the 3 MiB limit: kept in memory up to 1 MiB, the rest in a temp file,
    // and refused once it passes the limit.
    let r = send_chunked(http.post(format!("{base}/upload")), 64, 64 * 1024, 1).await;
    assert_eq!(r.status(), 413);
    assert_eq!(a.hits(), 0, "the upstream was never contacted");
    // 2.5 MiB chunked, under the limit: spooled, then sent whole.
    let r = send_chunked(http.put(format!("{base}/upload")), 40, 64 * 1024, 2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), (40 * 64 * 1024).to_string());
    assert_eq!(a.hits(), 1);
    h.stop(true).await;
}
