#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every unit, integration,
# property and doc test of the workspace. One release build serves all three
# steps (and the main job), so RocksDB's C++ is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
# The admin page's test drives a real browser: Debian's chromium.
if [ -z "${EVENTFOLD_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
  && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "eventfold: installing the browser the admin page's test drives: chromium" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt_install chromium
  else
    echo "error: chromium is missing and there is no apt-get here: install Chromium and put it on the PATH, or set EVENTFOLD_CHROMIUM to its binary" >&2
    exit 1
  fi
fi
# The cluster's tests start JetStream servers and etcd members of their own.
source scripts/cluster-deps.sh
echo "== libclang detection"
bash scripts/tests/libclang-detection.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --release --locked --workspace
# The cluster's harness, short form: a few thousand deposits across 3 nodes,
# one fault of each kind, every check (scripts/cluster.sh for the long form).
echo "== cluster harness"
bash scripts/cluster.sh --commands 600 --accounts 60
# Coverage-guided fuzzing of the record and snapshot decoders (cargo fuzz with
# libFuzzer, stable Rust, no sanitizer): a short run here, a longer one by
# hand with FUZZ_SECONDS=600 (docs/reliability.md). The seeded mutation
# fuzzer of the same decoders already ran above (storage/tests/hostile_bytes.rs).
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
echo "== cargo fuzz (${FUZZ_SECONDS}s per target)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
(
  cd storage/fuzz
  for target in record snapshot; do
    cargo fuzz run -s none "$target" -- -max_total_time="$FUZZ_SECONDS" 2>&1 | tail -n 3
  done
)
