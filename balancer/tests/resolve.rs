//! Upstreams given by host name follow their name (`resolve_interval`, nginx's `resolve`): an
//! upstream whose name comes to resolve elsewhere moves there without a reload, with its health
//! started afresh; a failed look-up or a reordered answer keeps the address in use; a reload
//! keeps an installed resolver.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrocat_balancer::{Resolver, UpstreamConfig};

use common::{client, config, get_json, start, Upstream};

/// What the test's name service answers for `app.test:80`.
type Answer = Arc<Mutex<std::io::Result<Vec<SocketAddr>>>>;

fn name_service(answer: &Answer) -> Resolver {
    let answer = answer.clone();
    Resolver::new(move |address| {
        if address != "app.test:80" {
            return Err(std::io::Error::other(format!("unknown name {address}")));
        }
        match &*answer.lock().unwrap() {
            Ok(addrs) => Ok(addrs.clone()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    })
}

/// GETs `/x` until the body is `want` (at most 10 s); returns the last status and body.
async fn until_served_by(http: &reqwest::Client, base: &str, want: &str) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/x")).send().await {
            last = (r.status().as_u16(), r.text().await.unwrap_or_default());
            if last.1 == want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_follows_its_name_to_a_new_address() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let answer: Answer = Arc::new(Mutex::new(Ok(vec![a.addr])));
    let mut cfg = config(&[]);
    let mut up = UpstreamConfig::new("app.test:80");
    up.max_fails = 1;
    up.fail_timeout = Duration::from_secs(60);
    cfg.upstream = vec![up];
    cfg.resolver = Some(name_service(&answer));
    cfg.resolve_interval = Duration::from_secs(1);
    cfg.status_path = Some("/_status".into());
    cfg.proxy_next_upstream_tries = 1;
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let r = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "a");

    // The app moves (its old address is gone, and was marked down there): the upstream follows
    // its name, and its health starts afresh instead of waiting out the 60 s suspension.
    a.kill();
    let r = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    *answer.lock().unwrap() = Ok(vec![b.addr]);
    assert_eq!(until_served_by(&http, &base, "b").await, (200, "b".into()));
    let page = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(page["upstreams"][0]["resolved"], b.addr.to_string());
    assert_eq!(page["upstreams"][0]["state"], "up");
    let generation = page["config_generation"].clone();

    // A failed look-up, and an answer that still holds the address in use (in another order),
    // keep it.
    *answer.lock().unwrap() = Err(std::io::Error::other("SERVFAIL"));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    *answer.lock().unwrap() = Ok(vec![a.addr, b.addr]);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "b");
    let page = get_json(&http, &format!("{base}/_status")).await;
    assert_eq!(page["config_generation"], generation, "nothing was rebuilt");

    // A reload from a config without a resolver (as SIGHUP reads it from a file) keeps the
    // installed one: the name still resolves.
    let mut reloaded = cfg.clone();
    reloaded.resolver = None;
    h.reload(reloaded).unwrap();
    let r = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "b");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resolve_interval_a_name_is_resolved_once() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let answer: Answer = Arc::new(Mutex::new(Ok(vec![a.addr])));
    let mut cfg = config(&[]);
    cfg.upstream = vec![UpstreamConfig::new("app.test:80")];
    cfg.resolver = Some(name_service(&answer));
    let (h, base) = start(cfg).await;
    let http = client();
    *answer.lock().unwrap() = Ok(vec![b.addr]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "a");
    h.stop(true).await;
    // A name that does not resolve when the config is applied is a config error.
    let mut bad = config(&[]);
    bad.upstream = vec![UpstreamConfig::new("nowhere.test:80")];
    bad.resolver = Some(name_service(&answer));
    let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
    assert!(
        err.to_string().contains("balancer.upstream[0].address"),
        "{err}"
    );
}

#[test]
fn resolve_interval_is_read_from_toml() {
    let cfg: ferrocat_balancer::BalancerConfig = toml::from_str(
        r#"
resolve_interval = "30s"

[[upstream]]
address = "127.0.0.1:9"
"#,
    )
    .unwrap();
    assert_eq!(cfg.resolve_interval, Duration::from_secs(30));
    assert!(cfg.resolver.is_none());
}
