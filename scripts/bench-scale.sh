#!/usr/bin/env bash
# Scale benchmark: N certificates with one SNI vhost each, on the same Apache with no
# stapling, mod_ssl stapling, mod_md stapling and mod_stapling, against one local OCSP
# responder, for N = 1, 100, 1,000 and 3,000. Takes about 30 minutes (much of it waiting
# for the next refresh round; SCALE_NEXT_ROUND=0 skips that). Needs root, as the other
# benchmarks: Apache starts as root and runs its children as www-data, and the tool reads
# the Apache parent's /proc/PID/mem to find mod_stapling's shared region.
# Prints markdown tables and writes them to target/bench-scale.md.
#
# Knobs (environment): SCALE_NS (1,100,1000,3000), BENCH_SERVERS
# (none,mod_ssl,mod_md,mod_stapling), BENCH_CHILDREN (4), SCALE_RESPONDER_DELAY (0.05),
# SCALE_VALIDITY (240), SCALE_TIMEOUT (300), SCALE_SAMPLE (100), SCALE_CLIENTS (4),
# SCALE_NEXT_ROUND (1), SCALE_NEXT_ROUND_MIN_N (1000). See tools/bench/src/bin/scale.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
# The tool is a separate package (tools/bench); it builds into the same target directory.
cargo run --release --manifest-path tools/bench/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}" --bin scale
