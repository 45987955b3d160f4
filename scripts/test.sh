#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every unit, integration,
# property and doc test of the workspace. One release build serves all three
# steps (and the main job), so RocksDB's C++ is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --release --locked --workspace
