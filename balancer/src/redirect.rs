//! Redirects answered by the balancer itself (nginx `rewrite <regex> <target> redirect |
//! permanent` and `return 301 <url>`): the first rule whose regex matches the request's path
//! (without its query) answers with its status and a `Location` built from the target, in which
//! `$1`, `${name}` name the regex's groups, `$host` and `$scheme` the request's, and `$$` is a
//! `$`. As with nginx's `rewrite`, the request's query is appended (after `&` if the target has
//! one); a target ending in `?` drops it.

use regex::Regex;

/// One `redirect` entry.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    re: Regex,
    target: String,
    drop_query: bool,
    /// The target names `$host` or `$scheme` (not groups of the regex).
    vars: bool,
    pub status: http::StatusCode,
}

/// What a redirect target may name of the request besides the regex's groups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestVars<'a> {
    /// The `Host` header, if any.
    pub host: Option<&'a [u8]>,
    /// The client came over TLS.
    pub tls: bool,
}

/// A rule matched, but its target names `$host` and the request has no usable `Host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoHost;

/// The `redirect` entries, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redirects(Vec<Rule>);

impl Redirects {
    /// Parses `"<regex> <target> [301|302|303|307|308]"` entries (302 when no status is given);
    /// the error gives the index of the first bad entry.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        crate::config::parse_each(entries, |e| {
            Rule::parse(e).map_err(|m| format!("{e:?}: {m}"))
        })
        .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first rule matching `path`: its status, with the `Location` value in `out`.
    pub fn find(
        &self,
        path: &str,
        query: Option<&str>,
        req: RequestVars<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Option<u16>, NoHost> {
        for r in &self.0 {
            let Some(caps) = r.re.captures(path) else {
                continue;
            };
            let mut location = String::new();
            if r.vars {
                let host = req.host.and_then(host_name).ok_or(NoHost)?;
                // Valid host names hold no `$`: nothing in them reads as a group.
                let host = std::str::from_utf8(host).map_err(|_| NoHost)?;
                let scheme = if req.tls { "https" } else { "http" };
                let target = with_request_vars(&r.target, host, scheme);
                caps.expand(&target, &mut location);
            } else {
                caps.expand(&r.target, &mut location);
            }
            if let Some(q) = query.filter(|q| !q.is_empty() && !r.drop_query) {
                location.push(if location.contains('?') { '&' } else { '?' });
                location.push_str(q);
            }
            out.clear();
            out.extend_from_slice(location.as_bytes());
            return Ok(Some(r.status.as_u16()));
        }
        Ok(None)
    }
}

/// The names of request variables a target may use.
const REQUEST_VARS: [&str; 2] = ["host", "scheme"];

/// The variable (`$host`, `${scheme}`) that starts `rest` (just after a `$`), and its length.
pub(crate) fn request_var(rest: &str) -> Option<(&'static str, usize)> {
    REQUEST_VARS.iter().find_map(|&name| {
        if let Some(after) = rest.strip_prefix(name) {
            // `$hostname` is a group named `hostname`, not `$host` + "name".
            let next = after.bytes().next();
            if !next.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Some((name, name.len()));
            }
        }
        let braced = rest.strip_prefix('{')?.strip_prefix(name)?;
        braced.starts_with('}').then_some((name, name.len() + 2))
    })
}

