//! Socket helpers for the proxy core: reads into a reusable buffer, and time limits that cost no
//! timer registration on the fast path.
//!
//! A [`LazyTimer`] is one tokio `Sleep` per connection that is re-armed by moving a deadline, not
//! by touching the timer wheel: [`within`] polls the operation first and reads the clock only if
//! the operation has to wait, and the `Sleep` is reset only when it fires before the current
//! deadline (or when a shorter deadline is asked for). With equal time-outs a busy keep-alive
//! connection touches the timer wheel about once per time-out period instead of once per request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::tls::ClientStream;

/// A time limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// A reusable deadline for one connection's waits.
pub(crate) struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

/// Far enough to mean "never" for an unarmed timer.
const FAR: Duration = Duration::from_secs(86_400 * 365);

impl LazyTimer {
    /// An unarmed timer (must be created inside a tokio runtime).
    pub fn new() -> Self {
        let deadline = Instant::now() + FAR;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
        }
    }

    /// Sets the deadline to `limit` from now.
    pub fn arm(&mut self, limit: Duration) {
        self.deadline = Instant::now() + limit;
        if self.sleep.deadline() > self.deadline {
            self.sleep.as_mut().reset(self.deadline);
        }
    }

    /// Sets the deadline to `deadline`.
    pub fn arm_until(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if self.sleep.deadline() > self.deadline {
            self.sleep.as_mut().reset(self.deadline);
        }
    }

    /// Ready once the current deadline has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            // Fired for an older, earlier deadline: wait for the current one.
            self.sleep.as_mut().reset(self.deadline);
        }
    }
}

/// Runs `fut`, giving up after `limit` if it has to wait; the clock is read only if it waits.
pub(crate) async fn within<F: Future>(
    timer: &mut LazyTimer,
    limit: Duration,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    let mut armed = false;
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if !armed {
            timer.arm(limit);
            armed = true;
        }
        timer.poll_expired(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// How much free space a read asks for at least.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Reads what the socket has into `buf` (0 = end of stream). A read that does not fill the free
/// space tells the reactor the socket is drained, which saves the `EAGAIN` read before waiting.
pub(crate) fn poll_read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Reads once into `buf`, waiting at most `limit`.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: &mut LazyTimer,
    limit: Duration,
) -> Result<io::Result<usize>, Elapsed> {
    within(timer, limit, poll_fn(|cx| poll_read(stream, buf, cx))).await
}

/// Writes all of `data`, waiting at most `limit` for the peer to take each part.
pub(crate) async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    data: &[u8],
    timer: &mut LazyTimer,
    limit: Duration,
) -> Result<io::Result<()>, Elapsed> {
    use tokio::io::AsyncWriteExt as _;
    within(timer, limit, stream.write_all(data)).await
}

/// Flushes what `stream` holds back (TLS records a write left buffered when the socket was
/// full), waiting at most `limit`.
pub(crate) async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    timer: &mut LazyTimer,
    limit: Duration,
) -> Result<io::Result<()>, Elapsed> {
    use tokio::io::AsyncWriteExt as _;
    within(timer, limit, stream.flush()).await
}

/// Runs `upstream` (a wait for the upstream's answer) while watching the client connection:
/// `None` when the client closed it first (nginx gives up on the upstream and logs 499). Bytes the
/// client sends meanwhile (its next, pipelined request) are appended to `rbuf`, and `watching`
/// is then switched off so that a busy client is read at most once per wait.
pub(crate) async fn watch_client<T>(
    client: &mut ClientStream,
    rbuf: &mut BytesMut,
    watching: &mut bool,
    upstream: impl Future<Output = T>,
) -> Option<T> {
    let mut upstream = std::pin::pin!(upstream);
    poll_fn(|cx| {
        if let Poll::Ready(v) = upstream.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if *watching {
            if rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(READ_CHUNK);
            }
            match client.poll_read_some(rbuf, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => *watching = false,
            }
        }
        Poll::Pending
    })
    .await
}
