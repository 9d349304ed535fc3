//! The `[balancer]` section of the ferrocat config: typed, defaulted, then validated.
//!
//! Pipeline: the lead's loader reads the TOML file and the `FERROCAT__BALANCER__*` environment
//! overrides and deserializes them into [`BalancerConfig`] (serde rejects unknown keys, wrong
//! types and negative numbers, and the loader reports the key path). [`BalancerConfig::validate`]
//! then checks the rules serde cannot express (one unit test per rule in `validate.rs`) and
//! names the offending key as a dotted path such as `balancer.upstream[0].weight`.
//! [`crate::Balancer::start`] and [`crate::BalancerHandle::reload`] validate again before use.
//!
//! Key names follow nginx's directives in snake_case (`client_max_body_size`, `max_fails`,
//! `fail_timeout`, `proxy_next_upstream`, ...), so an nginx config translates line by line.

mod validate;
pub(crate) use validate::is_token_byte;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// Default listen address, as issue 2 specifies.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// nginx's default `client_max_body_size` (1 MiB).
pub const DEFAULT_CLIENT_MAX_BODY_SIZE: u64 = 1 << 20;
/// Default sticky cookie: Tomcat's and ferrocat's session cookie.
pub const DEFAULT_STICKY_COOKIE: &str = "JSESSIONID";
/// Default key for `method = "hash"`.
pub const DEFAULT_HASH_KEY: &str = "$request_uri";
/// nginx's default proxy connect/read/send timeouts.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per upstream and worker.
pub const DEFAULT_KEEPALIVE: usize = 64;
/// How long an idle upstream connection stays in the pool (nginx `keepalive_timeout` 60s).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's default `client_header_timeout`, `client_body_timeout` and `send_timeout`.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's default `keepalive_timeout` towards clients.
pub const DEFAULT_CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// nginx's default `keepalive_requests` (towards clients and in `upstream` alike): requests
/// served over one connection before it is closed.
pub const DEFAULT_KEEPALIVE_REQUESTS: u32 = 1000;
/// How long a graceful stop waits for in-flight requests.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's default `max_fails`.
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// nginx's default `fail_timeout`.
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Media types `gzip` compresses unless `gzip_types` says otherwise: text and the text-like
/// formats of web apps (nginx's default is `text/html` alone; everyone adds these).
pub const DEFAULT_GZIP_TYPES: &[&str] = &[
    "text/html",
    "text/css",
    "text/plain",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "image/svg+xml",
];
/// nginx's default `gzip_min_length` (bytes).
pub const DEFAULT_GZIP_MIN_LENGTH: u64 = 20;
/// Largest accepted `weight` (keeps the smooth round-robin cycle small).
pub const MAX_WEIGHT: u32 = 1000;

/// A config rule that failed: which key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `balancer.upstream[0].weight`.
    pub key: String,
    /// Why the value is rejected.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// How an upstream is chosen for a request that is not bound to one by its session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Method {
    /// nginx's smooth weighted round robin (weights 5,1,1 give a a b a c a a).
    #[default]
    RoundRobin,
    /// Fewest active requests relative to weight.
    LeastConn,
    /// Client address hash (first three octets of IPv4, as nginx).
    IpHash,
    /// Ketama consistent hash on `hash_key`.
    Hash,
    /// Random with two choices, the one with fewer active requests wins.
    Random,
}

/// When a failed attempt is retried on the next upstream (nginx `proxy_next_upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NextUpstream {
    /// Connection error, or an error while sending the request or reading the response head.
    Error,
    /// Connect or read timeout.
    Timeout,
    /// Upstream answered 500.
    Http500,
    /// Upstream answered 502.
    Http502,
    /// Upstream answered 503.
    Http503,
    /// Upstream answered 504.
    Http504,
    /// Also retry non-idempotent requests (POST, PATCH) that reached an upstream.
    NonIdempotent,
    /// Never retry.
    Off,
}

/// Active HTTP health checks (nginx Plus `health_check`, HAProxy `check inter rise fall`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path requested with GET on each upstream.
    pub path: String,
    /// Time between two checks of one upstream.
    #[serde(with = "units::duration")]
    pub interval: Duration,
    /// A check not answered within this time fails.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down upstream back.
    pub rise: u32,
    /// Consecutive failed checks that take an upstream down.
    pub fall: u32,
    /// Status codes that pass; empty means any 2xx or 3xx.
    pub expect_status: Vec<u16>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect_status: Vec::new(),
        }
    }
}

/// One `[[balancer.upstream]]`: an HTTP server requests are passed to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` (a literal IP or a name resolved when the config is applied).
    pub address: String,
    /// The route suffix of session ids this upstream owns (Tomcat's jvmRoute, ferrocat's node name).
    #[serde(default)]
    pub route: Option<String>,
    /// Share of requests relative to the other upstreams (1..=1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failed attempts within `fail_timeout` that mark the upstream down for `fail_timeout`; 0 disables.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// Window for counting failures and time the upstream then stays down.
    #[serde(default = "default_fail_timeout", with = "units::duration")]
    pub fail_timeout: Duration,
    /// Used only while no primary upstream is available.
    #[serde(default)]
    pub backup: bool,
    /// Permanently unavailable (nginx `down`).
    #[serde(default)]
    pub down: bool,
    /// Most requests in flight to this upstream per balancer (0 = unlimited).
    #[serde(default)]
    pub max_conns: u32,
    /// Takes no new (unbound) requests; requests bound to its route keep going.
    #[serde(default)]
    pub drain: bool,
    /// After the upstream comes back (active checks pass again, or a `max_fails` suspension
    /// ends), its share of unbound requests grows from zero to its weight over this time
    /// (nginx `slow_start`), so a JVM that just restarted is not flooded while it warms up.
    /// 0 (the default): at once.
    #[serde(default, with = "units::duration")]
    pub slow_start: Duration,
    /// The `[[balancer.pool]]` this upstream belongs to (by `name`); none: the default pool,
    /// which serves every request no pool's `paths` match.
    #[serde(default)]
    pub pool: Option<String>,
    /// Speak TLS to this upstream (nginx `proxy_pass https://`): the certificate is verified
    /// against `proxy_ssl_trusted_certificate` unless `proxy_ssl_verify` is off, kept-alive
    /// connections stay encrypted, and active health checks go over TLS too.
    #[serde(default)]
    pub tls: bool,
    /// The name the upstream's certificate must carry and that is sent as SNI (nginx
    /// `proxy_ssl_name`); default: the host of `address` (an IP address is checked against the
    /// certificate's IP entries and sends no SNI).
    #[serde(default)]
    pub tls_name: Option<String>,
}

