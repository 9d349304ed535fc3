//! TLS to the upstreams (nginx `proxy_pass https://…` with `proxy_ssl_verify`,
//! `proxy_ssl_trusted_certificate`, `proxy_ssl_name`, `proxy_ssl_certificate`).
//!
//! One client config per applied config (start and every reload, so renewed CA or client
//! certificates are picked up by `SIGHUP`), shared by every `tls` upstream; rustls keeps its
//! session tickets, so a new connection to an upstream it has met resumes instead of running a
//! full handshake (nginx `proxy_ssl_session_reuse`). Kept-alive connections stay encrypted in the
//! worker's pool like plain ones. [`UpStream`] is an upstream connection, plain or TLS: one enum,
//! so the plain path costs a branch, not a boxed stream.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::{BalancerConfig, ConfigError};

/// Where `proxy_ssl_trusted_certificate` points when it is not set (Debian's CA bundle).
pub(crate) const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to speak TLS to one upstream.
#[derive(Clone)]
pub(crate) struct UpTls {
    pub connector: TlsConnector,
    /// Checked against the certificate, and sent as SNI when it is a host name.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for UpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpTls").field("name", &self.name).finish()
    }
}

/// The client config of a balancer config; errors name the key of the file that is wrong.
pub(crate) fn connector(cfg: &BalancerConfig) -> Result<TlsConnector, ConfigError> {
    // ring's provider, as for the listening side (see `crate::tls`).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("balancer.proxy_ssl_verify", e.to_string()))?;
    let webpki = if cfg.proxy_ssl_verify {
        let (roots, pinned) = roots(cfg)?;
        let builder = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let builder = match &cfg.proxy_ssl_crl {
            // A certificate of a CA the file has no list for is not affected.
            Some(path) => builder
                .with_crls(crate::tls::read_crls(path, "balancer.proxy_ssl_crl")?)
                .allow_unknown_revocation_status(),
            None => builder,
        };
        let webpki = builder.build().map_err(|e| {
            let key = match e {
                rustls::client::VerifierBuilderError::InvalidCrl(_) => "balancer.proxy_ssl_crl",
                _ => "balancer.proxy_ssl_trusted_certificate",
            };
            ConfigError::new(key, e.to_string())
        })?;
        Some((webpki, pinned))
    } else {
        None
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            webpki,
            provider: provider.clone(),
        }));
    let mut config = match (&cfg.proxy_ssl_certificate, &cfg.proxy_ssl_certificate_key) {
        (Some(cert), Some(key)) => {
            let certified = crate::tls::certified(
                &provider,
                cert,
                key,
                "balancer.proxy_ssl_certificate",
                "balancer.proxy_ssl_certificate_key",
            )?;
            builder.with_client_cert_resolver(Arc::new(ClientCert(certified)))
        }
        _ => builder.with_no_client_auth(),
    };
    // Requests go out as HTTP/1.1; a server that negotiates protocols must not pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The CA certificates upstreams are verified against, and the same certificates as they are
/// (an upstream may present one of them itself: a pinned self-signed certificate).
fn roots(
    cfg: &BalancerConfig,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), ConfigError> {
    const KEY: &str = "balancer.proxy_ssl_trusted_certificate";
    let configured = cfg.proxy_ssl_trusted_certificate.as_deref();
    let path = configured.unwrap_or(Path::new(SYSTEM_BUNDLE));
    let pem = std::fs::read(path).map_err(|e| {
        let reason = match configured {
            Some(_) => format!("cannot read {}: {e}", path.display()),
            None => format!(
                "not set, and the system bundle {SYSTEM_BUNDLE} cannot be read ({e}): set it to \
                 the CA that signed the upstreams' certificates, or set proxy_ssl_verify = false"
            ),
        };
        ConfigError::new(KEY, reason)
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(KEY, format!("{}: {e}", path.display())))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(ConfigError::new(
            KEY,
            format!("{}: no usable PEM certificate in it", path.display()),
        ));
    }
    // The system bundle holds CAs only: nothing there to pin.
    let pinned = if configured.is_some() {
        certs
    } else {
        Vec::new()
    };
    Ok((store, pinned))
}

/// The usual chain verification, and besides it OpenSSL's (so nginx's) acceptance of a
/// certificate that is itself in the trusted file: `openssl req -x509` makes self-signed
/// certificates marked as CAs, which webpki refuses as a server's own ("CA used as end
/// entity"). Such a pinned certificate must still be for the upstream's name; its validity
/// dates are not checked (it is trusted as it is, like an SSH host key). Without `webpki`
/// (`proxy_ssl_verify = false`) any certificate goes. Either way the handshake's signatures
/// are checked, so the server holds the key of what it showed.
#[derive(Debug)]
struct Verifier {
    webpki: Option<(
        Arc<rustls::client::WebPkiServerVerifier>,
        Vec<CertificateDer<'static>>,
    )>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((webpki, pinned)) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(v) => Ok(v),
            Err(e) if pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                let parsed =
                    rustls::server::ParsedCertificate::try_from(end_entity).map_err(|_| e)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `tls_name` (or a default one) as rustls wants it.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is neither a host name nor an IP address"))
}

/// The host of a `host:port` address (`[::1]:8443` gives `::1`).
pub(crate) fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The one client certificate (`proxy_ssl_certificate`), shown to upstreams that ask.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Runs the TLS handshake over a connected socket.
pub(crate) async fn handshake(tls: &UpTls, tcp: TcpStream) -> io::Result<UpStream> {
    let stream = tls.connector.connect(tls.name.clone(), tcp).await?;
    Ok(UpStream::Tls(Box::new(stream)))
}

/// An upstream connection.
pub(crate) enum UpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// No connection: a cached answer, all of it already in the read buffer (reads find the
    /// end, writes fail).
    Memory,
}

impl UpStream {
    /// Whether it speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpStream::Tls(_))
    }

    /// Whether it is a cached answer rather than a connection.
    pub fn is_memory(&self) -> bool {
        matches!(self, UpStream::Memory)
    }

    /// The socket under it.
    #[cfg(test)]
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpStream::Plain(s) => Some(s),
            UpStream::Tls(s) => Some(s.get_ref().0),
            UpStream::Memory => None,
        }
    }

    /// Reads what the upstream has sent, if anything, into `buf` without waiting: `Ready(Ok(0))`
    /// at its end, `Pending` (with a wake-up registered) when nothing has arrived. TLS records
    /// that carry no data (session tickets) are consumed and give `Pending`.
    pub fn poll_read_some(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match self {
            UpStream::Plain(s) => loop {
                std::task::ready!(s.poll_read_ready(cx))?;
                match s.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            UpStream::Tls(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, buf),
            UpStream::Memory => Poll::Ready(Ok(0)),
        }
    }
}

/// What a write to a cached answer gets.
fn no_connection() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "a cached answer has no connection",
    )
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Memory => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            UpStream::Tls(s) => Pin::new(s).poll_write(cx, data),
            UpStream::Memory => Poll::Ready(Err(no_connection())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Memory => Poll::Ready(Err(no_connection())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Plain(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
            UpStream::Memory => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(_) | UpStream::Memory => Poll::Ready(Ok(())),
            UpStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Memory => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_host_of_the_address() {
        assert_eq!(host_of("app.internal:8443"), "app.internal");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert!(matches!(
            server_name(host_of("[::1]:8443")),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("app.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("not a name").is_err());
    }
}
