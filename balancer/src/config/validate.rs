//! The rules of [`BalancerConfig::validate`], one function per concern, one test per rule.

use std::collections::HashSet;

use super::{BalancerConfig, ConfigError, HealthCheckConfig, Method, NextUpstream, MAX_WEIGHT};

/// Largest `workers` value accepted.
const MAX_WORKERS: usize = 256;

pub(super) fn validate(cfg: &BalancerConfig) -> Result<(), ConfigError> {
    if cfg.workers > MAX_WORKERS {
        return Err(ConfigError::new(
            "balancer.workers",
            format!("at most {MAX_WORKERS}"),
        ));
    }
    match (
        cfg.ssl_listen,
        &cfg.ssl_certificate,
        &cfg.ssl_certificate_key,
    ) {
        (None, None, None) | (Some(_), Some(_), Some(_)) => {}
        (Some(_), None, _) => {
            return Err(ConfigError::new(
                "balancer.ssl_certificate",
                "required with ssl_listen",
            ))
        }
        (Some(_), _, None) => {
            return Err(ConfigError::new(
                "balancer.ssl_certificate_key",
                "required with ssl_listen",
            ))
        }
        (None, _, _) => return Err(ConfigError::new(
            "balancer.ssl_listen",
            "required with ssl_certificate and ssl_certificate_key (the address that speaks TLS)",
        )),
    }
    if cfg.proxy_ssl_crl.is_some() && !cfg.proxy_ssl_verify {
        return Err(ConfigError::new(
            "balancer.proxy_ssl_crl",
            "needs proxy_ssl_verify (revocation is part of verifying the upstreams)",
        ));
    }
    match (&cfg.proxy_ssl_certificate, &cfg.proxy_ssl_certificate_key) {
        (Some(_), None) => {
            return Err(ConfigError::new(
                "balancer.proxy_ssl_certificate_key",
                "required with proxy_ssl_certificate",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "balancer.proxy_ssl_certificate",
                "required with proxy_ssl_certificate_key",
            ))
        }
        _ => {}
    }
    if cfg.ssl_verify_client != super::VerifyClient::Off {
        if cfg.ssl_listen.is_none() {
            return Err(ConfigError::new(
                "balancer.ssl_verify_client",
                "needs ssl_listen (client certificates come over TLS)",
            ));
        }
        if cfg.ssl_client_certificate.is_none() {
            return Err(ConfigError::new(
                "balancer.ssl_client_certificate",
                "required with ssl_verify_client (the CA client certificates are signed by)",
            ));
        }
    }
    if cfg.ssl_crl.is_some() && cfg.ssl_verify_client == super::VerifyClient::Off {
        return Err(ConfigError::new(
            "balancer.ssl_crl",
            "needs ssl_verify_client (the revocation lists are for client certificates)",
        ));
    }
    if cfg.ssl_redirect && cfg.ssl_listen.is_none() {
        return Err(ConfigError::new(
            "balancer.ssl_redirect",
            "needs ssl_listen (where to redirect to)",
        ));
    }
    if !cfg.ssl_sni.is_empty() && cfg.ssl_listen.is_none() {
        return Err(ConfigError::new(
            "balancer.ssl_sni",
            "needs ssl_listen and its default ssl_certificate",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, sni) in cfg.ssl_sni.iter().enumerate() {
        if sni.server_name.is_empty() {
            return Err(ConfigError::new(
                format!("balancer.ssl_sni[{i}].server_name"),
                "names no host",
            ));
        }
        for (j, name) in sni.server_name.iter().enumerate() {
            let key = format!("balancer.ssl_sni[{i}].server_name[{j}]");
            if !crate::tls::valid_server_name(name) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{name:?} is not a host name or a wildcard of one label (*.example.com)"
                    ),
                ));
            }
            if !names.insert(name.to_ascii_lowercase()) {
                return Err(ConfigError::new(key, format!("{name:?} is listed twice")));
            }
        }
    }
    if cfg.http2 && cfg.ssl_listen.is_none() {
        return Err(ConfigError::new(
            "balancer.http2",
            "needs ssl_listen (HTTP/2 is offered through TLS's ALPN)",
        ));
    }
    if cfg.ssl_listen == Some(cfg.listen) && cfg.listen.port() != 0 {
        return Err(ConfigError::new(
            "balancer.ssl_listen",
            "must differ from listen",
        ));
    }
    if cfg.method == Method::Hash && cfg.hash_key.trim().is_empty() {
        return Err(ConfigError::new(
            "balancer.hash_key",
            "required with method = \"hash\"",
        ));
    }
    for (i, pattern) in cfg.deny.iter().enumerate() {
        if let Err(e) = regex::Regex::new(pattern) {
            return Err(ConfigError::new(
                format!("balancer.deny[{i}]"),
                format!("invalid regex: {e}"),
            ));
        }
    }
    if let Some(page) = &cfg.error_page {
        if let Err(e) = std::fs::metadata(page) {
            return Err(ConfigError::new(
                "balancer.error_page",
                format!("cannot read {}: {e}", page.display()),
            ));
        }
    }
    if let Some(log) = cfg.access_log_path() {
        let dir = match log.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if log.as_os_str().is_empty() || log.is_dir() {
            return Err(ConfigError::new(
                "balancer.access_log",
                format!("{:?} is not a file path", log.display().to_string()),
            ));
        }
        if !dir.is_dir() {
            return Err(ConfigError::new(
                "balancer.access_log",
                format!("directory {} does not exist", dir.display()),
            ));
        }
    }
    if let Some(path) = &cfg.status_path {
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?') {
            return Err(ConfigError::new(
                "balancer.status_path",
                "must start with / and hold no spaces, control characters or query",
            ));
        }
    }
    cfg.status_allow_nets()?;
    cfg.access_rules()?;
    cfg.redirects()?;
    cfg.host_redirects()?;
    cfg.real_ip()?;
    let added = crate::custom_headers::CustomHeaders::parse(&cfg.add_header, "add_header", false)?;
    let set = crate::custom_headers::CustomHeaders::parse(
        &cfg.proxy_set_header,
        "proxy_set_header",
        true,
    )?;
    let rid = cfg.request_id_header.trim();
    if !rid.is_empty() {
        let key = "balancer.request_id_header";
        if !rid.bytes().all(is_token_byte) {
            return Err(ConfigError::new(
                key,
                format!("{rid:?} is not a header name"),
            ));
        }
        if crate::headers::kind(rid) != crate::headers::Kind::Other {
            return Err(ConfigError::new(
                key,
                format!("{rid} is managed by the balancer"),
            ));
        }
        if set.names(rid) || added.names(rid) {
            return Err(ConfigError::new(
                key,
                format!("{rid} is also in proxy_set_header or add_header"),
            ));
        }
    }
    crate::relocate::ProxyRedirect::parse(&cfg.proxy_redirect)
        .map_err(|(i, m)| ConfigError::new(format!("balancer.proxy_redirect[{i}]"), m))?;
    crate::relocate::CookieRewrite::parse(&cfg.proxy_cookie_path, &cfg.proxy_cookie_domain)
        .map_err(|(key, m)| ConfigError::new(key, m))?;
    crate::cache::Policy::of(cfg, None)?;
    for (i, name) in cfg.proxy_hide_header.iter().enumerate() {
        let key = format!("balancer.proxy_hide_header[{i}]");
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ConfigError::new(
                key,
                format!("{name:?} is not a header name"),
            ));
        }
        if crate::headers::kind(name) != crate::headers::Kind::Other {
            return Err(ConfigError::new(
                key,
                format!("{name} is managed by the balancer"),
            ));
        }
    }
    crate::gzip::Policy::of(cfg)?;
    crate::buffering::Policy::of(cfg)?;
    cfg.rate_limit(|| std::sync::Arc::new(crate::ratelimit::Table::new()))?;
    cfg.conn_limit(|| std::sync::Arc::new(crate::connlimit::Table::new()))?;
    if !cfg.sticky_cookie.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            "balancer.sticky_cookie",
            "not a valid cookie name",
        ));
    }
    if cfg.proxy_next_upstream.len() > 1 && cfg.proxy_next_upstream.contains(&NextUpstream::Off) {
        return Err(ConfigError::new(
            "balancer.proxy_next_upstream",
            "\"off\" cannot be combined with other conditions",
        ));
    }
    for (key, d) in [
        ("proxy_connect_timeout", cfg.proxy_connect_timeout),
        ("proxy_read_timeout", cfg.proxy_read_timeout),
        ("proxy_send_timeout", cfg.proxy_send_timeout),
        ("client_header_timeout", cfg.client_header_timeout),
        ("client_body_timeout", cfg.client_body_timeout),
        ("send_timeout", cfg.send_timeout),
        ("client_keepalive_timeout", cfg.client_keepalive_timeout),
    ] {
        if d.is_zero() {
            return Err(ConfigError::new(
                format!("balancer.{key}"),
                "must be greater than 0",
            ));
        }
    }
    if let Some(hc) = &cfg.health_check {
        validate_health(hc)?;
    }
    validate_upstreams(cfg)?;
    validate_pools(cfg)?;
    validate_statics(cfg)
}

pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn validate_health(hc: &HealthCheckConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("balancer.health_check.{k}");
    if !hc.path.starts_with('/') {
        return Err(ConfigError::new(key("path"), "must start with '/'"));
    }
    if hc.interval.is_zero() {
        return Err(ConfigError::new(key("interval"), "must be greater than 0"));
    }
    if hc.timeout.is_zero() {
        return Err(ConfigError::new(key("timeout"), "must be greater than 0"));
    }
    if hc.rise == 0 {
        return Err(ConfigError::new(key("rise"), "must be at least 1"));
    }
    if hc.fall == 0 {
        return Err(ConfigError::new(key("fall"), "must be at least 1"));
    }
    if let Some(s) = hc.expect_status.iter().find(|s| !(100..=599).contains(*s)) {
        return Err(ConfigError::new(
            key("expect_status"),
            format!("{s} is not an HTTP status"),
        ));
    }
    Ok(())
}

/// What `strip_prefix` and `upstream_prefix` must look like.
const PREFIX_RULE: &str =
    "must be a path such as \"/api\" (a leading '/', no trailing '/', no '?' or '#')";

fn valid_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && prefix.len() >= 2
        && !prefix.ends_with('/')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

fn validate_pools(cfg: &BalancerConfig) -> Result<(), ConfigError> {
    if cfg
        .upstream_prefix
        .as_deref()
        .is_some_and(|p| !valid_prefix(p))
    {
        return Err(ConfigError::new("balancer.upstream_prefix", PREFIX_RULE));
    }
    let mut names = HashSet::new();
    for (i, pool) in cfg.pool.iter().enumerate() {
        let key = |k: &str| format!("balancer.pool[{i}].{k}");
        if pool.name.is_empty() || !pool.name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                key("name"),
                "must be non-empty and printable, without spaces",
            ));
        }
        if !names.insert(pool.name.as_str()) {
            return Err(ConfigError::new(
                key("name"),
                format!("{:?} is used twice", pool.name),
            ));
        }
        if pool.paths.is_empty() && pool.hosts.is_empty() {
            return Err(ConfigError::new(
                key("paths"),
                "needs at least one path regex or host (no request would reach the pool)",
            ));
        }
        for (j, host) in pool.hosts.iter().enumerate() {
            if !crate::tls::valid_server_name(host) {
                return Err(ConfigError::new(
                    format!("balancer.pool[{i}].hosts[{j}]"),
                    format!("{host:?} is not a host name or a wildcard such as \"*.shop.example\""),
                ));
            }
        }
        for (j, pattern) in pool.paths.iter().enumerate() {
            if let Err(e) = regex::Regex::new(pattern) {
                return Err(ConfigError::new(
                    format!("balancer.pool[{i}].paths[{j}]"),
                    format!("invalid regex: {e}"),
                ));
            }
        }
        for (name, prefix) in [
            ("strip_prefix", &pool.strip_prefix),
            ("upstream_prefix", &pool.upstream_prefix),
        ] {
            if prefix.as_deref().is_some_and(|p| !valid_prefix(p)) {
                return Err(ConfigError::new(key(name), PREFIX_RULE));
            }
        }
        let (method, hash_key) = cfg.pool_method(Some(&pool.name));
        if method == Method::Hash && hash_key.trim().is_empty() {
            return Err(ConfigError::new(
                key("hash_key"),
                "required with method = \"hash\"",
            ));
        }
        if !cfg
            .upstream
            .iter()
            .any(|u| u.pool.as_deref() == Some(pool.name.as_str()))
        {
            return Err(ConfigError::new(
                key("name"),
                format!("no upstream has pool = {:?}", pool.name),
            ));
        }
    }
    Ok(())
}

