//! Client certificates on `ssl_listen` (`ssl_verify_client`, `ssl_client_certificate`; nginx's
//! mutual TLS at the edge): with `on` a client without a certificate signed by the CA gets no
//! answer, with one it does and the upstream learns `$ssl_client_verify` and
//! `$ssl_client_fingerprint` through `proxy_set_header`; with `optional` a client may come
//! without one (`NONE`) but not with a foreign one; a client cannot forge those headers; a
//! certificate revoked by `ssl_crl` is refused; bad keys are config errors naming them.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ferrocat_balancer::{BalancerConfig, VerifyClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use common::{certificate, config, start, Pki, Upstream};

fn mtls(
    up: &Upstream,
    dir: &Path,
    ca: &Path,
    verify: VerifyClient,
) -> (BalancerConfig, CertificateDer<'static>) {
    let (cert, key, der) = certificate(dir, "site");
    let mut cfg = config(&[up]);
    cfg.ssl_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.ssl_certificate = Some(cert);
    cfg.ssl_certificate_key = Some(key);
    cfg.ssl_verify_client = verify;
    cfg.ssl_client_certificate = Some(ca.to_owned());
    cfg.proxy_set_header = vec![
        "X-Client-Verify: $ssl_client_verify".into(),
        "X-Client-Fingerprint: $ssl_client_fingerprint".into(),
    ];
    (cfg, der)
}

/// A TLS connection trusting `trusted`, showing the certificate in `client` (PEM files) if
/// given, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .ok()
}

/// `GET /headers` over HTTP/2 on a TLS connection showing the certificate in `client`.
async fn ask_h2(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    client: (&Path, &Path),
) -> String {
    let tls = connect(addr, trusted, Some(client), &[b"h2"])
        .await
        .expect("connected");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get("https://localhost/headers")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).unwrap()
}

