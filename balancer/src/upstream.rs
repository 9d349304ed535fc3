//! Runtime state of the upstreams and the snapshot the request path reads.
//!
//! A [`Snapshot`] is built from a validated [`BalancerConfig`] on start and on every reload and is
//! published whole through an `ArcSwap` ([`crate::server::Shared`]). An [`Upstream`] keeps its
//! identity across reloads while its address stays the same, so its in-flight counter (used by
//! `least_conn`, `max_conns`, drain and graceful stop) and its health survive a reload.
//!
//! Health lives in two atomics per upstream with exactly one writer, the health owner
//! ([`crate::health`]): `healthy` (active checks) and `down_until` (passive failures). The request
//! path only reads them, and only increments/decrements `active`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use regex::RegexSet;

use crate::config::{BalancerConfig, ConfigError, Method, NextUpstream, UpstreamConfig};
use crate::hashkey::HashKey;
use crate::selection::{self, Selector};

/// Milliseconds since a process-wide epoch; 0 is never returned so that 0 can mean "not set".
pub(crate) fn now_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One upstream server and its live counters.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The configuration it was built from (reload replaces the whole `Upstream` when it changes).
    pub cfg: UpstreamConfig,
    /// Resolved address connections go to.
    pub addr: SocketAddr,
    /// `Host` value for requests that arrive without one (HTTP/1.0).
    pub authority: HeaderValue,
    /// Requests in flight to this upstream from all workers.
    pub active: Arc<AtomicUsize>,
    /// Result of active health checks (true when checks are off). Written by the health owner.
    pub healthy: Arc<AtomicBool>,
    /// Passive failures: down until this `now_millis()` value (0 = not down). Written by the health owner.
    pub down_until: Arc<AtomicU64>,
    /// When active health checks last found it healthy again (`now_millis()`, 0 = never down).
    /// Written by the health owner; with `down_until`, where `slow_start` counts from.
    pub recovered_at: Arc<AtomicU64>,
    /// Attempts and failed attempts, for the status page (kept across reloads).
    pub counts: Arc<Counts>,
    /// Index of its pool in [`Snapshot::pools`] (0: the default pool).
    pub pool: usize,
    /// How to speak TLS to it (`tls = true`).
    pub tls: Option<crate::upstream_tls::UpTls>,
}

/// An upstream's totals since it was first configured.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Requests sent to it (every attempt, retries included).
    pub attempts: AtomicU64,
    /// Attempts that failed (error, time-out, or a status `proxy_next_upstream` retries).
    pub failures: AtomicU64,
}

impl Upstream {
    /// Whether this upstream may take a request now (ignoring drain, which only affects unbound requests).
    pub fn available(&self, now: &mut LazyNow) -> bool {
        if self.cfg.down || !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.down_until.load(Ordering::Relaxed);
        if until != 0 && now.get() < until {
            return false;
        }
        self.cfg.max_conns == 0 || self.active.load(Ordering::Relaxed) < self.cfg.max_conns as usize
    }

    /// How far through its `slow_start` the upstream is, in (0, 1); `None` when it takes its
    /// whole share (no slow start, never down, or warm). Reads the clock only for an upstream
    /// that came back at some point.
    pub fn warming(&self, now: &mut LazyNow) -> Option<f64> {
        if self.cfg.slow_start.is_zero() {
            return None;
        }
        let since = self
            .recovered_at
            .load(Ordering::Relaxed)
            .max(self.down_until.load(Ordering::Relaxed));
        if since == 0 {
            return None;
        }
        let span = u64::try_from(self.cfg.slow_start.as_millis()).unwrap_or(u64::MAX);
        let into = now.get().checked_sub(since)?;
        (into < span).then(|| (into.max(1) as f64 / span as f64).min(1.0))
    }

    /// Whether the upstream is up (health and `down`) regardless of its connection limit.
    pub fn up(&self, now: &mut LazyNow) -> bool {
        if self.cfg.down || !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || now.get() >= until
    }
}

