//! Wiring of the replicated memcached backend (filled in when it lands).

use std::sync::Arc;

use ferrocat_session::config::SessionSettings;
use ferrocat_session::{SessionBackend, Stats};

/// Builds the replicated memcached store from `[session]`.
pub fn build(settings: &SessionSettings, _stats: Arc<Stats>) -> Result<Arc<dyn SessionBackend>, String> {
    Err(format!(
        "memcached_nodes = {:?}: the memcached backend is not built into this version",
        settings.memcached_nodes
    ))
}
