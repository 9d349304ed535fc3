//! Static files: `[[balancer.static]]` locations answered from disk, as nginx's static module
//! does with `root` or `alias`, `index`, `expires`, `charset`, `gzip_static`, `open_file_cache`
//! and `try_files` (`$uri $uri/ @upstream`, or a single-page app's `/index.html`).
//!
//! While the request path reads a head it notes which location takes the normalized path (the
//! longest prefix, matched at a segment boundary) and copies the conditional and range fields
//! ([`FileReq`]). After the access checks and limits, [`serve`] looks the file up in one call
//! on the blocking pool (a slow disk never stalls the worker), answers the conditionals (304,
//! 412), one byte range (206, 416) or the whole file, and streams the body in bounded chunks
//! under the client's send time-out. A missing file is a 404, the `fallback` file, or goes to
//! the upstreams with `try_upstream`. Each worker keeps a [`FileCache`] of look-ups.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;

use crate::conn::{Conn, Next};
use crate::h1::request::{Framing, Request, View};
use crate::upstream::Snapshot;

/// A streamed file is read in chunks of this size, two at a time per response.
const CHUNK: usize = 64 * 1024;
/// Files up to this size are read whole by the look-up (one trip to the blocking pool) and
/// kept by the worker's cache.
const SMALL: u64 = 64 * 1024;
/// Most look-ups a worker's cache holds.
const CACHE_ENTRIES: usize = 4096;
/// Most bytes of file content a worker's cache holds.
const CACHE_BYTES: usize = 16 << 20;

/// One configured location.
struct Location {
    /// `location` without its trailing `/` (`""` for `/`).
    prefix: String,
    /// `root` or `alias`.
    dir: PathBuf,
    /// `alias`: the path after the prefix is looked up in `dir`.
    alias: bool,
    index: Arc<[String]>,
    expires: Option<Duration>,
    try_upstream: bool,
    cache_valid: Duration,
    gzip_static: bool,
    charset: Option<String>,
    /// `fallback`'s file, answered for a missing one.
    fallback: Option<PathBuf>,
}

impl Location {
    /// The file for normalized `path`; `None` if a part of it is not a plain name.
    fn file(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.alias {
            &path[self.prefix.len()..]
        } else {
            path
        };
        let rel = Path::new(rel.trim_start_matches('/'));
        // The normalized path has no dot segments; a second look costs nothing.
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        Some(self.dir.join(rel))
    }
}

/// The `[[balancer.static]]` locations of one config, longest prefix first.
#[derive(Default)]
pub(crate) struct Locations(Vec<Location>);

