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
