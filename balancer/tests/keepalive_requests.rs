//! `client_keepalive_requests` and `keepalive_requests` (nginx's `keepalive_requests` towards
//! clients and in `upstream`): a connection serves at most that many requests, then closes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, start, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one GET on `s` and reads its whole response (the fake upstream answers with a
/// Content-Length); returns the head and whether the balancer closed the connection after it.
async fn exchange(s: &mut TcpStream, path: &str) -> (String, bool) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed before a whole head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    // After the body: either the end of the stream soon, or nothing (kept alive).
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await,
        Ok(Ok(0))
    );
    (head, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_closes_after_client_keepalive_requests() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.client_keepalive_requests = 3;
    let (_h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();

    let mut s = TcpStream::connect(&addr).await.unwrap();
    for i in 1..=3 {
        let (head, closed) = exchange(&mut s, "/").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let says_close = head.to_ascii_lowercase().contains("connection: close");
        assert_eq!(says_close, i == 3, "request {i}: {head}");
        assert_eq!(closed, i == 3, "request {i}");
    }
    assert_eq!(a.hits(), 3);

    // The balancer's own answers count too: a 403 from `deny` after one proxied request.
    let mut cfg = config(&[&a]);
    cfg.client_keepalive_requests = 2;
    cfg.deny = vec!["^/secret".into()];
    let (_h2, base) = start(cfg).await;
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (head, closed) = exchange(&mut s, "/").await;
    assert!(head.starts_with("HTTP/1.1 200") && !closed, "{head}");
    let (head, closed) = exchange(&mut s, "/secret").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_is_replaced_after_keepalive_requests() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.keepalive_requests = 4;
    cfg.client_keepalive_requests = 0; // no limit on the client side
    let (_h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();

    // 12 requests in sequence over one client connection: each upstream connection carries
    // 4 of them, so the upstream sees 3 connections; every answer is a 200 kept alive.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    for i in 1..=12 {
        let (head, closed) = exchange(&mut s, "/").await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(!closed, "request {i}");
    }
    assert_eq!(a.hits(), 12);
    assert_eq!(a.conns(), 3);

    // Without a limit one connection carries them all.
    let b = Upstream::start("b").await;
    let mut cfg = config(&[&b]);
    cfg.keepalive_requests = 0;
    let (_h2, base) = start(cfg).await;
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    for _ in 0..12 {
        exchange(&mut s, "/").await;
    }
    assert_eq!(b.hits(), 12);
    assert_eq!(b.conns(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_both_limits_on_live_connections() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.keepalive_requests = 0;
    cfg.client_keepalive_requests = 0;
    let (h, base) = start(cfg.clone()).await;
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    for _ in 0..4 {
        let (_, closed) = exchange(&mut s, "/").await;
        assert!(!closed);
    }
    assert_eq!(a.conns(), 1);

    // Now at most 2 requests per upstream connection, and 8 per client connection: the
    // kept-alive client connection (4 requests so far) gets 4 more, the last says close.
    cfg.keepalive_requests = 2;
    cfg.client_keepalive_requests = 8;
    h.reload(cfg).unwrap();
    for i in 5..=8 {
        let (head, closed) = exchange(&mut s, "/").await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert_eq!(closed, i == 8, "request {i}");
    }
    // The pooled connection counts the 4 requests it carried before: it is done after the
    // 5th; then requests 6-7 and 8 get their own.
    assert_eq!(a.hits(), 8);
    assert_eq!(a.conns(), 3);
}
