//! `proxy_set_header` (request headers for the upstream, with variables) and `add_header` /
//! `add_header_always` (response headers for the client), as nginx's directives.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, start, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_set_header_replaces_removes_and_evaluates() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.proxy_set_header = vec![
        "Host: backend.internal".into(),
        "X-Env: prod".into(),
        "X-Drop:".into(),
        "X-Client: $remote_addr asked $host for $request_uri".into(),
        "X-Forwarded-Proto: https".into(),
    ];
    let (h, base) = start(cfg).await;
    let text = client()
        .get(format!("{base}/headers?q=1"))
        .header("host", "shop.example")
        .header("x-env", "from-the-client")
        .header("x-drop", "secret")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert!(lines.contains(&"host: backend.internal"), "{text}");
    assert_eq!(count("host:"), 1, "{text}");
    assert!(lines.contains(&"x-env: prod"), "{text}");
    assert_eq!(count("x-env:"), 1, "{text}");
    assert_eq!(count("x-drop:"), 0, "{text}");
    assert!(
        lines.contains(&"x-client: 127.0.0.1 asked shop.example for /headers?q=1"),
        "{text}"
    );
    assert!(lines.contains(&"x-forwarded-proto: https"), "{text}");
    assert_eq!(count("x-forwarded-proto:"), 1, "{text}");
    // What is not configured is as before.
    assert!(lines.contains(&"x-real-ip: 127.0.0.1"), "{text}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_header_goes_on_successful_answers_or_always() {
    let a = Upstream::start("a").await;
    for always in [false, true] {
        let mut cfg = config(&[&a]);
        cfg.add_header = vec![
            "X-Frame-Options: DENY".into(),
            // The fake upstream sets this one: replaced, not doubled.
            "X-Upstream: hidden".into(),
        ];
        cfg.add_header_always = always;
        cfg.deny = vec!["^/secret".into()];
        let (h, base) = start(cfg).await;
        let http = client();
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let ups: Vec<_> = r.headers().get_all("x-upstream").iter().collect();
        assert_eq!(ups, ["hidden"]);
        let r = http.get(format!("{base}/status/404")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers().contains_key("x-frame-options"), always);
        let ups: Vec<_> = r.headers().get_all("x-upstream").iter().collect();
        assert_eq!(ups, [if always { "hidden" } else { "a" }]);
        // The balancer's own answer (a denied path: 403) gets them only with `always`.
        let r = http.get(format!("{base}/secret")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers().contains_key("x-frame-options"), always);
        h.stop(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_named() {
    use ferrocat_balancer::Balancer;
    let a = Upstream::start("a").await;
    for (set, add, key) in [
        (
            vec!["Content-Length: 3"],
            vec![],
            "balancer.proxy_set_header[0]",
        ),
        (
            vec!["X-A: 1", "X-B"],
            vec![],
            "balancer.proxy_set_header[1]",
        ),
        (
            vec![],
            vec!["Transfer-Encoding: chunked"],
            "balancer.add_header[0]",
        ),
        (vec![], vec!["Host: x"], "balancer.add_header[0]"),
        // A variable add_header does not know (a request variable) is refused, not left empty.
        (
            vec![],
            vec!["X-A: 1", "X-Where: $host"],
            "balancer.add_header[1]",
        ),
    ] {
        let mut cfg = config(&[&a]);
        cfg.proxy_set_header = set.iter().map(|s| s.to_string()).collect();
        cfg.add_header = add.iter().map(|s| s.to_string()).collect();
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{set:?} {add:?} accepted")
        };
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_template_that_comes_out_empty_falls_back_to_the_upstream_address() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.proxy_set_header = vec!["Host: $http_x_orig_host".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    let host = |sent: Option<&'static str>| {
        let mut r = http.get(format!("{base}/headers"));
        if let Some(s) = sent {
            r = r.header("x-orig-host", s);
        }
        async move {
            let text = r.send().await.unwrap().text().await.unwrap();
            let hosts: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("host: ").map(str::to_owned))
                .collect();
            hosts
        }
    };
    assert_eq!(host(Some("orig.example")).await, ["orig.example"]);
    assert_eq!(host(None).await, [a.addr.to_string()]);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_header_values_name_the_upstream_the_status_and_the_client() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.add_header = vec![
        "X-Served-By: $upstream_addr".into(),
        "X-Answer: $status to $remote_addr".into(),
        "X-Trace: id=$request_id".into(),
    ];
    cfg.add_header_always = true;
    cfg.request_id_header = "X-Request-ID".into();
    cfg.deny = vec!["^/secret".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    let r = http
        .get(format!("{base}/status/404"))
        .header("x-request-id", "edge-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-served-by"], a.addr.to_string().as_str());
    assert_eq!(r.headers()["x-answer"], "404 to 127.0.0.1");
    assert_eq!(r.headers()["x-trace"], "id=edge-9");
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.headers()["x-answer"], "200 to 127.0.0.1");
    // The balancer's own page: no upstream answered (the header whose value comes out empty
    // is left out); `$status` is the page's.
    let r = http.get(format!("{base}/secret")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        !r.headers().contains_key("x-served-by"),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.headers()["x-answer"], "403 to 127.0.0.1");
    assert_eq!(r.headers()["x-trace"].len(), "id=".len() + 32);
    // So is the error page when no upstream answers, and a refused head's 400.
    a.kill();
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-answer"], "502 to 127.0.0.1");
    let raw = common::raw_exchange(&base, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("x-answer: 400 to 127.0.0.1\r\n"),
        "{raw}"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_hide_header_keeps_upstream_headers_from_the_client() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    // The test upstream marks every answer with `x-upstream`, as Tomcat adds `X-Powered-By`.
    cfg.proxy_hide_header = vec!["X-Upstream".into()];
    let (h, base) = start(cfg).await;
    for (path, status) in [("/", 200), ("/status/404", 404), ("/text/100", 200)] {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert!(
            r.headers().get("x-upstream").is_none(),
            "{path}: {:?}",
            r.headers()
        );
    }
    // The other headers still pass.
    let r = client()
        .get(format!("{base}/text/100"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    h.stop(true).await;

    for (names, i) in [(vec!["X-A", "Bad Name"], 1), (vec!["Content-Length"], 0)] {
        let mut cfg = config(&[&a]);
        cfg.proxy_hide_header = names.into_iter().map(String::from).collect();
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.key, format!("balancer.proxy_hide_header[{i}]"));
    }
}

/// `Location` of `GET path` with `Host: host` through the balancer at `base`.
async fn location(base: &str, host: &str, path: &str) -> String {
    let raw = common::raw_exchange(
        base,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    common::raw_header(&raw, "location")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_redirect_rewrites_the_upstreams_locations() {
    let app = Upstream::start("app").await;
    let api = Upstream::start("api").await;
    let mut cfg = config(&[&app, &api]);
    cfg.upstream[1].pool = Some("api".into());
    cfg.pool = vec![ferrocat_balancer::PoolConfig {
        strip_prefix: Some("/api".into()),
        ..ferrocat_balancer::PoolConfig::new("api", &["^/api/"])
    }];
    cfg.proxy_redirect = vec!["default".into(), "http://$host/ https://$host/".into()];
    let (h, base) = start(cfg).await;
    let (app_addr, api_addr) = (app.addr, api.addr);
    // The app server redirects to its own address: the client gets a path on the balancer.
    assert_eq!(
        location(
            &base,
            "shop.example",
            &format!("/text/1?loc=http://{app_addr}/login")
        )
        .await,
        "/login"
    );
    // ... under the pool's prefix when the pool strips one.
    assert_eq!(
        location(
            &base,
            "shop.example",
            &format!("/api/text/1?loc=http://{api_addr}/items/7")
        )
        .await,
        "/api/items/7"
    );
    // Behind TLS termination the app says http: the client is sent to https, on its own host.
    assert_eq!(
        location(
            &base,
            "shop.example:8443",
            "/text/1?loc=http://shop.example/cart"
        )
        .await,
        "https://shop.example/cart"
    );
    // Anything else passes unchanged.
    for loc in [
        "/relative",
        "https://elsewhere.example/x",
        "http://other.example/x",
    ] {
        assert_eq!(
            location(&base, "shop.example", &format!("/text/1?loc={loc}")).await,
            loc
        );
    }
    h.stop(true).await;

    // `$scheme` is the client's: behind a trusted TLS terminator, what its
    // `X-Forwarded-Proto` says.
    let mut cfg = config(&[&app]);
    cfg.proxy_redirect = vec!["http://$host/ $scheme://$host/".into()];
    cfg.set_real_ip_from = vec!["127.0.0.1".into()];
    let (h, base) = start(cfg).await;
    for (proto, expected) in [
        ("https", "https://shop.example/cart"),
        ("http", "http://shop.example/cart"),
    ] {
        let raw = common::raw_exchange(
            &base,
            format!(
                "GET /text/1?loc=http://shop.example/cart HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: {proto}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(
            raw.contains(&format!("location: {expected}\r\n")),
            "{proto}: {raw}"
        );
    }
    h.stop(true).await;

    let mut cfg = config(&[&app]);
    cfg.proxy_redirect = vec!["default".into(), "http://$uri/ /".into()];
    assert_eq!(
        cfg.validate().unwrap_err().key,
        "balancer.proxy_redirect[1]"
    );
}

/// Every value of the header `name` in a raw answer.
fn raw_headers(raw: &str, name: &str) -> Vec<String> {
    raw.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webapp_under_a_context_path_answers_at_the_public_path() {
    // Tomcat-style: the webapp lives under /ctx on its server; the site shows it at / and
    // at /shop (nginx `proxy_pass http://tomcat/ctx/;` with `proxy_cookie_path` and
    // `proxy_redirect`).
    let (app, shop) = (Upstream::start("app").await, Upstream::start("shop").await);
    let mut cfg = config(&[&app, &shop]);
    cfg.upstream[1].pool = Some("shop".into());
    cfg.upstream_prefix = Some("/ctx".into());
    cfg.pool = vec![ferrocat_balancer::PoolConfig {
        strip_prefix: Some("/shop".into()),
        upstream_prefix: Some("/ctx".into()),
        ..ferrocat_balancer::PoolConfig::new("shop", &["^/shop(/|$)"])
    }];
    cfg.proxy_redirect = vec!["default".into()];
    cfg.proxy_cookie_path = vec!["default".into()];
    cfg.proxy_cookie_domain = vec!["app.internal $host".into()];
    let (h, base) = start(cfg).await;
    let ask = |path: String| {
        let base = base.clone();
        async move {
            let head =
                format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n");
            let raw = common::raw_exchange(&base, head.as_bytes()).await;
            let first = |name| {
                raw_headers(&raw, name)
                    .into_iter()
                    .next()
                    .unwrap_or_default()
            };
            (
                first("x-path"),
                raw_headers(&raw, "set-cookie"),
                first("location"),
            )
        }
    };
    let cookie = |path: &str| format!("JSESSIONID%3Dabc.app1%3B%20Path%3D{path}%3B%20HttpOnly");
    let (got, cookies, loc) = ask(format!(
        "/text/10?cookie={}&loc=http://{}/ctx/login",
        cookie("/ctx"),
        app.addr
    ))
    .await;
    assert!(got.starts_with("/ctx/text/10?"), "{got}");
    assert_eq!(cookies, ["JSESSIONID=abc.app1; Path=/; HttpOnly"]);
    assert_eq!(loc, "/login");
    let (got, cookies, loc) = ask(format!(
        "/shop/text/10?cookie={}&loc=http://{}/ctx/cart/1",
        cookie("/ctx/cart"),
        shop.addr
    ))
    .await;
    assert!(got.starts_with("/ctx/text/10?"), "{got}");
    assert_eq!(cookies, ["JSESSIONID=abc.app1; Path=/shop/cart; HttpOnly"]);
    assert_eq!(loc, "/shop/cart/1");
    // The pool's root: `/shop` goes up as `/ctx/`.
    let (got, _, _) = ask("/shop".into()).await;
    assert_eq!(got, "/ctx/");
    // A domain the app names for itself becomes the client's host.
    let (_, cookies, _) = ask("/text/10?cookie=a%3D1%3B%20Domain%3Dapp.internal".into()).await;
    assert_eq!(cookies, ["a=1; Domain=shop.example"]);
    h.stop(true).await;
}

#[test]
fn context_path_keys_are_read_from_toml_and_bad_ones_named() {
    let cfg: ferrocat_balancer::BalancerConfig = toml::from_str(
        r#"
upstream_prefix = "/ctx"
proxy_cookie_path = ["default", "/two/ /"]
proxy_cookie_domain = ["localhost $host"]
[[upstream]]
address = "127.0.0.1:9"
[[pool]]
name = "p"
paths = ["^/p/"]
upstream_prefix = "/app"
"#,
    )
    .unwrap();
    assert_eq!(cfg.upstream_prefix.as_deref(), Some("/ctx"));
    assert_eq!(cfg.pool[0].upstream_prefix.as_deref(), Some("/app"));
    assert_eq!(cfg.proxy_cookie_path.len(), 2);
    let mut ok = cfg.clone();
    ok.upstream[0].pool = Some("p".into());
    ok.upstream
        .push(ferrocat_balancer::UpstreamConfig::new("127.0.0.1:10"));
    assert!(ok.validate().is_ok(), "{:?}", ok.validate());
    let bad = |f: fn(&mut ferrocat_balancer::BalancerConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        c.validate().unwrap_err().key
    };
    assert_eq!(
        bad(|c| c.upstream_prefix = Some("ctx/".into())),
        "balancer.upstream_prefix"
    );
    assert_eq!(
        bad(|c| c.pool[0].upstream_prefix = Some("/app/".into())),
        "balancer.pool[0].upstream_prefix"
    );
    assert_eq!(
        bad(|c| c.proxy_cookie_path = vec!["default".into(), "/a".into()]),
        "balancer.proxy_cookie_path[1]"
    );
    assert_eq!(
        bad(|c| c.proxy_cookie_domain = vec!["a $request_uri".into()]),
        "balancer.proxy_cookie_domain[0]"
    );
}
