#!/usr/bin/env bash
# Builds mod_stapling and installs it into the system Apache (Debian/Ubuntu or RHEL layout).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
libexec=$(apxs -q LIBEXECDIR)
install -m 0644 target/release/libmod_stapling.so "$libexec/mod_stapling.so"
if [ -d /etc/apache2/mods-available ]; then
  install -m 0644 apache-conf/stapling.load apache-conf/stapling.conf /etc/apache2/mods-available/
  echo "installed; enable with: a2enmod stapling && systemctl reload apache2"
elif [ -d /etc/httpd/conf.modules.d ]; then
  install -m 0644 apache-conf/10-stapling.conf /etc/httpd/conf.modules.d/
  echo "installed; reload with: systemctl reload httpd"
else
  echo "installed $libexec/mod_stapling.so; add: LoadModule stapling_module $libexec/mod_stapling.so (after mod_ssl)"
fi
