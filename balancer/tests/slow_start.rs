//! `slow_start` (nginx's): an upstream that comes back gets a growing share of unbound
//! requests, from nearly none to its whole weight, over that time.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, config, get, get_json, start, Upstream};
use ferrocat_balancer::HealthCheckConfig;
use serde_json::Value;

/// Requests (of `n`, in sequence) that upstream `name` answered.
async fn share(http: &reqwest::Client, base: &str, name: &str, n: usize) -> usize {
    let mut count = 0;
    for _ in 0..n {
        let (status, up) = get(http, &format!("{base}/")).await;
        assert_eq!(status, 200);
        count += usize::from(up == name);
    }
    count
}

/// The status page's `warming` of the upstream at `address` (null while it is not up).
async fn warming(http: &reqwest::Client, base: &str, address: &str) -> Value {
    let page = get_json(http, &format!("{base}/_status")).await;
    let up = page["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == address)
        .unwrap()
        .clone();
    if up["state"] != "up" {
        return Value::Null;
    }
    up["warming"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_upstream_is_ramped_up_over_slow_start() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let b_addr = b.addr;
    let mut cfg = config(&[&a, &b]);
    cfg.upstream[1].slow_start = Duration::from_secs(3);
    cfg.status_path = Some("/_status".into());
    cfg.health_check = Some(HealthCheckConfig {
        path: "/status/200".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        rise: 1,
        fall: 1,
        expect_status: vec![200],
    });
    let (h, base) = start(cfg).await;
    let http = client();
    // Never down so far: the whole share at once.
    assert_eq!(
        warming(&http, &base, &b_addr.to_string()).await,
        Value::Null
    );
    assert_eq!(share(&http, &base, "b", 20).await, 10, "the whole share");

    b.kill();
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(share(&http, &base, "b", 10).await, 0, "b is down");
    let b2 = Upstream::start_at("b", b_addr).await;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(5);
    loop {
        let w = warming(&http, &base, &b_addr.to_string()).await;
        if w.is_f64() {
            assert!(w.as_f64().unwrap() < 0.5, "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "b never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Early in the 3 s: b takes a small part of what plain round robin would give it (half).
    let early = share(&http, &base, "b", 100).await;
    assert!(
        back.elapsed() < Duration::from_millis(1000),
        "too slow to measure: {:?}",
        back.elapsed()
    );
    eprintln!(
        "slow start: b took {early} of 100 early, in {:?}",
        back.elapsed()
    );
    assert!(early < 35, "b took {early} of 100 while warming up");
    // After it: its whole share again.
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(back.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let late = share(&http, &base, "b", 100).await;
    assert!((45..=55).contains(&late), "b took {late} of 100 once warm");
    drop(b2);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_is_refused_with_hash_methods() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.method = ferrocat_balancer::config::Method::IpHash;
    cfg.upstream[0].slow_start = Duration::from_secs(1);
    let Err(e) = ferrocat_balancer::Balancer::start(cfg).await else {
        panic!("accepted")
    };
    assert!(
        e.to_string().contains("balancer.upstream[0].slow_start"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_back_from_a_max_fails_suspension_is_ramped_up_too() {
    use ferrocat_balancer::NextUpstream;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let b_addr = b.addr.to_string();
    let mut cfg = config(&[&a, &b]);
    // A 503 counts as a failure; only `b` is suspended by one (for 500 ms), and ramps up
    // over 3 s once the suspension is over.
    cfg.proxy_next_upstream = vec![NextUpstream::Error, NextUpstream::Http503];
    cfg.upstream[0].max_fails = 0;
    cfg.upstream[1].max_fails = 1;
    cfg.upstream[1].fail_timeout = Duration::from_millis(500);
    cfg.upstream[1].slow_start = Duration::from_secs(3);
    cfg.status_path = Some("/_status".into());
    let (h, base) = start(cfg).await;
    let http = client();
    assert_eq!(share(&http, &base, "b", 20).await, 10, "the whole share");
    // Both answer 503 here: the request tries both, and `b` is suspended.
    let r = http.get(format!("{base}/status/503")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let w = warming(&http, &base, &b_addr).await;
        if w.is_f64() {
            break;
        }
        assert!(Instant::now() < deadline, "b never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = Instant::now();
    let early = share(&http, &base, "b", 100).await;
    assert!(
        back.elapsed() < Duration::from_millis(1000),
        "{:?}",
        back.elapsed()
    );
    assert!(early < 35, "b took {early} of 100 while warming up");
    h.stop(true).await;
}
