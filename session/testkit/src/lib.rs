//! Dev-only test support: real `memcached` processes on free loopback ports.
//!
//! Components:
//! - [`memcached_binary`] finds the `memcached` executable (PATH, then `/usr/bin`).
//! - [`free_port`] asks the kernel for an unused loopback port.
//! - [`Memcached`] owns one child process we started: it can be killed (SIGKILL), restarted
//!   empty on the same port, frozen (SIGSTOP) and unfrozen (SIGCONT). Dropping it, also
//!   during a panic unwind, continues and kills the child and reaps it, so a failing test
//!   leaves no process behind. It only ever signals its own child's pid.
//! - [`Cluster`] is `n` such processes with ids `n1..nN` and renders them in msm's
//!   `memcached_nodes` format.
//!
//! Every start waits until the server accepts TCP connections, so a test can use the
//! address at once. If another process grabs the port between [`free_port`] and the bind
//! (the start races), the start is retried on a new port.
//!
//! The functions panic on failure: this crate is for tests and benchmarks only.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Memory limit (MiB) given to each memcached unless the caller passes its own `-m`.
const DEFAULT_MEMORY_MB: &str = "64";
/// How long one start waits for the server to accept connections before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports [`Memcached::start`] tries when the port was taken meanwhile.
const START_ATTEMPTS: usize = 10;
/// How long a freeze or unfreeze waits for every thread to change state.
const THREAD_STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `cond` every 20 ms until it holds.
///
/// # Panics
/// After `limit`, naming `what`.
pub async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of the `memcached` executable.
///
/// Looks in `PATH`, then in `/usr/bin` and `/usr/local/bin`.
///
/// # Panics
/// When memcached is not installed, with a message saying how to install it.
pub fn memcached_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = [PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")];
    from_path
        .into_iter()
        .chain(fixed)
        .map(|dir| dir.join("memcached"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "memcached not found in PATH, /usr/bin or /usr/local/bin; \
                 install it with `apt-get install memcached` (Debian/Ubuntu)"
            )
        })
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read it, close).
///
/// # Panics
/// When the kernel refuses to bind a loopback socket.
pub fn free_port() -> u16 {
    // Never hand the same port to two tests of this process (the kernel may
    // give a just-released port out again).
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the bound port: {e}"))
            .port();
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// One real memcached process started by this test.
///
/// See the crate docs. All signals go to this child's pid only, and only while we still
/// own it (it has not been reaped).
pub struct Memcached {
    /// The child while it runs (or is a zombie not yet reaped). A mutex so `is_running`
    /// can poll `try_wait` through `&self` while `Memcached` stays `Send + Sync`.
    child: Mutex<Option<Child>>,
    /// Port kept across restarts: clients configured with the address reconnect to it.
    port: u16,
    /// Extra command-line arguments, reused by `restart`.
    extra: Vec<String>,
    /// Pid of the most recent child (still reported after a kill, for diagnostics).
    pid: u32,
    /// Whether we sent SIGSTOP without a SIGCONT since.
    frozen: bool,
}

impl std::fmt::Debug for Memcached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memcached")
            .field("addr", &self.addr())
            .field("pid", &self.pid)
            .field("frozen", &self.frozen)
            .finish()
    }
}

impl Memcached {
    /// Start memcached on a free loopback port with the default options.
    pub fn start() -> Memcached {
        Self::start_with_args(&[])
    }

    /// Start memcached with extra command-line arguments (e.g. `["-t", "1"]`).
    ///
    /// # Panics
    /// When memcached cannot be started on any of several fresh ports.
    pub fn start_with_args(extra: &[&str]) -> Memcached {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_ready(port, &extra) {
                Ok(child) => {
                    let pid = child.id();
                    log::debug!("started memcached pid {pid} on 127.0.0.1:{port}");
                    return Memcached {
                        child: Mutex::new(Some(child)),
                        port,
                        extra,
                        pid,
                        frozen: false,
                    };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start memcached after {START_ATTEMPTS} attempts: {last_err}");
    }

    /// The address clients connect to (`127.0.0.1:port`, stable across restarts).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The pid of the current (or, after a kill, the last) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether our process is alive (a frozen process counts as running).
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the process and reap it. Does nothing when it is not running.
    pub fn kill(&mut self) {
        let taken = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = taken {
            // Only signal a child we have not reaped yet: its pid cannot have been reused.
            // SIGKILL first: a frozen process must not resume and answer queued requests
            // before dying. (SIGKILL also ends a stopped process; the SIGCONT is belt and
            // braces.)
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                if self.frozen {
                    let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGCONT);
                }
            }
            let _ = child.wait();
            log::debug!("killed memcached pid {} on port {}", self.pid, self.port);
        }
        self.frozen = false;
    }

