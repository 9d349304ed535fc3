//! Wiring of the replicated memcached backend from `[session]`.

use std::sync::Arc;

use ferrocat_session::config::SessionSettings;
use ferrocat_session::store::memcached::{MemcachedStoreConfig, ReplicatedMemcachedStore};
use ferrocat_session::{SessionBackend, Stats};

/// Builds the replicated memcached store from `[session]`. Call inside an
/// actix `System` (the store's health actor runs there).
pub fn build(
    settings: &SessionSettings,
    stats: Arc<Stats>,
) -> Result<Arc<dyn SessionBackend>, String> {
    let mut cfg =
        MemcachedStoreConfig::from_msm(&settings.memcached_nodes, &settings.failover_nodes)?
            .operation_timeout(settings.operation_timeout)
            .connections_per_node(settings.memcached_connections)
            .key_prefix(settings.storage_key_prefix.clone())
            .credentials(settings.memcached_credentials.clone());
    // Tombstones of sessions whose last record is unknown must outlive any
    // stale copy, which lives at most one max inactive interval.
    cfg.default_max_inactive_secs =
        u32::try_from(settings.max_inactive.as_secs()).unwrap_or(u32::MAX);
    let nodes: Vec<String> = cfg
        .nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.addr))
        .collect();
    let store = ReplicatedMemcachedStore::new(cfg, stats).map_err(|e| e.to_string())?;
    log::info!("sessions: replicated memcached over {}", nodes.join(", "));
    Ok(Arc::new(store))
}
