#!/usr/bin/env bash
# W2's deposits on eventfold (loadgen, buffered) and on cqrs-es 0.5 with its
# in-memory store, in interleaved rounds in one sitting, each figure printed
# beside the other. The peer is built outside the workspace (its own
# Cargo.toml and target directory), so the test suite does not grow.
#
#   bash benches/peers/run.sh            # 3 rounds
#   ROUNDS=5 bash benches/peers/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ensure-deps.sh
cargo build --release --locked -p eventfold-benches --bin loadgen
peer_target="${PEER_TARGET_DIR:-target/peers}"
CARGO_TARGET_DIR="$peer_target" cargo build --release --locked \
    --manifest-path benches/peers/cqrs-es/Cargo.toml
loadgen="${CARGO_TARGET_DIR:-target}/release/loadgen"
peer="$peer_target/release/peer-cqrs-es"
out=target/peers
mkdir -p "$out"
rounds="${ROUNDS:-3}"
printf '%5s  %22s  %22s  %6s  %s\n' round "eventfold W2 (/s)" "cqrs-es MemStore (/s)" ratio "cqrs-es events lost"
for round in $(seq 1 "$rounds"); do
    "$loadgen" --workload w2 --no-baseline --quiet --json "$out/eventfold-$round.json" >/dev/null
    "$peer" --json "$out/cqrs-es-$round.json" >/dev/null 2>&1
    python3 - "$out/eventfold-$round.json" "$out/cqrs-es-$round.json" "$round" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["commands_per_s"]
peer = json.load(open(sys.argv[2]))
rate = peer["commands_per_s"]
print(f"{sys.argv[3]:>5}  {ours:>22,.0f}  {rate:>22,.0f}  {ours / rate:>6.2f}  {peer['acknowledged_events_lost']}")
PY
done
echo "figures in $out/ (both: 10,000 accounts, 64 clients, 200,000 deposits to uniformly random accounts, seed 42)"
