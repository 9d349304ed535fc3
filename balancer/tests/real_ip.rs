//! The client's address behind trusted proxies (`set_real_ip_from`, `real_ip_header`,
//! `real_ip_recursive`, as nginx's realip module): `X-Real-IP`, `ip_hash`, `status_allow` and
//! the access log use the address the proxy named; anyone else's headers are ignored.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{client, config, log_lines_at_least, start, Upstream};
use ferrocat_balancer::config::Method;

/// The request headers upstream `/headers` saw, for a GET with `headers`.
async fn seen(base: &str, headers: &[(&str, &str)]) -> String {
    let mut r = client().get(format!("{base}/headers"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.set_real_ip_from = vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()];
    cfg.real_ip_header = "X-Forwarded-For".into();
    cfg.real_ip_recursive = true;
    let (h, base) = start(cfg).await;
    let text = seen(
        &base,
        &[
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert!(text.contains("x-real-ip: 203.0.113.9\n"), "{text}");
    // The proxy terminated TLS: the app learns the client's scheme.
    assert!(text.contains("x-forwarded-proto: https\n"), "{text}");
    // The list goes on with the hop this request came from.
    assert!(
        text.contains("x-forwarded-for: 203.0.113.9, 10.1.1.1, 127.0.0.1\n"),
        "{text}"
    );
    // No header: the connection's address.
    let text = seen(&base, &[]).await;
    assert!(text.contains("x-real-ip: 127.0.0.1\n"), "{text}");
    h.stop(true).await;

    // Not recursive: the last entry is the client, trusted or not.
    let mut cfg = config(&[&a]);
    cfg.set_real_ip_from = vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()];
    cfg.real_ip_header = "X-Forwarded-For".into();
    let (h, base) = start(cfg).await;
    let text = seen(&base, &[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]).await;
    assert!(text.contains("x-real-ip: 10.1.1.1\n"), "{text}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_from_an_untrusted_peer_are_ignored() {
    let a = Upstream::start("a").await;
    for from in [vec![], vec!["10.0.0.0/8".to_owned()]] {
        let mut cfg = config(&[&a]);
        cfg.set_real_ip_from = from.clone();
        let (h, base) = start(cfg).await;
        let text = seen(
            &base,
            &[("x-real-ip", "203.0.113.9"), ("x-forwarded-proto", "https")],
        )
        .await;
        assert!(text.contains("x-real-ip: 127.0.0.1\n"), "{from:?}: {text}");
        assert!(
            text.contains("x-forwarded-proto: http\n"),
            "{from:?}: {text}"
        );
        h.stop(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_follows_the_named_client() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // The upstream each of 16 clients (different /24 networks) reaches, asked twice.
    async fn spread(base: &str) -> (usize, bool) {
        let http = client();
        let mut used = HashSet::new();
        let mut stable = true;
        for i in 0..16 {
            let ip = format!("198.51.{i}.7");
            let mut first = None;
            for _ in 0..2 {
                let r = http
                    .get(format!("{base}/"))
                    .header("x-real-ip", &ip)
                    .send()
                    .await
                    .unwrap();
                let up = r.headers()["x-upstream"].to_str().unwrap().to_owned();
                stable &= *first.get_or_insert(up.clone()) == up;
                used.insert(up);
            }
        }
        (used.len(), stable)
    }
    let mut cfg = config(&[&a, &b]);
    cfg.method = Method::IpHash;
    let (h, base) = start(cfg.clone()).await;
    // Not trusted: every request is from 127.0.0.1, so one upstream takes them all.
    assert_eq!(spread(&base).await, (1, true));
    h.stop(true).await;
    cfg.set_real_ip_from = vec!["127.0.0.1".into()];
    let (h, base) = start(cfg).await;
    assert_eq!(spread(&base).await, (2, true));
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_allow_and_the_access_log_see_the_named_client() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.status_path = Some("/_status".into());
    cfg.set_real_ip_from = vec!["127.0.0.0/8".into()];
    cfg.access_log = Some(log.clone());
    let (h, base) = start(cfg).await;
    let http = client();
    let status = |ip: Option<&'static str>| {
        let mut r = http.get(format!("{base}/_status"));
        if let Some(ip) = ip {
            r = r.header("x-real-ip", ip);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 200);
    assert_eq!(status(Some("203.0.113.9")).await, 403);
    assert_eq!(status(Some("127.0.0.5")).await, 200);
    let r = http
        .get(format!("{base}/x"))
        .header("x-real-ip", "2001:db8::5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = log_lines_at_least(&log, 4).await;
    let first: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        first,
        ["127.0.0.1", "203.0.113.9", "127.0.0.5", "2001:db8::5"],
        "{lines:?}"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_named() {
    use ferrocat_balancer::Balancer;
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.set_real_ip_from = vec!["127.0.0.1".into(), "10.0.0.0/33".into()];
    let Err(e) = Balancer::start(cfg).await else {
        panic!("accepted")
    };
    assert!(
        e.to_string().contains("balancer.set_real_ip_from[1]"),
        "{e}"
    );
    for header in ["proxy_protocol", "X Forwarded", ""] {
        let mut cfg = config(&[&a]);
        cfg.set_real_ip_from = vec!["127.0.0.1".into()];
        cfg.real_ip_header = header.into();
        let Err(e) = Balancer::start(cfg).await else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("balancer.real_ip_header"), "{e}");
    }
}
