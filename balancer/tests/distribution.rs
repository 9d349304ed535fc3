//! Selection through real HTTP: smooth weighted round robin and sticky routes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, get, start, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_follows_weights_smoothly() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let mut cfg = config(&[&a, &b, &c]);
    cfg.upstream[0].weight = 5;
    let (h, base) = start(cfg).await;
    let http = client();
    let mut order = String::new();
    for _ in 0..14 {
        let (status, up) = get(&http, &format!("{base}/")).await;
        assert_eq!(status, 200);
        order.push_str(&up);
    }
    assert_eq!(order, "aabacaaaabacaa");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stick_to_the_upstream_of_their_route() {
    let (a, b, c) = (
        Upstream::start("app1").await,
        Upstream::start("app2").await,
        Upstream::start("app3").await,
    );
    let (h, base) = start(config(&[&a, &b, &c])).await;
    let http = client();
    let cases = [
        ("JSESSIONID=c2ln.8f3a9c0d-n1.app2", "app2"), // ferrocat form
        ("JSESSIONID=5A8F1C2B3D4E6F70.app3", "app3"), // Tomcat jvmRoute form
        ("theme=x; JSESSIONID=ABC.app1; z=1", "app1"),
    ];
    for (cookie, want) in cases {
        for _ in 0..6 {
            let r = http
                .get(format!("{base}/"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers()["x-upstream"], want, "{cookie}");
        }
    }
    // Tomcat's URL-rewritten session (a client without cookies): the `;jsessionid=` path
    // parameter routes; a session cookie, when there is one, wins.
    let url_cases = [
        ("/shop/cart;jsessionid=5A8F1C2B.app3?x=1", None, "app3"),
        ("/a;JSESSIONID=ABC.app2/b", None, "app2"),
        (
            "/a;jsessionid=ABC.app2",
            Some("JSESSIONID=ABC.app1"),
            "app1",
        ),
    ];
    for (path, cookie, want) in url_cases {
        for _ in 0..6 {
            let mut rq = http.get(format!("{base}{path}"));
            if let Some(c) = cookie {
                rq = rq.header("cookie", c);
            }
            let r = rq.send().await.unwrap();
            assert_eq!(r.headers()["x-upstream"], want, "{path} {cookie:?}");
        }
    }
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_of_a_down_upstream_is_balanced_as_unbound() {
    let (a, b) = (Upstream::start("app1").await, Upstream::start("app2").await);
    let (h, base) = start(config(&[&a, &b])).await;
    let http = client();
    b.kill();
    for _ in 0..6 {
        let r = http
            .get(format!("{base}/"))
            .header("cookie", "JSESSIONID=xyz-n1.app2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upstream"], "app1");
    }
    // An unknown route is balanced too.
    let r = http
        .get(format!("{base}/"))
        .header("cookie", "JSESSIONID=xyz.nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_upstream_keeps_bound_requests_and_gets_no_new_ones() {
    let (a, b) = (Upstream::start("app1").await, Upstream::start("app2").await);
    let cfg = config(&[&a, &b]);
    let (h, base) = start(cfg.clone()).await;
    let mut drained = cfg;
    drained.upstream[1].drain = true;
    h.reload(drained).unwrap();
    let http = client();
    for _ in 0..6 {
        assert_eq!(get(&http, &format!("{base}/")).await, (200, "app1".into()));
        let r = http
            .get(format!("{base}/"))
            .header("cookie", "JSESSIONID=s.app2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-upstream"], "app2");
    }
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_no_primary_is_up() {
    let (a, b) = (
        Upstream::start("primary").await,
        Upstream::start("backup").await,
    );
    let mut cfg = config(&[&a, &b]);
    cfg.upstream[1].backup = true;
    let (h, base) = start(cfg).await;
    let http = client();
    for _ in 0..4 {
        assert_eq!(
            get(&http, &format!("{base}/")).await,
            (200, "primary".into())
        );
    }
    a.kill();
    for _ in 0..4 {
        assert_eq!(
            get(&http, &format!("{base}/")).await,
            (200, "backup".into())
        );
    }
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_and_consistent_hash_keep_a_client_on_one_upstream() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let http = client();
    for method in [
        ferrocat_balancer::Method::IpHash,
        ferrocat_balancer::Method::Hash,
    ] {
        let mut cfg = config(&[&a, &b, &c]);
        cfg.method = method;
        cfg.hash_key = "$arg_user".into();
        let (h, base) = start(cfg).await;
        let first = get(&http, &format!("{base}/?user=42")).await;
        for _ in 0..10 {
            assert_eq!(
                get(&http, &format!("{base}/?user=42")).await,
                first,
                "{method:?}"
            );
        }
        h.stop(true).await;
    }
}

#[actix_rt::test]
async fn starts_and_stops_inside_an_actix_system() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    assert_eq!(get(&client(), &format!("{base}/")).await, (200, "a".into()));
    h.stop(true).await;
}
