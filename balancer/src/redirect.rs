//! Redirects answered by the balancer itself (nginx `rewrite <regex> <target> redirect |
//! permanent` and `return 301 <url>`): the first rule whose regex matches the request's path
//! (without its query) answers with its status and a `Location` built from the target, in which
//! `$1`, `${name}` name the regex's groups and `$$` is a `$`. As with nginx's `rewrite`, the
//! request's query is appended (after `&` if the target has one); a target ending in `?` drops it.

use regex::Regex;

/// One `redirect` entry.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    re: Regex,
    target: String,
    drop_query: bool,
    pub status: http::StatusCode,
}

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
    pub fn find(&self, path: &str, query: Option<&str>, out: &mut Vec<u8>) -> Option<u16> {
        self.0.iter().find_map(|r| {
            let caps = r.re.captures(path)?;
            let mut location = String::new();
            caps.expand(&r.target, &mut location);
            if let Some(q) = query.filter(|q| !q.is_empty() && !r.drop_query) {
                location.push(if location.contains('?') { '&' } else { '?' });
                location.push_str(q);
            }
            out.clear();
            out.extend_from_slice(location.as_bytes());
            Some(r.status.as_u16())
        })
    }
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

/// The name part of a `Host` value (`shop.example`, `10.0.0.1`, `[::1]`), without its port;
/// `None` if it holds anything else.
fn host_name(value: &[u8]) -> Option<&[u8]> {
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
        Ok(Rule {
            re,
            target: target.to_owned(),
            drop_query,
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
        let mut out = Vec::new();
        let status = r.find(path, query, &mut out)?;
        Some((status, String::from_utf8(out).expect("utf8")))
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