/// Reads the clock at most once per request, and only if some upstream was marked down.
#[derive(Debug, Default)]
pub(crate) struct LazyNow(u64);

impl LazyNow {
    /// The current `now_millis()`, read on first use.
    pub fn get(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_millis();
        }
        self.0
    }
}

/// A group of upstreams chosen among by one selector (the primaries, or the backups).
pub(crate) struct Group {
    /// Indices into [`Snapshot::upstreams`].
    pub members: Vec<usize>,
    /// Picks a member position for an unbound request.
    pub selector: Box<dyn Selector>,
}

/// The upstreams that one kind of request goes to: the default pool (the upstreams without
/// `pool`) or a `[[balancer.pool]]`.
pub(crate) struct Pool {
    /// Primary upstreams.
    pub primary: Group,
    /// Backup upstreams, used only while no primary is available.
    pub backup: Group,
    /// Key template for `method = "hash"`.
    pub hash_key: Option<HashKey>,
    /// How many upstreams it has (primaries and backups).
    pub len: usize,
    /// `strip_prefix`, if set.
    pub strip_prefix: Option<String>,
    /// Put before the path after `strip_prefix` (`upstream_prefix`).
    pub upstream_prefix: Option<String>,
    /// The pool's `client_max_body_size` (the balancer's unless it sets one).
    pub max_body: u64,
    /// Its answers are cached (`proxy_cache`, the pool's own or the balancer's).
    pub cache: bool,
    /// Its `paths`: these patterns of [`Snapshot::pool_paths`] (none: any path).
    pub paths: std::ops::Range<usize>,
    /// Its `hosts` (none: any host).
    pub hosts: Option<Hosts>,
}

/// A pool's `hosts` (nginx `server_name`): exact names and wildcards (`*.shop.example`: any
/// name under it, `www.shop.example` and `a.b.shop.example`, as nginx), compared without case.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    exact: Vec<String>,
    /// `*.shop.example` as `shop.example`.
    wildcard: Vec<String>,
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn hosts_match_exact_names_and_wildcards_without_case() {
        let hosts = super::Hosts::of(&["shop.example".into(), "*.Shop.Example".into()]).unwrap();
        for yes in [
            "shop.example",
            "SHOP.example",
            "www.shop.example",
            "a.b.shop.example",
        ] {
            assert!(hosts.matches(yes.as_bytes()), "{yes}");
        }
        for no in [
            "example",
            "xshop.example",
            ".shop.example",
            "shop.example.com",
            "shop",
        ] {
            assert!(!hosts.matches(no.as_bytes()), "{no}");
        }
        assert!(super::Hosts::of(&[]).is_none());
    }
}

impl Hosts {
    fn of(names: &[String]) -> Option<Self> {
        if names.is_empty() {
            return None;
        }
        let mut hosts = Self::default();
        for n in names {
            match n.strip_prefix("*.") {
                Some(parent) => hosts.wildcard.push(parent.to_ascii_lowercase()),
                None => hosts.exact.push(n.to_ascii_lowercase()),
            }
        }
        Some(hosts)
    }

    /// Whether the host name `name` (no port) is one of these.
    pub fn matches(&self, name: &[u8]) -> bool {
        if self
            .exact
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            return true;
        }
        self.wildcard.iter().any(|parent| {
            let p = parent.as_bytes();
            name.len() > p.len() + 1
                && name[name.len() - p.len() - 1] == b'.'
                && name[name.len() - p.len()..].eq_ignore_ascii_case(p)
        })
    }
}

