//! `gzip` (nginx `gzip on`, `gzip_types`, `gzip_min_length`, `gzip_comp_level`): responses of a
//! listed type are compressed for clients that accept gzip, whether the upstream sent a length,
//! chunks or a body until close, to HTTP/1.1 (chunked, kept alive) and HTTP/1.0 clients
//! (until close); the head says so (`Content-Encoding`, `Vary`, a weak `ETag`, no length); what
//! must not be compressed is passed on byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read as _;

use common::{config, raw_exchange, start, text_body, Upstream};

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// GETs `url` with `accept` as `Accept-Encoding` (none if `None`): status, the headers asked
/// for (missing = ""), and the raw body.
async fn get(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    names: &[&str],
) -> (u16, Vec<String>, Vec<u8>) {
    let mut req = http.get(url);
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = names
        .iter()
        .map(|n| {
            r.headers()
                .get_all(*n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

const HEADS: &[&str] = &["content-encoding", "content-length", "vary", "etag"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_types_are_compressed_for_clients_that_take_gzip() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.gzip = true;
    cfg.gzip_min_length = 1000;
    let (h, base) = start(cfg).await;
    let http = common::client();
    let text = text_body(200_000);

    // A length from the upstream: compressed, the length gone, Vary added, the ETag weakened.
    let (status, heads, body) = get(
        &http,
        &format!("{base}/text/200000?etag=%22v1%22"),
        Some("br, gzip;q=0.8"),
        HEADS,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(heads, ["gzip", "", "Accept-Encoding", "W/\"v1\""]);
    assert!(body.len() < text.len() / 5, "{} bytes", body.len());
    assert_eq!(gunzip(&body), text);

    // Chunks from the upstream, and an upstream Vary that gets Accept-Encoding added.
    let (status, heads, body) = get(
        &http,
        &format!("{base}/text/200000?stream=1&vary=Cookie"),
        Some("gzip"),
        HEADS,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(heads[..3], ["gzip", "", "Cookie, Accept-Encoding"]);
    assert_eq!(gunzip(&body), text);

    // `Vary: *` already says everything varies: left as it is.
    let (_, heads, body) = get(
        &http,
        &format!("{base}/text/5000?vary=*"),
        Some("gzip"),
        HEADS,
    )
    .await;
    assert_eq!(heads[..3], ["gzip", "", "*"]);
    assert_eq!(gunzip(&body), text_body(5000));

    // Not taken by the client: byte for byte, with its length, and Vary (caches must keep
    // the two forms apart).
    for accept in [None, Some("identity"), Some("gzip;q=0"), Some("br")] {
        let (status, heads, body) = get(
            &http,
            &format!("{base}/text/200000?etag=%22v1%22"),
            accept,
            HEADS,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            heads,
            ["", "200000", "Accept-Encoding", "\"v1\""],
            "{accept:?}"
        );
        assert_eq!(body, text, "{accept:?}");
    }
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_compressed_passes_unchanged() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.gzip = true;
    cfg.gzip_min_length = 1000;
    let (h, base) = start(cfg).await;
    let http = common::client();
    // (path, expected Content-Encoding, expected Vary): an unlisted type, a body the upstream
    // encoded itself, `no-transform`, a body under gzip_min_length, a status nginx leaves alone.
    for (path, enc, vary) in [
        ("/text/5000?type=image%2Fpng", "", ""),
        ("/text/5000?enc=br", "br", "Accept-Encoding"),
        ("/text/5000?cc=public,no-transform", "", "Accept-Encoding"),
        ("/text/999", "", "Accept-Encoding"),
    ] {
        let (status, heads, body) = get(&http, &format!("{base}{path}"), Some("gzip"), HEADS).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            (heads[0].as_str(), heads[2].as_str()),
            (enc, vary),
            "{path}"
        );
        let n: usize = path[6..].split('?').next().unwrap().parse().unwrap();
        assert_eq!(heads[1], n.to_string(), "{path}: the length stays");
        assert_eq!(body, text_body(n), "{path}");
    }
    // A 206 (or any status but 200, 403, 404) is not compressed: /status answers the name.
    let (status, heads, _) = get(&http, &format!("{base}/status/206"), Some("gzip"), HEADS).await;
    assert_eq!((status, heads[0].as_str()), (206, ""));
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_and_http_1_0_clients_get_whole_compressed_bodies() {
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.gzip = true;
    cfg.gzip_comp_level = 6;
    let (h, base) = start(cfg).await;
    let text = text_body(50_000);

    // Two compressed answers and a plain one on one connection: the chunked framing ends
    // where it should, or the next answer would be garbage.
    let reply = raw_exchange(
        &base,
        b"GET /text/50000?stream=1 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n\
          GET /text/50000 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n\
          GET /text/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 3, "{reply:.300}");
    assert_eq!(reply.matches("Transfer-Encoding: chunked").count(), 2);
    assert_eq!(reply.matches("Content-Encoding: gzip").count(), 2);
    assert!(
        reply.ends_with(&String::from_utf8(text_body(10)).unwrap()),
        "{reply:.300}"
    );
    assert_eq!(
        a.conns(),
        1,
        "the upstream connection was reused throughout"
    );

    // HTTP/1.0: no chunks; the body ends with the connection.
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /text/50000?stream=1 HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..split]);
    assert!(head.contains("Content-Encoding: gzip"), "{head}");
    assert!(!head.contains("Transfer-Encoding"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(gunzip(&raw[split..]), text);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_off_by_default_and_bad_settings_are_named() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let (_, heads, body) = get(
        &common::client(),
        &format!("{base}/text/5000"),
        Some("gzip"),
        HEADS,
    )
    .await;
    assert_eq!(heads[..3], ["", "5000", ""]);
    assert_eq!(body, text_body(5000));
    h.stop(true).await;
    for (change, key) in [
        (
            (|c: &mut ferrocat_balancer::BalancerConfig| c.gzip_comp_level = 10)
                as fn(&mut ferrocat_balancer::BalancerConfig),
            "balancer.gzip_comp_level",
        ),
        (
            |c| c.gzip_types = vec!["text/html".into(), "nonsense".into()],
            "balancer.gzip_types[1]",
        ),
    ] {
        let mut cfg = config(&[&a]);
        cfg.gzip = true;
        change(&mut cfg);
        let e = ferrocat_balancer::Balancer::start(cfg).await.unwrap_err();
        assert!(e.to_string().starts_with(&format!("{key}:")), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_delimited_by_the_upstream_closing_is_compressed_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends neither a length nor chunks: its body ends when it closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text = text_body(120_000);
    let sent = text.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                )
                .await;
            for part in sent.chunks(7_000) {
                let _ = s.write_all(part).await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    });
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(addr.to_string())];
    cfg.gzip = true;
    let (h, base) = start(cfg).await;
    let (status, heads, body) =
        get(&common::client(), &format!("{base}/"), Some("gzip"), HEADS).await;
    assert_eq!(status, 200);
    assert_eq!(heads[..2], ["gzip", ""]);
    assert_eq!(gunzip(&body), text);
    h.stop(true).await;
}
