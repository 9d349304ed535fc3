//! The client's request head: parsed with `httparse` straight from the connection's read buffer,
//! checked (size, header count, framing), and rewritten for the upstream in one pass.
//!
//! Nothing is copied out of the read buffer but the rewritten head: the caller looks at the
//! request through a [`View`] (deny check, session route, hash key) while the buffer is borrowed,
//! and keeps only the small [`Request`] summary afterwards.

use std::net::IpAddr;

use crate::custom_headers::CustomHeaders;
use crate::headers::{self, Kind};
use crate::realip::RealIp;

/// Largest request head (request line and headers) accepted; larger gets 431.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Most header fields accepted; more gets 431.
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest request target (path and query) accepted; longer gets 414, as nginx answers a
/// request line over its 8 KiB `large_client_header_buffers`.
pub(crate) const MAX_TARGET: usize = 8 * 1024;
/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the proxy keeps of a parsed request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    /// Bytes of the head in the read buffer.
    pub head_len: usize,
    /// HTTP/1.minor.
    pub minor: u8,
    /// May be sent again after it reached an upstream (not POST, PATCH, LOCK).
    pub idempotent: bool,
    /// A HEAD request (its response has no body).
    pub head_method: bool,
    /// The client wants the connection kept open.
    pub keep_alive: bool,
    pub framing: Framing,
    /// `Expect: 100-continue` (HTTP/1.1).
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    pub upgrade: bool,
    /// The rewritten head already has a `Host`.
    pub has_host: bool,
    /// The client's address: the connection's, or the one a trusted proxy named.
    pub client: IpAddr,
}

/// Who sent a request: the connection's address and where a trusted proxy's word about the
/// client is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer<'a> {
    pub ip: IpAddr,
    /// `ip` as text.
    pub text: &'a str,
    /// `set_real_ip_from` and its header, if configured.
    pub real_ip: Option<&'a RealIp>,
    /// `proxy_set_header`.
    pub set: &'a CustomHeaders,
    /// The client came over TLS (`X-Forwarded-Proto: https` unless a trusted proxy says).
    pub tls: bool,
    /// The certificate the client showed (`ssl_verify_client`), if any.
    pub client_cert: Option<&'a crate::tls::ClientCert>,
}

/// Why a head cannot be used (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Incomplete: read more.
    Partial,
    /// Head or header count over the limits: 431.
    TooLarge,
    /// Request target longer than [`MAX_TARGET`]: 414.
    UriTooLong,
    /// Malformed: 400.
    Bad(&'static str),
    /// A method the proxy does not pass on (CONNECT): 405.
    NotAllowed,
}

/// A parsed request, borrowed from the read buffer.
#[derive(Debug)]
pub(crate) struct View<'a> {
    /// The request method.
    pub method: &'a str,
    /// HTTP/1.minor.
    pub minor: u8,
    /// Path and query in origin form (`/` if the target had none).
    pub path_and_query: &'a str,
    /// The header fields as received.
    pub headers: &'a [httparse::Header<'a>],
    /// The client's address (see [`Request::client`]).
    pub client: IpAddr,
    /// The request id (`request_id_header`); empty when off.
    pub request_id: &'a [u8],
    /// The client's scheme is https: it came over TLS, or a trusted proxy
    /// (`set_real_ip_from`) says so in `X-Forwarded-Proto`.
    pub https: bool,
    /// The connection itself is TLS.
    pub tls: bool,
    /// The client's verified certificate, if it showed one.
    pub client_cert: Option<&'a crate::tls::ClientCert>,
}

impl<'a> View<'a> {
    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    /// The query, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// All values of the `Cookie` headers.
    pub fn cookies(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.headers
            .iter()
            .filter(|h| headers::kind(h.name) == Kind::Cookie)
            .map(|h| h.value)
    }
}

/// Why an incomplete head over [`MAX_HEAD`] is refused: 414 when its request line alone is
/// too long (no line end within the first `MAX_TARGET` + 64 bytes), else 431.
fn too_large(buf: &[u8]) -> HeadError {
    let line_limit = (MAX_TARGET + 64).min(buf.len());
    if buf[..line_limit].contains(&b'\n') {
        HeadError::TooLarge
    } else {
        HeadError::UriTooLong
    }
}

