//! Reload under load, graceful stop, and large bodies streamed with bounded memory.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{client, config, start, Upstream};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_causes_no_errors() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let ab = config(&[&a, &b]);
    let (h, base) = start(ab.clone()).await;
    let bc = {
        let mut cfg = config(&[&b, &c]);
        cfg.upstream[1].weight = 3;
        cfg
    };
    let http = client();
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                for i in 0..200 {
                    let path = if i % 20 == 0 { "/slow/30" } else { "/" };
                    match http.get(format!("{base}{path}")).send().await {
                        Ok(r) if r.status() == 200 => {}
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        h.reload(if i % 2 == 0 { bc.clone() } else { ab.clone() })
            .unwrap();
    }
    let mut failed = 0;
    for t in load {
        failed += t.await.unwrap();
    }
    assert_eq!(failed, 0);
    assert!(c.hits() > 0 && a.hits() > 0);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_in_flight_requests() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    let http = client();
    let slow = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/slow/600"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    h.stop(true).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "stop waited for the request"
    );
    assert_eq!(slow.await.unwrap(), 200);
    // No longer accepting.
    assert!(client().get(format!("{base}/")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 200 << 20;
    let a = Upstream::start("a").await;
    let mut cfg = config(&[&a]);
    cfg.client_max_body_size = 1 << 30;
    let (h, base) = start(cfg).await;
    let http = client();
    let before = common::rss_kib();
    // Download.
    let r = http.get(format!("{base}/big/{SIZE}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        got += chunk.unwrap().len() as u64;
    }
    assert_eq!(got, SIZE);
    // Upload.
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks =
        (0..SIZE / chunk.len() as u64).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let r = http
        .post(format!("{base}/upload"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), SIZE.to_string());
    let growth_mib = common::rss_kib().saturating_sub(before) / 1024;
    assert!(
        growth_mib < 40,
        "RSS grew by {growth_mib} MiB while 400 MiB went through"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_keeps_the_balancer_serving() {
    let a = Upstream::start("a").await;
    let (h, base) = start(config(&[&a])).await;
    drop(h);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
