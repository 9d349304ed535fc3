//! 413, 403 and the headers passed to upstreams.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{client, config, get, raw_exchange, start, Upstream};

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
    // The rule sees the path as the app server resolves it: escapes decoded, slashes merged,
    // dot segments resolved (sent raw: an HTTP client library would resolve some itself).
    for path in [
        "/%57EB-INF/web.xml",
        "//WEB-INF/web.xml",
        "/img/../WEB-INF/web.xml",
        "/./WEB-INF/web.xml",
        "/img/%2e%2e/WEB-INF/web.xml",
        "/img%2f..%2fWEB-INF/web.xml",
    ] {
        let got = raw_exchange(
            &base,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 403 "), "{path}: {got}");
    }
    // A path that climbs above the root, or a broken escape: 400, as nginx.
    for path in [
        "/../WEB-INF/web.xml",
        "/img/%2e%2e/%2e%2e/x",
        "/a%zz",
        "/a%00",
    ] {
        let got = raw_exchange(
            &base,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400 "), "{path}: {got}");
    }
    // Harmless forms still pass, as the client sent them.
    let got = raw_exchange(
        &base,
        b"GET /static//a/./b/../c%20d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    assert_eq!(a.hits(), 2);
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

/// A raw upstream that answers `/upload` with its own 413 as soon as it has the head (before
/// reading the body) and closes, and `/ok` with 200; counts the requests it saw.
async fn early_answering_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    let uploads = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = uploads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = up.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let answer: &[u8] = if head.starts_with(b"POST /upload") {
                    seen.fetch_add(1, Ordering::SeqCst);
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                let _ = s.write_all(answer).await;
                // Closed with the body unread: the kernel resets the connection when more arrives.
            });
        }
    });
    (addr, uploads)
}

/// Sends `head` and then `body` (ignoring write errors) while reading the answer; returns it.
async fn upload(addr: &str, head: &'static [u8], body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head).await.is_ok() {
            for part in body.chunks(64 * 1024) {
                if wr.write_all(part).await.is_err() {
                    break;
                }
            }
        }
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&answer).contains("too large") {
            match rd.read(&mut buf).await {
                Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    drop(writer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upstream that answers before it has read the whole body (its own 413, as a server with a
/// smaller limit does) gets its answer passed on, as nginx does, instead of a 502; it is not
/// counted as failed, and the request is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_before_the_whole_body_is_passed_on() {
    use std::sync::atomic::Ordering;
    let (up_addr, uploads) = early_answering_upstream().await;
    let mut cfg = ferrocat_balancer::BalancerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        // No limit and no request buffering: both bodies are streamed to the upstream as
        // they arrive.
        client_max_body_size: 0,
        proxy_request_buffering: false,
        upstream: vec![ferrocat_balancer::UpstreamConfig::new(up_addr.to_string())],
        ..ferrocat_balancer::BalancerConfig::default()
    };
    cfg.proxy_next_upstream_tries = 3;
    let (h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();

    let big = vec![b'x'; 8 << 20];
    let answer = upload(
        &addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n",
        big.clone(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("too large"), "{answer:?}");

    let mut chunked = Vec::new();
    for _ in 0..8 {
        chunked.extend_from_slice(b"100000\r\n");
        chunked.extend_from_slice(&big[..1 << 20]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = upload(
        &addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunked.clone(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("too large"), "{answer:?}");

    // Each upload reached the upstream once; a 4xx is no failure: the upstream still serves.
    assert_eq!(uploads.load(Ordering::SeqCst), 2);
    let (status, _) = get(&client(), &format!("{base}/ok")).await;
    assert_eq!(status, 200);
    h.stop(false).await;

    // Under a large limit a chunked body is taken in first (the part past 1 MiB in a temp file)
    // and then sent, and so is a `Content-Length` one (`proxy_request_buffering`, the
    // default): the early answer comes through as well.
    let mut cfg = ferrocat_balancer::BalancerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        client_max_body_size: 64 << 20,
        upstream: vec![ferrocat_balancer::UpstreamConfig::new(up_addr.to_string())],
        ..ferrocat_balancer::BalancerConfig::default()
    };
    cfg.proxy_next_upstream_tries = 3;
    let (h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let answer = upload(
        &addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunked,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("too large"), "{answer:?}");
    assert_eq!(uploads.load(Ordering::SeqCst), 3);
    let answer = upload(
        &addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n",
        big,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("too large"), "{answer:?}");
    assert_eq!(uploads.load(Ordering::SeqCst), 4);
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_intercept_errors_replaces_upstream_error_pages() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("50x.html");
    std::fs::write(&page, "<h1>sorry</h1>").unwrap();
    let a = Upstream::start("a").await;
    for intercept in [false, true] {
        let mut cfg = config(&[&a]);
        cfg.error_page = Some(page.clone());
        cfg.proxy_intercept_errors = intercept;
        let (h, base) = start(cfg).await;
        let http = client();
        for code in [500u16, 503] {
            let r = http
                .get(format!("{base}/status/{code}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), code);
            let body = r.text().await.unwrap();
            // The fake upstream's own error body is its name.
            let expected = if intercept { "<h1>sorry</h1>" } else { "a" };
            assert_eq!(body, expected, "intercept = {intercept}, {code}");
        }
        // Other statuses pass either way, and the client connection still works.
        let r = http.get(format!("{base}/status/404")).send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap()),
            (404, "a".into())
        );
        assert_eq!(get(&http, &format!("{base}/")).await.0, 200);
        h.stop(true).await;
    }
}

/// The head of each answer in `raw` (a stream of answers) and what follows it up to the next
/// answer's status line.
fn answers(raw: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(at) = rest.find("\r\n\r\n") {
        let head = rest[..at].to_owned();
        let after = &rest[at + 4..];
        let next = after.find("HTTP/1.1 ").unwrap_or(after.len());
        out.push((head, after[..next].to_owned()));
        rest = &after[next..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_answered_by_the_balancer_gets_no_body() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.deny = vec!["^/(WEB-INF)/".into()];
    let (h, base) = start(cfg).await;
    // Pipelined on one kept-alive connection: a body after the HEAD's 403 would be read as
    // the start of the next answer.
    let raw = raw_exchange(
        &base,
        b"HEAD /WEB-INF/web.xml HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /WEB-INF/web.xml HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = answers(&raw);
    assert_eq!(got.len(), 3, "{raw}");
    assert!(got[0].0.starts_with("HTTP/1.1 403 "), "{raw}");
    assert_eq!(got[0].1, "", "the HEAD's 403 has no body: {raw}");
    assert!(
        got[0].0.contains("Content-Length: "),
        "it says the GET's length: {raw}"
    );
    assert!(
        got[1].0.starts_with("HTTP/1.1 403 ") && got[1].1.contains("403"),
        "{raw}"
    );
    assert!(
        got[2].0.to_ascii_lowercase().contains("x-upstream: a"),
        "{raw}"
    );
    assert_eq!(got[2].1, "", "{raw}");
    h.stop(true).await;
    // All upstreams down: the 502 page, head only for HEAD.
    let cfg = config(&[&a]);
    a.kill();
    let (h, base) = start(cfg).await;
    let raw = raw_exchange(
        &base,
        b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nHEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = answers(&raw);
    assert_eq!(got.len(), 2, "{raw}");
    for (head, body) in &got {
        assert!(head.starts_with("HTTP/1.1 502 "), "{raw}");
        assert_eq!(body, "", "{raw}");
    }
    h.stop(true).await;
}
