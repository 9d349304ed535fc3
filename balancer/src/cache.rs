//! Response cache in memory (nginx `proxy_cache` with `proxy_cache_valid`,
//! `proxy_cache_use_stale`, `proxy_cache_lock`), shared by the workers.
//!
//! What is kept is the upstream's answer as it came (its head and its body in their own
//! framing), with the address of the upstream that gave it. A hit is answered by running that
//! answer through the same response path as a live one (header rewrites, `add_header`, gzip,
//! buffering), from memory: so a hit looks to the client exactly as the live answer did.
//!
//! - Requests: only `GET` and `HEAD` are looked up; a request with `Authorization`,
//!   `Upgrade`, `If-Match` or `If-Unmodified-Since`, or with the session cookie
//!   (`sticky_cookie`) unless `proxy_cache_session` allows it, neither reads nor fills. The key
//!   is the scheme, the host and the request target.
//! - Answers: kept when they say for how long (`X-Accel-Expires`, then `Cache-Control`
//!   `s-maxage`/`max-age`, then `Expires`) or when `proxy_cache_valid` gives a time for their
//!   status; never with `Set-Cookie`, `Cache-Control: no-store|no-cache|private`, `Vary: *`, a
//!   206 or 304, or a body without a length or over `proxy_cache_max_entry_size`. `Vary` keeps
//!   one variant per value of the named request headers.
//! - Memory is bounded by `proxy_cache_max_size` (CLOCK eviction: an entry used since the hand
//!   last passed gets another round), and an entry not asked for during `proxy_cache_inactive`
//!   is dropped.
//! - A key that is being filled: the others wait for it (`proxy_cache_lock`, at most
//!   `proxy_cache_lock_timeout`), or get the expired copy (`updating` in
//!   `proxy_cache_use_stale`). An answer that could not be kept marks its key "pass" for a
//!   while, so requests for it are not held behind one another.
//! - Expired copies are kept (until inactive or evicted) to answer when the upstreams fail
//!   (`proxy_cache_use_stale error timeout http_500 ...`). An answer's own `Cache-Control:
//!   stale-while-revalidate=N` and `stale-if-error=N` allow the same for N seconds (RFC 5861).
//! - A request that fills goes to the upstream without the client's `If-None-Match` and
//!   `If-Modified-Since`, so the whole answer comes back to be kept (an upstream's 304 to one
//!   browser would leave the key uncached); the client's conditionals are then answered from
//!   the kept copy (304 when it has it). With `proxy_cache_revalidate`, an expired copy's
//!   `ETag` and `Last-Modified` go to the upstream instead, and its 304 refreshes the copy (its
//!   headers updated from the 304, RFC 9111 section 4.3.4) without the body being sent again.
//! - A `HEAD` that would fill is sent as a `GET` (`proxy_cache_convert_head`), and the client
//!   gets the head of what was kept.
//! - A `GET` with one byte `Range` is answered from a fresh copy of a 200 with a length: 206
//!   with the part, 416 when the copy has none of it (`If-Range` naming the copy's strong `ETag`
//!   or its exact `Last-Modified`, else the whole copy). Several ranges, or a copy sent
//!   chunked, get the whole copy. A range request never fills: on a miss it goes to the
//!   upstream as it came (fetching a whole large file for one part of it would be worse).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::{BalancerConfig, ConfigError};
use crate::h1::request::View;
use crate::hashkey::HashKey;

/// How long a key whose answer could not be kept goes straight to the upstreams.
const PASS_FOR: Duration = Duration::from_secs(10);
/// Most "pass" keys remembered (then they are forgotten all at once).
const MAX_PASS: usize = 10_000;
/// Most keys whose requests are counted for `proxy_cache_min_uses` (then all start again).
const MAX_COUNTED: usize = 100_000;

/// The cache settings of a snapshot, and the store (which outlives reloads).
#[derive(Debug)]
pub(crate) struct Policy {
    pub max_size: u64,
    pub max_entry: u64,
    valid: Vec<(Statuses, Duration)>,
    pub stale: Stale,
    pub lock: bool,
    pub lock_timeout: Duration,
    /// `proxy_cache_revalidate`.
    pub revalidate: bool,
    /// `proxy_cache_convert_head`.
    pub convert_head: bool,
    /// `proxy_cache_background_update`.
    pub background_update: bool,
    /// `proxy_cache_min_uses`.
    pub min_uses: u32,
    inactive: Duration,
    session: bool,
    /// `proxy_ignore_headers`.
    ignore: Ignored,
    /// `proxy_cache_purge_allow`.
    pub purge_allow: Vec<crate::netmask::Net>,
    /// `proxy_cache_key`; `None`: scheme, host and request target.
    key: Option<HashKey>,
    bypass: Vec<HashKey>,
    no_store: Vec<HashKey>,
    /// Response header that tells the cache status (nginx `$upstream_cache_status`).
    pub status_header: Option<String>,
    pub store: Arc<Store>,
}

/// When an expired copy answers instead of the upstreams (`proxy_cache_use_stale`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stale {
    pub error: bool,
    pub timeout: bool,
    /// `http_500` .. `http_504`.
    pub status: [bool; 5],
    pub updating: bool,
}

impl Stale {
    /// Whether an upstream answer with `status` is replaced by the expired `copy`
    /// (`http_50x`, or the copy's own `stale-if-error`).
    pub fn for_status(&self, status: u16, copy: &Entry) -> bool {
        (500..=504).contains(&status)
            && (self.status[usize::from(status - 500)] || copy.may_answer_for_error())
    }

    /// Whether a failure ending in `status` (504: a time-out) is answered by the expired `copy`
    /// (`error`, `timeout`, or the copy's own `stale-if-error`).
    pub fn for_failure(&self, status: u16, copy: &Entry) -> bool {
        let configured = if status == 504 {
            self.timeout
        } else {
            self.error
        };
        configured || copy.may_answer_for_error()
    }

    /// Whether the expired `copy` answers while another request refreshes it (`updating`, or
    /// the copy's own `stale-while-revalidate`).
    pub fn while_updating(&self, copy: &Entry) -> bool {
        self.updating || copy.may_answer_while_updating()
    }
}

