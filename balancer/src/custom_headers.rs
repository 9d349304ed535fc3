//! Headers of the operator's own: `proxy_set_header` towards the upstream and `add_header`
//! towards the client (nginx's directives of the same names), written as `"Name: value"`.
//!
//! `proxy_set_header` replaces what the client sent under that name (also `Host`, `X-Real-IP`,
//! `X-Forwarded-For` and `X-Forwarded-Proto`, which the balancer otherwise writes itself); an
//! empty value removes the header. A value may hold the `hash_key` variables (`$remote_addr`,
//! `$host`, `$request_uri`, `$cookie_NAME`, `$http_NAME`, ...), evaluated per request.
//!
//! `add_header` replaces the upstream's header of that name in responses with status 200, 201,
//! 204, 206, 301, 302, 303, 304, 307 or 308, as nginx does; with `add_header_always`, in every
//! proxied response. Its values may name `$upstream_addr` (the upstream that answered),
//! `$status`, `$remote_addr` and `$request_id` (with `request_id_header`); on the balancer's own
//! pages (with `add_header_always`) `$upstream_addr` and `$status` are empty, and a value that
//! comes out empty leaves the header out, as nginx does.
//!
//! Framing and hop-by-hop headers (`Content-Length`, `Transfer-Encoding`, `Connection`,
//! `Upgrade`, `TE`, ...) cannot be set: the balancer owns them.

use crate::config::ConfigError;
use crate::hashkey::{HashKey, Piece};
use crate::headers::{self, Kind};

/// One configured header.
#[derive(Debug, Clone)]
struct Custom {
    name: String,
    /// `None`: remove the header.
    value: Option<Value>,
}

#[derive(Debug, Clone)]
enum Value {
    Text(Vec<u8>),
    Template(HashKey),
    /// An `add_header` value with variables.
    Response(Vec<Var>),
}

/// A piece of an `add_header` value.
#[derive(Debug, Clone)]
enum Var {
    Literal(String),
    UpstreamAddr,
    Status,
    RemoteAddr,
    RequestId,
}

/// What `add_header` values may name, for one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseVars<'a> {
    /// The upstream that answered; `None` on the balancer's own pages.
    pub upstream: Option<std::net::SocketAddr>,
    /// The status sent to the client; 0 when not known yet.
    pub status: u16,
    /// The client (as `set_real_ip_from` names it).
    pub client: std::net::IpAddr,
    /// The request id; empty without `request_id_header`.
    pub request_id: &'a [u8],
}

/// Parses an `add_header` value with variables; an unknown variable is an error.
fn response_vars(value: &str) -> Result<Vec<Var>, String> {
    crate::hashkey::pieces(value)
        .into_iter()
        .map(|piece| {
            Ok(match piece {
                Piece::Text(t) => Var::Literal(t.to_owned()),
                Piece::Var("upstream_addr") => Var::UpstreamAddr,
                Piece::Var("status") => Var::Status,
                Piece::Var("remote_addr") => Var::RemoteAddr,
                Piece::Var("request_id") => Var::RequestId,
                Piece::Var(other) => {
                    return Err(format!(
                        "${other} is not known here (known: $upstream_addr, $status, \
                         $remote_addr, $request_id; $$ for a literal $)"
                    ))
                }
            })
        })
        .collect()
}

impl Var {
    fn eval(parts: &[Var], vars: &ResponseVars<'_>, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        for p in parts {
            match p {
                Var::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Var::UpstreamAddr => {
                    if let Some(a) = vars.upstream {
                        let _ = write!(out, "{a}");
                    }
                }
                Var::Status if vars.status > 0 => {
                    let _ = write!(out, "{}", vars.status);
                }
                Var::Status => {}
                Var::RemoteAddr => {
                    let _ = write!(out, "{}", vars.client);
                }
                Var::RequestId => out.extend_from_slice(vars.request_id),
            }
        }
    }
}

/// A list of configured headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct CustomHeaders(Vec<Custom>);

