//! A balancer that runs out of file descriptors (nginx: `accept4() failed (24: Too many open
//! files)`) keeps running, backs off, and serves again as soon as descriptors are free.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[actix_rt::test]
async fn a_balancer_out_of_descriptors_recovers_when_they_are_freed() {
    let app_port = free_port();
    let app = Ferrocat::spawn(
        "app",
        &format!(
            "[node]\nname = \"app1\"\nlisten = \"127.0.0.1:{app_port}\"\nworkers = 1\n\n[session]\ncookie_secret = \"{}\"\n",
            "s".repeat(32)
        ),
        format!("127.0.0.1:{app_port}").parse().unwrap(),
    );
    let port = free_port();
    let toml = format!(
        "[balancer]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[[balancer.upstream]]\naddress = \"{}\"\n",
        app.addr
    );
    // 64 descriptors in all for the balancer process (hard limit: it cannot raise it).
    let b = Ferrocat::spawn_wrapped(
        &["prlimit", "--nofile=64:64"],
        "balancer",
        &toml,
        format!("127.0.0.1:{port}").parse().unwrap(),
        &[],
    );
    let c = bare_client();
    let res = c.get(b.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // 100 idle connections: the balancer accepts until its descriptors run out; the rest wait
    // in the listen queue. A request now cannot get through.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(b.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let starved = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        starved.get(b.url("/health")).send().await.is_err(),
        "the balancer should be out of descriptors with 100 idle clients"
    );

    // Freed: it accepts again (the queued, closed connections go away) and serves.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A new client each time: a pooled connection from before would prove nothing.
        match bare_client().get(b.url("/health")).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the balancer did not recover: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it is still the same, running process.
    let mut b = b;
    assert!(b.child.try_wait().unwrap().is_none());
}
