//! An app node over three real memcached nodes, seen through HTTP: what a user
//! sees when memcached nodes die, freeze or come back.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ferrocat_testkit::Cluster;
use serde_json::Value;

const OP_TIMEOUT_MS: u64 = 300;

fn app(cluster: &Cluster) -> Ferrocat {
    app_on(cluster, free_port())
}

fn app_on(cluster: &Cluster, port: u16) -> Ferrocat {
    app_with(cluster, port, "", &[])
}

/// An app node on `port` over `cluster`, with more `[session]` lines and environment.
fn app_with(cluster: &Cluster, port: u16, session_extra: &str, env: &[(&str, &str)]) -> Ferrocat {
    let toml = format!(
        r#"
[node]
name = "app1"
listen = "127.0.0.1:{port}"
workers = 2

[session]
memcached_nodes = "{}"
cookie_secret = "failover-test-secret-failover-test-secret"
operation_timeout = "{OP_TIMEOUT_MS}ms"
{session_extra}
"#,
        cluster.memcached_nodes()
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Ferrocat::spawn_env("app", &toml, addr, env)
}

/// The memcached node id in a cookie value `<sig>.<random>-<node>.<route>`.
fn node_of(cookie: &str) -> String {
    let id = cookie.split_once('.').unwrap().1;
    let (rest, _route) = id.rsplit_once('.').unwrap();
    rest.split_once('-').unwrap().1.to_owned()
}

struct User {
    c: reqwest::Client,
    cookie: String,
}

impl User {
    async fn login(f: &Ferrocat, name: &str) -> User {
        let c = bare_client();
        let res = c
            .post(f.url("/login"))
            .form(&[("username", name)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303);
        let cookie = session_cookie(&res, "JSESSIONID").unwrap();
        User { c, cookie }
    }

    /// GET /api/me; follows a new cookie like a browser. Returns (json, cookie changed).
    async fn me(&mut self, f: &Ferrocat) -> (Value, bool) {
        let res = self
            .c
            .get(f.url("/api/me"))
            .header("cookie", format!("JSESSIONID={}", self.cookie))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let changed = match session_cookie(&res, "JSESSIONID") {
            Some(new) if new != self.cookie => {
                self.cookie = new;
                true
            }
            _ => false,
        };
        (res.json().await.unwrap(), changed)
    }
}

#[actix_rt::test]
async fn primary_killed_session_moves_to_a_live_node_and_stays_there() {
    let mut cluster = Cluster::start(3);
    let f = app(&cluster);
    let mut u = User::login(&f, "alice").await;
    assert_eq!(u.me(&f).await.0["visits"], 1);
    let primary = node_of(&u.cookie);
    cluster.node(&primary).kill();

    let (v, changed) = u.me(&f).await;
    assert_eq!(v["user"], "alice");
    assert_eq!(v["visits"], 2);
    assert!(changed, "a new cookie names the new primary");
    assert_ne!(node_of(&u.cookie), primary);
    for visits in 3..6 {
        let (v, changed) = u.me(&f).await;
        assert_eq!(v["visits"], visits);
        assert!(!changed, "the id then stays stable");
    }
}

#[actix_rt::test]
async fn frozen_primary_costs_at_most_the_operation_timeout_and_no_stale_read() {
    let mut cluster = Cluster::start(3);
    let f = app(&cluster);
    let mut u = User::login(&f, "bob").await;
    assert_eq!(u.me(&f).await.0["visits"], 1);
    let primary = node_of(&u.cookie);
    cluster.node(&primary).freeze();
    let mut expected = 2;
    for _ in 0..5 {
        let started = Instant::now();
        let (v, _) = u.me(&f).await;
        let took = started.elapsed();
        assert_eq!(v["user"], "bob");
        assert_eq!(v["visits"], expected);
        assert!(
            took < Duration::from_millis(3 * OP_TIMEOUT_MS + 700),
            "request took {took:?} with a frozen node"
        );
        expected += 1;
    }
    cluster.node(&primary).unfreeze();
    // The frozen node still holds visits=1: it must never be read back.
    for _ in 0..5 {
        let (v, _) = u.me(&f).await;
        assert_eq!(v["visits"], expected, "stale copy read after SIGCONT");
        expected += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn logout_while_primary_frozen_stays_logged_out_after_unfreeze() {
    let mut cluster = Cluster::start(3);
    let f = app(&cluster);
    let mut u = User::login(&f, "carol").await;
    assert_eq!(u.me(&f).await.0["user"], "carol");
    let old_cookie = u.cookie.clone();
    let primary = node_of(&u.cookie);
    cluster.node(&primary).freeze();
    let res =
        u.c.post(f.url("/logout"))
            .header("cookie", format!("JSESSIONID={old_cookie}"))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 303);
    cluster.node(&primary).unfreeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Replaying the old cookie must not resurrect the session.
    u.cookie = old_cookie;
    for _ in 0..3 {
        let (v, _) = u.me(&f).await;
        assert_eq!(v["user"], Value::Null, "logged-out session came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_rt::test]
async fn all_nodes_down_degrades_to_memory_and_recovers() {
    let mut cluster = Cluster::start(2);
    let f = app(&cluster);
    for id in ["n1", "n2"] {
        cluster.node(id).kill();
    }
    let mut u = User::login(&f, "dave").await;
    let (v, _) = u.me(&f).await;
    assert_eq!(
        v["user"], "dave",
        "sessions live in the app node's memory while memcached is down"
    );
    let s = stats(&f).await;
    assert!(s["degraded_operations"].as_u64().unwrap() > 0, "{s}");
    for id in ["n1", "n2"] {
        cluster.node(id).restart();
    }
    // Recovery: the session survives and is written to memcached again, so
    // it outlives this app process.
    let degraded = || async { stats(&f).await["degraded_operations"].as_u64().unwrap() };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut visits = 1;
    loop {
        let before = degraded().await;
        let (v, _) = u.me(&f).await;
        visits += 1;
        assert_eq!(v["user"], "dave");
        assert_eq!(v["visits"], visits);
        if degraded().await == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still degraded after the nodes returned"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let port = f.addr.port();
    drop(f);
    let f = app_on(&cluster, port);
    u.c = bare_client(); // the old pooled connection died with the old process
    let (v, _) = u.me(&f).await;
    assert_eq!(
        v["user"], "dave",
        "the degraded session was flushed to memcached"
    );
    assert_eq!(v["visits"], visits + 1);
}

/// `memcached_username`/`memcached_password` (the password from the
/// environment) against nodes started with `memcached -Y`, and
/// `storage_key_prefix`: the app works, and its keys carry the prefix.
#[actix_rt::test]
async fn authenticated_nodes_and_a_key_prefix_from_the_config() {
    use ferrocat_memcached::{ClientOptions, Credentials, Key, NodeClient};
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("authfile");
    std::fs::write(&authfile, "shopapp:s3cret\n").unwrap();
    let cluster = Cluster::start_with_args(2, &["-Y", authfile.to_str().unwrap()]);
    let f = app_with(
        &cluster,
        free_port(),
        "storage_key_prefix = \"shop\"\nmemcached_username = \"shopapp\"",
        &[("FERROCAT__SESSION__MEMCACHED_PASSWORD", "s3cret")],
    );
    let mut u = User::login(&f, "alice").await;
    assert_eq!(u.me(&f).await.0["visits"], 1);
    assert_eq!(u.me(&f).await.0["visits"], 2);
    let stats: Value = bare_client()
        .get(f.url("/ferrocat/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["degraded_operations"], 0, "{stats}");

    // The session's key on its primary node: `shop:<random>-<node>`.
    let id = u.cookie.split_once('.').unwrap().1;
    let key = id.rsplit_once('.').unwrap().0;
    let primary = node_of(&u.cookie);
    let i: usize = primary[1..].parse().unwrap();
    let raw = NodeClient::new(
        cluster.nodes[i - 1].addr(),
        ClientOptions::default().credentials(Some(Credentials::new("shopapp", "s3cret").unwrap())),
    );
    let item = raw.get(&Key::new(format!("shop:{key}")).unwrap()).await;
    assert!(item.unwrap().is_some(), "no shop:{key} on {primary}");
    assert!(raw.get(&Key::new(key).unwrap()).await.unwrap().is_none());
}