fn default_weight() -> u32 {
    1
}
fn default_max_fails() -> u32 {
    DEFAULT_MAX_FAILS
}
fn default_fail_timeout() -> Duration {
    DEFAULT_FAIL_TIMEOUT
}

impl UpstreamConfig {
    /// An upstream at `address` with nginx's defaults.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            route: None,
            weight: 1,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
            backup: false,
            down: false,
            max_conns: 0,
            drain: false,
            slow_start: Duration::ZERO,
            pool: None,
            tls: false,
            tls_name: None,
        }
    }

    /// Sets the route (builder style).
    #[must_use]
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Puts the upstream in the named pool (builder style).
    #[must_use]
    pub fn in_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// Sets the weight (builder style).
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// One `[[balancer.ssl_sni]]`: a certificate for the TLS clients that ask for one of its
/// `server_name`s (nginx: a `server` block with its own `server_name` and `ssl_certificate` on
/// the same `listen ... ssl`). Clients that name no host, or one no entry lists, get
/// `ssl_certificate`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Host names (`shop.example`) or wildcards of one label (`*.shop.example`); an exact name
    /// wins over a wildcard.
    pub server_name: Vec<String>,
    /// PEM file with its certificate chain, the server's certificate first.
    pub certificate: PathBuf,
    /// PEM file with its private key.
    pub certificate_key: PathBuf,
}

/// One `[[balancer.pool]]`: a named group of upstreams that the requests whose path matches
/// one of its `paths` go to (nginx: an `upstream` block and the `location ~ regex` blocks that
/// `proxy_pass` to it). Upstreams join it with `pool = "<name>"`; the upstreams without `pool`
/// form the default pool, which serves every other request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// What upstreams name in their `pool` key.
    pub name: String,
    /// Path regexes (the path without the query, as `deny`); the first pool in config order
    /// with a matching one (and a matching host, with `hosts`) takes the request. Empty: any
    /// path on its `hosts`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Host names (nginx `server_name`: exact, or a wildcard `*.shop.example` for any name
    /// under it),
    /// compared with the request's `Host` without its port and without case; the pool takes
    /// only requests for these hosts. Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Selection method inside this pool; default: `balancer.method`.
    #[serde(default)]
    pub method: Option<Method>,
    /// Key for `method = "hash"` inside this pool; default: `balancer.hash_key`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// A path prefix removed before the request goes upstream (nginx `location /api/ {
    /// proxy_pass http://api/; }`): with `"/api"`, `/api/items?x` goes up as `/items?x` and
    /// `/api` as `/`; a path that merely starts with the same letters (`/apiary`) is left.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Largest request body for this pool's requests; default: `balancer.client_max_body_size`
    /// (nginx sets it per `location`).
    #[serde(default, with = "units::opt_size")]
    pub client_max_body_size: Option<u64>,
    /// A path prefix put before the path as the upstream gets it, after `strip_prefix` (nginx
    /// `location /shop/ { proxy_pass http://tomcat/app/; }` is `strip_prefix = "/shop"`,
    /// `upstream_prefix = "/app"`): a webapp deployed under a context path answers at another
    /// public path. `proxy_redirect "default"` and `proxy_cookie_path "default"` map it back.
    #[serde(default)]
    pub upstream_prefix: Option<String>,
    /// Cache this pool's answers (see `balancer.proxy_cache`); default: `balancer.proxy_cache`.
    #[serde(default)]
    pub proxy_cache: Option<bool>,
}

impl PoolConfig {
    /// A pool named `name` taking the requests whose path matches one of `paths`.
    pub fn new(name: impl Into<String>, paths: &[&str]) -> Self {
        Self {
            name: name.into(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            hosts: Vec::new(),
            method: None,
            hash_key: None,
            strip_prefix: None,
            client_max_body_size: None,
            upstream_prefix: None,
            proxy_cache: None,
        }
    }
}

/// One `[[balancer.static]]`: requests whose path falls under `location` are answered from
/// files on disk (nginx `location /prefix/ { root ..; }` or `alias ..;`), matched on the
/// normalized path (escapes decoded, dot segments resolved), so no request reaches a file
/// outside the directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Path prefix, matched at a segment boundary (`/static` takes `/static` and
    /// `/static/a.css`, not `/staticx`); the longest matching location wins.
    pub location: String,
    /// The file is `root` + the whole path (nginx `root`).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// The file is `alias` + the path after `location` (nginx `alias`).
    #[serde(default)]
    pub alias: Option<PathBuf>,
    /// Files tried, in order, for a path ending in `/` (none found: 403, as nginx without
    /// `autoindex`).
    #[serde(default = "default_index")]
    pub index: Vec<String>,
    /// nginx `expires`: `Cache-Control: max-age=<secs>` and `Expires` on 200, 206 and 304.
    #[serde(default, with = "units::opt_duration")]
    pub expires: Option<Duration>,
    /// nginx `try_files $uri $uri/ @upstream`: a missing file goes to the upstreams instead
    /// of a 404.
    #[serde(default)]
    pub try_upstream: bool,
    /// How long a worker reuses a look-up (nginx `open_file_cache_valid`): the content of
    /// files up to 64 KiB, and that a path is missing, a directory or refused. A change on
    /// disk shows within this time; `"0s"`: every request looks at the disk.
    #[serde(default = "default_cache_valid", with = "units::duration")]
    pub cache_valid: Duration,
    /// nginx `gzip_static on` (with `gzip_vary`): a client that takes gzip gets `<file>.gz`
    /// when it exists, with `Content-Encoding: gzip` and the original's `Content-Type`; the
    /// answers carry `Vary: Accept-Encoding`.
    #[serde(default)]
    pub gzip_static: bool,
    /// nginx `charset`: text types (`text/*`, JavaScript, JSON, XML feeds, SVG) get
    /// `; charset=<this>` in their `Content-Type`; none: the bare type, as nginx's default.
    #[serde(default)]
    pub charset: Option<String>,
    /// A file under `location` answered (200) for a path that has no file (nginx `try_files
    /// $uri $uri/ /index.html`, for a single-page app): `"index.html"` is the file that
    /// `<location>/index.html` names. Not with `try_upstream`.
    #[serde(default)]
    pub fallback: Option<String>,
}

fn default_cache_valid() -> Duration {
    Duration::from_secs(1)
}

fn default_index() -> Vec<String> {
    vec!["index.html".into()]
}

impl StaticConfig {
    /// Files under `location` served from `root` + path.
    pub fn root(location: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self {
            location: location.into(),
            root: Some(root.into()),
            alias: None,
            index: default_index(),
            expires: None,
            try_upstream: false,
            cache_valid: default_cache_valid(),
            gzip_static: false,
            charset: None,
            fallback: None,
        }
    }
}

