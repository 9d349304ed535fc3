//! Errors of one attempt to pass a request to an upstream, with what they allow.
//!
//! Each variant records the upstream and whether the request may already have reached it, which
//! decides whether a retry on the next upstream is allowed (never for a non-idempotent request
//! that may have been sent) and which status the client gets when no attempt is left (504 for
//! time-outs, 502 otherwise, as nginx).

use std::net::SocketAddr;

use http::StatusCode;

/// Why an attempt on one upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// TCP connect failed (nothing was sent).
    #[error("connect to upstream {upstream} failed: {source}")]
    Connect {
        upstream: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS handshake with a `tls` upstream failed (nothing was sent): its certificate is
    /// not trusted or not for its name, or it does not speak TLS.
    #[error("TLS handshake with upstream {upstream} failed: {source}")]
    Handshake {
        upstream: SocketAddr,
        source: std::io::Error,
    },
    /// TCP connect did not finish within `proxy_connect_timeout` (nothing was sent).
    #[error("connect to upstream {upstream} timed out")]
    ConnectTimeout { upstream: SocketAddr },
    /// Sending the request or reading the response head failed.
    #[error("upstream {upstream} failed (request sent: {sent}): {source}")]
    Exchange {
        upstream: SocketAddr,
        sent: bool,
        source: std::io::Error,
    },
    /// The upstream's answer is not valid HTTP/1 (or too large).
    #[error("upstream {upstream} sent an invalid response: {reason}")]
    Protocol {
        upstream: SocketAddr,
        reason: &'static str,
    },
    /// No response head within `proxy_read_timeout` (or the request body stalled past `proxy_send_timeout`).
    #[error("upstream {upstream} timed out ({phase})")]
    Timeout {
        upstream: SocketAddr,
        phase: &'static str,
    },
}

impl AttemptError {
    /// Whether the request may have reached the upstream (then a non-idempotent one is not retried).
    pub fn maybe_sent(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Handshake { .. } => false,
            Self::Exchange { sent, .. } => *sent,
            Self::Timeout { .. } | Self::Protocol { .. } => true,
        }
    }

    /// Whether this is a time-out (`proxy_next_upstream timeout`, 504) rather than an error.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout { .. } | Self::Timeout { .. })
    }

    /// Status the client gets if this is the last failure.
    pub fn status(&self) -> StatusCode {
        if self.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}
