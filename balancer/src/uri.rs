//! The request path as the balancer's rules see it: percent-escapes decoded, repeated slashes
//! merged, `.` and `..` segments resolved, as nginx normalizes `$uri` before it matches
//! locations.
//!
//! Without it a rule on the raw path is easy to walk around: `deny = ["^/WEB-INF/"]` would not
//! see `/%57EB-INF/web.xml`, `//WEB-INF/web.xml` or `/img/../WEB-INF/web.xml`, which the app
//! server behind decodes and resolves to the file the rule meant to hide. The upstream still
//! gets the path as the client sent it (nginx's `proxy_pass` without a URI part does the same).

use std::borrow::Cow;

use crate::h1::chunked::hex;

/// Why a path cannot be normalized (the request gets 400, as nginx answers).
pub(crate) type Invalid = &'static str;

/// `path` (without the query) as rules match it. Borrowed when there is nothing to decode or
/// resolve, which is the common case.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, Invalid> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Ok(Cow::Borrowed(path)); // `*` (OPTIONS) or an empty path: nothing to resolve
    }
    let plain = !b.contains(&b'%')
        && !b.windows(2).any(|w| w == b"//" || w == b"/.")
        && !b.ends_with(b"/.");
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(b)?;
    // Segments after the leading slash; empty ones (repeated slashes) are dropped.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split(|&c| c == b'/') {
        trailing_slash = false;
        match seg {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                if segments.pop().is_none() {
                    return Err("path above the root");
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

/// Percent-decodes `b`; a malformed escape or an escaped NUL is refused.
fn decode(b: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).and_then(|&c| hex(c));
            let lo = b.get(i + 2).and_then(|&c| hex(c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("malformed percent-escape in the path");
            };
            let c = hi << 4 | lo;
            if c == 0 {
                return Err("NUL in the path");
            }
            out.push(c);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, Invalid> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/", "/a/b", "/a/b/", "/app.css", "/a.b/c..d/", "*", ""] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn escapes_slashes_and_dot_segments_are_resolved() {
        assert_eq!(n("/%57EB-INF/web.xml").unwrap(), "/WEB-INF/web.xml");
        assert_eq!(n("//WEB-INF//web.xml").unwrap(), "/WEB-INF/web.xml");
        assert_eq!(n("/img/../WEB-INF/web.xml").unwrap(), "/WEB-INF/web.xml");
        assert_eq!(n("/./WEB-INF/./web.xml").unwrap(), "/WEB-INF/web.xml");
        assert_eq!(n("/img/%2e%2e/WEB-INF/x").unwrap(), "/WEB-INF/x");
        assert_eq!(n("/img%2F..%2FWEB-INF/x").unwrap(), "/WEB-INF/x");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/a%20b").unwrap(), "/a b");
        assert_eq!(n("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(n("/%FF").unwrap(), "/\u{FFFD}");
    }

    #[test]
    fn escapes_above_the_root_and_bad_escapes_are_refused() {
        assert!(n("/..").is_err());
        assert!(n("/a/../../etc/passwd").is_err());
        assert!(n("/%2e%2e/etc/passwd").is_err());
        assert!(n("/a%2").is_err());
        assert!(n("/a%zz").is_err());
        assert!(n("/a%00b").is_err());
    }
}