/// The answer headers the cache does not look at (`proxy_ignore_headers`).
#[derive(Debug, Clone, Copy, Default)]
struct Ignored {
    cache_control: bool,
    expires: bool,
    accel: bool,
    vary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Statuses {
    Any,
    List(Vec<u16>),
}

impl Policy {
    /// The policy of `cfg` if any pool caches; `prev`'s store is kept (a reload does not empty
    /// the cache).
    pub fn of(cfg: &BalancerConfig, prev: Option<&Policy>) -> Result<Option<Self>, ConfigError> {
        let any = cfg.proxy_cache || cfg.pool.iter().any(|p| p.proxy_cache == Some(true));
        if !any {
            return Ok(None);
        }
        let valid = cfg
            .proxy_cache_valid
            .iter()
            .enumerate()
            .map(|(i, e)| {
                parse_valid(e)
                    .map_err(|m| ConfigError::new(format!("balancer.proxy_cache_valid[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut stale = Stale::default();
        for (i, e) in cfg.proxy_cache_use_stale.iter().enumerate() {
            match e.as_str() {
                "error" => stale.error = true,
                "timeout" => stale.timeout = true,
                "updating" => stale.updating = true,
                "http_500" => stale.status[0] = true,
                "http_502" => stale.status[2] = true,
                "http_503" => stale.status[3] = true,
                "http_504" => stale.status[4] = true,
                "off" => {}
                other => {
                    return Err(ConfigError::new(
                        format!("balancer.proxy_cache_use_stale[{i}]"),
                        format!(
                            "{other:?} is not one of error, timeout, updating, http_500, \
                             http_502, http_503, http_504, off"
                        ),
                    ))
                }
            }
        }
        let mut ignore = Ignored::default();
        for (i, name) in cfg.proxy_ignore_headers.iter().enumerate() {
            let flag = match name.to_ascii_lowercase().as_str() {
                "cache-control" => &mut ignore.cache_control,
                "expires" => &mut ignore.expires,
                "x-accel-expires" => &mut ignore.accel,
                "vary" => &mut ignore.vary,
                _ => {
                    return Err(ConfigError::new(
                        format!("balancer.proxy_ignore_headers[{i}]"),
                        format!(
                            "{name:?} is not one of Cache-Control, Expires, X-Accel-Expires, \
                             Vary (an answer with Set-Cookie is never kept)"
                        ),
                    ))
                }
            };
            *flag = true;
        }
        if cfg.proxy_cache_max_entry_size == 0
            || cfg.proxy_cache_max_entry_size > cfg.proxy_cache_max_size
        {
            return Err(ConfigError::new(
                "balancer.proxy_cache_max_entry_size",
                "must be greater than 0 and at most proxy_cache_max_size",
            ));
        }
        if cfg.proxy_cache_min_uses == 0 {
            return Err(ConfigError::new(
                "balancer.proxy_cache_min_uses",
                "must be at least 1 (1: the first answer is kept)",
            ));
        }
        if cfg.proxy_cache_background_update && !stale.updating {
            return Err(ConfigError::new(
                "balancer.proxy_cache_background_update",
                "needs \"updating\" in proxy_cache_use_stale (the expired copy answers while \
                 it is refreshed)",
            ));
        }
        let status_header = match cfg.proxy_cache_status_header.as_str() {
            "" => None,
            name if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => Some(name.to_owned()),
            name => {
                return Err(ConfigError::new(
                    "balancer.proxy_cache_status_header",
                    format!("{name:?} is not a header name"),
                ))
            }
        };
        Ok(Some(Self {
            max_size: cfg.proxy_cache_max_size,
            max_entry: cfg.proxy_cache_max_entry_size,
            valid,
            stale,
            lock: cfg.proxy_cache_lock,
            lock_timeout: cfg.proxy_cache_lock_timeout,
            revalidate: cfg.proxy_cache_revalidate,
            convert_head: cfg.proxy_cache_convert_head,
            background_update: cfg.proxy_cache_background_update,
            min_uses: cfg.proxy_cache_min_uses,
            inactive: cfg.proxy_cache_inactive,
            session: cfg.proxy_cache_session,
            ignore,
            purge_allow: crate::config::parse_each(
                &cfg.proxy_cache_purge_allow,
                crate::netmask::Net::parse,
            )
            .map_err(|(i, m)| {
                ConfigError::new(format!("balancer.proxy_cache_purge_allow[{i}]"), m)
            })?,
            key: (!cfg.proxy_cache_key.trim().is_empty())
                .then(|| HashKey::parse(&cfg.proxy_cache_key)),
            bypass: cfg
                .proxy_cache_bypass
                .iter()
                .map(|t| HashKey::parse(t))
                .collect(),
            no_store: cfg
                .proxy_no_cache
                .iter()
                .map(|t| HashKey::parse(t))
                .collect(),
            status_header,
            store: match prev {
                Some(p) => {
                    p.store.shrink_to(cfg.proxy_cache_max_size);
                    p.store.clone()
                }
                None => Arc::new(Store::default()),
            },
        }))
    }

    /// Whether a request may use the cache (its pool caching): `true` with its key written
    /// into `req.key` and whether it may read (`proxy_cache_bypass`) and keep
    /// (`proxy_no_cache`) in `req`; `false` for a request that bypasses it.
    pub fn admits(&self, v: &View<'_>, sticky_cookie: &str, req: &mut CacheReq) -> bool {
        if !(v.method == "GET" || v.method == "HEAD")
            || v.header("authorization").is_some()
            // Preconditions the kept copy does not answer.
            || v.header("if-match").is_some()
            || v.header("if-unmodified-since").is_some()
            // A WebSocket handshake is a GET too, and must reach the upstream.
            || v.header("upgrade").is_some()
        {
            return false;
        }
        // Answered from a fresh copy, else passed on as it came (see the module's notes).
        req.range = v.header("range").is_some();
        if (req.range && v.method == "HEAD") || (v.header("if-range").is_some() && !req.range) {
            return false;
        }
        if !self.session
            && !sticky_cookie.is_empty()
            && (crate::sticky::cookie_value(v.cookies(), sticky_cookie).is_some()
                || crate::sticky::url_route(v.path(), sticky_cookie).is_some())
        {
            return false;
        }
        let applies = |conditions: &[HashKey]| {
            let mut scratch = Vec::new();
            conditions.iter().any(|t| {
                t.eval(v, v.client, &mut scratch);
                !scratch.is_empty() && scratch != b"0"
            })
        };
        req.read = !applies(&self.bypass);
        req.store = !applies(&self.no_store);
        self.key_of(v, &mut req.key);
        true
    }

    /// The cache key of request `v` into `key`.
    pub fn key_of(&self, v: &View<'_>, key: &mut Vec<u8>) {
        key.clear();
        match &self.key {
            Some(t) => {
                // Marked apart from the built-in keys, which start with `h` or `s`.
                key.push(b'k');
                let mut scratch = Vec::new();
                t.eval(v, v.client, &mut scratch);
                key.extend_from_slice(&scratch);
            }
            None => {
                key.push(if v.https { b's' } else { b'h' });
                if let Some(host) = v.header("host").and_then(crate::redirect::host_name) {
                    key.extend(host.iter().map(u8::to_ascii_lowercase));
                }
                key.push(b' ');
                key.extend_from_slice(v.path_and_query.as_bytes());
            }
        }
    }

    /// For how long an upstream answer with `status` and raw `head` may be kept, and the
    /// request headers it varies on; `None`: not kept.
    pub fn storable(&self, status: u16, head: &[u8]) -> Option<(Duration, Vec<String>)> {
        if status == 206 || status == 304 || status < 200 {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut parsed = httparse::Response::new(&mut headers);
        parsed.parse(head).ok()?;
        let mut vary = Vec::new();
        let (mut accel, mut control, mut expires) = (None, None, None);
        for h in parsed.headers.iter() {
            let name = h.name;
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            let ignored = (self.ignore.vary && is("vary"))
                || (self.ignore.accel && is("x-accel-expires"))
                || (self.ignore.cache_control && is("cache-control"))
                || (self.ignore.expires && is("expires"));
            if ignored {
                continue;
            }
            if name.eq_ignore_ascii_case("set-cookie") {
                return None;
            } else if name.eq_ignore_ascii_case("vary") {
                for v in std::str::from_utf8(h.value).ok()?.split(',') {
                    let v = v.trim().to_ascii_lowercase();
                    if v == "*" {
                        return None;
                    }
                    if !v.is_empty() && !vary.contains(&v) {
                        vary.push(v);
                    }
                }
            } else if name.eq_ignore_ascii_case("x-accel-expires") {
                accel = Some(h.value);
            } else if name.eq_ignore_ascii_case("cache-control") {
                let value = std::str::from_utf8(h.value).ok()?;
                for directive in value.split(',') {
                    let directive = directive.trim().to_ascii_lowercase();
                    let (word, arg) = directive
                        .split_once('=')
                        .map_or((directive.as_str(), None), |(w, a)| {
                            (w, Some(a.trim_matches('"')))
                        });
                    match (word, arg) {
                        ("no-store" | "no-cache" | "private", _) => return None,
                        ("s-maxage", Some(n)) => control = Some((true, n.parse::<u64>().ok()?)),
                        ("max-age", Some(n)) if !matches!(control, Some((true, _))) => {
                            control = Some((false, n.parse::<u64>().ok()?))
                        }
                        _ => {}
                    }
                }
            } else if name.eq_ignore_ascii_case("expires") {
                expires = Some(h.value);
            }
        }
        let ttl = if let Some(v) = accel {
            let v = std::str::from_utf8(v).ok()?.trim();
            match v.strip_prefix('@') {
                Some(at) => {
                    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at.parse().ok()?);
                    at.duration_since(SystemTime::now()).ok()?
                }
                None => Duration::from_secs(v.parse().ok()?),
            }
        } else if let Some((_, secs)) = control {
            Duration::from_secs(secs)
        } else if let Some(v) = expires {
            // An invalid date means "already expired" (RFC 9111).
            let at = httpdate::parse_http_date(std::str::from_utf8(v).ok()?.trim()).ok()?;
            at.duration_since(SystemTime::now()).ok()?
        } else {
            self.valid
                .iter()
                .find(|(s, _)| match s {
                    Statuses::Any => true,
                    Statuses::List(l) => l.contains(&status),
                })
                .map(|(_, t)| *t)?
        };
        (!ttl.is_zero()).then_some((ttl, vary))
    }

    /// How long after it expires an answer with raw head `head` may still answer while it is
    /// refreshed, and when the upstreams fail: `Cache-Control` `stale-while-revalidate` and
    /// `stale-if-error` (RFC 5861, as nginx reads them; not with `proxy_ignore_headers
    /// Cache-Control`).
    pub fn stale_extensions(&self, head: &[u8]) -> (Duration, Duration) {
        let (mut swr, mut sie) = (Duration::ZERO, Duration::ZERO);
        if self.ignore.cache_control {
            return (swr, sie);
        }
        for line in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            if !line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"cache-control")
            {
                continue;
            }
            let Ok(value) = std::str::from_utf8(&line[colon + 1..]) else {
                continue;
            };
            for directive in value.split(',') {
                let Some((word, arg)) = directive.trim().split_once('=') else {
                    continue;
                };
                let Ok(secs) = arg.trim().trim_matches('"').parse::<u64>() else {
                    continue;
                };
                let slot = match word.trim().to_ascii_lowercase().as_str() {
                    "stale-while-revalidate" => &mut swr,
                    "stale-if-error" => &mut sie,
                    _ => continue,
                };
                *slot = Duration::from_secs(secs.min(10 * 365 * 86_400));
            }
        }
        (swr, sie)
    }

    /// The entry for `key` that fits the request head `head`.
    pub fn lookup(&self, key: &[u8], head: &[u8]) -> Found {
        self.store.lookup(key, head, self.inactive)
    }

    /// See [`Store::used_enough`].
    pub fn used_enough(&self, key: &[u8]) -> bool {
        self.store.used_enough(key, self.min_uses, self.inactive)
    }

    /// Keeps an answer; returns it as kept (`None`: it does not fit).
    pub fn insert(&self, key: &[u8], entry: Entry) -> Option<Arc<Entry>> {
        self.store.insert(key, entry, self.max_size)
    }

    /// The copy `old` after its upstream `upstream` answered a conditional request for it with
    /// 304 (raw head `answer`): its headers updated from the 304's (RFC 9111 section 4.3.4),
    /// fresh for as long as they now say, and kept again under `key` for request head `req`.
    /// When the updated headers forbid keeping it, the updated copy answers this request only.
    pub fn refresh(
        &self,
        key: &[u8],
        old: &Entry,
        answer: &[u8],
        upstream: &str,
        req: &[u8],
    ) -> Arc<Entry> {
        let old_head = old.head();
        // (lower-case name, start, end) of each header line, its line end included.
        let fields = |head: &[u8]| -> Vec<(Vec<u8>, usize, usize)> {
            header_lines(head)
                .filter_map(|(start, end)| {
                    let line = &head[start..end];
                    let colon = line.iter().position(|&b| b == b':')?;
                    Some((line[..colon].trim_ascii().to_ascii_lowercase(), start, end))
                })
                .collect()
        };
        // Fields of the 304 that describe the message, not the stored representation.
        const FRAMING: [&[u8]; 8] = [
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"trailer",
            b"upgrade",
            b"content-encoding",
        ];
        let new_fields: Vec<_> = fields(answer)
            .into_iter()
            .filter(|(n, _, _)| !FRAMING.contains(&n.as_slice()))
            .collect();
        let first_line = old_head
            .iter()
            .position(|&b| b == b'\n')
            .map_or(old_head.len(), |p| p + 1);
        let mut raw = Vec::with_capacity(old.raw.len() + answer.len());
        raw.extend_from_slice(&old_head[..first_line]);
        for (name, start, end) in fields(old_head) {
            if !new_fields.iter().any(|(n, _, _)| *n == name) {
                raw.extend_from_slice(&old_head[start..end]);
            }
        }
        for (_, start, end) in &new_fields {
            raw.extend_from_slice(&answer[*start..*end]);
        }
        raw.extend_from_slice(b"\r\n");
        let head_len = raw.len();
        let kept = self.storable(old.status, &raw);
        raw.extend_from_slice(&old.raw[old.head_len..]);
        self.store.stats.revalidated.fetch_add(1, Relaxed);
        match kept {
            Some((ttl, vary)) => {
                let ext = self.stale_extensions(&raw[..head_len]);
                let entry = Entry::new(raw.into(), head_len, upstream, ttl, vary, req)
                    .with_stale_extensions(ext);
                let entry = Arc::new(entry);
                self.store.insert_arc(key, entry.clone(), self.max_size);
                entry
            }
            None => Arc::new(Entry::new(
                raw.into(),
                head_len,
                upstream,
                Duration::ZERO,
                Vec::new(),
                req,
            )),
        }
    }
}

/// The first line of [`CacheReq::cond`].
const PLACEHOLDER: &[u8] = b"-\r\n";

/// Moves the `If-None-Match` and `If-Modified-Since` lines of request head `head` (its lines
/// ending in CRLF) into `out`, after a placeholder first line (so `out` reads as a head for
/// [`Entry::not_modified`], also when there were none). The upstream then sends the whole
/// answer, to be kept, and the client's conditionals are answered from the copy.
pub(crate) fn take_conditionals(head: &mut Vec<u8>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(PLACEHOLDER);
    let lines: Vec<(usize, usize)> = header_lines(head).collect();
    let Some(&(first, _)) = lines.first() else {
        return;
    };
    let mut kept = first;
    for (start, end) in lines {
        let line = &head[start..end];
        let name = line
            .split(|&b| b == b':')
            .next()
            .unwrap_or(line)
            .trim_ascii();
        if name.eq_ignore_ascii_case(b"if-none-match")
            || name.eq_ignore_ascii_case(b"if-modified-since")
        {
            out.extend_from_slice(&head[start..end]);
        } else {
            head.copy_within(start..end, kept);
            kept += end - start;
        }
    }
    head.truncate(kept);
}

/// The (start, end) of each line of `head` after its first, the line end included.
fn header_lines(head: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = head
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |p| p + 1);
    std::iter::from_fn(move || {
        if i >= head.len() {
            return None;
        }
        let start = i;
        i = head[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |p| i + p + 1);
        Some((start, i))
    })
}

/// `"200 302 10m"`, `"404 1m"`, `"any 1m"`, or a time alone (for 200, 301 and 302).
fn parse_valid(entry: &str) -> Result<(Statuses, Duration), String> {
    let words: Vec<&str> = entry.split_ascii_whitespace().collect();
    let Some((time, codes)) = words.split_last() else {
        return Err("empty; e.g. \"200 302 10m\"".into());
    };
    let time = humantime::parse_duration(time)
        .map_err(|e| format!("{time:?} is not a duration ({e}); e.g. \"200 302 10m\""))?;
    let statuses = if codes.is_empty() {
        Statuses::List(vec![200, 301, 302])
    } else if codes == ["any"] {
        Statuses::Any
    } else {
        let mut list = Vec::new();
        for c in codes {
            match c.parse::<u16>() {
                Ok(s) if (200..=599).contains(&s) => list.push(s),
                _ => {
                    return Err(format!(
                        "{c:?} is not a status from 200 to 599, nor \"any\""
                    ))
                }
            }
        }
        Statuses::List(list)
    };
    Ok((statuses, time))
}

/// One kept answer.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The upstream's head and body as they came.
    pub raw: Bytes,
    /// Where the head ends in `raw`.
    head_len: usize,
    /// Its status.
    status: u16,
    /// The `address` of the upstream that answered.
    pub upstream: String,
    fresh_until: Instant,
    /// Until when it may answer while it is refreshed, and when the upstreams fail, whatever
    /// `proxy_cache_use_stale` says (`stale-while-revalidate`, `stale-if-error`).
    stale_while_until: Instant,
    stale_if_error_until: Instant,
    /// The request headers it varies on, with the values it was stored for.
    vary: Vec<(String, Option<Vec<u8>>)>,
    /// `now_millis()` of its last use.
    used: AtomicU64,
    /// Used since the clock hand last passed it.
    referenced: AtomicBool,
    /// Replaced or dropped: no longer in the map, still counted until the hand passes.
    dead: AtomicBool,
    size: u64,
}

impl Entry {
    /// An answer (`raw`, its head the first `head_len` bytes, from `upstream`) fresh for `ttl`,
    /// for a request with head `head`.
    pub fn new(
        raw: Bytes,
        head_len: usize,
        upstream: &str,
        ttl: Duration,
        vary: Vec<String>,
        head: &[u8],
    ) -> Self {
        let vary: Vec<_> = vary
            .into_iter()
            .map(|name| {
                let value = request_header(head, &name).map(<[u8]>::to_vec);
                (name, value)
            })
            .collect();
        let size = raw.len() as u64
            + upstream.len() as u64
            + vary
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>() as u64
            + 160;
        let status = raw
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        Self {
            head_len: head_len.min(raw.len()),
            status,
            raw,
            upstream: upstream.to_owned(),
            fresh_until: Instant::now() + ttl,
            stale_while_until: Instant::now(),
            stale_if_error_until: Instant::now(),
            vary,
            used: AtomicU64::new(crate::upstream::now_millis()),
            referenced: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            size,
        }
    }