/// `GET /headers` over TLS, showing the certificate in `client` (PEM files) if given: the
/// answer as text, or `None` when the connection failed.
async fn ask(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    client: Option<(&Path, &Path)>,
    extra: &str,
) -> Option<String> {
    let mut tls = connect(addr, trusted, client, &[]).await?;
    let head =
        format!("GET /headers HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    // TLS 1.3: a refused client certificate shows as an alert on the first read.
    tls.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

fn sha1_hex(der: &[u8]) -> String {
    use sha1::Digest as _;
    sha1::Sha1::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_is_checked_and_told_to_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key, client_der) = certificate(dir.path(), "client");
    let (stranger_cert, stranger_key, _) = certificate(dir.path(), "stranger");
    let a = Upstream::start("a").await;
    let (cfg, site) = mtls(&a, dir.path(), &client_cert, VerifyClient::On);
    let (h, _) = start(cfg.clone()).await;
    let addr = h.tls_addr().unwrap();

    assert!(ask(addr, &site, None, "").await.is_none(), "no certificate");
    assert!(
        ask(addr, &site, Some((&stranger_cert, &stranger_key)), "")
            .await
            .is_none(),
        "a certificate the CA did not sign"
    );
    assert_eq!(a.hits(), 0);
    // Forged headers are replaced by the balancer's.
    let text = ask(
        addr,
        &site,
        Some((&client_cert, &client_key)),
        "X-Client-Verify: FORGED\r\nX-Client-Fingerprint: 00\r\n",
    )
    .await
    .expect("answered");
    assert!(text.contains("x-client-verify: SUCCESS\n"), "{text}");
    assert!(
        text.contains(&format!(
            "x-client-fingerprint: {}\n",
            sha1_hex(&client_der)
        )),
        "{text}"
    );
    assert!(!text.contains("FORGED"), "{text}");
    h.stop(true).await;

    // The same over HTTP/2: each stream of the connection knows its certificate.
    let mut h2 = cfg.clone();
    h2.http2 = true;
    let (h, _) = start(h2).await;
    let text = ask_h2(h.tls_addr().unwrap(), &site, (&client_cert, &client_key)).await;
    assert!(text.contains("x-client-verify: SUCCESS\n"), "{text}");
    assert!(
        text.contains(&format!(
            "x-client-fingerprint: {}\n",
            sha1_hex(&client_der)
        )),
        "{text}"
    );
    h.stop(true).await;

    // Optional: a client may come without one, but not with a foreign one.
    let (optional, site) = mtls(&a, dir.path(), &client_cert, VerifyClient::Optional);
    let (h, base) = start(optional).await;
    let addr = h.tls_addr().unwrap();
    let text = ask(addr, &site, None, "")
        .await
        .expect("answered without a certificate");
    assert!(text.contains("x-client-verify: NONE\n"), "{text}");
    assert!(ask(addr, &site, Some((&stranger_cert, &stranger_key)), "")
        .await
        .is_none());
    assert!(ask(addr, &site, Some((&client_cert, &client_key)), "")
        .await
        .is_some_and(|t| t.contains("x-client-verify: SUCCESS\n")));
    // Plain HTTP has no TLS at all: the headers are left out.
    let plain = common::client()
        .get(format!("{base}/headers"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!plain.contains("x-client-verify"), "{plain}");
    h.stop(true).await;

    // Bad keys.
    let mut no_ca = cfg.clone();
    no_ca.ssl_client_certificate = None;
    assert_eq!(
        no_ca.validate().unwrap_err().key,
        "balancer.ssl_client_certificate"
    );
    let mut no_tls = cfg.clone();
    no_tls.ssl_listen = None;
    no_tls.ssl_certificate = None;
    no_tls.ssl_certificate_key = None;
    assert_eq!(
        no_tls.validate().unwrap_err().key,
        "balancer.ssl_verify_client"
    );
    let mut unreadable = cfg.clone();
    unreadable.ssl_client_certificate = Some(dir.path().join("missing.pem"));
    assert_eq!(
        unreadable.check_files().unwrap_err().key,
        "balancer.ssl_client_certificate"
    );
    let parsed: BalancerConfig = toml::from_str(
        "ssl_verify_client = \"optional\"\nssl_client_certificate = \"/etc/ferrocat/clients-ca.pem\"\n",
    )
    .unwrap();
    assert_eq!(parsed.ssl_verify_client, VerifyClient::Optional);
    assert!(toml::from_str::<BalancerConfig>("ssl_verify_client = \"maybe\"").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_with_ssl_crl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let good = pki.client(dir.path(), "good", 1);
    let revoked = pki.client(dir.path(), "revoked", 2);
    let crl = dir.path().join("ca.crl");
    std::fs::write(&crl, pki.crl(&[2, 7])).unwrap();
    let a = Upstream::start("a").await;
    let (mut cfg, site) = mtls(&a, dir.path(), &ca, VerifyClient::On);

    // Without the list, both certificates of the CA are taken.
    let (h, _) = start(cfg.clone()).await;
    let addr = h.tls_addr().unwrap();
    for client in [&good, &revoked] {
        assert!(ask(addr, &site, Some((&client.0, &client.1)), "")
            .await
            .is_some());
    }
    h.stop(true).await;

    cfg.ssl_crl = Some(crl.clone());
    let (h, _) = start(cfg.clone()).await;
    let addr = h.tls_addr().unwrap();
    let text = ask(addr, &site, Some((&good.0, &good.1)), "")
        .await
        .expect("a certificate the list does not name");
    assert!(text.contains("x-client-verify: SUCCESS\n"), "{text}");
    let before = a.hits();
    assert!(
        ask(addr, &site, Some((&revoked.0, &revoked.1)), "")
            .await
            .is_none(),
        "a revoked certificate gets no answer"
    );
    assert_eq!(a.hits(), before);
    // A reload re-reads the list: revoking the good one too.
    std::fs::write(&crl, pki.crl(&[1, 2])).unwrap();
    h.reload(cfg.clone()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(ask(addr, &site, Some((&good.0, &good.1)), "")
        .await
        .is_none());
    h.stop(true).await;

    // Config errors name the key.
    let garbage = dir.path().join("garbage.crl");
    std::fs::write(&garbage, "not a CRL").unwrap();
    let mut bad = cfg.clone();
    bad.ssl_crl = Some(garbage);
    let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
    assert!(err.to_string().contains("balancer.ssl_crl"), "{err}");
    let mut bad = cfg.clone();
    bad.ssl_verify_client = VerifyClient::Off;
    let err = ferrocat_balancer::Balancer::start(bad).await.err().unwrap();
    assert!(err.to_string().contains("balancer.ssl_crl"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_reaches_the_upstream_for_tomcats_ssl_valve() {
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key, client_der) = certificate(dir.path(), "client");
    let a = Upstream::start("a").await;
    let (mut cfg, site) = mtls(&a, dir.path(), &client_cert, VerifyClient::Optional);
    // What Tomcat's SSLValve reads (nginx: `proxy_set_header ssl_client_cert
    // $ssl_client_escaped_cert`).
    cfg.proxy_set_header
        .push("ssl_client_cert: $ssl_client_escaped_cert".into());
    let (h, _) = start(cfg).await;
    let addr = h.tls_addr().unwrap();
    let text = ask(
        addr,
        &site,
        Some((&client_cert, &client_key)),
        "ssl_client_cert: forged\r\n",
    )
    .await
    .expect("answered");
    let escaped = text
        .lines()
        .find_map(|l| l.strip_prefix("ssl_client_cert: "))
        .unwrap_or_else(|| panic!("no certificate header in {text}"));
    assert!(
        escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%-".contains(&b)),
        "percent-encoded, one header line: {escaped}"
    );
    let mut pem = Vec::new();
    let bytes = escaped.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            pem.push(u8::from_str_radix(&escaped[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            pem.push(bytes[i]);
            i += 1;
        }
    }
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(der, client_der, "the certificate the client showed");
    // Without a certificate the header is empty, whatever the client sent.
    let text = ask(addr, &site, None, "ssl_client_cert: forged\r\n")
        .await
        .expect("answered");
    assert!(!text.contains("forged"), "{text}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificates_subject_and_issuer_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    let client = pki.client(dir.path(), "alice", 3);
    let a = Upstream::start("a").await;
    let (mut cfg, site) = mtls(&a, dir.path(), &ca, VerifyClient::On);
    cfg.proxy_set_header.extend([
        "X-SSL-Client-S-DN: $ssl_client_s_dn".into(),
        "X-SSL-Client-I-DN: $ssl_client_i_dn".into(),
    ]);
    let (h, _) = start(cfg).await;
    let text = ask(
        h.tls_addr().unwrap(),
        &site,
        Some((&client.0, &client.1)),
        "X-SSL-Client-S-DN: CN=admin\r\n",
    )
    .await
    .expect("answered");
    // RFC 2253, as nginx prints them: the last RDN first, the comma in the value escaped.
    assert!(
        text.contains("x-ssl-client-s-dn: CN=alice,O=ferrocat tests\\, Inc.\n"),
        "{text}"
    );
    assert!(
        text.contains("x-ssl-client-i-dn: CN=ferrocat test CA\n"),
        "{text}"
    );
    assert!(!text.contains("CN=admin"), "{text}");
    h.stop(true).await;
}
