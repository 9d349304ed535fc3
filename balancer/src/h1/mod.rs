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

use crate::headers::{self, Kind};

/// `Connection` fields kept per head (more is refused as malformed).
const MAX_CONNECTION: usize = 8;

/// What the fields that decide framing and connection handling say, gathered in the first pass
/// over a request or response head.
pub(crate) struct FramingFields<'h> {
    connection: [&'h [u8]; MAX_CONNECTION],
    n_conn: usize,
    /// `Content-Length` (several equal ones allowed).
    pub length: Option<u64>,
    /// A `Transfer-Encoding` field was present.
    pub te: bool,
    /// Its last coding is `chunked`.
    pub chunked: bool,
}

impl<'h> FramingFields<'h> {
    pub fn new() -> Self {
        Self {
            connection: [b""; MAX_CONNECTION],
            n_conn: 0,
            length: None,
            te: false,
            chunked: false,
        }
    }

    /// Notes a field of kind `k` (other kinds are ignored); the reason on a malformed one.
    pub fn note(&mut self, k: Kind, value: &'h [u8]) -> Result<(), &'static str> {
        match k {
            Kind::Connection => {
                let slot = self
                    .connection
                    .get_mut(self.n_conn)
                    .ok_or("too many Connection headers")?;
                *slot = value;
                self.n_conn += 1;
            }
            Kind::ContentLength => {
                let n = headers::content_length(value).ok_or("invalid Content-Length")?;
                if self.length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length");
                }
                self.length = Some(n);
            }
            Kind::TransferEncoding => {
                self.te = true;
                self.chunked = headers::last_coding(value).eq_ignore_ascii_case(b"chunked");
            }
            _ => {}
        }
        Ok(())
    }

    /// The values of the `Connection` fields.
    pub fn connection(&self) -> &[&'h [u8]] {
        &self.connection[..self.n_conn]
    }
}
