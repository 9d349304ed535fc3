//! A serving `ferrocat` raises its soft limit on open files to the hard limit, so a default
//! soft limit (often 1024) does not cap the balancer at a few hundred concurrent clients.
//! Its own test binary: the test lowers its own soft limit, which the child inherits.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft and hard "Max open files" of a process, from `/proc/PID/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut nums = line.split_whitespace().filter_map(|w| match w {
        "unlimited" => Some(u64::MAX),
        w => w.parse::<u64>().ok(),
    });
    (nums.next().unwrap(), nums.next().unwrap())
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard > 256,
        "this test needs a hard limit above 256, got {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();

    let port = free_port();
    let toml = format!(
        "[node]\nname = \"app1\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\n[session]\ncookie_secret = \"{}\"\n",
        "s".repeat(32)
    );
    let app = Ferrocat::spawn("app", &toml, format!("127.0.0.1:{port}").parse().unwrap());
    // The kernel caps open files at fs.nr_open, so an unlimited hard limit is raised to that.
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").map_or(hard, |t| t.trim().parse().unwrap());
    let (soft, child_hard) = open_file_limits(app.child.id());
    assert_eq!(soft, hard.min(nr_open));
    assert!(
        child_hard == hard || hard == u64::MAX,
        "{child_hard} {hard}"
    );
    // The test process itself still has the lowered limit: only the server raised its own.
    assert_eq!(open_file_limits(std::process::id()), (256, hard));
}
