//! ferrocat's session manager.
//!
//! Components and data flow:
//!
//! * [`id`]: session ids `<random>-<node>[.<route>]`.
//! * [`record`]: the stored form (versioned header + payload).
//! * [`serializer`]: pluggable attribute serializers.
//! * [`store`]: the [`store::SessionBackend`] trait and its backends
//!   (in-process, replicated memcached).
//! * [`stats`]: msm-like statistics.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actix_store;
pub mod cache;
pub mod id;
pub mod record;
pub mod serializer;
pub mod stats;
pub mod store;

pub use id::SessionId;
pub use record::SessionRecord;
pub use store::{Loaded, SessionBackend, StoreError};
