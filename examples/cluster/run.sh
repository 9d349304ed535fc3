#!/usr/bin/env bash
# A whole cluster on this machine (loopback only): two memcached nodes, two
# ferrocat app nodes and the ferrocat balancer, as in the seed set-up.
#   examples/cluster/run.sh        # then open http://127.0.0.1:8080
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v memcached >/dev/null || { echo "install memcached first: apt-get install memcached" >&2; exit 1; }
cargo build --release -p ferrocat-server
bin=target/release/ferrocat
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
user=(); [ "$(id -u)" -eq 0 ] && user=(-u root)
memcached "${user[@]}" -l 127.0.0.1 -p 11211 -U 0 -m 64 & pids+=($!)
memcached "${user[@]}" -l 127.0.0.1 -p 11212 -U 0 -m 64 & pids+=($!)
$bin app --config examples/cluster/app1.toml & pids+=($!)
$bin app --config examples/cluster/app2.toml & pids+=($!)
$bin balancer --config examples/cluster/balancer.toml & pids+=($!)
echo "cluster up: http://127.0.0.1:8080 (Ctrl-C to stop)"
wait
