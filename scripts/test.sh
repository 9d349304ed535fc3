#!/usr/bin/env bash
# Runs the whole ferrocat test suite on a fresh machine that has only the Rust
# toolchain: installs memcached (Debian package) when it is missing, then runs
# every test of the workspace. Tests start their own memcached processes on
# free loopback ports; nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || need_pkgs+=(memcached)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]} (apt-get)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  # The package's own daemon is not needed (tests start their own).
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop memcached >/dev/null 2>&1 || true; fi
fi

exec cargo test --workspace "$@"
