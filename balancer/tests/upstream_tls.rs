//! TLS to the upstreams (`tls = true` on an upstream, nginx `proxy_pass https://`): requests and
//! bodies of any size pass over a verified TLS connection that is kept alive; a certificate
//! that is not trusted, or not for the upstream's name, fails the attempt with 502 while
//! `proxy_ssl_verify = false` lets it through; active health checks go over TLS; a client
//! certificate is shown to an upstream that asks for one; an upstream certificate revoked by
//! `proxy_ssl_crl` fails the attempt; bad keys are config errors naming them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferrocat_balancer::{BalancerConfig, HealthCheckConfig, UpstreamConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use common::{certificate, certificate_for, client, config, start, Pki, Upstream};

/// A ferrocat balancer that terminates TLS (`ssl_listen`) in front of `up`: the `tls` upstream
/// of the balancer under test. Returns its handle and its TLS address.
async fn tls_front(
    up: &Upstream,
    cert: &Path,
    key: &Path,
) -> (ferrocat_balancer::BalancerHandle, String) {
    let mut cfg = config(&[up]);
    cfg.ssl_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.ssl_certificate = Some(cert.to_owned());
    cfg.ssl_certificate_key = Some(key.to_owned());
    cfg.client_max_body_size = 64 << 20;
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap().to_string();
    (h, addr)
}