fn validate_statics(cfg: &BalancerConfig) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, st) in cfg.statics.iter().enumerate() {
        let key = |k: &str| format!("balancer.static[{i}].{k}");
        let loc = st.location.as_str();
        if !loc.starts_with('/')
            || !loc
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%')
            || loc.split('/').any(|seg| seg == "." || seg == "..")
            || loc.contains("//")
        {
            return Err(ConfigError::new(
                key("location"),
                "must be a plain path such as \"/static/\" (a leading '/', no '?', '#', '%', '//' or dot segments)",
            ));
        }
        if !seen.insert(loc.trim_end_matches('/')) {
            return Err(ConfigError::new(
                key("location"),
                format!("{loc:?} is used twice"),
            ));
        }
        let (dir, name) = match (&st.root, &st.alias) {
            (Some(d), None) => (d, "root"),
            (None, Some(d)) => (d, "alias"),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("alias"),
                    "set root or alias, not both",
                ))
            }
            (None, None) => return Err(ConfigError::new(key("root"), "root or alias is required")),
        };
        if !dir.is_dir() {
            return Err(ConfigError::new(
                key(name),
                format!("{} is not a directory", dir.display()),
            ));
        }
        if let Some(bad) = st
            .index
            .iter()
            .find(|f| f.is_empty() || f.contains('/') || *f == "." || *f == "..")
        {
            return Err(ConfigError::new(
                key("index"),
                format!("{bad:?} is not a file name"),
            ));
        }
        if st
            .expires
            .is_some_and(|e| e.as_secs() > 10 * 365 * 24 * 3600)
        {
            return Err(ConfigError::new(key("expires"), "at most 10 years"));
        }
        if st.charset.as_deref().is_some_and(|cs| {
            cs.is_empty()
                || !cs
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        }) {
            return Err(ConfigError::new(
                key("charset"),
                "must be a charset name such as \"utf-8\"",
            ));
        }
        if let Some(f) = &st.fallback {
            if f.is_empty()
                || f.starts_with('/')
                || f.ends_with('/')
                || f.split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(ConfigError::new(
                    key("fallback"),
                    "must name a file under the location, such as \"index.html\"",
                ));
            }
            if st.try_upstream {
                return Err(ConfigError::new(
                    key("fallback"),
                    "set fallback or try_upstream, not both",
                ));
            }
        }
        if st.cache_valid > std::time::Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(key("cache_valid"), "at most 1 day"));
        }
    }
    Ok(())
}

