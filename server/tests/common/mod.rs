//! Test support: the `ferrocat` binary as a user runs it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file in a temp dir.
pub fn write_config(toml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    f
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrocat"))
}

/// A running `ferrocat` process; killed on drop (also when a test panics).
pub struct Ferrocat {
    pub child: Child,
    pub addr: SocketAddr,
    _config: Option<tempfile::NamedTempFile>,
}

impl Ferrocat {
    /// Runs `ferrocat <mode> --config <toml>` and waits until `addr` accepts.
    pub fn spawn(mode: &str, toml: &str, addr: SocketAddr) -> Ferrocat {
        Self::spawn_env(mode, toml, addr, &[])
    }

    pub fn spawn_env(mode: &str, toml: &str, addr: SocketAddr, env: &[(&str, &str)]) -> Ferrocat {
        Self::spawn_wrapped(&[], mode, toml, addr, env)
    }

    /// As `spawn_env`, run through `wrapper` (e.g. `["prlimit", "--nofile=64:64"]`).
    pub fn spawn_wrapped(
        wrapper: &[&str],
        mode: &str,
        toml: &str,
        addr: SocketAddr,
        env: &[(&str, &str)],
    ) -> Ferrocat {
        let cfg = write_config(toml);
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg(mode)
            .arg("--config")
            .arg(cfg.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut f = Ferrocat {
            child,
            addr,
            _config: Some(cfg),
        };
        f.wait_ready();
        f
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ferrocat exited early with {status}");
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferrocat did not listen on {} in time", self.addr);
    }

    /// The config file the process was started with (rewrite it, then SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._config.as_ref().unwrap().path().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL, as an out-of-memory killer or an operator would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. SIGTERM, SIGHUP).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }
}

impl Drop for Ferrocat {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A reqwest client with its own cookie jar and no redirects followed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client without cookies (to send hand-made ones).
pub fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `url` and parse the JSON body.
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url` and return the body text.
pub async fn get_text(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// The app node's session statistics.
pub async fn stats(f: &Ferrocat) -> serde_json::Value {
    get_json(&bare_client(), f.url("/ferrocat/stats")).await
}

/// The value of the session cookie in a response, if set.
pub fn session_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
}

/// Config for an all-in-one node on free ports with the in-process store.
pub fn all_in_one_config(balancer_port: u16, app_port: u16, extra_session: &str) -> String {
    format!(
        r#"
[node]
name = "app1"
listen = "127.0.0.1:{app_port}"
workers = 2

[session]
cookie_secret = "test-secret-test-secret-test-secret-0001"
{extra_session}

[balancer]
listen = "127.0.0.1:{balancer_port}"
workers = 1
"#
    )
}
