//! Header rules between client and upstream, on raw header names and values.
//!
//! Towards the upstream: hop-by-hop headers (and any header named in `Connection`) are removed,
//! `Host` is kept (set to the upstream address only when the client sent none), `X-Real-IP` is
//! set, `X-Forwarded-For` gets the client address appended and `X-Forwarded-Proto` is set (a
//! trusted proxy's, see [`crate::realip`], is kept); an
//! upgrade request keeps `Connection: upgrade` and its `Upgrade`. Towards the client: hop-by-hop
//! headers of the upstream's answer are removed and the proxy writes the framing
//! (`Content-Length` or chunked) and `Connection` for the client's connection. The head parsers
//! in [`crate::h1`] apply these rules while they copy the headers into the outgoing head.

/// What the proxy does with a header it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Passed on unchanged (unless named in `Connection`).
    Other,
    /// Hop-by-hop: never passed on as is.
    HopByHop,
    Connection,
    Upgrade,
    TransferEncoding,
    ContentLength,
    Host,
    Expect,
    Cookie,
    XRealIp,
    XForwardedFor,
    XForwardedProto,
}

/// Classifies a header name (case-insensitive).
pub(crate) fn kind(name: &str) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is("te") => Kind::HopByHop,
        4 if is("host") => Kind::Host,
        6 if is("cookie") => Kind::Cookie,
        6 if is("expect") => Kind::Expect,
        7 if is("upgrade") => Kind::Upgrade,
        7 if is("trailer") => Kind::HopByHop,
        9 if is("x-real-ip") => Kind::XRealIp,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("proxy-connection") => Kind::HopByHop,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::XForwardedProto,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        19 if is("proxy-authorization") => Kind::HopByHop,
        _ => Kind::Other,
    }
}

/// Whether the comma-separated list `value` contains `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether header `name` is listed in one of the `Connection` header values.
pub(crate) fn listed_in_connection(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|v| has_token(v, name))
}

/// The last transfer coding of a `Transfer-Encoding` value, trimmed.
pub(crate) fn last_coding(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Parses a `Content-Length` value (digits only, no sign, no overflow).
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Appends `name: value\r\n` to `out`.
pub(crate) fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `Content-Length: n\r\n` to `out`.
pub(crate) fn put_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    put_digits(out, n, 10);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in base `radix` (10 or 16, lower-case hex digits) without allocating.
pub(crate) fn put_digits(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_kinds_ignore_case() {
        assert_eq!(kind("Connection"), Kind::Connection);
        assert_eq!(kind("KEEP-ALIVE"), Kind::HopByHop);
        assert_eq!(kind("te"), Kind::HopByHop);
        assert_eq!(kind("Transfer-Encoding"), Kind::TransferEncoding);
        assert_eq!(kind("x-forwarded-for"), Kind::XForwardedFor);
        assert_eq!(kind("X-Real-IP"), Kind::XRealIp);
        assert_eq!(kind("cookie"), Kind::Cookie);
        assert_eq!(kind("x-custom"), Kind::Other);
    }

    #[test]
    fn connection_tokens_name_headers() {
        let conn: [&[u8]; 2] = [b"keep-alive, X-Secret", b"upgrade"];
        assert!(listed_in_connection(&conn, "x-secret"));
        assert!(listed_in_connection(&conn, "Upgrade"));
        assert!(!listed_in_connection(&conn, "x-other"));
        assert!(has_token(b"close", "close"));
        assert!(!has_token(b"closed", "close"));
    }

    #[test]
    fn content_length_is_strict() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"+1"), None);
        assert_eq!(content_length(b"1,1"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"99999999999999999999"), None);
        let mut out = Vec::new();
        put_content_length(&mut out, 1234);
        assert_eq!(out, b"Content-Length: 1234\r\n");
    }

    #[test]
    fn last_transfer_coding() {
        assert_eq!(last_coding(b"gzip, chunked"), b"chunked");
        assert_eq!(last_coding(b"chunked , gzip"), b"gzip");
    }
}
