#!/usr/bin/env bash
# The main job: the bank example with its load run (WORKLOADS.md W1: 10,000
# accounts, 200,000 deposits from 64 clients, Sync durability) on an embedded
# RocksDB in a temporary directory, then the raw-RocksDB baseline.
# Extra arguments go to the example: scripts/run.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo run --release --locked -p eventfold-benches --bin bank -- "$@"
