#![allow(clippy::unwrap_used)]
//! A fake memcached that answers garbage: every case is an error, never a panic or a hang.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{key, opts};
use ferrocat_memcached::{McError, NodeClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serve `reply` (then close if `close`) to every connection after its first request.
async fn fake_server(reply: &'static [u8], close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = sock.write_all(reply).await;
                if close {
                    return;
                }
                // Keep the connection open and ignore everything else.
                while sock.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    addr
}

async fn get_error(reply: &'static [u8], close: bool) -> (McError, Duration) {
    let addr = fake_server(reply, close).await;
    let c = NodeClient::new(addr, opts());
    let t0 = Instant::now();
    let err = c.get(&key("k")).await.unwrap_err();
    (err, t0.elapsed())
}

fn assert_protocol(err: &McError, took: Duration) {
    assert!(matches!(err, McError::Protocol { .. }), "{err:?}");
    assert!(err.is_node_failure());
    assert!(
        took < Duration::from_millis(300),
        "took {took:?}: hung until timeout?"
    );
}

#[tokio::test]
async fn nonsense_reply_is_a_protocol_error() {
    let (err, took) = get_error(b"HELLO THERE\r\n", false).await;
    assert_protocol(&err, took);
}

#[tokio::test]
async fn truncated_value_is_a_protocol_error() {
    let (err, took) = get_error(b"VA 100 O1\r\nonly a few bytes", true).await;
    assert_protocol(&err, took);
}

#[tokio::test]
async fn value_shorter_than_its_length_is_a_protocol_error() {
    let (err, took) = get_error(b"VA 5 O1\r\nabc\r\nHD O2\r\n", false).await;
    assert_protocol(&err, took);
}

#[tokio::test]
async fn huge_announced_length_is_rejected_without_allocating_or_waiting() {
    let (err, took) = get_error(b"VA 99999999999 O1\r\n", false).await;
    assert_protocol(&err, took);
    let (err, took) = get_error(b"VA 2000000 O1\r\n", false).await; // above the 1 MiB limit
    assert_protocol(&err, took);
}

#[tokio::test]
async fn endless_line_is_a_protocol_error() {
    static LONG: [u8; 20_000] = [b'x'; 20_000];
    let (err, took) = get_error(&LONG, false).await;
    assert_protocol(&err, took);
}

#[tokio::test]
async fn reply_with_the_wrong_opaque_is_a_protocol_error() {
    let (err, took) = get_error(b"EN O77\r\n", false).await;
    assert_protocol(&err, took);
}

#[tokio::test]
async fn reply_of_the_wrong_kind_is_a_protocol_error() {
    let (err, took) = get_error(b"MN\r\n", false).await;
    assert_protocol(&err, took);
    let (err, took) = get_error(b"NS O1\r\n", false).await; // NS cannot answer a get
    assert_protocol(&err, took);
}

#[tokio::test]
async fn server_that_closes_at_once_is_an_io_error() {
    let (err, took) = get_error(b"", true).await;
    assert!(matches!(err, McError::Io { .. }), "{err:?}");
    assert!(took < Duration::from_millis(300));
}

#[tokio::test]
async fn silent_server_times_out() {
    let (err, took) = get_error(b"", false).await;
    assert!(err.is_timeout(), "{err:?}");
    assert!(took < Duration::from_millis(800));
}

#[tokio::test]
async fn client_recovers_on_a_new_connection_after_garbage() {
    // First connection answers garbage, later ones answer properly.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            let garbage = n == 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while sock.read(&mut buf).await.unwrap_or(0) > 0 {
                    let reply: &[u8] = if garbage { b"??\r\n" } else { b"MN\r\n" };
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let c = NodeClient::new(addr, opts().connections(1));
    assert!(matches!(c.noop().await, Err(McError::Protocol { .. })));
    c.noop().await.unwrap();
}

#[tokio::test]
async fn metadump_garbage_is_an_error() {
    let (addr, c) = {
        let addr = fake_server(b"key=%zz exp=nope\nEND\r\n", true).await;
        (addr, NodeClient::new(addr, opts()))
    };
    let err = c.metadump().await.unwrap_err();
    assert!(matches!(err, McError::Protocol { .. }), "{addr}: {err:?}");
    let addr = fake_server(b"key=a exp=-1\n", true).await;
    let err = NodeClient::new(addr, opts()).metadump().await.unwrap_err();
    assert!(matches!(err, McError::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn metadump_falls_back_to_lru_walks_on_servers_without_hash_dumps() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut walk = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 256];
            let n = sock.read(&mut buf).await.unwrap();
            let reply: &[u8] = if buf[..n].ends_with(b"metadump hash\r\n") {
                b"CLIENT_ERROR bad command line format\r\n"
            } else {
                walk += 1;
                // Each LRU walk misses a different key; the merge has both.
                if walk == 1 {
                    b"key=a exp=-1\nkey=b%20c exp=5\nEND\r\n"
                } else {
                    b"key=a exp=-1\nkey=d exp=-1\nEND\r\n"
                }
            };
            sock.write_all(reply).await.unwrap();
        }
    });
    let mut keys: Vec<String> = NodeClient::new(addr, opts())
        .metadump()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["a", "b c", "d"]);
}

#[tokio::test]
async fn a_connection_that_never_answers_is_replaced_by_a_new_one() {
    // The first connection swallows everything (a dead peer without RST); later ones answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let silent = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while sock.read(&mut buf).await.unwrap_or(0) > 0 {
                    if !silent && sock.write_all(b"MN\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let c = NodeClient::new(
        addr,
        opts()
            .connections(1)
            .operation_timeout(Duration::from_millis(200)),
    );
    assert!(c.noop().await.unwrap_err().is_timeout());
    let t0 = Instant::now();
    while c.noop().await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "stalled connection never replaced"
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}
