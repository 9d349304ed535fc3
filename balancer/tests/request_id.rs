//! `request_id_header`: every request carries an id, the client's (or a proxy's in front) when
//! sane, else a new one; the upstream, the client and the access log see the same id, and
//! `$request_id` evaluates to it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, log_lines_at_least, start, Upstream};

/// The value of header `name` in the `/headers` echo (one line per header).
fn echoed<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_per_request_seen_by_the_upstream_the_client_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.request_id_header = "X-Request-ID".into();
    cfg.proxy_set_header = vec!["X-Trace: t-$request_id".into()];
    cfg.access_log = Some(log.clone());
    let (h, base) = start(cfg).await;
    let http = client();
    let ask = |sent: Option<String>| {
        let mut r = http.get(format!("{base}/headers"));
        if let Some(s) = sent {
            r = r.header("x-request-id", s);
        }
        async move {
            let r = r.send().await.unwrap();
            let back = r.headers()["x-request-id"].to_str().unwrap().to_owned();
            (back, r.text().await.unwrap())
        }
    };
    // None sent: a new one, 32 hex digits, the same everywhere.
    let (back, text) = ask(None).await;
    assert_eq!(back.len(), 32, "{back}");
    assert!(back.bytes().all(|b| b.is_ascii_hexdigit()), "{back}");
    assert_eq!(echoed(&text, "x-request-id"), [back.as_str()], "{text}");
    assert_eq!(echoed(&text, "x-trace"), [format!("t-{back}").as_str()]);
    let (other, _) = ask(None).await;
    assert_ne!(other, back, "each request gets its own");
    // One sent by a proxy in front: kept, not doubled.
    let (kept, text) = ask(Some("edge-7f3a".into())).await;
    assert_eq!(kept, "edge-7f3a");
    assert_eq!(echoed(&text, "x-request-id"), ["edge-7f3a"], "{text}");
    // An unusable one (too long): replaced.
    let (fresh, text) = ask(Some("x".repeat(300))).await;
    assert_eq!(fresh.len(), 32);
    assert_eq!(echoed(&text, "x-request-id"), [fresh.as_str()]);

    // The access log ends each line with the id.
    let lines = log_lines_at_least(&log, 4).await;
    let ids: Vec<String> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().trim_matches('"').to_owned())
        .collect();
    assert_eq!(ids, [back, other, kept, fresh], "{lines:?}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_id_headers_are_named() {
    use ferrocat_balancer::Balancer;
    let a = Upstream::start("a").await;
    for (name, add) in [
        ("Content-Length", vec![]),
        ("X Id", vec![]),
        ("X-Request-ID", vec!["X-Request-ID: fixed".to_owned()]),
    ] {
        let mut cfg = config(&[&a]);
        cfg.request_id_header = name.into();
        cfg.add_header = add;
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{name} accepted")
        };
        assert!(e.to_string().contains("balancer.request_id_header"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_own_answers_carry_the_id_too() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.request_id_header = "X-Request-ID".into();
    cfg.deny = vec!["^/secret".into()];
    let (h, base) = start(cfg).await;
    let http = client();
    let r = http
        .get(format!("{base}/secret"))
        .header("x-request-id", "edge-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-request-id"], "edge-1");
    a.kill();
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-request-id"].len(), 32);
    h.stop(true).await;
}
