#!/usr/bin/env bash
# Installs the system packages that building, the demo, the tests and the benches need (Debian/Ubuntu).
# Safe to run again: it only calls apt-get when something is missing.
set -euo pipefail

# firefox-esr, python3-websockets: tests/status.rs renders the status page in headless Firefox
# (WebDriver BiDi); python3-prometheus-client: it parses ?metrics with Prometheus' own parser.
# squid, apache2-utils (htpasswd): tests/reach.rs staples through a real proxy; memcached,
# redis-server: tests/fleet.rs shares responses through them.
# dpkg-dev, debhelper, lintian, debootstrap, rpm: scripts/package-deb.sh and package-rpm.sh,
# and tests/deb_package.rs, which installs the .deb into a debootstrap'd Debian 12 root.
packages=(apache2 apache2-dev libclang-dev clang pkg-config libssl-dev openssl curl iproute2
          python3 python3-cryptography build-essential ca-certificates valgrind
          firefox-esr python3-websockets python3-prometheus-client squid apache2-utils memcached redis-server
          dpkg-dev debhelper lintian debootstrap rpm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts the packaged apache2 on install; our tests and demo use their own
# ports, so it may keep running, but it is not needed.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust 1.82 or later (https://rustup.rs), then rerun" >&2
  exit 1
fi
