# Shared by the benchmark scripts (sourced; needs $TMP and $ROOT).

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The top of an nginx config for instance $1 (one worker, in the foreground, files in $TMP).
common() {
  cat <<CONF
worker_processes 1;
daemon off;
error_log $TMP/$1-error.log warn;
pid $TMP/$1.pid;
events { worker_connections 4096; }
CONF
}

# Builds balancer/examples/balance.rs (release) and prints its path (honours CARGO_TARGET_DIR).
balance_binary() {
  (cd "$ROOT" && cargo build --release -q -p ferrocat-balancer --example balance --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "balance" and m.get("executable"):
        print(m["executable"])')
}
