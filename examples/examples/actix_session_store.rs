//! An ordinary actix-web app using actix-session, with its sessions kept in a
//! ferrocat session backend. The switch is one line: the store handed to
//! `SessionMiddleware::new` is a `BackendSessionStore` instead of, say,
//! actix-session's `RedisSessionStore`.
//!
//! Run it (listens on 127.0.0.1 only; `PORT` defaults to 8080):
//!
//! ```text
//! cargo run -p ferrocat-examples --example actix_session_store
//! curl -c jar -b jar http://127.0.0.1:8080/      # visits: 1
//! curl -c jar -b jar http://127.0.0.1:8080/      # visits: 2
//! curl -c jar -b jar -X POST http://127.0.0.1:8080/logout
//! ```
//!
//! With sessions in memcached instead (same app code, replicated over the
//! nodes, each session with a backup copy on another node):
//!
//! ```text
//! memcached -l 127.0.0.1 -p 11211 & memcached -l 127.0.0.1 -p 11212 &
//! MEMCACHED_NODES="n1:127.0.0.1:11211 n2:127.0.0.1:11212" \
//!     cargo run -p ferrocat-examples --example actix_session_store
//! ```

use std::sync::Arc;

use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::Key;
use actix_web::{web, App, HttpResponse, HttpServer};
use ferrocat_session::actix_store::BackendSessionStore;
use ferrocat_session::stats::Stats;
use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
use ferrocat_session::store::memory::MemoryStore;
use ferrocat_session::SessionBackend;

/// Chooses the session backend: the replicated memcached store when
/// `MEMCACHED_NODES` is set (msm syntax, e.g.
/// `"n1:127.0.0.1:11211 n2:127.0.0.1:11212"`), else the in-process store.
/// Must run inside the actix System (the memcached store's health actor runs
/// there).
fn backend() -> Result<Arc<dyn SessionBackend>, String> {
    match std::env::var("MEMCACHED_NODES") {
        Ok(nodes) => {
            let cfg = MemcachedStoreConfig::from_msm(&nodes, "")?;
            let store = ReplicatedMemcachedStore::new(cfg, Arc::new(Stats::default()))
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        Err(_) => Ok(Arc::new(MemoryStore::default())),
    }
}

async fn index(session: Session) -> actix_web::Result<HttpResponse> {
    let visits = session.get::<u64>("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    Ok(HttpResponse::Ok().body(format!("visits: {visits}\n")))
}

async fn logout(session: Session) -> HttpResponse {
    session.purge();
    HttpResponse::Ok().body("logged out\n")
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // One store for all workers: the backend is shared, so every worker sees
    // every session.
    let backend = backend().map_err(|e| std::io::Error::other(format!("session backend: {e}")))?;
    // The cookie signing key. Generated per process here; a real deployment
    // loads the same key on every node.
    let key = Key::generate();
    log::info!("listening on http://127.0.0.1:{port}/");
    HttpServer::new(move || {
        App::new()
            // The one line that changes: any ferrocat backend as an actix-session store.
            .wrap(SessionMiddleware::new(
                BackendSessionStore::new(backend.clone()),
                key.clone(),
            ))
            .route("/", web::get().to(index))
            .route("/logout", web::post().to(logout))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