impl Locations {
    pub(crate) fn of(cfg: &[crate::config::StaticConfig]) -> Self {
        let mut list: Vec<Location> = cfg
            .iter()
            .filter_map(|s| {
                let (dir, alias) = match (&s.root, &s.alias) {
                    (Some(d), None) => (d.clone(), false),
                    (None, Some(d)) => (d.clone(), true),
                    _ => return None, // refused by validation
                };
                let mut loc = Location {
                    prefix: s.location.trim_end_matches('/').to_owned(),
                    dir,
                    alias,
                    index: s.index.clone().into(),
                    expires: s.expires,
                    try_upstream: s.try_upstream,
                    cache_valid: s.cache_valid,
                    gzip_static: s.gzip_static,
                    charset: s.charset.clone(),
                    fallback: None,
                };
                loc.fallback = s
                    .fallback
                    .as_ref()
                    .and_then(|f| loc.file(&format!("{}/{f}", loc.prefix)));
                Some(loc)
            })
            .collect();
        list.sort_by_key(|l| std::cmp::Reverse(l.prefix.len()));
        Self(list)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The location that takes normalized `path`, if any.
    pub(crate) fn find(&self, path: &str) -> Option<usize> {
        self.0.iter().position(|l| {
            path.starts_with(&l.prefix)
                && (path.len() == l.prefix.len() || path.as_bytes()[l.prefix.len()] == b'/')
        })
    }
}

/// What the request path noted of a request that a static location takes.
#[derive(Default)]
pub(crate) struct FileReq {
    /// The location (index into [`Locations`]); `None`: not a static request.
    pub loc: Option<usize>,
    /// The normalized path.
    path: String,
    /// The path and query as sent (a directory's redirect adds the `/` to it).
    raw_path: String,
    raw_query: Option<String>,
    get_or_head: bool,
    /// The client takes gzip (`Accept-Encoding`).
    gzip: bool,
    if_match: Vec<u8>,
    if_none_match: Vec<u8>,
    if_modified_since: Vec<u8>,
    if_unmodified_since: Vec<u8>,
    range: Vec<u8>,
    if_range: Vec<u8>,
}

impl FileReq {
    /// Notes a request for location `loc` (its normalized path `path`).
    pub(crate) fn note(&mut self, loc: usize, path: &str, v: &View<'_>) {
        self.loc = Some(loc);
        self.path.clear();
        self.path.push_str(path);
        self.raw_path.clear();
        self.raw_path.push_str(v.path());
        self.raw_query = v.query().map(str::to_owned);
        self.get_or_head = v.method == "GET" || v.method == "HEAD";
        self.gzip = v
            .header("accept-encoding")
            .is_some_and(crate::gzip::accepts);
        let copy = |name: &str, out: &mut Vec<u8>| {
            out.clear();
            if let Some(h) = v.header(name) {
                out.extend_from_slice(h);
            }
        };
        copy("if-match", &mut self.if_match);
        copy("if-none-match", &mut self.if_none_match);
        copy("if-modified-since", &mut self.if_modified_since);
        copy("if-unmodified-since", &mut self.if_unmodified_since);
        copy("range", &mut self.range);
        copy("if-range", &mut self.if_range);
    }
}

/// What the look-up found.
#[derive(Debug)]
enum Found {
    File {
        /// The open file, to stream from (`None` when `content` holds it all).
        file: Option<std::fs::File>,
        len: u64,
        modified: SystemTime,
        /// The whole content, for a small file.
        content: Option<Bytes>,
        /// With `gzip`: that content compressed, for a small file of a listed type that
        /// compresses (made once per look-up, not per request).
        gz: Option<Bytes>,
        /// `Content-Type`, by the name of the file found (the index file for a directory).
        ctype: &'static str,
    },
    /// A directory asked for without the trailing `/`.
    Directory,
    /// Not readable: permissions, or not a regular file.
    Forbidden,
    /// A directory asked for with the trailing `/` that has none of the `index` files.
    NoIndex,
    Missing,
    Failed(std::io::Error),
}

impl Found {
    /// A copy for the cache: small files, directories, refusals and misses (not large files,
    /// whose content is not held, nor failures, which may pass).
    fn cacheable(&self) -> Option<Found> {
        Some(match self {
            Found::File {
                len,
                modified,
                content: Some(content),
                gz,
                ctype,
                ..
            } => Found::File {
                file: None,
                len: *len,
                modified: *modified,
                content: Some(content.clone()),
                gz: gz.clone(),
                ctype,
            },
            Found::Directory => Found::Directory,
            Found::Forbidden => Found::Forbidden,
            Found::NoIndex => Found::NoIndex,
            Found::Missing => Found::Missing,
            Found::File { .. } | Found::Failed(_) => return None,
        })
    }
}

/// One worker's cache of look-ups (nginx `open_file_cache`, holding the content of small
/// files too): a hit answers without a system call for the file. Each entry lives its
/// location's `cache_valid`; then one request looks again while the others still get the
/// entry (so many requests for a popular file do not all go to the disk at once), for at
/// most [`REFRESH_WAIT`]. A reload empties the cache.
#[derive(Default)]
pub(crate) struct FileCache {
    map: RefCell<HashMap<(PathBuf, bool), Entry>>,
    bytes: Cell<usize>,
}

struct Entry {
    until: Instant,
    /// When a request began to look again, if one does.
    refresh: Option<Instant>,
    found: Found,
}

/// How long an expired entry is still served while one request looks again.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

impl FileCache {
    pub(crate) fn clear(&self) {
        self.map.borrow_mut().clear();
        self.bytes.set(0);
    }

    /// The entry for `key` if it is fresh, or expired while another request looks again;
    /// `None`: the caller looks (and puts what it found, or forgets the key).
    fn get(&self, key: &(PathBuf, bool), now: Instant) -> Option<Found> {
        let mut map = self.map.borrow_mut();
        let e = map.get_mut(key)?;
        if e.until <= now {
            match e.refresh {
                Some(since) if now.duration_since(since) < REFRESH_WAIT => {}
                _ => {
                    e.refresh = Some(now);
                    return None;
                }
            }
        }
        e.found.cacheable()
    }

