//! Response buffering (nginx `proxy_buffering`, on by default): a client slower than its
//! upstream gets the answer from the balancer's memory and temp file, while the upstream
//! connection is already back in the pool; without buffering (off, `X-Accel-Buffering: no`, or
//! both buffers full) the upstream is held until the client has taken the answer.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read as _;
use std::time::Duration;

use common::{config, start, text_body, Upstream};
use ferrocat_balancer::BalancerConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The tests here run one at a time: one measures the process's RSS, which the others' large
/// bodies would move.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client with a small receive buffer that sends `GET path` and reads the response head
/// only: the head, and the body bytes that came with it.
async fn stalled_client(base: &str, path: &str) -> (TcpStream, String, Vec<u8>) {
    let addr = base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    (s, head, got[end..].to_vec())
}

/// The upstream's `active` count on the status page.
async fn active(base: &str) -> u64 {
    let page: serde_json::Value = common::client()
        .get(format!("{base}/_status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["upstreams"][0]["active"].as_u64().unwrap()
}

/// Sends another request through the balancer (answered 200) and returns how many
/// connections the upstream has accepted by then.
async fn conns_after_another_request(base: &str, up: &Upstream) -> usize {
    let r = common::client()
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.conns()
}

/// Files this process holds open in `dir` that are already unlinked (its temp files).
fn unlinked_open_in(dir: &std::path::Path, what: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t.starts_with(&*dir.to_string_lossy()) && t.contains(what) && t.ends_with("(deleted)")
        })
        .count()
}

fn with_status(mut cfg: BalancerConfig) -> BalancerConfig {
    cfg.status_path = Some("/_status".into());
    cfg
}