/// Everything a request needs, derived from one config; swapped whole on reload.
pub(crate) struct Snapshot {
    /// Counts reloads; workers compare it to apply pool settings once.
    pub generation: u64,
    /// The config it was built from (reload compares with it).
    pub cfg: BalancerConfig,
    /// All upstreams, in config order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Route suffix -> index into `upstreams`.
    pub routes: HashMap<String, usize>,
    /// The default pool first, then the `[[balancer.pool]]`s in config order.
    pub pools: Vec<Pool>,
    /// Every pool's `paths`, in config order (empty without pools).
    pub pool_paths: RegexSet,
    /// `deny` patterns.
    pub deny: RegexSet,
    /// Who may read the status page.
    pub status_allow: Vec<crate::netmask::Net>,
    /// `access` (nginx `allow` / `deny`).
    pub access: crate::netmask::AccessRules,
    /// `redirect` rules.
    pub redirects: crate::redirect::Redirects,
    /// `host_redirect` entries.
    pub host_redirects: crate::redirect::HostRedirects,
    /// Where the client address comes from behind trusted proxies (`None`: the peer's).
    pub real_ip: Option<crate::realip::RealIp>,
    /// `proxy_set_header`.
    pub set_headers: crate::custom_headers::CustomHeaders,
    /// `add_header`.
    pub add_headers: crate::custom_headers::CustomHeaders,
    /// `request_id_header`, if set.
    pub request_id: Option<String>,
    /// `limit_req_*`, if configured.
    pub limit: Option<crate::ratelimit::RateLimit>,
    /// `limit_conn*`, if configured.
    pub conn_limit: Option<crate::connlimit::ConnLimit>,
    /// Body of 502/503/504 answers (the configured error page), if any.
    pub error_page: Option<Bytes>,
    /// `error_pages`, by status.
    pub error_pages: HashMap<u16, Bytes>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// The open access log, if one is configured.
    pub access_log: Option<Arc<crate::access_log::Sink>>,
    /// `ssl_certificate` and its key, read when this config was applied.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `gzip*`, if `gzip` is on.
    pub gzip: Option<crate::gzip::Policy>,
    /// `[[balancer.static]]` locations.
    pub files: crate::files::Locations,
    /// `proxy_buffering` and its sizes.
    pub buffering: crate::buffering::Policy,
    /// `proxy_redirect`.
    pub relocate: crate::relocate::ProxyRedirect,
    /// `proxy_cookie_path` and `proxy_cookie_domain`.
    pub cookies: crate::relocate::CookieRewrite,
    /// `[[balancer.auth_basic]]` locations.
    pub auth: crate::auth::Locations,
    /// The response cache, if a pool caches.
    pub cache: Option<crate::cache::Policy>,
}

/// `proxy_next_upstream*` in a form cheap to test per attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub on_error: bool,
    pub on_timeout: bool,
    pub on_status: [bool; 5],
    pub non_idempotent: bool,
    pub tries: u32,
    pub timeout: Duration,
}

impl RetryPolicy {
    fn from_cfg(cfg: &BalancerConfig) -> Self {
        let has = |c| cfg.proxy_next_upstream.contains(&c);
        Self {
            on_error: has(NextUpstream::Error),
            on_timeout: has(NextUpstream::Timeout),
            on_status: [
                has(NextUpstream::Http500),
                false,
                has(NextUpstream::Http502),
                has(NextUpstream::Http503),
                has(NextUpstream::Http504),
            ],
            non_idempotent: has(NextUpstream::NonIdempotent),
            tries: cfg.proxy_next_upstream_tries,
            timeout: cfg.proxy_next_upstream_timeout,
        }
    }

    /// Whether an upstream answer with `status` is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        (500..=504).contains(&status) && self.on_status[usize::from(status - 500)]
    }
}

impl Snapshot {
    /// The configured page for a balancer's own answer with `status`: `error_pages`, else
    /// `error_page` for 500 and 502 to 504 (nginx's `error_page 500 502 503 504`; a 500 is an
    /// upstream's, replaced with `proxy_intercept_errors`).
    pub fn page_for(&self, status: u16) -> Option<&[u8]> {
        match self.error_pages.get(&status) {
            Some(page) => Some(page),
            None if matches!(status, 500 | 502..=504) => self.error_page.as_deref(),
            None => None,
        }
    }

