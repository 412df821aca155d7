#!/usr/bin/env bash
# fuzz-seeds.sh: makes what the fuzz targets need, at run time.
#
#   fuzz/pki/                  the test PKI (scripts/mkpki.sh), kept while younger than
#                              5 days (its certificates last 10); the targets read
#                              leaf.crt and issuer.crt from it
#   fuzz/corpus/validate/      OCSP responses for the leaf made by `openssl ocsp`: good,
#   fuzz/corpus/store_file/    revoked, unknown, by the issuer, a delegated responder, one
#                              without the OCSPSigning EKU and an unrelated CA, with and
#                              without nextUpdate, certificates and a nonce, by name and by
#                              key; error statuses; a truncated and an appended copy
#   fuzz/corpus/directives/    fuzz/seeds/directives/* (committed; text, one directive a line)
#
# Seeds are named after their content, so re-running adds the new day's responses beside
# whatever the fuzzer has already found. Quiet on success.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ=$PWD/fuzz
PKI=$FUZZ/pki

if [ -z "$(find "$PKI/leaf.crt" -mtime -5 2>/dev/null)" ]; then
    rm -rf "$PKI"
    scripts/mkpki.sh "$PKI" http://127.0.0.1:9/
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$FUZZ/corpus/validate" "$FUZZ/corpus/store_file" "$FUZZ/corpus/directives"

# seed NAME FILE: files the DER under its SHA-1 in both response corpora.
seed() {
    local sum
    sum=$(sha1sum "$2" | cut -d' ' -f1)
    cp "$2" "$FUZZ/corpus/validate/$1-$sum"
    cp "$2" "$FUZZ/corpus/store_file/$1-$sum"
}

openssl ocsp -issuer "$PKI/issuer.crt" -cert "$PKI/leaf.crt" -no_nonce -reqout "$WORK/req.der" >/dev/null 2>&1
openssl ocsp -issuer "$PKI/issuer.crt" -cert "$PKI/leaf.crt" -nonce -reqout "$WORK/req-nonce.der" >/dev/null 2>&1

# The index with the leaf revoked (keyCompromise), and an empty one (everything unknown).
serial=$(openssl x509 -in "$PKI/leaf.crt" -noout -serial | cut -d= -f2)
awk -v s="$serial" 'BEGIN { FS = OFS = "\t" } toupper($4) == toupper(s) { $1 = "R"; $3 = "240101000000Z,keyCompromise" } 1' \
    "$PKI/index.txt" >"$WORK/revoked.txt"
grep -q '^R' "$WORK/revoked.txt" || { echo "fuzz-seeds.sh: the leaf is not in index.txt" >&2; exit 1; }
: >"$WORK/empty.txt"
for index in revoked empty; do printf 'unique_subject = no\n' >"$WORK/$index.txt.attr"; done

# respond NAME INDEX SIGNER REQUEST [openssl ocsp options...]
respond() {
    local name=$1 index=$2 signer=$3 req=$4
    shift 4
    openssl ocsp -index "$index" -rsigner "$PKI/$signer.crt" -rkey "$PKI/$signer.key" -CA "$PKI/issuer.crt" \
        -reqin "$WORK/$req.der" -respout "$WORK/$name.der" "$@" >"$WORK/$name.log" 2>&1 \
        || { cat "$WORK/$name.log" >&2; exit 1; }
    seed "$name" "$WORK/$name.der"
}

respond good "$PKI/index.txt" issuer req -ndays 1
respond good-no-next-update "$PKI/index.txt" issuer req
respond good-no-certs "$PKI/index.txt" issuer req -ndays 1 -resp_no_certs
respond good-key-id "$PKI/index.txt" issuer req -ndays 7 -resp_key_id
respond good-nonce "$PKI/index.txt" issuer req-nonce -ndays 1
respond delegated "$PKI/index.txt" responder req -ndays 1
respond delegated-no-eku "$PKI/index.txt" responder-noeku req -ndays 1
respond other-ca "$PKI/index.txt" other-ca req -ndays 1
respond revoked "$WORK/revoked.txt" issuer req -ndays 1
respond unknown "$WORK/empty.txt" issuer req -ndays 1

# Unsuccessful responses: OCSPResponse { responseStatus } only.
for status in 1:malformed 2:internal-error 3:try-later 5:sig-required 6:unauthorized; do
    printf "\\x30\\x03\\x0a\\x01\\x0${status%%:*}" >"$WORK/${status#*:}.der"
    seed "${status#*:}" "$WORK/${status#*:}.der"
done

# Torn and padded copies of a good response.
head -c 700 "$WORK/good.der" >"$WORK/truncated.der"
seed truncated "$WORK/truncated.der"
cat "$WORK/good.der" "$WORK/good.der" >"$WORK/appended.der"
seed appended "$WORK/appended.der"

cp "$FUZZ"/seeds/directives/* "$FUZZ/corpus/directives/"
