#!/usr/bin/env bash
# Runs every workload of WORKLOADS.md three times with the load generator
# (the figures of the median run), writing JSON and SVG plots to
# target/benchmarks/. BENCHMARKS.md holds the figures of such a run.
# Extra arguments go to every loadgen call (for example --quiet).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo build --release --locked -p eventfold-benches --bin loadgen
loadgen="${CARGO_TARGET_DIR:-target}/release/loadgen"
out=target/benchmarks
mkdir -p "$out"
for w in w1 w2 w3 w4 w5 w6 w7 w8; do
    echo "== $w"
    "$loadgen" --workload "$w" --runs "${RUNS:-3}" \
        --json "$out/$w.json" --plot "$out/$w.svg" "$@"
done
echo "figures in $out/"