    /// The pool a request for `path` on `host` (the `Host` name without its port, if it is
    /// one) goes to: the first `[[balancer.pool]]` whose `hosts` (if any) name the host and
    /// whose `paths` (if any) match the path, else the default pool (0).
    pub fn pool_for(&self, host: Option<&[u8]>, path: &str) -> usize {
        if self.pools.len() < 2 {
            return 0;
        }
        let matched = (!self.pool_paths.is_empty()).then(|| self.pool_paths.matches(path));
        let found = self.pools.iter().enumerate().skip(1).find(|(_, p)| {
            p.hosts
                .as_ref()
                .is_none_or(|h| host.is_some_and(|name| h.matches(name)))
                && (p.paths.is_empty()
                    || matched
                        .as_ref()
                        .is_some_and(|m| p.paths.clone().any(|j| m.matched(j))))
        });
        found.map_or(0, |(i, _)| i)
    }

    /// Validates `cfg` and builds a snapshot, reusing upstreams of `prev` whose config is unchanged
    /// (so their counters and health carry over).
    pub fn build(mut cfg: BalancerConfig, prev: Option<&Snapshot>) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if cfg.resolver.is_none() {
            cfg.resolver = prev.and_then(|p| p.cfg.resolver.clone());
        }
        // Pool 0 is the default one; validation made sure every named pool exists.
        let pool_index = |name: Option<&str>| {
            name.and_then(|n| cfg.pool.iter().position(|p| p.name == n))
                .map_or(0, |i| i + 1)
        };
        let connector = cfg.upstream_tls()?;
        let mut upstreams = Vec::with_capacity(cfg.upstream.len());
        for (i, up) in cfg.upstream.iter().enumerate() {
            let old = prev.and_then(|p| p.upstreams.iter().find(|u| u.cfg.address == up.address));
            let pool = pool_index(up.pool.as_deref());
            let tls = match (&connector, up.tls) {
                (Some(connector), true) => Some(upstream_tls(i, up, connector)?),
                _ => None,
            };
            upstreams.push(Arc::new(build_upstream(
                i,
                up,
                old.map(|o| &**o),
                (pool, cfg.resolver.as_ref()),
                tls,
            )?));
        }
        let routes = upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.cfg.route.clone().map(|r| (r, i)))
            .collect();
        let names = std::iter::once(None).chain(cfg.pool.iter().map(|p| Some(p.name.as_str())));
        let mut first_path = 0;
        let pools = names
            .enumerate()
            .map(|(p, name)| {
                let (method, hash_key) = cfg.pool_method(name);
                let group = |backup: bool| {
                    let members: Vec<usize> = (0..upstreams.len())
                        .filter(|&i| upstreams[i].pool == p && upstreams[i].cfg.backup == backup)
                        .collect();
                    let peers: Vec<Arc<Upstream>> =
                        members.iter().map(|&i| upstreams[i].clone()).collect();
                    Group {
                        selector: selection::build(method, &peers),
                        members,
                    }
                };
                let (primary, backup) = (group(false), group(true));
                let named = name.and_then(|n| cfg.pool.iter().find(|c| c.name == n));
                let paths = named.map_or(0, |c| c.paths.len());
                first_path += paths;
                Pool {
                    paths: first_path - paths..first_path,
                    hosts: named.and_then(|c| Hosts::of(&c.hosts)),
                    strip_prefix: named.and_then(|c| c.strip_prefix.clone()),
                    upstream_prefix: match named {
                        Some(c) => c.upstream_prefix.clone(),
                        None => cfg.upstream_prefix.clone(),
                    },
                    max_body: named
                        .and_then(|c| c.client_max_body_size)
                        .unwrap_or(cfg.client_max_body_size),
                    cache: named.and_then(|c| c.proxy_cache).unwrap_or(cfg.proxy_cache),
                    len: primary.members.len() + backup.members.len(),
                    primary,
                    backup,
                    hash_key: (method == Method::Hash).then(|| HashKey::parse(hash_key)),
                }
            })
            .collect();
        let pool_paths = RegexSet::new(cfg.pool.iter().flat_map(|p| p.paths.iter()))
            .map_err(|e| ConfigError::new("balancer.pool", e.to_string()))?;
        let deny = RegexSet::new(&cfg.deny)
            .map_err(|e| ConfigError::new("balancer.deny", e.to_string()))?;
        let error_page = cfg.read_error_page()?;
        let error_pages = cfg.read_error_pages()?;
        let retry = RetryPolicy::from_cfg(&cfg);
        let generation = prev.map_or(1, |p| p.generation + 1);
        let status_allow = cfg.status_allow_nets()?;
        let access = cfg.access_rules()?;
        let redirects = cfg.redirects()?;
        let host_redirects = cfg.host_redirects()?;
        let real_ip = cfg.real_ip()?;
        let request_id = Some(cfg.request_id_header.trim().to_owned()).filter(|n| !n.is_empty());
        let set_headers = crate::custom_headers::CustomHeaders::parse(
            &cfg.proxy_set_header,
            "proxy_set_header",
            true,
        )?;
        let add_headers =
            crate::custom_headers::CustomHeaders::parse(&cfg.add_header, "add_header", false)?;
        // The buckets outlive a reload (a client does not get a fresh burst from one).
        let limit = cfg.rate_limit(|| {
            prev.and_then(|p| p.limit.as_ref())
                .map(|l| l.table.clone())
                .unwrap_or_else(|| std::sync::Arc::new(crate::ratelimit::Table::new()))
        })?;
        // The counts too: requests in flight across a reload stay counted.
        let conn_limit = cfg.conn_limit(|| {
            prev.and_then(|p| p.conn_limit.as_ref())
                .map(|l| l.table.clone())
                .unwrap_or_else(|| std::sync::Arc::new(crate::connlimit::Table::new()))
        })?;
        let tls = cfg.tls_acceptor()?;
        let gzip = crate::gzip::Policy::of(&cfg)?;
        let files = crate::files::Locations::of(&cfg.statics);
        let buffering = crate::buffering::Policy::of(&cfg)?;
        let cache = crate::cache::Policy::of(&cfg, prev.and_then(|p| p.cache.as_ref()))?;
        let auth = crate::auth::Locations::of(&cfg.auth_basic)?;
        let relocate = crate::relocate::ProxyRedirect::parse(&cfg.proxy_redirect)
            .map_err(|(i, m)| ConfigError::new(format!("balancer.proxy_redirect[{i}]"), m))?;
        let cookies =
            crate::relocate::CookieRewrite::parse(&cfg.proxy_cookie_path, &cfg.proxy_cookie_domain)
                .map_err(|(key, m)| ConfigError::new(key, m))?;
        // Last, once the rest is known to be valid: the same path keeps its writer and reopens
        // the file (rotation); another path gets a writer of its own.
        let access_log = match cfg.access_log_path() {
            None => None,
            Some(path) => match prev.and_then(|p| p.access_log.as_ref()) {
                Some(sink) if sink.path() == path => {
                    sink.reopen();
                    Some(sink.clone())
                }
                _ => Some(crate::access_log::Sink::open(path)?),
            },
        };
        Ok(Self {
            generation,
            cfg,
            upstreams,
            routes,
            pools,
            pool_paths,
            deny,
            status_allow,
            access,
            redirects,
            host_redirects,
            real_ip,
            set_headers,
            add_headers,
            request_id,
            limit,
            conn_limit,
            error_page,
            error_pages,
            retry,
            access_log,
            tls,
            gzip,
            files,
            buffering,
            relocate,
            cookies,
            cache,
            auth,
        })
    }
}