    /// Lets it answer for `swr` after it expires while it is refreshed, and for `sie` when the
    /// upstreams fail (see [`Policy::stale_extensions`]).
    pub fn with_stale_extensions(mut self, (swr, sie): (Duration, Duration)) -> Self {
        self.stale_while_until = self.fresh_until + swr;
        self.stale_if_error_until = self.fresh_until + sie;
        self
    }

    /// Whether `stale-while-revalidate` lets it answer now while it is refreshed.
    pub fn may_answer_while_updating(&self) -> bool {
        Instant::now() < self.stale_while_until
    }

    /// Whether `stale-if-error` lets it answer now for a failure or a 5xx.
    pub fn may_answer_for_error(&self) -> bool {
        Instant::now() < self.stale_if_error_until
    }

    /// The kept head.
    pub fn head(&self) -> &[u8] {
        &self.raw[..self.head_len]
    }

    /// Bytes of the body as kept (in its framing).
    pub fn body_len(&self) -> usize {
        self.raw.len() - self.head_len
    }

    /// Puts `If-None-Match` with its `ETag` and `If-Modified-Since` with its `Last-Modified`
    /// into request head `head`; false when it has neither (it cannot be revalidated).
    pub fn put_validators(&self, head: &mut Vec<u8>) -> bool {
        let own = self.head();
        let mut any = false;
        for (field, condition) in [
            ("etag", &b"If-None-Match"[..]),
            ("last-modified", b"If-Modified-Since"),
        ] {
            if let Some(v) = request_header(own, field).filter(|v| !v.is_empty()) {
                crate::headers::put(head, condition, v);
                any = true;
            }
        }
        any
    }

