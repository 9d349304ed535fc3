//! The upstream's response head: parsed with `httparse` from the upstream connection's read
//! buffer and rewritten for the client in one pass (status line, end-to-end headers).
//!
//! The body length follows RFC 9112 section 6.3: none for HEAD, 1xx, 204 and 304; chunked if the
//! last transfer coding is chunked; `Content-Length` bytes; else until the upstream closes.

use crate::custom_headers::{add_header_applies, CustomHeaders, ResponseVars};
use crate::headers::{self, Kind};

/// Largest response head accepted from an upstream.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted from an upstream.
const MAX_HEADERS: usize = 128;
/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// What the proxy keeps of a parsed response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Response {
    /// Bytes of the head in the read buffer.
    pub head_len: usize,
    pub status: u16,
    pub body: Body,
    /// The connection can carry another request once this body is read.
    pub reusable: bool,
    /// The body goes to the client gzip-compressed (the head says so already).
    pub gzip: bool,
    /// The upstream's `X-Accel-Buffering` (`yes`/`no`), which is not passed on.
    pub buffering: Option<bool>,
}

/// Header rewrites of the config: `proxy_hide_header`, `proxy_redirect`,
/// `proxy_cookie_path` and `proxy_cookie_domain` (the last three with what their variables and
/// `default` stand for in this answer).
#[derive(Default)]
pub(crate) struct Rewrites<'a> {
    pub hide: &'a [String],
    pub relocate: Option<&'a crate::relocate::ProxyRedirect>,
    pub cookies: Option<&'a crate::relocate::CookieRewrite>,
    pub vars: crate::relocate::Vars<'a>,
}

/// What `gzip` needs to know of a response's headers.
#[derive(Default)]
struct Encodable<'a> {
    content_type: Option<&'a [u8]>,
    encoded: bool,
    no_transform: bool,
    vary: Option<&'a [u8]>,
}

/// Why a response head cannot be used (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Incomplete: read more.
    Partial,
    /// Malformed or too large: 502.
    Bad(&'static str),
}