/// Splits an absolute-form target into (authority, origin-form path and query).
fn origin_form(target: &str) -> Option<(&str, &str)> {
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some("http://") {
        &target[7..]
    } else if lower(8).as_deref() == Some("https://") {
        &target[8..]
    } else {
        return None;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some((&rest[..i], &rest[i..])),
        // "http://host?q": the path is "/" (the caller adds it before the query).
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// A request id a client or a proxy in front may set: 1 to 200 visible ASCII characters.
fn valid_request_id(v: &[u8]) -> bool {
    (1..=200).contains(&v.len()) && v.iter().all(u8::is_ascii_graphic)
}

/// Writes a new request id into `out`: 128 random bits as 32 hex digits (nginx's `$request_id`).
pub(crate) fn new_request_id(out: &mut Vec<u8>) {
    let n: u128 = rand::random();
    for i in (0..32).rev() {
        out.push(b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize]);
    }
}

/// Removes `prefix` (`/api`, validated: leading `/`, no trailing `/`) from the path of the
/// request line at the start of `head` (`GET /api/x?y HTTP/1.1`) when the path is the prefix or
/// continues with `/` or `?` after it; a path left without its leading `/` gets one.
pub(crate) fn strip_path_prefix(head: &mut Vec<u8>, prefix: &str) {
    let Some(sp) = head.iter().position(|&b| b == b' ') else {
        return;
    };
    let start = sp + 1;
    let rest = &head[start..];
    if !rest.starts_with(prefix.as_bytes()) {
        return;
    }
    let end = start + prefix.len();
    match head.get(end) {
        Some(b'/') => {
            head.drain(start..end);
        }
        Some(b'?' | b' ') => {
            head.splice(start..end, [b'/']);
        }
        _ => {}
    }
}

/// Puts `prefix` (`/app`, validated as for [`strip_path_prefix`]) before the origin-form path of
/// the request line at the start of `head`: `/x?y` becomes `/app/x?y`, `/` becomes `/app/`.
/// Any other target (`*`) is left.
pub(crate) fn add_path_prefix(head: &mut Vec<u8>, prefix: &str) {
    let Some(sp) = head.iter().position(|&b| b == b' ') else {
        return;
    };
    if head.get(sp + 1) == Some(&b'/') {
        head.splice(sp + 1..sp + 1, prefix.bytes());
    }
}

/// The scheme a trusted proxy's first `X-Forwarded-Proto` names (`http` or `https`, any case);
/// `own` (the scheme of the connection) when it names none or something else.
fn forwarded_proto(
    fields: &[httparse::Header<'_>],
    kinds: &[Kind],
    own: &'static str,
) -> &'static str {
    let sent = fields
        .iter()
        .zip(kinds)
        .find(|(_, &k)| k == Kind::XForwardedProto)
        .map(|(h, _)| h.value.trim_ascii());
    match sent {
        Some(v) if v.eq_ignore_ascii_case(b"https") => "https",
        Some(v) if v.eq_ignore_ascii_case(b"http") => "http",
        _ => own,
    }
}

/// Parses the head at the start of `buf`, appends the upstream's request line and headers to
/// `out` (without `Host` when the client sent none, without body framing and without the final
/// empty line), and calls `inspect` on the parsed request.
pub(crate) fn parse<T>(
    buf: &[u8],
    peer: &Peer<'_>,
    request_id: Option<(&str, &mut Vec<u8>)>,
    out: &mut Vec<u8>,
    inspect: impl FnOnce(&View<'_>) -> T,
) -> Result<(Request, T), HeadError> {
    // Uninitialised slots: no 3 KiB memset per request.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(too_large(buf)),
        Ok(httparse::Status::Partial) => return Err(HeadError::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("incomplete request line"));
    };
    if target.len() > MAX_TARGET {
        return Err(HeadError::UriTooLong);
    }
    if head_len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    if method == "CONNECT" {
        return Err(HeadError::NotAllowed);
    }
    let fields = &*req.headers;

    // Pass 1: classify, and gather what decides framing and connection handling.
    let mut kinds = [Kind::Other; MAX_HEADERS];
    let mut framing_fields = super::FramingFields::new();
    let (mut has_host, mut has_upgrade, mut expect_continue) = (false, false, false);
    for (i, h) in fields.iter().enumerate() {
        let k = headers::kind(h.name);
        kinds[i] = k;
        framing_fields.note(k, h.value).map_err(HeadError::Bad)?;
        match k {
            Kind::Host => {
                if has_host {
                    return Err(HeadError::Bad("more than one Host"));
                }
                has_host = true;
            }
            Kind::Upgrade => has_upgrade = true,
            Kind::Expect => {
                expect_continue = minor == 1 && h.value.eq_ignore_ascii_case(b"100-continue")
            }
            _ => {}
        }
    }
    if minor == 1 && !has_host {
        return Err(HeadError::Bad("HTTP/1.1 request without Host"));
    }
    let super::FramingFields {
        length,
        te,
        chunked,
        ..
    } = framing_fields;
    let framing = match (te, length) {
        (true, Some(_)) => return Err(HeadError::Bad("both Transfer-Encoding and Content-Length")),
        (true, None) if chunked && minor == 1 => Framing::Chunked,
        (true, None) => return Err(HeadError::Bad("unsupported Transfer-Encoding")),
        (false, Some(0) | None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let connection = framing_fields.connection();
    let keep_alive = if minor == 1 {
        !headers::listed_in_connection(connection, "close")
    } else {
        headers::listed_in_connection(connection, "keep-alive")
    };
    let upgrade = has_upgrade && headers::listed_in_connection(connection, "upgrade");
    let own = if peer.tls { "https" } else { "http" };
    let (client, proto) = match peer.real_ip {
        Some(r) if r.trusts(peer.ip) => (
            r.client(peer.ip, fields),
            forwarded_proto(fields, &kinds, own),
        ),
        _ => (peer.ip, own),
    };

    // The request line, in origin form.
    let (authority, path_and_query) = match origin_form(target) {
        Some((authority, pq)) => (Some(authority).filter(|a| !a.is_empty()), pq),
        None => (None, target),
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if path_and_query.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // The request id: the client's (a proxy in front may have set it), if sane; else a new one.
    let rid_name = request_id.as_ref().map(|(n, _)| *n);
    let rid: &[u8] = match request_id {
        Some((name, id)) => {
            id.clear();
            match fields.iter().find(|h| h.name.eq_ignore_ascii_case(name)) {
                Some(h) if valid_request_id(h.value) => id.extend_from_slice(h.value),
                _ => new_request_id(id),
            }
            id
        }
        None => b"",
    };

    // Pass 2: the headers the upstream gets.
    let custom = !peer.set.is_empty();
    let ours = |name: &str| {
        (custom && peer.set.names(name)) || rid_name.is_some_and(|r| r.eq_ignore_ascii_case(name))
    };
    if ours("host") {
        has_host = true; // written with the other configured headers below
    } else if let Some(a) = authority {
        headers::put(out, b"Host", a.as_bytes());
        has_host = true;
    }
    for (h, &k) in fields.iter().zip(&kinds) {
        let pass = match k {
            Kind::Other | Kind::Cookie => !headers::listed_in_connection(connection, h.name),
            Kind::Host => authority.is_none(),
            Kind::Upgrade => upgrade,
            _ => false,
        };
        if pass && !ours(h.name) {
            headers::put(out, h.name.as_bytes(), h.value);
        }
    }
    if !ours("x-forwarded-for") {
        // The values received, in order, then the address of the peer this request came
        // from (the hop, even when a trusted proxy named another client).
        out.extend_from_slice(b"X-Forwarded-For: ");
        for (h, &k) in fields.iter().zip(&kinds) {
            if k == Kind::XForwardedFor && !h.value.trim_ascii().is_empty() {
                out.extend_from_slice(h.value.trim_ascii());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(peer.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !ours("x-real-ip") {
        let named;
        let ip = if client == peer.ip {
            peer.text
        } else {
            named = client.to_string();
            &named
        };
        headers::put(out, b"X-Real-IP", ip.as_bytes());
    }
    if !ours("x-forwarded-proto") {
        headers::put(out, b"X-Forwarded-Proto", proto.as_bytes());
    }
    if let Some(name) = rid_name {
        headers::put(out, name.as_bytes(), rid);
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }

    let view = View {
        method,
        minor,
        path_and_query: if path_and_query.starts_with('/') || path_and_query == "*" {
            path_and_query
        } else {
            "/"
        },
        headers: fields,
        client,
        request_id: rid,
        https: proto == "https",
        tls: peer.tls,
        client_cert: peer.client_cert,
    };
    if custom && !peer.set.write(out, Some(&view), None) && ours("host") {
        // A `Host` template that came out empty: the upstream's address, as for HTTP/1.0.
        has_host = false;
    }
    let extra = inspect(&view);
    Ok((
        Request {
            head_len,
            minor,
            idempotent: !matches!(method, "POST" | "PATCH" | "LOCK"),
            head_method: method == "HEAD",
            keep_alive,
            framing,
            expect_continue,
            upgrade,
            has_host,
            client,
        },
        extra,
    ))
}
