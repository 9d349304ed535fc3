//! TLS termination (nginx `listen ... ssl`, `ssl_certificate`, `ssl_certificate_key`).
//!
//! The certificate chain and key are read when a config is applied (start and every reload, so
//! a renewed certificate is picked up by `SIGHUP`, as nginx does); each snapshot holds its
//! acceptor, and a connection takes the one current when it is accepted. `ssl_sni` adds
//! certificates chosen by the host name in the client's hello. rustls with the `ring`
//! provider: TLS 1.2 and 1.3, safe cipher suites only, ALPN `http/1.1` (and `h2` with `http2`).
//!
//! [`ClientStream`] is a client connection (plain, TLS, or one HTTP/2 stream bridged by
//! `crate::http2`) for the request path: one enum, so the plain path costs a branch, not a boxed
//! stream.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, SniCertificate};

/// Client certificates asked for (`ssl_verify_client`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clients<'a> {
    /// `ssl_client_certificate`: the CAs.
    pub ca: &'a Path,
    /// `ssl_crl`: revocation lists.
    pub crl: Option<&'a Path>,
    /// `optional`: clients without one are let through.
    pub optional: bool,
}

/// Builds the acceptor for a PEM certificate chain (leaf first) and its PEM private key
/// (PKCS#8, PKCS#1 or SEC1), with the `ssl_sni` certificates chosen by the name a client asks
/// for, offering `h2` through ALPN when `http2`, with the TLS `versions` (`ssl_protocols`).
/// Errors name the key of the file that is wrong.
pub(crate) fn acceptor(
    cert: &Path,
    key: &Path,
    sni: &[SniCertificate],
    (http2, versions): (bool, &[&'static rustls::SupportedProtocolVersion]),
    clients: Option<Clients<'_>>,
) -> Result<TlsAcceptor, ConfigError> {
    // rustls deprecates ring's provider for lacking post-quantum key exchange; aws-lc-rs has it
    // but brings a large C build. X25519, P-256 and P-384 it is, as nginx with OpenSSL 3.0.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = certified(
        &provider,
        cert,
        key,
        "balancer.ssl_certificate",
        "balancer.ssl_certificate_key",
    )?;
    let mut by_name = BySni {
        exact: Vec::new(),
        wildcard: Vec::new(),
        default,
    };
    for (i, entry) in sni.iter().enumerate() {
        let chosen = certified(
            &provider,
            &entry.certificate,
            &entry.certificate_key,
            &format!("balancer.ssl_sni[{i}].certificate"),
            &format!("balancer.ssl_sni[{i}].certificate_key"),
        )?;
        for name in &entry.server_name {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => by_name.wildcard.push((parent.to_owned(), chosen.clone())),
                None => by_name.exact.push((name, chosen.clone())),
            }
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::new("balancer.ssl_protocols", e.to_string()))?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => builder.with_client_cert_verifier(client_verifier(&provider, clients)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(by_name));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The verifier of client certificates signed by the CAs in `ca` (`ssl_client_certificate`)
/// and not revoked by the lists in `crl`; `optional`: clients without one are let through.
fn client_verifier(
    provider: &Arc<rustls::crypto::CryptoProvider>,
    Clients { ca, crl, optional }: Clients<'_>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ConfigError> {
    const KEY: &str = "balancer.ssl_client_certificate";
    let pem = std::fs::read(ca)
        .map_err(|e| ConfigError::new(KEY, format!("cannot read {}: {e}", ca.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(KEY, format!("{}: {e}", ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConfigError::new(
            KEY,
            format!("{}: no usable PEM certificate in it", ca.display()),
        ));
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let builder = match crl {
        // A certificate of a CA the file has no list for is not affected.
        Some(path) => builder
            .with_crls(read_crls(path, "balancer.ssl_crl")?)
            .allow_unknown_revocation_status(),
        None => builder,
    };
    builder.build().map_err(|e| {
        let key =
            if crl.is_some() && matches!(e, rustls::server::VerifierBuilderError::InvalidCrl(_)) {
                "balancer.ssl_crl"
            } else {
                KEY
            };
        ConfigError::new(key, e.to_string())
    })
}

/// The revocation lists in PEM file `path` (`ssl_crl`, `proxy_ssl_crl`); errors name `key`. A
/// list past its next update is still applied (as OpenSSL does by default).
pub(crate) fn read_crls(
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let lists = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
    if lists.is_empty() {
        return Err(ConfigError::new(
            key,
            format!(
                "{}: no PEM revocation list (X509 CRL) in it",
                path.display()
            ),
        ));
    }
    Ok(lists)
}

/// What the upstreams may learn of the certificate a client showed (`proxy_set_header`). The
/// forms only a template asks for are made on first use, once per connection.
#[derive(Debug)]
pub(crate) struct ClientCert {
    /// Its SHA-1 in lowercase hex (nginx `$ssl_client_fingerprint`).
    pub fingerprint: String,
    der: CertificateDer<'static>,
    escaped_pem: std::sync::OnceLock<String>,
    names: std::sync::OnceLock<(String, String)>,
}

impl ClientCert {
    /// A client's certificate as it came in the handshake.
    pub fn new(der: CertificateDer<'static>) -> Self {
        use sha1::Digest as _;
        use std::fmt::Write as _;
        let mut fingerprint = String::with_capacity(40);
        for b in sha1::Sha1::digest(der.as_ref()) {
            let _ = write!(fingerprint, "{b:02x}");
        }
        ClientCert {
            fingerprint,
            der,
            escaped_pem: std::sync::OnceLock::new(),
            names: std::sync::OnceLock::new(),
        }
    }

    /// It as PEM, percent-encoded (nginx `$ssl_client_escaped_cert`): what Tomcat's `SSLValve`
    /// reads from an `ssl_client_cert` header, so the app sees the client's certificate.
    pub fn escaped_pem(&self) -> &str {
        self.escaped_pem.get_or_init(|| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(self.der.as_ref());
            let mut out = String::with_capacity(b64.len() * 3 / 2 + 80);
            out.push_str("-----BEGIN%20CERTIFICATE-----%0A");
            for line in b64.as_bytes().chunks(64) {
                for &b in line {
                    match b {
                        b'+' => out.push_str("%2B"),
                        b'/' => out.push_str("%2F"),
                        b'=' => out.push_str("%3D"),
                        _ => out.push(char::from(b)),
                    }
                }
                out.push_str("%0A");
            }
            out.push_str("-----END%20CERTIFICATE-----%0A");
            out
        })
    }

    /// Its subject and issuer in RFC 2253 form (nginx `$ssl_client_s_dn`, `$ssl_client_i_dn`;
    /// see `crate::dn`); empty if they cannot be read.
    pub fn subject_and_issuer(&self) -> (&str, &str) {
        let (s, i) = self
            .names
            .get_or_init(|| match webpki::EndEntityCert::try_from(&self.der) {
                Ok(parsed) => (
                    crate::dn::rfc2253(parsed.subject()).unwrap_or_default(),
                    crate::dn::rfc2253(parsed.issuer()).unwrap_or_default(),
                ),
                Err(_) => Default::default(),
            });
        (s, i)
    }
}

/// The certificate a client showed, if any (see [`ClientCert`]).
pub(crate) fn client_cert<IO>(tls: &TlsStream<IO>) -> Option<Arc<ClientCert>> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    Some(Arc::new(ClientCert::new(cert.clone().into_owned())))
}

/// Reads a PEM chain and its key into a certified key; errors name `cert_key` or `key_key`.
pub(crate) fn certified(
    provider: &rustls::crypto::CryptoProvider,
    cert: &Path,
    key: &Path,
    cert_key: &str,
    key_key: &str,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let read = |path: &Path, name: &str| {
        std::fs::read(path)
            .map_err(|e| ConfigError::new(name, format!("cannot read {}: {e}", path.display())))
    };
    let pem = read(cert, cert_key)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(cert_key, format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(ConfigError::new(
            cert_key,
            format!("{}: no PEM certificate in it", cert.display()),
        ));
    }
    let pem = read(key, key_key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConfigError::new(
            key_key,
            format!("{}: no usable private key ({e})", key.display()),
        )
    })?;
    // A key of another certificate, or an algorithm rustls does not sign with.
    CertifiedKey::from_der(chain, private, provider)
        .map(Arc::new)
        .map_err(|e| ConfigError::new(key_key, format!("{}: {e}", key.display())))
}

/// Picks the certificate for the name in a client's hello (SNI): an exact `server_name`, else
/// a wildcard of one label, else the default certificate (also for clients that name none).
#[derive(Debug)]
struct BySni {
    exact: Vec<(String, Arc<CertifiedKey>)>,
    /// `*.example.com` as `example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl BySni {
    fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        if let Some((_, k)) = self
            .exact
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return k;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some((_, k)) = self
                .wildcard
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(parent))
            {
                return k;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Whether `name` is a DNS host name (letters, digits, `-`, dots between labels of at most 63
/// characters), or `*.` followed by one.
pub(crate) fn valid_server_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A client connection: plain TCP, TLS over TCP, or one HTTP/2 stream (of a TLS connection)
/// that `crate::http2` bridges to the HTTP/1.1 request path through an in-memory pipe.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    H2(tokio::io::DuplexStream),
}

impl ClientStream {
    /// Whether the client came over TLS (`X-Forwarded-Proto: https`); HTTP/2 comes only so.
    pub fn is_tls(&self) -> bool {
        !matches!(self, ClientStream::Plain(_))
    }

    /// Whether this is an HTTP/2 stream (the access log says `HTTP/2.0`).
    pub fn is_h2(&self) -> bool {
        matches!(self, ClientStream::H2(_))
    }

    /// Reads what the client has sent, if anything, into `buf` without waiting: `Ready(Ok(0))`
    /// at its end, `Pending` (with a wake-up registered) when nothing has arrived.
    pub fn poll_read_some(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match self {
            ClientStream::Plain(s) => loop {
                std::task::ready!(s.poll_read_ready(cx))?;
                match s.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            ClientStream::Tls(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, buf),
            ClientStream::H2(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, buf),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::H2(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::H2(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::H2(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::H2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
            ClientStream::H2(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::H2(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_server_name;

    #[test]
    fn server_names_are_host_names_or_one_label_wildcards() {
        for ok in ["shop.example", "a", "*.shop.example", "x-1.b2.example"] {
            assert!(valid_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "-a.b",
            "a-.b",
            "*.*.b",
            "a b",
            "shop.example:443",
            "caf\u{e9}.fr",
            "a.*.b",
        ] {
            assert!(!valid_server_name(bad), "{bad}");
        }
    }
}
