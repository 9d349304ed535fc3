//! Session overhead: the demo's `GET /api/me` with non-sticky memcached
//! sessions against the same route with sessions off, under the same `wrk`
//! load, alternated in one run. Prints requests/s, p99 and the ratio.
//!
//! Run: `cargo bench -p ferrocat-benches --bench session_overhead`
//! (needs `wrk` and `memcached`: `apt-get install wrk memcached`).
//! Target (issue 4): ratio >= 0.6.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use ferrocat_examples::NodeName;
use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
use ferrocat_session::{SessionConfig, SessionManager, Stats};
use ferrocat_testkit::Memcached;

const SESSIONS: usize = 200;
const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const CONNECTIONS: u32 = 32;

fn start_servers(memcached: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let settings = SessionConfig {
                memcached_nodes: format!("n1:{memcached}"),
                cookie_secret: Some("bench-secret-bench-secret-bench-secret".into()),
                ..Default::default()
            }
            .validate()
            .expect("valid settings");
            let stats = Arc::new(Stats::default());
            let store_cfg =
                MemcachedStoreConfig::from_msm(&settings.memcached_nodes, "").expect("node list");
            let store = ReplicatedMemcachedStore::new(store_cfg, stats.clone()).expect("store");
            let mgr = SessionManager::new(settings, "app1", Arc::new(store), stats);
            let with = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(NodeName("app1".into())))
                    .wrap(mgr.middleware())
                    .configure(ferrocat_examples::configure)
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .expect("bind");
            let without = HttpServer::new(|| {
                App::new()
                    .app_data(web::Data::new(NodeName("app1".into())))
                    .configure(ferrocat_examples::configure)
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .expect("bind");
            let addrs = (with.addrs()[0], without.addrs()[0]);
            let (a, b) = (with.run(), without.run());
            tx.send(addrs).expect("send addrs");
            let _ = futures_join(a, b).await;
        });
    });
    rx.recv().expect("servers started")
}

async fn futures_join(a: actix_web::dev::Server, b: actix_web::dev::Server) {
    let (ha, hb) = (actix_rt::spawn(a), actix_rt::spawn(b));
    let _ = ha.await;
    let _ = hb.await;
}

/// One raw GET; returns the session cookie the server set.
fn fetch_cookie(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET /api/me HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    resp.lines()
        .find_map(|l| {
            let v = l
                .strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))?;
            Some(v.split(';').next()?.to_owned())
        })
        .expect("a session cookie")
}

fn wrk(addr: SocketAddr, script: &std::path::Path) -> (f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{SECONDS}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/api/me"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or(f64::NAN);
    (rps, p99)
}

/// wrk prints "1.23ms", "456.00us" or "1.01s"; returns ms.
fn parse_latency(v: &str) -> f64 {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().map(|x| x * mult).unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("session_overhead: `wrk` not found (apt-get install wrk); skipped");
        return;
    }
    let mc = Memcached::start();
    let (with, without) = start_servers(mc.addr());
    let cookies: Vec<String> = (0..SESSIONS).map(|_| fetch_cookie(with)).collect();
    let dir = std::env::temp_dir().join(format!("ferrocat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("cookies.lua");
    let list = cookies
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(",\n");
    std::fs::write(
        &script,
        format!(
            "local cookies = {{\n{list}\n}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  \
             return wrk.format(\"GET\", \"/api/me\", {{ [\"Cookie\"] = cookies[(i % #cookies) + 1] }})\nend\n"
        ),
    )
    .expect("write script");

    println!("session overhead: GET /api/me, {SESSIONS} sessions, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, 1 actix worker each, {ROUNDS} alternated rounds");
    let (mut w_rps, mut w_p99, mut o_rps, mut o_p99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=ROUNDS {
        let (r, p) = wrk(with, &script);
        println!("round {round}: memcached sessions  {r:>10.0} req/s  p99 {p:>7.2} ms");
        w_rps.push(r);
        w_p99.push(p);
        let (r, p) = wrk(without, &script);
        println!("round {round}: sessions off        {r:>10.0} req/s  p99 {p:>7.2} ms");
        o_rps.push(r);
        o_p99.push(p);
    }
    let (wr, or) = (median(w_rps), median(o_rps));
    println!();
    println!("| variant | req/s (median) | p99 ms (median) |");
    println!("|---|---|---|");
    println!(
        "| non-sticky memcached sessions | {wr:.0} | {:.2} |",
        median(w_p99)
    );
    println!("| sessions off | {or:.0} | {:.2} |", median(o_p99));
    println!();
    println!("ratio sessions/off = {:.2} (target >= 0.60)", wr / or);
    let _ = std::fs::remove_dir_all(&dir);
}
