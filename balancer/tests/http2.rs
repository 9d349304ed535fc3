//! HTTP/2 on the TLS listener (`http2 = true`, nginx `http2 on`): a client that offers `h2`
//! gets it; its streams run side by side on one connection and reach the upstreams as
//! HTTP/1.1 through the same request path as HTTP/1.1 clients (deny, body limits, error pages,
//! the access log); bodies stream both ways under flow control; a stop lets open streams end.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ferrocat_balancer::BalancerConfig;
use http::{Method, Request, StatusCode};
use tokio_rustls::rustls;

use common::{certificate, config, start, tls_connect, Upstream};

fn h2_config(
    ups: &[&Upstream],
    dir: &std::path::Path,
) -> (BalancerConfig, rustls::pki_types::CertificateDer<'static>) {
    let (cert, key, der) = certificate(dir, "site");
    let mut cfg = config(ups);
    cfg.ssl_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.ssl_certificate = Some(cert);
    cfg.ssl_certificate_key = Some(key);
    cfg.http2 = true;
    (cfg, der)
}

/// A balancer with `http2` in front of `a`, its TLS address and an HTTP/2 client of it.
async fn h2_started(
    a: &Upstream,
    dir: &std::path::Path,
) -> (
    ferrocat_balancer::BalancerHandle,
    SocketAddr,
    h2::client::SendRequest<Bytes>,
) {
    let (cfg, der) = h2_config(&[a], dir);
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let send = h2_client(addr, &der).await;
    (h, addr, send)
}

/// An HTTP/2 client over a TLS connection that offers `h2` and `http/1.1`.
async fn h2_client(
    addr: SocketAddr,
    der: &rustls::pki_types::CertificateDer<'static>,
) -> h2::client::SendRequest<Bytes> {
    let tls = tls_connect(addr, der, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends `req` (with `body` pieces, then the end) and returns the status, the headers and the
/// whole body.
async fn exchange(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: Vec<Bytes>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut stream) = send.send_request(req, body.is_empty()).unwrap();
    let n = body.len();
    for (i, piece) in body.into_iter().enumerate() {
        stream.reserve_capacity(piece.len());
        stream.send_data(piece, i + 1 == n).unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("an answer")
        .unwrap();
    let (parts, mut recv) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        out.extend_from_slice(&chunk);
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    (parts.status, parts.headers, out)
}

fn get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("https://localhost:{}{path}", addr.port()))
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_a_connection_and_reach_the_upstream_as_http1() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let (h, addr, mut send) = h2_started(&a, dir.path()).await;

    // `:authority` becomes `Host`, split cookie fields one `Cookie` line, and the upstream
    // learns the request came over https.
    let mut req = get(addr, "/headers?q=1");
    req.headers_mut().append("cookie", "a=1".parse().unwrap());
    req.headers_mut().append("cookie", "b=2".parse().unwrap());
    let (status, headers, body) = exchange(&mut send, req, vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "a");
    assert!(!headers.contains_key("connection"));
    let echoed = String::from_utf8(body).unwrap();
    assert!(
        echoed.contains(&format!("host: localhost:{}\n", addr.port())),
        "{echoed}"
    );
    assert!(echoed.contains("cookie: a=1; b=2\n"), "{echoed}");
    assert!(echoed.contains("x-forwarded-proto: https\n"), "{echoed}");
    assert!(echoed.contains("x-real-ip: 127.0.0.1\n"), "{echoed}");

    // Ten slow requests at once on the one connection: they run side by side (the upstream
    // sees them on several connections at the same time), and each gets its own answer.
    let before = a.conns();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let (status, _, body) =
                exchange(&mut send, get(addr, &format!("/slow/400?i={i}")), vec![]).await;
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"a"[..]));
    }
    assert!(
        a.conns() - before >= 5,
        "streams were not served concurrently: {} new upstream connections",
        a.conns() - before
    );

    // A large download and an upload without a length (under the 1 MB default limit), both
    // through flow control.
    let (status, _, body) = exchange(&mut send, get(addr, "/big/8000000"), vec![]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 8_000_000));
    assert!(body.iter().all(|&b| b == b'x'));
    let pieces: Vec<Bytes> = (0..30).map(|_| Bytes::from(vec![b'u'; 30_000])).collect();
    let req = Request::post(format!("https://localhost:{}/upload", addr.port()))
        .body(())
        .unwrap();
    let (status, _, body) = exchange(&mut send, req, pieces).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"900000"[..]));

    // HEAD: the length, no body.
    let req = Request::head(format!("https://localhost:{}/text/1000", addr.port()))
        .body(())
        .unwrap();
    let (status, headers, body) = exchange(&mut send, req, vec![]).await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(headers["content-length"], "1000");
    h.stop(false).await;
}