/// One `[[balancer.auth_basic]]`: HTTP Basic authentication for a location (nginx
/// `auth_basic` with `auth_basic_user_file`; see `crate::auth`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthBasicConfig {
    /// Path prefix, matched at a segment boundary on the normalized path (the longest wins).
    pub location: String,
    /// The realm browsers show.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// htpasswd file (re-read on reload): `user:hash` lines.
    #[serde(default)]
    pub user_file: Option<PathBuf>,
    /// No authentication under this location (nginx `auth_basic off`), inside a longer-held one.
    #[serde(default)]
    pub off: bool,
    /// Client address rules for this location (nginx `allow`/`deny` inside the `location`):
    /// `"allow 10.0.0.0/8"`, `"deny all"`, the first match decides.
    #[serde(default)]
    pub access: Vec<String>,
    /// `"all"` (default): the address rules and the credentials must both let the request in;
    /// `"any"`: an address that `access` allows needs no credentials (nginx `satisfy`).
    #[serde(default)]
    pub satisfy: Satisfy,
}

/// nginx's `ssl_verify_client`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClient {
    /// No client certificates asked for.
    #[default]
    Off,
    /// Required.
    On,
    /// Asked for; a client may come without one.
    Optional,
}

/// nginx's `satisfy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Satisfy {
    /// Both must let the request in.
    #[default]
    All,
    /// Either one is enough.
    Any,
}

fn default_realm() -> String {
    "Restricted".into()
}

/// Turns an upstream `address` (`host:port`) into socket addresses. The system's resolver is
/// used unless an embedder installs its own in [`BalancerConfig::resolver`] (service
/// discovery, or a test that moves an upstream).
#[derive(Clone)]
pub struct Resolver(std::sync::Arc<ResolveFn>);

/// What a [`Resolver`] runs.
type ResolveFn = dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>> + Send + Sync;

impl Resolver {
    /// A resolver running `f`.
    pub fn new(
        f: impl Fn(&str) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Resolver(std::sync::Arc::new(f))
    }

    /// The addresses of `address`.
    pub fn resolve(&self, address: &str) -> std::io::Result<Vec<SocketAddr>> {
        (self.0)(address)
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver(..)")
    }
}

