//! `redirect` (nginx `rewrite ... redirect|permanent`, `return 301 ...`): the balancer answers
//! with the first matching rule's status and `Location` (groups and query carried over), before
//! `deny`, `access` and the limits, without contacting an upstream; a reload changes the rules;
//! a bad entry is a config error naming it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, get_with_host, no_follow, start, Upstream};

async fn get(http: &reqwest::Client, url: String) -> (u16, Option<String>, String) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, location, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_paths_are_redirected_by_the_balancer_itself() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.redirect = vec![
        "^/old/(.*)$ /new/$1 301".into(),
        "^/docs(?P<rest>/.*)?$ https://docs.example.test${rest}? 308".into(),
        "^/shop$ /store".into(),
    ];
    // Redirects come first, as nginx's rewrite phase: even for a path `deny` refuses.
    cfg.deny = vec!["^/old/".into()];
    let (h, base) = start(cfg.clone()).await;
    let http = no_follow();
    let (status, location, body) = get(&http, format!("{base}/old/a/b?x=1&y=2")).await;
    assert_eq!(status, 301);
    assert_eq!(location.as_deref(), Some("/new/a/b?x=1&y=2"));
    assert!(body.contains("301 Moved Permanently"), "{body}");
    let (status, location, _) = get(&http, format!("{base}/docs/guide?utm=z")).await;
    assert_eq!(
        (status, location.as_deref()),
        (308, Some("https://docs.example.test/guide"))
    );
    let (status, location, _) = get(&http, format!("{base}/shop")).await;
    assert_eq!((status, location.as_deref()), (302, Some("/store")));
    assert_eq!(a.hits(), 0, "a redirect reaches no upstream");
    let (status, location, _) = get(&http, format!("{base}/shop/cart")).await;
    assert_eq!((status, location), (200, None));
    assert_eq!(a.hits(), 1);
    // A reload without the rules: the denied path is denied again.
    cfg.redirect.clear();
    h.reload(cfg).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(get(&http, format!("{base}/old/a")).await.0, 403);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_redirect_entry_is_a_config_error_naming_it() {
    use ferrocat_balancer::Balancer;
    let a = Upstream::start("a").await;
    for bad in ["^/a$", "^/a$ /b 200", "^/(a$ /b"] {
        let mut cfg = config(&[&a]);
        cfg.redirect = vec!["^/ok$ /fine".into(), bad.into()];
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{bad} accepted")
        };
        assert!(e.to_string().contains("balancer.redirect[1]"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_name_the_requests_host_and_scheme() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.redirect = vec!["^/login(/.*)?$ https://$host/account$1 301".into()];
    let (h, base) = start(cfg).await;
    let http = no_follow();
    assert_eq!(
        get_with_host(
            &http,
            &format!("{base}/login/x?next=%2F"),
            "shop.example:8080"
        )
        .await,
        (301, Some("https://shop.example/account/x?next=%2F".into()))
    );
    // No host to name: refused, neither redirected nor passed on.
    assert_eq!(
        get_with_host(&http, &format!("{base}/login"), "evil.example/phish").await,
        (403, None)
    );
    assert_eq!(a.hits(), 0);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_redirect_sends_whole_hosts_to_another_site() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.host_redirect = vec![
        "example.test https://www.example.test".into(),
        "*.old.test https://new.test/archive/ 302".into(),
        ".legacy.test http://current.test 308".into(),
    ];
    // The host's rule wins over the path's (nginx picks the server before its locations).
    cfg.redirect = vec!["^/a$ /b".into()];
    let (h, base) = start(cfg).await;
    let http = no_follow();
    let at = |path: &str| format!("{base}{path}");
    assert_eq!(
        get_with_host(&http, &at("/a?x=1"), "EXAMPLE.test:8080").await,
        (301, Some("https://www.example.test/a?x=1".into()))
    );
    assert_eq!(
        get_with_host(&http, &at("/p/q"), "shop.old.test").await,
        (302, Some("https://new.test/archive/p/q".into()))
    );
    // `*.` takes subdomains only; `.` the name too.
    assert_eq!(
        get_with_host(&http, &at("/p"), "old.test").await,
        (200, None)
    );
    assert_eq!(
        get_with_host(&http, &at("/"), "legacy.test").await,
        (308, Some("http://current.test/".into()))
    );
    assert_eq!(
        get_with_host(&http, &at("/"), "a.b.legacy.test").await,
        (308, Some("http://current.test/".into()))
    );
    // Other hosts: the path rules, then the upstreams.
    assert_eq!(
        get_with_host(&http, &at("/a"), "www.example.test").await,
        (302, Some("/b".into()))
    );
    assert_eq!(
        get_with_host(&http, &at("/c"), "notexample.test").await,
        (200, None)
    );
    assert_eq!(a.hits(), 2);
    h.stop(true).await;
    // Bad entries are config errors naming them.
    for (entry, why) in [
        ("example.test", "expected"),
        ("example.test www.example.test", "URL"),
        ("example.test https://www.example.test 200", "status"),
        ("exa/mple https://x.test", "not a host name"),
        ("*. https://x.test", "not a host name"),
    ] {
        let mut bad = config(&[&a]);
        bad.host_redirect = vec!["ok.test https://x.test".into(), entry.into()];
        let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("balancer.host_redirect[1]") && msg.contains(why),
            "{entry}: {msg}"
        );
    }
}
