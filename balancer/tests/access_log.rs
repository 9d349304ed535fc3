//! The access log: one nginx-`combined` line per request, with request time and every upstream
//! tried; escaped fields; reopened by a reload (log rotation); a bad path is a config error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{client, config, log_lines_at_least as lines_at_least, raw_exchange, start, Upstream};

/// The fields of a line: (request, status, body bytes, referer, user agent, request time,
/// upstream addresses, upstream statuses).
fn fields(line: &str) -> (String, u16, u64, String, String, f64, String, String) {
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" (\d+\.\d{3}) "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap();
    let c = re
        .captures(line)
        .unwrap_or_else(|| panic!("not a log line: {line}"));
    let s = |i: usize| c[i].to_owned();
    (
        s(1),
        s(2).parse().unwrap(),
        s(3).parse().unwrap(),
        s(4),
        s(5),
        s(6).parse().unwrap(),
        s(7),
        s(8),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_line_with_status_bytes_time_and_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let a = Upstream::start("a").await;
    let dead = Upstream::start("dead").await;
    dead.kill();
    let mut cfg = config(&[&dead, &a]);
    cfg.access_log = Some(path.clone());
    cfg.deny = vec!["^/secret".into()];
    let (h, base) = start(cfg).await;
    let http = client();

    // Two requests with equal weights: one of them goes to the dead upstream first and is
    // retried on the live one.
    for i in 0..2 {
        let r = http
            .get(format!("{base}/hello?n={i}"))
            .header(
                "user-agent",
                reqwest::header::HeaderValue::from_bytes(b"probe \"quoted\" \xff").unwrap(),
            )
            .header("referer", "http://127.0.0.1/from")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "a");
    }
    let r = http.get(format!("{base}/slow/120")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/status/404")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(format!("{base}/secret/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let denied_body = r.bytes().await.unwrap().len() as u64;

    let lines = lines_at_least(&path, 5).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let parsed: Vec<_> = lines.iter().map(|l| fields(l)).collect();

    let (a_addr, dead_addr) = (a.addr.to_string(), dead.addr.to_string());
    for (i, p) in parsed[..2].iter().enumerate() {
        assert_eq!(p.0, format!("GET /hello?n={i} HTTP/1.1"));
        assert_eq!((p.1, p.2), (200, 1), "status and the body's 1 byte");
        assert_eq!(p.3, "http://127.0.0.1/from");
        // `"` and bytes beyond ASCII are escaped: no field can be forged.
        assert_eq!(p.4, r"probe \x22quoted\x22 \xFF");
    }
    let upstreams: Vec<(&str, &str)> = parsed[..2]
        .iter()
        .map(|p| (p.6.as_str(), p.7.as_str()))
        .collect();
    let retried = format!("{dead_addr}, {a_addr}");
    assert!(
        upstreams.contains(&(retried.as_str(), "502, 200")),
        "one request was retried on the live upstream: {upstreams:?}"
    );
    // The other went to the live one, at once or, when the dead one's suspension was not in
    // force yet (the failure report reaches the health owner a moment later), after it too.
    assert!(
        upstreams
            .iter()
            .all(|(addrs, statuses)| addrs.ends_with(a_addr.as_str()) && statuses.ends_with("200")),
        "{upstreams:?}"
    );

    let slow = &parsed[2];
    assert_eq!(slow.0, "GET /slow/120 HTTP/1.1");
    assert!(slow.5 >= 0.12 && slow.5 < 5.0, "request time {}", slow.5);
    assert_eq!((slow.6.as_str(), slow.7.as_str()), (a_addr.as_str(), "200"));

    let missing = &parsed[3];
    assert_eq!((missing.1, missing.7.as_str()), (404, "404"));

    let denied = &parsed[4];
    assert_eq!((denied.1, denied.2), (403, denied_body));
    assert_eq!((denied.6.as_str(), denied.7.as_str()), ("-", "-"));
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reopens_the_log_after_rotation_and_a_stop_flushes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.access_log = Some(path.clone());
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    http.get(format!("{base}/before")).send().await.unwrap();
    assert_eq!(lines_at_least(&path, 1).await.len(), 1);

    // logrotate: move the file away, then SIGHUP (a reload with the same config).
    std::fs::rename(&path, &rotated).unwrap();
    h.reload(cfg).unwrap();
    http.get(format!("{base}/after")).send().await.unwrap();
    // Stopping flushes what the worker still buffers, and returns once it is written: read
    // the file at once, without waiting.
    h.stop(true).await;
    let fresh: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(
        fresh[0].contains("\"GET /after HTTP/1.1\" 200"),
        "{fresh:?}"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1);
    assert!(old.contains("\"GET /before HTTP/1.1\" 200"), "{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_in_a_missing_directory_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.access_log = Some(dir.path().join("no-such-dir").join("access.log"));
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.key, "balancer.access_log");
    let err = ferrocat_balancer::Balancer::start(cfg).await.unwrap_err();
    assert!(err.to_string().contains("balancer.access_log"), "{err}");
    // "off" is no log at all.
    let mut cfg = config(&[&a]);
    cfg.access_log = Some("off".into());
    assert!(cfg.validate().is_ok());
    let (h, _) = start(cfg).await;
    h.stop(true).await;
    assert!(!Path::new("off").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_is_logged_with_the_line_the_client_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.access_log = Some(path.clone());
    let (h, base) = start(cfg).await;
    // A header line without a colon, then a control byte in a request line.
    for raw in [
        &b"GET /bad/header HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"[..],
        &b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let out = raw_exchange(&base, raw).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    }
    let lines = lines_at_least(&path, 2).await;
    let parsed: Vec<_> = lines.iter().map(|l| fields(l)).collect();
    assert_eq!(parsed.len(), 2, "{lines:#?}");
    assert_eq!(parsed[0].0, "GET /bad/header HTTP/1.1");
    assert_eq!(parsed[1].0, r"GET /a\x01b HTTP/1.1");
    for p in &parsed {
        assert_eq!(p.1, 400);
        assert_eq!((p.6.as_str(), p.7.as_str()), ("-", "-"));
    }
    assert_eq!(a.hits(), 0);
    h.stop(true).await;
}
