//! Session overhead: the demo's `GET /api/me` with non-sticky sessions on two
//! memcached nodes (primary + backup) against the same route with sessions off, under the same `wrk`
//! load, alternated in one run. Prints requests/s, p99 and the ratio.
//!
//! Run: `cargo bench -p ferrocat-benches --bench session_overhead`
//! (needs `wrk` and `memcached`: `apt-get install wrk memcached`).
//! Target (issue 4): ratio >= 0.6.
//!
//! Besides the target pair it measures sticky sessions, one memcached node and the in-process
//! store, which shows where the overhead goes. `SESSION_BENCH_ONLY=<text>` runs only the variants
//! whose name contains the text (handy under `perf record`).

/// The same allocator as the `ferrocat` binary, so the benchmark measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use ferrocat_examples::NodeName;
use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
use ferrocat_session::store::memory::MemoryStore;
use ferrocat_session::{SessionConfig, SessionManager, Stats};
use ferrocat_testkit::Cluster;

const SESSIONS: usize = 200;
const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const CONNECTIONS: u32 = 32;

/// How a benchmarked server keeps sessions.
#[derive(Clone, Copy)]
enum Variant {
    /// Sessions on memcached: the node list (`Some`: both nodes, `None`: the first only) and sticky.
    Memcached { both_nodes: bool, sticky: bool },
    /// Non-sticky sessions in the in-process store (the manager's own cost, no network).
    InProcess,
    /// No session middleware.
    Off,
}

/// Starts one demo server (1 worker) on its own thread and actix System.
fn start_server(all_nodes: String, variant: Variant) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let secret = Some("bench-secret-bench-secret-bench-secret".to_owned());
            let stats = Arc::new(Stats::default());
            let mgr = match variant {
                Variant::Memcached { both_nodes, sticky } => {
                    let memcached_nodes = if both_nodes {
                        all_nodes
                    } else {
                        all_nodes.split(' ').next().unwrap_or_default().to_owned()
                    };
                    let settings = SessionConfig {
                        memcached_nodes,
                        sticky,
                        cookie_secret: secret,
                        ..Default::default()
                    }
                    .validate()
                    .expect("valid settings");
                    let store_cfg = MemcachedStoreConfig::from_msm(&settings.memcached_nodes, "")
                        .expect("node list");
                    let store =
                        ReplicatedMemcachedStore::new(store_cfg, stats.clone()).expect("store");
                    Some(SessionManager::new(
                        settings,
                        "app1",
                        Arc::new(store),
                        stats,
                    ))
                }
                Variant::InProcess => {
                    let settings = SessionConfig {
                        cookie_secret: secret,
                        ..Default::default()
                    }
                    .validate()
                    .expect("valid settings");
                    let store = MemoryStore::new(100_000);
                    Some(SessionManager::new(
                        settings,
                        "app1",
                        Arc::new(store),
                        stats,
                    ))
                }
                Variant::Off => None,
            };
            macro_rules! serve {
                ($app:expr) => {{
                    let server = HttpServer::new($app)
                        .workers(1)
                        .bind("127.0.0.1:0")
                        .expect("bind");
                    tx.send(server.addrs()[0]).expect("send addr");
                    let _ = server.run().await;
                }};
            }
            let node = web::Data::new(NodeName("app1".into()));
            match mgr {
                Some(mgr) => serve!(move || App::new()
                    .app_data(node.clone())
                    .wrap(mgr.middleware())
                    .configure(ferrocat_examples::configure)),
                None => serve!(move || App::new()
                    .app_data(node.clone())
                    .configure(ferrocat_examples::configure)),
            }
        });
    });
    rx.recv().expect("server started")
}

/// One raw GET; returns the session cookie the server set (a dummy one when
/// sessions are off).
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
        .unwrap_or_else(|| "JSESSIONID=none".into())
}

/// CPU time (user + system) a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    num(11) + num(12)
}

