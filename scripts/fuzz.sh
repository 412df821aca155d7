#!/usr/bin/env bash
# fuzz.sh [SECONDS]: runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default
# 60), one after the other, from seed corpora made fresh by scripts/fuzz-seeds.sh, and
# fails if any target finds a crash (a panic, a failed check, or an AddressSanitizer
# report). What a crash left is in fuzz/artifacts/<target>/; replay one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
#
# Needs cargo-fuzz (installed here if missing) and a nightly toolchain; without one, the
# stable toolchain builds the targets with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
targets=(directives validate store_file)

scripts/deps.sh
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    echo "fuzz.sh: no nightly toolchain; building with the stable one and RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    toolchain=()
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fmt --check --manifest-path fuzz/Cargo.toml
scripts/fuzz-seeds.sh
MOD_STAPLING_FUZZ_TMP=$(mktemp -d)
export MOD_STAPLING_FUZZ_TMP
trap 'rm -rf "$MOD_STAPLING_FUZZ_TMP"' EXIT

cargo "${toolchain[@]}" fuzz build
failed=()
for target in "${targets[@]}"; do
    echo "fuzz.sh: $target for ${seconds}s"
    args=(-max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ "$target" = directives ]; then
        args+=(-dict="$PWD/fuzz/directives.dict")
    fi
    if ! cargo "${toolchain[@]}" fuzz run "$target" -- "${args[@]}" 2>"$MOD_STAPLING_FUZZ_TMP/$target.log"; then
        tail -n 60 "$MOD_STAPLING_FUZZ_TMP/$target.log" >&2
        failed+=("$target")
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+[[:space:]]+DONE)' \
        "$MOD_STAPLING_FUZZ_TMP/$target.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