impl CustomHeaders {
    /// Parses `entries` of the config key `key`; `templates`: values may hold variables.
    pub fn parse(entries: &[String], key: &str, templates: bool) -> Result<Self, ConfigError> {
        let mut list: Vec<Custom> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let bad = |why: String| ConfigError::new(format!("balancer.{key}[{i}]"), why);
            let Some((name, value)) = entry.split_once(':') else {
                return Err(bad(format!("{entry:?}: expected \"Name: value\"")));
            };
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() || !name.bytes().all(crate::config::is_token_byte) {
                return Err(bad(format!("{name:?} is not a header name")));
            }
            let allowed = match headers::kind(name) {
                Kind::Other | Kind::Cookie => true,
                Kind::Host | Kind::XRealIp | Kind::XForwardedFor | Kind::XForwardedProto => {
                    templates
                }
                _ => false,
            };
            if !allowed {
                return Err(bad(format!("{name} is managed by the balancer")));
            }
            if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(bad(format!(
                    "the value of {name} holds a control character"
                )));
            }
            if value.is_empty() && headers::kind(name) == Kind::Host {
                return Err(bad("Host cannot be removed (HTTP/1.1 needs it)".into()));
            }
            if list.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                return Err(bad(format!("{name} is set twice")));
            }
            let value = if value.is_empty() {
                None
            } else if templates && value.contains('$') {
                Some(Value::Template(HashKey::parse(value)))
            } else if value.contains('$') {
                Some(Value::Response(response_vars(value).map_err(bad)?))
            } else {
                Some(Value::Text(value.as_bytes().to_vec()))
            };
            list.push(Custom {
                name: name.to_owned(),
                value,
            });
        }
        Ok(Self(list))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `name` is one of the configured headers (any case).
    pub fn names(&self, name: &str) -> bool {
        self.0.iter().any(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Appends the headers (those with a value) to `out`; templates are evaluated for `req`,
    /// `add_header` variables with `vars` (one that evaluates to nothing is left out, as nginx
    /// does). Returns whether a `Host` was written.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        req: Option<&crate::h1::request::View<'_>>,
        vars: Option<&ResponseVars<'_>>,
    ) -> bool {
        let mut scratch = Vec::new();
        let mut host = false;
        for c in &self.0 {
            let written = match (&c.value, req) {
                (None, _) | (Some(Value::Template(_)), None) => false,
                (Some(Value::Response(parts)), _) => match vars {
                    Some(v) => {
                        Var::eval(parts, v, &mut scratch);
                        if !scratch.is_empty() {
                            headers::put(out, c.name.as_bytes(), &scratch);
                        }
                        !scratch.is_empty()
                    }
                    None => false,
                },
                (Some(Value::Text(v)), _) => {
                    headers::put(out, c.name.as_bytes(), v);
                    true
                }
                (Some(Value::Template(t)), Some(view)) => {
                    t.eval(view, view.client, &mut scratch);
                    if !scratch.is_empty() {
                        headers::put(out, c.name.as_bytes(), &scratch);
                    }
                    !scratch.is_empty()
                }
            };
            host |= written && c.name.eq_ignore_ascii_case("host");
        }
        host
    }
}

/// Whether `add_header` (without `always`) applies to a response with `status`.
pub(crate) fn add_header_applies(status: u16) -> bool {
    matches!(
        status,
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str], templates: bool) -> Result<CustomHeaders, ConfigError> {
        let e: Vec<String> = entries.iter().map(|s| (*s).to_owned()).collect();
        CustomHeaders::parse(&e, "proxy_set_header", templates)
    }

    #[test]
    fn entries_are_checked_and_named() {
        for (bad, templates) in [
            (&["X-Env"][..], true),
            (&["Bad Name: 1"], true),
            (&["Content-Length: 5"], true),
            (&["Transfer-Encoding: chunked"], true),
            (&["Connection: close"], true),
            (&["Host: x"], false),
            (&["X-A: 1", "x-a: 2"], true),
            (&["X-A: a\u{1}b"], true),
            (&["Host:"], true),
        ] {
            let e = list(bad, templates).expect_err("refused");
            assert!(e.key.starts_with("balancer.proxy_set_header["), "{e}");
        }
        let ok = list(&["Host: backend.internal", "X-Gone:", "X-Env: prod"], true).unwrap();
        assert!(ok.names("host") && ok.names("x-gone") && !ok.names("x-other"));
        let mut out = Vec::new();
        assert!(ok.write(&mut out, None, None), "Host written");
        assert_eq!(out, b"Host: backend.internal\r\nX-Env: prod\r\n");
    }

    #[test]
    fn a_doubled_dollar_is_a_literal_dollar_in_add_header() {
        let e: Vec<String> = vec!["X-Price: $$5 at $status".into(), "X-Cost: $$".into()];
        let h = CustomHeaders::parse(&e, "add_header", false).expect("valid");
        let vars = ResponseVars {
            upstream: None,
            status: 200,
            client: [127, 0, 0, 1].into(),
            request_id: b"",
        };
        let mut out = Vec::new();
        let _ = h.write(&mut out, None, Some(&vars));
        assert_eq!(out, b"X-Price: $5 at 200\r\nX-Cost: $\r\n");
        // A single `$` before a name that is no variable is still refused.
        let bad: Vec<String> = vec!["X-Price: $5".into()];
        let err = CustomHeaders::parse(&bad, "add_header", false).expect_err("refused");
        assert!(err.to_string().contains("$$"), "{err}");
    }
}
