//! Runs a ferrocat balancer from the command line, for benchmarks and trying things out:
//!
//! ```text
//! cargo run --release -p ferrocat-balancer --example balance -- LISTEN WORKERS UPSTREAM...
//! cargo run --release -p ferrocat-balancer --example balance -- 127.0.0.1:0 1 127.0.0.1:8081 127.0.0.1:8082
//! ```
//! `KEEPALIVE=N` sets the idle upstream connections kept per worker (default 64);
//! `ACCESS_LOG=PATH` writes an access log there; `TLS_CERT=PEM TLS_KEY=PEM` adds a TLS listener
//! on a free loopback port (`ssl_listen`); `GZIP=1` turns `gzip` on; `H2=1` offers HTTP/2 on the
//! TLS listener (`http2`); `STATIC_DIR=DIR` answers `/static/` from DIR (`[[balancer.static]]`
//! with `alias`).
//! Prints `listening on ADDR` (and `tls on ADDR`), serves until Ctrl-C or SIGTERM, then stops
//! gracefully.

/// The same allocator as the `ferrocat` binary, so the benchmark measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ferrocat_balancer::{Balancer, BalancerConfig, UpstreamConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: balance LISTEN WORKERS UPSTREAM...";
    let listen = args.next().ok_or(usage)?.parse()?;
    let workers = args.next().ok_or(usage)?.parse()?;
    // UPSTREAM_CA=<PEM>: the upstreams speak TLS, verified against that certificate.
    let upstream_ca = std::env::var_os("UPSTREAM_CA");
    let upstream: Vec<UpstreamConfig> = args
        .map(|a| {
            let mut u = UpstreamConfig::new(a);
            u.tls = upstream_ca.is_some();
            u
        })
        .collect();
    if upstream.is_empty() {
        return Err(usage.into());
    }
    let cfg = BalancerConfig {
        listen,
        workers,
        upstream,
        keepalive: match std::env::var("KEEPALIVE") {
            Ok(v) => v.parse().map_err(|e| format!("KEEPALIVE={v}: {e}"))?,
            Err(_) => BalancerConfig::default().keepalive,
        },
        access_log: std::env::var_os("ACCESS_LOG").map(Into::into),
        // As the benchmark's nginx (`keepalive_requests 1000000` on both sides).
        client_keepalive_requests: 1_000_000,
        keepalive_requests: 1_000_000,
        ssl_certificate: std::env::var_os("TLS_CERT").map(Into::into),
        ssl_certificate_key: std::env::var_os("TLS_KEY").map(Into::into),
        ssl_listen: std::env::var_os("TLS_CERT").map(|_| ([127, 0, 0, 1], 0).into()),
        gzip: std::env::var_os("GZIP").is_some(),
        proxy_ssl_trusted_certificate: upstream_ca.clone().map(Into::into),
        proxy_cache: std::env::var_os("PROXY_CACHE").is_some(),
        proxy_cache_status_header: "X-Cache-Status".into(),
        http2: std::env::var_os("H2").is_some(),
        proxy_buffering: std::env::var_os("PROXY_BUFFERING").is_none_or(|v| v != "0"),
        proxy_temp_path: std::env::var_os("PROXY_TEMP_PATH").map(Into::into),
        statics: std::env::var_os("STATIC_DIR")
            .map(|dir| {
                let mut st = ferrocat_balancer::StaticConfig::root("/static/", dir);
                st.alias = st.root.take();
                vec![st]
            })
            .unwrap_or_default(),
        ..BalancerConfig::default()
    };
    let handle = Balancer::start(cfg).await?;
    if let Some(tls) = handle.tls_addr() {
        println!("tls on {tls}");
    }
    println!("listening on {}", handle.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = handle.stopped() => {}
    }
    handle.stop(true).await;
    Ok(())
}
