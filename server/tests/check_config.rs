//! `ferrocat check-config`: exit codes and messages naming the key.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

fn check(toml: &str) -> (i32, String) {
    let f = write_config(toml);
    let out = Command::new(binary())
        .arg("check-config")
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn valid_config_exits_zero() {
    let (code, out) = check(&all_in_one_config(8080, 8081, ""));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn misspelt_key_is_named() {
    let (code, out) = check("[session]\nstiky = true\n");
    assert_ne!(code, 0);
    assert!(out.contains("session.stiky"), "{out}");
}

#[test]
fn negative_weight_is_named() {
    let (code, out) = check("[[balancer.upstream]]\naddress = \"127.0.0.1:8081\"\nweight = -1\n");
    assert_ne!(code, 0);
    assert!(out.contains("balancer.upstream[0].weight"), "{out}");
}

#[test]
fn bad_value_is_named() {
    let (code, out) = check("[session]\nlocking_mode = \"sometimes\"\n");
    assert_ne!(code, 0);
    assert!(out.contains("session.locking_mode"), "{out}");
}

#[test]
fn files_the_config_names_are_read_too() {
    // A TLS certificate that cannot be read, and an error page that does not exist, as nginx -t
    // reports them (the balancer would refuse to start with them).
    let (code, out) = check(
        "[balancer]\nssl_listen = \"127.0.0.1:0\"\nssl_certificate = \"/nonexistent/site.crt\"\nssl_certificate_key = \"/nonexistent/site.key\"\n[[balancer.upstream]]\naddress = \"127.0.0.1:8081\"\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("balancer.ssl_certificate: cannot read"),
        "{out}"
    );
    let (code, out) = check(
        "[balancer]\nerror_page = \"/nonexistent/50x.html\"\n[[balancer.upstream]]\naddress = \"127.0.0.1:8081\"\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("balancer.error_page: cannot read"), "{out}");
    // With pools: a pool nobody joined.
    let (code, out) = check(
        "[[balancer.pool]]\nname = \"static\"\npaths = ['^/static/']\n[[balancer.upstream]]\naddress = \"127.0.0.1:8081\"\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("balancer.pool[0].name"), "{out}");
}

#[test]
fn env_override_is_validated_too() {
    let f = write_config("[node]\nname = \"app1\"\n");
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("FERROCAT__SESSION__SERIALIZER", "kryo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("session.serializer"));
}

#[test]
fn help_works_on_every_subcommand() {
    for sub in ["all-in-one", "balancer", "app", "check-config"] {
        let out = Command::new(binary())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
    }
}

#[test]
fn the_shipped_example_configs_are_valid() {
    // Run from the workspace root, as `examples/cluster/run.sh` does (the configs name
    // `examples/html/50x.html` and `examples/static` relative to it).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("examples/cluster");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let out = Command::new(binary())
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .current_dir(&root)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} configs under {}",
        dir.display()
    );
}
