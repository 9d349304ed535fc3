//! Running the modes: all-in-one, balancer, app; signals.
//!
//! Each mode runs in one actix `System`. Signals are handled here, not by
//! actix-web: SIGTERM/SIGINT stop accepting and finish in-flight requests
//! (balancer first, then the app node), then wait (at most 10 s) for session
//! writes that outlived their responses; SIGHUP re-reads the config file and
//! hands the new `[balancer]` section to the running balancer, which swaps its
//! upstream set without dropping connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferrocat_balancer::config::{BalancerConfig, UpstreamConfig};
use ferrocat_balancer::{Balancer, BalancerHandle};
use tokio::signal::unix::{signal, SignalKind};

use crate::app::{start_app, AppNode};
use crate::config::{Config, ConfigError, Loaded};

/// Process exit codes.
pub mod exit {
    /// Clean exit.
    pub const OK: i32 = 0;
    /// Runtime failure (cannot bind, backend unavailable).
    pub const FAILURE: i32 = 1;
    /// Invalid configuration.
    pub const CONFIG: i32 = 2;
}

/// Which mode to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// balancer + local app node
    AllInOne,
    /// balancer only
    Balancer,
    /// app node only
    App,
}

/// In all-in-one mode the local app node is an upstream like any other:
/// added unless the config already lists it (by route).
pub fn with_local_upstream(
    mut cfg: BalancerConfig,
    route: &str,
    app_addr: SocketAddr,
) -> BalancerConfig {
    match cfg
        .upstream
        .iter_mut()
        .find(|u| u.route.as_deref() == Some(route))
    {
        Some(u) => u.address = app_addr.to_string(),
        None => cfg
            .upstream
            .push(UpstreamConfig::new(app_addr.to_string()).with_route(route)),
    }
    cfg
}

fn report_config_error(e: &ConfigError) {
    eprintln!("ferrocat: invalid configuration: {e}");
}

/// Loads the config or reports the error.
pub fn load_config(path: Option<&Path>) -> Result<Loaded, i32> {
    Config::load(path).map_err(|e| {
        report_config_error(&e);
        exit::CONFIG
    })
}

/// Longest a graceful stop waits for session writes still running.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a mode until a stop signal; returns the exit code.
pub fn run(mode: Mode, path: Option<PathBuf>) -> i32 {
    let loaded = match load_config(path.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    raise_open_file_limit();
    let system = actix_rt::System::new();
    system.block_on(async move {
        match serve(mode, path, loaded).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("ferrocat: {e}");
                exit::FAILURE
            }
        }
    })
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does and nginx's
/// `worker_rlimit_nofile` would: every proxied request holds a client and an upstream socket,
/// so a default soft limit of 1024 would cap the balancer at about 500 concurrent clients, each
/// one more answered by `accept failed: Too many open files`.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}");
            return;
        }
    };
    // An unlimited hard limit cannot be the soft one: the kernel caps open files at
    // `fs.nr_open`.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let target = hard.min(nr_open);
    if soft >= target {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => log::info!("open-file limit raised from {soft} to {target}"),
        Err(e) => log::warn!("cannot raise the open-file limit from {soft} to {target}: {e}"),
    }
}

async fn serve(mode: Mode, path: Option<PathBuf>, loaded: Loaded) -> Result<(), String> {
    let Loaded { config, session } = loaded;
    let mut app: Option<AppNode> = None;
    if mode != Mode::Balancer {
        let listen = match (mode, &path) {
            // all-in-one without a config: the app node takes a free loopback port.
            (Mode::AllInOne, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
            _ => config.node.listen,
        };
        app = Some(start_app(&config.node, listen, session).map_err(|e| e.to_string())?);
    }
    let mut balancer: Option<BalancerHandle> = None;
    if mode != Mode::App {
        let mut bcfg = config.balancer.clone();
        if let Some(a) = &app {
            bcfg = with_local_upstream(bcfg, &config.node.name, a.addr);
        }
        let handle = Balancer::start(bcfg)
            .await
            .map_err(|e| format!("balancer: cannot listen on {}: {e}", config.balancer.listen))?;
        balancer = Some(handle);
    }
    let app_addr = app.as_ref().map(|a| a.addr);
    let manager = app.as_ref().map(|a| a.manager.clone());
    let app_server = app.map(|a| a.server);
    let app_handle = app_server.as_ref().map(|s| s.handle());
    if let Some(s) = app_server {
        actix_rt::spawn(s);
    }

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&balancer, path.as_deref(), &config.node.name, app_addr),
        }
    }
    log::info!("stopping: finishing in-flight requests");
    if let Some(b) = &balancer {
        b.stop(true).await;
    }
    if let Some(h) = app_handle {
        h.stop(true).await;
    }
    if let Some(m) = manager {
        // Session writes that outlived their responses (async backups, slow
        // sync ones) end before the process does.
        let left = m.drain(SHUTDOWN_DRAIN).await;
        if left > 0 {
            log::warn!(
                "{left} session write(s) still running after {SHUTDOWN_DRAIN:?}; exiting without them"
            );
        }
    }
    log::info!("stopped");
    Ok(())
}

fn reload(
    balancer: &Option<BalancerHandle>,
    path: Option<&Path>,
    route: &str,
    app_addr: Option<SocketAddr>,
) {
    let Some(b) = balancer else {
        log::info!("SIGHUP: nothing to reload on an app node");
        return;
    };
    let Some(path) = path else {
        log::info!("SIGHUP: no config file to reload");
        return;
    };
    match Config::load(Some(path)) {
        Ok(l) => {
            let mut cfg = l.config.balancer;
            if let Some(addr) = app_addr {
                cfg = with_local_upstream(cfg, route, addr);
            }
            match b.reload(cfg) {
                Ok(()) => log::info!(
                    "SIGHUP: balancer configuration reloaded from {}",
                    path.display()
                ),
                Err(e) => {
                    log::error!("SIGHUP: reload rejected, keeping the running configuration: {e}")
                }
            }
        }
        Err(e) => log::error!("SIGHUP: reload rejected, keeping the running configuration: {e}"),
    }
}

/// `check-config`: exit 0 when valid, 2 otherwise.
pub fn check_config(path: &Path) -> i32 {
    match load_config(Some(path)) {
        Ok(l) => {
            // The files it names too (error page, TLS certificate and key), as nginx -t does.
            if let Err(e) = l.config.balancer.check_files() {
                report_config_error(&ConfigError::Invalid {
                    key: e.key,
                    reason: e.reason,
                });
                return exit::CONFIG;
            }
            println!(
                "{}: OK (node {}, {} upstream(s), sessions: {})",
                path.display(),
                l.config.node.name,
                l.config.balancer.upstream.len(),
                if l.session.memcached_nodes.is_empty() {
                    "in-process"
                } else {
                    "memcached"
                }
            );
            exit::OK
        }
        Err(code) => code,
    }
}
