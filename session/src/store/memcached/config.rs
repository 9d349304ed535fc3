//! Configuration of the replicated memcached store.
//!
//! Pipeline: msm's `memcached_nodes` string (`"n1:host:port n2:host:port"`,
//! space or comma separated) is parsed by [`parse_memcached_nodes`] into
//! [`NodeSpec`]s; [`MemcachedStoreConfig::new`] fills in the documented
//! `DEFAULT_*` values; the `#[must_use]` builder methods override them; and
//! [`MemcachedStoreConfig::validate`] (called by the store's constructor)
//! rejects inconsistent settings with a message naming the field.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::id::is_valid_name;

/// Default bound on every memcached operation (msm's `operationTimeout`).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default number of long-lived connections per node.
pub const DEFAULT_CONNECTIONS_PER_NODE: usize = 2;
/// Default interval between health probes (down nodes: `mn`; up nodes: the
/// warm-up sentinel, which also detects a node that restarted empty).
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of consecutive failures or time-outs that mark a node down.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Default expiry for tombstones written without a known record (30 min,
/// the servlet default session timeout).
pub const DEFAULT_MAX_INACTIVE_SECS: u32 = 1800;
/// Default bound on sessions held in memory while every node is down.
pub const DEFAULT_DEGRADED_MAX_SESSIONS: usize = 100_000;
/// Default number of sessions reconciled concurrently by a warm-up.
pub const DEFAULT_WARMUP_CONCURRENCY: usize = 32;
/// Default bound on one node's key enumeration (`lru_crawler metadump`).
pub const DEFAULT_WARMUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One memcached node: the id written into session ids and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id (`n1`), `[A-Za-z0-9_]{1,64}`.
    pub id: String,
    /// Where the node listens.
    pub addr: SocketAddr,
}

/// Settings of [`super::ReplicatedMemcachedStore`].
#[derive(Debug, Clone)]
pub struct MemcachedStoreConfig {
    /// All nodes, regular and failover, in configuration order.
    pub nodes: Vec<NodeSpec>,
    /// Ids of nodes used only when no regular node is up (msm `failoverNodes`).
    pub failover_nodes: Vec<String>,
    /// Bound on every operation; a frozen node costs a request at most this.
    pub operation_timeout: Duration,
    /// Long-lived connections per node.
    pub connections_per_node: usize,
    /// How often the health actor probes nodes.
    pub probe_interval: Duration,
    /// Consecutive failures/time-outs that mark a node down (refused: at once).
    pub failure_threshold: u32,
    /// Expiry of a tombstone when the invalidated record is unknown.
    pub default_max_inactive_secs: u32,
    /// Bound on sessions kept in this process while every node is down.
    pub degraded_max_sessions: usize,
    /// Sessions reconciled concurrently during a warm-up.
    pub warmup_concurrency: usize,
    /// Bound on enumerating one node's keys during a warm-up.
    pub warmup_timeout: Duration,
    /// Written as `<prefix>:` before every key (msm's `storageKeyPrefix`), so apps sharing
    /// the memcached nodes keep apart: each reads, locks and warms up only its own keys.
    /// Empty: no prefix.
    pub key_prefix: String,
    /// User name and password for nodes started with `memcached -Y` (ASCII
    /// authentication); `None`: none.
    pub credentials: Option<ferrocat_memcached::Credentials>,
}

/// Longest `key_prefix`.
pub const MAX_KEY_PREFIX_LEN: usize = 64;

/// Checks a key prefix: at most [`MAX_KEY_PREFIX_LEN`] printable ASCII characters without
/// spaces (memcached keys cannot hold whitespace or control characters).
pub fn check_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(format!("at most {MAX_KEY_PREFIX_LEN} characters"));
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{prefix:?}: only printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

