//! The access log (nginx `access_log`, its `combined` format plus the upstream fields).
//!
//! One line per request, written as
//!
//! ```text
//! 127.0.0.1 - - [06/Dec/2026:19:20:00 +0000] "GET /api/me HTTP/1.1" 200 38 "-" "curl/8" 0.001 "127.0.0.1:8081" "200"
//! ```
//!
//! that is `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
//! "$http_user_agent" $request_time "$upstream_addr" "$upstream_status"`, with every upstream tried
//! for the request listed in order (`"a, b"`, `"502, 200"`), `-` where there was none. Bytes a
//! client sent that are not printable ASCII, and `"` and `\`, are written as `\xHH`, as nginx does,
//! so a header cannot forge a line or a field.
//!
//! Data flow: the client connection fills an [`Entry`] (cheap counters on every request; the
//! request line, referer and user agent are copied only while a log is configured). When the
//! request ends, its worker formats the line into its own buffer ([`WorkerLog`]), which goes to the
//! writer thread when it holds [`FLUSH_BYTES`], once a second, and when the worker stops. The
//! writer thread owns the file; a worker never touches the disk and never waits for it: when the
//! writer falls behind by [`QUEUE`] buffers, lines are dropped and counted, and a warning says how
//! many. A reload (SIGHUP) with the same path reopens the file, for log rotation.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;

/// A worker hands its buffer to the writer once it holds this many bytes.
pub(crate) const FLUSH_BYTES: usize = 32 * 1024;
/// Buffers waiting for the writer before lines are dropped.
const QUEUE: usize = 256;
/// Longest request line, referer or user agent kept (longer is cut, marked with `...`).
const MAX_FIELD: usize = 2048;

enum Msg {
    Lines(Vec<u8>),
    Reopen,
    /// Answer once everything sent before is written.
    Sync(std::sync::mpsc::Sender<()>),
}

/// The open log: a sender to its writer thread. Dropping the last one ends the thread after it
/// wrote what it was sent.
pub(crate) struct Sink {
    path: PathBuf,
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("path", &self.path).finish()
    }
}

fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sink {
    /// Opens (creates) `path` for appending and starts its writer thread.
    pub fn open(path: &Path) -> Result<Arc<Sink>, ConfigError> {
        let err = |e: std::io::Error| {
            ConfigError::new(
                "balancer.access_log",
                format!("cannot open {}: {e}", path.display()),
            )
        };
        let file = open_file(path).map_err(err)?;
        let (tx, rx) = sync_channel(QUEUE);
        let owned = path.to_path_buf();
        std::thread::Builder::new()
            .name("ferrocat-bal-log".into())
            .spawn(move || write_loop(owned, file, rx))
            .map_err(err)?;
        Ok(Arc::new(Sink {
            path: path.to_path_buf(),
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the writer to reopen the file (after a rotation moved it away).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }

    /// Waits (blocking, at most `limit`) until the writer has written every line sent so far;
    /// the balancer calls it once its workers stopped, so a process that exits right after
    /// loses no line.
    pub fn sync(&self, limit: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + limit;
        let mut msg = Msg::Sync(tx);
        // The queue may be full: retry until there is room or the time is up.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Hands `lines` to the writer without waiting; when it is behind, they are dropped and
    /// counted.
    fn send(&self, lines: Vec<u8>) {
        match self.tx.try_send(Msg::Lines(lines)) {
            Ok(()) => {}
            Err(
                TrySendError::Full(Msg::Lines(lines))
                | TrySendError::Disconnected(Msg::Lines(lines)),
            ) => {
                let n = lines.iter().filter(|&&b| b == b'\n').count() as u64;
                let before = self.dropped.fetch_add(n, Ordering::Relaxed);
                // Warn on the first loss and then once per 10,000 lines, not per line.
                if before == 0 || before / 10_000 != (before + n) / 10_000 {
                    log::warn!(
                        "access log {}: writer behind, {} line(s) dropped so far",
                        self.path.display(),
                        before + n
                    );
                }
            }
            Err(_) => {}
        }
    }
}

fn write_loop(path: PathBuf, mut file: File, rx: Receiver<Msg>) {
    let mut failing = false;
    for msg in rx {
        match msg {
            Msg::Lines(lines) => match file.write_all(&lines) {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        log::warn!("access log {}: write failed: {e}", path.display());
                    }
                    failing = true;
                }
            },
            Msg::Sync(done) => {
                let _ = done.send(());
            }
            Msg::Reopen => match open_file(&path) {
                Ok(f) => file = f,
                Err(e) => log::warn!(
                    "access log {}: reopen failed, still writing to the old file: {e}",
                    path.display()
                ),
            },
        }
    }
}

/// What one request leaves for its log line. Lives in the client connection and is reused.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// A log is configured: copy the text fields and time the request.
    pub on: bool,
    /// When the request's first byte was at hand.
    pub started: Option<Instant>,
    /// Status sent to the client (0: none yet).
    pub status: u16,
    /// Bytes written to the client for this request, heads included.
    pub sent: u64,
    /// Of these, the bytes of response heads (interim ones included).
    pub head: u64,
    /// Upstreams tried, in order, with the status each gave (`502`/`504` for errors and
    /// time-outs, as nginx's `$upstream_status`).
    pub upstreams: Vec<(SocketAddr, u16)>,
    /// The request line, escaped; empty when no head could be parsed.
    pub line: Vec<u8>,
    /// `Referer`, escaped.
    pub referer: Vec<u8>,
    /// `User-Agent`, escaped.
    pub agent: Vec<u8>,
    /// `request_id_header` is on: the line ends with the request id (`"-"` when none).
    pub with_request_id: bool,
    /// The request id, escaped.
    pub request_id: Vec<u8>,
    /// The `auth_basic` user (`$remote_user`), escaped.
    pub user: Vec<u8>,
}

impl Entry {
    /// Ready for the next request.
    pub fn reset(&mut self, on: bool) {
        self.on = on;
        self.started = None;
        self.status = 0;
        self.sent = 0;
        self.head = 0;
        self.upstreams.clear();
        self.line.clear();
        self.referer.clear();
        self.agent.clear();
        self.with_request_id = false;
        self.request_id.clear();
        self.user.clear();
    }

    /// Notes the start of the request (the first call counts).
    pub fn start(&mut self) {
        if self.on && self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }

    /// Notes an upstream attempt and the status it gave.
    pub fn attempt(&mut self, upstream: SocketAddr, status: u16) {
        if self.on {
            self.upstreams.push((upstream, status));
        }
    }

    /// Something worth a line happened: a parsed request or an answer of the balancer's own.
    fn worth_a_line(&self) -> bool {
        self.status != 0 || !self.line.is_empty()
    }
}

/// Appends `raw` to `out` escaped as nginx escapes log variables, cut at [`MAX_FIELD`].
pub(crate) fn escape_into(out: &mut Vec<u8>, raw: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let cut = raw.len() > MAX_FIELD;
    for &b in &raw[..raw.len().min(MAX_FIELD)] {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

/// A worker's log buffer and the sink it goes to.
#[derive(Debug, Default)]
pub(crate) struct WorkerLog {
    inner: RefCell<Buffer>,
}

#[derive(Debug, Default)]
struct Buffer {
    lines: Vec<u8>,
    sink: Option<Arc<Sink>>,
    /// `[$time_local]` of the second `clock` (formatted once per second).
    clock: u64,
    stamp: Vec<u8>,
}

impl WorkerLog {
    /// True while a log is configured.
    pub fn enabled(&self) -> bool {
        self.inner.borrow().sink.is_some()
    }

    /// Follows a reload: what was buffered goes to the old sink, then lines go to `sink`.
    pub fn set_sink(&self, sink: Option<Arc<Sink>>) {
        let mut b = self.inner.borrow_mut();
        let same = match (&b.sink, &sink) {
            (Some(a), Some(n)) => Arc::ptr_eq(a, n),
            (None, None) => true,
            _ => false,
        };
        if !same {
            b.flush();
            b.sink = sink;
        }
    }

    /// Sends what is buffered to the writer.
    pub fn flush(&self) {
        self.inner.borrow_mut().flush();
    }

    /// Formats the line of a finished request (nothing if it is not worth one).
    pub fn record(&self, client: &str, e: &Entry) {
        if !e.worth_a_line() {
            return;
        }
        let mut b = self.inner.borrow_mut();
        if b.sink.is_none() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if b.clock != now || b.stamp.is_empty() {
            b.clock = now;
            b.stamp = time_local(now).into_bytes();
        }
        let Buffer { lines, stamp, .. } = &mut *b;
        format_line(lines, client, stamp, e);
        if lines.len() >= FLUSH_BYTES {
            b.flush();
        }
    }
}

impl Buffer {
    fn flush(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        match &self.sink {
            Some(sink) => sink.send(std::mem::replace(
                &mut self.lines,
                Vec::with_capacity(FLUSH_BYTES + 1024),
            )),
            None => self.lines.clear(),
        }
    }
}

/// Appends one line for `e`.
fn format_line(out: &mut Vec<u8>, client: &str, stamp: &[u8], e: &Entry) {
    fn dash(v: &[u8]) -> &[u8] {
        if v.is_empty() {
            b"-"
        } else {
            v
        }
    }
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(b" - ");
    out.extend_from_slice(dash(&e.user));
    out.extend_from_slice(b" [");
    out.extend_from_slice(stamp);
    out.extend_from_slice(b"] \"");
    out.extend_from_slice(dash(&e.line));
    out.extend_from_slice(b"\" ");
    push_num(out, u64::from(if e.status == 0 { 499 } else { e.status }));
    out.push(b' ');
    push_num(out, e.sent.saturating_sub(e.head));
    out.extend_from_slice(b" \"");
    out.extend_from_slice(dash(&e.referer));
    out.extend_from_slice(b"\" \"");
    out.extend_from_slice(dash(&e.agent));
    out.extend_from_slice(b"\" ");
    // Seconds with millisecond resolution, as nginx's $request_time.
    let ms = e.started.map_or(0, |s| s.elapsed().as_millis() as u64);
    push_num(out, ms / 1000);
    out.push(b'.');
    let frac = ms % 1000;
    if frac < 100 {
        out.push(b'0');
    }
    if frac < 10 {
        out.push(b'0');
    }
    push_num(out, frac);
    out.extend_from_slice(b" \"");
    if e.upstreams.is_empty() {
        out.extend_from_slice(b"-\" \"-\"");
    } else {
        for (i, (addr, _)) in e.upstreams.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_addr(out, addr);
        }
        out.extend_from_slice(b"\" \"");
        for (i, (_, status)) in e.upstreams.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_num(out, u64::from(*status));
        }
        out.push(b'"');
    }
    if e.with_request_id {
        out.extend_from_slice(b" \"");
        out.extend_from_slice(dash(&e.request_id));
        out.push(b'"');
    }
    out.push(b'\n');
}

/// Appends `n` in decimal (no formatting machinery: this runs once per field and request).
fn push_num(out: &mut Vec<u8>, n: u64) {
    crate::headers::put_digits(out, n, 10);
}

/// Appends `ip:port` (`[ip]:port` for IPv6).
fn push_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_num(out, u64::from(*octet));
            }
            out.push(b':');
            push_num(out, u64::from(a.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// `06/Dec/2026:19:20:00 +0000` for a Unix time (UTC).
fn time_local(unix: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month (1..=12) and day of the month of a day count since 1970-01-01 (proleptic
/// Gregorian calendar; counts whole 400-year eras from 0000-03-01).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of the era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the (March-based) year
    let mp = (5 * doy + 2) / 153; // March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_formatted_like_nginx_time_local() {
        assert_eq!(time_local(0), "01/Jan/1970:00:00:00 +0000");
        // 2000-02-29 (a leap day in a century year divisible by 400)
        assert_eq!(time_local(951_782_400), "29/Feb/2000:00:00:00 +0000");
        // 2026-12-06 19:20:05
        assert_eq!(time_local(1_796_584_805), "06/Dec/2026:19:20:05 +0000");
        // 2100-03-01 (2100 is not a leap year)
        assert_eq!(time_local(4_107_542_400), "01/Mar/2100:00:00:00 +0000");
    }

    #[test]
    fn fields_are_escaped_and_cut() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a\"b\\c\n\xff d");
        assert_eq!(out, b"a\\x22b\\x5Cc\\x0A\\xFF d");
        let mut out = Vec::new();
        escape_into(&mut out, &[b'x'; MAX_FIELD + 10]);
        assert_eq!(out.len(), MAX_FIELD + 3);
        assert!(out.ends_with(b"..."));
    }

    #[test]
    fn a_line_lists_every_upstream_tried() {
        let mut e = Entry::default();
        e.reset(true);
        e.line.extend_from_slice(b"GET /x HTTP/1.1");
        e.agent.extend_from_slice(b"curl/8");
        e.status = 200;
        e.sent = 150;
        e.head = 100;
        e.attempt("127.0.0.1:8081".parse().unwrap(), 502);
        e.attempt("127.0.0.1:8082".parse().unwrap(), 200);
        let mut out = Vec::new();
        format_line(&mut out, "127.0.0.9", b"06/Dec/2026:19:20:05 +0000", &e);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "127.0.0.9 - - [06/Dec/2026:19:20:05 +0000] \"GET /x HTTP/1.1\" 200 50 \"-\" \"curl/8\" 0.000 \"127.0.0.1:8081, 127.0.0.1:8082\" \"502, 200\"\n"
        );
    }

    #[test]
    fn numbers_and_addresses_are_written_like_display() {
        for n in [0u64, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_num(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for a in ["127.0.0.1:8081", "10.0.255.1:1", "[::1]:8080"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_addr(&mut out, &addr);
            assert_eq!(out, addr.to_string().into_bytes());
        }
    }

    #[test]
    fn a_closed_connection_without_a_request_leaves_no_line() {
        let mut e = Entry::default();
        e.reset(true);
        assert!(!e.worth_a_line());
        e.status = 400;
        assert!(e.worth_a_line());
    }
}