    /// Drops `key` (its look-up failed).
    fn forget(&self, key: &(PathBuf, bool)) {
        if let Some(e) = self.map.borrow_mut().remove(key) {
            self.bytes
                .set(self.bytes.get().saturating_sub(Self::size(&e.found)));
        }
    }

    fn size(f: &Found) -> usize {
        match f {
            Found::File {
                content: Some(c),
                gz,
                ..
            } => c.len() + gz.as_ref().map_or(0, Bytes::len),
            _ => 0,
        }
    }

    fn put(&self, key: (PathBuf, bool), found: Found, until: Instant, now: Instant) {
        let size = Self::size;
        let mut map = self.map.borrow_mut();
        let mut bytes = self.bytes.get() + size(&found);
        if let Some(old) = map.get(&key) {
            bytes -= size(&old.found);
        } else if map.len() >= CACHE_ENTRIES || bytes > CACHE_BYTES {
            map.retain(|_, e| e.until > now);
            bytes = map.values().map(|e| size(&e.found)).sum::<usize>() + size(&found);
            if map.len() >= CACHE_ENTRIES || bytes > CACHE_BYTES {
                map.clear();
                bytes = size(&found);
            }
        }
        let entry = Entry {
            until,
            refresh: None,
            found,
        };
        map.insert(key, entry);
        self.bytes.set(bytes);
    }
}

fn open_regular(path: PathBuf, read_small: bool, gzip: Option<&crate::gzip::Policy>) -> Found {
    use std::io::ErrorKind;
    let classify = |e: std::io::Error| match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory => Found::Missing,
        ErrorKind::PermissionDenied => Found::Forbidden,
        _ => Found::Failed(e),
    };
    // Look before opening: opening a FIFO would wait for a writer.
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => return Found::Directory,
        Ok(m) if !m.is_file() => return Found::Forbidden,
        Ok(_) => {}
        Err(e) => return classify(e),
    }
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return classify(e),
    };
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Found::Forbidden,
        Err(e) => return Found::Failed(e),
    };
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let mut len = meta.len();
    let ctype = content_type(&path);
    if read_small && len <= SMALL {
        let mut buf = Vec::with_capacity(len as usize);
        if let Err(e) = (&mut file).take(SMALL).read_to_end(&mut buf) {
            return Found::Failed(e);
        }
        // A file that changed size since the stat is served as read.
        len = buf.len() as u64;
        let gz = gzip
            .filter(|p| len >= p.min_length.max(1) && p.compresses_type(ctype.as_bytes()))
            .and_then(|p| p.compress(&buf))
            .filter(|z| z.len() < buf.len())
            .map(Bytes::from);
        return Found::File {
            file: None,
            len,
            modified,
            content: Some(buf.into()),
            gz,
            ctype,
        };
    }
    Found::File {
        file: Some(file),
        len,
        modified,
        content: None,
        gz: None,
        ctype,
    }
}

/// Finds the file for a request (blocking: runs on the blocking pool).
fn lookup(
    path: PathBuf,
    dir_request: bool,
    index: &[String],
    read_small: bool,
    gzip: Option<&crate::gzip::Policy>,
) -> Found {
    if !dir_request {
        return open_regular(path, read_small, gzip);
    }
    for name in index {
        match open_regular(path.join(name), read_small, gzip) {
            Found::Missing | Found::Directory => continue,
            found => return found,
        }
    }
    if path.is_dir() {
        Found::NoIndex
    } else {
        Found::Missing
    }
}

/// nginx's `mime.types`, the common part; anything else is `application/octet-stream`.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" | "shtml" => "text/html",
        "css" => "text/css",
        "js" | "mjs" => "application/javascript",
        "json" | "map" => "application/json",
        "xml" => "text/xml",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "md" => "text/markdown",
        "svg" | "svgz" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/x-ms-bmp",
        "tif" | "tiff" => "image/tiff",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "jar" | "war" | "ear" => "application/java-archive",
        "wasm" => "application/wasm",
        "webmanifest" => "application/manifest+json",
        "atom" => "application/atom+xml",
        "rss" => "application/rss+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// The types `charset` applies to (nginx's `charset_types`, and the other text types).