impl MemcachedStoreConfig {
    /// A configuration for `nodes` with every other setting at its default.
    pub fn new(nodes: Vec<NodeSpec>) -> Self {
        MemcachedStoreConfig {
            nodes,
            failover_nodes: Vec::new(),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connections_per_node: DEFAULT_CONNECTIONS_PER_NODE,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            default_max_inactive_secs: DEFAULT_MAX_INACTIVE_SECS,
            degraded_max_sessions: DEFAULT_DEGRADED_MAX_SESSIONS,
            warmup_concurrency: DEFAULT_WARMUP_CONCURRENCY,
            warmup_timeout: DEFAULT_WARMUP_TIMEOUT,
            key_prefix: String::new(),
            credentials: None,
        }
    }

    /// Parses msm-style `memcached_nodes` and `failover_nodes` strings.
    pub fn from_msm(memcached_nodes: &str, failover_nodes: &str) -> Result<Self, String> {
        let nodes = parse_memcached_nodes(memcached_nodes)?;
        let failover = split_list(failover_nodes).map(str::to_owned).collect();
        let cfg = MemcachedStoreConfig::new(nodes).failover_nodes(failover);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets the failover node ids.
    #[must_use]
    pub fn failover_nodes(mut self, ids: Vec<String>) -> Self {
        self.failover_nodes = ids;
        self
    }

    /// Sets the per-operation bound.
    #[must_use]
    pub fn operation_timeout(mut self, t: Duration) -> Self {
        self.operation_timeout = t;
        self
    }

    /// Sets the connections per node.
    #[must_use]
    pub fn connections_per_node(mut self, n: usize) -> Self {
        self.connections_per_node = n;
        self
    }

    /// Sets the key prefix (see [`MemcachedStoreConfig::key_prefix`]).
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the credentials every connection authenticates with.
    #[must_use]
    pub fn credentials(mut self, creds: Option<ferrocat_memcached::Credentials>) -> Self {
        self.credentials = creds;
        self
    }

    /// Sets the probe interval.
    #[must_use]
    pub fn probe_interval(mut self, t: Duration) -> Self {
        self.probe_interval = t;
        self
    }

    /// Sets the number of consecutive failures that mark a node down.
    #[must_use]
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// True when `id` names a failover node.
    pub fn is_failover(&self, id: &str) -> bool {
        self.failover_nodes.iter().any(|f| f == id)
    }

    /// Checks the configuration; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("memcached_nodes: no node configured".into());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !is_valid_name(&n.id) {
                return Err(format!(
                    "memcached_nodes: node id `{}` must be 1-64 characters of [A-Za-z0-9_]",
                    n.id
                ));
            }
            if self.nodes[..i].iter().any(|m| m.id == n.id) {
                return Err(format!("memcached_nodes: node id `{}` is used twice", n.id));
            }
            if self.nodes[..i].iter().any(|m| m.addr == n.addr) {
                return Err(format!("memcached_nodes: address {} is used twice", n.addr));
            }
        }
        for f in &self.failover_nodes {
            if !self.nodes.iter().any(|n| &n.id == f) {
                return Err(format!(
                    "failover_nodes: `{f}` is not a node of memcached_nodes"
                ));
            }
        }
        if self.nodes.iter().all(|n| self.is_failover(&n.id)) {
            return Err("failover_nodes: at least one node must be a regular node".into());
        }
        if self.operation_timeout.is_zero() {
            return Err("operation_timeout: must be greater than zero".into());
        }
        if self.probe_interval.is_zero() {
            return Err("probe_interval: must be greater than zero".into());
        }
        if self.connections_per_node == 0 {
            return Err("connections_per_node: must be at least 1".into());
        }
        if self.failure_threshold == 0 {
            return Err("failure_threshold: must be at least 1".into());
        }
        if self.warmup_concurrency == 0 {
            return Err("warmup_concurrency: must be at least 1".into());
        }
        check_key_prefix(&self.key_prefix).map_err(|e| format!("key_prefix: {e}"))?;
        Ok(())
    }
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
}