/// Parses the head at the start of `buf` (the answer to a HEAD request if `head_request`) and
/// appends the client's status line and headers to `out`, without body framing headers other
/// than a `Content-Length` that stays valid, and without the final empty line.
pub(crate) fn parse(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
    add: Option<(&CustomHeaders, bool, &ResponseVars<'_>)>,
    request_id: Option<(&str, &[u8])>,
    gzip: Option<(&crate::gzip::Policy, bool)>,
    rw: &Rewrites<'_>,
) -> Result<Response, HeadError> {
    let hide = rw.hide;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Err(HeadError::Partial),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Bad("response head too large"))
        }
        Err(_) => return Err(HeadError::Bad("malformed response head")),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(HeadError::Bad("incomplete status line"));
    };
    let fields = &*resp.headers;

    let mut kinds = [Kind::Other; MAX_HEADERS];
    let mut framing_fields = super::FramingFields::new();
    for (i, h) in fields.iter().enumerate() {
        let k = headers::kind(h.name);
        kinds[i] = k;
        framing_fields.note(k, h.value).map_err(HeadError::Bad)?;
    }
    let super::FramingFields {
        length,
        te,
        chunked,
        ..
    } = framing_fields;
    let connection = framing_fields.connection();
    let mut enc = Encodable::default();
    if gzip.is_some() {
        for h in fields.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-type") {
                enc.content_type = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"content-encoding") {
                enc.encoded |= !h.value.trim_ascii().eq_ignore_ascii_case(b"identity");
            } else if name.eq_ignore_ascii_case(b"cache-control") {
                enc.no_transform |= headers::has_token(h.value, "no-transform");
            } else if name.eq_ignore_ascii_case(b"vary") {
                enc.vary = Some(h.value);
            }
        }
    }
    let body = if head_request || status < 200 || status == 204 || status == 304 {
        Body::None
    } else if te {
        if chunked {
            Body::Chunked
        } else {
            Body::Close
        }
    } else {
        length.map_or(Body::Close, Body::Length)
    };
    let reusable = body != Body::Close
        && status != 101
        && if minor == 1 {
            !headers::listed_in_connection(connection, "close")
        } else {
            headers::listed_in_connection(connection, "keep-alive")
        };

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = status == 101;
    // `add_header`: for the statuses nginx adds it to, or all with `add_header_always`.
    let add = add
        .filter(|(h, always, _)| !h.is_empty() && (*always || add_header_applies(status)))
        .map(|(h, _, vars)| (h, ResponseVars { status, ..*vars }));
    // `gzip`: of a listed type (`Vary` then), and compressed if the client takes it.
    let typed = gzip.is_some_and(|(p, _)| enc.content_type.is_some_and(|t| p.compresses_type(t)));
    let compress = typed
        && gzip.is_some_and(|(p, accepts)| {
            accepts
                && matches!(status, 200 | 403 | 404)
                && !enc.encoded
                && !enc.no_transform
                && match body {
                    Body::None => false,
                    Body::Length(n) => n >= p.min_length && n > 0,
                    Body::Chunked | Body::Close => true,
                }
        });
    let vary_listed = enc
        .vary
        .is_some_and(|v| headers::has_token(v, "accept-encoding") || v.trim_ascii() == b"*");
    let keep_length = !compress && (matches!(body, Body::Length(_)) || (body == Body::None && !te));
    let mut buffering = None;
    for (h, &k) in fields.iter().zip(&kinds) {
        if k == Kind::Other && h.name.eq_ignore_ascii_case("x-accel-buffering") {
            // nginx's: for the balancer, not the client.
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"no") {
                buffering = Some(false);
            } else if v.eq_ignore_ascii_case(b"yes") {
                buffering = Some(true);
            }
            continue;
        }
        let pass = match k {
            Kind::Other | Kind::Cookie | Kind::Host | Kind::Expect => {
                !headers::listed_in_connection(connection, h.name)
            }
            Kind::XRealIp | Kind::XForwardedFor | Kind::XForwardedProto => true,
            Kind::ContentLength => keep_length,
            Kind::Connection | Kind::Upgrade => switching,
            Kind::HopByHop | Kind::TransferEncoding => false,
        };
        let replaced = add.as_ref().is_some_and(|(a, _)| a.names(h.name))
            || request_id.is_some_and(|(n, _)| n.eq_ignore_ascii_case(h.name))
            || (!hide.is_empty()
                && k == Kind::Other
                && hide.iter().any(|n| n.eq_ignore_ascii_case(h.name)));
        if pass && !replaced {
            if typed && !vary_listed && h.name.eq_ignore_ascii_case("vary") {
                let mut value = h.value.to_vec();
                value.extend_from_slice(b", Accept-Encoding");
                headers::put(out, h.name.as_bytes(), &value);
            } else if compress
                && h.name.eq_ignore_ascii_case("etag")
                && h.value.first() == Some(&b'"')
            {
                // Not the same bytes any more: a strong validator would lie.
                let mut value = b"W/".to_vec();
                value.extend_from_slice(h.value);
                headers::put(out, h.name.as_bytes(), &value);
            } else if let Some(v) = rw.relocate.and_then(|r| {
                if h.name.eq_ignore_ascii_case("location") {
                    r.location(h.value, &rw.vars)
                } else if h.name.eq_ignore_ascii_case("refresh") {
                    r.refresh(h.value, &rw.vars)
                } else {
                    None
                }
            }) {
                headers::put(out, h.name.as_bytes(), &v);
            } else if let Some(v) = rw
                .cookies
                .filter(|_| h.name.eq_ignore_ascii_case("set-cookie"))
                .and_then(|r| r.set_cookie(h.value, &rw.vars))
            {
                headers::put(out, h.name.as_bytes(), &v);
            } else {
                headers::put(out, h.name.as_bytes(), h.value);
            }
        }
    }
    if typed && enc.vary.is_none() {
        headers::put(out, b"Vary", b"Accept-Encoding");
    }
    if compress {
        headers::put(out, b"Content-Encoding", b"gzip");
    }
    if let Some((a, vars)) = add {
        let _ = a.write(out, None, Some(&vars));
    }
    if let Some((name, id)) = request_id {
        headers::put(out, name.as_bytes(), id);
    }
    Ok(Response {
        head_len,
        status,
        body,
        reusable,
        gzip: compress,
        buffering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str, head_request: bool) -> (Response, String) {
        let mut out = Vec::new();
        let r = parse(
            head.as_bytes(),
            head_request,
            &mut out,
            None,
            None,
            None,
            &Rewrites::default(),
        )
        .expect("valid head");
        (r, String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn length_chunked_and_close_delimited_bodies() {
        let (r, out) = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            false,
        );
        assert_eq!((r.status, r.body, r.reusable), (200, Body::Length(5), true));
        assert_eq!(r.head_len, 46);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n");
        let (r, out) = parsed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-b\r\nX-B: 2\r\n\r\n",
            false,
        );
        assert_eq!((r.body, r.reusable), (Body::Chunked, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\n");
        let (r, _) = parsed("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false);
        assert_eq!((r.body, r.reusable), (Body::Close, false));
        let (r, _) = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert_eq!((r.body, r.reusable), (Body::Length(1), false));
        let (r, _) = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(!r.reusable);
    }

    #[test]
    fn proxy_hide_header_drops_the_named_headers_whatever_their_case() {
        let mut out = Vec::new();
        let hide = ["x-powered-by".to_owned(), "Server".to_owned()];
        parse(
            b"HTTP/1.1 200 OK\r\nServer: Apache-Coyote/1.1\r\nX-Powered-By: Servlet/3.1\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
            false,
            &mut out,
            None,
            None,
            None,
            &Rewrites {
                hide: &hide,
                ..Rewrites::default()
            },
        )
        .expect("valid head");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n"
        );
    }

    #[test]
    fn x_accel_buffering_is_read_and_not_passed_on() {
        for (value, expected) in [("no", Some(false)), ("Yes", Some(true)), ("maybe", None)] {
            let (r, out) = parsed(
                &format!("HTTP/1.1 200 OK\r\nX-Accel-Buffering: {value}\r\nX-A: 1\r\n\r\n"),
                false,
            );
            assert_eq!(r.buffering, expected, "{value}");
            assert_eq!(out, "HTTP/1.1 200 OK\r\nX-A: 1\r\n");
        }
        let (r, _) = parsed("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(r.buffering, None);
    }

    #[test]
    fn head_204_and_304_answers_have_no_body() {
        let (r, out) = parsed("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true);
        assert_eq!((r.body, r.reusable), (Body::None, true));
        assert!(
            out.contains("Content-Length: 99\r\n"),
            "HEAD keeps the length"
        );
        for status in [204, 304] {
            let (r, _) = parsed(&format!("HTTP/1.1 {status} X\r\n\r\n"), false);
            assert_eq!(r.body, Body::None, "{status}");
        }
    }

    #[test]
    fn switching_protocols_keeps_upgrade_headers() {
        let (r, out) = parsed(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            false,
        );
        assert_eq!((r.status, r.body, r.reusable), (101, Body::None, false));
        assert!(
            out.contains("Connection: Upgrade\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
    }

    #[test]
    fn malformed_heads_are_rejected() {
        let mut out = Vec::new();
        for bad in [
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "FTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse(
                        bad.as_bytes(),
                        false,
                        &mut out,
                        None,
                        None,
                        None,
                        &Rewrites::default()
                    ),
                    Err(HeadError::Bad(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nX: 1\r\n",
                false,
                &mut out,
                None,
                None,
                None,
                &Rewrites::default()
            )
            .err(),
            Some(HeadError::Partial)
        );
    }
}