/// Reads the rest of the answer whose `head` was read from `s` (`first`: the body bytes that
/// came with it) and returns its body: `Content-Length` bytes, or chunks decoded.
async fn read_answer(s: &mut TcpStream, head: &str, mut raw: Vec<u8>) -> Vec<u8> {
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    assert!(
        length.is_some() || lower.contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match length {
            Some(n) if raw.len() >= n => return raw,
            None if raw.ends_with(b"\r\n0\r\n\r\n") => return dechunk(&raw),
            _ => {}
        }
        let k = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("the body stalled")
            .unwrap();
        assert!(k > 0, "closed after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..k]);
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n");
        raw = &raw[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_hold_the_upstream() {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 64 << 20;
    let temp = tempfile::tempdir().unwrap();
    // The default, and buffering off with the upstream asking for it (`X-Accel-Buffering: yes`).
    for (off, path) in [
        (false, format!("/big/{SIZE}")),
        (
            true,
            format!("/text/{SIZE}?xab=yes&type=application/octet-stream"),
        ),
    ] {
        let a = Upstream::start("a").await;
        let mut cfg = with_status(config(&[&a]));
        cfg.proxy_temp_path = Some(temp.path().to_owned());
        cfg.proxy_buffering = !off;
        let (h, base) = start(cfg).await;
        let before = common::rss_kib();
        let (mut s, head, first) = stalled_client(&base, &path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("x-accel-buffering"),
            "{head}"
        );

        // The balancer reads the whole answer while the client reads nothing: the upstream is
        // done long before the client.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while active(&base).await != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: the upstream is still held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The answer waits in a temp file in `proxy_temp_path`, unlinked already.
        assert_eq!(
            unlinked_open_in(temp.path(), "ferrocat-response-"),
            1,
            "{path}"
        );
        if !off {
            // 64 MiB wait for the client, on disk: the memory does not grow by them.
            let growth_mib = common::rss_kib().saturating_sub(before) / 1024;
            assert!(growth_mib < 24, "RSS grew by {growth_mib} MiB");
        }
        // Its connection is back in the pool: the next request reuses it.
        assert_eq!(
            conns_after_another_request(&base, &a).await,
            1,
            "{path}: a second upstream connection was opened"
        );

        // And the slow client still gets every byte, in order.
        let body = read_answer(&mut s, &head, first).await;
        if off {
            assert!(body == text_body(SIZE), "{path}: the body differs");
        } else {
            assert_eq!(body.len(), SIZE);
            assert!(body.iter().all(|&b| b == b'x'), "{path}: the body differs");
        }
        h.stop(true).await;
    }
    // The temp files were unlinked when they were made.
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_buffering_a_slow_client_holds_the_upstream() {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 48 << 20;
    // Buffering off; on but refused by the upstream (`X-Accel-Buffering: no`); on without a
    // temp file, where the 64 KiB of memory fill up.
    for case in ["off", "refused", "memory only"] {
        let a = Upstream::start("a").await;
        let mut cfg = with_status(config(&[&a]));
        let mut path = format!("/big/{SIZE}");
        match case {
            "off" => cfg.proxy_buffering = false,
            "refused" => path = format!("/text/{SIZE}?xab=no"),
            _ => cfg.proxy_max_temp_file_size = 0,
        }
        let (h, base) = start(cfg).await;
        let (mut s, head, first) = stalled_client(&base, &path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("x-accel-buffering"),
            "{head}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            active(&base).await,
            1,
            "{case}: the upstream should still be busy"
        );
        assert_eq!(
            conns_after_another_request(&base, &a).await,
            2,
            "{case}: the held connection cannot serve another request"
        );
        // Back-pressure, not loss: the client reading on gets all of it.
        let body = read_answer(&mut s, &head, first).await;
        assert_eq!(body.len(), SIZE, "{case}");
        h.stop(true).await;
    }
}

/// GETs `url` reading slowly (a pause every 64 KiB), so that the answer passes through the
/// balancer's memory and temp file again and again.
async fn slow_get(url: &str, gzip: bool) -> (reqwest::header::HeaderMap, Vec<u8>) {
    use futures::StreamExt as _;
    let mut req = common::client().get(url);
    if gzip {
        req = req.header("accept-encoding", "gzip");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    let mut mark = 0;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
        if body.len() - mark >= 64 * 1024 {
            mark = body.len();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    (headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_answers_arrive_whole_and_in_order() {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 6 << 20;
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.proxy_buffers = "2 4k".into();
    cfg.gzip = true;
    let (h, base) = start(cfg).await;
    let expected = text_body(SIZE);
    // A length, chunks passed through, and chunks gzip-compressed on the way.
    let (_, body) = slow_get(&format!("{base}/text/{SIZE}?type=application/x-x"), false).await;
    assert!(body == expected, "length: {} bytes differ", body.len());
    let (_, body) = slow_get(&format!("{base}/text/{SIZE}?stream=1&type=x/y"), false).await;
    assert!(body == expected, "chunked: {} bytes differ", body.len());
    let (headers, body) = slow_get(&format!("{base}/text/{SIZE}?stream=1"), true).await;
    assert_eq!(headers["content-encoding"], "gzip");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert!(plain == expected, "gzip: {} bytes differ", plain.len());
    h.stop(true).await;
}

#[test]
fn buffering_keys_are_read_from_toml_and_bad_ones_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let parse = |extra: &str| -> BalancerConfig {
        toml::from_str(&format!(
            "{extra}\n[[upstream]]\naddress = \"127.0.0.1:1\"\n"
        ))
        .unwrap()
    };
    let cfg = parse("");
    assert!(cfg.proxy_buffering, "on by default, as nginx");
    assert!(cfg.proxy_request_buffering, "on by default, as nginx");
    assert_eq!(cfg.proxy_max_temp_file_size, 1 << 30);
    let cfg = parse(&format!(
        "proxy_buffering = false\nproxy_request_buffering = false\nproxy_buffers = \"4 16k\"\nproxy_max_temp_file_size = \"0\"\nproxy_temp_path = \"{d}\""
    ));
    assert!(cfg.validate().is_ok());
    assert!(!cfg.proxy_buffering && !cfg.proxy_request_buffering);
    assert_eq!(cfg.proxy_max_temp_file_size, 0);
    for (extra, key) in [
        ("proxy_buffers = \"8\"", "proxy_buffers"),
        ("proxy_buffers = \"0 8k\"", "proxy_buffers"),
        ("proxy_buffers = \"8 8q\"", "proxy_buffers"),
        ("proxy_buffers = \"1024 1m\"", "proxy_buffers"),
        (
            &format!("proxy_temp_path = \"{d}/missing\"") as &str,
            "proxy_temp_path",
        ),
        (
            &format!("client_body_temp_path = \"{d}/missing\""),
            "client_body_temp_path",
        ),
    ] {
        let err = parse(extra).validate().unwrap_err();
        assert_eq!(err.key, format!("balancer.{key}"), "{extra}");
    }
    let err = toml::from_str::<BalancerConfig>("proxy_max_temp_file_size = \"lots\"").unwrap_err();
    assert!(
        err.to_string().contains("proxy_max_temp_file_size"),
        "{err}"
    );
}

/// Sends the head of a `Content-Length` upload of `size` bytes and its first `first` bytes;
/// the rest is sent by the caller.
async fn start_upload(base: &str, size: usize, first: usize) -> TcpStream {
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&vec![7u8; first]).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_reaches_the_upstream_only_once_complete() {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 3 << 20;
    let temp = tempfile::tempdir().unwrap();
    for buffered in [true, false] {
        let a = Upstream::start("a").await;
        let mut cfg = config(&[&a]);
        cfg.client_max_body_size = 64 << 20;
        cfg.proxy_request_buffering = buffered;
        cfg.client_body_temp_path = Some(temp.path().to_owned());
        let (h, base) = start(cfg).await;
        // Two thirds of the body, then a pause, as a slow mobile upload.
        let mut s = start_upload(&base, SIZE, 2 << 20).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Past 1 MiB the body waits in `client_body_temp_path`, unlinked already.
        let spooled = unlinked_open_in(temp.path(), "ferrocat-body-");
        assert_eq!(spooled, usize::from(buffered));
        if buffered {
            assert_eq!(
                a.hits(),
                0,
                "the upstream was contacted before the body was complete"
            );
        } else {
            assert_eq!(a.hits(), 1, "without request buffering the body streams");
        }
        s.write_all(&vec![7u8; SIZE - (2 << 20)]).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&answer).ends_with(&SIZE.to_string()) {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("no answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(
            (a.hits(), a.posts.load(std::sync::atomic::Ordering::SeqCst)),
            (1, 1)
        );
        h.stop(true).await;
    }
    assert_eq!(
        std::fs::read_dir(temp.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_upstream_cuts_short_still_reaches_a_slow_client_up_to_the_cut() {
    let _serial = SERIAL.lock().await;
    // An upstream that promises 32 MiB, sends 16 MiB and hangs up.
    const SENT: usize = 16 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n")
                    .await;
                let _ = s.write_all(&vec![b'c'; SENT]).await;
            });
        }
    });
    let mut cfg = config(&[]);
    cfg.upstream = vec![ferrocat_balancer::UpstreamConfig::new(addr.to_string())];
    let (h, base) = start(cfg).await;
    let (mut s, head, mut got) = stalled_client(&base, "/cut").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The client takes nothing while the upstream sends its part and closes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the answer was neither finished nor closed"),
        }
    }
    // Every byte the upstream sent, then the close (the length says the answer is short).
    assert_eq!(got.len(), SENT);
    assert!(got.iter().all(|&b| b == b'c'));
    h.stop(true).await;
}
