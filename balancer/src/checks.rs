//! Active HTTP health checks: one probe, and the rise/fall streak that turns probes into state.
//!
//! A probe opens a fresh connection (so it also tests accepting), sends `GET <path>` with the
//! upstream's address as `Host`, and passes if the status is expected (any 2xx/3xx by default)
//! within the timeout. `rise` passes in a row bring an upstream up, `fall` failures take it down.
//! A `tls` upstream is probed over TLS, with the same verification as its requests.

use std::net::SocketAddr;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::config::HealthCheckConfig;
use crate::upstream_tls::{UpStream, UpTls};

/// Probes `addr` once.
pub(crate) async fn probe(
    addr: SocketAddr,
    host: &str,
    tls: Option<&UpTls>,
    hc: &HealthCheckConfig,
) -> bool {
    match tokio::time::timeout(hc.timeout, fetch_status(addr, host, tls, &hc.path)).await {
        Ok(Ok(status)) => expected(status, &hc.expect_status),
        Ok(Err(e)) => {
            log::debug!("health check of {addr} failed: {e}");
            false
        }
        Err(_) => {
            log::debug!("health check of {addr} timed out");
            false
        }
    }
}

async fn fetch_status(
    addr: SocketAddr,
    host: &str,
    tls: Option<&UpTls>,
    path: &str,
) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = match tls {
        None => UpStream::Plain(tcp),
        Some(tls) => crate::upstream_tls::handshake(tls, tcp).await?,
    };
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "ferrocat-health-check")
        .body(Empty::<bytes::Bytes>::new())?;
    let status = tx.send_request(req).await?.status();
    driver.abort();
    Ok(status)
}

/// Whether `status` passes (empty `expect` = any 2xx or 3xx).
pub(crate) fn expected(status: StatusCode, expect: &[u16]) -> bool {
    if expect.is_empty() {
        status.is_success() || status.is_redirection()
    } else {
        expect.contains(&status.as_u16())
    }
}

/// Consecutive results of one upstream's checks.
#[derive(Debug, Clone)]
pub(crate) struct Streak {
    healthy: bool,
    passes: u32,
    fails: u32,
}

impl Streak {
    /// A streak starting in state `healthy`.
    pub fn new(healthy: bool) -> Self {
        Self {
            healthy,
            passes: 0,
            fails: 0,
        }
    }

    /// Adds a probe result; returns the new state when it changes.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.healthy && self.passes >= rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.healthy && self.fails >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_in_a_row_take_down_and_rise_passes_bring_up() {
        let mut s = Streak::new(true);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), None); // streak broken
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), None);
        assert_eq!(s.observe(false, 2, 3), Some(false));
        assert_eq!(s.observe(true, 2, 3), None);
        assert_eq!(s.observe(true, 2, 3), Some(true));
        assert_eq!(s.observe(true, 2, 3), None);
    }

    #[test]
    fn expected_status_defaults_to_2xx_3xx() {
        assert!(expected(StatusCode::OK, &[]));
        assert!(expected(StatusCode::FOUND, &[]));
        assert!(!expected(StatusCode::INTERNAL_SERVER_ERROR, &[]));
        assert!(!expected(StatusCode::OK, &[204]));
        assert!(expected(StatusCode::NO_CONTENT, &[204]));
    }
}
