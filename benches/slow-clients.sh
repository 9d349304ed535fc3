#!/usr/bin/env bash
# Slow clients against nginx and the ferrocat balancer: how long does the upstream stay busy?
#
#   benches/slow-clients.sh [CLIENTS=20] [SIZE_MIB=16] [STALL_SECONDS=3]
#
# One upstream (nginx, 1 worker) serves a SIZE_MIB file and logs `$request_time`: the time from
# the request until it has handed the whole answer to the proxy. In front of it, in turn, nginx
# (1 worker, upstream keepalive, its default `proxy_buffering on`, temp files in a temp dir)
# and the ferrocat balancer (1 worker, release build of `balancer/examples/balance.rs`, its
# default buffering; then `PROXY_BUFFERING=0` for comparison). CLIENTS clients each ask for the
# file, read the head, take nothing for STALL_SECONDS (a slow phone network, a stalled tab),
# then read the rest. Printed per proxy: the upstream's busy time per answer (median and
# max), the clients' time, bytes received, and the proxy's peak RSS; then the ratio of the
# upstream busy times, ferrocat / nginx. Needs nginx and python3.
set -euo pipefail

CLIENTS=${1:-20}
SIZE_MIB=${2:-16}
STALL=${3:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
[ -x "$NGINX" ] || { echo "nginx is missing: apt-get install -y nginx-light (or nginx)" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$TMP"
}
trap cleanup EXIT

. "$ROOT/benches/common.sh"
UP_PORT=$(free_port); NG_PORT=$(free_port)
mkdir -p "$TMP/www" "$TMP/ngx-temp" "$TMP/fc-temp"
head -c $((SIZE_MIB << 20)) /dev/zero | tr '\0' 'x' > "$TMP/www/file"

{ common up; cat <<CONF
http {
  log_format busy '\$request_time';
  access_log $TMP/up-access.log busy;
  client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  server { listen 127.0.0.1:$UP_PORT; sendfile off; location / { root $TMP/www; } }
}
CONF
} > "$TMP/up.conf"
{ common px; cat <<CONF
http {
  access_log off;
  client_body_temp_path $TMP; proxy_temp_path $TMP/ngx-temp; fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NG_PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
} > "$TMP/px.conf"

"$NGINX" -c "$TMP/up.conf" -p "$TMP" 2>"$TMP/up.err" & PIDS+=($!)
"$NGINX" -c "$TMP/px.conf" -p "$TMP" 2>"$TMP/px.err" & PIDS+=($!); NG_MASTER=$!

FC_BIN=$(balance_binary)
[ -x "$FC_BIN" ] || { echo "could not find the balance example binary" >&2; exit 1; }

start_ferrocat() { # $1: PROXY_BUFFERING value; sets FC_PID, FC_ADDR
  env PROXY_BUFFERING="$1" PROXY_TEMP_PATH="$TMP/fc-temp" "$FC_BIN" 127.0.0.1:0 1 "127.0.0.1:$UP_PORT" > "$TMP/fc.out" &
  FC_PID=$!; PIDS+=($FC_PID)
  for _ in $(seq 50); do grep -q listening "$TMP/fc.out" 2>/dev/null && break; sleep 0.1; done
  FC_ADDR=$(awk '/listening on/ {print $3}' "$TMP/fc.out")
}

# CLIENTS stalled clients against $1 (host:port); prints "client_s_median bytes_ok".
clients() {
  python3 - "$1" "$CLIENTS" "$STALL" $((SIZE_MIB << 20)) <<'PY'
import asyncio, socket, sys, time, statistics
addr, n, stall, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
async def one():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); s.setblocking(False)
    t0 = time.monotonic()
    await asyncio.get_running_loop().sock_connect(s, (host, int(port)))
    r, w = await asyncio.open_connection(sock=s)
    w.write(b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    await asyncio.sleep(stall)
    got = 0
    while True:
        b = await r.read(1 << 16)
        if not b: break
        got += len(b)
    w.close()
    return time.monotonic() - t0, got == size and b" 200 " in head.split(b"\r\n")[0] + b" "
async def main():
    res = await asyncio.gather(*[one() for _ in range(n)])
    print(f"{statistics.median(t for t, _ in res):.2f} {sum(ok for _, ok in res)}")
asyncio.run(main())
PY
}

peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

measure() { # $1 name, $2 addr, $3 pid whose peak RSS is reported
  : > "$TMP/up-access.log"
  kill -USR1 "$(cat "$TMP/up.pid")"; sleep 0.3
  read -r client_s ok < <(clients "$2")
  sleep 0.5
  read -r median max < <(python3 -c 'import sys,statistics
v=[float(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{statistics.median(v)*1000:.0f} {max(v)*1000:.0f}")' "$TMP/up-access.log")
  printf '  %-22s upstream busy per answer: median %6s ms, max %6s ms | client %5ss | %s/%s whole | proxy peak RSS %s MiB\n' \
    "$1" "$median" "$max" "$client_s" "$ok" "$CLIENTS" $(( $(peak_rss_kib "$3") / 1024 ))
  eval "${4}=$median"
}

sleep 0.5
NG_WORKER=$(pgrep -P "$NG_MASTER" | head -1)
echo "$CLIENTS clients, $SIZE_MIB MiB each, stalled ${STALL}s after the head"
measure nginx "127.0.0.1:$NG_PORT" "$NG_WORKER" NG_MED
start_ferrocat 1
measure ferrocat "$FC_ADDR" "$FC_PID" FC_MED
kill "$FC_PID"; wait "$FC_PID" 2>/dev/null || true
start_ferrocat 0
measure "ferrocat, buffering off" "$FC_ADDR" "$FC_PID" OFF_MED
python3 -c 'import sys; ng, fc, off = map(float, sys.argv[1:]); print(f"ratio upstream busy time ferrocat/nginx: {fc/max(ng,1):.2f}x (buffering off: {off/max(ng,1):.1f}x)")' "$NG_MED" "$FC_MED" "$OFF_MED"