/// A balancer config whose one upstream is `address` over TLS, trusting `ca`.
fn over_tls(address: &str, ca: &Path) -> BalancerConfig {
    let mut cfg = config(&[]);
    let mut up = UpstreamConfig::new(address);
    up.tls = true;
    cfg.upstream = vec![up];
    cfg.proxy_ssl_trusted_certificate = Some(ca.to_owned());
    cfg.client_max_body_size = 64 << 20;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_large_bodies_pass_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream is addressed by IP: its certificate must carry that IP.
    let (cert, key, _) = certificate_for(dir.path(), "up", "127.0.0.1");
    let a = Upstream::start("a").await;
    let (front, tls_addr) = tls_front(&a, &cert, &key).await;
    let (h, base) = start(over_tls(&tls_addr, &cert)).await;
    let http = client();

    for _ in 0..5 {
        let resp = http.get(format!("{base}/headers")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        // The hop to the front balancer was TLS: it marks what it passes on as https.
        assert!(text.contains("x-forwarded-proto: https"), "{text}");
    }

    // A 20 MB download and an 8 MiB upload come through whole.
    let big = http
        .get(format!("{base}/big/20000000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big.len(), 20_000_000);
    assert!(big.iter().all(|&b| b == b'x'));
    let body: Vec<u8> = (0..8usize << 20).map(|k| (k % 251) as u8).collect();
    let want = common::Digest::of(&body);
    let resp = http
        .post(format!("{base}/digest"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), want);
    h.stop(true).await;
    front.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_or_a_wrong_name_fails_unless_verification_is_off() {
    let dir = tempfile::tempdir().unwrap();
    // Made for `localhost` only, not for 127.0.0.1.
    let (cert, key, _) = certificate(dir.path(), "up");
    let (other, _, _) = certificate(dir.path(), "other");
    let a = Upstream::start("a").await;
    let (front, tls_addr) = tls_front(&a, &cert, &key).await;
    let http = client();
    let status = |cfg: BalancerConfig| {
        let http = http.clone();
        async move {
            let (h, base) = start(cfg).await;
            let s = http.get(format!("{base}/")).send().await.unwrap().status();
            h.stop(true).await;
            s.as_u16()
        }
    };

    // Signed by a CA the balancer does not trust.
    assert_eq!(status(over_tls(&tls_addr, &other)).await, 502);
    // Trusted, but the certificate is not for the name the upstream is reached by.
    assert_eq!(status(over_tls(&tls_addr, &cert)).await, 502);
    // Trusted, and for the name given as `tls_name`.
    let mut named = over_tls(&tls_addr, &cert);
    named.upstream[0].tls_name = Some("localhost".into());
    assert_eq!(status(named.clone()).await, 200);
    // A name the certificate does not carry.
    named.upstream[0].tls_name = Some("shop.example".into());
    assert_eq!(status(named).await, 502);
    // Verification off: any certificate goes.
    let mut unverified = over_tls(&tls_addr, &other);
    unverified.proxy_ssl_verify = false;
    assert_eq!(status(unverified).await, 200);
    // A server that does not speak TLS at all.
    let mut plain = over_tls(&a.addr.to_string(), &cert);
    plain.proxy_ssl_verify = false;
    assert_eq!(status(plain).await, 502);
    // Only the requests that got through reached the upstream.
    assert_eq!(a.hits(), 2);
    // A failed handshake is a failed attempt like a refused connect: the next upstream answers.
    let mut two = over_tls(&tls_addr, &cert);
    two.upstream.push(a.config());
    let (h, base) = start(two).await;
    for _ in 0..4 {
        let (s, name) = common::get(&http, &format!("{base}/")).await;
        assert_eq!((s, name.as_str()), (200, "a"));
    }
    h.stop(true).await;
    assert_eq!(a.hits(), 6);
    front.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_of_a_tls_upstream_go_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate_for(dir.path(), "up", "127.0.0.1");
    let a = Upstream::start("a").await;
    let (front, tls_addr) = tls_front(&a, &cert, &key).await;
    let mut cfg = over_tls(&tls_addr, &cert);
    cfg.health_check = Some(HealthCheckConfig {
        path: "/status/200".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        expect_status: vec![200],
    });
    let (h, base) = start(cfg).await;
    // Probes in plain HTTP would fail against the TLS port and take the upstream down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.hits() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the health checks did not reach the upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    h.stop(true).await;
    front.stop(true).await;
}

/// A TLS server of the test's own (not a ferrocat balancer) that requires a client
/// certificate signed by `client_ca`, and answers every request of a connection with `200` and
/// the number of handshakes it has completed so far.
struct MutualTls {
    address: String,
    handshakes: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

async fn mutual_tls(cert: &Path, key: &Path, client_ca: CertificateDer<'static>) -> MutualTls {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (done, no) = (handshakes.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, done, no) = (acceptor.clone(), done.clone(), no.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    no.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = format!("handshakes: {n}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(answer.as_bytes()).await.is_err()
                            || tls.flush().await.is_err()
                        {
                            return;
                        }
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    MutualTls {
        address,
        handshakes,
        refused,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_shown_and_the_tls_connection_is_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate_for(dir.path(), "up", "127.0.0.1");
    let (client_cert, client_key, client_der) = certificate(dir.path(), "balancer");
    let server = mutual_tls(&cert, &key, client_der).await;
    let http = client();

    // Without a client certificate the upstream refuses the handshake.
    let (h, base) = start(over_tls(&server.address, &cert)).await;
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    h.stop(true).await;
    assert!(server.refused.load(Ordering::SeqCst) >= 1);
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);

    let mut cfg = over_tls(&server.address, &cert);
    cfg.proxy_ssl_certificate = Some(client_cert);
    cfg.proxy_ssl_certificate_key = Some(client_key);
    let (h, base) = start(cfg).await;
    for _ in 0..10 {
        let resp = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // One handshake for all ten requests: the TLS connection is kept alive.
        assert_eq!(resp.text().await.unwrap(), "handshakes: 1");
    }
    h.stop(true).await;
}

#[test]
fn bad_upstream_tls_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path(), "c");
    let base = over_tls("127.0.0.1:9", &cert);
    assert!(base.validate().is_ok());
    assert!(base.check_files().is_ok());

    let mut cfg = base.clone();
    cfg.upstream[0].tls = false;
    cfg.upstream[0].tls_name = Some("app.internal".into());
    assert_eq!(
        cfg.validate().unwrap_err().key,
        "balancer.upstream[0].tls_name"
    );
    let mut cfg = base.clone();
    cfg.upstream[0].tls_name = Some("not a name".into());
    assert_eq!(
        cfg.validate().unwrap_err().key,
        "balancer.upstream[0].tls_name"
    );
    let mut cfg = base.clone();
    cfg.proxy_ssl_trusted_certificate = Some(dir.path().join("missing.pem"));
    assert_eq!(
        cfg.check_files().unwrap_err().key,
        "balancer.proxy_ssl_trusted_certificate"
    );
    let mut cfg = base.clone();
    cfg.proxy_ssl_trusted_certificate = Some(key.clone());
    assert_eq!(
        cfg.check_files().unwrap_err().key,
        "balancer.proxy_ssl_trusted_certificate"
    );
    let mut cfg = base.clone();
    cfg.proxy_ssl_certificate = Some(cert.clone());
    assert_eq!(
        cfg.validate().unwrap_err().key,
        "balancer.proxy_ssl_certificate_key"
    );
    let mut cfg = base.clone();
    cfg.proxy_ssl_certificate = Some(cert.clone());
    cfg.proxy_ssl_certificate_key = Some(cert.clone());
    assert_eq!(
        cfg.check_files().unwrap_err().key,
        "balancer.proxy_ssl_certificate_key"
    );

    // The same keys from TOML.
    let toml = format!(
        "proxy_ssl_trusted_certificate = {:?}\nproxy_ssl_verify = true\n\
         [[upstream]]\naddress = \"127.0.0.1:9\"\ntls = true\ntls_name = \"app.internal\"\n",
        cert.display().to_string()
    );
    let parsed: BalancerConfig = toml::from_str(&toml).unwrap();
    assert!(parsed.upstream[0].tls);
    assert_eq!(parsed.upstream[0].tls_name.as_deref(), Some("app.internal"));
    assert!(parsed.check_files().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_self_signed_certificate_marked_as_a_ca_is_accepted_for_its_name() {
    // What `openssl req -x509` makes: self-signed with basicConstraints CA:TRUE, which
    // webpki alone refuses as a server's certificate and OpenSSL (nginx) accepts.
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let made = params.self_signed(&key).unwrap();
    let (cert, key_file) = (dir.path().join("ca-up.crt"), dir.path().join("ca-up.key"));
    std::fs::write(&cert, made.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let a = Upstream::start("a").await;
    let (front, tls_addr) = tls_front(&a, &cert, &key_file).await;
    let http = client();
    let (h, base) = start(over_tls(&tls_addr, &cert)).await;
    assert_eq!(
        http.get(format!("{base}/")).send().await.unwrap().status(),
        200
    );
    h.stop(true).await;
    // Pinned, but not for this name.
    let mut named = over_tls(&tls_addr, &cert);
    named.upstream[0].tls_name = Some("shop.example".into());
    let (h, base) = start(named).await;
    assert_eq!(
        http.get(format!("{base}/")).send().await.unwrap().status(),
        502
    );
    h.stop(true).await;
    // Not pinned: another certificate in the trusted file.
    let (other, _, _) = certificate(dir.path(), "other");
    let (h, base) = start(over_tls(&tls_addr, &other)).await;
    assert_eq!(
        http.get(format!("{base}/")).send().await.unwrap().status(),
        502
    );
    h.stop(true).await;
    front.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_revoked_by_proxy_ssl_crl_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let good = pki.server(dir.path(), "good", 5, "127.0.0.1");
    let revoked = pki.server(dir.path(), "revoked", 6, "127.0.0.1");
    let crl = dir.path().join("ca.crl");
    std::fs::write(&crl, pki.crl(&[6])).unwrap();
    let a = Upstream::start("a").await;
    let (_good_front, good_addr) = tls_front(&a, &good.0, &good.1).await;
    let (_revoked_front, revoked_addr) = tls_front(&a, &revoked.0, &revoked.1).await;
    let http = client();
    let status = |base: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for (addr, with_crl, want) in [
        (&good_addr, false, 200),
        (&revoked_addr, false, 200),
        (&good_addr, true, 200),
        (&revoked_addr, true, 502),
    ] {
        let mut cfg = over_tls(addr, &ca);
        if with_crl {
            cfg.proxy_ssl_crl = Some(crl.clone());
        }
        let (h, base) = start(cfg).await;
        assert_eq!(status(base).await, want, "{addr} with the list: {with_crl}");
        h.stop(true).await;
    }
    // Config errors name the key.
    let mut bad = over_tls(&good_addr, &ca);
    bad.proxy_ssl_crl = Some(crl.clone());
    bad.proxy_ssl_verify = false;
    let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
    assert!(err.to_string().contains("balancer.proxy_ssl_crl"), "{err}");
    let garbage = dir.path().join("garbage.crl");
    std::fs::write(
        &garbage,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let mut bad = over_tls(&good_addr, &ca);
    bad.proxy_ssl_crl = Some(garbage);
    let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
    assert!(err.to_string().contains("balancer.proxy_ssl_crl"), "{err}");
}
