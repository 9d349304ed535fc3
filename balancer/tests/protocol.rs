//! HTTP/1.1 on the wire through the balancer: pipelining, malformed heads, HEAD, 100-continue,
//! chunked bodies, and HTTP Upgrade tunnelled to an upstream.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, start, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `s` until `buf` holds `n` complete responses with `Content-Length` bodies, or EOF.
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        while out.len() < n {
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            out.push((status, body));
        }
        if out.len() == n {
            return out;
        }
        let mut chunk = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if got == 0 {
            return out;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn connect(base: &str) -> TcpStream {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (h, base) = start(config(&[&a, &b])).await;
    let mut s = connect(&base).await;
    s.write_all(
        b"GET /slow/100 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nPOST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_responses(&mut s, 4).await;
    let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 201, 200, 202]);
    assert_eq!(got[2].1, "5");
    h.stop(true).await;
}

/// The next request arriving while the balancer waits for the upstream's answer to the first
/// (it watches the client connection meanwhile) is kept and answered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_sent_while_the_upstream_thinks_is_answered_next() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let mut s = connect(&base).await;
    s.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /status/203 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_responses(&mut s, 2).await;
    let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 203]);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_huge_heads_431_and_long_uris_414() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut s = connect(&base).await;
        s.write_all(bad).await.unwrap();
        let got = read_responses(&mut s, 1).await;
        assert_eq!(got.first().map(|r| r.0), Some(400), "{bad:?}");
    }
    let mut s = connect(&base).await;
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"X-Filler: 0123456789\r\n", 1000).flatten());
    let _ = s.write_all(&big).await;
    let got = read_responses(&mut s, 1).await;
    assert_eq!(got.first().map(|r| r.0), Some(431));
    // A request line over 8 KiB, as nginx: 414, whether or not its head is complete.
    for tail in [&b" HTTP/1.1\r\nHost: x\r\n\r\n"[..], b""] {
        let mut s = connect(&base).await;
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(
            b'a',
            if tail.is_empty() { 20_000 } else { 9_000 },
        ));
        long.extend_from_slice(tail);
        let _ = s.write_all(&long).await;
        let got = read_responses(&mut s, 1).await;
        assert_eq!(got.first().map(|r| r.0), Some(414));
    }
    assert_eq!(a.hits(), 0);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_have_no_body_and_the_connection_stays_usable() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let mut s = connect(&base).await;
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&buf, b"\r\n\r\na").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    // The HEAD answer keeps its Content-Length (1, the GET body "a") but sends no body: the next
    // bytes are the GET answer's status line.
    let second = text
        .find("\r\n\r\nHTTP/1.1 200")
        .expect("second answer right after the first head");
    assert!(
        text[..second]
            .to_ascii_lowercase()
            .contains("content-length: 1"),
        "{text}"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_and_chunked_bodies_are_passed_on() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let mut s = connect(&base).await;
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .await
    .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"abc").await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, [(200, "3".to_owned())]);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\nX-Trailer: 1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await, [(200, "6".to_owned())]);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_responses(&mut s, 1).await.first().map(|r| r.0),
        Some(400)
    );
    h.stop(true).await;
}

/// A raw upstream that answers any request with 101 and then echoes bytes; it reports the
/// request head it received.
async fn upgrade_echo() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&buf, b"\r\n\r\n").is_none() {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    (addr, rx)
}

/// A balancer in front of [`upgrade_echo`], a client connection that sent `request`, and what
/// it read until the end of the answer's head (maybe more); the upstream reports the head it got.
async fn upgrade_through_balancer(
    request: &[u8],
) -> (
    ferrocat_balancer::BalancerHandle,
    TcpStream,
    Vec<u8>,
    tokio::sync::oneshot::Receiver<String>,
) {
    let (up, head) = upgrade_echo().await;
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(up.to_string())];
    let (h, base) = start(cfg).await;
    let mut s = connect(&base).await;
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    while find(&buf, b"\r\n\r\n").is_none() {
        read_more(&mut s, &mut buf).await;
    }
    (h, s, buf, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_are_tunnelled_both_ways() {
    let (h, mut s, buf, head) = upgrade_through_balancer(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101 "), "{text}");
    assert!(
        text.contains("upgrade: echo\r\n") && text.contains("connection: upgrade\r\n"),
        "{text}"
    );
    let seen = head.await.unwrap().to_ascii_lowercase();
    assert!(
        seen.contains("upgrade: echo\r\n") && seen.contains("connection: upgrade\r\n"),
        "{seen}"
    );
    for msg in [&b"ping"[..], b"GET / HTTP/1.1\r\n\r\n", b"\x00\xff binary"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(s);
    h.stop(true).await;
}

/// A client that sends its first tunnel bytes right behind the upgrade request (in the same
/// write, before the 101): they reach the upstream once the tunnel is up, in order, before what
/// it sends later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_before_the_101_go_through_the_tunnel_first() {
    let (h, mut s, mut buf, _head) = upgrade_through_balancer(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly bytes|",
    )
    .await;
    let at = find(&buf, b"\r\n\r\n").unwrap() + 4;
    assert!(
        buf.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    s.write_all(b"later").await.unwrap();
    let want = b"early bytes|later";
    while buf.len() - at < want.len() {
        read_more(&mut s, &mut buf).await;
    }
    assert_eq!(&buf[at..], want, "{}", String::from_utf8_lossy(&buf[at..]));
    drop(s);
    h.stop(true).await;
}

/// Reads what `s` has (within 5 s) onto `buf`; it must not be closed.
async fn read_more(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    assert!(n > 0, "closed");
    buf.extend_from_slice(&chunk[..n]);
}

/// A raw upstream that answers every request with `answer`, then closes the connection.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

/// Reads everything until the peer closes (or 5 s pass).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_answers_are_rechunked_for_http11_and_closed_for_http10() {
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\nX-Kind: raw\r\n\r\nuntil the end").await;
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(up.to_string())];
    let (h, base) = start(cfg).await;
    // HTTP/1.1: re-framed as chunked, and the client connection stays usable.
    let mut s = connect(&base).await;
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut s).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert_eq!(
        text.matches("Transfer-Encoding: chunked\r\n").count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("d\r\nuntil the end\r\n0\r\n\r\n").count(),
        2,
        "{text}"
    );
    // HTTP/1.0: delimited by closing the connection.
    let mut s = connect(&base).await;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nuntil the end"),
        "{text}"
    );
    assert!(!text.contains("chunked"), "{text}");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_keep_alive_only_when_they_ask() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let mut s = connect(&base).await;
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let got = read_responses(&mut s, 1).await;
    assert_eq!(got, [(200, "a".to_owned())]);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Connection: close\r\n"),
        "{text}"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_answers_are_decoded_for_http10_clients() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    )
    .await;
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(up.to_string())];
    let (h, base) = start(cfg).await;
    let mut s = connect(&base).await;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
    let mut s = connect(&base).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while find(&buf, b"0\r\nX-T: 1\r\n\r\n").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("Transfer-Encoding: chunked\r\n"),
        "chunked passed through to HTTP/1.1: {text}"
    );
    h.stop(true).await;
}
