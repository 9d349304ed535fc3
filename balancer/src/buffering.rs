//! Response buffering (nginx `proxy_buffering on`, its default): a client that reads slower
//! than the upstream answers does not hold the upstream.
//!
//! Without it the body is passed on with back-pressure: the balancer reads from the upstream
//! only as fast as the client takes, so a slow download keeps the app server's connection (a
//! Tomcat thread, a `max_conns` slot) busy for as long as the client needs. With it, whatever
//! the client does not take at once waits in a [`Backlog`]: up to `proxy_buffers` bytes in
//! memory, the rest in an unlinked temp file of at most `proxy_max_temp_file_size` bytes in
//! `proxy_temp_path`. The upstream is read on while the client is written to; once its answer
//! has been read to the end, the upstream connection goes back to the pool and the backlog is
//! written out to the client under `send_timeout`. When both buffers are full the balancer
//! waits for the client again (back-pressure, as without buffering), so memory per response
//! stays bounded and the disk use too.
//!
//! A client that keeps up costs nothing more: each write is tried at once, and the backlog is
//! used only for the bytes a write left behind. An upstream can switch buffering off (or on)
//! for one response with `X-Accel-Buffering: no` (`yes`), as with nginx (server-sent events,
//! endless streams); that header does not reach the client.
//!
//! File I/O runs on tokio's blocking pool, never on the worker's event loop.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::config::{BalancerConfig, ConfigError};

/// Bytes read back from the temp file per refill of the memory buffer.
const REFILL: u64 = 64 * 1024;
/// Bytes bound for the temp file are gathered up to this size and written in one go.
const STAGE: usize = 64 * 1024;

/// `proxy_buffering`, `proxy_buffers`, `proxy_max_temp_file_size` and `proxy_temp_path`.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Responses are buffered unless the upstream says `X-Accel-Buffering: no`.
    pub on: bool,
    /// Bytes a response may keep in memory for its client.
    pub memory: usize,
    /// Largest temp file per response (0: memory only).
    pub max_file: u64,
    /// Where temp files are made.
    pub dir: Arc<Path>,
    /// Where request bodies are spooled (`client_body_temp_path`).
    pub body_dir: Arc<Path>,
}

impl Policy {
    /// Checks and takes the keys; errors name the key.
    pub fn of(cfg: &BalancerConfig) -> Result<Self, ConfigError> {
        let memory = parse_buffers(&cfg.proxy_buffers)
            .map_err(|m| ConfigError::new("balancer.proxy_buffers", m))?;
        let dir = |path: &Option<std::path::PathBuf>, key: &str| match path {
            Some(p) if !p.is_dir() => Err(ConfigError::new(
                key,
                format!("{} is not a directory", p.display()),
            )),
            Some(p) => Ok(Arc::from(p.as_path())),
            None => Ok(Arc::from(std::env::temp_dir().as_path())),
        };
        Ok(Self {
            on: cfg.proxy_buffering,
            memory,
            max_file: cfg.proxy_max_temp_file_size,
            dir: dir(&cfg.proxy_temp_path, "balancer.proxy_temp_path")?,
            body_dir: dir(&cfg.client_body_temp_path, "balancer.client_body_temp_path")?,
        })
    }

    /// Whether a response is buffered, given its `X-Accel-Buffering` (if any).
    pub fn applies(&self, upstream_says: Option<bool>) -> bool {
        upstream_says.unwrap_or(self.on)
    }
}

/// nginx's `proxy_buffers <number> <size>` (`"8 8k"`): the memory one response may use, in
/// bytes (at least one KiB, at most 64 MiB).
pub(crate) fn parse_buffers(text: &str) -> Result<usize, String> {
    let mut parts = text.split_ascii_whitespace();
    let (Some(n), Some(size), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{text:?}: expected \"<number> <size>\", e.g. \"8 8k\""
        ));
    };
    let n: u64 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?}: {n:?} is not a positive number of buffers"))?;
    let size = crate::units::parse_size(size).map_err(|e| format!("{text:?}: {e}"))?;
    let total = n.saturating_mul(size);
    if !(1024..=64 << 20).contains(&total) {
        return Err(format!(
            "{text:?}: {total} bytes in all, expected 1k to 64m"
        ));
    }
    Ok(total as usize)
}

