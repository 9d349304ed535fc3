//! `ferrocat all-in-one` end to end: a spawned process and real HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

fn start() -> Ferrocat {
    let (bp, ap) = (free_port(), free_port());
    Ferrocat::spawn(
        "all-in-one",
        &all_in_one_config(bp, ap, ""),
        format!("127.0.0.1:{bp}").parse().unwrap(),
    )
}

async fn me(c: &reqwest::Client, f: &Ferrocat) -> Value {
    let res = c.get(f.url("/api/me")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-ferrocat-node"], "app1");
    res.json().await.unwrap()
}

#[actix_rt::test]
async fn login_then_visits_count_up() {
    let f = start();
    let c = client();
    let res = c
        .post(f.url("/login"))
        .form(&[("username", "alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = session_cookie(&res, "JSESSIONID").expect("login sets the session cookie");
    // <sig>.<random>-<node>.<route>
    let (_, id) = cookie.split_once('.').unwrap();
    assert!(
        id.ends_with("-local.app1"),
        "cookie shows the session id: {cookie}"
    );

    let v1 = me(&c, &f).await;
    assert_eq!(v1["user"], "alice");
    assert_eq!(v1["visits"], 1);
    let v2 = me(&c, &f).await;
    assert_eq!(v2["visits"], 2);
    assert_eq!(v2["node"], "app1");

    let page = get_text(&c, f.url("/")).await;
    assert!(
        page.contains("Hello alice, visit 3, served by app1"),
        "{page}"
    );
}

#[actix_rt::test]
async fn login_renews_the_session_id() {
    let f = start();
    let c = bare_client();
    let res = c.get(f.url("/api/me")).send().await.unwrap();
    let before = session_cookie(&res, "JSESSIONID").unwrap();
    let res = c
        .post(f.url("/login"))
        .header("cookie", format!("JSESSIONID={before}"))
        .form(&[("username", "bob")])
        .send()
        .await
        .unwrap();
    let after = session_cookie(&res, "JSESSIONID").expect("a new id on login");
    assert_ne!(before, after);
    // The pre-login id is dead: it does not carry the login.
    let res = c
        .get(f.url("/api/me"))
        .header("cookie", format!("JSESSIONID={before}"))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["user"], Value::Null);
    // The new one does.
    let res = c
        .get(f.url("/api/me"))
        .header("cookie", format!("JSESSIONID={after}"))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["user"], "bob");
}

#[actix_rt::test]
async fn bad_cookies_get_a_fresh_session_never_a_500() {
    let f = start();
    let c = bare_client();
    // A real cookie, to forge from.
    let res = c.get(f.url("/api/me")).send().await.unwrap();
    let good = session_cookie(&res, "JSESSIONID").unwrap();
    let (sig, id) = good.split_once('.').unwrap();
    let forged_sig = format!("{}.{}", "0".repeat(sig.len()), id);
    let other_id = format!("{sig}.{}{}", "f".repeat(32), &id[32..]);
    let oversized = "a".repeat(8 * 1024);
    for bad in [
        "garbage".to_string(),
        "%00%ff;;==".to_string(),
        forged_sig,
        other_id,
        oversized,
        format!("{good}x"),
    ] {
        let res = c
            .get(f.url("/api/me"))
            .header("cookie", format!("JSESSIONID={bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "cookie {:.40}", bad);
        let fresh = session_cookie(&res, "JSESSIONID").expect("a fresh session");
        assert_ne!(fresh, good);
        let v: Value = res.json().await.unwrap();
        assert_eq!(
            v["visits"], 1,
            "a forged cookie must not reach the real session"
        );
    }
}

#[actix_rt::test]
async fn logout_invalidates_the_session() {
    let f = start();
    let c = client();
    c.post(f.url("/login"))
        .form(&[("username", "carol")])
        .send()
        .await
        .unwrap();
    assert_eq!(me(&c, &f).await["user"], "carol");
    let res = c.post(f.url("/logout")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(me(&c, &f).await["user"], Value::Null);
}

#[actix_rt::test]
async fn cart_keeps_items_in_order() {
    let f = start();
    let c = client();
    for item in ["apple", "pear", "plum"] {
        let res = c
            .post(f.url("/api/cart"))
            .form(&[("item", item)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let v: Value = get_json(&c, f.url("/api/cart")).await;
    assert_eq!(v["items"], serde_json::json!(["apple", "pear", "plum"]));
}

#[actix_rt::test]
async fn static_files_and_health_do_not_touch_the_session() {
    let f = start();
    let c = bare_client();
    let res = c.get(f.url("/static/style.css")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(session_cookie(&res, "JSESSIONID").is_none());
    assert_eq!(res.headers()["x-ferrocat-node"], "app1");
    let res = c.get(f.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(session_cookie(&res, "JSESSIONID").is_none());
    let stats: Value = get_json(&c, f.url("/ferrocat/stats")).await;
    assert_eq!(stats["requests_ignored"], 1, "{stats}");
    assert_eq!(stats["sessions_created"], 0, "{stats}");
    // The same figures for a Prometheus scraper.
    let res = c
        .get(f.url("/ferrocat/stats?format=prometheus"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains("\nferrocat_session_requests_ignored_total 1\n"),
        "{text}"
    );
    assert!(text.contains("\nferrocat_session_sessions_created_total 0\n"));
    assert!(text.contains("\nferrocat_session_load_seconds_count "));
    assert!(text.contains("ferrocat_session_backend_info{backend=\""));
}

#[actix_rt::test]
async fn login_form_and_greeting_render() {
    let f = start();
    let c = client();
    let page = get_text(&c, f.url("/")).await;
    assert!(page.contains("name=\"username\""));
    c.post(f.url("/login"))
        .form(&[("username", "<script>x</script>")])
        .send()
        .await
        .unwrap();
    let page = get_text(&c, f.url("/")).await;
    assert!(
        page.contains("Hello &lt;script&gt;x&lt;/script&gt;, visit 1"),
        "{page}"
    );
}

#[actix_rt::test]
async fn head_is_answered_like_get_and_a_wrong_method_gets_405() {
    let f = start();
    let c = bare_client();
    for path in ["/", "/api/cart", "/health", "/static/style.css"] {
        let get = c.get(f.url(path)).send().await.unwrap();
        assert_eq!(get.status(), 200, "GET {path}");
        let get_len = get.headers()["content-length"].clone();
        let get_type = get.headers()["content-type"].clone();
        assert!(
            !get.bytes().await.unwrap().is_empty(),
            "GET {path} has a body"
        );
        // Through the balancer, on the same keep-alive client: the HEAD
        // response carries GET's headers and no body, and the connection stays usable.
        let head = c.head(f.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(head.headers()["content-length"], get_len, "HEAD {path}");
        assert_eq!(head.headers()["content-type"], get_type, "HEAD {path}");
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
    let res = c.delete(f.url("/api/cart")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD, POST");
    let res = c.get(f.url("/login")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    let res = c.get(f.url("/no-such-page")).send().await.unwrap();
    assert_eq!(res.status(), 404);
}
