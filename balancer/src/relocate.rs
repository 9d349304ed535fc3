//! `proxy_redirect` (nginx's): the `Location` and `Refresh` headers of upstream answers
//! rewritten, so that an app server's redirect to its own address, or to `http://` behind a
//! balancer that terminated TLS, points the client at the public URL.
//!
//! Each entry is `"default"` or `"<from> <to>"`: a `Location` (or the URL of a `Refresh`)
//! that starts with `from` (compared without case) has that prefix replaced by `to`; the first
//! entry that matches applies. Both may name `$host` (the request's `Host` without its port)
//! and `$scheme` (`http` or `https`, as the client came, or as a trusted proxy in front says in
//! `X-Forwarded-Proto`), also written `${host}`, `${scheme}`; `$$` is a `$`. `"default"` is
//! `http://<upstream address><the pool's upstream_prefix>/` (`https://` for a `tls` upstream)
//! replaced by `<the pool's strip_prefix>/`, as nginx's default replaces the `proxy_pass` URL
//! with the location.
//!
//! [`CookieRewrite`] does the same for `Set-Cookie` (nginx `proxy_cookie_path` and
//! `proxy_cookie_domain`): a webapp that sets `Path=/app` under its context path gets the
//! public path instead, or its `Domain` is replaced.

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Default,
    Replace { from: String, to: String },
}

/// The parsed `proxy_redirect` list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyRedirect {
    rules: Vec<Rule>,
    /// Some rule names `$host` (the request's host must be kept for the answer).
    pub uses_host: bool,
}

/// What the rules' variables and `default` stand for in one answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Vars<'a> {
    /// The request's host name, without its port.
    pub host: &'a [u8],
    pub https: bool,
    /// The upstream's configured `host:port`.
    pub upstream: &'a str,
    /// The `strip_prefix` of the upstream's pool, if any.
    pub prefix: &'a str,
    /// The `upstream_prefix` of the upstream's pool, if any.
    pub upstream_prefix: &'a str,
    /// The upstream speaks TLS (its own URLs are `https://`).
    pub upstream_tls: bool,
}

impl ProxyRedirect {
    /// Parses the entries; the error names the index of the first bad one.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        let mut rules = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let mut words = entry.split_whitespace();
            let rule = match (words.next(), words.next(), words.next()) {
                (Some("default"), None, None) => Rule::Default,
                (Some(from), Some(to), None) if from != "default" => {
                    for t in [from, to] {
                        check_template(t).map_err(|m| (i, m))?;
                    }
                    Rule::Replace {
                        from: from.to_owned(),
                        to: to.to_owned(),
                    }
                }
                _ => {
                    return Err((
                        i,
                        format!("{entry:?}: expected \"default\" or \"<from> <to>\""),
                    ))
                }
            };
            rules.push(rule);
        }
        let uses_host = rules.iter().any(|r| match r {
            Rule::Replace { from, to } => [from, to]
                .iter()
                .any(|t| t.contains("$host") || t.contains("${host}")),
            Rule::Default => false,
        });
        Ok(Self { rules, uses_host })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rewritten value of a `Location` header, if a rule applies.
    pub fn location(&self, value: &[u8], vars: &Vars<'_>) -> Option<Vec<u8>> {
        let mut from = Vec::new();
        for rule in &self.rules {
            from.clear();
            let to_template = match rule {
                Rule::Default => {
                    from.extend_from_slice(if vars.upstream_tls {
                        b"https://"
                    } else {
                        b"http://"
                    });
                    from.extend_from_slice(vars.upstream.as_bytes());
                    from.extend_from_slice(vars.upstream_prefix.as_bytes());
                    from.push(b'/');
                    None
                }
                Rule::Replace { from: f, to } => {
                    expand(f, vars, &mut from);
                    Some(to)
                }
            };
            let matches = !from.is_empty()
                && value.len() >= from.len()
                && value[..from.len()].eq_ignore_ascii_case(&from);
            if !matches {
                continue;
            }
            let mut out = Vec::with_capacity(value.len() + 16);
            match to_template {
                None => {
                    out.extend_from_slice(vars.prefix.as_bytes());
                    out.push(b'/');
                }
                Some(to) => expand(to, vars, &mut out),
            }
            out.extend_from_slice(&value[from.len()..]);
            return Some(out);
        }
        None
    }

    /// The rewritten value of a `Refresh` header (`5; url=...`), if a rule applies to its URL.
    pub fn refresh(&self, value: &[u8], vars: &Vars<'_>) -> Option<Vec<u8>> {
        let at = value
            .windows(4)
            .position(|w| w.eq_ignore_ascii_case(b"url="))?
            + 4;
        let url = self.location(&value[at..], vars)?;
        let mut out = value[..at].to_vec();
        out.extend_from_slice(&url);
        Some(out)
    }
}

