#![allow(clippy::unwrap_used)]
//! Node failures against real memcached processes: frozen, killed, restarted.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{client, key, opts};
use ferrocat_memcached::{McError, NodeClient, SetMode};
use ferrocat_testkit::Memcached;

/// Poll `f` until it returns true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn frozen_server_times_out_within_the_operation_timeout_and_recovers_after_sigcont() {
    let mut m = Memcached::start();
    let c = client(&m); // 500 ms operation timeout
    let k = key("k");
    c.set(&k, b"v", 0, 0, SetMode::Set).await.unwrap();
    m.freeze();
    for _ in 0..2 {
        let t0 = Instant::now();
        let err = c.get(&k).await.unwrap_err();
        let took = t0.elapsed();
        assert!(err.is_timeout() && err.is_node_failure(), "{err:?}");
        assert!(took >= Duration::from_millis(450), "{took:?}");
        assert!(took < Duration::from_millis(800), "timeout took {took:?}");
    }
    m.unfreeze();
    let t0 = Instant::now();
    assert_eq!(&c.get(&k).await.unwrap().unwrap().value[..], b"v");
    assert!(t0.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn many_concurrent_ops_on_a_frozen_server_all_time_out_promptly() {
    let mut m = Memcached::start();
    let c = client(&m);
    c.noop().await.unwrap();
    m.freeze();
    let t0 = Instant::now();
    let ops = (0..200).map(|i| {
        let c = c.clone();
        async move { c.get(&key(&format!("k{i}"))).await }
    });
    let results = futures::future::join_all(ops).await;
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(e) if e.is_timeout())));
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    m.unfreeze();
    c.noop().await.unwrap();
}

#[tokio::test]
async fn killed_server_fails_in_flight_requests_without_waiting_for_the_timeout() {
    let mut m = Memcached::start();
    let c = NodeClient::new(m.addr(), opts().operation_timeout(Duration::from_secs(5)));
    c.noop().await.unwrap();
    m.freeze();
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(&key("k")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    m.kill();
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(
        matches!(err, McError::Io { .. }) && err.is_node_failure(),
        "{err:?}"
    );
}

#[tokio::test]
async fn killed_server_is_refused_quickly_and_a_restarted_one_is_reconnected_by_itself() {
    let mut m = Memcached::start();
    let c = client(&m);
    c.set(&key("k"), b"v", 0, 0, SetMode::Set).await.unwrap();
    m.kill();
    // The broken connection is noticed, then connects are refused.
    let mut refused = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let err = c.get(&key("k")).await.unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert!(err.is_node_failure(), "{err:?}");
        refused += usize::from(err.is_refused());
    }
    assert!(refused >= 4, "expected refused errors, got {refused}");
    m.restart();
    let back = eventually(Duration::from_secs(2), || async { c.noop().await.is_ok() }).await;
    assert!(back, "client did not reconnect to the restarted server");
    assert_eq!(c.get(&key("k")).await.unwrap(), None, "restarted empty");
    c.set(&key("k"), b"v2", 0, 0, SetMode::Set).await.unwrap();
}

#[tokio::test]
async fn client_works_when_the_server_starts_after_the_client() {
    let mut m = Memcached::start();
    m.kill();
    let c = client(&m);
    assert!(c.noop().await.unwrap_err().is_refused());
    m.restart();
    assert!(eventually(Duration::from_secs(2), || async { c.noop().await.is_ok() }).await);
}

fn curr_connections(m: &Memcached) -> u64 {
    let mut s = TcpStream::connect(m.addr()).unwrap();
    s.write_all(b"stats\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.strip_prefix("STAT curr_connections ") {
            return v.trim().parse().unwrap();
        }
        assert_ne!(line, "END\r\n");
    }
}

#[tokio::test]
async fn one_sequential_caller_uses_one_connection() {
    let m = Memcached::start();
    let base = curr_connections(&m);
    let c = NodeClient::new(m.addr(), opts().connections(3));
    for i in 0..20 {
        c.get(&key(&format!("k{i}"))).await.unwrap();
    }
    assert_eq!(curr_connections(&m), base + 1);
}

#[tokio::test]
async fn dropping_the_client_closes_its_connections() {
    let m = Memcached::start();
    let base = curr_connections(&m);
    let c = NodeClient::new(m.addr(), opts().connections(3));
    // Enough concurrent requests to spill over onto every slot.
    let ops = (0..300).map(|i| {
        let c = c.clone();
        async move { c.get(&key(&format!("k{i}"))).await.unwrap() }
    });
    futures::future::join_all(ops).await;
    assert_eq!(curr_connections(&m), base + 3);
    drop(c);
    let closed = eventually(Duration::from_secs(2), || async {
        curr_connections(&m) == base
    })
    .await;
    assert!(closed, "connections still open: {}", curr_connections(&m));
}

#[tokio::test]
async fn a_long_freeze_replaces_the_stalled_connection_and_the_client_recovers() {
    let mut m = Memcached::start();
    let c = client(&m); // 500 ms timeout: the watchdog drops the connection after 1 s
    c.set(&key("k"), b"v", 0, 0, SetMode::Set).await.unwrap();
    m.freeze();
    let frozen_until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < frozen_until {
        assert!(c.get(&key("k")).await.unwrap_err().is_node_failure());
    }
    m.unfreeze();
    let back = eventually(Duration::from_secs(1), || async {
        matches!(c.get(&key("k")).await, Ok(Some(_)))
    })
    .await;
    assert!(back, "client did not recover after SIGCONT");
}