fn validate_upstreams(cfg: &BalancerConfig) -> Result<(), ConfigError> {
    let mut addresses = HashSet::new();
    let mut routes = HashSet::new();
    for (i, up) in cfg.upstream.iter().enumerate() {
        let key = |k: &str| format!("balancer.upstream[{i}].{k}");
        if !valid_host_port(&up.address) {
            return Err(ConfigError::new(
                key("address"),
                format!("{:?} is not host:port", up.address),
            ));
        }
        if !addresses.insert(up.address.as_str()) {
            return Err(ConfigError::new(
                key("address"),
                format!("{} is listed twice", up.address),
            ));
        }
        if up.weight == 0 || up.weight > MAX_WEIGHT {
            return Err(ConfigError::new(
                key("weight"),
                format!("must be between 1 and {MAX_WEIGHT}"),
            ));
        }
        if let Some(route) = &up.route {
            if route.is_empty()
                || !route
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'.' && b != b';')
            {
                return Err(ConfigError::new(
                    key("route"),
                    "must be non-empty, printable, without '.', ';' or spaces",
                ));
            }
            if !routes.insert(route.as_str()) {
                return Err(ConfigError::new(
                    key("route"),
                    format!("{route:?} is used twice"),
                ));
            }
        }
        if let Some(name) = &up.tls_name {
            if !up.tls {
                return Err(ConfigError::new(key("tls_name"), "needs tls = true"));
            }
            crate::upstream_tls::server_name(name)
                .map_err(|e| ConfigError::new(key("tls_name"), e))?;
        }
        if up.max_fails > 0 && up.fail_timeout.is_zero() {
            return Err(ConfigError::new(
                key("fail_timeout"),
                "must be greater than 0",
            ));
        }
        if let Some(pool) = &up.pool {
            if !cfg.pool.iter().any(|p| &p.name == pool) {
                return Err(ConfigError::new(
                    key("pool"),
                    format!("no [[balancer.pool]] is named {pool:?}"),
                ));
            }
        }
        let (method, _) = cfg.pool_method(up.pool.as_deref());
        if !up.slow_start.is_zero()
            && matches!(method, Method::IpHash | Method::Hash | Method::Random)
        {
            return Err(ConfigError::new(
                key("slow_start"),
                "not supported with the hash, ip_hash and random methods (as in nginx)",
            ));
        }
        if up.backup && matches!(method, Method::IpHash | Method::Hash | Method::Random) {
            return Err(ConfigError::new(
                key("backup"),
                "not supported with the hash, ip_hash and random methods (as in nginx)",
            ));
        }
    }
    Ok(())
}

