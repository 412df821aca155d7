#!/usr/bin/env bash
# The demo: builds mod_stapling, creates a throwaway CA, starts a real OCSP responder
# (openssl ocsp) and Apache with the module on loopback, then shows the stapled,
# verified response with `openssl s_client -status` and `curl --cert-status`.
# Everything lives in a temp dir and is stopped on exit. KEEP=1 leaves it running
# until you press Enter.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
scripts/deps.sh
cargo build --release --quiet

work=$(mktemp -d /tmp/mod_stapling-demo.XXXXXX)
chmod 0755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ocsp_port=$(free_port)
https_port=$(free_port)
responder_pid=""
cleanup() {
  # Every process this demo started: Apache (by PID file, and any left by an interrupted
  # start, found by its private config path) and the responder.
  [ -f "$work/run/httpd.pid" ] && kill "$(cat "$work/run/httpd.pid")" 2>/dev/null || true
  pkill -TERM -f "$work/conf/httpd.conf" 2>/dev/null || true
  [ -n "$responder_pid" ] && kill "$responder_pid" 2>/dev/null || true
  for _ in $(seq 50); do pgrep -f "$work/conf/httpd.conf" >/dev/null || break; sleep 0.1; done
  pkill -KILL -f "$work/conf/httpd.conf" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== throwaway CA, server certificate with OCSP URL http://127.0.0.1:$ocsp_port/"
scripts/mkpki.sh "$work/pki" "http://127.0.0.1:$ocsp_port/"

echo "== OCSP responder (openssl ocsp) on 127.0.0.1:$ocsp_port"
openssl ocsp -index "$work/pki/index.txt" -port "$ocsp_port" -rsigner "$work/pki/issuer.crt" \
  -rkey "$work/pki/issuer.key" -CA "$work/pki/issuer.crt" -ndays 1 >"$work/responder.log" 2>&1 &
responder_pid=$!
# Poll the listen table: openssl ocsp exits on a connection that sends no request.
for _ in $(seq 50); do ss -ltn | grep -q ":$ocsp_port " && break; sleep 0.1; done

echo "== Apache $(apache2 -v | sed -n 's/Server version: //p') with mod_stapling on 127.0.0.1:$https_port"
mkdir -p "$work/conf" "$work/logs" "$work/run" "$work/htdocs"
echo "hello from mod_stapling" >"$work/htdocs/index.html"
chmod -R a+rX "$work/htdocs" "$work/pki"
user=www-data; id -u "$user" >/dev/null 2>&1 || user=nobody
cat >"$work/conf/httpd.conf" <<CONF
ServerRoot $work
ServerName localhost
PidFile $work/run/httpd.pid
DefaultRuntimeDir $work/run
Mutex file:$work/run default
ErrorLog $work/logs/error_log
LogLevel warn stapling:info
User $user
Group $(id -gn "$user")
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
LoadModule stapling_module $repo/target/release/libmod_stapling.so
Listen 127.0.0.1:$https_port https
DocumentRoot $work/htdocs
StaplingStore $work/store
<VirtualHost 127.0.0.1:$https_port>
    ServerName localhost
    SSLEngine on
    SSLCertificateFile $work/pki/leaf-chain.crt
    SSLCertificateKeyFile $work/pki/leaf.key
    Stapling on
</VirtualHost>
CONF
apache2 -d "$work" -f "$work/conf/httpd.conf" -k start
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$https_port") 2>/dev/null && break; sleep 0.1; done

echo "== mod_stapling's log"
grep "stapling" "$work/logs/error_log" | sed "s/^\[[^]]*\] //" || cat "$work/logs/error_log"

echo "== openssl s_client -status (first handshake after start)"
out=$(echo | openssl s_client -connect "127.0.0.1:$https_port" -servername localhost -status \
  -CAfile "$work/pki/root.crt" 2>&1)
echo "$out" | sed -n '/^OCSP response:/,/Next Update:/p'
echo "$out" | grep -m1 "Verify return code" | sed "s/^ */  TLS chain: /"

echo "== curl --cert-status (fails unless a valid staple is present)"
curl --cert-status --cacert "$work/pki/root.crt" --resolve "localhost:$https_port:127.0.0.1" \
  -sS "https://localhost:$https_port/index.html"

if echo "$out" | grep -q "Cert Status: good"; then
  echo "== OK: Apache stapled a verified, good OCSP response"
else
  echo "== FAILED: no good staple; error_log follows" >&2
  cat "$work/logs/error_log" >&2
  exit 1
fi
if [ "${KEEP:-0}" = 1 ]; then
  echo "running on https://localhost:$https_port/ (CA: $work/pki/root.crt); press Enter to stop"
  read -r _
fi
