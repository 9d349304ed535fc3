//! Header rewriting between client and upstream.
//!
//! Towards the upstream: hop-by-hop headers (and any header named in `Connection`) are removed,
//! `Host` is kept (set to the upstream address only when the client sent none), `X-Real-IP` is
//! set, `X-Forwarded-For` gets the client address appended and `X-Forwarded-Proto` is set.
//! Towards the client: hop-by-hop headers of the upstream's answer are removed; hyper writes the
//! framing (`Content-Length` or chunked) and `Connection` for the client's connection.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers meaningful only for one connection (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
}

/// Rewrites request headers for the upstream (`client_ip` is the peer address as a header value).
pub(crate) fn to_upstream(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    strip_hop_by_hop(headers);
    // `Expect: 100-continue` was answered to the client by hyper; the body is already on its way.
    headers.remove(header::EXPECT);
    headers.insert(X_REAL_IP.clone(), client_ip.clone());
    let forwarded = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| client_ip.clone())
        }
        None => client_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("shop"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cookie", "host"]);
    }

    #[test]
    fn forwarding_headers_are_set_and_appended() {
        let ip = HeaderValue::from_static("10.0.0.7");
        let mut h = HeaderMap::new();
        to_upstream(&mut h, &ip);
        assert_eq!(h["x-real-ip"], "10.0.0.7");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        to_upstream(&mut h, &ip);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
    }
}
