#!/usr/bin/env bash
# The main job: the bank example with its load run, on an embedded RocksDB in
# a temporary directory. Extra arguments go to the example (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo run --release --locked -p eventfold-examples --bin store-tour
cargo run --release --locked -p eventfold-benches --bin append-load -- "$@"
