//! `request_id_header`: every request carries an id, the client's (or a proxy's in front) when
//! sane, else a new one; the upstream, the client and the access log see the same id, and
//! `$request_id` evaluates to it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, log_lines_at_least, raw_exchange, start, Upstream};

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

/// The value of `name` (lower case) in a raw answer's head.
fn head_value<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_refused_before_parsing_get_an_id_and_the_always_headers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.request_id_header = "X-Request-ID".into();
    cfg.add_header = vec!["X-Frame-Options: DENY".into()];
    cfg.add_header_always = true;
    cfg.access_log = Some(log.clone());
    let (h, base) = start(cfg).await;
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: [(Vec<u8>, &str); 3] = [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: edge-1\r\nBad Header\r\n\r\n".to_vec(),
            "400",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            "414",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: edge-2\r\n{many_headers}\r\n")
                .into_bytes(),
            "431",
        ),
    ];
    let mut ids = Vec::new();
    for (head, status) in &cases {
        let answer = raw_exchange(&base, head).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{status}: {answer}"
        );
        // The head was not parsed, so the client's id is not trusted: a new one.
        let id = head_value(&answer, "x-request-id").unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(id.len(), 32, "{answer}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{answer}");
        assert_eq!(
            head_value(&answer, "x-frame-options"),
            Some("DENY"),
            "{answer}"
        );
        ids.push(id.to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(a.hits(), 0, "refused heads reach no upstream");
    // The access log names the same ids.
    let lines = log_lines_at_least(&log, 3).await;
    let logged: Vec<String> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().trim_matches('"').to_owned())
        .collect();
    assert_eq!(logged, ids, "{lines:?}");
    h.stop(true).await;
}
