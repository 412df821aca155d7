#!/usr/bin/env bash
# Comparison benchmark: the same Apache on loopback with no stapling, mod_ssl stapling,
# mod_md stapling and mod_stapling, against one local OCSP responder. Takes about 4 minutes.
# Prints a markdown table and writes it to target/bench-compare.md.
#
# Knobs (environment): BENCH_SECONDS (5, per cell), BENCH_ROUNDS (3), BENCH_CHILDREN (4),
# BENCH_CLIENTS (2 x nproc), BENCH_COLD_SECONDS (5), BENCH_RESPONDER_DELAY (1),
# BENCH_SERVERS (none,mod_ssl,mod_md,mod_stapling). See tools/bench/src/bin/compare.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
# The tool is a separate package (tools/bench); it builds into the same target directory.
cargo run --release --manifest-path tools/bench/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}" --bin compare
