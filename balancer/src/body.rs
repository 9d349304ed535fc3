//! Request and response bodies as they pass through the proxy, streamed frame by frame.
//!
//! [`ReqBody`] is what goes to an upstream: either a small body already read in full (which can
//! be sent again on a retry) or the client's stream behind a byte counter that enforces
//! `client_max_body_size` and records progress for `proxy_send_timeout`. [`RespBody`] is what goes
//! to the client: the upstream's stream, which on its end hands the connection back to the pool
//! and releases the upstream's in-flight count, or a small page made by the balancer.

use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::pool::{Pool, Upconn};
use crate::upstream::{now_millis, ActiveGuard};

/// Bodies up to this size are read before the upstream is contacted, so they can be retried.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

/// Error yielded by a [`ReqBody`] stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The body grew past `client_max_body_size`.
    #[error("request body larger than client_max_body_size")]
    TooLarge,
    /// Reading from the client failed.
    #[error("reading the request body failed: {0}")]
    Client(#[from] hyper::Error),
}

/// Shared between a streamed [`ReqBody`] and the request handler.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// 0 streaming, 1 finished, 2 too large, 3 client error.
    pub outcome: AtomicU8,
    /// `now_millis()` of the last frame passed on.
    pub progress: AtomicU64,
}

/// `StreamState::outcome` values.
pub(crate) mod outcome {
    pub const STREAMING: u8 = 0;
    pub const FINISHED: u8 = 1;
    pub const TOO_LARGE: u8 = 2;
    pub const CLIENT_ERROR: u8 = 3;
}

/// The body of a request sent upstream.
pub(crate) enum ReqBody {
    /// Read in full (or empty): cheap to clone for a retry.
    Full(Option<Bytes>),
    /// The client's stream after an already-read prefix.
    Stream {
        prefix: Option<Bytes>,
        incoming: Incoming,
        limit: u64,
        seen: u64,
        state: Arc<StreamState>,
    },
}

/// What reading the start of a request body found.
pub(crate) enum Prepared {
    /// A body that can be sent (and, if `Full`, resent).
    Body(ReqBody),
    /// Larger than `client_max_body_size`: 413 (with the unread rest, to drain before answering).
    TooLarge(Option<Incoming>),
    /// The client failed while sending it: 400.
    ClientError,
}

/// Reads up to [`REPLAY_LIMIT`] bytes (or, for chunked bodies, up to `limit` when it is at most
/// 1 MiB, so that an oversized chunked body gets its 413 before any upstream is contacted).
pub(crate) async fn prepare(mut incoming: Incoming, limit: u64) -> Prepared {
    if incoming.is_end_stream() {
        return Prepared::Body(ReqBody::Full(None));
    }
    let known = incoming.size_hint().exact();
    if let Some(len) = known {
        if limit > 0 && len > limit {
            return Prepared::TooLarge(Some(incoming));
        }
    }
    let buffer_up_to = match known {
        Some(len) if len as usize <= REPLAY_LIMIT => len as usize,
        Some(_) => 0,
        None if limit > 0 && limit <= 1 << 20 => limit as usize + 1,
        None => REPLAY_LIMIT,
    };
    let mut buf = bytes::BytesMut::new();
    while buf.len() < buffer_up_to {
        match incoming.frame().await {
            None => {
                return if limit > 0 && buf.len() as u64 > limit {
                    Prepared::TooLarge(None)
                } else {
                    Prepared::Body(ReqBody::Full(Some(buf.freeze())))
                }
            }
            Some(Err(_)) => return Prepared::ClientError,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                if limit > 0 && buf.len() as u64 > limit {
                    return Prepared::TooLarge((!incoming.is_end_stream()).then_some(incoming));
                }
                if incoming.is_end_stream() {
                    return Prepared::Body(ReqBody::Full(Some(buf.freeze())));
                }
            }
        }
    }
    let seen = buf.len() as u64;
    let prefix = (!buf.is_empty()).then(|| buf.freeze());
    let state = Arc::new(StreamState {
        outcome: AtomicU8::new(outcome::STREAMING),
        progress: AtomicU64::new(now_millis()),
    });
    Prepared::Body(ReqBody::Stream {
        prefix,
        incoming,
        limit,
        seen,
        state,
    })
}

