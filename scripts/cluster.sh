#!/usr/bin/env bash
# The cluster's harness on this machine: 3 etcd members, 3 JetStream servers
# and 3 eventfold nodes (the bank) on loopback, each with its own directory;
# deposits, then transfers, then a mix in phases, one fault per phase (kill -9 of
# the owner running the transfers process manager, of the
# JetStream leader, of the etcd leader; SIGSTOP of an owner past its lease),
# the checks after each, the figures. Installs what it needs when missing.
#
#   bash scripts/cluster.sh                          # the short form (CI runs it)
#   bash scripts/cluster.sh --rounds 10 --commands 5000 --json cluster.json   # the long form
#
# Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
source scripts/cluster-deps.sh
cargo build --release --locked -p eventfold-examples --bin cluster-node
cargo build --release --locked -p eventfold-benches --bin cluster-harness
exec "${CARGO_TARGET_DIR:-target}/release/cluster-harness" "$@"