fn error_page() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/html/50x.html")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_paths_rules_apply_to_http2() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let a = Upstream::start("a").await;
    let (mut cfg, der) = h2_config(&[&a], dir.path());
    cfg.deny = vec!["^/secret".into()];
    cfg.client_max_body_size = 100_000;
    cfg.error_page = Some(error_page());
    cfg.access_log = Some(log.clone());
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let mut send = h2_client(addr, &der).await;

    let (status, _, _) = exchange(&mut send, get(addr, "/secret/x"), vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Too large, announced and not announced: 413 before the upstream sees anything.
    let hits = a.hits();
    let req = Request::post(format!("https://localhost:{}/upload", addr.port()))
        .header("content-length", "200000")
        .body(())
        .unwrap();
    let (status, _, _) = exchange(&mut send, req, vec![Bytes::from(vec![b'u'; 200_000])]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let pieces: Vec<Bytes> = (0..20).map(|_| Bytes::from(vec![b'u'; 10_000])).collect();
    let req = Request::post(format!("https://localhost:{}/upload", addr.port()))
        .body(())
        .unwrap();
    let (status, _, _) = exchange(&mut send, req, pieces).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.hits(), hits, "the upstream saw a refused body");
    // The connection goes on after the refusals.
    let (status, _, body) = exchange(&mut send, get(addr, "/x"), vec![]).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"a"[..]));

    // The only upstream gone: the error page, with 502.
    a.kill();
    let (status, _, body) = exchange(&mut send, get(addr, "/x"), vec![]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let page = std::fs::read(error_page()).unwrap();
    assert_eq!(body, page);

    h.stop(true).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"GET /secret/x HTTP/2.0\" 403"), "{text}");
    assert!(text.contains("\"POST /upload HTTP/2.0\" 413"), "{text}");
    assert!(text.contains("\"GET /x HTTP/2.0\" 502"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_open_streams_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let (h, addr, mut send) = h2_started(&a, dir.path()).await;
    let slow = {
        let mut send = send.clone();
        tokio::spawn(async move { exchange(&mut send, get(addr, "/slow/600"), vec![]).await })
    };
    // Let the stream reach the upstream, then stop.
    let (status, _, _) = exchange(&mut send, get(addr, "/x"), vec![]).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(async move { h.stop(true).await });
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"a"[..]));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the balancer stops once the stream ended")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http2_tls_offers_only_http1() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let (mut cfg, der) = h2_config(&[&a], dir.path());
    cfg.http2 = false;
    let (h, _) = start(cfg).await;
    let tls = tls_connect(h.tls_addr().unwrap(), &der, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    h.stop(false).await;

    // `http2` needs the TLS listener.
    let mut cfg = config(&[&a]);
    cfg.http2 = true;
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.key, "balancer.http2");
    let _ = Method::GET;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_is_reset_after_send_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let (mut cfg, der) = h2_config(&[&a], dir.path());
    cfg.send_timeout = Duration::from_millis(300);
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let send = h2_client(addr, &der).await;
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(get(addr, "/big/8000000"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read without ever opening the window again: only the first window's bytes come, then
    // the stream is reset.
    let mut got = 0;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(c) => got += c.len(),
                Err(e) => return Some(e),
            }
        }
        None
    })
    .await
    .expect("the stream ends long before the client reads it all");
    let err = ended.expect("reset, not a complete body");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    assert!(got < 8_000_000, "{got}");
    // The connection goes on (once the client gives back the connection window it held).
    drop(body);
    let (status, _, body) = exchange(&mut send.clone(), get(addr, "/x"), vec![]).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"a"[..]));
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_resets_ends_its_request() {
    // With one request in flight allowed per client, the next request is admitted only once
    // the reset one has really ended in the balancer.
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let (mut cfg, der) = h2_config(&[&a], dir.path());
    cfg.limit_conn = 1;
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let mut send = h2_client(addr, &der).await;
    let hits = a.hits();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, body) = ready.send_request(get(addr, "/slow/5000"), true).unwrap();
    // The slow request reaches the upstream and holds the client's one slot...
    for _ in 0..100 {
        if a.hits() > hits {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.hits(), hits + 1);
    let (status, _, _) = exchange(&mut send, get(addr, "/x"), vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // ...until the client resets its stream (dropping it sends RST_STREAM).
    drop((resp, body));
    let mut admitted = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if exchange(&mut send, get(addr, "/x"), vec![]).await.0 == StatusCode::OK {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the reset stream kept its request going");
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_keepalive_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::start("a").await;
    let (mut cfg, der) = h2_config(&[&a], dir.path());
    cfg.client_keepalive_timeout = Duration::from_millis(300);
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let tls = tls_connect(addr, &der, &[b"h2"]).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    // A request keeps it open while it runs (the slow answer outlasts the idle limit).
    let (status, _, _) = exchange(&mut send.clone(), get(addr, "/slow/500"), vec![]).await;
    assert_eq!(status, 200);
    // Then, with no stream open, the balancer says GOAWAY and closes (the client's connection
    // task ends; how it ends depends on what the client still wanted to write).
    let _ = tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle connection was closed")
        .unwrap();
    h.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_over_http2_with_conditionals_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    let a = Upstream::start("a").await;
    let (mut cfg, der) = h2_config(&[&a], dir.path());
    cfg.statics = vec![ferrocat_balancer::StaticConfig::root("/files/", &www)];
    cfg.statics[0].alias = cfg.statics[0].root.take();
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let mut send = h2_client(addr, &der).await;

    let (status, headers, body) = exchange(&mut send, get(addr, "/files/big.bin"), vec![]).await;
    assert_eq!(status, 200);
    assert!(body == big, "the whole file over HTTP/2");
    assert_eq!(headers["content-length"], "200000");
    let etag = headers["etag"].clone();
    let mut req = get(addr, "/files/big.bin");
    req.headers_mut().insert("if-none-match", etag);
    let (status, _, body) = exchange(&mut send, req, vec![]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let mut req = get(addr, "/files/big.bin");
    req.headers_mut()
        .insert("range", "bytes=100000-100009".parse().unwrap());
    let (status, headers, body) = exchange(&mut send, req, vec![]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], "bytes 100000-100009/200000");
    assert!(body == big[100_000..100_010]);
    // HEAD of a missing file: the balancer's 404, head only.
    let req = Request::head(format!("https://localhost:{}/files/none", addr.port()))
        .body(())
        .unwrap();
    let (status, _, body) = exchange(&mut send, req, vec![]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_FOUND, 0));
    assert_eq!(a.hits(), 0);
    h.stop(true).await;
}
