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
