#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then integration tests against a real Apache,
# a real OCSP responder and real TLS clients on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
# Integration tests each start their own Apache; several at once is fine on 2 cores.
cargo test --release -- --test-threads "${TEST_THREADS:-4}"