/// The part of a response its client has not taken yet, in order: the oldest bytes in memory,
/// the newer ones (when memory is full) in a temp file, the newest gathered for the next write
/// to the file.
pub(crate) struct Backlog<'a> {
    /// Bytes to send, from `pos`.
    mem: Vec<u8>,
    pos: usize,
    file: Option<TempFile>,
    /// Bytes behind the file's, not written yet (at most [`STAGE`]; with `no_file`, they stay).
    staged: Vec<u8>,
    /// No temp file for this response (none allowed, or making or writing one failed).
    no_file: bool,
    /// The sizes and the directory (borrowed: a response costs no reference count).
    policy: &'a Policy,
    /// A TLS client's last write may have left records in the stream: flush before done.
    unflushed: bool,
    /// Since when the client has taken nothing (`send_timeout` runs from there).
    pub(crate) client_deadline: Option<tokio::time::Instant>,
}

/// The temp file: bytes `rpos..wpos` are still to be sent.
struct TempFile {
    file: Arc<File>,
    wpos: u64,
    rpos: u64,
}

impl<'a> Backlog<'a> {
    pub fn new(policy: &'a Policy) -> Self {
        Self {
            mem: Vec::new(),
            pos: 0,
            file: None,
            staged: Vec::new(),
            no_file: policy.max_file == 0,
            policy,
            unflushed: false,
            client_deadline: None,
        }
    }

    fn mem_pending(&self) -> usize {
        self.mem.len() - self.pos
    }

