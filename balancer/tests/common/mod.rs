//! Test support: real HTTP upstream servers on loopback port 0, and a balancer in front of them.
#![allow(clippy::unwrap_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrocat_balancer::{Balancer, BalancerConfig, BalancerHandle, UpstreamConfig};
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A real HTTP/1 server that answers by path:
/// `/slow/MS` waits MS ms; `/status/CODE` answers CODE; `/headers` echoes the request headers;
/// `/big/N` streams N bytes; `/text/N` answers N bytes of text (see there); `/stall/MS` sends a chunk, waits MS ms, then ends; `/upload` reads the body and answers its size; `/digest` answers its [`Digest`]; anything else
/// answers the server's name. Every answer carries `x-upstream: NAME`; `/text` and the
/// server's name carry `x-path` (the request target it got). Each path works under the context
/// path `/ctx` too (`/ctx/text/10`), as a Tomcat webapp's.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests received (any path).
    pub hits: Arc<AtomicUsize>,
    /// Requests with method POST received.
    pub posts: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_at(name: &str, at: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (n, h, p, s) = (name.to_owned(), hits.clone(), posts.clone(), stop.clone());
        let accepted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (n, h, p, s) = (n.clone(), h.clone(), p.clone(), s.clone());
                tokio::spawn(async move {
                    let killed = s.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let (n, h, p, killed) = (n.clone(), h.clone(), p.clone(), killed.clone());
                        async move {
                            // Killed while this connection's task had not yet seen it: answer
                            // nothing (the connection closes), as a dead process would.
                            if killed.is_cancelled() {
                                return Err(std::io::Error::other("killed"));
                            }
                            Ok(answer(&n, &h, &p, req).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            hits,
            posts,
            conns,
            stop,
        }
    }

    /// Kills the server: closes the listener and every open connection at once.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub fn config(&self) -> UpstreamConfig {
        UpstreamConfig::new(self.addr.to_string()).with_route(self.name.clone())
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Length and FNV-1a hash of a byte stream, as `/digest` answers it: `"<len> <hash hex>"`.
#[derive(Debug)]
pub struct Digest {
    len: u64,
    hash: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Digest {
    pub fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for &b in bytes {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn of(bytes: &[u8]) -> String {
        let mut d = Self::default();
        d.add(bytes);
        d.to_string()
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:016x}", self.len, self.hash)
    }
}

/// `n` bytes of HTML-like text (compresses well, yet not to nothing).
pub fn text_body(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(format!("<li class=\"item\">row {i} of the list</li>\n").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// `%XX` escapes decoded (a bad one is kept as it is).
fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn answer(
    name: &str,
    hits: &AtomicUsize,
    posts: &AtomicUsize,
    req: Request<Incoming>,
) -> Response<Body> {
    hits.fetch_add(1, Ordering::SeqCst);
    if req.method() == hyper::Method::POST {
        posts.fetch_add(1, Ordering::SeqCst);
    }
    let path = req.uri().path().to_owned();
    let target: hyper::header::HeaderValue = req
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .parse()
        .unwrap();
    // Served under the context path `/ctx` too, as a Tomcat webapp is.
    let routed = path
        .strip_prefix("/ctx")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(&path);
    let mut parts = routed.trim_start_matches('/').splitn(2, '/');
    let (first, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let body = match first {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            full(name.to_owned())
        }
        "status" => {
            let mut r = Response::new(full(name.to_owned()));
            *r.status_mut() = hyper::StatusCode::from_u16(arg.parse().unwrap_or(500)).unwrap();
            r.headers_mut().insert("x-upstream", name.parse().unwrap());
            return r;
        }
        "headers" => {
            let text: String = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                .collect();
            full(text)
        }
        "big" => {
            let mut left: u64 = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures::stream::iter(std::iter::from_fn(move || {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                left -= n;
                Some(Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))))
            }));
            BodyExt::boxed(StreamBody::new(stream))
        }
        "stall" => {
            // One chunk, then silence for ARG ms, then the end.
            let ms: u64 = arg.parse().unwrap_or(0);
            let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                Bytes::from_static(b"partial"),
            ))]);
            let rest = futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"-end")))
            });
            BodyExt::boxed(StreamBody::new(first.chain(rest)))
        }
        "text" => {
            // ARG bytes of HTML-like text; the query sets `type` (default text/html), `enc`
            // (Content-Encoding), `etag`, `vary`, `cc` (Cache-Control), `xab`
            // (X-Accel-Buffering), `loc` (Location), `cookie` (Set-Cookie), `xae`
            // (X-Accel-Expires), `lm` (Last-Modified) and `stream=1` (sent chunked, in
            // 10,000-byte pieces). As Tomcat's DefaultServlet, it answers 304 without a body
            // to an `If-None-Match` naming its `etag` or an `If-Modified-Since` equal to its
            // `lm`.
            let n: usize = arg.parse().unwrap_or(0);
            let text = text_body(n);
            let query: std::collections::HashMap<String, String> = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), percent_decoded(v)))
                .collect();
            let body = if query.get("stream").is_some_and(|v| v == "1") {
                let parts: Vec<Bytes> = text.chunks(10_000).map(Bytes::copy_from_slice).collect();
                let stream = futures::stream::iter(
                    parts
                        .into_iter()
                        .map(|b| Ok::<_, Infallible>(Frame::data(b))),
                );
                BodyExt::boxed(StreamBody::new(stream))
            } else {
                full(text)
            };
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert("x-upstream", name.parse().unwrap());
            h.insert("x-path", target);
            let ct = query
                .get("type")
                .map_or("text/html; charset=utf-8", String::as_str);
            h.insert("content-type", ct.parse().unwrap());
            for (q, header) in [
                ("enc", "content-encoding"),
                ("etag", "etag"),
                ("vary", "vary"),
                ("cc", "cache-control"),
                ("xab", "x-accel-buffering"),
                ("loc", "location"),
                ("cookie", "set-cookie"),
                ("xae", "x-accel-expires"),
                ("lm", "last-modified"),
            ] {
                if let Some(v) = query.get(q) {
                    h.insert(header, v.parse().unwrap());
                }
            }
            let asked = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
            let has = |name: &str, q: &str| {
                asked(name).is_some_and(|v| query.get(q).is_some_and(|mine| mine == v))
            };
            if has("if-none-match", "etag")
                || (asked("if-none-match").is_none() && has("if-modified-since", "lm"))
            {
                *r.status_mut() = hyper::StatusCode::NOT_MODIFIED;
                *r.body_mut() = full(Bytes::new());
            }
            return r;
        }
        "upload" => {
            let mut body = req.into_body().into_data_stream();
            let mut total = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                total += chunk.len() as u64;
            }
            full(total.to_string())
        }
        "digest" => {
            let mut body = req.into_body().into_data_stream();
            let mut d = Digest::default();
            while let Some(Ok(chunk)) = body.next().await {
                d.add(&chunk);
            }
            full(d.to_string())
        }
        _ => {
            let _ = req.into_body().collect().await;
            full(name.to_owned())
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert("x-upstream", name.parse().unwrap());
    r.headers_mut().insert("x-path", target);
    r
}

