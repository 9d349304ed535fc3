//! memcached's ASCII-protocol authentication (`memcached -Y <authfile>`, 1.5.15+): on a new
//! connection the client first sends `set <key> <flags> <exptime> <len>` whose data is
//! `<username> <password>`; the node answers `STORED`, or `CLIENT_ERROR authentication
//! failure` and closes the connection. Until then every command gets `CLIENT_ERROR
//! unauthenticated`.
//!
//! The set carries an exptime of -1: a node that does not require authentication stores it as
//! an ordinary item that is expired at once, so the password is never left readable there.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Credentials, McError};

/// Longest answer line read (`STORED` or a `CLIENT_ERROR ...` message).
const MAX_LINE: usize = 512;

/// Authenticates `stream` within `limit`.
pub(crate) async fn authenticate(
    stream: &mut TcpStream,
    addr: SocketAddr,
    creds: &Credentials,
    limit: Duration,
) -> Result<(), McError> {
    let work = async {
        let data = format!("{} {}", creds.username(), creds.password());
        let msg = format!("set ferrocat:auth 0 -1 {}\r\n{data}\r\n", data.len());
        stream
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| McError::from_io(addr, "authenticate", e))?;
        let mut line = Vec::with_capacity(64);
        let mut chunk = [0u8; 128];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| McError::from_io(addr, "authenticate", e))?;
            if n == 0 {
                return Err(McError::Auth {
                    addr,
                    detail: "the node closed the connection".into(),
                });
            }
            line.extend_from_slice(&chunk[..n]);
            if let Some(end) = line.windows(2).position(|w| w == b"\r\n") {
                line.truncate(end);
                break;
            }
            if line.len() > MAX_LINE {
                return Err(McError::Protocol {
                    addr,
                    detail: "overlong answer to the authentication".into(),
                });
            }
        }
        match line.as_slice() {
            b"STORED" => Ok(()),
            other => Err(McError::Auth {
                addr,
                detail: String::from_utf8_lossy(other).into_owned(),
            }),
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| McError::Timeout {
            addr,
            op: "authenticate",
        })?
}
