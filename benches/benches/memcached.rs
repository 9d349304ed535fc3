//! Session load + store pairs per second against one memcached (issue 3's benchmark).
//!
//! One pair = GET of a user's session, then SET of a 1 KB value, for a random user out of
//! 10,000. Measured in one run against ONE memcached started by the testkit, at
//! concurrency 1, 16 and 64, for:
//! - `ferrocat-memcached` (pipelined meta client), on a current-thread tokio runtime like
//!   an actix worker, and on a 2-thread runtime;
//! - the `memcache` crate 0.21's blocking `Client` (one OS thread per concurrent user,
//!   r2d2 pool of that size);
//! - its async meta client `memcache::exp::AsyncMetaClient` (current-thread runtime);
//! - a baseline: two sequential raw round trips (`mg` then `ms`) on a plain `TcpStream`.
//!
//! Every cell runs a fixed time (warm-up, then measurement), so the whole run stays
//! around a minute. Run: `cargo bench -p ferrocat-benches --bench memcached`.
//! `FERROCAT_BENCH_SECS` overrides the measured seconds per cell,
//! `FERROCAT_BENCH_CONNECTIONS` ferrocat's connections per node (default 2).
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocat_memcached::{ClientOptions, Key, NodeClient, SetMode};
use ferrocat_testkit::Memcached;

const USERS: usize = 10_000;
const VALUE_SIZE: usize = 1024;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const WARMUP: Duration = Duration::from_millis(500);