/// How upstream `i` is spoken to over TLS: the shared connector and its name.
fn upstream_tls(
    i: usize,
    up: &UpstreamConfig,
    connector: &tokio_rustls::TlsConnector,
) -> Result<crate::upstream_tls::UpTls, ConfigError> {
    let (name, key) = match &up.tls_name {
        Some(name) => (name.as_str(), "tls_name"),
        None => (crate::upstream_tls::host_of(&up.address), "address"),
    };
    let name = crate::upstream_tls::server_name(name)
        .map_err(|e| ConfigError::new(format!("balancer.upstream[{i}].{key}"), e))?;
    Ok(crate::upstream_tls::UpTls {
        connector: connector.clone(),
        name,
    })
}

fn build_upstream(
    i: usize,
    up: &UpstreamConfig,
    old: Option<&Upstream>,
    (pool, resolver): (usize, Option<&crate::config::Resolver>),
    tls: Option<crate::upstream_tls::UpTls>,
) -> Result<Upstream, ConfigError> {
    let key = || format!("balancer.upstream[{i}].address");
    let addrs = crate::config::resolve(resolver, &up.address)
        .map_err(|e| ConfigError::new(key(), format!("cannot resolve {}: {e}", up.address)))?;
    // The address in use stays while the name still resolves to it (a name with several
    // addresses in a changing order does not move the upstream on every reload).
    let addr = old
        .map(|o| o.addr)
        .filter(|a| addrs.contains(a))
        .or_else(|| addrs.first().copied())
        .ok_or_else(|| ConfigError::new(key(), format!("{} resolves to no address", up.address)))?;
    // At a new address, health starts afresh (what failed was the old one).
    let old_health = old.filter(|o| o.addr == addr);
    let authority = HeaderValue::from_str(&up.address)
        .map_err(|_| ConfigError::new(key(), "not a valid Host header value"))?;
    // Counters are shared with the previous incarnation of the same `address`, and health too
    // while it resolves to the same socket address, so a reload that changes weight or drain
    // keeps in-flight accounting and health.
    let (active, counts) = match old {
        Some(o) => (o.active.clone(), o.counts.clone()),
        None => Default::default(),
    };
    let (healthy, down_until, recovered_at) = match old_health {
        Some(o) => (
            o.healthy.clone(),
            o.down_until.clone(),
            o.recovered_at.clone(),
        ),
        None => Default::default(),
    };
    if old_health.is_none() {
        healthy.store(true, Ordering::Relaxed);
    }
    Ok(Upstream {
        cfg: up.clone(),
        addr,
        authority,
        active,
        healthy,
        down_until,
        recovered_at,
        counts,
        pool,
        tls,
    })
}

