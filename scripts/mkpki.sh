#!/usr/bin/env bash
# mkpki.sh OUTDIR OCSP_URL
#
# Creates a throwaway test PKI for mod_stapling (RSA 2048, SHA-256,
# certificates valid for 10 days starting 1 day in the past):
#
#   root.{crt,key}              self-signed root CA
#   issuer.{crt,key}            intermediate CA (the OCSP issuer), signed by root
#   leaf.{crt,key}              server cert (CN/SAN localhost, 127.0.0.1), AIA OCSP
#   leaf2.{crt,key}             second server cert, same AIA (rotation tests)
#   leaf-ec.{crt,key}           like leaf, with an ECDSA P-256 key (benchmark)
#   muststaple.{crt,key}        server cert with TLS Feature status_request
#   noaia.{crt,key}             server cert without AIA
#   responder.{crt,key}         delegated OCSP signer (EKU OCSPSigning, noCheck)
#   responder-noeku.{crt,key}   issued by issuer, EKU serverAuth only
#   other-ca.{crt,key}          unrelated self-signed CA
#   <name>-chain.crt            cert + issuer.crt for leaf, leaf2, muststaple, noaia
#   index.txt, index.txt.attr   `openssl ca` database listing leaf, leaf2,
#                               muststaple, noaia as valid (for `openssl ocsp -index`)
#
# Quiet on success; on failure prints the openssl output and exits non-zero.
# Re-running re-creates all of the files above.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 OUTDIR OCSP_URL" >&2
    exit 2
fi

OUTDIR=$1
export MKPKI_OCSP_URL=$2
if [ -z "$MKPKI_OCSP_URL" ]; then
    echo "mkpki.sh: OCSP_URL must not be empty" >&2
    exit 2
fi
OPENSSL=${OPENSSL:-openssl}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

WORK=$(mktemp -d "$OUTDIR/.mkpki.XXXXXX")
LOG="$WORK/log"
: >"$LOG"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

fail() {
    echo "mkpki.sh: $*" >&2
    cat "$LOG" >&2 || true
    exit 1
}

# Run an openssl command with all output captured in $LOG.
ossl() {
    echo "+ openssl $*" >>"$LOG"
    "$OPENSSL" "$@" >>"$LOG" 2>&1 || fail "openssl $1 failed"
}

# Remove everything this script produces, so re-runs start clean.
NAMES="root issuer leaf leaf2 muststaple noaia responder responder-noeku other-ca"
EC_NAMES="leaf-ec"
for n in $NAMES; do
    rm -f "$OUTDIR/$n.crt" "$OUTDIR/$n.key" "$OUTDIR/$n-chain.crt"
done
rm -f "$OUTDIR"/index.txt "$OUTDIR"/index.txt.attr "$OUTDIR"/index.txt.old \
      "$OUTDIR"/index.txt.attr.old

# Validity window: from 1 day in the past, 10 days long.
START=$(date -u -d '1 day ago' +%Y%m%d%H%M%SZ)
END=$(date -u -d '9 days' +%Y%m%d%H%M%SZ)

# One `openssl ca` database per signing CA. The "leaves" database of the
# issuer becomes OUTDIR/index.txt; responder certs go into a separate one so
# the index lists exactly the five server certificates.
for db in root other issuer_leaves issuer_resp; do
    mkdir -p "$WORK/$db/new"
    : >"$WORK/$db/index.txt"
done

CONF="$WORK/openssl.cnf"
cat >"$CONF" <<'EOF'
[ ca ]
default_ca = ca_root

[ ca_root ]
dir              = ${ENV::MKPKI_WORK}/root
database         = $dir/index.txt
new_certs_dir    = $dir/new
certificate      = ${ENV::MKPKI_OUT}/root.crt
private_key      = ${ENV::MKPKI_OUT}/root.key
default_md       = sha256
policy           = pol_any
unique_subject   = no
email_in_dn      = no
rand_serial      = yes
preserve         = yes

[ ca_other ]
dir              = ${ENV::MKPKI_WORK}/other
database         = $dir/index.txt
new_certs_dir    = $dir/new
certificate      = ${ENV::MKPKI_OUT}/other-ca.crt
private_key      = ${ENV::MKPKI_OUT}/other-ca.key
default_md       = sha256
policy           = pol_any
unique_subject   = no
email_in_dn      = no
rand_serial      = yes
preserve         = yes

[ ca_issuer_leaves ]
dir              = ${ENV::MKPKI_WORK}/issuer_leaves
database         = $dir/index.txt
new_certs_dir    = $dir/new
certificate      = ${ENV::MKPKI_OUT}/issuer.crt
private_key      = ${ENV::MKPKI_OUT}/issuer.key
default_md       = sha256
policy           = pol_any
unique_subject   = no
email_in_dn      = no
rand_serial      = yes
preserve         = yes