    /// Kill the process (if running) and start a new, empty one on the same port.
    ///
    /// # Panics
    /// When the port cannot be bound again within a few seconds.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match spawn_ready(self.port, &self.extra) {
                Ok(child) => {
                    self.pid = child.id();
                    *self.child.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
                    log::debug!("restarted memcached pid {} on port {}", self.pid, self.port);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("could not restart memcached on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGSTOP the process: it keeps its sockets but answers nothing (a hung node).
    pub fn freeze(&mut self) {
        if self.signal(Signal::SIGSTOP) {
            self.frozen = true;
            // SIGSTOP lands asynchronously: a thread that is running may still
            // answer a request after kill(2) returned. Return only once every
            // thread of the process is stopped.
            wait_for_threads(self.pid, true);
        }
    }

    /// SIGCONT a frozen process: it answers again, with its data intact.
    pub fn unfreeze(&mut self) {
        if self.signal(Signal::SIGCONT) {
            self.frozen = false;
            wait_for_threads(self.pid, false);
        }
    }

    /// Send `sig` to our child if it is still ours and alive; true if sent.
    fn signal(&mut self, sig: Signal) -> bool {
        let pid = self.pid;
        let guard = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => kill(Pid::from_raw(pid as i32), sig).is_ok(),
            _ => false,
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (at most 10 s) until every thread of `pid` is stopped (`stopped`)
/// or none is, reading `/proc/<pid>/task/*/stat`.
///
/// # Panics
/// When the threads do not get there in time: a test that believes a node is
/// frozen while it still answers would fail later with a misleading message.
fn wait_for_threads(pid: u32, stopped: bool) {
    let deadline = Instant::now() + THREAD_STATE_TIMEOUT;
    loop {
        let states: Vec<char> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                    // The state follows the ")" that closes the command name.
                    .filter_map(|stat| {
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.trim_start().chars().next())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let done = if stopped {
            !states.is_empty() && states.iter().all(|c| *c == 'T')
        } else {
            states.iter().all(|c| *c != 'T')
        };
        if done {
            return;
        }
        if Instant::now() >= deadline {
            let want = if stopped {
                "stop (SIGSTOP)"
            } else {
                "resume (SIGCONT)"
            };
            panic!(
                "memcached pid {pid}: threads did not {want} within {THREAD_STATE_TIMEOUT:?}; \
                 thread states {states:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The pid a memcached reports in `stats`, if it answers.
fn server_pid(mut stream: TcpStream, login: Option<&(String, String)>) -> Option<u32> {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    if let Some((user, pass)) = login {
        // `-Y`: authenticate first (see `auth_login`).
        let data = format!("{user} {pass}");
        write!(stream, "set auth 0 -1 {}\r\n{data}\r\n", data.len()).ok()?;
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).ok()?;
        if &answer != b"STORED\r\n" {
            return None;
        }
    }
    stream.write_all(b"stats\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("END\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("STAT pid "))
        .and_then(|v| v.trim().parse().ok())
}

/// With `-Y <authfile>` among `extra`: the file's first `user:password` line, used to log in
/// for the readiness check.
fn auth_login(extra: &[String]) -> Option<(String, String)> {
    let file = extra
        .iter()
        .position(|a| a == "-Y")
        .and_then(|i| extra.get(i + 1))?;
    let text = std::fs::read_to_string(file).ok()?;
    let (user, pass) = text.lines().next()?.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Spawn memcached on `port` and wait until it accepts TCP; on failure the child is
/// killed and reaped and the reason returned.
fn spawn_ready(port: u16, extra: &[String]) -> Result<Child, String> {
    let login = auth_login(extra);
    let mut cmd = Command::new(memcached_binary());
    cmd.arg("-p")
        .arg(port.to_string())
        .args(["-l", "127.0.0.1", "-U", "0"]);
    if !extra.iter().any(|a| a == "-m") {
        cmd.args(["-m", DEFAULT_MEMORY_MB]);
    }
    if nix::unistd::geteuid().is_root() && !extra.iter().any(|a| a == "-u") {
        cmd.args(["-u", "root"]);
    }
    cmd.args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", memcached_binary()))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!("memcached on port {port} exited early: {status}"));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("wait for memcached: {e}")),
        }
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            // Another test's memcached can own the port (two tests were handed
            // the same free port): only the server that reports our child's pid
            // is ours. Anything else: give the port up and let the caller retry.
            match server_pid(stream, login.as_ref()) {
                Some(pid) if pid == child.id() => return Ok(child),
                Some(other) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "port {port} belongs to another memcached (pid {other})"
                    ));
                }
                None => {}
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("memcached on port {port} did not accept in time"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Several memcached processes with ids `n1..nN` (msm node ids).
#[derive(Debug)]
pub struct Cluster {
    /// The nodes; `nodes[i]` has id `n{i+1}`.
    pub nodes: Vec<Memcached>,
}

impl Cluster {
    /// Start `n` memcached processes.
    pub fn start(n: usize) -> Cluster {
        Self::start_with_args(n, &[])
    }

    /// Start `n` memcached processes with extra command-line arguments (e.g.
    /// `["-Y", authfile]`; a node restarts with them too).
    pub fn start_with_args(n: usize, extra: &[&str]) -> Cluster {
        Cluster {
            nodes: (0..n).map(|_| Memcached::start_with_args(extra)).collect(),
        }
    }

    /// The nodes in msm's format: `"n1:127.0.0.1:P1 n2:127.0.0.1:P2 ..."`.
    pub fn memcached_nodes(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, m)| format!("n{}:{}", i + 1, m.addr()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The node with id `id` (`"n1"`, `"n2"`, ...).
    ///
    /// # Panics
    /// On an id that is not in this cluster.
    pub fn node(&mut self, id: &str) -> &mut Memcached {
        let count = self.nodes.len();
        id.strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.nodes.get_mut(i))
            .unwrap_or_else(|| panic!("no node {id:?} in a cluster of {count} (ids n1..n{count})"))
    }
}