/// Resolves the upstream addresses given as host names again (blocking); when one no longer
/// resolves to the address in use, the snapshot is rebuilt from its own config, as a reload
/// would (the upstream moves to a resolved address, its health starts afresh). Returns the
/// `address`es that moved. A name that fails to resolve keeps its address, with a warning.
pub(crate) fn follow_names(shared: &crate::server::Shared) -> Vec<String> {
    let snap = shared.snapshot.load_full();
    let mut moved = Vec::new();
    for u in &snap.upstreams {
        if u.cfg.address.parse::<SocketAddr>().is_ok() {
            continue;
        }
        match crate::config::resolve(snap.cfg.resolver.as_ref(), &u.cfg.address) {
            Ok(addrs) if !addrs.is_empty() && !addrs.contains(&u.addr) => {
                log::info!(
                    "upstream {} no longer resolves to {} but to {addrs:?}: moving it",
                    u.cfg.address,
                    u.addr
                );
                moved.push(u.cfg.address.clone());
            }
            Ok(addrs) if addrs.is_empty() => log::warn!(
                "upstream {} resolves to no address now; keeping {}",
                u.cfg.address,
                u.addr
            ),
            Ok(_) => {}
            Err(e) => log::warn!(
                "upstream {} cannot be resolved again ({e}); keeping {}",
                u.cfg.address,
                u.addr
            ),
        }
    }
    if moved.is_empty() {
        return moved;
    }
    let _serial = shared.reload.lock();
    // The snapshot of now (a reload may have come in between).
    let current = shared.snapshot.load_full();
    match Snapshot::build(current.cfg.clone(), Some(&current)) {
        Ok(next) => {
            shared.snapshot.store(Arc::new(next));
            moved
        }
        Err(e) => {
            log::warn!("moving upstreams to their new addresses failed: {e}");
            Vec::new()
        }
    }
}

/// Counts one request in flight to an upstream for as long as it lives.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    /// Counts a request on `up`.
    pub fn new(up: &Upstream) -> Self {
        up.active.fetch_add(1, Ordering::Relaxed);
        Self(up.active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
