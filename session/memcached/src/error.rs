//! The client's error type: which node, which operation, and whether the node is suspect.

use std::net::SocketAddr;
use std::sync::Arc;

/// Errors of the memcached client.
///
/// Node failures (refused, timeout, i/o, protocol) mean the node is suspect and the caller
/// may retry on another node; see [`McError::is_node_failure`]. Errors are `Clone` so one
/// connection failure can fail every request that was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum McError {
    /// Nothing listens on the node's address (the process is down).
    #[error("memcached {addr}: connection refused")]
    ConnectionRefused {
        /// The node.
        addr: SocketAddr,
    },
    /// The operation (or the connect) did not complete within its time limit.
    #[error("memcached {addr}: {op} timed out")]
    Timeout {
        /// The node.
        addr: SocketAddr,
        /// The operation (`get`, `set`, `connect`, ...).
        op: &'static str,
    },
    /// The connection failed (reset, closed by the peer, ...).
    #[error("memcached {addr}: i/o error during {op}: {source}")]
    Io {
        /// The node.
        addr: SocketAddr,
        /// The operation, or `connection` when the connection broke under it.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The node sent something that is not valid meta protocol (or not what was asked).
    #[error("memcached {addr}: protocol error: {detail}")]
    Protocol {
        /// The node.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// The node answered `SERVER_ERROR` (e.g. out of memory, object too large).
    #[error("memcached {addr}: server error: {detail}")]
    Server {
        /// The node.
        addr: SocketAddr,
        /// The server's message.
        detail: String,
    },
    /// The node refused the credentials (or asked for some and none were configured).
    #[error("memcached {addr}: authentication failed: {detail}")]
    Auth {
        /// The node.
        addr: SocketAddr,
        /// The node's answer.
        detail: String,
    },
    /// The key cannot be sent to memcached.
    #[error("invalid memcached key: {reason}")]
    InvalidKey {
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The value is larger than `ClientOptions::max_value_size`.
    #[error("value of {size} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Size of the value.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The client was dropped while the request was in flight.
    #[error("memcached client closed")]
    Closed,
    /// The operation was polled outside a tokio runtime.
    #[error("memcached client used outside a tokio runtime")]
    NoRuntime,
}

impl McError {
    /// The node refused the connection (it is down).
    pub fn is_refused(&self) -> bool {
        matches!(self, McError::ConnectionRefused { .. })
    }

    /// The operation timed out (the node may be frozen or overloaded).
    pub fn is_timeout(&self) -> bool {
        matches!(self, McError::Timeout { .. })
    }

    /// The node is suspect: refused, timed out, broken connection or garbage.
    /// The caller may retry the operation on another node.
    pub fn is_node_failure(&self) -> bool {
        matches!(
            self,
            McError::ConnectionRefused { .. }
                | McError::Timeout { .. }
                | McError::Io { .. }
                | McError::Protocol { .. }
                | McError::Auth { .. }
        )
    }

    /// The node this error came from, if it came from one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            McError::ConnectionRefused { addr }
            | McError::Timeout { addr, .. }
            | McError::Io { addr, .. }
            | McError::Protocol { addr, .. }
            | McError::Auth { addr, .. }
            | McError::Server { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Map an i/o error from `op` to the matching variant.
    pub(crate) fn from_io(addr: SocketAddr, op: &'static str, e: std::io::Error) -> McError {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => McError::ConnectionRefused { addr },
            std::io::ErrorKind::TimedOut => McError::Timeout { addr, op },
            _ => McError::Io {
                addr,
                op,
                source: Arc::new(e),
            },
        }
    }
}