fn textual(ctype: &str) -> bool {
    ctype.starts_with("text/")
        || matches!(
            ctype,
            "application/javascript"
                | "application/json"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/manifest+json"
                | "image/svg+xml"
        )
}

/// Whether entity tag list `list` (`If-Match` / `If-None-Match`) names `etag`; `weak`: the
/// weak comparison (a `W/` prefix on either side is ignored).
pub(crate) fn etag_matches(list: &[u8], etag: &[u8], weak: bool) -> bool {
    list.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
        if t == b"*" {
            return true;
        }
        match t.strip_prefix(b"W/") {
            Some(w) => weak && w == etag,
            None => t == etag,
        }
    })
}

pub(crate) fn http_date(v: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(v).ok()?.trim()).ok()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a `Range` field asks of a `len`-byte file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Span {
    /// No usable range (absent, malformed, several ranges): the whole file.
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Nothing of the file satisfies it: 416.
    Unsatisfiable,
}

pub(crate) fn parse_range(v: &[u8], len: u64) -> Span {
    let v = v.trim_ascii();
    let Some(spec) = v
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case(b"bytes="))
        .map(|_| v[6..].trim_ascii())
    else {
        return Span::Whole;
    };
    if spec.contains(&b',') {
        // Several ranges would need a multipart answer; the whole file is a valid answer.
        return Span::Whole;
    }
    let num = |s: &[u8]| -> Option<u64> {
        let s = s.trim_ascii();
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return Span::Whole;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.trim_ascii().is_empty() {
        // `-n`: the last n bytes.
        return match num(last) {
            None => Span::Whole,
            Some(0) => Span::Unsatisfiable,
            Some(_) if len == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part(len.saturating_sub(n), len - 1),
        };
    }
    let Some(start) = num(first) else {
        return Span::Whole;
    };
    let end = if last.trim_ascii().is_empty() {
        None
    } else {
        match num(last) {
            Some(e) if e >= start => Some(e),
            _ => return Span::Whole,
        }
    };
    if start >= len {
        return Span::Unsatisfiable;
    }
    Span::Part(start, end.map_or(len - 1, |e| e.min(len - 1)))
}

