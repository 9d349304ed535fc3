//! `access` (nginx's `allow` / `deny` by client address): rules checked in order, the first
//! match decides, 403 before any upstream is contacted, on the address `set_real_ip_from`
//! names; a reload changes them; a bad entry is a config error naming it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, start, Upstream};

/// GET `/` as client `ip` (named through `X-Real-IP` by the trusted loopback proxy).
async fn status_as(http: &reqwest::Client, base: &str, ip: &str) -> u16 {
    http.get(format!("{base}/"))
        .header("x-real-ip", ip)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_rule_decides_and_denied_clients_reach_no_upstream() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.set_real_ip_from = vec!["127.0.0.1".into()];
    cfg.access = vec![
        "allow 203.0.113.0/24".into(),
        "deny 198.51.100.7".into(),
        "allow 198.51.100.0/24".into(),
        "deny all".into(),
    ];
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let mut served = 0;
    for (ip, want) in [
        ("203.0.113.9", 200),
        ("198.51.100.7", 403),
        ("198.51.100.8", 200),
        ("192.0.2.1", 403),
        ("2001:db8::1", 403),
    ] {
        assert_eq!(status_as(&http, &base, ip).await, want, "{ip}");
        served += usize::from(want == 200);
    }
    assert_eq!(a.hits(), served, "a denied request reaches no upstream");
    // The connection's own address counts when no trusted proxy names another one.
    cfg.set_real_ip_from.clear();
    cfg.access = vec!["deny 127.0.0.1".into()];
    h.reload(cfg.clone()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(status_as(&http, &base, "203.0.113.9").await, 403);
    cfg.access.clear();
    h.reload(cfg).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(status_as(&http, &base, "192.0.2.1").await, 200);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_access_entry_is_a_config_error_naming_it() {
    use ferrocat_balancer::Balancer;
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.access = vec!["allow 10.0.0.0/8".into(), "permit all".into()];
    let Err(e) = Balancer::start(cfg).await else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("balancer.access[1]"), "{e}");
}