/// The parsed `proxy_cookie_path` and `proxy_cookie_domain` lists.
#[derive(Debug, Clone, Default)]
pub(crate) struct CookieRewrite {
    paths: Vec<Rule>,
    /// (domain without a leading `.`, replacement template).
    domains: Vec<(String, String)>,
    /// Some rule names `$host`.
    pub uses_host: bool,
}

impl CookieRewrite {
    /// Parses both lists; the error names the key and index of the first bad entry.
    pub fn parse(paths: &[String], domains: &[String]) -> Result<Self, (String, String)> {
        let named = |key: &str, i: usize, m: String| (format!("balancer.{key}[{i}]"), m);
        let redirect =
            ProxyRedirect::parse(paths).map_err(|(i, m)| named("proxy_cookie_path", i, m))?;
        let mut out = Self {
            paths: redirect.rules,
            domains: Vec::with_capacity(domains.len()),
            uses_host: redirect.uses_host,
        };
        for (i, entry) in domains.iter().enumerate() {
            let mut words = entry.split_whitespace();
            let (Some(from), Some(to), None) = (words.next(), words.next(), words.next()) else {
                return Err(named(
                    "proxy_cookie_domain",
                    i,
                    format!("{entry:?}: expected \"<from> <to>\""),
                ));
            };
            check_template(to).map_err(|m| named("proxy_cookie_domain", i, m))?;
            out.uses_host |= to.contains("$host") || to.contains("${host}");
            let from = from.strip_prefix('.').unwrap_or(from).to_ascii_lowercase();
            out.domains.push((from, to.to_owned()));
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.domains.is_empty()
    }

    /// The rewritten value of a `Set-Cookie` header, if a rule changed its `Path` or `Domain`.
    pub fn set_cookie(&self, value: &[u8], vars: &Vars<'_>) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(value.len() + 16);
        let mut changed = false;
        for (i, part) in value.split(|&b| b == b';').enumerate() {
            if i > 0 {
                out.push(b';');
            }
            let attr = part.trim_ascii_start();
            let lead = &part[..part.len() - attr.len()];
            let new = if i == 0 {
                None
            } else if attr.len() >= 5 && attr[..5].eq_ignore_ascii_case(b"path=") {
                self.path(attr[5..].trim_ascii(), vars)
                    .map(|v| (&attr[..5], v))
            } else if attr.len() >= 7 && attr[..7].eq_ignore_ascii_case(b"domain=") {
                self.domain(attr[7..].trim_ascii(), vars)
                    .map(|v| (&attr[..7], v))
            } else {
                None
            };
            match new {
                Some((name, v)) => {
                    out.extend_from_slice(lead);
                    out.extend_from_slice(name);
                    out.extend_from_slice(&v);
                    changed = true;
                }
                None => out.extend_from_slice(part),
            }
        }
        changed.then_some(out)
    }

    fn path(&self, path: &[u8], vars: &Vars<'_>) -> Option<Vec<u8>> {
        let mut from = Vec::new();
        for rule in &self.paths {
            match rule {
                Rule::Default => {
                    // The upstream's path space (under upstream_prefix) onto the public one
                    // (under strip_prefix).
                    let up = vars.upstream_prefix.as_bytes();
                    let rest = if up.is_empty() {
                        path
                    } else if path.eq_ignore_ascii_case(up) {
                        b""
                    } else if path.len() > up.len()
                        && path[..up.len()].eq_ignore_ascii_case(up)
                        && path[up.len()] == b'/'
                    {
                        &path[up.len()..]
                    } else {
                        continue;
                    };
                    if up.is_empty() && vars.prefix.is_empty() {
                        continue;
                    }
                    let mut out = vars.prefix.as_bytes().to_vec();
                    // The upstream's root is the public prefix itself (`/shop`, not `/shop/`).
                    if !(up.is_empty() && rest == b"/") {
                        out.extend_from_slice(rest);
                    }
                    if out.is_empty() {
                        out.push(b'/');
                    }
                    return Some(out);
                }
                Rule::Replace { from: f, to } => {
                    from.clear();
                    expand(f, vars, &mut from);
                    if !from.is_empty()
                        && path.len() >= from.len()
                        && path[..from.len()].eq_ignore_ascii_case(&from)
                    {
                        let mut out = Vec::with_capacity(path.len() + to.len());
                        expand(to, vars, &mut out);
                        out.extend_from_slice(&path[from.len()..]);
                        return Some(out);
                    }
                }
            }
        }
        None
    }

    fn domain(&self, domain: &[u8], vars: &Vars<'_>) -> Option<Vec<u8>> {
        let bare = domain.strip_prefix(b".").unwrap_or(domain);
        let (_, to) = self
            .domains
            .iter()
            .find(|(from, _)| bare.eq_ignore_ascii_case(from.as_bytes()))?;
        let mut out = Vec::with_capacity(to.len() + 8);
        expand(to, vars, &mut out);
        Some(out)
    }
}

/// Only `$host`, `$scheme` (also as `${host}`, `${scheme}`, see
/// [`crate::redirect::request_var`]) and `$$`.
fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        let len = match after.strip_prefix('$') {
            Some(_) => 1,
            None => crate::redirect::request_var(after)
                .map(|(_, len)| len)
                .ok_or_else(|| format!("{t:?}: only $host, $scheme and $$ can be used"))?,
        };
        rest = &after[len..];
    }
    Ok(())
}