/// Answers a request that a static location took; `None`: the file is missing and the
/// location sends such requests to the upstreams.
pub(crate) async fn serve(
    c: &mut Conn,
    snap: &Snapshot,
    cache: &FileCache,
    req: &Request,
) -> Option<Next> {
    let loc = &snap.files.0[c.file.loc?];
    // A body that was not read makes the connection unusable.
    let close = !req.keep_alive || req.framing != Framing::None;
    if !c.file.get_or_head && !loc.try_upstream {
        return Some(not_allowed(c, close).await);
    }
    let Some(path) = loc.file(&c.file.path) else {
        return Some(c.page(StatusCode::NOT_FOUND, close).await);
    };
    let dir_request = c.file.path.ends_with('/');
    // nginx `gzip_static`: `<file>.gz` for a client that takes gzip, if there is one.
    let mut gzipped = None;
    if loc.gzip_static && !dir_request && c.file.gzip {
        let mut gz = path.clone().into_os_string();
        gz.push(".gz");
        if let mut found @ Found::File { .. } = find(cache, loc, (gz.into(), false), None).await {
            if let Found::File { ctype, .. } = &mut found {
                *ctype = content_type(&path); // the original's type, not gzip's
            }
            gzipped = Some(found);
        }
    }
    let encoded = gzipped.is_some();
    let mut found = match gzipped {
        Some(f) => f,
        None => find(cache, loc, (path, dir_request), snap.gzip.as_ref()).await,
    };
    if let (Found::Missing | Found::NoIndex, Some(fallback)) = (&found, &loc.fallback) {
        // nginx `try_files $uri $uri/ /index.html`: a single-page app's routes get its page.
        found = find(cache, loc, (fallback.clone(), false), snap.gzip.as_ref()).await;
    }
    let (file, mut len, modified, mut content, gz, ctype) = match found {
        Found::File {
            file,
            len,
            modified,
            content,
            gz,
            ctype,
        } => (file, len, modified, content, gz, ctype),
        // With `try_upstream` a directory without an index file is the app's (`/` most of
        // all), as behind nginx's `try_files $uri @app`.
        Found::Missing | Found::NoIndex if loc.try_upstream => return None,
        Found::Missing => return Some(c.page(StatusCode::NOT_FOUND, close).await),
        Found::Forbidden | Found::NoIndex => {
            return Some(c.page(StatusCode::FORBIDDEN, close).await)
        }
        Found::Directory => {
            let mut to = std::mem::take(&mut c.file.raw_path);
            to.push('/');
            if let Some(q) = &c.file.raw_query {
                to.push('?');
                to.push_str(q);
            }
            crate::headers::put(&mut c.page_headers, b"Location", to.as_bytes());
            return Some(c.page(StatusCode::MOVED_PERMANENTLY, close).await);
        }
        Found::Failed(e) => {
            log::error!("static file for {:?}: {e}", c.file.path);
            return Some(c.page(StatusCode::INTERNAL_SERVER_ERROR, close).await);
        }
    };
    if !c.file.get_or_head {
        return Some(not_allowed(c, close).await);
    }
    // `gzip` on the fly, for a small file of a listed type (compressed when it was looked up):
    // a client that takes gzip gets that, unless it asks for a range (of the file as it is).
    let typed = !encoded
        && snap
            .gzip
            .as_ref()
            .is_some_and(|p| p.compresses_type(ctype.as_bytes()));
    let compressed = match gz {
        Some(z) if typed && c.file.gzip && c.file.range.is_empty() => Some(z),
        _ => None,
    };
    let mut etag = Vec::with_capacity(26);
    etag.push(b'"');
    crate::headers::put_digits(&mut etag, secs(modified), 16);
    etag.push(b'-');
    crate::headers::put_digits(&mut etag, len, 16);
    etag.push(b'"');
    if let Some(z) = compressed.clone() {
        len = z.len() as u64;
        content = Some(z);
    }
    let mtime = secs(modified);
    let f = &c.file;
    // RFC 9110 section 13.2.2: the preconditions in their order.
    let failed = if !f.if_match.is_empty() {
        // Strong comparison: a compressed answer's weak validator matches only `*`.
        !(etag_matches(&f.if_match, &etag, false)
            && (compressed.is_none() || f.if_match.trim_ascii() == b"*"))
    } else {
        http_date(&f.if_unmodified_since).is_some_and(|d| mtime > secs(d))
    };
    if failed {
        return Some(c.page(StatusCode::PRECONDITION_FAILED, close).await);
    }
    let not_modified = if !f.if_none_match.is_empty() {
        etag_matches(&f.if_none_match, &etag, true)
    } else {
        http_date(&f.if_modified_since).is_some_and(|d| mtime <= secs(d))
    };
    // A range is for GET only, and with `If-Range` only while the file is the client's.
    let ranged = !not_modified
        && !req.head_method
        && !f.range.is_empty()
        && (f.if_range.is_empty() || if_range_holds(&f.if_range, &etag, mtime));
    let span = if ranged {
        parse_range(&f.range, len)
    } else {
        Span::Whole
    };
    let status = match span {
        _ if not_modified => StatusCode::NOT_MODIFIED,
        Span::Whole => StatusCode::OK,
        Span::Part(..) => StatusCode::PARTIAL_CONTENT,
        Span::Unsatisfiable => {
            let mut v = b"bytes */".to_vec();
            crate::headers::put_digits(&mut v, len, 10);
            crate::headers::put(&mut c.page_headers, b"Content-Range", &v);
            return Some(c.page(StatusCode::RANGE_NOT_SATISFIABLE, close).await);
        }
    };
    let (start, end) = match span {
        Span::Part(s, e) => (s, e + 1),
        _ => (0, len),
    };
    let coding = (loc.gzip_static || typed).then_some(encoded || compressed.is_some());
    // Not the file's bytes: the validator a compressed answer carries is weak.
    let weak;
    let shown: &[u8] = if compressed.is_some() {
        weak = [&b"W/"[..], &etag].concat();
        &weak
    } else {
        &etag
    };
    write_head(
        c,
        snap,
        loc,
        status,
        (ctype, coding),
        shown,
        modified,
        (start, end, len),
        close,
    );
    if status == StatusCode::NOT_MODIFIED || req.head_method || start == end {
        c.answered(status, 0);
        return Some(finish(c.flush().await, close));
    }
    match (content, file) {
        (Some(content), _) => {
            let body = content
                .get(start as usize..end as usize)
                .unwrap_or_default();
            c.wbuf.extend_from_slice(body);
            c.answered(status, body.len());
            Some(finish(c.flush().await, close))
        }
        (None, Some(file)) => {
            c.answered(status, 0);
            Some(stream_body(c, file, start, end - start, close).await)
        }
        (None, None) => Some(Next::Close), // not reached: a look-up gives one or the other
    }
}

