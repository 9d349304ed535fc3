//! The status page (`status_path`): each upstream's state and counters as JSON, answered by
//! the balancer itself; HEAD has no body; deny rules still apply; off by default.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{client, config, start, Upstream};
use serde_json::Value;

async fn status(http: &reqwest::Client, url: &str) -> Value {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

fn by_route<'a>(page: &'a Value, route: &str) -> &'a Value {
    page["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["route"] == route)
        .unwrap_or_else(|| panic!("no upstream with route {route} in {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_a_failed_upstream_suspended_and_counts_attempts() {
    let a = Upstream::start("a").await;
    let dead = Upstream::start("dead").await;
    dead.kill();
    let mut cfg = config(&[&a, &dead]);
    for (u, route) in cfg.upstream.iter_mut().zip(["a", "dead"]) {
        u.route = Some(route.into());
        u.max_fails = 1;
        u.fail_timeout = Duration::from_secs(30);
    }
    cfg.upstream[1].weight = 3;
    cfg.status_path = Some("/_status".into());
    let (h, base) = start(cfg.clone()).await;
    let http = client();

    let page = status(&http, &format!("{base}/_status")).await;
    assert_eq!(by_route(&page, "a")["state"], "up");
    assert_eq!(by_route(&page, "dead")["state"], "up");
    assert_eq!(by_route(&page, "dead")["weight"], 3);
    assert_eq!(by_route(&page, "a")["attempts"], 0);

    // Four GETs: the dead upstream (weight 3) is tried first, fails, is suspended after one
    // failure (max_fails = 1), and every request is answered by `a`.
    for _ in 0..4 {
        let r = http.get(format!("{base}/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "a");
    }
    assert_eq!(a.hits(), 4);

    // The health owner (its own thread) applies the suspension it was told of; on a busy
    // machine the page may be asked before it did.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let page = loop {
        let page = status(&http, &format!("{base}/_status?fresh=1")).await;
        if by_route(&page, "dead")["state"] == "suspended" || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let d = by_route(&page, "dead");
    assert_eq!(d["state"], "suspended", "{page}");
    // Usually 1; on a busy machine a request or two may reach it before the health owner
    // applied the suspension (each was retried on `a`).
    let tries = d["attempts"].as_u64().unwrap();
    assert!((1..=4).contains(&tries), "{page}");
    assert_eq!(d["failures"], tries, "{page}");
    let retry = d["retry_in_ms"].as_u64().unwrap();
    assert!(retry > 20_000 && retry <= 30_000, "{retry}");
    let up = by_route(&page, "a");
    assert_eq!(up["state"], "up");
    assert_eq!(up["attempts"], 4);
    assert_eq!(up["failures"], 0);
    assert_eq!(up["active"], 0);
    // The page is the balancer's own: no upstream saw it.
    assert_eq!(a.hits(), 4);

    // A reload (a new weight) keeps the counters and the passive health state.
    let mut cfg2 = cfg.clone();
    cfg2.upstream[0].weight = 2;
    h.reload(cfg2).unwrap();
    let page = status(&http, &format!("{base}/_status")).await;
    assert_eq!(by_route(&page, "a")["weight"], 2);
    assert_eq!(by_route(&page, "a")["attempts"], 4);
    assert_eq!(by_route(&page, "dead")["attempts"], tries);
    assert_eq!(by_route(&page, "dead")["state"], "suspended");

    // HEAD: same headers, no body.
    let r = http.head(format!("{base}/_status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 100);
    assert!(r.bytes().await.unwrap().is_empty());

    // Other methods and other paths are proxied.
    let r = http.post(format!("{base}/_status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "a");
    let r = http.get(format!("{base}/_status/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "a");
    assert_eq!(a.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_rule_wins_over_the_page() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.status_path = Some("/_status".into());
    cfg.deny = vec!["^/_status$".into()];
    let (_h, base) = start(cfg).await;
    let r = client()
        .get(format!("{base}/_status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(a.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_off_by_default() {
    let a = Upstream::start("a").await;
    let (_h, base) = start(config(&[&a])).await;
    let r = client()
        .get(format!("{base}/ferrocat/upstreams"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "a");
    assert_eq!(a.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_failing_full_and_down_upstreams() {
    let a = Upstream::start("a").await;
    let dead = Upstream::start("dead").await;
    let off = Upstream::start("off").await;
    dead.kill();
    let mut cfg = config(&[&a, &dead, &off]);
    cfg.upstream[0].max_conns = 1;
    cfg.upstream[2].down = true;
    cfg.health_check = Some(ferrocat_balancer::config::HealthCheckConfig {
        path: "/".into(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        expect_status: Vec::new(),
    });
    cfg.status_path = Some("/_status".into());
    let (_h, base) = start(cfg).await;
    let http = client();

    // Active checks find the killed upstream failing; `a` stays up.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = status(&http, &format!("{base}/_status")).await;
        if by_route(&page, "dead")["state"] == "failing" {
            assert_eq!(by_route(&page, "a")["state"], "up", "{page}");
            assert_eq!(by_route(&page, "off")["state"], "down", "{page}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never failing: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One slow request holds `a`'s only connection (max_conns = 1): `a` is full meanwhile.
    let slow = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/slow/1500"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let page = status(&http, &format!("{base}/_status")).await;
        let up = by_route(&page, "a");
        if up["active"] == 1 {
            assert_eq!(up["state"], "full", "{page}");
            assert_eq!(up["max_conns"], 1, "{page}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never active: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.await.unwrap(), 200);
    let page = status(&http, &format!("{base}/_status")).await;
    assert_eq!(by_route(&page, "a")["state"], "up", "{page}");
    assert_eq!(by_route(&page, "a")["active"], 0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_in_status_allow_read_the_page() {
    let a = Upstream::start("a").await;
    let http = client();

    // The default allows loopback (the other tests read it from 127.0.0.1).
    let mut cfg = config(&[&a]);
    cfg.status_path = Some("/_status".into());
    assert_eq!(cfg.status_allow, vec!["127.0.0.0/8", "::1"]);

    // A list without loopback: 403 for this client, and the upstream never sees the path.
    cfg.status_allow = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
    let (h, base) = start(cfg.clone()).await;
    let r = http.get(format!("{base}/_status")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(a.hits(), 0);
    // Other paths are proxied as before.
    let r = http.get(format!("{base}/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "a");

    // A reload that adds this client's address opens it.
    cfg.status_allow.push("127.0.0.1".into());
    h.reload(cfg.clone()).unwrap();
    status(&http, &format!("{base}/_status")).await;

    // A bad range is a config error naming the entry.
    cfg.status_allow = vec!["127.0.0.0/8".into(), "127.0.0.300/8".into()];
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.key, "balancer.status_allow[1]");
}

/// One GET over `s` (kept alive); returns the status and the body.
async fn raw_get(s: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if buf.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_client_connections_and_requests_over_every_worker() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.workers = 2;
    cfg.status_path = Some("/_status".into());
    let (h, base) = start(cfg).await;
    let addr = base.trim_start_matches("http://").to_owned();
    // Three clients with one kept-alive connection each, 5 requests apiece.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        for _ in 0..5 {
            assert_eq!(raw_get(&mut s, "/").await.0, 200);
        }
        conns.push(s);
    }
    let (status, body) = raw_get(&mut conns[0], "/_status").await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["connections"]["accepted"], 3, "{page}");
    assert_eq!(page["connections"]["active"], 3, "{page}");
    assert_eq!(page["requests"], 16, "15 and this one: {page}");
    drop(conns);
    // Closed connections are no longer active.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let page: Value = serde_json::from_str(&raw_get(&mut s, "/_status").await.1).unwrap();
        if page["connections"]["active"] == 1 {
            assert!(
                page["connections"]["accepted"].as_u64().unwrap() >= 4,
                "{page}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        drop(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop(true).await;
}

/// The samples of a Prometheus text page by series (name with labels), after checking every
/// line's form: each family has `# HELP` and `# TYPE` before its samples, counters end in
/// `_total`.
fn prometheus_samples(text: &str) -> std::collections::HashMap<String, f64> {
    let sample = regex::Regex::new(
        r#"^(ferrocat_balancer_[a-z_]+)(\{([a-z_]+="[^"\\]*(\\.[^"\\]*)*",?)*\})? (-?[0-9.e+]+)$"#,
    )
    .unwrap();
    let mut typed = std::collections::HashMap::new();
    let mut out = std::collections::HashMap::new();
    let mut helped = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = rest.split(' ').next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(helped.as_deref(), Some(name), "HELP before TYPE: {line}");
            assert!(kind == "counter" || kind == "gauge", "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
        } else {
            let c = sample
                .captures(line)
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            assert!(typed.contains_key(&c[1]), "TYPE before samples: {line}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            out.insert(series.to_owned(), value.parse().unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_figures_come_in_prometheus_text_format() {
    let a = Upstream::start("a").await;
    let dead = Upstream::start("dead").await;
    dead.kill();
    let mut cfg = config(&[&a, &dead]);
    for (u, route) in cfg.upstream.iter_mut().zip(["a", "dead"]) {
        u.route = Some(route.into());
        u.fail_timeout = Duration::from_secs(30);
    }
    cfg.status_path = Some("/_status".into());
    cfg.proxy_cache = true;
    let (h, base) = start(cfg).await;
    let http = client();
    for _ in 0..4 {
        let r = http.get(format!("{base}/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // The health owner suspends the dead upstream when it gets the failure report, a moment
    // after the request that failed (which may let another request try it first).
    let mut json_pages = 0;
    let json = loop {
        let page = status(&http, &format!("{base}/_status")).await;
        json_pages += 1;
        if by_route(&page, "dead")["state"] == "suspended" || json_pages == 250 {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = http
        .get(format!("{base}/_status?x=1&format=prometheus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let m = prometheus_samples(&text);
    let (a_addr, dead_addr) = (a.addr.to_string(), dead.addr.to_string());
    let series = |name: &str, addr: &str, route: &str| {
        format!("ferrocat_balancer_{name}{{address=\"{addr}\",route=\"{route}\",pool=\"\"}}")
    };
    assert_eq!(
        m[&series("upstream_attempts_total", &a_addr, "a")],
        4.0,
        "{text}"
    );
    let failures = m[&series("upstream_failures_total", &dead_addr, "dead")];
    assert!(failures >= 1.0);
    assert_eq!(Some(failures), by_route(&json, "dead")["failures"].as_f64());
    let state = |addr: &str, route: &str, s: &str| {
        m[&format!(
            "ferrocat_balancer_upstream_state{{address=\"{addr}\",route=\"{route}\",pool=\"\",state=\"{s}\"}}"
        )]
    };
    assert_eq!(state(&a_addr, "a", "up"), 1.0);
    assert_eq!(state(&a_addr, "a", "suspended"), 0.0);
    assert_eq!(state(&dead_addr, "dead", "suspended"), 1.0);
    assert_eq!(state(&dead_addr, "dead", "up"), 0.0);
    // The four GETs, the JSON pages and this page's own request.
    assert_eq!(
        m["ferrocat_balancer_requests_total"],
        f64::from(4 + json_pages + 1)
    );
    assert!(m["ferrocat_balancer_connections_accepted_total"] >= 1.0);
    assert_eq!(m["ferrocat_balancer_config_generation"], 1.0);
    assert_eq!(m["ferrocat_balancer_cache_misses_total"], 4.0);
    assert!(m.contains_key("ferrocat_balancer_cache_max_size_bytes"));
    assert!(
        !m.keys().any(|k| k.contains("limit_req")),
        "no limit_req configured"
    );
    // Without the query, JSON as before.
    status(&http, &format!("{base}/_status?format=json")).await;
    h.stop(true).await;
}