/// Parses msm's `memcachedNodes`: `"n1:host:port n2:host:port"`, separated by
/// spaces and/or commas. IPv6 hosts go in brackets (`n1:[::1]:11211`). Host
/// names are resolved once, here. The error names the entry and what is wrong.
pub fn parse_memcached_nodes(s: &str) -> Result<Vec<NodeSpec>, String> {
    let mut nodes = Vec::new();
    for entry in split_list(s) {
        let Some((id, hostport)) = entry.split_once(':') else {
            return Err(format!(
                "memcached_nodes: `{entry}` is not of the form id:host:port"
            ));
        };
        if !hostport.contains(':') {
            return Err(format!(
                "memcached_nodes: `{entry}` has no node id (expected id:host:port, e.g. n1:{entry})"
            ));
        }
        if !is_valid_name(id) {
            return Err(format!(
                "memcached_nodes: node id `{id}` in `{entry}` must be 1-64 characters of [A-Za-z0-9_]"
            ));
        }
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("memcached_nodes: address `{hostport}` of node {id}: {e}"))?
            .next()
            .ok_or_else(|| {
                format!("memcached_nodes: address `{hostport}` of node {id} resolves to nothing")
            })?;
        if nodes.iter().any(|n: &NodeSpec| n.id == id) {
            return Err(format!("memcached_nodes: node id `{id}` is used twice"));
        }
        nodes.push(NodeSpec {
            id: id.to_owned(),
            addr,
        });
    }
    if nodes.is_empty() {
        return Err("memcached_nodes: no node configured".into());
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, port: u16) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn parses_space_and_comma_separated_lists() {
        let nodes =
            parse_memcached_nodes(" n1:127.0.0.1:11211, n2:127.0.0.1:11212,n3:[::1]:11213 ")
                .unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0], spec("n1", 11211));
        assert_eq!(nodes[1], spec("n2", 11212));
        assert_eq!(nodes[2].addr, "[::1]:11213".parse().unwrap());
    }

    #[test]
    fn rejects_entries_without_id_port_or_valid_name() {
        let e = parse_memcached_nodes("127.0.0.1:11211").unwrap_err();
        assert!(e.contains("no node id"), "{e}");
        let e = parse_memcached_nodes("n1").unwrap_err();
        assert!(e.contains("id:host:port"), "{e}");
        let e = parse_memcached_nodes("n-1:127.0.0.1:1").unwrap_err();
        assert!(e.contains("n-1"), "{e}");
        let e = parse_memcached_nodes("n1:127.0.0.1:notaport").unwrap_err();
        assert!(e.contains("notaport"), "{e}");
        let e = parse_memcached_nodes("  ,").unwrap_err();
        assert!(e.contains("no node"), "{e}");
    }

    #[test]
    fn rejects_duplicate_ids_and_addresses() {
        let e = parse_memcached_nodes("n1:127.0.0.1:1 n1:127.0.0.1:2").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let cfg = MemcachedStoreConfig::new(vec![spec("n1", 1), spec("n2", 1)]);
        assert!(cfg.validate().unwrap_err().contains("address"));
    }

    #[test]
    fn failover_nodes_must_exist_and_leave_a_regular_node() {
        let e = MemcachedStoreConfig::from_msm("n1:127.0.0.1:1 n2:127.0.0.1:2", "n9").unwrap_err();
        assert!(e.contains("n9"), "{e}");
        let e = MemcachedStoreConfig::from_msm("n1:127.0.0.1:1", "n1").unwrap_err();
        assert!(e.contains("regular"), "{e}");
        let cfg = MemcachedStoreConfig::from_msm("n1:127.0.0.1:1 n2:127.0.0.1:2", "n2").unwrap();
        assert!(cfg.is_failover("n2") && !cfg.is_failover("n1"));
    }

    #[test]
    fn rejects_zero_timeouts_and_counts() {
        let base = MemcachedStoreConfig::new(vec![spec("n1", 1)]);
        assert!(base.clone().validate().is_ok());
        let e = base.clone().operation_timeout(Duration::ZERO).validate();
        assert!(e.unwrap_err().contains("operation_timeout"));
        let e = base.clone().probe_interval(Duration::ZERO).validate();
        assert!(e.unwrap_err().contains("probe_interval"));
        let e = base.clone().connections_per_node(0).validate();
        assert!(e.unwrap_err().contains("connections_per_node"));
        let e = base.failure_threshold(0).validate();
        assert!(e.unwrap_err().contains("failure_threshold"));
    }
}
