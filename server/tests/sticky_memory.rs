//! A sticky app node's memory is bounded: the fix for "the app server ran out
//! of memory and its sessions were lost". 100,000 sessions on a node whose
//! cache holds 10,000: the process's RSS stays flat after the cache is full,
//! and evicted sessions are still served from memcached.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use ferrocat_testkit::Memcached;
use futures::StreamExt;
use serde_json::Value;

const SESSIONS: usize = 100_000;
const CACHE: usize = 10_000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn create_sessions(f: &Ferrocat, range: std::ops::Range<usize>) -> Vec<String> {
    let c = bare_client();
    futures::stream::iter(range)
        .map(|i| {
            let c = c.clone();
            let url = f.url("/api/cart");
            async move {
                // ~100 bytes of attributes per session.
                let item = format!("item-{i:06}-{}", "x".repeat(48));
                let res = c.post(url).form(&[("item", item)]).send().await.unwrap();
                assert_eq!(res.status(), 200);
                session_cookie(&res, "JSESSIONID").unwrap()
            }
        })
        .buffered(32)
        .collect()
        .await
}

#[actix_rt::test]
async fn sticky_cache_bounds_memory_and_evicted_sessions_come_from_memcached() {
    let mc = Memcached::start_with_args(&["-m", "256"]);
    let port = free_port();
    let toml = format!(
        r#"
[node]
name = "app1"
listen = "127.0.0.1:{port}"
workers = 2

[session]
memcached_nodes = "n1:{}"
sticky = true
cache_max_entries = {CACHE}
cookie_secret = "memory-test-secret-memory-test-secret!!"
"#,
        mc.addr()
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let f = Ferrocat::spawn("app", &toml, addr);
    let pid = f.child.id();

    let first = create_sessions(&f, 0..2 * CACHE).await;
    let rss_full = rss_kib(pid);
    let _ = create_sessions(&f, 2 * CACHE..SESSIONS).await;
    let rss_end = rss_kib(pid);
    eprintln!("RSS with a full cache: {rss_full} KiB; after {SESSIONS} sessions: {rss_end} KiB");

    let stats = stats(&f).await;
    assert!(
        stats["cached_sessions"].as_u64().unwrap() <= CACHE as u64,
        "{stats}"
    );
    assert!(
        stats["cache_evictions"].as_u64().unwrap() >= (SESSIONS - CACHE) as u64,
        "{stats}"
    );
    // 80,000 more sessions (about 20 MB of session data and cache entries if
    // they were all kept) must not grow the process by more than a few MB.
    assert!(
        rss_end < rss_full + 12 * 1024,
        "RSS grew from {rss_full} KiB to {rss_end} KiB: the cache is not bounded"
    );

    // The very first session was evicted long ago: it comes from memcached.
    let c = bare_client();
    let res = c
        .get(f.url("/api/cart"))
        .header("cookie", format!("JSESSIONID={}", first[0]))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["items"][0].as_str().unwrap(),
        format!("item-000000-{}", "x".repeat(48))
    );
}
