//! Key enumeration with `lru_crawler metadump`, for warming up a recovered node.
//!
//! Runs on its own short-lived connection so a long dump never delays pipelined
//! requests. memcached streams one line per item (`key=<url-encoded> exp=<unix|-1> ...`)
//! and ends with `END`. Lines are parsed as they arrive: `metadump` collects the decoded
//! keys, `metadump_each` hands each one to the caller and keeps none. If the
//! crawler is busy (another dump running) the command is retried until the time limit.
//!
//! Completeness: `metadump all` walks the LRU lists and misses items that the LRU
//! maintainer moves between lists during the walk (observed on memcached 1.6.18 for
//! just-written or just-touched items). `metadump hash` walks the hash table and sees
//! every item, so it is used; on a server that does not know it, two `all` walks are
//! merged.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::{preview, MAX_LINE};
use crate::{ClientOptions, McError};

/// One key found by a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedKey {
    /// The key, URL-decoded.
    pub key: String,
    /// Absolute expiry as a unix timestamp; -1 = never expires.
    pub exp: i64,
}

/// Pause before asking a busy crawler again.
const BUSY_RETRY: Duration = Duration::from_millis(100);

pub(crate) async fn dump(
    addr: SocketAddr,
    opts: &ClientOptions,
) -> Result<Vec<DumpedKey>, McError> {
    let mut keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut merged = false;
    dump_each(addr, opts, &mut |k: DumpedKey, second_walk: bool| {
        if second_walk {
            if !merged {
                seen.extend(keys.iter().map(|k: &DumpedKey| k.key.clone()));
                merged = true;
            }
            if seen.insert(k.key.clone()) {
                keys.push(k);
            }
        } else {
            keys.push(k);
        }
    })
    .await?;
    Ok(keys)
}

/// Streams every key of the node to `sink` as its line arrives, holding no list: memory stays
/// flat however many items the node has. The flag is true for keys of the second LRU walk on
/// a server without `metadump hash`; such a key may repeat one the first walk gave.
pub(crate) async fn dump_each(
    addr: SocketAddr,
    opts: &ClientOptions,
    sink: &mut dyn FnMut(DumpedKey, bool),
) -> Result<(), McError> {
    let work = async {
        match dump_retrying(addr, opts, "hash", &mut |k| sink(k, false)).await? {
            Ok(()) => Ok(()),
            Err(unsupported) => {
                log::info!("memcached {addr}: metadump hash unsupported ({unsupported}), merging two LRU walks");
                dump_retrying(addr, opts, "all", &mut |k| sink(k, false))
                    .await?
                    .map_err(|detail| McError::Server { addr, detail })?;
                dump_retrying(addr, opts, "all", &mut |k| sink(k, true))
                    .await?
                    .map_err(|detail| McError::Server { addr, detail })
            }
        }
    };
    tokio::time::timeout(opts.metadump_timeout, work)
        .await
        .map_err(|_| McError::Timeout {
            addr,
            op: "metadump",
        })?
}

/// Dump with `lru_crawler metadump <what>`, retrying while the crawler is busy.
/// The inner `Err` is the server's error line (the variant is not supported).
async fn dump_retrying(
    addr: SocketAddr,
    opts: &ClientOptions,
    what: &str,
    sink: &mut dyn FnMut(DumpedKey),
) -> Result<Result<(), String>, McError> {
    loop {
        match dump_once(addr, opts, what, sink).await? {
            Some(result) => return Ok(result),
            None => tokio::time::sleep(BUSY_RETRY).await,
        }
    }
}

/// One attempt; `Ok(None)` when the crawler was busy (reported before any key).
async fn dump_once(
    addr: SocketAddr,
    opts: &ClientOptions,
    what: &str,
    sink: &mut dyn FnMut(DumpedKey),
) -> Result<Option<Result<(), String>>, McError> {
    let io = |e| McError::from_io(addr, "metadump", e);
    let mut stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| McError::Timeout {
            addr,
            op: "connect",
        })?
        .map_err(|e| McError::from_io(addr, "connect", e))?;
    if let Some(creds) = &opts.credentials {
        crate::auth::authenticate(&mut stream, addr, creds, opts.connect_timeout).await?;
    }
    stream
        .write_all(format!("lru_crawler metadump {what}\r\n").as_bytes())
        .await
        .map_err(io)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(nl + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match parse_line(line) {
                Line::Key(k) => sink(k),
                Line::Skip => {}
                Line::End => return Ok(Some(Ok(()))),
                Line::Busy => return Ok(None),
                Line::Error(detail) => return Ok(Some(Err(detail))),
                Line::Garbage(detail) => return Err(McError::Protocol { addr, detail }),
            }
        }
        if buf.len() > MAX_LINE {
            return Err(McError::Protocol {
                addr,
                detail: format!("metadump line longer than {MAX_LINE} bytes"),
            });
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(McError::Protocol {
                addr,
                detail: "metadump ended without END".into(),
            });
        }
    }
}

enum Line {
    Key(DumpedKey),
    Skip,
    End,
    Busy,
    Error(String),
    Garbage(String),
}

fn parse_line(line: &[u8]) -> Line {
    if line == b"END" {
        return Line::End;
    }
    if line.starts_with(b"BUSY") {
        return Line::Busy;
    }
    if line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
    {
        return Line::Error(preview(line));
    }
    let mut key = None;
    let mut exp = None;
    for tok in line.split(|b| *b == b' ') {
        if let Some(k) = tok.strip_prefix(b"key=") {
            key = url_decode(k);
        } else if let Some(e) = tok.strip_prefix(b"exp=") {
            exp = std::str::from_utf8(e)
                .ok()
                .and_then(|s| s.parse::<i64>().ok());
        }
    }
    match (key, exp) {
        (Some(key), Some(exp)) => Line::Key(DumpedKey { key, exp }),
        _ if line.is_empty() => Line::Skip,
        _ => Line::Garbage(format!("bad metadump line {:?}", preview(line))),
    }
}

/// Decode `%XX` escapes; `None` if malformed or not UTF-8.
fn url_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_keys_and_expiry() {
        match parse_line(b"key=bak%3Aabc-n1 exp=-1 la=1 cas=3 fetch=no cls=1 size=64") {
            Line::Key(k) => assert_eq!((k.key.as_str(), k.exp), ("bak:abc-n1", -1)),
            _ => panic!("not a key line"),
        }
        assert!(matches!(parse_line(b"END"), Line::End));
        assert!(matches!(
            parse_line(b"BUSY currently processing"),
            Line::Busy
        ));
        assert!(matches!(parse_line(b"key=%zz exp=1"), Line::Garbage(_)));
        assert!(matches!(parse_line(b"nonsense"), Line::Garbage(_)));
        assert_eq!(url_decode(b"a%20b%2"), None);
    }
}
