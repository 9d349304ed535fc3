//! The `hash_key` template of `method = "hash"` (and of `limit_req_key`), in nginx variable syntax.
//!
//! Supported: `$request_uri` (path and query), `$uri` (path), `$args`, `$remote_addr`,
//! `$request_id` (with `request_id_header`), `$host`,
//! `$cookie_NAME`, `$arg_NAME`, `$http_NAME` (dashes written as `_`), `$ssl_client_verify`,
//! `$ssl_client_fingerprint`, `$ssl_client_escaped_cert`, `$ssl_client_s_dn` and
//! `$ssl_client_i_dn` (with `ssl_verify_client`), and
//! literal text between them. Unknown variables evaluate to the empty string, as an unset nginx variable does.

use std::net::IpAddr;

use crate::h1::request::View;

/// A piece of a template in nginx variable syntax.
pub(crate) enum Piece<'a> {
    Text(&'a str),
    /// A variable's name, without the `$` (ASCII letters, digits and `_`).
    Var(&'a str),
}

/// Splits `template` into text and `$name` variables; `$$` is a literal `$`.
pub(crate) fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        if pos > 0 {
            out.push(Piece::Text(&rest[..pos]));
        }
        let after = &rest[pos + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push(Piece::Text("$"));
            rest = more;
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push(Piece::Var(&after[..end]));
        rest = &after[end..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// A parsed key template.
#[derive(Debug, Clone)]
pub(crate) struct HashKey(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    RequestUri,
    Uri,
    Args,
    RemoteAddr,
    RequestId,
    Host,
    Cookie(String),
    Arg(String),
    Header(String),
    /// `SUCCESS` (a verified client certificate), `NONE` (TLS without one), empty (plain).
    ClientVerify,
    ClientFingerprint,
    ClientEscapedCert,
    ClientSubject,
    ClientIssuer,
}

impl HashKey {
    /// Parses `template`; never fails (unknown variables are empty).
    pub fn parse(template: &str) -> Self {
        let mut parts = Vec::new();
        for piece in pieces(template) {
            let name = match piece {
                Piece::Text(t) => {
                    parts.push(Part::Literal(t.to_owned()));
                    continue;
                }
                Piece::Var(name) => name,
            };
            parts.push(match name {
                "request_uri" => Part::RequestUri,
                "uri" => Part::Uri,
                "args" => Part::Args,
                "remote_addr" => Part::RemoteAddr,
                "request_id" => Part::RequestId,
                "host" => Part::Host,
                "ssl_client_verify" => Part::ClientVerify,
                "ssl_client_fingerprint" => Part::ClientFingerprint,
                "ssl_client_escaped_cert" => Part::ClientEscapedCert,
                "ssl_client_s_dn" => Part::ClientSubject,
                "ssl_client_i_dn" => Part::ClientIssuer,
                _ => {
                    if let Some(c) = name.strip_prefix("cookie_") {
                        Part::Cookie(c.to_owned())
                    } else if let Some(a) = name.strip_prefix("arg_") {
                        Part::Arg(a.to_owned())
                    } else if let Some(h) = name.strip_prefix("http_") {
                        Part::Header(h.replace('_', "-"))
                    } else {
                        Part::Literal(String::new())
                    }
                }
            });
        }
        Self(parts)
    }

    /// Evaluates the template for a request from `client` into `out` (cleared first).
    pub fn eval(&self, req: &View<'_>, client: IpAddr, out: &mut Vec<u8>) {
        out.clear();
        for part in &self.0 {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::RequestUri => out.extend_from_slice(req.path_and_query.as_bytes()),
                Part::Uri => out.extend_from_slice(req.path().as_bytes()),
                Part::Args => out.extend_from_slice(req.query().unwrap_or("").as_bytes()),
                Part::RemoteAddr => {
                    use std::io::Write as _;
                    let _ = write!(out, "{client}");
                }
                Part::RequestId => out.extend_from_slice(req.request_id),
                Part::Host => {
                    if let Some(h) = req.header("host") {
                        out.extend_from_slice(h);
                    }
                }
                Part::Cookie(name) => {
                    if let Some(v) = crate::sticky::cookie_value(req.cookies(), name) {
                        out.extend_from_slice(v);
                    }
                }
                Part::Arg(name) => {
                    let query = req.query().unwrap_or("");
                    if let Some(v) = query.split('&').find_map(|kv| {
                        kv.split_once('=')
                            .filter(|(k, _)| k == name)
                            .map(|(_, v)| v)
                    }) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Part::Header(name) => {
                    if let Some(v) = req.header(name) {
                        out.extend_from_slice(v);
                    }
                }
                Part::ClientVerify => match (req.tls, req.client_cert) {
                    (_, Some(_)) => out.extend_from_slice(b"SUCCESS"),
                    (true, None) => out.extend_from_slice(b"NONE"),
                    (false, None) => {}
                },
                Part::ClientFingerprint => {
                    if let Some(c) = req.client_cert {
                        out.extend_from_slice(c.fingerprint.as_bytes());
                    }
                }
                Part::ClientEscapedCert => {
                    if let Some(c) = req.client_cert {
                        out.extend_from_slice(c.escaped_pem().as_bytes());
                    }
                }
                Part::ClientSubject => {
                    if let Some(c) = req.client_cert {
                        out.extend_from_slice(c.subject_and_issuer().0.as_bytes());
                    }
                }
                Part::ClientIssuer => {
                    if let Some(c) = req.client_cert {
                        out.extend_from_slice(c.subject_and_issuer().1.as_bytes());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_literals_are_evaluated() {
        let headers = [
            httparse::Header {
                name: "Host",
                value: b"shop",
            },
            httparse::Header {
                name: "cookie",
                value: b"sid=abc; t=1",
            },
            httparse::Header {
                name: "X-Tenant",
                value: b"acme",
            },
        ];
        // A self-signed certificate: its issuer is its subject.
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client");
        let key = rcgen::KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("cert").der().clone();
        let cert = crate::tls::ClientCert::new(der);
        let p = View {
            method: "GET",
            minor: 1,
            path_and_query: "/a/b?user=7&x=1",
            headers: &headers,
            client: [10, 0, 0, 9].into(),
            request_id: b"",
            https: false,
            tls: true,
            client_cert: Some(&cert),
        };
        let ip: IpAddr = [10, 0, 0, 9].into();
        let eval = |t: &str| {
            let mut out = Vec::new();
            HashKey::parse(t).eval(&p, ip, &mut out);
            String::from_utf8(out).expect("utf8")
        };
        assert_eq!(eval("$request_uri"), "/a/b?user=7&x=1");
        assert_eq!(
            eval("$ssl_client_verify $ssl_client_fingerprint"),
            format!("SUCCESS {}", cert.fingerprint)
        );
        assert_eq!(cert.fingerprint.len(), 40);
        let escaped = eval("$ssl_client_escaped_cert");
        assert!(
            escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert_eq!(escaped, cert.escaped_pem());
        assert_eq!(
            eval("$ssl_client_s_dn|$ssl_client_i_dn"),
            "CN=client,O=Acme|CN=client,O=Acme"
        );
        assert_eq!(eval("$uri|$args"), "/a/b|user=7&x=1");
        assert_eq!(eval("$host-$remote_addr"), "shop-10.0.0.9");
        assert_eq!(eval("u$arg_user:$cookie_sid:$http_x_tenant"), "u7:abc:acme");
        assert_eq!(eval("$nope$cookie_missing"), "");
        assert_eq!(eval("$$host=$host$$"), "$host=shop$");
        assert_eq!(eval("a$$$$b"), "a$$b");
    }
}