    /// For a `GET` with one byte `Range` (request head `req`; `If-Range` holding, if sent): the
    /// raw 206 answer with that part of this copy, or the 416 when the copy has none of it.
    /// `None`: the whole copy answers (no range or several, `If-Range` not holding, a copy
    /// that is not a 200 or was sent chunked).
    pub fn ranged(&self, req: &[u8]) -> Option<Vec<u8>> {
        use crate::files::{parse_range, Span};
        let range = request_header(req, "range")?;
        let head = self.head();
        if self.status != 200 || request_header(head, "transfer-encoding").is_some() {
            return None;
        }
        let len = self.body_len() as u64;
        let declared = request_header(head, "content-length")?;
        if std::str::from_utf8(declared).ok()?.parse::<u64>().ok()? != len {
            return None;
        }
        if let Some(cond) = request_header(req, "if-range") {
            let holds = if cond.starts_with(b"\"") {
                // A strong comparison: a weak tag never matches.
                request_header(head, "etag") == Some(cond)
            } else {
                request_header(head, "last-modified") == Some(cond)
            };
            if !holds {
                return None;
            }
        }
        let keep_field = |line: &[u8]| {
            let name = line
                .split(|&b| b == b':')
                .next()
                .unwrap_or(line)
                .trim_ascii();
            !line.trim_ascii().is_empty() && !name.eq_ignore_ascii_case(b"content-length")
        };
        let fields = head
            .split(|&b| b == b'\n')
            .skip(1)
            .filter(|l| keep_field(l));
        let mut out = Vec::with_capacity(head.len() + 64);
        match parse_range(range, len) {
            Span::Whole => return None,
            Span::Part(start, end) => {
                out.extend_from_slice(b"HTTP/1.1 206 Partial Content\r\n");
                for line in fields {
                    out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                    out.extend_from_slice(b"\r\n");
                }
                let part = &self.raw[self.head_len..][start as usize..=end as usize];
                out.extend_from_slice(
                    format!(
                        "Content-Range: bytes {start}-{end}/{len}\r\nContent-Length: {}\r\n\r\n",
                        part.len()
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(part);
            }
            Span::Unsatisfiable => {
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                         Content-Length: 0\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        }
        Some(out)
    }

    /// For a request (head `req`) whose client already has this answer (`If-None-Match`
    /// naming its `ETag`, weakly compared, or else `If-Modified-Since` no older than its
    /// `Last-Modified`): the head of a 304 answer made of it (its headers without the body's
    /// framing). `None`: the whole answer is due (also for any status but 200).
    pub fn not_modified(&self, req: &[u8]) -> Option<Vec<u8>> {
        // Only what would be a 200 becomes a 304 (as nginx's not_modified filter).
        if self.status != 200 {
            return None;
        }
        let head = &self.raw[..self.head_len];
        let fresh_for_client = if let Some(list) = request_header(req, "if-none-match") {
            // The weak comparison, as for files: a `W/` on either side does not count.
            let etag = request_header(head, "etag")?;
            let etag = etag.strip_prefix(b"W/").unwrap_or(etag);
            crate::files::etag_matches(list, etag, true)
        } else {
            let since = crate::files::http_date(request_header(req, "if-modified-since")?)?;
            let modified = crate::files::http_date(request_header(head, "last-modified")?)?;
            modified <= since
        };
        if !fresh_for_client {
            return None;
        }
        let mut out = b"HTTP/1.1 304 Not Modified\r\n".to_vec();
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let name = line.split(|&b| b == b':').next().unwrap_or(line);
            if line.is_empty()
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Some(out)
    }

    fn fits(&self, head: &[u8]) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request_header(head, name) == value.as_deref())
    }

    fn same_variant(&self, other: &Entry) -> bool {
        self.vary == other.vary
    }
}

/// The value of header `name` in a request head (`Name: value` lines), if present.
fn request_header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// What a look-up found.
pub(crate) enum Found {
    Fresh(Arc<Entry>),
    /// Expired, kept for `proxy_cache_use_stale` and while it is being refreshed.
    Stale(Arc<Entry>),
    /// A recent answer for this key could not be kept: go to the upstreams, fill nothing
    /// (with the expired copy, if there is one, for `proxy_cache_use_stale`).
    Pass(Option<Arc<Entry>>),
    None,
}

/// Counters for the status page.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub expired: AtomicU64,
    pub stale: AtomicU64,
    pub updating: AtomicU64,
    pub revalidated: AtomicU64,
    pub stored: AtomicU64,
    pub evicted: AtomicU64,
}

/// The entries of all workers.
#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
    pub stats: Stats,
}

#[derive(Debug, Default)]
struct Inner {
    /// Variants by key.
    map: HashMap<Box<[u8]>, Vec<Arc<Entry>>>,
    /// Every entry still counted, in the order the clock hand visits them.
    clock: VecDeque<(Box<[u8]>, Arc<Entry>)>,
    bytes: u64,
    /// Keys being filled, and how their waiters are woken.
    filling: HashMap<Box<[u8]>, Arc<Notify>>,
    /// Keys whose answer could not be kept, until when.
    pass: HashMap<Box<[u8]>, Instant>,
    /// Requests for keys not kept yet (`proxy_cache_min_uses`), and when the last came.
    uses: HashMap<Box<[u8]>, (u32, Instant)>,
}

impl Store {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent enough data: go on with it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lookup(&self, key: &[u8], head: &[u8], inactive: Duration) -> Found {
        let now = crate::upstream::now_millis();
        let mut inner = self.inner();
        let pass = match inner.pass.get(key) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                inner.pass.remove(key);
                false
            }
            None => false,
        };
        let none = if pass { Found::Pass(None) } else { Found::None };
        let Some(variants) = inner.map.get_mut(key) else {
            return none;
        };
        let Some(i) = variants.iter().position(|e| e.fits(head)) else {
            return none;
        };
        let entry = &variants[i];
        let idle = now.saturating_sub(entry.used.load(Relaxed));
        if u128::from(idle) > inactive.as_millis() {
            entry.dead.store(true, Relaxed);
            variants.swap_remove(i);
            if variants.is_empty() {
                inner.map.remove(key);
            }
            return none;
        }
        entry.used.store(now, Relaxed);
        entry.referenced.store(true, Relaxed);
        if Instant::now() < entry.fresh_until {
            Found::Fresh(entry.clone())
        } else if pass {
            // Still the copy for `proxy_cache_use_stale`.
            Found::Pass(Some(entry.clone()))
        } else {
            Found::Stale(entry.clone())
        }
    }

    fn insert(&self, key: &[u8], entry: Entry, max_size: u64) -> Option<Arc<Entry>> {
        let entry = Arc::new(entry);
        self.insert_arc(key, entry.clone(), max_size)
            .then_some(entry)
    }

    /// Keeps `entry` (replacing its variant); false when it does not fit.
    fn insert_arc(&self, key: &[u8], entry: Arc<Entry>, max_size: u64) -> bool {
        let mut inner = self.inner();
        inner.pass.remove(key);
        self.make_room(&mut inner, entry.size, max_size);
        if inner.bytes + entry.size > max_size {
            return false;
        }
        let variants = inner.map.entry(key.into()).or_default();
        if let Some(i) = variants.iter().position(|e| e.same_variant(&entry)) {
            variants[i].dead.store(true, Relaxed);
            variants.swap_remove(i);
        }
        variants.push(entry.clone());
        inner.bytes += entry.size;
        inner.clock.push_back((key.into(), entry));
        self.stats.stored.fetch_add(1, Relaxed);
        true
    }

    /// Evicts until everything kept fits in `max_size` (a reload made it smaller).
    pub fn shrink_to(&self, max_size: u64) {
        let mut inner = self.inner();
        self.make_room(&mut inner, 0, max_size);
    }

    /// Evicts until `need` more bytes fit within `max_size`: the hand goes round, sparing what
    /// was used since it last passed.
    fn make_room(&self, inner: &mut Inner, need: u64, max_size: u64) {
        let mut budget = inner.clock.len() * 2 + 1;
        while inner.bytes + need > max_size && budget > 0 {
            budget -= 1;
            let Some((k, old)) = inner.clock.pop_front() else {
                break;
            };
            if !old.dead.load(Relaxed) && old.referenced.swap(false, Relaxed) {
                inner.clock.push_back((k, old));
                continue;
            }
            inner.bytes -= old.size;
            if !old.dead.swap(true, Relaxed) {
                self.stats.evicted.fetch_add(1, Relaxed);
                if let Some(variants) = inner.map.get_mut(&k) {
                    variants.retain(|e| !Arc::ptr_eq(e, &old));
                    if variants.is_empty() {
                        inner.map.remove(&k);
                    }
                }
            }
        }
    }

    /// Removes the entries for `key` (every key that starts with it if `prefix`); returns how
    /// many.
    pub fn purge(&self, key: &[u8], prefix: bool) -> usize {
        let mut inner = self.inner();
        let keys: Vec<Box<[u8]>> = if prefix {
            inner
                .map
                .keys()
                .filter(|k| k.starts_with(key))
                .cloned()
                .collect()
        } else {
            inner
                .map
                .keys()
                .filter(|k| &k[..] == key)
                .cloned()
                .collect()
        };
        let mut n = 0;
        for k in keys {
            if let Some(variants) = inner.map.remove(&k) {
                for e in &variants {
                    e.dead.store(true, Relaxed);
                }
                n += variants.len();
            }
            inner.pass.remove(&k);
        }
        n
    }

    /// Counts a request for `key`, which has no copy: whether its answer may be kept now, its
    /// requests within `inactive` of each other having reached `min_uses`.
    pub fn used_enough(&self, key: &[u8], min_uses: u32, inactive: Duration) -> bool {
        if min_uses <= 1 {
            return true;
        }
        let now = Instant::now();
        let mut inner = self.inner();
        if inner.uses.len() >= MAX_COUNTED && !inner.uses.contains_key(key) {
            inner.uses.clear();
        }
        let n = match inner.uses.get_mut(key) {
            Some((n, last)) if now.duration_since(*last) <= inactive => {
                *n += 1;
                *last = now;
                *n
            }
            Some(slot) => {
                *slot = (1, now);
                1
            }
            None => {
                inner.uses.insert(key.into(), (1, now));
                1
            }
        };
        if n >= min_uses {
            inner.uses.remove(key);
            return true;
        }
        false
    }

    /// Remembers that the answer for `key` could not be kept.
    pub fn pass(&self, key: &[u8]) {
        let mut inner = self.inner();
        if inner.pass.len() >= MAX_PASS {
            inner.pass.clear();
        }
        inner.pass.insert(key.into(), Instant::now() + PASS_FOR);
    }

    /// Becomes the one request that fills `key`, unless another one already is.
    pub fn try_fill(self: &Arc<Self>, key: &[u8]) -> Option<Filling> {
        let mut inner = self.inner();
        if inner.filling.contains_key(key) {
            return None;
        }
        let notify = Arc::new(Notify::new());
        inner.filling.insert(key.into(), notify.clone());
        Some(Filling {
            store: self.clone(),
            key: key.into(),
            notify,
        })
    }

    /// Whether a request is filling `key`.
    pub fn is_filling(&self, key: &[u8]) -> bool {
        self.inner().filling.contains_key(key)
    }

    /// Waits, at most `limit`, for the request filling `key` to finish (at once if none is).
    pub async fn wait_fill(&self, key: &[u8], limit: Duration) {
        let Some(notify) = self.inner().filling.get(key).cloned() else {
            return;
        };
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before looking again, so the filler's wake-up cannot be missed.
        notified.as_mut().enable();
        let still = self
            .inner()
            .filling
            .get(key)
            .is_some_and(|n| Arc::ptr_eq(n, &notify));
        if still {
            let _ = tokio::time::timeout(limit, notified).await;
        }
    }

    /// Entries and bytes held.
    pub fn size(&self) -> (usize, u64) {
        let inner = self.inner();
        (inner.map.values().map(Vec::len).sum(), inner.bytes)
    }
}

