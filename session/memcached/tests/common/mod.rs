//! Shared helpers for the client's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use ferrocat_memcached::{ClientOptions, Key, NodeClient};
use ferrocat_testkit::Memcached;

pub fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

pub fn opts() -> ClientOptions {
    ClientOptions::default()
        .operation_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

pub fn client(m: &Memcached) -> NodeClient {
    NodeClient::new(m.addr(), opts())
}