impl PartialEq for Resolver {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The addresses of upstream `address`: through `resolver`, or the system's.
pub(crate) fn resolve(
    resolver: Option<&Resolver>,
    address: &str,
) -> std::io::Result<Vec<SocketAddr>> {
    match resolver {
        Some(r) => r.resolve(address),
        None => std::net::ToSocketAddrs::to_socket_addrs(address).map(Iterator::collect),
    }
}

/// The `[balancer]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerConfig {
    /// Address the balancer accepts clients on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// A second address that speaks TLS (nginx `listen 443 ssl`), with `ssl_certificate` and
    /// `ssl_certificate_key`; the upstreams get `X-Forwarded-Proto: https` for its requests.
    pub ssl_listen: Option<SocketAddr>,
    /// PEM file with the certificate chain, the server's certificate first (re-read on reload).
    pub ssl_certificate: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub ssl_certificate_key: Option<PathBuf>,
    /// More certificates on `ssl_listen`, chosen by the name the client asks for (SNI).
    pub ssl_sni: Vec<SniCertificate>,
    /// TLS versions offered on `ssl_listen` (nginx `ssl_protocols`): `"TLSv1.2"`, `"TLSv1.3"`.
    /// Older versions are not implemented (rustls), so they cannot be turned on by mistake.
    pub ssl_protocols: Vec<String>,
    /// Ask TLS clients for a certificate signed by `ssl_client_certificate` (nginx
    /// `ssl_verify_client`): `"on"` (required: the handshake fails without one), `"optional"`
    /// (a client may come without one; one it shows must verify) or `"off"`. The upstreams learn
    /// of it through `proxy_set_header` with `$ssl_client_verify` (`SUCCESS`, `NONE`) and
    /// `$ssl_client_fingerprint` (the SHA-1 of the certificate, as nginx's).
    pub ssl_verify_client: VerifyClient,
    /// PEM file of the CA certificates client certificates must be signed by (re-read on
    /// reload).
    pub ssl_client_certificate: Option<PathBuf>,
    /// PEM file of certificate revocation lists (nginx `ssl_crl`): a client certificate listed
    /// in one issued by its CA is refused, as an unknown one is (re-read on reload).
    pub ssl_crl: Option<PathBuf>,
    /// Requests on `listen` (plain HTTP) are answered with a redirect to the same URL over
    /// https on `ssl_listen`'s port (nginx `return 301 https://$host$request_uri`): 301 for GET
    /// and HEAD, 308 for the others. The status page is still served over plain HTTP.
    pub ssl_redirect: bool,
    /// Offer HTTP/2 on `ssl_listen` (nginx `http2 on`): ALPN `h2` beside `http/1.1`. Each
    /// HTTP/2 stream goes through the same request path as an HTTP/1.1 request (limits, rules,
    /// retries, logs) and reaches the upstream as HTTP/1.1.
    pub http2: bool,
    /// Compress responses for clients that accept gzip (nginx `gzip on`; see `crate::gzip`).
    pub gzip: bool,
    /// Media types compressed (nginx `gzip_types`); `*` for any.
    pub gzip_types: Vec<String>,
    /// Responses with a known length below this are not compressed (nginx `gzip_min_length`).
    #[serde(with = "units::size")]
    pub gzip_min_length: u64,
    /// 1 (fastest, nginx's default) to 9 (smallest).
    pub gzip_comp_level: u32,
    /// Worker threads, each with its own event loop and upstream pool; 0 = one per core.
    pub workers: usize,
    /// Selection method for unbound requests.
    pub method: Method,
    /// Key for `method = "hash"`: `$request_uri`, `$uri`, `$remote_addr`, `$host`,
    /// `$cookie_NAME`, `$arg_NAME`, `$http_NAME`, mixed with literal text.
    pub hash_key: String,
    /// Largest request body (0 = unlimited); larger gets 413.
    #[serde(with = "units::size")]
    pub client_max_body_size: u64,
    /// Path regexes answered with 403 (nginx `location ~ ... { deny all; }`).
    pub deny: Vec<String>,
    /// Client address rules (nginx `allow` / `deny`): `"allow 10.0.0.0/8"`, `"deny 192.0.2.1"`,
    /// `"deny all"`, checked in order, the first that matches decides (403 for `deny`); a
    /// client no rule matches is served. The client is the one `set_real_ip_from` names.
    /// Empty (the default): everyone.
    pub access: Vec<String>,
    /// Redirects the balancer answers itself (nginx `rewrite ... redirect|permanent`, `return
    /// 301 ...`): `"<regex> <target> [301|302|303|307|308]"` (302 by default), the first whose
    /// regex matches the path (without the query) answers, before `deny`, `access` and the
    /// limits; `$1`, `${name}` in the target name the regex's groups, `$$` is a `$`; the query is
    /// appended unless the target ends with `?`.
    pub redirect: Vec<String>,
    /// Whole hosts sent to another site (nginx `server { server_name old.example; return 301
    /// https://new.example$request_uri; }`): `"<host> <url> [301|302|303|307|308]"` (301 by
    /// default); `<host>` is a name, `*.name` (its subdomains) or `.name` (both); the request's
    /// path and query follow `<url>`. Checked before `redirect`.
    pub host_redirect: Vec<String>,
    /// HTML page served with 502/503/504 when no upstream can answer.
    pub error_page: Option<PathBuf>,
    /// HTML pages by status for the answers the balancer makes itself (nginx `error_page 403
    /// /403.html`): `{ "403" = "...", "503" = "/srv/maintenance.html" }`, for 400 to 599; a status
    /// listed here wins over `error_page`.
    pub error_pages: std::collections::BTreeMap<String, PathBuf>,
    /// Access log file (nginx `access_log`, the `combined` format plus request time, upstream
    /// addresses and statuses); absent or `"off"`: none. A reload reopens it (log rotation).
    pub access_log: Option<PathBuf>,
    /// Path the balancer answers itself with its upstreams' state as JSON (nginx
    /// `stub_status`, HAProxy's stats page); absent: none. Only clients in `status_allow` may
    /// read it.
    pub status_path: Option<String>,
    /// Client addresses (CIDR ranges or single addresses) that may read the status page; the
    /// others get 403 there (nginx `allow ...; deny all;` in the page's `location`). Default:
    /// loopback only. `["0.0.0.0/0", "::/0"]` opens it to everyone.
    pub status_allow: Vec<String>,
    /// Proxies (CIDR ranges or single addresses) whose `real_ip_header` is believed (nginx
    /// `set_real_ip_from`): for connections from them, the client address (`ip_hash`,
    /// `$remote_addr`, `X-Real-IP`, the access log, `status_allow`) comes from that header.
    /// Empty (the default): the connection's address, always.
    pub set_real_ip_from: Vec<String>,
    /// The header holding the client address (nginx `real_ip_header`): `X-Real-IP` (the
    /// default), `X-Forwarded-For`, or another one such as `CF-Connecting-IP`.
    pub real_ip_header: String,
    /// With `X-Forwarded-For`: skip entries from the right while they are trusted proxies
    /// too (nginx `real_ip_recursive`); off: its last entry is the client.
    pub real_ip_recursive: bool,
    /// Request headers set for the upstream (nginx `proxy_set_header`), as `"Name: value"`:
    /// replaces the client's header of that name (also `Host`, `X-Real-IP`,
    /// `X-Forwarded-For`, `X-Forwarded-Proto`); an empty value removes it; `$remote_addr`,
    /// `$host`, `$request_uri`, `$cookie_NAME`, `$http_NAME`... are evaluated per request.
    pub proxy_set_header: Vec<String>,
    /// Response headers added for the client (nginx `add_header`), as `"Name: value"`:
    /// replaces the upstream's header of that name, in responses with status 200, 201, 204,
    /// 206, 301, 302, 303, 304, 307 or 308.
    pub add_header: Vec<String>,
    /// Rewrites of the `Location` and `Refresh` headers of upstream answers (nginx
    /// `proxy_redirect`): `"default"` (`http://<upstream address>/` becomes `/`, or the pool's
    /// `strip_prefix` + `/`) or `"<from> <to>"` (a prefix replaced, compared without case;
    /// `$host` and `$scheme` may be named, e.g. `"http://$host/ https://$host/"`). The first
    /// that matches applies.
    pub proxy_redirect: Vec<String>,
    /// Upstream response headers the client does not get (nginx `proxy_hide_header`), e.g.
    /// `["X-Powered-By", "Server"]`; names compared without case.
    pub proxy_hide_header: Vec<String>,
    /// `add_header` in every proxied response, whatever its status (nginx `always`).
    pub add_header_always: bool,
    /// Upstream answers with status 500, 502, 503 or 504 are replaced by the `error_page`
    /// (the built-in page without one), with the same status (nginx
    /// `proxy_intercept_errors on`): clients never see an app server's error page or stack
    /// trace. Off (the default): passed on as they are.
    pub proxy_intercept_errors: bool,
    /// A header carrying a request id, e.g. `"X-Request-ID"`; empty (the default): none. The
    /// id the client (or a proxy in front) sent is kept if it is 1 to 200 visible characters,
    /// else a new one is made (32 hex digits, nginx's `$request_id`). It goes to the
    /// upstream, back to the client, into the access log (a last field), and is
    /// `$request_id` in `proxy_set_header`.
    pub request_id_header: String,
    /// Requests per client address (nginx `limit_req_zone $binary_remote_addr rate=...`):
    /// `"10r/s"`, `"300r/m"`; empty (the default): no limit. The client is the one
    /// `set_real_ip_from` names, if configured.
    pub limit_req_rate: String,
    /// What a client is for `limit_req_rate` (nginx `limit_req_zone <key>`), in `hash_key`'s
    /// variable syntax, e.g. `"$http_x_api_key"` or `"$cookie_JSESSIONID"`; empty (the
    /// default): the client address. A request whose key comes out empty is not limited.
    pub limit_req_key: String,
    /// Requests a client may send beyond the rate at once (nginx `limit_req burst=`).
    pub limit_req_burst: u32,
    /// Serve the burst at once instead of spacing it out at the rate (nginx `nodelay`).
    pub limit_req_nodelay: bool,
    /// Status of a refused request (nginx `limit_req_status`; 503 gets the `error_page`).
    pub limit_req_status: u16,
    /// Requests one client address may have in flight at once (nginx `limit_conn_zone
    /// $binary_remote_addr` + `limit_conn N`); 0 (the default): no limit. The client is the one
    /// `set_real_ip_from` names, if configured.
    pub limit_conn: u32,
    /// What a client is for `limit_conn` (nginx `limit_conn_zone <key>`), in `hash_key`'s
    /// variable syntax; empty (the default): the client address. A request whose key comes
    /// out empty is not limited.
    pub limit_conn_key: String,
    /// Status of a refused request (nginx `limit_conn_status`; 503 gets the `error_page`).
    pub limit_conn_status: u16,
    /// Session cookie whose `.route` suffix binds a request to an upstream; empty disables.
    pub sticky_cookie: String,
    /// Active health checks; absent = passive checks only.
    pub health_check: Option<HealthCheckConfig>,
    /// How often upstream addresses given as host names are resolved again (nginx's `resolve`
    /// on an upstream server, with `resolver ... valid=`): an upstream whose address no longer
    /// resolves to the one in use moves to a new one, as on a reload. `"0s"` (the default):
    /// names are resolved only when the config is applied.
    #[serde(with = "units::duration")]
    pub resolve_interval: Duration,
    /// The resolver for upstream addresses (not in TOML): `None`, the system's. Kept across
    /// reloads that do not set one.
    #[serde(skip)]
    pub resolver: Option<Resolver>,
    /// Conditions for passing a request to the next upstream.
    pub proxy_next_upstream: Vec<NextUpstream>,
    /// Most attempts per request (0 = as many as there are upstreams).
    pub proxy_next_upstream_tries: u32,
    /// Time limit for passing a request to the next upstream (0 = none).
    #[serde(with = "units::duration")]
    pub proxy_next_upstream_timeout: Duration,
    /// Time to establish a connection to an upstream.
    #[serde(with = "units::duration")]
    pub proxy_connect_timeout: Duration,
    /// Time between two reads from an upstream (response head, then each body chunk).
    #[serde(with = "units::duration")]
    pub proxy_read_timeout: Duration,
    /// Time allowed for sending the request to an upstream.
    #[serde(with = "units::duration")]
    pub proxy_send_timeout: Duration,
    /// How long the rest of a request head may take once its first byte arrived (nginx
    /// `client_header_timeout`); the connection is closed when it runs out.
    #[serde(with = "units::duration")]
    pub client_header_timeout: Duration,
    /// Longest silence between two reads of a request body (nginx `client_body_timeout`).
    #[serde(with = "units::duration")]
    pub client_body_timeout: Duration,
    /// Longest wait for the client to take more response bytes (nginx `send_timeout`).
    #[serde(with = "units::duration")]
    pub send_timeout: Duration,
    /// How long an idle client connection waits for its next request (nginx's
    /// `keepalive_timeout` in `http`; `keepalive_timeout` here is the upstream pool's).
    #[serde(with = "units::duration")]
    pub client_keepalive_timeout: Duration,
    /// Requests served over one client connection; the last one's response says
    /// `Connection: close` and the connection closes after it (nginx's `keepalive_requests` in
    /// `http`; 0 = no limit). Spreads long-lived clients over balancers and frees their buffers.
    pub client_keepalive_requests: u32,
    /// Buffer responses for clients slower than their upstream (nginx `proxy_buffering`, on
    /// by default): what the client does not take at once waits in memory (`proxy_buffers`)
    /// and then in a temp file (`proxy_max_temp_file_size`), so the upstream connection is
    /// free once the answer is read. An upstream's `X-Accel-Buffering: no|yes` decides for
    /// its response. Off: the body is passed on as fast as the client takes it.
    pub proxy_buffering: bool,
    /// Read a request body in full before the upstream is contacted (nginx
    /// `proxy_request_buffering`, on by default): up to 1 MiB in memory, the rest in an unlinked
    /// temp file in `client_body_temp_path`. A slow upload then holds no upstream
    /// connection, and the body can be sent again on a retry. Off: bodies over 64 KiB with a
    /// `Content-Length` stream to the upstream as they arrive (chunked ones are read in full
    /// whenever `client_max_body_size` bounds them, so that an oversized one gets 413 first).
    pub proxy_request_buffering: bool,
    /// Directory where request bodies past 1 MiB are spooled (nginx
    /// `client_body_temp_path`); default: the system's temp directory. The files are unlinked
    /// as soon as they are made.
    pub client_body_temp_path: Option<PathBuf>,
    /// Memory per buffered response, nginx-style `"<number> <size>"` (default `"8 8k"`).
    pub proxy_buffers: String,
    /// Largest temp file per buffered response; `0`: memory only.
    #[serde(with = "units::size")]
    pub proxy_max_temp_file_size: u64,
    /// Directory for the temp files (nginx `proxy_temp_path`); default: the system's temp
    /// directory. The files are unlinked as soon as they are made.
    pub proxy_temp_path: Option<PathBuf>,
    /// Verify the certificates of `tls` upstreams (nginx `proxy_ssl_verify`; on by default here,
    /// unlike nginx: an unverified upstream connection is open to anyone on the path).
    pub proxy_ssl_verify: bool,
    /// PEM file of the CA certificates `tls` upstreams are verified against (nginx
    /// `proxy_ssl_trusted_certificate`); default: the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`. Re-read on reload.
    pub proxy_ssl_trusted_certificate: Option<PathBuf>,
    /// PEM file of certificate revocation lists for the `tls` upstreams' certificates (nginx
    /// `proxy_ssl_crl`); re-read on reload. Needs `proxy_ssl_verify`.
    pub proxy_ssl_crl: Option<PathBuf>,
    /// PEM certificate chain the balancer shows to `tls` upstreams that ask for a client
    /// certificate (nginx `proxy_ssl_certificate`), with `proxy_ssl_certificate_key`.
    pub proxy_ssl_certificate: Option<PathBuf>,
    /// Private key of `proxy_ssl_certificate`.
    pub proxy_ssl_certificate_key: Option<PathBuf>,
    /// The default pool's `upstream_prefix` (see [`PoolConfig::upstream_prefix`]): with
    /// `"/app"`, `/x` goes upstream as `/app/x` (nginx `location / { proxy_pass
    /// http://tomcat/app/; }`).
    pub upstream_prefix: Option<String>,
    /// `Set-Cookie` paths rewritten (nginx `proxy_cookie_path`): `"default"` (the pool's
    /// `upstream_prefix` becomes its `strip_prefix`, or `/`) or `"<from> <to>"` (a prefix,
    /// with `$host` and `$scheme`).
    pub proxy_cookie_path: Vec<String>,
    /// `Set-Cookie` domains rewritten (nginx `proxy_cookie_domain`): `"<from> <to>"`, `from`
    /// the whole domain (without case, a leading `.` ignored), `to` may be `$host`.
    pub proxy_cookie_domain: Vec<String>,
    /// Keep answers in memory and answer from there (nginx `proxy_cache`; see `crate::cache`):
    /// for every pool, unless a pool's own `proxy_cache` says otherwise.
    pub proxy_cache: bool,
    /// Memory for kept answers, in all.
    #[serde(with = "units::size")]
    pub proxy_cache_max_size: u64,
    /// Largest answer (head and body) that is kept.
    #[serde(with = "units::size")]
    pub proxy_cache_max_entry_size: u64,
    /// How long answers that do not say so themselves are kept, by status (nginx
    /// `proxy_cache_valid`): `"200 302 10m"`, `"404 1m"`, `"any 1m"`, `"10m"` (200, 301, 302).
    /// Empty: only answers with `Cache-Control: max-age`/`s-maxage`, `Expires` or
    /// `X-Accel-Expires` are kept.
    pub proxy_cache_valid: Vec<String>,
    /// When an expired copy answers (nginx `proxy_cache_use_stale`): `error`, `timeout`,
    /// `http_500`, `http_502`, `http_503`, `http_504` (the upstreams failed so), `updating`
    /// (while another request refreshes it).
    pub proxy_cache_use_stale: Vec<String>,
    /// Requests for a key that is being filled wait for it instead of all going to the
    /// upstreams (nginx `proxy_cache_lock`; on by default here).
    pub proxy_cache_lock: bool,
    /// Longest such wait; then the request goes to the upstreams.
    #[serde(with = "units::duration")]
    pub proxy_cache_lock_timeout: Duration,
    /// The cache key, in the variables of `hash_key` (nginx `proxy_cache_key`); empty: the
    /// scheme, the host and `$request_uri`.
    pub proxy_cache_key: String,
    /// Conditions under which a request is not answered from the cache, but its answer may be
    /// kept, refreshing the copy (nginx `proxy_cache_bypass`): templates such as
    /// `"$arg_nocache"` or `"$cookie_preview"`; one that is non-empty and not `0` applies.
    pub proxy_cache_bypass: Vec<String>,
    /// Conditions under which an answer is not kept (nginx `proxy_no_cache`), as above.
    pub proxy_no_cache: Vec<String>,
    /// Answer headers the cache does not look at (nginx `proxy_ignore_headers`):
    /// `Cache-Control`, `Expires`, `X-Accel-Expires`, `Vary`. Tomcat marks pages under a
    /// security constraint `Cache-Control: private` and `Expires` 1970; ignoring both lets
    /// `proxy_cache_valid` decide.
    pub proxy_ignore_headers: Vec<String>,
    /// Client ranges that may remove kept answers with `PURGE <path>` (a path ending in `*`:
    /// every key it starts); empty: `PURGE` is passed on like any method.
    pub proxy_cache_purge_allow: Vec<String>,
    /// Kept answers nobody asked for during this time are dropped (nginx `inactive`).
    #[serde(with = "units::duration")]
    pub proxy_cache_inactive: Duration,
    /// Requests with the session cookie (`sticky_cookie`) use the cache too. Off by default:
    /// a page made for a logged-in user must not be served to another.
    pub proxy_cache_session: bool,
    /// An expired copy with an `ETag` or `Last-Modified` is refreshed with a conditional
    /// request (`If-None-Match`, `If-Modified-Since`); the upstream's 304 makes it fresh again
    /// without sending the body (nginx `proxy_cache_revalidate`; off by default, as there).
    pub proxy_cache_revalidate: bool,
    /// A `HEAD` that misses is sent as a `GET`, so its answer can be kept for the `GET`s and
    /// `HEAD`s that follow (nginx `proxy_cache_convert_head`; on by default, as there).
    pub proxy_cache_convert_head: bool,
    /// The request that finds a copy expired is answered from it at once too, and the copy is
    /// refreshed by a request of the balancer's own in the background (nginx
    /// `proxy_cache_background_update`; needs `updating` in `proxy_cache_use_stale`).
    pub proxy_cache_background_update: bool,
    /// Requests for a key before its answer is kept (nginx `proxy_cache_min_uses`): with 2, a
    /// page asked for once (a crawler's walk) takes no room. Counted within
    /// `proxy_cache_inactive`.
    pub proxy_cache_min_uses: u32,
    /// A response header telling `HIT`, `MISS`, `EXPIRED`, `STALE`, `UPDATING`, `REVALIDATED`
    /// or `BYPASS`
    /// (nginx's `add_header X-Cache-Status $upstream_cache_status`); empty: none.
    pub proxy_cache_status_header: String,
    /// Idle keep-alive connections kept per upstream and worker (0 disables keep-alive).
    pub keepalive: usize,
    /// How long an idle upstream connection is kept.
    #[serde(with = "units::duration")]
    pub keepalive_timeout: Duration,
    /// Requests sent over one upstream connection before it is closed instead of kept (nginx's
    /// `keepalive_requests` in `upstream`; 0 = no limit).
    pub keepalive_requests: u32,
    /// Longest wait for in-flight requests on a graceful stop.
    #[serde(with = "units::duration")]
    pub shutdown_timeout: Duration,
    /// The upstream servers.
    pub upstream: Vec<UpstreamConfig>,
    /// Named upstream pools chosen by path (see [`PoolConfig`]); none: every request goes to
    /// the upstreams.
    pub pool: Vec<PoolConfig>,
    /// Locations that need HTTP Basic credentials (see [`AuthBasicConfig`]).
    pub auth_basic: Vec<AuthBasicConfig>,
    /// Locations answered from files on disk (see [`StaticConfig`]), before any pool.
    #[serde(rename = "static")]
    pub statics: Vec<StaticConfig>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ssl_listen: None,
            ssl_certificate: None,
            ssl_certificate_key: None,
            ssl_protocols: vec!["TLSv1.2".into(), "TLSv1.3".into()],
            ssl_redirect: false,
            ssl_sni: Vec::new(),
            ssl_verify_client: VerifyClient::Off,
            ssl_client_certificate: None,
            ssl_crl: None,
            http2: false,
            gzip: false,
            gzip_types: DEFAULT_GZIP_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            gzip_min_length: DEFAULT_GZIP_MIN_LENGTH,
            gzip_comp_level: 1,
            workers: 0,
            method: Method::RoundRobin,
            hash_key: DEFAULT_HASH_KEY.into(),
            client_max_body_size: DEFAULT_CLIENT_MAX_BODY_SIZE,
            deny: Vec::new(),
            error_page: None,
            error_pages: Default::default(),
            access_log: None,
            status_path: None,
            status_allow: vec!["127.0.0.0/8".into(), "::1".into()],
            access: Vec::new(),
            redirect: Vec::new(),
            host_redirect: Vec::new(),
            set_real_ip_from: Vec::new(),
            real_ip_header: "X-Real-IP".into(),
            real_ip_recursive: false,
            proxy_set_header: Vec::new(),
            add_header: Vec::new(),
            add_header_always: false,
            proxy_hide_header: Vec::new(),
            proxy_redirect: Vec::new(),
            proxy_intercept_errors: false,
            request_id_header: String::new(),
            limit_req_rate: String::new(),
            limit_req_key: String::new(),
            limit_req_burst: 0,
            limit_req_nodelay: false,
            limit_req_status: 503,
            limit_conn: 0,
            limit_conn_key: String::new(),
            limit_conn_status: 503,
            sticky_cookie: DEFAULT_STICKY_COOKIE.into(),
            health_check: None,
            resolve_interval: Duration::ZERO,
            resolver: None,
            proxy_next_upstream: vec![NextUpstream::Error, NextUpstream::Timeout],
            proxy_next_upstream_tries: 0,
            proxy_next_upstream_timeout: Duration::ZERO,
            proxy_connect_timeout: DEFAULT_PROXY_TIMEOUT,
            proxy_read_timeout: DEFAULT_PROXY_TIMEOUT,
            proxy_send_timeout: DEFAULT_PROXY_TIMEOUT,
            client_header_timeout: DEFAULT_CLIENT_TIMEOUT,
            client_body_timeout: DEFAULT_CLIENT_TIMEOUT,
            send_timeout: DEFAULT_CLIENT_TIMEOUT,
            client_keepalive_timeout: DEFAULT_CLIENT_KEEPALIVE_TIMEOUT,
            client_keepalive_requests: DEFAULT_KEEPALIVE_REQUESTS,
            proxy_buffering: true,
            proxy_request_buffering: true,
            client_body_temp_path: None,
            proxy_buffers: "8 8k".into(),
            proxy_max_temp_file_size: 1 << 30,
            proxy_temp_path: None,
            upstream_prefix: None,
            proxy_cookie_path: Vec::new(),
            proxy_cookie_domain: Vec::new(),
            proxy_cache: false,
            proxy_cache_max_size: 64 << 20,
            proxy_cache_max_entry_size: 1 << 20,
            proxy_cache_valid: Vec::new(),
            proxy_cache_use_stale: Vec::new(),
            proxy_cache_lock: true,
            proxy_cache_lock_timeout: Duration::from_secs(5),
            proxy_cache_inactive: Duration::from_secs(600),
            proxy_cache_session: false,
            proxy_cache_revalidate: false,
            proxy_cache_convert_head: true,
            proxy_cache_background_update: false,
            proxy_cache_min_uses: 1,
            proxy_cache_key: String::new(),
            proxy_cache_bypass: Vec::new(),
            proxy_no_cache: Vec::new(),
            proxy_ignore_headers: Vec::new(),
            proxy_cache_purge_allow: Vec::new(),
            proxy_cache_status_header: String::new(),
            proxy_ssl_verify: true,
            proxy_ssl_trusted_certificate: None,
            proxy_ssl_crl: None,
            proxy_ssl_certificate: None,
            proxy_ssl_certificate_key: None,
            keepalive: DEFAULT_KEEPALIVE,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            keepalive_requests: DEFAULT_KEEPALIVE_REQUESTS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            upstream: Vec::new(),
            pool: Vec::new(),
            auth_basic: Vec::new(),
            statics: Vec::new(),
        }
    }
}

