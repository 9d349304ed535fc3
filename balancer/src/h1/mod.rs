//! HTTP/1.1 on the wire, written for the proxy: request and response heads parsed with
//! `httparse` from reusable buffers and rewritten in one pass, and the chunked decoder.
//!
//! These are pure functions over byte slices (no I/O), unit-tested for the edge cases: heads
//! split anywhere, malformed or oversized heads, framing conflicts, chunk extensions and trailers.

pub(crate) mod chunked;
pub(crate) mod request;
pub(crate) mod response;

#[cfg(test)]
mod tests;
