#![allow(clippy::unwrap_used)]
//! The testkit's promises, checked against real memcached processes.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ferrocat_testkit::{Cluster, Memcached};

/// Send one command line (plus optional data) and read one reply line.
fn roundtrip(addr: SocketAddr, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(cmd.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

fn set(addr: SocketAddr, key: &str, val: &str) {
    let reply = roundtrip(addr, &format!("set {key} 0 0 {}\r\n{val}\r\n", val.len())).unwrap();
    assert_eq!(reply, "STORED\r\n");
}

fn get_exists(addr: SocketAddr, key: &str) -> bool {
    let reply = roundtrip(addr, &format!("get {key}\r\n")).unwrap();
    reply.starts_with("VALUE ")
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn started_server_accepts_and_stores() {
    let m = Memcached::start();
    assert!(m.is_running());
    assert!(m.addr().ip().is_loopback());
    set(m.addr(), "k", "v");
    assert!(get_exists(m.addr(), "k"));
}

#[test]
fn kill_stops_the_process_and_refuses_connections() {
    let mut m = Memcached::start();
    let pid = m.pid();
    m.kill();
    assert!(!m.is_running());
    assert!(!process_exists(pid));
    let err = TcpStream::connect_timeout(&m.addr(), Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    m.kill(); // idempotent
}

#[test]
fn restart_comes_back_empty_on_the_same_port() {
    let mut m = Memcached::start();
    let addr = m.addr();
    set(addr, "k", "v");
    m.restart();
    assert_eq!(m.addr(), addr);
    assert!(m.is_running());
    assert!(!get_exists(addr, "k"), "a restarted node must be empty");
    set(addr, "k2", "v");
    assert!(get_exists(addr, "k2"));
}

#[test]
fn restart_after_kill_starts_again() {
    let mut m = Memcached::start();
    m.kill();
    m.restart();
    assert!(m.is_running());
    set(m.addr(), "k", "v");
}

#[test]
fn freeze_makes_a_client_time_out_and_unfreeze_answers_again() {
    let mut m = Memcached::start();
    set(m.addr(), "k", "v");
    m.freeze();
    assert!(m.is_running(), "a frozen process still runs");
    let err = roundtrip(m.addr(), "get k\r\n").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "expected a timeout, got {err:?}"
    );
    m.unfreeze();
    assert!(get_exists(m.addr(), "k"), "data survives a freeze");
}

#[test]
fn a_request_sent_while_frozen_is_answered_after_unfreeze() {
    let mut m = Memcached::start();
    set(m.addr(), "k", "v");
    let mut s = TcpStream::connect(m.addr()).unwrap();
    m.freeze();
    s.write_all(b"get k\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(s.read(&mut buf).is_err());
    m.unfreeze();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"VALUE k"));
}

#[test]
fn drop_leaves_no_process_even_when_frozen() {
    let mut m = Memcached::start();
    let pid = m.pid();
    m.freeze();
    drop(m);
    assert!(!process_exists(pid));
}

#[test]
fn panic_unwind_kills_the_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let m = Memcached::start();
        tx.send(m.pid()).unwrap();
        panic!("test body failed");
    });
    assert!(handle.join().is_err());
    let pid = rx.recv().unwrap();
    assert!(!process_exists(pid));
}

#[test]
fn extra_args_are_passed_and_kept_across_restart() {
    // -I 2m raises the item size limit; a 1.5 MB value only fits with it.
    let mut m = Memcached::start_with_args(&["-I", "2m"]);
    let big = "x".repeat(1_500_000);
    set(m.addr(), "big", &big);
    m.restart();
    set(m.addr(), "big", &big);
}

#[test]
fn cluster_lists_nodes_in_msm_format_and_finds_them_by_id() {
    let mut c = Cluster::start(3);
    let nodes = c.memcached_nodes();
    let parts: Vec<&str> = nodes.split(' ').collect();
    assert_eq!(parts.len(), 3);
    for (i, part) in parts.iter().enumerate() {
        let expect = format!("n{}:{}", i + 1, c.nodes[i].addr());
        assert_eq!(*part, expect);
        assert!(part.starts_with(&format!("n{}:127.0.0.1:", i + 1)));
    }
    let addr2 = c.nodes[1].addr();
    let n2 = c.node("n2");
    assert_eq!(n2.addr(), addr2);
    n2.kill();
    assert!(!c.nodes[1].is_running());
    assert!(c.nodes[0].is_running() && c.nodes[2].is_running());
}

#[test]
#[should_panic(expected = "no node")]
fn cluster_rejects_unknown_ids() {
    let mut c = Cluster::start(1);
    c.node("n2");
}