/// A balancer config on a free loopback port with one worker and short timeouts.
pub fn config(upstreams: &[&Upstream]) -> BalancerConfig {
    BalancerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        proxy_connect_timeout: Duration::from_secs(2),
        proxy_read_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(10),
        upstream: upstreams.iter().map(|u| u.config()).collect(),
        ..BalancerConfig::default()
    }
}

pub async fn start(cfg: BalancerConfig) -> (BalancerHandle, String) {
    let h = Balancer::start(cfg).await.unwrap();
    let base = format!("http://{}", h.local_addr());
    (h, base)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A client that does not follow redirects.
pub fn no_follow() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GETs `url` with `Host: host` and no redirect followed: (status, `Location`).
pub async fn get_with_host(http: &reqwest::Client, url: &str, host: &str) -> (u16, Option<String>) {
    let r = http.get(url).header("host", host).send().await.unwrap();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), location)
}

/// GETs `url` and returns (status, x-upstream header).
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    let up = r
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), up)
}

/// GETs `url` and parses the JSON body (the status page).
pub async fn get_json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// The lines of the log file at `path` once it has at least `n` (workers flush within a
/// second); what it has after 10 s otherwise.
pub async fn log_lines_at_least(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends the raw bytes `head` to the balancer at `base` on a new connection and returns all it
/// answers until it closes the connection (or 5 s pass): for heads a client library would not
/// send.
/// The value of the header line `name: ...` (as hyper writes names: lowercase) in a raw answer.
pub fn raw_header(raw: &str, name: &str) -> String {
    raw.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name} in {raw}"))
        .to_owned()
}

pub async fn raw_exchange(base: &str, head: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A self-signed certificate for `localhost` written as PEM files into `dir` (`name.crt`,
/// `name.key`); returns the paths and the certificate (for the client to trust).
pub fn certificate(
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    certificate_for(dir, name, "localhost")
}

/// Like [`certificate`], for the host name `host`.
pub fn certificate_for(
    dir: &Path,
    name: &str,
    host: &str,
) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec![host.into()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert, key, made.cert.der().clone())
}

/// A CA, the client and server certificates it signs (with serial numbers), and its
/// revocation lists.
pub struct Pki {
    pub ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferrocat test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki { ca, key }
    }

    /// A client certificate with `serial`, as PEM files `name.crt` and `name.key` in `dir`.
    pub fn client(&self, dir: &Path, name: &str, serial: u64) -> (PathBuf, PathBuf) {
        let host = format!("{name}.test");
        self.leaf(
            dir,
            (name, serial, &host),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A server certificate for `host` (a name or an IP) with `serial`, as PEM files.
    pub fn server(&self, dir: &Path, name: &str, serial: u64, host: &str) -> (PathBuf, PathBuf) {
        self.leaf(
            dir,
            (name, serial, host),
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn leaf(
        &self,
        dir: &Path,
        (name, serial, host): (&str, u64, &str),
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ferrocat tests, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A revocation list of `revoked` serials, as PEM.
    pub fn crl(&self, revoked: &[u64]) -> String {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&s| rcgen::RevokedCertParams {
                    serial_number: s.into(),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 2),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca, &self.key)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// A TLS connection to `addr` that trusts only `trusted`, for the name `localhost`, offering
/// the ALPN protocols `alpn` (none when empty).
pub async fn tls_connect(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_connect_to(addr, trusted, alpn, "localhost").await
}

/// Like [`tls_connect`], asking for (SNI) and checking the host name `host`.
pub async fn tls_connect_to(
    addr: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// This process's resident set size, in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
