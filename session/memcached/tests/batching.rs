#![allow(clippy::unwrap_used)]
//! Operations issued in the same scheduler pass share one write.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::opts;
use ferrocat_memcached::NodeClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A fake memcached answering `mn` with `MN`; records how many `mn` each read carried.
async fn counting_server() -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reads = Arc::new(Mutex::new(Vec::new()));
    let log = reads.clone();
    tokio::task::spawn_local(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut partial = 0usize;
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Every request here is exactly "mn\r\n".
                    let total = partial + n;
                    let commands = total / 4;
                    partial = total % 4;
                    log.lock().unwrap().push(commands);
                    if sock.write_all(&b"MN\r\n".repeat(commands)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, reads)
}

/// Like an actix worker: a current-thread runtime driving a `LocalSet`, with more ready
/// tasks than one pass of the `LocalSet` runs (it yields to the runtime after 61).
/// (Measured: 150 requests go out as [122, 28] with or without the writer's yield, so
/// this guards batching as such, not the yield itself.)
#[test]
fn requests_of_tasks_ready_in_one_pass_go_out_in_one_write() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let (addr, reads) = counting_server().await;
        let c = NodeClient::new(addr, opts().connections(1));
        c.noop().await.unwrap(); // connected
        reads.lock().unwrap().clear();
        let tasks: Vec<_> = (0..150)
            .map(|_| {
                let c = c.clone();
                tokio::task::spawn_local(async move { c.noop().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let reads = reads.lock().unwrap().clone();
        assert_eq!(reads.iter().sum::<usize>(), 150);
        // 150 requests in a handful of writes, not one write (one memcached wake-up,
        // one read) per request.
        assert!(reads.len() <= 3, "requests spread over writes: {reads:?}");
    });
}