/// `target` with `$host` / `$scheme` replaced by their values (`$$` and group references
/// left for `expand`).
fn with_request_vars(target: &str, host: &str, scheme: &str) -> String {
    let mut out = String::with_capacity(target.len() + host.len());
    let mut rest = target;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
        } else if let Some((name, len)) = request_var(after) {
            out.push_str(if name == "host" { host } else { scheme });
            rest = &after[len..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `ssl_redirect`: writes to `out` the `https://` URL of a request that came over plain HTTP,
/// `https://<host>[:<port>]<path and query>` (no port for 443), and returns its status: 301 for
/// GET and HEAD, 308 for the others (their method and body must survive the redirect). `None`
/// when the `Host` header is missing or is not a plain name or address, so nothing a client
/// sent can make the balancer point elsewhere than a host.
pub(crate) fn to_https(
    host: Option<&[u8]>,
    port: u16,
    method: &str,
    path_and_query: &str,
    out: &mut Vec<u8>,
) -> Option<u16> {
    let host = host_name(host?)?;
    out.clear();
    out.extend_from_slice(b"https://");
    out.extend_from_slice(host);
    if port != 443 {
        out.push(b':');
        out.extend_from_slice(port.to_string().as_bytes());
    }
    out.extend_from_slice(path_and_query.as_bytes());
    Some(if matches!(method, "GET" | "HEAD") {
        301
    } else {
        308
    })
}

/// One `host_redirect` entry: requests for a host name go to another site.
#[derive(Debug, Clone)]
struct HostRule {
    /// The name, lowercase, without a leading `*.` or `.`.
    name: String,
    /// `*.name`: subdomains only; `.name`: the name and its subdomains; else the name alone.
    subdomains: bool,
    bare: bool,
    /// The site's URL without a trailing `/`; the request's path and query follow it.
    target: String,
    status: http::StatusCode,
}

/// The `host_redirect` entries (nginx `server { server_name old.example; return 301
/// https://new.example$request_uri; }`): the first whose name matches the request's host.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostRedirects(Vec<HostRule>);

impl HostRedirects {
    /// Parses `"<host> <url> [301|302|303|307|308]"` entries (301 when no status is given):
    /// `<host>` is a name, `*.name` (its subdomains) or `.name` (it and its subdomains); `<url>`
    /// is `http://` or `https://` and a host, with a path prefix if wanted. The error gives the
    /// index of the first bad entry.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        crate::config::parse_each(entries, |e| {
            let words: Vec<&str> = e.split_whitespace().collect();
            let (host, target, status) = match words.as_slice() {
                [h, t] => (*h, *t, 301),
                [h, t, s] => (*h, *t, s.parse::<u16>().unwrap_or(0)),
                _ => return Err(format!("{e:?}: expected \"<host> <url> [status]\"")),
            };
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Err(format!(
                    "{e:?}: the status must be 301, 302, 303, 307 or 308"
                ));
            }
            let (subdomains, bare, name) = if let Some(n) = host.strip_prefix("*.") {
                (true, false, n)
            } else if let Some(n) = host.strip_prefix('.') {
                (true, true, n)
            } else {
                (false, true, host)
            };
            if name.is_empty() || host_name(name.as_bytes()) != Some(name.as_bytes()) {
                return Err(format!("{e:?}: {host:?} is not a host name"));
            }
            let rest = target
                .strip_prefix("https://")
                .or_else(|| target.strip_prefix("http://"));
            let site = rest.map(|r| r.split('/').next().unwrap_or(r));
            if site.is_none_or(|s| s.is_empty() || host_name(s.as_bytes()).is_none()) {
                return Err(format!(
                    "{e:?}: {target:?} is not an http:// or https:// URL with a host"
                ));
            }
            Ok(HostRule {
                name: name.to_ascii_lowercase(),
                subdomains,
                bare,
                target: target.trim_end_matches('/').to_owned(),
                status: http::StatusCode::from_u16(status)
                    .unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
            })
        })
        .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first entry matching the request's `Host` value: its status, with the `Location`
    /// (the entry's URL, then `path_and_query`) in `out`.
    pub fn find(
        &self,
        host: Option<&[u8]>,
        path_and_query: &str,
        out: &mut Vec<u8>,
    ) -> Option<u16> {
        let name = host_name(host?)?;
        let rule = self.0.iter().find(|r| {
            let n = r.name.as_bytes();
            (r.bare && name.eq_ignore_ascii_case(n))
                || (r.subdomains
                    && name.len() > n.len() + 1
                    && name[name.len() - n.len()..].eq_ignore_ascii_case(n)
                    && name[name.len() - n.len() - 1] == b'.')
        })?;
        out.clear();
        out.extend_from_slice(rule.target.as_bytes());
        out.extend_from_slice(path_and_query.as_bytes());
        Some(rule.status.as_u16())
    }
}