/// The right to fill a key; dropping it lets the waiters go.
pub(crate) struct Filling {
    store: Arc<Store>,
    key: Box<[u8]>,
    notify: Arc<Notify>,
}

impl Drop for Filling {
    fn drop(&mut self) {
        let mut inner = self.store.inner();
        if inner
            .filling
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            inner.filling.remove(&self.key);
        }
        drop(inner);
        self.notify.notify_waiters();
    }
}

/// A request's dealings with the cache.
#[derive(Default)]
pub(crate) struct CacheReq {
    /// The request may use the cache (its pool caches, and it is not bypassed).
    pub on: bool,
    /// A `PURGE` (with `proxy_cache_purge_allow`): `key` is what to remove; `purge_prefix`:
    /// every key starting with it.
    pub purge: bool,
    pub purge_prefix: bool,
    /// Its pool caches, but this request bypasses it.
    pub bypass: bool,
    /// It may be answered from the cache (no `proxy_cache_bypass` condition holds).
    pub read: bool,
    /// Its answer may be kept (no `proxy_no_cache` condition holds).
    pub store: bool,
    pub key: Vec<u8>,
    /// The answer may be kept (set for the attempts).
    pub fill: bool,
    /// The upstream's raw response head, captured for keeping.
    pub head: Vec<u8>,
    /// An expired copy to answer with if the upstreams fail.
    pub stale: Option<Arc<Entry>>,
    /// This request fills its key: the waiters go once the answer is kept (or cannot be).
    pub filling: Option<Filling>,
    /// What the status header says for a live answer: `MISS`, `EXPIRED`, `BYPASS`.
    pub status: &'static str,
    /// The client's conditionals, taken out of the upstream request of a fill (see
    /// [`take_conditionals`]); empty: the request head still has them.
    pub cond: Vec<u8>,
    /// The expired copy whose validators went to the upstream (`proxy_cache_revalidate`).
    pub revalidating: Option<Arc<Entry>>,
    /// A `HEAD` sent to the upstream as a `GET` (`proxy_cache_convert_head`).
    pub converted: bool,
    /// A `GET` with `Range`: answered from a fresh copy, else passed on; never fills.
    pub range: bool,
}