fn expand(t: &str, vars: &Vars<'_>, out: &mut Vec<u8>) {
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push(b'$');
            rest = r;
        } else if let Some((name, len)) = crate::redirect::request_var(after) {
            match name {
                "host" => out.extend_from_slice(vars.host),
                _ => out.extend_from_slice(if vars.https { b"https" } else { b"http" }),
            }
            rest = &after[len..];
        } else {
            // Refused when parsed; kept as written.
            out.push(b'$');
            rest = after;
        }
    }
    out.extend_from_slice(rest.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(host: &'a str, https: bool, prefix: &'a str) -> Vars<'a> {
        Vars {
            host: host.as_bytes(),
            https,
            upstream: "127.0.0.1:8081",
            prefix,
            upstream_prefix: "",
            upstream_tls: false,
        }
    }

    #[test]
    fn default_maps_the_upstream_prefix_and_a_tls_upstreams_own_urls() {
        let r = rules(&["default"]);
        let v = Vars {
            upstream_prefix: "/app",
            upstream_tls: true,
            ..vars("x", false, "/shop")
        };
        assert_eq!(
            text(r.location(b"https://127.0.0.1:8081/app/login", &v)).as_deref(),
            Some("/shop/login")
        );
        assert_eq!(r.location(b"http://127.0.0.1:8081/app/login", &v), None);
        assert_eq!(r.location(b"https://127.0.0.1:8081/other/", &v), None);
    }

    fn cookies(paths: &[&str], domains: &[&str]) -> CookieRewrite {
        let own = |l: &[&str]| l.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>();
        CookieRewrite::parse(&own(paths), &own(domains)).expect("valid")
    }

    #[test]
    fn garbage_cookies_and_locations_never_panic() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let c = cookies(&["default", "/a/ /$host/"], &["x.example $host"]);
        let r = rules(&["default", "http://$host/ /"]);
        const PIECES: &[&[u8]] = &[
            b"a=1",
            b";",
            b" ",
            b"Path=",
            b"path=/app",
            b"/app",
            b"/",
            b"Domain=",
            b".x.example",
            b"url=",
            b"http://127.0.0.1:8081",
            b"\xff",
        ];
        for _ in 0..20_000 {
            let value = crate::test_support::garbage(&mut rng, PIECES, 16, 0.8);
            let v = Vars {
                upstream_prefix: if rng.gen() { "/app" } else { "" },
                ..vars("h.example", rng.gen(), if rng.gen() { "/shop" } else { "" })
            };
            let _ = c.set_cookie(&value, &v);
            let _ = r.location(&value, &v);
            let _ = r.refresh(&value, &v);
        }
    }

    #[test]
    fn cookie_paths_follow_the_prefixes_by_default() {
        let c = cookies(&["default"], &[]);
        let v = |prefix, up| Vars {
            upstream_prefix: up,
            ..vars("shop.example", false, prefix)
        };
        let rw = |value: &str, vars: &Vars<'_>| text(c.set_cookie(value.as_bytes(), vars));
        // Tomcat under /app, public at /: the context path becomes /.
        let root = v("", "/app");
        assert_eq!(
            rw("JSESSIONID=abc.app1; Path=/app; HttpOnly", &root).as_deref(),
            Some("JSESSIONID=abc.app1; Path=/; HttpOnly")
        );
        assert_eq!(
            rw("a=1; path=/app/cart", &root).as_deref(),
            Some("a=1; path=/cart")
        );
        assert_eq!(rw("a=1; Path=/apples", &root), None);
        assert_eq!(rw("a=1; Path=/", &root), None);
        assert_eq!(rw("a=1", &root), None);
        // Tomcat under /app, public at /shop.
        let shop = v("/shop", "/app");
        assert_eq!(
            rw("a=1; Path=/app", &shop).as_deref(),
            Some("a=1; Path=/shop")
        );
        assert_eq!(
            rw("a=1; Path=/app/", &shop).as_deref(),
            Some("a=1; Path=/shop/")
        );
        assert_eq!(
            rw("a=1; Path=/app/x", &shop).as_deref(),
            Some("a=1; Path=/shop/x")
        );
        // Tomcat at its root, public at /shop.
        let stripped = v("/shop", "");
        assert_eq!(
            rw("a=1; Path=/", &stripped).as_deref(),
            Some("a=1; Path=/shop")
        );
        assert_eq!(
            rw("a=1; Path=/x", &stripped).as_deref(),
            Some("a=1; Path=/shop/x")
        );
        // Nothing to map.
        assert_eq!(rw("a=1; Path=/x", &v("", "")), None);
    }

    #[test]
    fn cookie_rules_replace_path_prefixes_and_whole_domains() {
        let c = cookies(
            &["/two/ /", "/one/ /$host/"],
            &[".localhost $host", "app.internal shop.example"],
        );
        assert!(c.uses_host);
        let v = vars("shop.example", false, "");
        let rw = |value: &str| text(c.set_cookie(value.as_bytes(), &v));
        assert_eq!(rw("a=1; Path=/two/x").as_deref(), Some("a=1; Path=/x"));
        assert_eq!(
            rw("a=1; Path=/ONE/x").as_deref(),
            Some("a=1; Path=/shop.example/x")
        );
        assert_eq!(
            rw("a=1; Domain=LOCALHOST; Path=/two/").as_deref(),
            Some("a=1; Domain=shop.example; Path=/")
        );
        assert_eq!(
            rw("a=1;Domain=.app.internal;Secure").as_deref(),
            Some("a=1;Domain=shop.example;Secure")
        );
        assert_eq!(rw("a=1; Domain=sub.app.internal"), None);
        for (paths, domains, key) in [
            (vec!["a b c"], vec![], "balancer.proxy_cookie_path[0]"),
            (vec![], vec!["x"], "balancer.proxy_cookie_domain[0]"),
            (vec![], vec!["a $uri"], "balancer.proxy_cookie_domain[0]"),
        ] {
            let own = |l: &[&str]| l.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>();
            let err = CookieRewrite::parse(&own(&paths), &own(&domains)).expect_err("refused");
            assert_eq!(err.0, key);
        }
    }

    fn rules(entries: &[&str]) -> ProxyRedirect {
        let owned: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        ProxyRedirect::parse(&owned).expect("valid")
    }

    fn text(v: Option<Vec<u8>>) -> Option<String> {
        v.map(|v| String::from_utf8(v).expect("utf8"))
    }

    #[test]
    fn prefixes_are_replaced_with_variables_and_the_first_rule_wins() {
        let r = rules(&["http://$host/ $scheme://$host/", "http:// https://"]);
        assert!(r.uses_host);
        let v = vars("shop.example", true, "");
        assert_eq!(
            text(r.location(b"http://shop.example/login?next=/", &v)).as_deref(),
            Some("https://shop.example/login?next=/")
        );
        assert_eq!(
            text(r.location(b"HTTP://Shop.Example/x", &v)).as_deref(),
            Some("https://shop.example/x")
        );
        assert_eq!(
            text(r.location(b"http://other.example/x", &v)).as_deref(),
            Some("https://other.example/x")
        );
        assert_eq!(r.location(b"/relative", &v), None);
        assert_eq!(
            text(r.refresh(b"3; url=http://shop.example/home", &v)).as_deref(),
            Some("3; url=https://shop.example/home")
        );
        assert_eq!(r.refresh(b"3", &v), None);
    }

    #[test]
    fn default_replaces_the_upstream_address_with_the_pools_prefix() {
        let r = rules(&["default"]);
        assert!(!r.uses_host);
        assert_eq!(
            text(r.location(b"http://127.0.0.1:8081/items/1", &vars("x", false, "/api")))
                .as_deref(),
            Some("/api/items/1")
        );
        assert_eq!(
            text(r.location(b"http://127.0.0.1:8081/", &vars("x", false, ""))).as_deref(),
            Some("/")
        );
        assert_eq!(
            r.location(b"http://127.0.0.1:80811/", &vars("x", false, "")),
            None
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        for (i, bad) in [
            vec!["default x"],
            vec!["http://"],
            vec!["a b c"],
            vec!["default", "http://$hostname/ /"],
            vec!["http://$uri /"],
        ]
        .into_iter()
        .enumerate()
        {
            let owned: Vec<String> = bad.iter().map(|e| (*e).to_owned()).collect();
            let err = ProxyRedirect::parse(&owned).expect_err("refused");
            assert_eq!(err.0, bad.len() - 1, "case {i}: {err:?}");
        }
        assert!(ProxyRedirect::parse(&["$$a $host".to_owned()]).is_ok());
        let braced = rules(&["http://${host}/ ${scheme}://${host}/"]);
        assert!(braced.uses_host);
        assert_eq!(
            text(braced.location(b"http://a.example/x", &vars("a.example", true, ""))).as_deref(),
            Some("https://a.example/x")
        );
    }
}
