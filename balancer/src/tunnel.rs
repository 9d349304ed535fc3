//! HTTP Upgrade (WebSocket and the like): after the upstream's `101 Switching Protocols`, the
//! connection is no longer HTTP. The 101 head goes to the client, bytes either side already read
//! go across, then bytes are copied both ways until either side closes. Such a connection is
//! never pooled; it counts as one request in flight on its upstream for as long as it lasts.

use std::time::Duration;

use crate::conn::Conn;
use crate::io;
use crate::pool::UpConn;
use crate::upstream::ActiveGuard;

/// Runs the tunnel; `c.wbuf` holds the 101 head without its final empty line. Bytes the
/// client sent early go to the upstream within `send_timeout` (`proxy_send_timeout`).
pub(crate) async fn run(c: &mut Conn, mut up: UpConn, guard: ActiveGuard, send_timeout: Duration) {
    c.wbuf.extend_from_slice(b"\r\n");
    c.wbuf.extend_from_slice(&up.rbuf);
    up.rbuf.clear();
    if !c.flush().await {
        return;
    }
    if !c.rbuf.is_empty() {
        let early = io::write_all(&mut up.stream, &c.rbuf, &mut c.utimer, send_timeout).await;
        c.rbuf.clear();
        if !matches!(early, Ok(Ok(()))) {
            return;
        }
    }
    match tokio::io::copy_bidirectional(&mut c.stream, &mut up.stream).await {
        Ok((to_up, to_client)) => {
            log::debug!("upgraded connection closed after {to_up} bytes up, {to_client} down");
        }
        Err(e) => log::debug!("upgraded connection failed: {e}"),
    }
    drop(guard);
}