impl CacheReq {
    /// A fill took conditionals out of the client's request.
    pub fn asked_conditionally(&self) -> bool {
        self.cond.len() > PLACEHOLDER.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(valid: &[&str]) -> Policy {
        let cfg = BalancerConfig {
            proxy_cache: true,
            proxy_cache_valid: valid.iter().map(|s| s.to_string()).collect(),
            ..BalancerConfig::default()
        };
        Policy::of(&cfg, None).unwrap().unwrap()
    }

    /// A copy of `raw` (its head the first `head_len` bytes) that is already expired.
    fn expired(raw: Vec<u8>, head_len: usize) -> Entry {
        Entry::new(raw.into(), head_len, "u", Duration::ZERO, Vec::new(), b"")
    }

    fn head(lines: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\n{lines}\r\n").into_bytes()
    }

    #[test]
    fn freshness_comes_from_the_answer_then_from_proxy_cache_valid() {
        let p = policy(&["200 302 10m", "404 1m"]);
        let ttl = |status, lines: &str| p.storable(status, &head(lines)).map(|(t, _)| t.as_secs());
        assert_eq!(ttl(200, ""), Some(600));
        assert_eq!(ttl(404, ""), Some(60));
        assert_eq!(ttl(500, ""), None);
        assert_eq!(ttl(200, "Cache-Control: max-age=30\r\n"), Some(30));
        assert_eq!(
            ttl(200, "Cache-Control: public, s-maxage=5, max-age=30\r\n"),
            Some(5)
        );
        assert_eq!(
            ttl(200, "Cache-Control: max-age=30, s-maxage=5\r\n"),
            Some(5)
        );
        assert_eq!(ttl(500, "Cache-Control: max-age=30\r\n"), Some(30));
        assert_eq!(
            ttl(200, "X-Accel-Expires: 7\r\nCache-Control: max-age=30\r\n"),
            Some(7)
        );
        assert_eq!(ttl(200, "X-Accel-Expires: 0\r\n"), None);
        assert_eq!(ttl(200, "Cache-Control: max-age=0\r\n"), None);
        for never in [
            "Cache-Control: no-store\r\n",
            "Cache-Control: private, max-age=60\r\n",
            "Cache-Control: no-cache\r\n",
            "Set-Cookie: a=b\r\n",
            "Vary: *\r\n",
            "Expires: 0\r\n",
            "Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
        ] {
            assert_eq!(ttl(200, never), None, "{never}");
        }
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let t = ttl(200, &format!("Expires: {later}\r\n")).unwrap();
        assert!((118..=120).contains(&t), "{t}");
        assert_eq!(ttl(206, "Cache-Control: max-age=30\r\n"), None);
        assert_eq!(ttl(304, "Cache-Control: max-age=30\r\n"), None);
        // Without proxy_cache_valid, only answers that say so are kept.
        let bare = policy(&[]);
        assert_eq!(bare.storable(200, &head("")), None);
        let any = policy(&["any 1m"]);
        assert!(any.storable(503, &head("")).is_some());
        assert_eq!(
            policy(&["5m"])
                .storable(301, &head(""))
                .map(|(t, _)| t.as_secs()),
            Some(300)
        );
    }

    #[test]
    fn ignored_headers_leave_the_decision_to_proxy_cache_valid() {
        // What Tomcat sends for a page under a security constraint.
        let tomcat = head(
            "Cache-Control: private\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\nVary: Accept\r\n",
        );
        assert_eq!(policy(&["200 10m"]).storable(200, &tomcat), None);
        let cfg = BalancerConfig {
            proxy_cache: true,
            proxy_cache_valid: vec!["200 10m".into()],
            proxy_ignore_headers: vec!["Cache-Control".into(), "expires".into(), "VARY".into()],
            ..BalancerConfig::default()
        };
        let p = Policy::of(&cfg, None).unwrap().unwrap();
        let (ttl, vary) = p.storable(200, &tomcat).unwrap();
        assert_eq!((ttl.as_secs(), vary.len()), (600, 0));
        // Set-Cookie is never ignored.
        assert_eq!(p.storable(200, &head("Set-Cookie: a=1\r\n")), None);
        let bad = BalancerConfig {
            proxy_ignore_headers: vec!["Expires".into(), "Set-Cookie".into()],
            ..cfg
        };
        assert_eq!(
            Policy::of(&bad, None).unwrap_err().key,
            "balancer.proxy_ignore_headers[1]"
        );
    }

    #[test]
    fn vary_keeps_one_variant_per_request_header_value() {
        let p = policy(&["1m"]);
        let (ttl, vary) = p
            .storable(200, &head("Vary: Accept-Encoding, Accept-Language\r\n"))
            .unwrap();
        assert_eq!(vary, ["accept-encoding", "accept-language"]);
        let gz = b"GET / HTTP/1.1\r\nAccept-Encoding: gzip\r\nHost: x\r\n\r\n";
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        p.insert(
            b"k",
            Entry::new(Bytes::from_static(b"gz"), 0, "u", ttl, vary.clone(), gz),
        );
        assert!(matches!(p.lookup(b"k", gz), Found::Fresh(e) if &e.raw[..] == b"gz"));
        assert!(matches!(p.lookup(b"k", plain), Found::None));
        p.insert(
            b"k",
            Entry::new(Bytes::from_static(b"id"), 0, "u", ttl, vary.clone(), plain),
        );
        assert!(matches!(p.lookup(b"k", plain), Found::Fresh(e) if &e.raw[..] == b"id"));
        assert!(matches!(p.lookup(b"k", gz), Found::Fresh(e) if &e.raw[..] == b"gz"));
        // The same variant again replaces the first.
        p.insert(
            b"k",
            Entry::new(Bytes::from_static(b"g2"), 0, "u", ttl, vary, gz),
        );
        assert!(matches!(p.lookup(b"k", gz), Found::Fresh(e) if &e.raw[..] == b"g2"));
        assert_eq!(p.store.size().0, 2);
    }

    #[test]
    fn a_client_with_the_answer_gets_a_304_made_of_it() {
        let raw =
            "HTTP/1.1 200 OK\r\nETag: W/\"a1\"\r\nLast-Modified: Mon, 07 Dec 2026 10:00:00 GMT\r\n\
                   Content-Length: 4\r\nCache-Control: max-age=60\r\n\r\nbody";
        let e = Entry::new(
            Bytes::from(raw),
            raw.len() - 4,
            "",
            Duration::from_secs(60),
            vec![],
            b"",
        );
        let req = |h: &str| format!("GET / HTTP/1.1\r\n{h}\r\n\r\n").into_bytes();
        let head = e.not_modified(&req("If-None-Match: \"a1\"")).unwrap();
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
        assert!(head.contains("ETag: W/\"a1\"\r\n") && head.contains("Cache-Control: max-age=60"));
        assert!(!head.to_ascii_lowercase().contains("content-length"));
        assert!(head.ends_with("\r\n\r\n") && !head.contains("body"));
        assert!(e.not_modified(&req("If-None-Match: *")).is_some());
        assert!(e.not_modified(&req("If-None-Match: \"b2\"")).is_none());
        // If-None-Match wins over If-Modified-Since.
        assert!(e
            .not_modified(&req(
                "If-None-Match: \"b2\"\r\nIf-Modified-Since: Tue, 08 Dec 2026 10:00:00 GMT"
            ))
            .is_none());
        assert!(e
            .not_modified(&req("If-Modified-Since: Tue, 08 Dec 2026 10:00:00 GMT"))
            .is_some());
        assert!(e
            .not_modified(&req("If-Modified-Since: Mon, 07 Dec 2026 10:00:00 GMT"))
            .is_some());
        assert!(e
            .not_modified(&req("If-Modified-Since: Sun, 06 Dec 2026 10:00:00 GMT"))
            .is_none());
        assert!(e
            .not_modified(&req("If-Modified-Since: yesterday"))
            .is_none());
        assert!(e.not_modified(&req("Accept: */*")).is_none());
    }

    #[test]
    fn memory_stays_bounded_and_recently_used_entries_survive() {
        let cfg = BalancerConfig {
            proxy_cache: true,
            proxy_cache_max_size: 10_000,
            proxy_cache_max_entry_size: 2_000,
            ..BalancerConfig::default()
        };
        let p = Policy::of(&cfg, None).unwrap().unwrap();
        let body = Bytes::from(vec![b'x'; 840]); // 1,000 bytes counted with the overhead
        let ttl = Duration::from_secs(60);
        let h = b"GET / HTTP/1.1\r\n\r\n";
        for i in 0..9u32 {
            p.insert(
                &i.to_be_bytes(),
                Entry::new(body.clone(), 0, "", ttl, vec![], h),
            );
        }
        // Key 0 is used, then ten more come in.
        assert!(matches!(p.lookup(&0u32.to_be_bytes(), h), Found::Fresh(_)));
        for i in 9..19u32 {
            p.insert(
                &i.to_be_bytes(),
                Entry::new(body.clone(), 0, "", ttl, vec![], h),
            );
            assert!(p.store.size().1 <= 10_000);
        }
        assert!(matches!(p.lookup(&0u32.to_be_bytes(), h), Found::Fresh(_)));
        assert!(matches!(p.lookup(&1u32.to_be_bytes(), h), Found::None));
        assert!(matches!(p.lookup(&18u32.to_be_bytes(), h), Found::Fresh(_)));
        assert!(p.store.stats.evicted.load(Relaxed) >= 9);
        // A reload with less memory evicts at once.
        p.store.shrink_to(3_000);
        assert!(p.store.size().1 <= 3_000);
        assert!(p.store.size().0 <= 3);
    }

    #[test]
    fn expired_entries_are_stale_and_inactive_ones_are_dropped() {
        let cfg = BalancerConfig {
            proxy_cache: true,
            proxy_cache_inactive: Duration::from_millis(200),
            ..BalancerConfig::default()
        };
        let p = Policy::of(&cfg, None).unwrap().unwrap();
        let h = b"GET / HTTP/1.1\r\n\r\n";
        p.insert(
            b"a",
            Entry::new(Bytes::new(), 0, "", Duration::from_millis(20), vec![], h),
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(p.lookup(b"a", h), Found::Stale(_)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(p.lookup(b"a", h), Found::None));
        assert_eq!(p.store.size().0, 0);
    }

    /// Bytes that look like heads: pieces of header syntax and random bytes.
    fn garbage(rng: &mut impl rand::Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\n",
            b"Cache-Control: ",
            b"max-age=",
            b"s-maxage=\"",
            b"Vary: ",
            b"ETag: W/",
            b"Expires: ",
            b"X-Accel-Expires: @",
            b"If-None-Match: ",
            b"If-Modified-Since: ",
            b"Last-Modified: ",
            b"Content-Length: ",
            b"\r\n",
            b"\r\n\r\n",
            b":",
            b",",
            b"*",
            b"99999999999999999999",
            b"\xff\xfe",
        ];
        crate::test_support::garbage(rng, PIECES, 24, 0.7)
    }

    #[test]
    fn garbage_heads_never_panic() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = policy(&["any 1m"]);
        for _ in 0..20_000 {
            let head = garbage(&mut rng);
            let req = garbage(&mut rng);
            let _ = p.storable(rng.gen_range(0..700), &head);
            let _ = p.stale_extensions(&head);
            let cut = rng.gen_range(0..=head.len());
            let e = Entry::new(
                Bytes::from(head),
                cut,
                "u",
                Duration::from_secs(1),
                vec!["accept".into()],
                &req,
            );
            let _ = e.not_modified(&req);
            let _ = e.ranged(&req);
            let _ = e.fits(&req);
            let _ = request_header(&req, "vary");
            let mut upstream_req = req.clone();
            let mut cond = Vec::new();
            take_conditionals(&mut upstream_req, &mut cond);
            let _ = e.put_validators(&mut upstream_req);
            let answer = garbage(&mut rng);
            let refreshed = p.refresh(b"k", &e, &answer, "u", &req);
            assert_eq!(refreshed.body_len(), e.body_len());
        }
    }

