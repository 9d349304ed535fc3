//! The app node: the demo app behind the session manager.
//!
//! [`build_backend`] picks the session backend from `[session]`
//! (`memcached_nodes` empty: the in-process store; else replicated memcached),
//! [`start_app`] binds the actix-web server with one worker per core (or
//! `node.workers`), every response carrying `X-Ferrocat-Node`, and the
//! statistics at `GET /ferrocat/stats`.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpResponse, HttpServer};
use ferrocat_examples::NodeName;
use ferrocat_session::config::SessionSettings;
use ferrocat_session::store::memory::MemoryStore;
use ferrocat_session::{SessionBackend, SessionManager, Stats};

use crate::config::NodeConfig;

/// Errors starting an app node.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The session backend could not be built from the config.
    #[error("session backend: {0}")]
    Backend(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// the address
        addr: SocketAddr,
        /// the OS error
        source: std::io::Error,
    },
}

/// Builds the session backend named by the settings.
pub fn build_backend(
    settings: &SessionSettings,
    stats: Arc<Stats>,
) -> Result<Arc<dyn SessionBackend>, AppError> {
    if settings.memcached_nodes.is_empty() {
        log::info!(
            "sessions: in-process store (set session.memcached_nodes for replicated memcached)"
        );
        return Ok(Arc::new(MemoryStore::default()));
    }
    crate::memcached::build(settings, stats).map_err(AppError::Backend)
}

/// A running app node.
pub struct AppNode {
    /// The bound address.
    pub addr: SocketAddr,
    /// The actix-web server (await it, or stop it through its handle).
    pub server: actix_web::dev::Server,
    /// The session manager (for statistics).
    pub manager: SessionManager,
}

/// Binds and starts the app node. Call inside an actix `System`.
pub fn start_app(
    node: &NodeConfig,
    listen: SocketAddr,
    settings: SessionSettings,
) -> Result<AppNode, AppError> {
    let stats = Arc::new(Stats::default());
    let backend = build_backend(&settings, stats.clone())?;
    let manager = SessionManager::new(settings, &node.name, backend, stats);
    let name = node.name.clone();
    let mgr = manager.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(NodeName(name.clone())))
            .app_data(web::Data::new(mgr.clone()))
            .wrap(mgr.middleware())
            .wrap(DefaultHeaders::new().add(("X-Ferrocat-Node", name.clone())))
            .route("/ferrocat/stats", web::get().to(stats_route))
            .configure(ferrocat_examples::configure)
    })
    .disable_signals()
    .shutdown_timeout(30);
    if node.workers > 0 {
        server = server.workers(node.workers);
    }
    let server = server.bind(listen).map_err(|source| AppError::Bind {
        addr: listen,
        source,
    })?;
    let addr = server.addrs().first().copied().unwrap_or(listen);
    log::info!(
        "app node {} listening on http://{addr} (sessions: {})",
        node.name,
        manager.backend_name()
    );
    Ok(AppNode {
        addr,
        server: server.run(),
        manager,
    })
}

/// The statistics as JSON, or with `?format=prometheus` in Prometheus' text format (with the
/// backend as `ferrocat_session_backend_info{backend="..."}` and the sticky cache's size).
async fn stats_route(req: actix_web::HttpRequest, mgr: web::Data<SessionManager>) -> HttpResponse {
    if req
        .query_string()
        .split('&')
        .any(|kv| kv == "format=prometheus")
    {
        let mut text = mgr.stats().to_prometheus();
        text.push_str(&format!(
            "# HELP ferrocat_session_backend_info The session store of this app node.\n\
             # TYPE ferrocat_session_backend_info gauge\n\
             ferrocat_session_backend_info{{backend=\"{}\"}} 1\n\
             # HELP ferrocat_session_cached_sessions Sessions in the sticky cache now.\n\
             # TYPE ferrocat_session_cached_sessions gauge\n\
             ferrocat_session_cached_sessions {}\n",
            mgr.backend_name(),
            mgr.cached_sessions()
        ));
        return HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text);
    }
    let mut v = serde_json::to_value(mgr.stats()).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("backend".into(), mgr.backend_name().into());
        obj.insert("cached_sessions".into(), mgr.cached_sessions().into());
    }
    HttpResponse::Ok().json(v)
}
