#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) one after the other and
# prints how many inputs each executed. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). New inputs go to fuzz/work/<target>
# (not committed); fuzz/corpus/<target> holds the committed seeds.
# Usage: bash fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(smtp_command smtp_session spool_record plugin_abi)
# The host's build script builds the built-in plugins with the same toolchain.
rustup target add --toolchain nightly wasm32-unknown-unknown >/dev/null
cargo +nightly fuzz build -s none -O >/dev/null
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t"
    log="fuzz/work/$t.log"
    cargo +nightly fuzz run -s none -O "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || {
        echo "$t: CRASH (see $log and fuzz/artifacts/$t/)"; tail -30 "$log"; exit 1; }
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "$t: ${runs:-?} executions in ${secs} s, no crash (${cov:-cov ?}, corpus $(ls "fuzz/work/$t" | wc -l) new inputs)"
done
