//! Selection through real HTTP: smooth weighted round robin and sticky routes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, get, start, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_follows_weights_smoothly() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let mut cfg = config(&[&a, &b, &c]);
    cfg.upstream[0].weight = 5;
    let (h, base) = start(cfg).await;
    let http = client();
    let mut order = String::new();
    for _ in 0..14 {
        let (status, up) = get(&http, &format!("{base}/")).await;
        assert_eq!(status, 200);
        order.push_str(&up);
    }
    assert_eq!(order, "aabacaaaabacaa");
    h.stop(true).await;
}