fn valid_host_port(address: &str) -> bool {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', ' ', '[', ']'])
                && port.parse::<u16>().map(|p| p > 0).unwrap_or(false)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::UpstreamConfig;
    use super::*;
    use std::time::Duration;

    fn with_upstreams(ups: Vec<UpstreamConfig>) -> BalancerConfig {
        BalancerConfig {
            upstream: ups,
            ..BalancerConfig::default()
        }
    }

    fn key_of(cfg: &BalancerConfig) -> String {
        cfg.validate().expect_err("config should be rejected").key
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(BalancerConfig::default().validate(), Ok(()));
        let cfg = with_upstreams(vec![
            UpstreamConfig::new("127.0.0.1:8081").with_route("app1"),
            UpstreamConfig::new("localhost:8082").with_route("app2"),
        ]);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn status_path_must_be_a_plain_path() {
        for bad in ["status", "/a b", "/s?x=1", "/s\u{7f}"] {
            let cfg = BalancerConfig {
                status_path: Some(bad.into()),
                ..BalancerConfig::default()
            };
            assert_eq!(key_of(&cfg), "balancer.status_path", "{bad:?}");
        }
        let cfg = BalancerConfig {
            status_path: Some("/ferrocat/upstreams".into()),
            ..BalancerConfig::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn too_many_workers_is_rejected() {
        let cfg = BalancerConfig {
            workers: 10_000,
            ..BalancerConfig::default()
        };
        assert_eq!(key_of(&cfg), "balancer.workers");
    }

    #[test]
    fn hash_method_needs_a_key() {
        let cfg = BalancerConfig {
            method: Method::Hash,
            hash_key: " ".into(),
            ..Default::default()
        };
        assert_eq!(key_of(&cfg), "balancer.hash_key");
    }

    #[test]
    fn invalid_deny_regex_names_its_index() {
        let cfg = BalancerConfig {
            deny: vec!["^/ok".into(), "(".into()],
            ..Default::default()
        };
        assert_eq!(key_of(&cfg), "balancer.deny[1]");
    }

    #[test]
    fn missing_error_page_is_rejected() {
        let cfg = BalancerConfig {
            error_page: Some("/nonexistent/ferrocat/50x.html".into()),
            ..Default::default()
        };
        assert_eq!(key_of(&cfg), "balancer.error_page");
    }

    #[test]
    fn sticky_cookie_must_be_a_token() {
        let cfg = BalancerConfig {
            sticky_cookie: "JSESSION ID".into(),
            ..Default::default()
        };
        assert_eq!(key_of(&cfg), "balancer.sticky_cookie");
    }

    #[test]
    fn next_upstream_off_stands_alone() {
        let cfg = BalancerConfig {
            proxy_next_upstream: vec![NextUpstream::Error, NextUpstream::Off],
            ..Default::default()
        };
        assert_eq!(key_of(&cfg), "balancer.proxy_next_upstream");
    }

    #[test]
    fn zero_proxy_timeouts_are_rejected() {
        let cfg = BalancerConfig {
            proxy_read_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(key_of(&cfg), "balancer.proxy_read_timeout");
    }

    #[test]
    fn health_check_rules() {
        let bad = |hc: HealthCheckConfig| BalancerConfig {
            health_check: Some(hc),
            ..Default::default()
        };
        let d = HealthCheckConfig::default;
        assert_eq!(
            key_of(&bad(HealthCheckConfig {
                path: "health".into(),
                ..d()
            })),
            "balancer.health_check.path"
        );
        assert_eq!(
            key_of(&bad(HealthCheckConfig {
                interval: Duration::ZERO,
                ..d()
            })),
            "balancer.health_check.interval"
        );
        assert_eq!(
            key_of(&bad(HealthCheckConfig {
                timeout: Duration::ZERO,
                ..d()
            })),
            "balancer.health_check.timeout"
        );
        assert_eq!(
            key_of(&bad(HealthCheckConfig { rise: 0, ..d() })),
            "balancer.health_check.rise"
        );
        assert_eq!(
            key_of(&bad(HealthCheckConfig { fall: 0, ..d() })),
            "balancer.health_check.fall"
        );
        assert_eq!(
            key_of(&bad(HealthCheckConfig {
                expect_status: vec![200, 99],
                ..d()
            })),
            "balancer.health_check.expect_status"
        );
    }

    #[test]
    fn upstream_address_must_be_host_port() {
        for bad in ["127.0.0.1", "http://a:80", ":80", "a:0", "a:99999"] {
            let cfg = with_upstreams(vec![UpstreamConfig::new(bad)]);
            assert_eq!(key_of(&cfg), "balancer.upstream[0].address", "{bad}");
        }
        assert!(with_upstreams(vec![UpstreamConfig::new("[::1]:80")])
            .validate()
            .is_ok());
    }

    #[test]
    fn duplicate_upstream_address_is_rejected() {
        let cfg = with_upstreams(vec![
            UpstreamConfig::new("127.0.0.1:1"),
            UpstreamConfig::new("127.0.0.1:1"),
        ]);
        assert_eq!(key_of(&cfg), "balancer.upstream[1].address");
    }

    #[test]
    fn weight_must_be_between_1_and_max() {
        let cfg = with_upstreams(vec![UpstreamConfig::new("127.0.0.1:1").with_weight(0)]);
        assert_eq!(key_of(&cfg), "balancer.upstream[0].weight");
        let cfg = with_upstreams(vec![
            UpstreamConfig::new("127.0.0.1:1").with_weight(MAX_WEIGHT + 1)
        ]);
        assert_eq!(key_of(&cfg), "balancer.upstream[0].weight");
    }

    #[test]
    fn route_must_be_a_clean_suffix() {
        for bad in ["", "a.b", "a b", "a;b"] {
            let cfg = with_upstreams(vec![UpstreamConfig::new("127.0.0.1:1").with_route(bad)]);
            assert_eq!(key_of(&cfg), "balancer.upstream[0].route", "{bad:?}");
        }
    }

    #[test]
    fn duplicate_route_is_rejected() {
        let cfg = with_upstreams(vec![
            UpstreamConfig::new("127.0.0.1:1").with_route("app1"),
            UpstreamConfig::new("127.0.0.1:2").with_route("app1"),
        ]);
        assert_eq!(key_of(&cfg), "balancer.upstream[1].route");
    }

    #[test]
    fn fail_timeout_must_be_positive_when_counting_failures() {
        let mut up = UpstreamConfig::new("127.0.0.1:1");
        up.fail_timeout = Duration::ZERO;
        assert_eq!(
            key_of(&with_upstreams(vec![up.clone()])),
            "balancer.upstream[0].fail_timeout"
        );
        up.max_fails = 0;
        assert!(with_upstreams(vec![up]).validate().is_ok());
    }

    #[test]
    fn backup_is_rejected_with_hash_methods() {
        let mut up = UpstreamConfig::new("127.0.0.1:1");
        up.backup = true;
        let cfg = BalancerConfig {
            method: Method::IpHash,
            ..with_upstreams(vec![up])
        };
        assert_eq!(key_of(&cfg), "balancer.upstream[0].backup");
    }

    #[test]
    fn serde_rejects_unknown_keys_and_negative_weights() {
        let err = toml::from_str::<BalancerConfig>("listen = \"127.0.0.1:0\"\nlisten_port = 1\n");
        assert!(err.is_err());
        let err = toml::from_str::<BalancerConfig>(
            "[[upstream]]\naddress = \"127.0.0.1:1\"\nweight = -1\n",
        );
        assert!(err.is_err());
        let cfg: BalancerConfig = toml::from_str(
            "client_max_body_size = \"100m\"\nmethod = \"least_conn\"\n[[upstream]]\naddress = \"127.0.0.1:1\"\nfail_timeout = \"3s\"\n",
        )
        .expect("valid toml");
        assert_eq!(cfg.client_max_body_size, 100 << 20);
        assert_eq!(cfg.method, Method::LeastConn);
        assert_eq!(cfg.upstream[0].fail_timeout, Duration::from_secs(3));
        assert_eq!(cfg.upstream[0].max_fails, 1);
    }
}
