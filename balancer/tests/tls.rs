//! TLS termination (`ssl_listen`, `ssl_certificate`, `ssl_certificate_key`; nginx `listen 443
//! ssl`): requests over TLS reach the upstreams as plain HTTP marked `X-Forwarded-Proto: https`,
//! beside the plain listener; bodies of any size come through whole; a reload picks up a
//! renewed certificate for new connections while open ones go on; a client that does not speak
//! TLS (or says nothing) is closed and counted, and the balancer goes on; bad files are config
//! errors naming the key.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ferrocat_balancer::{Balancer, BalancerConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use common::{
    certificate, certificate_for, client, config, get_json, get_with_host, start, tls_connect,
    tls_connect_to, Upstream,
};

fn tls_config(up: &Upstream, cert: &Path, key: &Path) -> BalancerConfig {
    let mut cfg = config(&[up]);
    cfg.ssl_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.ssl_certificate = Some(cert.to_owned());
    cfg.ssl_certificate_key = Some(key.to_owned());
    cfg.status_path = Some("/_status".into());
    cfg
}

/// An HTTP/1.1 client over one TLS connection.
async fn https(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tls = tls_connect(addr, trusted, &[]).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// GETs `path` over `send`: (status, x-upstream, body).
async fn fetch(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, String, Bytes) {
    send.ready().await.unwrap();
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let up = resp
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, up, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_tls_reach_the_upstream_marked_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "site");
    let a = Upstream::start("a").await;
    let (h, base) = start(tls_config(&a, &cert, &key)).await;
    let tls_addr = h.tls_addr().unwrap();
    assert_ne!(tls_addr, h.local_addr());

    // Several requests on one kept-alive TLS connection, a large streamed body among them.
    let mut send = https(tls_addr, &der).await;
    let (status, up, body) = fetch(&mut send, "/headers").await;
    assert_eq!((status, up.as_str()), (200, "a"));
    let echoed = String::from_utf8(body.to_vec()).unwrap();
    assert!(echoed.contains("x-forwarded-proto: https\n"), "{echoed}");
    assert!(echoed.contains("x-real-ip: 127.0.0.1\n"), "{echoed}");
    let (status, _, body) = fetch(&mut send, "/big/3000000").await;
    assert_eq!((status, body.len()), (200, 3_000_000));
    assert!(body.iter().all(|&b| b == b'x'));
    // A client that reads slowly: the balancer's writes wait for room, and what TLS holds
    // back when they do still goes out.
    send.ready().await.unwrap();
    let req = hyper::Request::get("/big/8000000")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the whole body arrives")
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 8_000_000);
    let (status, up, _) = fetch(&mut send, "/x").await;
    assert_eq!((status, up.as_str()), (200, "a"));
    assert_eq!(a.hits(), 4);

    // The plain listener beside it is still plain.
    let plain = client()
        .get(format!("{base}/headers"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(plain.contains("x-forwarded-proto: http\n"), "{plain}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_picks_up_a_renewed_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1, der1) = certificate(dir.path(), "old");
    let (cert2, key2, der2) = certificate(dir.path(), "new");
    let a = Upstream::start("a").await;
    let cfg = tls_config(&a, &cert1, &key1);
    let (h, _) = start(cfg.clone()).await;
    let addr = h.tls_addr().unwrap();
    let mut open = https(addr, &der1).await;
    assert_eq!(fetch(&mut open, "/").await.0, 200);
    assert!(
        tls_connect(addr, &der2, &[]).await.is_err(),
        "the new certificate is not served yet"
    );

    let mut renewed = cfg.clone();
    renewed.ssl_certificate = Some(cert2);
    renewed.ssl_certificate_key = Some(key2);
    h.reload(renewed).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fresh = https(addr, &der2).await;
    assert_eq!(fetch(&mut fresh, "/").await.0, 200);
    assert!(
        tls_connect(addr, &der1, &[]).await.is_err(),
        "the old certificate is gone"
    );
    // The connection opened before the reload goes on.
    assert_eq!(fetch(&mut open, "/").await.0, 200);

    // The TLS address cannot move without a restart.
    let mut moved = cfg;
    moved.ssl_listen = Some("127.0.0.1:1".parse().unwrap());
    let e = h.reload(moved).unwrap_err();
    assert_eq!(e.key, "balancer.ssl_listen");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_speak_tls_is_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "site");
    let a = Upstream::start("a").await;
    let mut cfg = tls_config(&a, &cert, &key);
    cfg.client_header_timeout = Duration::from_millis(300);
    let (h, base) = start(cfg).await;
    let addr = h.tls_addr().unwrap();

    // Plain HTTP to the TLS port: no answer an HTTP client could take, the connection ends.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("closed")
        .ok();
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    // A client that connects and says nothing is closed after the head's time limit.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0; 64]))
        .await
        .expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // Neither reached the upstream; the balancer serves on and counted both.
    assert_eq!(a.hits(), 0);
    let mut send = https(addr, &der).await;
    assert_eq!(fetch(&mut send, "/").await.0, 200);
    let status = get_json(&client(), &format!("{base}/_status")).await;
    assert_eq!(
        status["connections"]["tls_handshake_failures"], 2,
        "{status}"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_sends_plain_requests_to_https_and_serves_them_there() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "site");
    let a = Upstream::start("a").await;
    let mut cfg = tls_config(&a, &cert, &key);
    cfg.ssl_redirect = true;
    let (h, base) = start(cfg).await;
    let port = h.tls_addr().unwrap().port();
    let http = common::no_follow();
    assert_eq!(
        get_with_host(
            &http,
            &format!("{base}/shop/cart?item=3"),
            "shop.example:8080"
        )
        .await,
        (
            301,
            Some(format!("https://shop.example:{port}/shop/cart?item=3"))
        )
    );
    // A POST keeps its method and body through the redirect: 308.
    let r = http
        .post(format!("{base}/api/order"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://127.0.0.1:{port}/api/order").as_str()
    );
    // A Host that is no host name gets no redirect, and no plain answer either.
    assert_eq!(
        get_with_host(&http, &format!("{base}/x"), "evil.example/phish").await,
        (403, None)
    );
    // The status page stays reachable over plain HTTP.
    assert_eq!(
        http.get(format!("{base}/_status"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(a.hits(), 0, "nothing went upstream over plain HTTP");
    // Over TLS the requests are served.
    let mut send = https(h.tls_addr().unwrap(), &der).await;
    assert_eq!(fetch(&mut send, "/shop/cart").await.0, 200);
    assert_eq!(a.hits(), 1);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_over_tls_becomes_a_tunnel_both_ways() {
    // An upstream that answers any request with 101 and then echoes what it gets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                    .await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "site");
    let a = Upstream::start("a").await;
    let mut cfg = tls_config(&a, &cert, &key);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(up.to_string())];
    let (h, _) = start(cfg).await;
    let mut s = tls_connect(h.tls_addr().unwrap(), &der, &[]).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Messages of any size come back whole through TLS on one side and TCP on the other.
    for msg in [b"ping".to_vec(), vec![0xa5; 300_000]] {
        s.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echoed in time")
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(s);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_are_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path(), "site");
    let (_, other_key, _) = certificate(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let a = Upstream::start("a").await;
    let good = tls_config(&a, &cert, &key);
    let cases: Vec<(BalancerConfig, &str)> = vec![
        (
            BalancerConfig {
                ssl_certificate_key: None,
                ..good.clone()
            },
            "balancer.ssl_certificate_key",
        ),
        (
            BalancerConfig {
                ssl_listen: None,
                ..good.clone()
            },
            "balancer.ssl_listen",
        ),
        (
            BalancerConfig {
                ssl_redirect: true,
                ..config(&[&a])
            },
            "balancer.ssl_redirect",
        ),
        (
            BalancerConfig {
                ssl_certificate: Some(dir.path().join("missing.crt")),
                ..good.clone()
            },
            "balancer.ssl_certificate",
        ),
        (
            BalancerConfig {
                ssl_certificate: Some(garbage.clone()),
                ..good.clone()
            },
            "balancer.ssl_certificate",
        ),
        (
            BalancerConfig {
                ssl_certificate_key: Some(garbage),
                ..good.clone()
            },
            "balancer.ssl_certificate_key",
        ),
        (
            // The key of another certificate.
            BalancerConfig {
                ssl_certificate_key: Some(other_key),
                ..good.clone()
            },
            "balancer.ssl_certificate_key",
        ),
    ];
    for (cfg, key) in cases {
        let Err(e) = Balancer::start(cfg).await else {
            panic!("{key}: accepted")
        };
        assert!(e.to_string().starts_with(&format!("{key}:")), "{key}: {e}");
    }
    let h = Balancer::start(good).await.unwrap();
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_sni_picks_the_certificate_by_the_name_the_client_asks_for() {
    use ferrocat_balancer::SniCertificate;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, default_der) = certificate(dir.path(), "default");
    let (shop_cert, shop_key, shop_der) = certificate_for(dir.path(), "shop", "shop.test");
    let (wild_cert, wild_key, wild_der) = certificate_for(dir.path(), "wild", "*.apps.test");
    let a = Upstream::start("a").await;
    let mut cfg = tls_config(&a, &cert, &key);
    cfg.ssl_sni = vec![
        SniCertificate {
            server_name: vec!["shop.test".into(), "www.shop.test".into()],
            certificate: shop_cert.clone(),
            certificate_key: shop_key.clone(),
        },
        SniCertificate {
            server_name: vec!["*.apps.test".into()],
            certificate: wild_cert.clone(),
            certificate_key: wild_key.clone(),
        },
    ];
    let (h, _) = start(cfg.clone()).await;
    let addr = h.tls_addr().unwrap();
    // Each client trusts only the certificate it expects: the handshake succeeds only if the
    // balancer presented that one.
    for (host, der) in [
        ("shop.test", &shop_der),
        ("SHOP.test", &shop_der),
        ("one.apps.test", &wild_der),
        ("localhost", &default_der),
    ] {
        let mut tls = tls_connect_to(addr, der, &[], host)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200"), "{host}");
    }
    // Names no entry lists, and a wildcard's own parent, get the default certificate.
    for host in ["other.test", "apps.test", "a.b.apps.test"] {
        assert!(
            tls_connect_to(addr, &wild_der, &[], host).await.is_err(),
            "{host} got the wildcard certificate"
        );
        assert!(
            tls_connect_to(addr, &shop_der, &[], host).await.is_err(),
            "{host} got the shop certificate"
        );
    }
    h.stop(true).await;

    // Bad entries are config errors naming the key.
    let (_, other_key, _) = certificate(dir.path(), "other");
    let entry = |names: &[&str], key: &Path| SniCertificate {
        server_name: names.iter().map(|n| n.to_string()).collect(),
        certificate: shop_cert.clone(),
        certificate_key: key.to_owned(),
    };
    let cases = [
        (
            vec![entry(&[], &shop_key)],
            "balancer.ssl_sni[0].server_name",
        ),
        (
            vec![entry(&["shop.test", "bad name"], &shop_key)],
            "balancer.ssl_sni[0].server_name[1]",
        ),
        (
            vec![
                entry(&["shop.test"], &shop_key),
                entry(&["Shop.test"], &shop_key),
            ],
            "balancer.ssl_sni[1].server_name[0]",
        ),
        (
            vec![
                entry(&["shop.test"], &shop_key),
                entry(&["b.test"], &other_key),
            ],
            "balancer.ssl_sni[1].certificate_key",
        ),
    ];
    for (sni, key) in cases {
        let Err(e) = Balancer::start(BalancerConfig {
            ssl_sni: sni,
            ..cfg.clone()
        })
        .await
        else {
            panic!("{key}: accepted")
        };
        assert!(e.to_string().starts_with(&format!("{key}:")), "{key}: {e}");
    }
    let plain = BalancerConfig {
        ssl_sni: vec![entry(&["shop.test"], &shop_key)],
        ..config(&[&a])
    };
    assert_eq!(plain.validate().unwrap_err().key, "balancer.ssl_sni");
}

/// A TLS handshake with `addr` offering only `version`, trusting `trusted`: the version agreed
/// on, or `None` when the handshake failed.
async fn handshake_with(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Option<rustls::ProtocolVersion> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .ok()?;
    tls.get_ref().1.protocol_version()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_protocols_limits_the_tls_versions_offered() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "site");
    let a = Upstream::start("a").await;
    let cfg = tls_config(&a, &cert, &key);
    // Both by default.
    let (h, _) = start(cfg.clone()).await;
    let addr = h.tls_addr().unwrap();
    assert_eq!(
        handshake_with(addr, &der, &rustls::version::TLS12).await,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        handshake_with(addr, &der, &rustls::version::TLS13).await,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    h.stop(true).await;
    let mut only13 = cfg.clone();
    only13.ssl_protocols = vec!["TLSv1.3".into()];
    let (h, _) = start(only13).await;
    let addr = h.tls_addr().unwrap();
    assert_eq!(
        handshake_with(addr, &der, &rustls::version::TLS12).await,
        None
    );
    assert_eq!(
        handshake_with(addr, &der, &rustls::version::TLS13).await,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    h.stop(true).await;
    // Old or unknown versions, or none, are config errors naming the entry.
    for (list, key) in [
        (vec!["TLSv1.2", "TLSv1.1"], "balancer.ssl_protocols[1]"),
        (vec!["TLSv1.4"], "balancer.ssl_protocols[0]"),
        (vec![], "balancer.ssl_protocols"),
    ] {
        let mut bad = cfg.clone();
        bad.ssl_protocols = list.iter().map(|s| s.to_string()).collect();
        let err = Balancer::start(bad).await.err().unwrap();
        assert!(err.to_string().contains(&format!("{key}:")), "{err}");
    }
}