/// The name part of a `Host` value (`shop.example`, `10.0.0.1`, `[::1]`), without its port;
/// `None` if it holds anything else.
pub(crate) fn host_name(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (name, port) = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']')?;
        let inside = &value[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (&value[..=end], &value[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = port.is_empty()
        || (port.len() > 1
            && port.len() <= 6
            && port[1..].iter().all(u8::is_ascii_digit)
            && port[0] == b':');
    let name_ok = name.first() == Some(&b'[')
        || (!name.is_empty()
            && name.len() <= 253
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    (port_ok && name_ok).then_some(name)
}

impl Rule {
    fn parse(entry: &str) -> Result<Self, String> {
        let mut words = entry.split_whitespace();
        let (Some(re), Some(target)) = (words.next(), words.next()) else {
            return Err("expected \"<regex> <target> [status]\"".into());
        };
        let status = match words.next() {
            None => http::StatusCode::FOUND,
            Some(s) => match s.parse::<u16>() {
                Ok(code @ (301 | 302 | 303 | 307 | 308)) => {
                    http::StatusCode::from_u16(code).map_err(|_| format!("{s} is not a status"))?
                }
                _ => return Err(format!("{s}: the status must be 301, 302, 303, 307 or 308")),
            },
        };
        if let Some(extra) = words.next() {
            return Err(format!("{extra:?} after the status"));
        }
        let re = Regex::new(re).map_err(|e| format!("invalid regex: {e}"))?;
        let (target, drop_query) = match target.strip_suffix('?') {
            Some(t) => (t, true),
            None => (target, false),
        };
        if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the target must be a non-empty URL of visible ASCII characters".into());
        }
        // `$host` / `$scheme` are the request's, unless the regex has groups by those names.
        let groups: Vec<&str> = re.capture_names().flatten().collect();
        if let Some(name) = REQUEST_VARS.iter().find(|n| groups.contains(n)) {
            return Err(format!(
                "a group named {name:?} would hide the request's ${name}: rename the group"
            ));
        }
        // Replacing the variables changes the target only if it names one.
        let vars = with_request_vars(target, "\u{0}", "\u{0}") != target;
        Ok(Rule {
            re,
            target: target.to_owned(),
            drop_query,
            vars,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[&str]) -> Redirects {
        let e: Vec<String> = entries.iter().map(|s| (*s).to_owned()).collect();
        Redirects::parse(&e).expect("valid")
    }

    fn find(r: &Redirects, path: &str, query: Option<&str>) -> Option<(u16, String)> {
        let req = RequestVars {
            host: Some(b"shop.example:8080"),
            tls: false,
        };
        find_for(r, path, query, req).expect("a host")
    }

    fn find_for(
        r: &Redirects,
        path: &str,
        query: Option<&str>,
        req: RequestVars<'_>,
    ) -> Result<Option<(u16, String)>, NoHost> {
        let mut out = Vec::new();
        let Some(status) = r.find(path, query, req, &mut out)? else {
            return Ok(None);
        };
        Ok(Some((status, String::from_utf8(out).expect("utf8"))))
    }

    #[test]
    fn targets_may_name_the_requests_host_and_scheme() {
        let r = rules(&[
            "^/secure(/.*)$ https://$host$1 301",
            "^/same(/.*)?$ ${scheme}://${host}/other$1",
            "^/lit$ /cost$$host",
            "^/(?P<hostname>[a-z]+)/x$ /$hostname",
        ]);
        let plain = RequestVars {
            host: Some(b"shop.example:8080"),
            tls: false,
        };
        let tls = RequestVars {
            host: Some(b"[::1]:8443"),
            tls: true,
        };
        assert_eq!(
            find_for(&r, "/secure/a", Some("q=1"), plain),
            Ok(Some((301, "https://shop.example/a?q=1".into())))
        );
        assert_eq!(
            find_for(&r, "/same/b", None, plain),
            Ok(Some((302, "http://shop.example/other/b".into())))
        );
        assert_eq!(
            find_for(&r, "/same", None, tls),
            Ok(Some((302, "https://[::1]/other".into())))
        );
        // `$$host` is literal text; `$hostname` is the regex's group.
        assert_eq!(
            find_for(
                &r,
                "/lit",
                None,
                RequestVars {
                    host: None,
                    tls: false
                }
            ),
            Ok(Some((302, "/cost$host".into())))
        );
        assert_eq!(
            find_for(
                &r,
                "/abc/x",
                None,
                RequestVars {
                    host: None,
                    tls: false
                }
            ),
            Ok(Some((302, "/abc".into())))
        );
        // A rule naming $host, and no usable Host: no redirect to a made-up place.
        for host in [None, Some(&b"evil.example/x"[..]), Some(b"a b")] {
            assert_eq!(
                find_for(&r, "/secure/a", None, RequestVars { host, tls: false }),
                Err(NoHost),
                "{host:?}"
            );
        }
        // A group named like a request variable is refused (it would be ambiguous).
        let e = vec!["^/(?P<host>.*)$ /$host".to_owned()];
        assert!(Redirects::parse(&e)
            .expect_err("host group")
            .1
            .contains("rename"));
    }

    #[test]
    fn the_first_matching_rule_answers_with_its_groups_and_the_query() {
        let r = rules(&[
            "^/old/(.*)$ /new/$1 301",
            "^/shop(?P<rest>/.*)?$ https://shop.example${rest}",
            "^/drop$ /elsewhere? 308",
            "^/keep$ /there?a=1 307",
            "^/old/x$ /never",
        ]);
        assert_eq!(find(&r, "/old/a/b", None), Some((301, "/new/a/b".into())));
        assert_eq!(
            find(&r, "/old/x", Some("q=1")),
            Some((301, "/new/x?q=1".into()))
        );
        assert_eq!(
            find(&r, "/shop/cart", None),
            Some((302, "https://shop.example/cart".into()))
        );
        assert_eq!(
            find(&r, "/shop", None),
            Some((302, "https://shop.example".into()))
        );
        assert_eq!(
            find(&r, "/drop", Some("q=1")),
            Some((308, "/elsewhere".into()))
        );
        assert_eq!(
            find(&r, "/keep", Some("q=1")),
            Some((307, "/there?a=1&q=1".into()))
        );
        assert_eq!(find(&r, "/other", Some("q=1")), None);
        assert_eq!(
            find(&rules(&["^/p$ /cost$$5"]), "/p", None),
            Some((302, "/cost$5".into()))
        );
    }

    #[test]
    fn plain_requests_are_sent_to_the_same_url_over_https() {
        let to = |host: Option<&str>, port: u16, method: &str, pq: &str| {
            let mut out = Vec::new();
            let status = to_https(host.map(str::as_bytes), port, method, pq, &mut out)?;
            Some((status, String::from_utf8(out).expect("utf8")))
        };
        assert_eq!(
            to(Some("shop.example"), 443, "GET", "/a?b=1"),
            Some((301, "https://shop.example/a?b=1".into()))
        );
        assert_eq!(
            to(Some("shop.example:8080"), 8443, "HEAD", "/"),
            Some((301, "https://shop.example:8443/".into()))
        );
        assert_eq!(
            to(Some("[::1]:8080"), 443, "POST", "/cart"),
            Some((308, "https://[::1]/cart".into()))
        );
        assert_eq!(
            to(Some("127.0.0.1"), 8443, "PUT", "/x"),
            Some((308, "https://127.0.0.1:8443/x".into()))
        );
        for bad in [
            "",
            "evil.example/path",
            "a@evil.example",
            "shop example",
            "shop:80:80",
            "shop:",
            "[]",
            "[::1",
            "[evil.example]",
        ] {
            assert_eq!(to(Some(bad), 443, "GET", "/"), None, "{bad:?}");
        }
        assert_eq!(to(None, 443, "GET", "/"), None);
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, at) in [
            ("^/a$", 0),
            ("^/a$ /b 200", 0),
            ("^/a$ /b 301 extra", 0),
            ("^/(a$ /b", 0),
            ("^/a$ ?", 0),
        ] {
            let e = vec!["^/ok$ /fine".to_owned(), entry.to_owned()];
            let err = Redirects::parse(&e).expect_err(entry);
            assert_eq!(err.0, at + 1, "{entry}: {}", err.1);
        }
    }
}