    fn file_pending(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.wpos - f.rpos)
    }

    /// Bytes behind the memory part: in the file and staged for it.
    fn behind(&self) -> u64 {
        self.file_pending() + self.staged.len() as u64
    }

    /// Bytes waiting for the client.
    pub fn pending(&self) -> u64 {
        self.mem_pending() as u64 + self.behind()
    }

    /// Nothing waits for the client.
    pub fn is_empty(&self) -> bool {
        self.pending() == 0 && !self.unflushed
    }

    /// More of the upstream's answer may be read: memory or the temp file can take it.
    pub fn has_room(&self) -> bool {
        if self.behind() == 0 && self.mem_pending() < self.policy.memory {
            return true;
        }
        let file_size = self.file.as_ref().map_or(0, |f| f.wpos) + self.staged.len() as u64;
        !self.no_file && file_size < self.policy.max_file
    }

    /// The memory part is sent and more waits behind it: [`Backlog::refill`] first.
    pub fn needs_refill(&self) -> bool {
        self.mem_pending() == 0 && self.behind() > 0
    }

    /// A write to a TLS client may have left records in the stream.
    pub fn set_unflushed(&mut self) {
        self.unflushed = true;
    }

    /// Queues all of `data` (which is left empty) behind what waits already. Err: the temp file
    /// that holds earlier bytes could not be written (the answer cannot be completed).
    pub async fn push(&mut self, data: &mut Vec<u8>) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let behind = self.behind() > 0;
        if behind || self.mem_pending() + data.len() > self.policy.memory {
            if self.no_file && !behind {
                // Memory only: over its bound by one read at most, as `has_room` stops reads.
                self.append_mem(data);
                return Ok(());
            }
            if !self.staged.is_empty() && self.staged.len() + data.len() > STAGE {
                self.flush_stage().await?;
            }
            if self.staged.capacity() == 0 {
                self.staged.reserve_exact(STAGE.max(data.len()));
            }
            self.staged.append(data);
            if self.staged.len() >= STAGE {
                self.flush_stage().await?;
            }
            return Ok(());
        }
        self.append_mem(data);
        Ok(())
    }

    /// Writes the staged bytes to the file, if a file may be used. Err only when the file
    /// already holds earlier bytes; before that, a failure leaves the staged bytes in memory,
    /// in order, and back-pressure bounds them from then on.
    async fn flush_stage(&mut self) -> io::Result<()> {
        if self.no_file {
            return Ok(());
        }
        match self.write_staged().await {
            Ok(()) => Ok(()),
            Err(e) if self.file_pending() > 0 => Err(e),
            Err(e) => {
                log::warn!(
                    "response buffering: no temp file in {}: {e}",
                    self.policy.dir.display()
                );
                self.no_file = true;
                Ok(())
            }
        }
    }

    fn append_mem(&mut self, data: &mut Vec<u8>) {
        if self.pos == self.mem.len() {
            self.mem.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.mem.len() + data.len() > self.mem.capacity() {
            // Room from the sent part rather than a larger allocation.
            self.mem.drain(..self.pos);
            self.pos = 0;
        }
        if self.mem.capacity() == 0 {
            self.mem
                .reserve_exact(self.policy.memory.min(STAGE).max(data.len()));
        }
        self.mem.append(data);
    }

    /// Writes the staged bytes at the end of the file (made on first use); on error they stay
    /// staged.
    async fn write_staged(&mut self) -> io::Result<()> {
        let file = match &self.file {
            Some(f) => f.file.clone(),
            None => {
                let dir = self.policy.dir.clone();
                let file = Arc::new(
                    run_blocking(move || crate::spool::create_unlinked(&dir, "response")).await?,
                );
                self.file = Some(TempFile {
                    file: file.clone(),
                    wpos: 0,
                    rpos: 0,
                });
                file
            }
        };
        let Some(at) = self.file.as_ref().map(|f| f.wpos) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let owned = std::mem::take(&mut self.staged);
        let len = owned.len() as u64;
        let (result, mut owned) = run_blocking(move || {
            let r = file.write_all_at(&owned, at);
            Ok((r, owned))
        })
        .await?;
        if result.is_ok() {
            if let Some(f) = &mut self.file {
                f.wpos += len;
            }
            owned.clear();
        }
        self.staged = owned;
        result
    }

    /// Moves the next part of the temp file into memory (call when [`Backlog::needs_refill`]).
    /// A file read to its end is emptied, so a long download does not grow it.
    pub async fn refill(&mut self) -> io::Result<()> {
        let Some(f) = self.file.as_ref().filter(|f| f.wpos > f.rpos) else {
            // All that waits is staged: it becomes the memory part as it is.
            std::mem::swap(&mut self.mem, &mut self.staged);
            self.staged.clear();
            self.pos = 0;
            return Ok(());
        };
        let (file, at, n) = (f.file.clone(), f.rpos, (f.wpos - f.rpos).min(REFILL));
        let emptied = at + n == f.wpos;
        let mut buf = std::mem::take(&mut self.mem);
        buf.clear();
        // Allocated here, not on the blocking thread (whose allocator heap would keep it).
        buf.resize(n as usize, 0);
        let (result, buf) = run_blocking(move || {
            let mut r = file.read_exact_at(&mut buf, at);
            if r.is_ok() && emptied {
                r = file.set_len(0);
            }
            Ok((r, buf))
        })
        .await?;
        self.mem = buf;
        self.pos = 0;
        result?;
        if let Some(f) = &mut self.file {
            if emptied {
                f.wpos = 0;
                f.rpos = 0;
            } else {
                f.rpos += n;
            }
        }
        Ok(())
    }

    /// Writes the memory part to `stream` until it is sent (and a TLS stream flushed):
    /// `Ready(Ok)` then, `Pending` when the client takes no more for now. `sent` counts the
    /// bytes written.
    pub fn poll_send<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
        sent: &mut u64,
    ) -> Poll<io::Result<()>> {
        while self.pos < self.mem.len() {
            match Pin::new(&mut *stream).poll_write(cx, &self.mem[self.pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    *sent += n as u64;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.unflushed {
            std::task::ready!(Pin::new(&mut *stream).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs `f` on the blocking pool.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_buffers_is_a_number_and_a_size() {
        assert_eq!(parse_buffers("8 8k"), Ok(64 * 1024));
        assert_eq!(parse_buffers(" 4  16k "), Ok(64 * 1024));
        assert_eq!(parse_buffers("1 1m"), Ok(1 << 20));
        for bad in [
            "", "8", "8k", "0 8k", "x 8k", "8 8x", "8 8k 1", "1 512", "1024 1m",
        ] {
            assert!(parse_buffers(bad).is_err(), "{bad:?}");
        }
    }

    fn policy(memory: usize, max_file: u64) -> Policy {
        Policy {
            on: true,
            memory,
            max_file,
            dir: Arc::from(std::env::temp_dir().as_path()),
            body_dir: Arc::from(std::env::temp_dir().as_path()),
        }
    }

    /// Drains `b` completely into a Vec, refilling from the file as needed.
    async fn take_all(b: &mut Backlog<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        while b.pending() > 0 {
            if b.needs_refill() {
                b.refill().await.unwrap();
            }
            out.extend_from_slice(&b.mem[b.pos..]);
            b.pos = b.mem.len();
        }
        out
    }

    #[tokio::test]
    async fn bytes_keep_their_order_through_memory_the_file_and_the_stage() {
        let p = policy(1024, 64 << 20);
        let mut b = Backlog::new(&p);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut used_file = false;
        for i in 0..400u32 {
            let mut part: Vec<u8> = (0..(i % 97 + 1) * 70).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&part);
            b.push(&mut part).await.unwrap();
            assert!(part.is_empty());
            assert!(b.mem_pending() <= 1024 + 97 * 70, "memory stays bounded");
            assert!(b.staged.len() < STAGE + 97 * 70, "so does the stage");
            used_file |= b.file_pending() > 0;
            if i % 50 == 49 {
                // The client takes some now and then: memory, then the file, then memory again.
                if b.needs_refill() {
                    b.refill().await.unwrap();
                }
                got.extend_from_slice(&b.mem[b.pos..]);
                b.pos = b.mem.len();
            }
        }
        assert!(used_file, "the test should have used the file");
        got.extend(take_all(&mut b).await);
        assert!(got == expected, "the order changed");
        assert!(b.is_empty());
        assert_eq!(
            b.file.as_ref().map(|f| f.wpos),
            Some(0),
            "a drained file is emptied"
        );
    }

    #[tokio::test]
    async fn without_a_file_only_memory_takes_bytes() {
        let p = policy(1024, 0);
        let mut b = Backlog::new(&p);
        assert!(b.has_room());
        b.push(&mut vec![1; 1000]).await.unwrap();
        assert!(b.has_room());
        b.push(&mut vec![2; 100]).await.unwrap();
        assert!(!b.has_room(), "memory is full and there is no file");
        assert!(b.file.is_none());
        assert_eq!(b.pending(), 1100);
    }

    #[tokio::test]
    async fn the_file_is_bounded_by_max_temp_file_size() {
        let p = policy(1024, 256 * 1024);
        let mut b = Backlog::new(&p);
        b.push(&mut vec![1; 1024]).await.unwrap();
        let mut pushed = 1024;
        while b.has_room() {
            b.push(&mut vec![2; 10_000]).await.unwrap();
            pushed += 10_000;
        }
        // Room is checked before a read: the file ends at most one read past the bound.
        let size = b.file.as_ref().map_or(0, |f| f.wpos) + b.staged.len() as u64;
        assert!((256 * 1024..256 * 1024 + 10_000).contains(&size), "{size}");
        assert!(b.file_pending() > 0, "written to the file");
        assert_eq!(take_all(&mut b).await.len(), pushed);
        assert!(b.has_room());
    }

    #[tokio::test]
    async fn an_unusable_temp_directory_falls_back_to_memory() {
        let mut p = policy(16, 1 << 20);
        p.dir = Arc::from(Path::new("/nonexistent/ferrocat"));
        let mut b = Backlog::new(&p);
        b.push(&mut vec![1; 10]).await.unwrap();
        b.push(&mut vec![2; STAGE]).await.unwrap();
        assert!(b.no_file, "the write should have failed");
        assert!(!b.has_room());
        b.push(&mut vec![3; 10]).await.unwrap();
        let mut expected = vec![1u8; 10];
        expected.extend(vec![2u8; STAGE]);
        expected.extend([3u8; 10]);
        assert!(
            take_all(&mut b).await == expected,
            "bytes lost or reordered"
        );
    }
}
