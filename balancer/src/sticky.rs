//! Sticky routing on the session cookie's route suffix.
//!
//! ferrocat's session cookie looks like `<sig>.<random>-<node>.<route>`, Tomcat's (jvmRoute) like
//! `<id>.<route>`: in both the route is the text after the last `.`. A request whose route names
//! an available upstream goes there; otherwise it is balanced as if unbound, and the app node that
//! gets it takes the session over (and rewrites the cookie with its own route).
//!
//! A client without cookies carries a Tomcat session in the URL instead (`encodeURL`:
//! `/shop/cart;jsessionid=<id>.<route>?x=1`); without a session cookie, that path parameter
//! routes the request (as mod_jk and Tomcat's own balancer do). The name is the cookie's,
//! matched without regard to case (Tomcat writes `jsessionid`).

/// Value of the cookie `name` in the request's `Cookie` header values, if present.
pub(crate) fn cookie_value<'a>(
    cookies: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a [u8]> {
    for header in cookies {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if let Some(rest) = pair.strip_prefix(name.as_bytes()) {
                if let Some(value) = rest.strip_prefix(b"=") {
                    let value = value.trim_ascii_end();
                    let value = value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(value);
                    return Some(value);
                }
            }
        }
    }
    None
}

/// The route suffix of the session cookie `name`: the text after its last `.`, if non-empty.
pub(crate) fn route<'a>(
    cookies: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    let value = cookie_value(cookies, name)?;
    let dot = value.iter().rposition(|&b| b == b'.')?;
    let route = std::str::from_utf8(&value[dot + 1..]).ok()?;
    (!route.is_empty()).then_some(route)
}

/// The route suffix of a `;NAME=<id>.<route>` path parameter in `path` (the request path
/// without its query), `NAME` compared without regard to case.
pub(crate) fn url_route<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    let mut rest = path;
    while let Some(i) = rest.find(';') {
        rest = &rest[i + 1..];
        let (key, after) = rest.split_once('=')?;
        if !key.eq_ignore_ascii_case(name) {
            continue;
        }
        let value = after.split([';', '/']).next().unwrap_or("");
        let (_, route) = value.rsplit_once('.')?;
        return (!route.is_empty()).then_some(route);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(cookies: &[&'a str]) -> Vec<&'a [u8]> {
        cookies.iter().map(|c| c.as_bytes()).collect()
    }

    #[test]
    fn ferrocat_cookie_route_is_the_last_dot_suffix() {
        let h = headers(&["theme=dark; JSESSIONID=c2lnbmF0dXJl.8f3a9c-n1.app2; other=x"]);
        assert_eq!(route(h.iter().copied(), "JSESSIONID"), Some("app2"));
    }

    #[test]
    fn tomcat_cookie_route_is_the_jvm_route() {
        let h = headers(&["JSESSIONID=5A8F1C2B3D4E.tomcat1"]);
        assert_eq!(route(h.iter().copied(), "JSESSIONID"), Some("tomcat1"));
        let h = headers(&["a=1", "JSESSIONID=\"ABC.tomcat2\""]);
        assert_eq!(route(h.iter().copied(), "JSESSIONID"), Some("tomcat2"));
    }

    #[test]
    fn missing_or_routeless_cookie_has_no_route() {
        assert_eq!(route(headers(&["JSESSIONID=ABCDEF"]), "JSESSIONID"), None);
        assert_eq!(route(headers(&["JSESSIONID=ABC."]), "JSESSIONID"), None);
        assert_eq!(route(headers(&["XJSESSIONID=a.b"]), "JSESSIONID"), None);
        assert_eq!(route(headers(&["sid=a.b"]), "JSESSIONID"), None);
        assert_eq!(route(headers(&["sid=a.b"]), ""), None);
        assert_eq!(route(headers(&["sid=a.b"]), "sid"), Some("b"));
    }

    #[test]
    fn url_session_parameter_carries_the_route() {
        let r = |p| url_route(p, "JSESSIONID");
        assert_eq!(r("/shop/cart;jsessionid=5A8F1C.tomcat1"), Some("tomcat1"));
        assert_eq!(r("/a;JSESSIONID=5A8F1C.tomcat2/b"), Some("tomcat2"));
        assert_eq!(r("/a;v=1;jsessionid=ID.t3;x=y"), Some("t3"));
        assert_eq!(r("/a;jsessionid=ID-n1.app2"), Some("app2"));
        assert_eq!(r("/a;jsessionid=NOROUTE"), None);
        assert_eq!(r("/a;jsessionid=ID."), None);
        assert_eq!(r("/a;xjsessionid=ID.t1"), None);
        assert_eq!(r("/a;jsessionid"), None);
        assert_eq!(r("/plain/path"), None);
        assert_eq!(url_route("/a;sid=ID.t1", ""), None);
    }
}
