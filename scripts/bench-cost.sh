#!/usr/bin/env bash
# What OCSP stapling costs per TLS handshake, in CPU instructions counted by valgrind's
# callgrind: no stapling, mod_ssl, mod_md and mod_stapling, each as `apache2 -X` under
# callgrind, 100 and 3000 full handshakes. Takes about 2 minutes on 2 CPUs (4 on one).
# Prints a markdown table and writes it to target/bench-handshake-cost.md.
#
# Knobs (environment): COST_N1 (100), COST_N2 (3000), COST_TLS (1.3 or 1.2),
# COST_CERT (rsa or ec), COST_SERVERS (none,mod_ssl,mod_md,mod_stapling), COST_JOBS.
# See tools/bench/src/bin/handshake_cost.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release
# The tool is a separate package (tools/bench); it builds into the same target directory.
cargo run --release --manifest-path tools/bench/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}" --bin handshake_cost
