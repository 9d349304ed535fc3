//! Upstream pools (`[[balancer.pool]]`, nginx's several `upstream` blocks behind `location ~`
//! blocks): a request goes to the first pool whose path regexes match, with that pool's method,
//! else to the upstreams without `pool`; sticky routes bind only inside the request's pool; a
//! pool that is all down answers 502 rather than spilling into another; a reload moves paths;
//! a bad pool entry is a config error naming it; `hosts` choose pools by the `Host` (nginx's
//! `server_name`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use ferrocat_balancer::{Balancer, BalancerConfig, Method, PoolConfig};

use common::{client, config, get, get_json, start, Upstream};

/// Which upstream answered each of `n` GETs of `path`, counted by name.
async fn answers(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    n: usize,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, up) = get(http, &format!("{base}{path}")).await;
        assert_eq!(status, 200, "{path}");
        *seen.entry(up).or_insert(0) += 1;
    }
    seen
}

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// app1, app2 in the default pool; st1, st2 in `static` (paths under /static/ and any .css);
/// api1, api2 in `api` (paths under /api/, least_conn); a pool whose upstreams are not in `ups`
/// is left out.
fn pooled(ups: &[&Upstream]) -> BalancerConfig {
    let mut cfg = config(ups);
    for u in &mut cfg.upstream {
        let route = u.route.clone().unwrap_or_default();
        if route.starts_with("st") {
            u.pool = Some("static".into());
        } else if route.starts_with("api") {
            u.pool = Some("api".into());
        }
    }
    cfg.pool = vec![
        PoolConfig::new("static", &["^/static/", r"\.css$"]),
        PoolConfig {
            method: Some(Method::LeastConn),
            ..PoolConfig::new("api", &["^/api/"])
        },
    ];
    // Only the pools some upstream joined (an empty pool is a config error).
    let joined: Vec<String> = cfg.upstream.iter().filter_map(|u| u.pool.clone()).collect();
    cfg.pool.retain(|p| joined.contains(&p.name));
    cfg.status_path = Some("/_status".into());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_path_goes_to_its_pool_and_the_rest_to_the_default_upstreams() {
    let mut ups = Vec::new();
    for name in ["app1", "app2", "st1", "st2", "api1", "api2"] {
        ups.push(Upstream::start(name).await);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let (h, base) = start(pooled(&refs)).await;
    let http = client();

    // Round robin inside each pool; no request crosses into another.
    assert_eq!(
        answers(&http, &base, "/static/logo.png", 6).await,
        counts(&[("st1", 3), ("st2", 3)])
    );
    assert_eq!(
        answers(&http, &base, "/theme/site.css?v=3", 2).await,
        counts(&[("st1", 1), ("st2", 1)])
    );
    let api = answers(&http, &base, "/api/items", 6).await;
    assert_eq!(api.values().sum::<usize>(), 6);
    assert!(api.keys().all(|k| k.starts_with("api")), "{api:?}");
    // Not a pool's path (the regexes see the path, not the query): the default upstreams.
    assert_eq!(
        answers(&http, &base, "/shop?file=/static/x", 4).await,
        counts(&[("app1", 2), ("app2", 2)])
    );
    assert_eq!(
        ups.iter().map(Upstream::hits).sum::<usize>(),
        18,
        "every request reached exactly one upstream"
    );

    // The status page says which pool each upstream is in.
    let status = get_json(&http, &format!("{base}/_status")).await;
    let pools: Vec<Option<String>> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["pool"].as_str().map(str::to_owned))
        .collect();
    let want: Vec<Option<String>> = [
        None,
        None,
        Some("static"),
        Some("static"),
        Some("api"),
        Some("api"),
    ]
    .iter()
    .map(|p| p.map(str::to_owned))
    .collect();
    assert_eq!(pools, want);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_binds_only_inside_the_requests_pool() {
    let mut ups = Vec::new();
    for name in ["app1", "app2", "st1", "st2"] {
        ups.push(Upstream::start(name).await);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let (h, base) = start(pooled(&refs)).await;
    let http = client();
    let with_cookie = |path: &str, cookie: &str| {
        let (http, url, cookie) = (http.clone(), format!("{base}{path}"), cookie.to_owned());
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-upstream"].to_str().unwrap().to_owned()
        }
    };
    for _ in 0..4 {
        // The app session sticks to app2 for app pages...
        assert_eq!(with_cookie("/cart", "JSESSIONID=abc-n1.app2").await, "app2");
        // ...and a route of another pool's upstream binds nothing here: balanced.
        let other = with_cookie("/cart", "JSESSIONID=abc-n1.st2").await;
        assert!(other.starts_with("app"), "{other}");
        // A route naming a static upstream sticks on static paths.
        assert_eq!(
            with_cookie("/static/a.js", "JSESSIONID=abc.st2").await,
            "st2"
        );
    }
    // The app session's route says nothing about static files: both static upstreams serve it.
    let mut seen = HashMap::new();
    for _ in 0..4 {
        *seen
            .entry(with_cookie("/static/a.js", "JSESSIONID=abc-n1.app2").await)
            .or_insert(0) += 1;
    }
    assert_eq!(seen, counts(&[("st1", 2), ("st2", 2)]));
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_is_all_down_answers_502_and_the_others_keep_serving() {
    let mut ups = Vec::new();
    for name in ["app1", "st1", "st2"] {
        ups.push(Upstream::start(name).await);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let mut cfg = pooled(&refs);
    cfg.error_page = None;
    let (h, base) = start(cfg).await;
    let http = client();
    ups[1].kill();
    ups[2].kill();
    for _ in 0..3 {
        assert_eq!(get(&http, &format!("{base}/static/x")).await.0, 502);
        assert_eq!(
            get(&http, &format!("{base}/page")).await,
            (200, "app1".into())
        );
    }
    assert_eq!(
        ups[0].hits(),
        3,
        "no static request spilled into the default pool"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_paths_between_pools() {
    let mut ups = Vec::new();
    for name in ["app1", "st1"] {
        ups.push(Upstream::start(name).await);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let cfg = pooled(&refs);
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    assert_eq!(
        get(&http, &format!("{base}/static/x")).await,
        (200, "st1".into())
    );
    assert_eq!(
        get(&http, &format!("{base}/img/x.png")).await,
        (200, "app1".into())
    );
    // Images too go to the static pool now.
    let mut moved = cfg;
    moved.pool[0].paths = vec!["^/static/".into(), r"\.png$".into()];
    h.reload(moved.clone()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        get(&http, &format!("{base}/img/x.png")).await,
        (200, "st1".into())
    );
    // Without pools, st1 is one of the default upstreams again.
    moved.pool.clear();
    for u in &mut moved.upstream {
        u.pool = None;
    }
    h.reload(moved).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        answers(&http, &base, "/static/x", 4).await,
        counts(&[("app1", 2), ("st1", 2)])
    );
    h.stop(true).await;
}

/// A change that breaks a valid config.
type Change = Box<dyn Fn(&mut BalancerConfig)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pool_entry_is_a_config_error_naming_it() {
    let (a, s) = (Upstream::start("app1").await, Upstream::start("st1").await);
    let base = pooled(&[&a, &s]);
    assert_eq!(base.validate(), Ok(()));
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|c| c.upstream[1].pool = Some("statik".into())),
            "balancer.upstream[1].pool",
        ),
        (
            Box::new(|c| c.pool[0].paths.push("^/(a".into())),
            "balancer.pool[0].paths[2]",
        ),
        (
            Box::new(|c| c.pool[0].paths.clear()),
            "balancer.pool[0].paths",
        ),
        (
            Box::new(|c| c.pool[0].hosts = vec!["shop.example".into(), "shop example".into()]),
            "balancer.pool[0].hosts[1]",
        ),
        (
            Box::new(|c| c.pool[0].hosts = vec!["shop.*".into()]),
            "balancer.pool[0].hosts[0]",
        ),
        (
            Box::new(|c| c.pool.push(PoolConfig::new("static", &["^/x"]))),
            "balancer.pool[1].name",
        ),
        (
            // A pool nobody joined (a typo in the upstreams' `pool`, say).
            Box::new(|c| c.pool.push(PoolConfig::new("api", &["^/api/"]))),
            "balancer.pool[1].name",
        ),
        (
            Box::new(|c| {
                c.pool[0].method = Some(Method::Hash);
                c.pool[0].hash_key = Some(" ".into());
            }),
            "balancer.pool[0].hash_key",
        ),
        (
            Box::new(|c| {
                c.pool[0].method = Some(Method::IpHash);
                c.upstream[1].backup = true;
            }),
            "balancer.upstream[1].backup",
        ),
    ];
    for (change, key) in cases {
        let mut cfg = base.clone();
        change(&mut cfg);
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{key}: accepted")
        };
        assert!(e.to_string().starts_with(&format!("{key}:")), "{key}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_strips_its_prefix_and_has_its_own_body_limit() {
    let (app, api) = (Upstream::start("app1").await, Upstream::start("api1").await);
    let mut cfg = pooled(&[&app, &api]);
    assert_eq!(cfg.pool[0].name, "api");
    cfg.pool[0].paths = vec!["^/api(/|$)".into()];
    cfg.pool[0].strip_prefix = Some("/api".into());
    cfg.pool[0].client_max_body_size = Some(64);
    let (h, base) = start(cfg).await;
    let http = client();
    // `/api/status/201` reaches the upstream as `/status/201`, which answers 201.
    assert_eq!(
        get(&http, &format!("{base}/api/status/201")).await,
        (201, "api1".into())
    );
    // `/api` alone becomes `/`; the default pool's paths keep their prefix-like names.
    assert_eq!(
        get(&http, &format!("{base}/api")).await,
        (200, "api1".into())
    );
    assert_eq!(
        get(&http, &format!("{base}/status/202")).await,
        (202, "app1".into())
    );
    // The pool's body limit, not the balancer's (1m): 413 before any upstream is contacted.
    let hits = api.hits();
    let post = |path: &str, n: usize| {
        http.post(format!("{base}{path}"))
            .body(vec![b'x'; n])
            .send()
    };
    assert_eq!(post("/api/upload", 100).await.unwrap().status(), 413);
    assert_eq!(api.hits(), hits);
    let r = post("/api/upload", 64).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "64");
    let r = post("/upload", 100).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the default pool keeps the balancer's limit"
    );
    assert_eq!(r.text().await.unwrap(), "100");
    h.stop(true).await;

    // A prefix that is not a path is a config error naming it.
    let mut bad = pooled(&[&app, &api]);
    bad.pool[0].strip_prefix = Some("/api/".into());
    let e = ferrocat_balancer::Balancer::start(bad).await.unwrap_err();
    assert!(
        e.to_string().starts_with("balancer.pool[0].strip_prefix:"),
        "{e}"
    );
}

/// GETs `path` with `Host: host` (raw, so the header is exactly that): which upstream answered.
async fn upstream_for(base: &str, host: Option<&str>, path: &str) -> String {
    let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    let version = if host.is_empty() { "1.0" } else { "1.1" };
    let raw = common::raw_exchange(
        base,
        format!("GET {path} HTTP/{version}\r\n{host}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    common::raw_header(&raw, "x-upstream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_choose_the_pool_as_nginx_server_name_does() {
    let app = Upstream::start("app1").await;
    let shop = Upstream::start("shop1").await;
    let shop_api = Upstream::start("shopapi1").await;
    let mut cfg = config(&[&app, &shop, &shop_api]);
    cfg.upstream[1].pool = Some("shop".into());
    cfg.upstream[2].pool = Some("shop-api".into());
    cfg.pool = vec![
        // First in config order: the shop's API, by host and path.
        PoolConfig {
            hosts: vec!["shop.example".into()],
            ..PoolConfig::new("shop-api", &["^/api/"])
        },
        // Every other path of the shop and its subdomains: by host alone.
        PoolConfig {
            hosts: vec!["shop.example".into(), "*.shop.example".into()],
            ..PoolConfig::new("shop", &[])
        },
    ];
    let (h, base) = start(cfg).await;
    for (host, path, expected) in [
        (Some("shop.example"), "/api/cart", "shopapi1"),
        (Some("shop.example:8080"), "/cart", "shop1"),
        (Some("SHOP.Example"), "/", "shop1"),
        (Some("www.shop.example"), "/api/cart", "shop1"),
        (Some("a.b.shop.example"), "/x", "shop1"),
        (Some("blog.example"), "/api/cart", "app1"),
        (Some("xshop.example"), "/", "app1"),
        (Some("[::1]:8080"), "/", "app1"),
        (None, "/api/cart", "app1"),
    ] {
        assert_eq!(
            upstream_for(&base, host, path).await,
            expected,
            "Host {host:?}, {path}"
        );
    }
    h.stop(true).await;
}

#[test]
fn a_pool_may_name_hosts_without_paths_in_toml() {
    let cfg: BalancerConfig = toml::from_str(
        "[[upstream]]\naddress = \"127.0.0.1:1\"\npool = \"shop\"\n[[upstream]]\naddress = \"127.0.0.1:2\"\n\
         [[pool]]\nname = \"shop\"\nhosts = [\"shop.example\", \"*.shop.example\"]\n",
    )
    .unwrap();
    assert_eq!(cfg.validate(), Ok(()));
    assert!(cfg.pool[0].paths.is_empty());
    assert_eq!(cfg.pool[0].hosts, ["shop.example", "*.shop.example"]);
}