[ ca_issuer_resp ]
dir              = ${ENV::MKPKI_WORK}/issuer_resp
database         = $dir/index.txt
new_certs_dir    = $dir/new
certificate      = ${ENV::MKPKI_OUT}/issuer.crt
private_key      = ${ENV::MKPKI_OUT}/issuer.key
default_md       = sha256
policy           = pol_any
unique_subject   = no
email_in_dn      = no
rand_serial      = yes
preserve         = yes

[ pol_any ]
organizationName = optional
commonName       = supplied

[ req ]
distinguished_name = req_dn
prompt             = no

[ req_dn ]
CN = unused

[ ext_root ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ ext_issuer ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ ext_leaf ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
authorityInfoAccess    = OCSP;URI:${ENV::MKPKI_OCSP_URL}

[ ext_muststaple ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
authorityInfoAccess    = OCSP;URI:${ENV::MKPKI_OCSP_URL}
tlsfeature             = status_request

[ ext_noaia ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ ext_responder ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = OCSPSigning
noCheck                = ignored
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ ext_responder_noeku ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF
export MKPKI_WORK="$WORK" MKPKI_OUT="$OUTDIR"

# Generate all keys in parallel (the slow part).
pids=()
for n in $NAMES; do
    "$OPENSSL" genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$OUTDIR/$n.key" >"$WORK/genpkey.$n.log" 2>&1 &
    pids+=("$!")
done
for n in $EC_NAMES; do
    "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$OUTDIR/$n.key" >"$WORK/genpkey.$n.log" 2>&1 &
    pids+=("$!")
done
for p in "${pids[@]}"; do
    wait "$p" || { cat "$WORK"/genpkey.*.log >>"$LOG"; fail "key generation failed"; }
done
chmod 600 "$OUTDIR"/*.key

# mkcert NAME CA_SECTION EXT_SECTION SUBJECT [selfsign]
mkcert() {
    local name=$1 ca=$2 ext=$3 subj=$4 self=${5:-}
    ossl req -config "$CONF" -new -key "$OUTDIR/$name.key" -subj "$subj" \
        -out "$WORK/$name.csr"
    local extra=()
    if [ -n "$self" ]; then
        extra=(-selfsign -keyfile "$OUTDIR/$name.key")
    fi
    ossl ca -config "$CONF" -name "$ca" -batch -notext "${extra[@]}" \
        -startdate "$START" -enddate "$END" -extensions "$ext" \
        -in "$WORK/$name.csr" -out "$OUTDIR/$name.crt"
}

mkcert root            ca_root          ext_root            "/O=mod_stapling Test/CN=mod_stapling Test Root" selfsign
mkcert other-ca        ca_other         ext_root            "/O=Unrelated Test/CN=mod_stapling Unrelated CA" selfsign
mkcert issuer          ca_root          ext_issuer          "/O=mod_stapling Test/CN=mod_stapling Test Issuer"
mkcert leaf            ca_issuer_leaves ext_leaf            "/O=mod_stapling Test/CN=localhost"
mkcert leaf2           ca_issuer_leaves ext_leaf            "/O=mod_stapling Test/CN=localhost"
mkcert muststaple      ca_issuer_leaves ext_muststaple      "/O=mod_stapling Test/CN=localhost"
mkcert noaia           ca_issuer_leaves ext_noaia           "/O=mod_stapling Test/CN=localhost"
mkcert leaf-ec         ca_issuer_leaves ext_leaf            "/O=mod_stapling Test/CN=localhost"
mkcert responder       ca_issuer_resp   ext_responder       "/O=mod_stapling Test/CN=mod_stapling Test OCSP Responder"
mkcert responder-noeku ca_issuer_resp   ext_responder_noeku "/O=mod_stapling Test/CN=mod_stapling Test Responder Without EKU"

for n in leaf leaf2 muststaple noaia leaf-ec; do
    cat "$OUTDIR/$n.crt" "$OUTDIR/issuer.crt" >"$OUTDIR/$n-chain.crt"
done

# The issuer's database (leaf, leaf2, muststaple, noaia) is the OCSP index.
cp "$WORK/issuer_leaves/index.txt" "$OUTDIR/index.txt"
printf 'unique_subject = no\n' >"$OUTDIR/index.txt.attr"

# Sanity checks: chains verify and the index has the four entries.
ossl verify -CAfile "$OUTDIR/root.crt" -untrusted "$OUTDIR/issuer.crt" \
    "$OUTDIR/leaf.crt" "$OUTDIR/leaf2.crt" "$OUTDIR/muststaple.crt" \
    "$OUTDIR/noaia.crt" "$OUTDIR/leaf-ec.crt" "$OUTDIR/responder.crt" "$OUTDIR/responder-noeku.crt"
[ "$(grep -c '^V' "$OUTDIR/index.txt")" -eq 5 ] || fail "index.txt does not list 5 certificates"
