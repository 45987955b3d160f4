#!/usr/bin/env bash
# Installs what building eventfold needs when it is missing, or says exactly
# what to install. Sourced by scripts/run.sh and scripts/test.sh.
#
# Needs: cargo (Rust 1.88 or newer), a C++ compiler, and libclang (the
# rocksdb crate builds RocksDB from source and generates bindings with it).
set -euo pipefail

have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null && return 0
  compgen -G '/usr/lib/*/libclang-*.so*' >/dev/null && return 0
  return 1
}

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "error: cargo is not installed. Install Rust 1.88 or newer with rustup: https://rustup.rs" >&2
    exit 1
  fi
fi

missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
have_libclang || missing+=(libclang-dev)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "eventfold: installing build dependencies: ${missing[*]}" >&2
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "error: not root and no sudo. Run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
        exit 1
      fi
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: missing ${missing[*]} and no apt-get here. Install a C++ compiler and libclang" >&2
    echo "       (LLVM's clang library; Fedora: clang-devel, macOS: xcode-select --install)," >&2
    echo "       or point LIBCLANG_PATH at the directory holding libclang.so." >&2
    exit 1
  fi
  have_libclang || { echo "error: libclang is still missing after installing ${missing[*]}" >&2; exit 1; }
fi

# Disk: the release build of the whole workspace with its tests takes about
# 2.5 GB under target/ (RocksDB's C++ is built without debug info for that
# reason, see Cargo.toml), plus the crates cargo downloads. Say so up front
# rather than fail in the linker twenty minutes in.
EVENTFOLD_DISK_NEEDED_MIB="${EVENTFOLD_DISK_NEEDED_MIB:-4096}"
free_mib=$(df -Pm . 2>/dev/null | awk 'NR == 2 { print $4 }')
# A warm target/ (RocksDB already built) needs far less: no check then.
if ! compgen -G 'target/release/deps/liblibrocksdb_sys-*.rlib' >/dev/null \
  && [ -n "${free_mib:-}" ] && [ "$free_mib" -lt "$EVENTFOLD_DISK_NEEDED_MIB" ]; then
  echo "error: only ${free_mib} MiB free on the disk holding $(pwd); building eventfold" >&2
  echo "       needs about ${EVENTFOLD_DISK_NEEDED_MIB} MiB. Free some space (cargo clean in old" >&2
  echo "       checkouts), or set EVENTFOLD_DISK_NEEDED_MIB to override this check." >&2
  exit 1
fi