fn measure_time() -> Duration {
    std::env::var("FERROCAT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(3))
}

fn user_key(i: usize) -> String {
    format!("bench:session:{i:05}")
}

/// Small per-worker PRNG (xorshift) choosing the next user.
struct Users(u64);
impl Users {
    fn new(seed: usize) -> Users {
        Users(0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % USERS as u64) as usize
    }
}

/// Shared counters of one cell: pairs done, errors, and the stop flag.
#[derive(Default)]
struct Cell {
    pairs: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Cell {
    fn done(&self, ok: bool) {
        if ok {
            self.pairs.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Result of one cell: pairs per second and errors.
#[derive(Clone, Copy)]
struct Rate {
    per_sec: f64,
    errors: u64,
}

/// Warm up, count pairs for the measure time, stop. `wait` sleeps in the caller's world.
async fn sample_async(cell: &Cell) -> Rate {
    tokio::time::sleep(WARMUP).await;
    let (p0, t0) = (cell.pairs.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(measure_time()).await;
    let (p1, t1) = (cell.pairs.load(Ordering::Relaxed), Instant::now());
    cell.stop.store(true, Ordering::Relaxed);
    Rate {
        per_sec: (p1 - p0) as f64 / (t1 - t0).as_secs_f64(),
        errors: cell.errors.load(Ordering::Relaxed),
    }
}

fn sample_blocking(cell: &Cell) -> Rate {
    std::thread::sleep(WARMUP);
    let (p0, t0) = (cell.pairs.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(measure_time());
    let (p1, t1) = (cell.pairs.load(Ordering::Relaxed), Instant::now());
    cell.stop.store(true, Ordering::Relaxed);
    Rate {
        per_sec: (p1 - p0) as f64 / (t1 - t0).as_secs_f64(),
        errors: cell.errors.load(Ordering::Relaxed),
    }
}

/// Run `c` async workers made by `worker(seed, cell)` on `rt` and sample them.
fn run_async<F, Fut>(rt: &tokio::runtime::Runtime, c: usize, worker: F) -> Rate
where
    F: Fn(usize, Arc<Cell>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cell = Arc::new(Cell::default());
    rt.block_on(async {
        let handles: Vec<_> = (0..c)
            .map(|i| tokio::spawn(worker(i, cell.clone())))
            .collect();
        let rate = sample_async(&cell).await;
        for h in handles {
            h.await.unwrap();
        }
        rate
    })
}

fn ferrocat(addr: SocketAddr, rt: &tokio::runtime::Runtime, c: usize) -> Rate {
    let conns = std::env::var("FERROCAT_BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ferrocat_memcached::DEFAULT_CONNECTIONS);
    let client = NodeClient::new(addr, ClientOptions::default().connections(conns));
    let keys: Arc<Vec<Key>> =
        Arc::new((0..USERS).map(|i| Key::new(user_key(i)).unwrap()).collect());
    let value: Arc<[u8]> = vec![b'f'; VALUE_SIZE].into();
    run_async(rt, c, |seed, cell| {
        let (client, keys, value) = (client.clone(), keys.clone(), value.clone());
        async move {
            let mut users = Users::new(seed);
            while cell.running() {
                let key = &keys[users.next()];
                let ok = client.get(key).await.is_ok()
                    && client.set(key, &value, 0, 1800, SetMode::Set).await.is_ok();
                cell.done(ok);
            }
        }
    })
}

fn memcache_async(addr: SocketAddr, rt: &tokio::runtime::Runtime, c: usize) -> Rate {
    let client = rt.block_on(async {
        memcache::exp::AsyncMetaClient::builder()
            .max_idle(c.max(8))
            .connect_async(addr)
            .await
            .unwrap()
    });
    let keys: Arc<Vec<String>> = Arc::new((0..USERS).map(user_key).collect());
    let value: Arc<[u8]> = vec![b'a'; VALUE_SIZE].into();
    run_async(rt, c, |seed, cell| {
        let (client, keys, value) = (client.clone(), keys.clone(), value.clone());
        async move {
            let mut users = Users::new(seed);
            while cell.running() {
                let key = &keys[users.next()];
                let ok = client.get(key.as_bytes()).send().await.is_ok()
                    && client
                        .set(key.as_bytes(), &value[..])
                        .ttl(memcache::exp::Ttl::secs(1800))
                        .send()
                        .await
                        .is_ok();
                cell.done(ok);
            }
        }
    })
}

fn memcache_blocking(addr: SocketAddr, c: usize) -> Rate {
    let url = format!("memcache://{addr}?timeout=5");
    let client = Arc::new(memcache::Client::with_pool_size(url.as_str(), c as u32).unwrap());
    let keys: Arc<Vec<String>> = Arc::new((0..USERS).map(user_key).collect());
    let value = Arc::new(vec![b'b'; VALUE_SIZE]);
    let cell = Arc::new(Cell::default());
    let threads: Vec<_> = (0..c)
        .map(|seed| {
            let (client, keys, value, cell) =
                (client.clone(), keys.clone(), value.clone(), cell.clone());
            std::thread::spawn(move || {
                let mut users = Users::new(seed);
                while cell.running() {
                    let key = &keys[users.next()];
                    let ok = client.get::<Vec<u8>>(key).is_ok()
                        && client.set(key, &value[..], 1800).is_ok();
                    cell.done(ok);
                }
            })
        })
        .collect();
    let rate = sample_blocking(&cell);
    for t in threads {
        t.join().unwrap();
    }
    rate
}

/// Two sequential raw round trips per pair: `mg` (read the value), then `ms`.
fn raw_two_round_trips(addr: SocketAddr) -> Rate {
    let cell = Arc::new(Cell::default());
    let worker = {
        let cell = cell.clone();
        std::thread::spawn(move || {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_nodelay(true).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let value = vec![b'r'; VALUE_SIZE];
            let mut users = Users::new(7);
            let mut line = String::new();
            let mut body = vec![0u8; VALUE_SIZE + 2];
            let mut set = Vec::with_capacity(VALUE_SIZE + 64);
            while cell.running() {
                let key = user_key(users.next());
                writer
                    .write_all(format!("mg {key} v f c\r\n").as_bytes())
                    .unwrap();
                line.clear();
                reader.read_line(&mut line).unwrap();
                if let Some(len) = line.strip_prefix("VA ").and_then(|r| r.split(' ').next()) {
                    let len: usize = len.trim().parse().unwrap();
                    body.resize(len + 2, 0);
                    reader.read_exact(&mut body).unwrap();
                }
                set.clear();
                set.extend_from_slice(format!("ms {key} {VALUE_SIZE} T1800\r\n").as_bytes());
                set.extend_from_slice(&value);
                set.extend_from_slice(b"\r\n");
                writer.write_all(&set).unwrap();
                line.clear();
                reader.read_line(&mut line).unwrap();
                cell.done(line == "HD\r\n");
            }
        })
    };
    let rate = sample_blocking(&cell);
    worker.join().unwrap();
    rate
}

/// Store every user's session once so the GETs hit.
fn populate(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    let value = vec![b'p'; VALUE_SIZE];
    let mut batch = Vec::new();
    for i in 0..USERS {
        batch.extend_from_slice(format!("ms {} {VALUE_SIZE} T1800 q\r\n", user_key(i)).as_bytes());
        batch.extend_from_slice(&value);
        batch.extend_from_slice(b"\r\n");
    }
    batch.extend_from_slice(b"mn\r\n");
    s.write_all(&batch).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_eq!(line, "MN\r\n", "populate failed");
}

fn fmt_rate(r: Option<Rate>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.errors > 0 => format!("{:.0} ({} err)", r.per_sec, r.errors),
        Some(r) => format!("{:.0}", r.per_sec),
    }
}

fn main() {
    let server = Memcached::start_with_args(&["-t", "2", "-c", "4096"]);
    let addr = server.addr();
    populate(addr);
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    type Row = (&'static str, [Option<Rate>; 3]);
    let mut rows: Vec<Row> = Vec::new();
    let per_c = |f: &dyn Fn(usize) -> Rate| CONCURRENCY.map(|c| Some(f(c)));

    eprintln!("running: raw baseline");
    rows.push((
        "raw TCP, mg then ms (2 round trips)",
        [Some(raw_two_round_trips(addr)), None, None],
    ));
    eprintln!("running: ferrocat-memcached");
    rows.push((
        "ferrocat-memcached (current-thread rt)",
        per_c(&|c| ferrocat(addr, &current, c)),
    ));
    rows.push((
        "ferrocat-memcached (2-thread rt)",
        per_c(&|c| ferrocat(addr, &multi, c)),
    ));
    eprintln!("running: memcache blocking Client");
    rows.push((
        "memcache 0.21 blocking Client (threads)",
        per_c(&|c| memcache_blocking(addr, c)),
    ));
    eprintln!("running: memcache::exp AsyncMetaClient");
    rows.push((
        "memcache 0.21 exp AsyncMetaClient",
        per_c(&|c| memcache_async(addr, &current, c)),
    ));

    println!();
    println!("session load+store pairs/s (GET + SET of {VALUE_SIZE} B, {USERS} users, one memcached, {:?} per cell)", measure_time());
    println!(
        "{:<42} {:>12} {:>12} {:>12}",
        "client", "c=1", "c=16", "c=64"
    );
    for (name, cells) in &rows {
        println!(
            "{:<42} {:>12} {:>12} {:>12}",
            name,
            fmt_rate(cells[0]),
            fmt_rate(cells[1]),
            fmt_rate(cells[2])
        );
    }
    let at = |i: usize, c: usize| rows[i].1[c].map(|r| r.per_sec).unwrap_or(0.0);
    let ferrocat64 = at(1, 2).max(at(2, 2));
    let best_memcache64 = at(3, 2).max(at(4, 2));
    println!();
    println!(
        "c=64: ferrocat {:.0} / faster memcache client {:.0} = {:.2}x (target >= 2x)",
        ferrocat64,
        best_memcache64,
        ferrocat64 / best_memcache64
    );
    let raw_us = 1e6 / at(0, 0);
    let ferrocat_us = 1e6 / at(1, 0);
    println!(
        "c=1: ferrocat pair latency {ferrocat_us:.1} us / raw two round trips {raw_us:.1} us = {:.2}x (target <= 1.5x)",
        ferrocat_us / raw_us
    );
    drop(server);
}
