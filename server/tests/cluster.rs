//! The seed's set-up end to end, with real processes: the ferrocat balancer,
//! two `ferrocat app` nodes and two memcached nodes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;

use common::*;
use ferrocat_testkit::Cluster;
use serde_json::Value;

const SECRET: &str = "cluster-test-secret-cluster-test-secret!";

struct Setup {
    memcached: Cluster,
    apps: Vec<Option<Ferrocat>>,
    app_addrs: Vec<SocketAddr>,
    balancer: Ferrocat,
}

fn app_config(name: &str, port: u16, memcached_nodes: &str, session_extra: &str) -> String {
    format!(
        r#"
[node]
name = "{name}"
listen = "127.0.0.1:{port}"
workers = 2

[session]
memcached_nodes = "{memcached_nodes}"
cookie_secret = "{SECRET}"
operation_timeout = "500ms"
{session_extra}
"#
    )
}

fn start(session_extra: &str) -> Setup {
    let memcached = Cluster::start(2);
    let nodes = memcached.memcached_nodes();
    let mut apps = Vec::new();
    let mut app_addrs = Vec::new();
    for name in ["app1", "app2"] {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        apps.push(Some(Ferrocat::spawn(
            "app",
            &app_config(name, port, &nodes, session_extra),
            addr,
        )));
        app_addrs.push(addr);
    }
    let bport = free_port();
    let balancer_toml = format!(
        r#"
[balancer]
listen = "127.0.0.1:{bport}"
workers = 1

[[balancer.upstream]]
address = "{}"
route = "app1"

[[balancer.upstream]]
address = "{}"
route = "app2"
"#,
        app_addrs[0], app_addrs[1]
    );
    let balancer = Ferrocat::spawn(
        "balancer",
        &balancer_toml,
        format!("127.0.0.1:{bport}").parse().unwrap(),
    );
    Setup {
        memcached,
        apps,
        app_addrs,
        balancer,
    }
}

async fn me(c: &reqwest::Client, url: &str) -> (Value, String) {
    let res = c.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    let node = res.headers()["x-ferrocat-node"]
        .to_str()
        .unwrap()
        .to_owned();
    (res.json().await.unwrap(), node)
}

async fn kill_serving_node_keeps_the_user_logged_in(session_extra: &str) {
    let mut s = start(session_extra);
    let c = client();
    let res = c
        .post(s.balancer.url("/login"))
        .form(&[("username", "alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let (v, served_by) = me(&c, &s.balancer.url("/api/me")).await;
    assert_eq!(v["user"], "alice");
    assert_eq!(v["visits"], 1);
    // Sticky routing: the same node again.
    let (v, again) = me(&c, &s.balancer.url("/api/me")).await;
    assert_eq!(
        (v["visits"].as_u64(), again.as_str()),
        (Some(2), served_by.as_str())
    );

    let idx = if served_by == "app1" { 0 } else { 1 };
    s.apps[idx].as_mut().unwrap().kill();
    s.apps[idx] = None;

    let (v, now) = me(&c, &s.balancer.url("/api/me")).await;
    assert_eq!(
        v["user"], "alice",
        "still logged in after SIGKILL of {served_by}"
    );
    assert_eq!(v["visits"], 3);
    assert_ne!(now, served_by);
    let (v, _) = me(&c, &s.balancer.url("/api/me")).await;
    assert_eq!(v["visits"], 4);
    drop(s.memcached);
}

#[actix_rt::test]
async fn non_sticky_app_node_killed_user_stays_logged_in() {
    kill_serving_node_keeps_the_user_logged_in("sticky = false").await;
}

#[actix_rt::test]
async fn sticky_app_node_killed_session_moves_with_all_attributes() {
    kill_serving_node_keeps_the_user_logged_in("sticky = true").await;
}

#[actix_rt::test]
async fn parallel_cart_posts_across_two_nodes_lose_nothing_with_locking_all() {
    let s = start("locking_mode = \"all\"");
    let c = client();
    // Create the session on app1, then hit both app nodes directly in parallel.
    let first = format!("http://{}/api/cart", s.app_addrs[0]);
    c.post(&first)
        .form(&[("item", "first")])
        .send()
        .await
        .unwrap();
    let posts = (0..20).map(|i| {
        let url = format!("http://{}/api/cart", s.app_addrs[i % 2]);
        let c = c.clone();
        async move {
            let res = c
                .post(url)
                .form(&[("item", format!("item{i}"))])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
    });
    futures::future::join_all(posts).await;
    let v: Value = get_json(&c, format!("http://{}/api/cart", s.app_addrs[1])).await;
    let items: HashSet<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    for i in 0..20 {
        assert!(
            items.contains(&format!("item{i}")),
            "item{i} lost: {items:?}"
        );
    }
    drop(s.balancer);
}