/// Parses every entry of a list with `parse`; the error gives the index of the first bad one.
pub(crate) fn parse_each<T>(
    entries: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (usize, String)> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| parse(e).map_err(|m| (i, m)))
        .collect()
}

/// Turns [`parse_each`]'s error into one naming the entry: `key[i]`.
fn entry_error(key: &str) -> impl FnOnce((usize, String)) -> ConfigError + '_ {
    move |(i, reason)| ConfigError::new(format!("{key}[{i}]"), reason)
}

/// The status of a refused request (`limit_req_status`, `limit_conn_status`): 4xx or 5xx.
fn refusal_status(code: u16, key: &str) -> Result<http::StatusCode, ConfigError> {
    http::StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| ConfigError::new(key, format!("{code} is not a 4xx or 5xx status")))
}

impl BalancerConfig {
    /// Checks the rules serde cannot express; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The method and hash key of the pool named `pool` (`None`: the default pool); an unknown
    /// name gets the balancer's (validation refuses one).
    pub fn pool_method(&self, pool: Option<&str>) -> (Method, &str) {
        let named = pool.and_then(|n| self.pool.iter().find(|p| p.name == n));
        match named {
            Some(p) => (
                p.method.unwrap_or(self.method),
                p.hash_key.as_deref().unwrap_or(&self.hash_key),
            ),
            None => (self.method, &self.hash_key),
        }
    }

