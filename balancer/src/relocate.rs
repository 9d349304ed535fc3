//! `proxy_redirect` (nginx's): the `Location` and `Refresh` headers of upstream answers
//! rewritten, so that an app server's redirect to its own address, or to `http://` behind a
//! balancer that terminated TLS, points the client at the public URL.
//!
//! Each entry is `"default"` or `"<from> <to>"`: a `Location` (or the URL of a `Refresh`)
//! that starts with `from` (compared without case) has that prefix replaced by `to`; the first
//! entry that matches applies. Both may name `$host` (the request's `Host` without its port)
//! and `$scheme` (`http` or `https`, as the client came, or as a trusted proxy in front says in
//! `X-Forwarded-Proto`), also written `${host}`, `${scheme}`; `$$` is a `$`. `"default"` is
//! `http://<upstream address>/` replaced by `<the pool's strip_prefix>/`, as nginx's default
//! replaces the `proxy_pass` URL with the location.

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
pub(crate) struct Vars<'a> {
    /// The request's host name, without its port.
    pub host: &'a [u8],
    pub https: bool,
    /// The upstream's configured `host:port`.
    pub upstream: &'a str,
    /// The `strip_prefix` of the upstream's pool, if any.
    pub prefix: &'a str,
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
                    from.extend_from_slice(b"http://");
                    from.extend_from_slice(vars.upstream.as_bytes());
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