/// Most bytes read and discarded from a refused body before answering.
const DRAIN_LIMIT: u64 = 16 << 20;
/// Longest time spent discarding a refused body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and discards the rest of a refused body (bounded), so that the client, still sending,
/// reads our answer instead of a connection reset (nginx's lingering close).
pub(crate) async fn drain(mut incoming: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = incoming.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

impl ReqBody {
    /// A copy for a retry, if this body can be sent again.
    pub fn try_clone(&self) -> Option<ReqBody> {
        match self {
            Self::Full(b) => Some(Self::Full(b.clone())),
            Self::Stream { .. } => None,
        }
    }

    /// Progress of a streamed body, if it is one.
    pub fn stream_state(&self) -> Option<Arc<StreamState>> {
        match self {
            Self::Full(_) => None,
            Self::Stream { state, .. } => Some(state.clone()),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream {
                prefix,
                incoming,
                limit,
                seen,
                state,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                let frame = ready!(Pin::new(incoming).poll_frame(cx));
                Poll::Ready(match frame {
                    None => {
                        state.outcome.store(outcome::FINISHED, Ordering::Relaxed);
                        None
                    }
                    Some(Err(e)) => {
                        state
                            .outcome
                            .store(outcome::CLIENT_ERROR, Ordering::Relaxed);
                        Some(Err(BodyError::Client(e)))
                    }
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *limit > 0 && *seen > *limit {
                                state.outcome.store(outcome::TOO_LARGE, Ordering::Relaxed);
                                return Poll::Ready(Some(Err(BodyError::TooLarge)));
                            }
                        }
                        state.progress.store(now_millis(), Ordering::Relaxed);
                        Some(Ok(frame))
                    }
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Stream {
                prefix, incoming, ..
            } => prefix.is_none() && incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream {
                prefix, incoming, ..
            } => {
                let p = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let h = incoming.size_hint();
                match h.exact() {
                    Some(n) => SizeHint::with_exact(n + p),
                    None => {
                        let mut s = SizeHint::new();
                        s.set_lower(h.lower() + p);
                        s
                    }
                }
            }
        }
    }
}

/// The body of a response sent to the client.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RespBody {
    /// A page made by the balancer (errors, 403, 413).
    Full(Option<Bytes>),
    /// An upstream's response, streamed (inline: a box would cost an allocation per request).
    Upstream(UpstreamBody),
}

/// An upstream response body with what must happen when it ends.
pub(crate) struct UpstreamBody {
    /// The body as hyper's client delivers it.
    pub incoming: Incoming,
    /// Set once the body was read to its end.
    pub done: bool,
    /// The connection it arrives on, driven from `poll_frame` (dropped = closed).
    pub conn: Option<Upconn>,
    /// Where the connection goes when the body is complete (`None`: keep-alive off).
    pub pool: Option<Rc<Pool>>,
    /// The upstream's in-flight count, released at the end.
    pub guard: Option<ActiveGuard>,
    /// `proxy_read_timeout`: longest wait for the next piece of the body.
    pub read_timeout: Duration,
    /// Deadline of the current wait, created on the first wait.
    pub idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.done = true;
        if let (Some(conn), Some(pool)) = (self.conn.take(), &self.pool) {
            pool.put(conn);
        }
        self.guard = None;
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body it knows to be empty (e.g. 204, HEAD): it is complete.
        if !self.done && self.incoming.is_end_stream() {
            self.finish();
        }
    }
}

impl RespBody {
    /// A body made by the balancer.
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }
}

/// Error ending a response body early (the client connection is then closed, as nginx does).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RespBodyError {
    /// The upstream connection failed while the body was streaming.
    #[error("upstream failed while sending the response body: {0}")]
    Upstream(#[from] hyper::Error),
    /// Nothing arrived from the upstream for `proxy_read_timeout`.
    #[error("upstream sent nothing for {0:?} while sending the response body")]
    ReadTimeout(Duration),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = RespBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RespBodyError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(u) => {
                if let Some(conn) = &mut u.conn {
                    conn.drive(cx);
                }
                let frame = match Pin::new(&mut u.incoming).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        // The timer exists only for bodies that make us wait.
                        let limit = u.read_timeout;
                        let idle = u
                            .idle
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                        ready!(idle.as_mut().poll(cx));
                        u.conn = None;
                        u.guard = None;
                        u.done = true;
                        return Poll::Ready(Some(Err(RespBodyError::ReadTimeout(limit))));
                    }
                };
                if let Some(idle) = &mut u.idle {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + u.read_timeout);
                }
                Poll::Ready(match frame {
                    None => {
                        u.finish();
                        None
                    }
                    Some(Ok(f)) => {
                        if u.incoming.is_end_stream() {
                            u.finish();
                        }
                        Some(Ok(f))
                    }
                    Some(Err(e)) => {
                        // The connection is broken: dropping it (not pooling) closes it.
                        u.conn = None;
                        Some(Err(e.into()))
                    }
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Upstream(u) => u.done || u.incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(u) => u.incoming.size_hint(),
        }
    }
}