    /// Reads the files the config names as applying it does (`error_page`, `ssl_certificate`,
    /// `ssl_certificate_key`), without opening the access log: what `ferrocat check-config`
    /// checks beyond [`BalancerConfig::validate`].
    pub fn check_files(&self) -> Result<(), ConfigError> {
        self.read_error_page()?;
        self.read_error_pages()?;
        self.tls_acceptor()?;
        self.upstream_tls()?;
        crate::auth::Locations::of(&self.auth_basic)?;
        Ok(())
    }

    /// The client side of TLS to the upstreams, if any upstream has `tls` (reads the trusted
    /// certificates and the client certificate).
    pub(crate) fn upstream_tls(&self) -> Result<Option<tokio_rustls::TlsConnector>, ConfigError> {
        if self.upstream.iter().any(|u| u.tls) {
            crate::upstream_tls::connector(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The contents of `error_pages`, by status; errors name the entry.
    pub(crate) fn read_error_pages(
        &self,
    ) -> Result<std::collections::HashMap<u16, bytes::Bytes>, ConfigError> {
        let mut pages = std::collections::HashMap::new();
        for (status, path) in &self.error_pages {
            let key = format!("balancer.error_pages.{status}");
            let code = status
                .parse::<u16>()
                .ok()
                .filter(|s| (400..=599).contains(s))
                .ok_or_else(|| ConfigError::new(&key, "not a status from 400 to 599"))?;
            let page = std::fs::read(path).map_err(|e| {
                ConfigError::new(&key, format!("cannot read {}: {e}", path.display()))
            })?;
            pages.insert(code, page.into());
        }
        Ok(pages)
    }

    /// The contents of `error_page`, if set.
    pub(crate) fn read_error_page(&self) -> Result<Option<bytes::Bytes>, ConfigError> {
        let Some(path) = &self.error_page else {
            return Ok(None);
        };
        let page = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                "balancer.error_page",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Ok(Some(page.into()))
    }

    /// `ssl_protocols` as rustls versions; the error names the first bad entry.
    pub(crate) fn tls_versions(
        &self,
    ) -> Result<Vec<&'static tokio_rustls::rustls::SupportedProtocolVersion>, ConfigError> {
        use tokio_rustls::rustls::version::{TLS12, TLS13};
        if self.ssl_protocols.is_empty() {
            return Err(ConfigError::new(
                "balancer.ssl_protocols",
                "must name at least one of TLSv1.2, TLSv1.3",
            ));
        }
        let mut versions = Vec::new();
        for (i, p) in self.ssl_protocols.iter().enumerate() {
            let v = match p.as_str() {
                "TLSv1.2" => &TLS12,
                "TLSv1.3" => &TLS13,
                "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => {
                    return Err(ConfigError::new(
                        format!("balancer.ssl_protocols[{i}]"),
                        format!("{p} is insecure and not supported; use TLSv1.2 and TLSv1.3"),
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("balancer.ssl_protocols[{i}]"),
                        format!("{p:?} is not TLSv1.2 or TLSv1.3"),
                    ))
                }
            };
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
        Ok(versions)
    }

    /// The TLS acceptor of `ssl_certificate` and `ssl_certificate_key`, if set.
    pub(crate) fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, ConfigError> {
        match (&self.ssl_certificate, &self.ssl_certificate_key) {
            (Some(cert), Some(key)) => {
                let clients = match (self.ssl_verify_client, &self.ssl_client_certificate) {
                    (VerifyClient::Off, _) | (_, None) => None,
                    (v, Some(ca)) => Some(crate::tls::Clients {
                        ca,
                        crl: self.ssl_crl.as_deref(),
                        optional: v == VerifyClient::Optional,
                    }),
                };
                let versions = self.tls_versions()?;
                crate::tls::acceptor(cert, key, &self.ssl_sni, (self.http2, &versions), clients)
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The access log's path, unless it is off.
    pub fn access_log_path(&self) -> Option<&std::path::Path> {
        self.access_log
            .as_deref()
            .filter(|p| p.as_os_str() != "off")
    }

    /// `redirect` parsed; the error names the first bad entry.
    /// `host_redirect` parsed; the error names the first bad entry.
    pub(crate) fn host_redirects(&self) -> Result<crate::redirect::HostRedirects, ConfigError> {
        crate::redirect::HostRedirects::parse(&self.host_redirect)
            .map_err(entry_error("balancer.host_redirect"))
    }

    pub(crate) fn redirects(&self) -> Result<crate::redirect::Redirects, ConfigError> {
        crate::redirect::Redirects::parse(&self.redirect).map_err(entry_error("balancer.redirect"))
    }

    /// `access` parsed; the error names the first bad entry.
    pub(crate) fn access_rules(&self) -> Result<crate::netmask::AccessRules, ConfigError> {
        crate::netmask::AccessRules::parse(&self.access).map_err(entry_error("balancer.access"))
    }

    /// `status_allow` parsed; the error names the first bad entry.
    pub(crate) fn status_allow_nets(&self) -> Result<Vec<crate::netmask::Net>, ConfigError> {
        parse_each(&self.status_allow, crate::netmask::Net::parse)
            .map_err(entry_error("balancer.status_allow"))
    }

    /// `set_real_ip_from`, `real_ip_header` and `real_ip_recursive` parsed (`None`: off); the
    /// error names the bad key.
    pub(crate) fn real_ip(&self) -> Result<Option<crate::realip::RealIp>, ConfigError> {
        let from = parse_each(&self.set_real_ip_from, crate::netmask::Net::parse)
            .map_err(entry_error("balancer.set_real_ip_from"))?;
        let header = self.real_ip_header.trim();
        if header.eq_ignore_ascii_case("proxy_protocol") {
            return Err(ConfigError::new(
                "balancer.real_ip_header",
                "the PROXY protocol is not supported; name a header such as X-Forwarded-For",
            ));
        }
        if header.is_empty() || !header.bytes().all(validate::is_token_byte) {
            return Err(ConfigError::new(
                "balancer.real_ip_header",
                format!("{:?} is not a header name", self.real_ip_header),
            ));
        }
        Ok(crate::realip::RealIp::new(
            from,
            header,
            self.real_ip_recursive,
        ))
    }

    /// `limit_req_*` parsed (`None`: off), with `table` as its state; the error names the bad
    /// key.
    pub(crate) fn rate_limit(
        &self,
        table: impl FnOnce() -> std::sync::Arc<crate::ratelimit::Table>,
    ) -> Result<Option<crate::ratelimit::RateLimit>, ConfigError> {
        let status = refusal_status(self.limit_req_status, "balancer.limit_req_status")?;
        if self.limit_req_rate.trim().is_empty() {
            return Ok(None);
        }
        let interval = crate::ratelimit::parse_rate(&self.limit_req_rate)
            .map_err(|e| ConfigError::new("balancer.limit_req_rate", e))?;
        let key = Some(self.limit_req_key.trim())
            .filter(|k| !k.is_empty())
            .map(crate::hashkey::HashKey::parse);
        Ok(Some(crate::ratelimit::RateLimit::new(
            interval,
            self.limit_req_burst,
            self.limit_req_nodelay,
            status,
            table(),
            key,
        )))
    }

    /// `limit_conn*` parsed (`None`: off), with `table` as its state; the error names the bad
    /// key.
    pub(crate) fn conn_limit(
        &self,
        table: impl FnOnce() -> std::sync::Arc<crate::connlimit::Table>,
    ) -> Result<Option<crate::connlimit::ConnLimit>, ConfigError> {
        let status = refusal_status(self.limit_conn_status, "balancer.limit_conn_status")?;
        if self.limit_conn > crate::connlimit::MAX_LIMIT {
            return Err(ConfigError::new(
                "balancer.limit_conn",
                format!(
                    "{} is above the largest count, {}",
                    self.limit_conn,
                    crate::connlimit::MAX_LIMIT
                ),
            ));
        }
        let key = Some(self.limit_conn_key.trim())
            .filter(|k| !k.is_empty())
            .map(crate::hashkey::HashKey::parse);
        if self.limit_conn == 0 {
            if key.is_some() {
                return Err(ConfigError::new(
                    "balancer.limit_conn_key",
                    "set without limit_conn (the number of requests in flight allowed per key)",
                ));
            }
            return Ok(None);
        }
        Ok(Some(crate::connlimit::ConnLimit {
            max: self.limit_conn,
            status,
            table: table(),
            key,
        }))
    }

    /// Number of worker threads to run (`workers = 0` means one per core).
    pub fn effective_workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        }
    }
}
