//! Request bodies spooled to a temporary file (nginx's `client_body_temp`).
//!
//! A chunked body has no announced length, so the only way to answer 413 before any upstream is
//! contacted is to read it to its end first. Up to [`crate::body::MEMORY_LIMIT`] it stays in
//! memory; past that, when `client_max_body_size` is larger, the rest goes to a file in
//! `client_body_temp_path` (default: the system temp directory), which is unlinked as soon as it is created (nothing is left behind,
//! whatever happens to the process) and read back for each attempt, so such a body can be
//! retried too. File I/O runs on tokio's blocking pool, never on the worker's event loop.

use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::io::LazyTimer;

/// Bytes read back from the file per write to the upstream.
const SEND_CHUNK: usize = 64 * 1024;

/// A request body (the part after the in-memory prefix) in an unlinked temp file.
#[derive(Debug)]
pub(crate) struct Spool {
    file: tokio::fs::File,
    len: u64,
}

/// Why sending a spooled body failed.
#[derive(Debug)]
pub(crate) enum SpoolSendError {
    /// Reading the temp file failed.
    File(std::io::Error),
    /// Writing to the upstream failed.
    Upstream(std::io::Error),
    /// The upstream took nothing for the send time-out.
    Timeout,
    /// The upstream answered before it had the whole body.
    Answered,
}

/// A new file in `dir` named after `what`, opened for reading and writing and unlinked at
/// once, so nothing is left behind whatever happens to the process (blocking: call it on the
/// blocking pool). Also the response buffers' temp files (`crate::buffering`).
pub(crate) fn create_unlinked(dir: &std::path::Path, what: &str) -> std::io::Result<std::fs::File> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..8 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("ferrocat-{what}-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                let _ = std::fs::remove_file(&path);
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::ErrorKind::AlreadyExists.into())
}

impl Spool {
    /// Creates an empty spool file in `dir` (already unlinked).
    pub async fn create(dir: &std::path::Path) -> std::io::Result<Self> {
        let dir = dir.to_owned();
        let file = tokio::task::spawn_blocking(move || create_unlinked(&dir, "body"))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        Ok(Self {
            file: tokio::fs::File::from_std(file),
            len: 0,
        })
    }

    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data).await?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Makes everything written readable.
    pub async fn finish(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Sends the whole file to `to`, using `scratch` as the buffer.
    pub async fn send(
        &mut self,
        to: &mut crate::pool::UpConn,
        scratch: &mut Vec<u8>,
        timer: &mut LazyTimer,
        send_timeout: Duration,
    ) -> Result<(), SpoolSendError> {
        self.file
            .seek(SeekFrom::Start(0))
            .await
            .map_err(SpoolSendError::File)?;
        let mut left = self.len;
        while left > 0 {
            scratch.clear();
            scratch.resize((left as usize).min(SEND_CHUNK), 0);
            let n = self
                .file
                .read(scratch)
                .await
                .map_err(SpoolSendError::File)?;
            if n == 0 {
                return Err(SpoolSendError::File(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            match crate::body::write_watching(to, &scratch[..n], timer, send_timeout).await {
                Ok(Ok(crate::body::Sent::Done)) => {}
                Ok(Ok(crate::body::Sent::Answered)) => return Err(SpoolSendError::Answered),
                Ok(Err(e)) => return Err(SpoolSendError::Upstream(e)),
                Err(_) => return Err(SpoolSendError::Timeout),
            }
            left -= n as u64;
        }
        Ok(())
    }
}
