//! Time limits on clients: `client_keepalive_timeout`, `client_header_timeout` and
//! `client_body_timeout` (408) close what a slow or idle client holds open.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{config, start, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the balancer closes the connection (or 5 s pass); returns what came and when.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_head_and_stalled_body_are_cut_off() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.client_keepalive_timeout = Duration::from_millis(300);
    cfg.client_header_timeout = Duration::from_millis(300);
    cfg.client_body_timeout = Duration::from_millis(300);
    let (_h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();

    // Idle after one request: closed after the keep-alive time-out.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, took) = read_to_close(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Half a head: closed, nothing passed on.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let (got, took) = read_to_close(&mut s).await;
    assert!(got.is_empty(), "{got}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A body that stops: 408, nothing passed on.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let (got, took) = read_to_close(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_client_timeout_is_rejected_by_name() {
    let mut cfg = config(&[]);
    cfg.client_body_timeout = Duration::ZERO;
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.key, "balancer.client_body_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.send_timeout = Duration::from_millis(300);
    let (_h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();

    // 1 GiB that the client does not read for 2 s: the socket buffers fill, the balancer
    // waits send_timeout and closes; reading then ends long before the whole body.
    let total: u64 = 1 << 30;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /big/{total} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(got > 0 && got < total / 4, "{got} bytes read");
}
