#!/usr/bin/env bash
# ferrocat balancer vs nginx as a reverse proxy, same upstream, same wrk load, alternated.
#
#   benches/balancer-vs-nginx.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Upstream: nginx (1 worker) answering `return 200` on a loopback port. Proxies, each 1 worker:
# nginx (Debian package, upstream keepalive) and ferrocat (release build of
# `balancer/examples/balance.rs`). wrk (1 thread) runs against each in turn, ROUNDS times.
# Prints requests/s and p99 per run, then the medians and the ratio ferrocat/nginx.
# Everything listens on free loopback ports and is stopped at exit.
#
# PIN=1 (the default on a machine with 2 or more CPUs): the proxy under test runs on CPU 0, wrk
# and the upstream on CPU 1, for both proxies alike. Unpinned (PIN=0), three busy processes share
# the cores as the kernel places them, and that placement, not the proxy, decides much of p99.
# KEEPALIVE (default 64): idle upstream connections kept per worker, the same for both proxies
# (nginx `keepalive N`, ferrocat `keepalive`). With more client connections than KEEPALIVE both
# proxies open and close upstream connections under load.
# PROXY_CPU=N (percent of one CPU, e.g. 50): both proxies run under the same CPU quota (a cgroup,
# v1 or v2; needs root). Pinned without a quota, wrk and the upstream on CPU 1 are the bottleneck
# and both proxies wait on them; under a quota the proxy is, so req/s measures the proxy's own
# cost. p99 then includes the quota's throttling (10 ms periods) for both alike.
# ACCESS_LOG=1: both proxies write an access log (to files in the run's temporary directory):
# nginx `access_log ... combined buffer=32k flush=1s`, ferrocat `access_log` (buffered the same
# way, 32 KiB or 1 s). The upstream never logs.
# TLS=1: wrk talks HTTPS to both proxies (a self-signed P-256 certificate made with openssl for the
# run; nginx `listen ... ssl`, ferrocat `ssl_listen`); proxy to upstream stays plain HTTP. wrk's
# connections are kept alive, so this measures the record layer, not handshakes.
# GZIP=1: the upstream answers a 10 KB text/html page, wrk sends `Accept-Encoding: gzip`, and both
# proxies compress at level 1 (nginx `gzip on; gzip_comp_level 1`, ferrocat `gzip = true`).
# H2=1 (implies TLS=1): clients speak HTTP/2 over TLS (nginx `listen ... ssl http2`, ferrocat
# `http2 = true`); the load is h2load (Debian package nghttp2-client) with CONNECTIONS
# connections of STREAMS (default 10) concurrent streams each. h2load reports no percentiles,
# so the latency column is h2load's mean time per request.
# STATIC=1: wrk asks both for a 4 KB stylesheet that they answer from disk themselves, no upstream
# involved (nginx `location /static/ { alias DIR/; }`, ferrocat `[[balancer.static]]` with
# `alias`); nginx keeps its defaults (`sendfile off`, no `open_file_cache`) unless
# NGINX_FILE_CACHE=1 gives it `open_file_cache max=1000; open_file_cache_valid 1s` (as ferrocat's
# default `cache_valid = "1s"`; nginx caches the open descriptor and still reads per request).
# UPSTREAM_TLS=1: the upstream listens on TLS (a self-signed P-256 certificate for 127.0.0.1) and
# both proxies speak TLS to it, verifying it and keeping the connections alive (nginx `proxy_pass
# https://app` with `proxy_ssl_verify on`, `proxy_ssl_trusted_certificate`, session reuse on;
# ferrocat `tls = true` with `proxy_ssl_trusted_certificate`).
# CACHE=1: the upstream's answer says `Cache-Control: max-age=3600` and both proxies cache it, so
# nearly every request is a hit (nginx `proxy_cache_path ... keys_zone=c:10m` with `proxy_cache c`,
# its files in the run's temporary directory, so in the page cache; ferrocat `proxy_cache = true`,
# in memory).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-50}
KEEPALIVE=${KEEPALIVE:-64}
PIN=${PIN:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}
PROXY_CPU=${PROXY_CPU:-}
ACCESS_LOG=${ACCESS_LOG:-0}
TLS=${TLS:-0}
GZIP=${GZIP:-0}
H2=${H2:-0}
STATIC=${STATIC:-0}
CACHE=${CACHE:-0}
UPSTREAM_TLS=${UPSTREAM_TLS:-0}
STREAMS=${STREAMS:-10}
[ "$H2" = 1 ] && TLS=1
if [ -n "$PROXY_CPU" ] && ! [[ "$PROXY_CPU" =~ ^[0-9]+$ && "$PROXY_CPU" -ge 1 ]]; then
  echo "PROXY_CPU must be a percentage of one CPU (1..), got '$PROXY_CPU'" >&2; exit 1
