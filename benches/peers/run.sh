#!/usr/bin/env bash
# W2's deposits on eventfold (loadgen, buffered) and on cqrs-es 0.5 with its
# in-memory store, in interleaved rounds in one sitting, each figure printed
# beside the other. The peer is built outside the workspace (its own
# Cargo.toml and target directory), so the test suite does not grow.
#
#   bash benches/peers/run.sh            # 3 rounds
#   ROUNDS=5 bash benches/peers/run.sh
#   LOADGEN_ARGS="--shards 1" bash benches/peers/run.sh   # eventfold with one shard
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
echo "eventfold: loadgen --workload w2 ${LOADGEN_ARGS:-(the runtime's default settings)}"
printf '%5s  %18s  %18s  %6s  %14s  %14s  %9s  %s\n' round "eventfold W2 /s" "cqrs-es MemStore /s" ratio "eventfold CPU" "cqrs-es CPU" "CPU ratio" "cqrs-es events lost"
for round in $(seq 1 "$rounds"); do
    # shellcheck disable=SC2086 # LOADGEN_ARGS is a list of arguments
    "$loadgen" --workload w2 --no-baseline --quiet ${LOADGEN_ARGS:-} --json "$out/eventfold-$round.json" >/dev/null
    "$peer" --json "$out/cqrs-es-$round.json" >/dev/null 2>&1
    python3 - "$out/eventfold-$round.json" "$out/cqrs-es-$round.json" "$round" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
peer = json.load(open(sys.argv[2]))
rate, our_rate = peer["commands_per_s"], ours["commands_per_s"]
our_cpu, peer_cpu = ours.get("cpu_us_per_command"), peer.get("cpu_us_per_command")
cpu = lambda us: "?" if us is None else f"{us:.2f} µs"
# Above 1: eventfold spends less CPU per command than the peer.
cpu_ratio = "?" if not (our_cpu and peer_cpu) else f"{peer_cpu / our_cpu:.2f}"
print(f"{sys.argv[3]:>5}  {our_rate:>18,.0f}  {rate:>18,.0f}  {our_rate / rate:>6.2f}  {cpu(our_cpu):>14}  {cpu(peer_cpu):>14}  {cpu_ratio:>9}  {peer['acknowledged_events_lost']}")
PY
done
echo "CPU: each process's CPU time over its deposits per command; CPU ratio = cqrs-es's over eventfold's (above 1: eventfold spends less)"
echo "figures in $out/ (both: 10,000 accounts, 64 clients, 200,000 deposits to uniformly random accounts, seed 42)"
