//! Signals on the `ferrocat` process: SIGHUP reloads the balancer's upstream
//! set from the file, SIGTERM stops gracefully with exit code 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn app_node(name: &str) -> Ferrocat {
    let port = free_port();
    let toml = format!(
        "[node]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[session]\ncookie_secret = \"{}\"\n",
        "s".repeat(32)
    );
    Ferrocat::spawn("app", &toml, format!("127.0.0.1:{port}").parse().unwrap())
}

fn balancer_toml(port: u16, upstream: SocketAddr) -> String {
    format!("[balancer]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[[balancer.upstream]]\naddress = \"{upstream}\"\n")
}

async fn served_by(c: &reqwest::Client, b: &Ferrocat) -> String {
    let res = c.get(b.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.headers()["x-ferrocat-node"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[actix_rt::test]
async fn sighup_reloads_the_upstream_set_without_a_restart() {
    let (a1, a2) = (app_node("app1"), app_node("app2"));
    let port = free_port();
    let b = Ferrocat::spawn(
        "balancer",
        &balancer_toml(port, a1.addr),
        format!("127.0.0.1:{port}").parse().unwrap(),
    );
    let c = bare_client();
    assert_eq!(served_by(&c, &b).await, "app1");
    std::fs::write(b.config_path(), balancer_toml(port, a2.addr)).unwrap();
    b.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_by(&c, &b).await != "app2" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not switch the upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An invalid file is refused and the running set is kept.
    std::fs::write(b.config_path(), "[balancer]\nlisten = \"nonsense\"\n").unwrap();
    b.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        assert_eq!(served_by(&c, &b).await, "app2");
    }
}

#[actix_rt::test]
async fn sigterm_stops_gracefully_with_exit_code_zero() {
    let mut a = app_node("app1");
    a.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET /api/me with a hand-made cookie; returns the visits counter.
async fn visits(c: &reqwest::Client, f: &Ferrocat, cookie: &str) -> u64 {
    let res = c
        .get(f.url("/api/me"))
        .header("cookie", format!("JSESSIONID={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    body["visits"].as_u64().unwrap()
}

fn memcached_app(name: &str, nodes: &str, extra: &str) -> Ferrocat {
    let port = free_port();
    let toml = format!(
        "[node]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[session]\n\
         memcached_nodes = \"{nodes}\"\ncookie_secret = \"{}\"\noperation_timeout = \"5s\"\n{extra}\n",
        "s".repeat(32)
    );
    Ferrocat::spawn("app", &toml, format!("127.0.0.1:{port}").parse().unwrap())
}

#[actix_rt::test]
async fn sigterm_waits_for_async_session_writes_still_running() {
    let mut cluster = ferrocat_testkit::Cluster::start(2);
    let nodes = cluster.memcached_nodes();
    // Sticky with async backups: the cache answers the request, the
    // persistence actor writes after the response.
    let mut a = memcached_app(
        "app1",
        &nodes,
        "sticky = true\nsession_backup_async = true\ncache_revalidate_after = \"1h\"",
    );
    let c = bare_client();
    let res = c
        .post(a.url("/login"))
        .form(&[("username", "alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = session_cookie(&res, "JSESSIONID").unwrap();
    // Let the login's backup land before memcached hangs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&a).await["backups"].as_u64().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "the login was never backed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Both memcached nodes hang: the next change is answered, its write waits.
    for n in &mut cluster.nodes {
        n.freeze();
    }
    assert_eq!(visits(&c, &a, &cookie).await, 1);
    a.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "exited while a session write was still running"
    );
    for n in &mut cluster.nodes {
        n.unfreeze();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "did not stop after the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another app node reads what the answered request changed.
    let b = memcached_app("app2", &nodes, "");
    assert_eq!(visits(&c, &b, &cookie).await, 2);
}