    #[test]
    fn stale_extensions_are_read_from_cache_control_unless_it_is_ignored() {
        let p = policy(&[]);
        let h = head("Cache-Control: max-age=1, Stale-While-Revalidate=30\r\ncache-control: stale-if-error=\"600\"\r\n");
        assert_eq!(
            p.stale_extensions(&h),
            (Duration::from_secs(30), Duration::from_secs(600))
        );
        let bad = head("Cache-Control: stale-while-revalidate=x, stale-if-error\r\n");
        assert_eq!(p.stale_extensions(&bad), (Duration::ZERO, Duration::ZERO));
        let mut ignoring = policy(&[]);
        ignoring.ignore.cache_control = true;
        assert_eq!(
            ignoring.stale_extensions(&h),
            (Duration::ZERO, Duration::ZERO)
        );
        let e = expired(h.clone(), h.len()).with_stale_extensions(p.stale_extensions(&h));
        assert!(e.may_answer_while_updating() && e.may_answer_for_error());
        let e = expired(h.clone(), h.len());
        assert!(!e.may_answer_while_updating() && !e.may_answer_for_error());
    }

    #[test]
    fn a_fill_takes_the_clients_conditionals_out_of_the_upstream_request() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\nAccept: */*\r\n\
                         if-modified-since : Tue, 01 Dec 2026 10:00:00 GMT\r\n"
            .to_vec();
        let mut cond = Vec::new();
        take_conditionals(&mut head, &mut cond);
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n");
        assert_eq!(
            cond,
            b"-\r\nIf-None-Match: \"x\"\r\nif-modified-since : Tue, 01 Dec 2026 10:00:00 GMT\r\n"
        );
        let req = CacheReq {
            cond,
            ..CacheReq::default()
        };
        assert!(req.asked_conditionally());
        let mut plain = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        let mut cond = Vec::new();
        take_conditionals(&mut plain, &mut cond);
        assert_eq!(plain, b"GET / HTTP/1.1\r\nHost: a\r\n");
        let req = CacheReq {
            cond,
            ..CacheReq::default()
        };
        assert!(!req.asked_conditionally());
    }

    #[test]
    fn a_304_refreshes_the_copy_with_its_headers_and_keeps_the_body() {
        let p = policy(&[]);
        let raw = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"a\"\r\n\
                    Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 3\r\nX-Old: 1\r\n\r\nabc";
        let head_len = raw.len() - 3;
        let req = b"GET / HTTP/1.1\r\n";
        let old = expired(raw.to_vec(), head_len);
        let mut upstream_req = b"GET / HTTP/1.1\r\n".to_vec();
        assert!(old.put_validators(&mut upstream_req));
        assert_eq!(
            upstream_req,
            b"GET / HTTP/1.1\r\nIf-None-Match: \"a\"\r\n\
              If-Modified-Since: Tue, 01 Dec 2026 10:00:00 GMT\r\n"
        );
        let answer =
            b"HTTP/1.1 304 Not Modified\r\ncache-control: max-age=60\r\nContent-Length: 0\r\n\
                       X-New: 2\r\n\r\n";
        let e = p.refresh(b"k", &old, answer, "new", req);
        assert_eq!(
            &e.raw[..],
            b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\nLast-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
              Content-Length: 3\r\nX-Old: 1\r\ncache-control: max-age=60\r\nX-New: 2\r\n\r\nabc"
        );
        assert_eq!(e.upstream, "new");
        assert!(
            matches!(p.lookup(b"k", req), Found::Fresh(_)),
            "kept again, fresh"
        );
        // A 304 that forbids keeping: the refreshed copy answers, the key keeps nothing new.
        let q = policy(&[]);
        let e = q.refresh(
            b"k",
            &old,
            b"HTTP/1.1 304 Not Modified\r\nCache-Control: no-store\r\n\r\n",
            "new",
            req,
        );
        assert_eq!(e.body_len(), 3);
        assert!(matches!(q.lookup(b"k", req), Found::None));
        // A copy without validators cannot be revalidated.
        let bare = expired(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), 19);
        let mut r = b"GET / HTTP/1.1\r\n".to_vec();
        assert!(!bare.put_validators(&mut r));
        // Only a 200 becomes a 304 for a client that has it.
        let not_found = expired(
            b"HTTP/1.1 404 Not Found\r\nETag: \"n\"\r\n\r\n".to_vec(),
            37,
        );
        assert!(not_found
            .not_modified(b"GET / HTTP/1.1\r\nIf-None-Match: \"n\"\r\n")
            .is_none());
    }

    #[test]
    fn bad_cache_keys_are_named() {
        let bad = |f: fn(&mut BalancerConfig)| {
            let mut cfg = BalancerConfig {
                proxy_cache: true,
                ..BalancerConfig::default()
            };
            f(&mut cfg);
            Policy::of(&cfg, None).unwrap_err().key
        };
        assert_eq!(
            bad(|c| c.proxy_cache_valid = vec!["200 10m".into(), "20x 1m".into()]),
            "balancer.proxy_cache_valid[1]"
        );
        assert_eq!(
            bad(|c| c.proxy_cache_valid = vec!["200 soon".into()]),
            "balancer.proxy_cache_valid[0]"
        );
        assert_eq!(
            bad(|c| c.proxy_cache_use_stale = vec!["error".into(), "http_404".into()]),
            "balancer.proxy_cache_use_stale[1]"
        );
        assert_eq!(
            bad(|c| c.proxy_cache_max_entry_size = c.proxy_cache_max_size + 1),
            "balancer.proxy_cache_max_entry_size"
        );
        assert_eq!(
            bad(|c| c.proxy_cache_status_header = "X Cache".into()),
            "balancer.proxy_cache_status_header"
        );
        assert_eq!(
            bad(|c| c.proxy_cache_background_update = true),
            "balancer.proxy_cache_background_update"
        );
    }
}