/// One wrk run: requests/s, p99 (ms), requests done.
fn wrk(addr: SocketAddr, script: &std::path::Path) -> (f64, f64, f64) {
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
    let done = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    (rps, p99, done)
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
    // Two memcached nodes: every session has a primary and a backup copy.
    let cluster = Cluster::start(2);
    let variants = [
        (
            "non-sticky, 2 memcached nodes",
            Variant::Memcached {
                both_nodes: true,
                sticky: false,
            },
        ),
        (
            "sticky, 2 memcached nodes",
            Variant::Memcached {
                both_nodes: true,
                sticky: true,
            },
        ),
        (
            "non-sticky, 1 memcached node",
            Variant::Memcached {
                both_nodes: false,
                sticky: false,
            },
        ),
        ("non-sticky, in-process store", Variant::InProcess),
        ("sessions off", Variant::Off),
    ];
    // `SESSION_BENCH_ONLY=<text>`: only the variants whose name contains it (for profiling).
    let only = std::env::var("SESSION_BENCH_ONLY").unwrap_or_default();
    let servers: Vec<(&str, SocketAddr)> = variants
        .iter()
        .filter(|(name, _)| name.contains(only.as_str()))
        .map(|(name, v)| (*name, start_server(cluster.memcached_nodes(), *v)))
        .collect();
    let dir = std::env::temp_dir().join(format!("ferrocat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let scripts: Vec<std::path::PathBuf> = servers
        .iter()
        .enumerate()
        .map(|(i, (_, addr))| {
            let cookies: Vec<String> = (0..SESSIONS).map(|_| fetch_cookie(*addr)).collect();
            let script = dir.join(format!("cookies{i}.lua"));
            let list = cookies.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(",\n");
            std::fs::write(
                &script,
                format!(
                    "local cookies = {{\n{list}\n}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  \
                     return wrk.format(\"GET\", \"/api/me\", {{ [\"Cookie\"] = cookies[(i % #cookies) + 1] }})\nend\n"
                ),
            )
            .expect("write script");
            script
        })
        .collect();

    println!(
        "session overhead: GET /api/me, 2 memcached nodes, {SESSIONS} sessions, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, \
         1 actix worker each, {ROUNDS} alternated rounds"
    );
    let mut rps = vec![Vec::new(); servers.len()];
    let mut p99 = vec![Vec::new(); servers.len()];
    // CPU per request (us): this process (the servers run one at a time) and the memcached nodes.
    let mut cpu_app = vec![Vec::new(); servers.len()];
    let mut cpu_mc = vec![Vec::new(); servers.len()];
    let hz = 100.0; // USER_HZ on Linux
    let me = std::process::id();
    let mc_ticks = || {
        cluster
            .nodes
            .iter()
            .map(|m| cpu_ticks(m.pid()))
            .sum::<u64>()
    };
    for round in 1..=ROUNDS {
        for (i, (name, addr)) in servers.iter().enumerate() {
            let (a0, m0) = (cpu_ticks(me), mc_ticks());
            let (r, p, done) = wrk(*addr, &scripts[i]);
            let (a1, m1) = (cpu_ticks(me), mc_ticks());
            let per_req = |d: u64| d as f64 / hz * 1e6 / done;
            let (ca, cm) = (per_req(a1 - a0), per_req(m1 - m0));
            println!(
                "round {round}: {name:<32} {r:>10.0} req/s  p99 {p:>7.2} ms  CPU/request: app {ca:>5.1} us, memcached {cm:>5.1} us"
            );
            rps[i].push(r);
            p99[i].push(p);
            cpu_app[i].push(ca);
            cpu_mc[i].push(cm);
        }
    }
    let medians: Vec<f64> = rps.into_iter().map(median).collect();
    let off = servers
        .iter()
        .position(|(name, _)| *name == "sessions off")
        .map_or(f64::NAN, |i| medians[i]);
    println!();
    println!(
        "| variant | req/s (median) | p99 ms (median) | ratio to sessions off | app CPU us/req | memcached CPU us/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (name, _)) in servers.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} |",
            medians[i],
            median(p99[i].clone()),
            medians[i] / off,
            median(cpu_app[i].clone()),
            median(cpu_mc[i].clone()),
        );
    }
    println!();
    println!("target (issue 4): non-sticky, 2 memcached nodes / sessions off >= 0.60");
    let _ = std::fs::remove_dir_all(&dir);
}
