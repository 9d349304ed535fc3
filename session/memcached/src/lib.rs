//! Async, pipelined memcached client speaking the meta protocol (`mg`/`ms`/`md`/`mn`).
//!
//! Components and data flow:
//!
//! * [`Key`] (`key`): validated keys, 1..=250 bytes without whitespace or control
//!   characters, so no key can inject protocol commands.
//! * [`NodeClient`] (`client`): the typed operations on one node. Each operation builds a
//!   `protocol::Command`, queues it with a oneshot reply on a connection slot, and waits
//!   within `operation_timeout`, or within the caller's limit for the `*_within` methods
//!   (one timer per operation: callers should not wrap their own `timeout`).
//!   `set_bytes*` take an owned value without copying it.
//! * `pool`: per-thread connection slots, spawned on the caller's runtime, so the client
//!   works from any actix worker (or any tokio runtime) without cross-thread hops. A
//!   slot is filled up to 32 requests in flight before the next is used. On a
//!   multi-thread runtime it still works, but tasks and connections may sit on different
//!   threads (the benchmark shows the cost); actix's current-thread workers are the fast
//!   case.
//! * `connection`: one task per slot; batches every queued request into one write (under
//!   load it first yields once, so requests of every task runnable in that scheduler pass
//!   share the write, one memcached wake-up and one read on each side),
//!   matches responses to requests in order (checking the echoed opaque `O`), reconnects
//!   with back-off, and fails in-flight requests when the connection breaks.
//! * `protocol`: encoding and a bounded, never-panicking response parser.
//! * `auth`: memcached's ASCII authentication (`memcached -Y`), on every new connection when
//!   `ClientOptions::credentials` are set.
//! * `metadump`: key enumeration (`lru_crawler metadump all`) on a separate connection.
//! * [`McError`] (`error`): errors with the node and the operation; `is_node_failure`
//!   says whether the node is suspect and another node may be tried.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferrocat_memcached::McError> {
//! use ferrocat_memcached::{ClientOptions, Key, NodeClient, SetMode};
//! let client = NodeClient::new("127.0.0.1:11211".parse().unwrap(), ClientOptions::default());
//! let key = Key::new("session-n1")?;
//! client.set(&key, b"data", 0, 1800, SetMode::Set).await?;
//! assert_eq!(client.get(&key).await?.map(|i| i.value), Some("data".into()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod client;
mod connection;
mod error;
mod key;
mod metadump;
mod options;
mod pool;
mod protocol;

pub use client::{Item, NodeClient, StoreStatus};
pub use error::McError;
pub use key::{Key, MAX_KEY_LEN};
pub use metadump::DumpedKey;
pub use options::*;
pub use protocol::SetMode;