fi
if [ "$PIN" = 1 ]; then ON_PROXY="taskset -c 0"; ON_LOAD="taskset -c 1"; else ON_PROXY=""; ON_LOAD=""; fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-wrk}
command -v "$WRK" >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
if [ "$H2" = 1 ]; then command -v h2load >/dev/null || { echo "h2load is missing: apt-get install -y nghttp2-client" >&2; exit 1; }; fi
[ -x "$NGINX" ] || { echo "nginx is missing: apt-get install -y nginx-light (or nginx)" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
CGROUP=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$TMP/up.pid" ] && kill "$(cat "$TMP/up.pid" 2>/dev/null)" 2>/dev/null || true
  [ -f "$TMP/px.pid" ] && kill "$(cat "$TMP/px.pid" 2>/dev/null)" 2>/dev/null || true
  sleep 0.2
  [ -n "$CGROUP" ] && rmdir "$CGROUP" 2>/dev/null || true
  [ "${KEEP_TMP:-0}" = 1 ] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

. "$ROOT/benches/common.sh"
UP_PORT=$(free_port); NG_PORT=$(free_port)

if [ "$GZIP" = 1 ]; then
  # A page like an app's: 10 KB of list rows, served by the upstream from a file.
  mkdir -p "$TMP/www"
  python3 -c 'print("".join("<li class=row>item %d of the catalogue</li>" % i for i in range(300))[:10000], end="")' > "$TMP/www/index.html"
  UP_ANSWER="root $TMP/www; index index.html; types { text/html html; }"
  PX_GZIP="gzip on; gzip_comp_level 1; gzip_min_length 20; gzip_types text/html text/css;"
  WRK_HDR=(-H "Accept-Encoding: gzip")
else
  UP_ANSWER='return 200 "hello from upstream\n";'
  [ "$CACHE" = 1 ] && UP_ANSWER="add_header Cache-Control max-age=3600; $UP_ANSWER"
  PX_GZIP=""
  WRK_HDR=()
fi
URL_PATH=/
NG_STATIC=""
NG_CACHE=""
NG_CACHE_PATH=""
if [ "$CACHE" = 1 ]; then
  NG_CACHE_PATH="proxy_cache_path $TMP/cache keys_zone=c:10m;"
  NG_CACHE="proxy_cache c; add_header X-Cache-Status \$upstream_cache_status;"
fi
if [ "$STATIC" = 1 ]; then
  mkdir -p "$TMP/files"
  python3 -c 'print("".join(".rule-%d { color: #%06x; margin: %dpx }\n" % (i, i * 2654435 % 16777215, i % 40) for i in range(200))[:4096], end="")' > "$TMP/files/style.css"
  NG_STATIC="location /static/ { alias $TMP/files/; types { text/css css; } }"
  [ "${NGINX_FILE_CACHE:-0}" = 1 ] && NG_STATIC="$NG_STATIC open_file_cache max=1000 inactive=20s; open_file_cache_valid 1s;"
  URL_PATH=/static/style.css
fi
UP_LISTEN="127.0.0.1:$UP_PORT"; UP_SCHEME=http; NG_UP_TLS=""
if [ "$UPSTREAM_TLS" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$TMP/up.key" -out "$TMP/up.crt" 2>/dev/null
  UP_LISTEN="127.0.0.1:$UP_PORT ssl; ssl_certificate $TMP/up.crt; ssl_certificate_key $TMP/up.key"
  UP_SCHEME=https
  NG_UP_TLS="proxy_ssl_verify on; proxy_ssl_trusted_certificate $TMP/up.crt; proxy_ssl_name 127.0.0.1; proxy_ssl_session_reuse on;"
fi
{ common up; cat <<CONF
http {
  access_log off;
  client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  keepalive_requests 1000000;
  server { listen $UP_LISTEN; location / { $UP_ANSWER } }
}
CONF
} > "$TMP/up.conf"
if [ "$ACCESS_LOG" = 1 ]; then
  PX_LOG="access_log $TMP/nginx-access.log combined buffer=32k flush=1s;"
  FC_LOG="$TMP/ferrocat-access.log"
else
  PX_LOG="access_log off;"; FC_LOG=""
fi
if [ "$TLS" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null
  NG_LISTEN="127.0.0.1:$NG_PORT ssl$([ "$H2" = 1 ] && echo " http2"); ssl_certificate $TMP/tls.crt; ssl_certificate_key $TMP/tls.key"
  SCHEME=https
else
  NG_LISTEN="127.0.0.1:$NG_PORT"; SCHEME=http
fi
{ common px; cat <<CONF
http {
  $PX_LOG
  $PX_GZIP
  $NG_CACHE_PATH
  client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP; uwsgi_temp_path $TMP; scgi_temp_path $TMP;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive $KEEPALIVE; keepalive_requests 1000000; }
  server {
    listen $NG_LISTEN;
    $NG_STATIC
    location / {
      $NG_CACHE
      $NG_UP_TLS
      proxy_pass $UP_SCHEME://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
CONF
} > "$TMP/px.conf"

$ON_LOAD "$NGINX" -c "$TMP/up.conf" -p "$TMP" 2>"$TMP/up.err" & PIDS+=($!)
$ON_PROXY "$NGINX" -c "$TMP/px.conf" -p "$TMP" 2>"$TMP/px.err" & PIDS+=($!); NG_MASTER=$!

# Build, and ask cargo where the binary is (honours CARGO_TARGET_DIR and the default target/).
FC_BIN=$(balance_binary)
[ -x "$FC_BIN" ] || { echo "could not find the balance example binary" >&2; exit 1; }
FC_TLS=()
[ "$TLS" = 1 ] && FC_TLS=(TLS_CERT="$TMP/tls.crt" TLS_KEY="$TMP/tls.key")
[ "$GZIP" = 1 ] && FC_TLS+=(GZIP=1)
[ "$H2" = 1 ] && FC_TLS+=(H2=1)
[ "$STATIC" = 1 ] && FC_TLS+=(STATIC_DIR="$TMP/files")
[ "$CACHE" = 1 ] && FC_TLS+=(PROXY_CACHE=1)
[ "$UPSTREAM_TLS" = 1 ] && FC_TLS+=(UPSTREAM_CA="$TMP/up.crt")
env KEEPALIVE=$KEEPALIVE ${FC_LOG:+ACCESS_LOG=$FC_LOG} "${FC_TLS[@]}" $ON_PROXY "$FC_BIN" 127.0.0.1:0 1 "127.0.0.1:$UP_PORT" > "$TMP/fc.out" & PIDS+=($!); FC_PID=$!
for _ in $(seq 50); do grep -q listening "$TMP/fc.out" 2>/dev/null && break; sleep 0.1; done
if [ "$TLS" = 1 ]; then
  FC_ADDR=$(awk '/tls on/ {print $3}' "$TMP/fc.out")
else
  FC_ADDR=$(awk '/listening on/ {print $3}' "$TMP/fc.out")
fi
sleep 0.5
NG_WORKER=$(pgrep -P "$NG_MASTER" | head -1)
if [ -n "$PROXY_CPU" ]; then
  # The same quota for both proxies: one cgroup holds nginx's worker and ferrocat; they are
  # loaded in turn, so each gets the whole quota while it is measured.
  QUOTA=$((PROXY_CPU * 100)) # microseconds per 10 ms period
  if [ -f /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
    CGROUP=/sys/fs/cgroup/cpu/ferrocat-bench-$$
    mkdir "$CGROUP"
    echo 10000 > "$CGROUP/cpu.cfs_period_us"; echo "$QUOTA" > "$CGROUP/cpu.cfs_quota_us"
  elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    CGROUP=/sys/fs/cgroup/ferrocat-bench-$$
    mkdir "$CGROUP"
    echo "$QUOTA 10000" > "$CGROUP/cpu.max"
  else
    echo "PROXY_CPU needs a cgroup cpu controller (cgroup v1 /sys/fs/cgroup/cpu or v2 with +cpu) and root" >&2; exit 1
  fi
  echo "$NG_WORKER" > "$CGROUP/cgroup.procs"; echo "$FC_PID" > "$CGROUP/cgroup.procs"
fi
for url in "$SCHEME://127.0.0.1:$NG_PORT$URL_PATH" "$SCHEME://$FC_ADDR$URL_PATH"; do
  curl -sfk "$url" >/dev/null || { echo "proxy at $url does not answer" >&2; exit 1; }
done

# Convert wrk's latency ("1.23ms", "850.00us", "1.02s") to microseconds.
to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }
# CPU ticks a process has used, all threads: user+system, then user alone.
ticks() { awk '{print $14+$15, $14}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
run() { # name url pid
  local out rps p50 p90 p99 t0 t1 u0 u1 reqs cpu ucpu
  read -r t0 u0 < <(ticks "$3")
  if [ "$H2" = 1 ]; then
    out=$($ON_LOAD h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$SECS" "${WRK_HDR[@]}" "$2")
    read -r t1 u1 < <(ticks "$3")
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
    p99=$(awk '/^time for request:/ {print $6}' <<<"$out") # the mean, in this mode
    p50=-; p90=-
    if ! grep -q " 0 failed, 0 errored, 0 timeout" <<<"$out"; then echo "  ($1 had errors: $(grep '^requests:' <<<"$out"))"; fi
  else
    out=$($ON_LOAD "$WRK" -t1 -c"$CONNS" -d"${SECS}s" --latency "${WRK_HDR[@]}" "$2")
    read -r t1 u1 < <(ticks "$3")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p90=$(awk '$1=="90%" {print $2}' <<<"$out")
  fi
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  ucpu=$(awk -v d=$((u1 - u0)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "  ($1 had errors: $(grep -E 'Non-2xx|Socket errors' <<<"$out"))"; fi
  printf '  %-9s %10.0f req/s   p50 %8s  p90 %8s  p99 %8s   proxy CPU %6s us/req (user %s)\n' "$1" "$rps" "$p50" "$p90" "$p99" "$cpu" "$ucpu"
  echo "$1 $rps $(to_us "$p99") $cpu $ucpu" >> "$TMP/results"
}

echo "pinned: $([ "$PIN" = 1 ] && echo "yes (proxy on CPU 0, wrk and upstream on CPU 1)" || echo no), upstream keepalive $KEEPALIVE$([ -n "$PROXY_CPU" ] && echo ", proxy CPU quota $PROXY_CPU% of one CPU")$([ "$ACCESS_LOG" = 1 ] && echo ", access logs on")$([ "$TLS" = 1 ] && echo ", clients over TLS")$([ "$GZIP" = 1 ] && echo ", 10 KB pages gzipped at level 1")$([ "$CACHE" = 1 ] && echo ", answers cached by both (hits)")$([ "$UPSTREAM_TLS" = 1 ] && echo ", TLS to the upstream")$([ "$STATIC" = 1 ] && echo ", a 4 KB file from disk$([ "${NGINX_FILE_CACHE:-0}" = 1 ] && echo " (nginx with open_file_cache)")")$([ "$H2" = 1 ] && echo ", HTTP/2 (h2load, $STREAMS streams per connection; latency = mean)")"
echo "warm-up"
for url in "$SCHEME://127.0.0.1:$NG_PORT$URL_PATH" "$SCHEME://$FC_ADDR$URL_PATH"; do
  if [ "$H2" = 1 ]; then $ON_LOAD h2load -t1 -c"$CONNS" -m"$STREAMS" -D2 "$url" >/dev/null
  else $ON_LOAD "$WRK" -t1 -c"$CONNS" -d2s "$url" >/dev/null; fi
  if [ "$CACHE" = 1 ] && ! curl -sfk -o /dev/null -D - "$url" | grep -qi '^x-cache-status: HIT'; then
    echo "$url does not answer from its cache" >&2; exit 1
  fi
done
for r in $(seq "$ROUNDS"); do
  echo "round $r ($([ "$H2" = 1 ] && echo "h2load -t1 -c$CONNS -m$STREAMS -D$SECS" || echo "wrk -t1 -c$CONNS -d${SECS}s"))"
  if (( r % 2 )); then run nginx "$SCHEME://127.0.0.1:$NG_PORT$URL_PATH" "$NG_WORKER"; run ferrocat "$SCHEME://$FC_ADDR$URL_PATH" "$FC_PID";
  else run ferrocat "$SCHEME://$FC_ADDR$URL_PATH" "$FC_PID"; run nginx "$SCHEME://127.0.0.1:$NG_PORT$URL_PATH" "$NG_WORKER"; fi
done

median() { sort -n | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
NG_RPS=$(awk '$1=="nginx" {print $2}' "$TMP/results" | median)
FC_RPS=$(awk '$1=="ferrocat" {print $2}' "$TMP/results" | median)
NG_P99=$(awk '$1=="nginx" {print $3}' "$TMP/results" | median)
FC_P99=$(awk '$1=="ferrocat" {print $3}' "$TMP/results" | median)
NG_CPU=$(awk '$1=="nginx" {print $4}' "$TMP/results" | median)
FC_CPU=$(awk '$1=="ferrocat" {print $4}' "$TMP/results" | median)
NG_UCPU=$(awk '$1=="nginx" {print $5}' "$TMP/results" | median)
FC_UCPU=$(awk '$1=="ferrocat" {print $5}' "$TMP/results" | median)
echo
printf 'median   nginx %.0f req/s p99 %.0fus %.2fus CPU/req (user %.2f) | ferrocat %.0f req/s p99 %.0fus %.2fus CPU/req (user %.2f)\n' \
  "$NG_RPS" "$NG_P99" "$NG_CPU" "$NG_UCPU" "$FC_RPS" "$FC_P99" "$FC_CPU" "$FC_UCPU"
awk -v f="$FC_RPS" -v n="$NG_RPS" -v fp="$FC_P99" -v np="$NG_P99" -v fc="$FC_CPU" -v nc="$NG_CPU" -v fu="$FC_UCPU" -v nu="$NG_UCPU" \
  -v lat="$([ "$H2" = 1 ] && echo "mean latency" || echo p99)" \
  'BEGIN { printf "ratio ferrocat/nginx: throughput %.2fx, " lat " %.2fx, CPU per request %.2fx, user CPU per request %.2fx (lower is better for latency and CPU)\n", f/n, fp/np, fc/nc, (nu > 0 ? fu/nu : 0) }'
if [ "$ACCESS_LOG" = 1 ]; then
  sleep 1.5 # both flush within a second
  echo "access log lines: nginx $(wc -l < "$TMP/nginx-access.log"), ferrocat $(wc -l < "$FC_LOG")"
fi