/// The look-up for `key`: from the worker's cache, else from the disk (on the blocking pool).
/// With `gzip`, a small file of a listed type is compressed in the same look-up.
async fn find(
    cache: &FileCache,
    loc: &Location,
    key: (PathBuf, bool),
    gzip: Option<&crate::gzip::Policy>,
) -> Found {
    let now = Instant::now();
    if !loc.cache_valid.is_zero() {
        if let Some(hit) = cache.get(&key, now) {
            return hit;
        }
    }
    let (path, dir_request, index) = (key.0.clone(), key.1, loc.index.clone());
    let gzip = gzip.cloned();
    let found =
        tokio::task::spawn_blocking(move || lookup(path, dir_request, &index, true, gzip.as_ref()))
            .await
            .unwrap_or_else(|e| Found::Failed(std::io::Error::other(e)));
    if !loc.cache_valid.is_zero() {
        match found.cacheable() {
            Some(copy) => cache.put(key, copy, now + loc.cache_valid, now),
            None => cache.forget(&key),
        }
    }
    found
}

fn finish(flushed: bool, close: bool) -> Next {
    if flushed && !close {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// `If-Range`: an entity tag must match strongly, a date must be the file's exact time.
fn if_range_holds(v: &[u8], etag: &[u8], mtime: u64) -> bool {
    let v = v.trim_ascii();
    if v.starts_with(b"\"") || v.starts_with(b"W/") {
        return v == etag;
    }
    http_date(v).is_some_and(|d| secs(d) == mtime)
}

async fn not_allowed(c: &mut Conn, close: bool) -> Next {
    crate::headers::put(&mut c.page_headers, b"Allow", b"GET, HEAD");
    c.page(StatusCode::METHOD_NOT_ALLOWED, close).await
}

/// Writes the answer's head into `wbuf`; `span` is (start, end, file length).
#[allow(clippy::too_many_arguments)]
fn write_head(
    c: &mut Conn,
    snap: &Snapshot,
    loc: &Location,
    status: StatusCode,
    (ctype, gzipped): (&str, Option<bool>),
    etag: &[u8],
    modified: SystemTime,
    span: (u64, u64, u64),
    close: bool,
) {
    use crate::headers::{put, put_content_length, put_digits};
    let out = &mut c.wbuf;
    out.clear();
    let now = SystemTime::now();
    crate::pages::status_line(out, status, now);
    let (start, end, len) = span;
    if status != StatusCode::NOT_MODIFIED {
        match &loc.charset {
            Some(cs) if textual(ctype) => {
                out.extend_from_slice(b"Content-Type: ");
                out.extend_from_slice(ctype.as_bytes());
                out.extend_from_slice(b"; charset=");
                out.extend_from_slice(cs.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            _ => put(out, b"Content-Type", ctype.as_bytes()),
        }
        put_content_length(out, end - start);
    }
    put(
        out,
        b"Last-Modified",
        httpdate::fmt_http_date(modified).as_bytes(),
    );
    put(out, b"ETag", etag);
    if status == StatusCode::PARTIAL_CONTENT {
        let mut v = b"bytes ".to_vec();
        put_digits(&mut v, start, 10);
        v.push(b'-');
        put_digits(&mut v, end.saturating_sub(1), 10);
        v.push(b'/');
        put_digits(&mut v, len, 10);
        put(out, b"Content-Range", &v);
    } else if status == StatusCode::OK {
        put(out, b"Accept-Ranges", b"bytes");
    }
    // With `gzip_static` the answer depends on `Accept-Encoding`: caches must know.
    match gzipped {
        Some(true) => {
            put(out, b"Content-Encoding", b"gzip");
            put(out, b"Vary", b"Accept-Encoding");
        }
        Some(false) => put(out, b"Vary", b"Accept-Encoding"),
        None => {}
    }
    if let Some(max_age) = loc.expires {
        let mut v = b"max-age=".to_vec();
        put_digits(&mut v, max_age.as_secs(), 10);
        put(out, b"Cache-Control", &v);
        put(
            out,
            b"Expires",
            httpdate::fmt_http_date(now + max_age).as_bytes(),
        );
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(&c.page_headers);
    if !snap.add_headers.is_empty() {
        // nginx `add_header`: 200, 206 and 304 are among the statuses it applies to.
        let vars = crate::custom_headers::ResponseVars {
            upstream: None,
            status: status.as_u16(),
            client: c.client,
            request_id: &c.request_id,
        };
        let _ = snap.add_headers.write(out, None, Some(&vars));
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends `count` bytes of `file` from `start` after the head in `wbuf`: two buffers of
/// [`CHUNK`] bytes, the next one read on the blocking pool while the current one is written,
/// so the disk and the client's socket work at the same time and memory stays at two chunks.
async fn stream_body(
    c: &mut Conn,
    file: std::fs::File,
    start: u64,
    count: u64,
    close: bool,
) -> Next {
    if !c.flush().await {
        return Next::Close;
    }
    let file = Arc::new(file);
    let read = |buf: Vec<u8>, at: u64, end: u64| {
        let file = file.clone();
        let want = (end - at).min(CHUNK as u64) as usize;
        tokio::task::spawn_blocking(move || read_chunk(&file, buf, at, want))
    };
    let (mut at, end) = (start, start + count);
    let mut pending = Some(read(Vec::new(), at, end));
    let mut spare = Vec::new();
    while let Some(task) = pending.take() {
        let (buf, n) = match task.await {
            Ok((buf, Ok(n))) => (buf, n),
            Ok((_, Err(e))) => {
                log::error!("static file for {:?}: {e}", c.file.path);
                return Next::Close;
            }
            Err(e) => {
                log::error!("static file for {:?}: {e}", c.file.path);
                return Next::Close;
            }
        };
        if n == 0 {
            // Shorter than its length said (cut while being sent): the client sees the body
            // end early, as from nginx.
            log::warn!("static file for {:?} ended early", c.file.path);
            return Next::Close;
        }
        at += n as u64;
        if at < end {
            pending = Some(read(std::mem::take(&mut spare), at, end));
        }
        if !c.send(&buf[..n]).await {
            return Next::Close;
        }
        spare = buf;
    }
    finish(true, close)
}

/// Reads up to `want` bytes of `file` at offset `at` into `buf` (blocking); fewer only at the
/// file's end. The buffer keeps its length between uses, so it is zeroed once, not per chunk.
fn read_chunk(
    file: &std::fs::File,
    mut buf: Vec<u8>,
    at: u64,
    want: usize,
) -> (Vec<u8>, std::io::Result<usize>) {
    use std::os::unix::fs::FileExt as _;
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..want], at + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (buf, Err(e)),
        }
    }
    (buf, Ok(got))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(text: &'static str) -> Found {
        Found::File {
            file: None,
            len: text.len() as u64,
            modified: UNIX_EPOCH,
            content: Some(Bytes::from_static(text.as_bytes())),
            gz: None,
            ctype: "text/plain",
        }
    }

    fn text(f: Option<Found>) -> Option<Bytes> {
        match f? {
            Found::File { content, .. } => content,
            _ => None,
        }
    }

    #[test]
    fn an_expired_entry_is_looked_at_by_one_request_while_the_others_get_it() {
        let cache = FileCache::default();
        let key = (PathBuf::from("/srv/a.css"), false);
        let t0 = Instant::now();
        assert!(cache.get(&key, t0).is_none(), "a miss");
        cache.put(key.clone(), small("one"), t0 + Duration::from_secs(1), t0);
        assert_eq!(text(cache.get(&key, t0)).as_deref(), Some(&b"one"[..]));
        let later = t0 + Duration::from_secs(2);
        assert!(
            cache.get(&key, later).is_none(),
            "the first after expiry looks"
        );
        assert_eq!(
            text(cache.get(&key, later)).as_deref(),
            Some(&b"one"[..]),
            "the others get the entry meanwhile"
        );
        let stuck = later + REFRESH_WAIT;
        assert!(
            cache.get(&key, stuck).is_none(),
            "a look that never ended is redone"
        );
        cache.put(
            key.clone(),
            small("two!"),
            stuck + Duration::from_secs(1),
            stuck,
        );
        assert_eq!(text(cache.get(&key, stuck)).as_deref(), Some(&b"two!"[..]));
        assert_eq!(cache.bytes.get(), 4);
        cache.forget(&key);
        assert!(cache.get(&key, stuck).is_none());
        assert_eq!(cache.bytes.get(), 0);
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let cache = FileCache::default();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        let big: &'static [u8] = Box::leak(vec![b'x'; SMALL as usize].into_boxed_slice());
        for i in 0..(CACHE_BYTES / big.len() + 10) {
            let f = Found::File {
                file: None,
                len: big.len() as u64,
                modified: UNIX_EPOCH,
                content: Some(Bytes::from_static(big)),
                gz: None,
                ctype: "text/plain",
            };
            cache.put((PathBuf::from(format!("/f{i}")), false), f, until, t0);
            assert!(cache.bytes.get() <= CACHE_BYTES + big.len());
        }
        for i in 0..(CACHE_ENTRIES * 2) {
            let key = (PathBuf::from(format!("/missing{i}")), false);
            cache.put(key, Found::Missing, until, t0);
            assert!(cache.map.borrow().len() <= CACHE_ENTRIES);
        }
    }

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        assert_eq!(parse_range(b"bytes=0-9", 100), Span::Part(0, 9));
        assert_eq!(parse_range(b"bytes=90-", 100), Span::Part(90, 99));
        assert_eq!(parse_range(b"bytes=90-500", 100), Span::Part(90, 99));
        assert_eq!(parse_range(b"bytes=-10", 100), Span::Part(90, 99));
        assert_eq!(parse_range(b"bytes=-500", 100), Span::Part(0, 99));
        assert_eq!(parse_range(b"Bytes = 5-5", 100), Span::Whole);
        assert_eq!(parse_range(b"BYTES=5-5", 100), Span::Part(5, 5));
        assert_eq!(parse_range(b"bytes=100-", 100), Span::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Span::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-0", 0), Span::Unsatisfiable);
        // Malformed or several: the whole file.
        for v in [
            &b"bytes=9-1"[..],
            b"bytes=a-b",
            b"bytes=1-2,4-5",
            b"items=0-1",
            b"bytes=",
            b"bytes=+1-2",
            b"bytes=99999999999999999999999-",
        ] {
            assert_eq!(
                parse_range(v, 100),
                Span::Whole,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn entity_tags_compare_strong_or_weak() {
        let tag = b"\"5f-10\"";
        assert!(etag_matches(b"\"5f-10\"", tag, false));
        assert!(etag_matches(b"\"x\", \"5f-10\"", tag, false));
        assert!(etag_matches(b"*", tag, false));
        assert!(!etag_matches(b"W/\"5f-10\"", tag, false));
        assert!(etag_matches(b"W/\"5f-10\"", tag, true));
        assert!(!etag_matches(b"\"5f-11\"", tag, true));
    }

    #[test]
    fn locations_match_at_segment_boundaries_longest_first() {
        let cfg = |loc: &str| crate::config::StaticConfig::root(loc, "/srv");
        let l = Locations::of(&[cfg("/static/"), cfg("/static/img"), cfg("/files")]);
        let at = |p| l.find(p).map(|i| l.0[i].prefix.as_str());
        assert_eq!(at("/static/a.css"), Some("/static"));
        assert_eq!(at("/static"), Some("/static"));
        assert_eq!(at("/static/img/a.png"), Some("/static/img"));
        assert_eq!(at("/static/imgx"), Some("/static"));
        assert_eq!(at("/staticx"), None);
        assert_eq!(at("/files../etc/passwd"), None);
        assert_eq!(at("/"), None);
    }

    #[test]
    fn alias_and_root_map_paths_inside_their_directory() {
        let mut c = crate::config::StaticConfig::root("/assets/", "/srv/www");
        let root = &Locations::of(&[c.clone()]).0[0];
        assert_eq!(
            root.file("/assets/a/b.css"),
            Some(PathBuf::from("/srv/www/assets/a/b.css"))
        );
        c.root = None;
        c.alias = Some("/srv/files".into());
        let alias = &Locations::of(&[c]).0[0];
        assert_eq!(
            alias.file("/assets/a/b.css"),
            Some(PathBuf::from("/srv/files/a/b.css"))
        );
        assert_eq!(alias.file("/assets"), Some(PathBuf::from("/srv/files")));
    }
}
