#!/usr/bin/env bash
# Installs what building eventfold needs when it is missing, or says exactly
# what to install. Sourced by scripts/run.sh and scripts/test.sh.
#
# Needs: cargo (Rust 1.88 or newer), a C++ compiler, and libclang (the
# rocksdb crate builds RocksDB from source and generates bindings with it).
set -euo pipefail

# libclang, found the way clang-sys (bindgen's loader) finds it: the file
# names libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*, never
# libclang-cpp (the C++ interface library, which other packages pull in and
# which bindgen cannot load), a shared object of this machine's word size, in
# LIBCLANG_PATH alone when it is set (a directory, or the file itself),
# otherwise in `llvm-config --prefix`'s bin/lib/lib64, LD_LIBRARY_PATH and
# the system directories clang-sys globs. EVENTFOLD_LIBCLANG_SEARCH (a
# space-separated list of directory globs) replaces those directories; the
# detection's own test (scripts/tests/libclang-detection.sh) uses it.
libclang_candidate() {
  local file="$1" name
  name=$(basename "$file")
  case "$name" in
    *-cpp.*) return 1 ;;
    libclang.so | libclang-*.so | libclang.so.* | libclang-*.so.*) ;;
    *) return 1 ;;
  esac
  [ -f "$file" ] || return 1 # a dangling symlink is no library
  # ELF magic and class: 1 for 32-bit, 2 for 64-bit, as clang-sys checks.
  local header want
  header=$(head -c 5 "$file" 2>/dev/null | od -An -tx1 | tr -d ' \n')
  want=02
  [ "$(getconf LONG_BIT 2>/dev/null || echo 64)" = 32 ] && want=01
  [ "$header" = "7f454c46$want" ]
}

libclang_in_dir() {
  local dir="$1" file
  [ -d "$dir" ] || return 1
  for file in "$dir"/libclang.so "$dir"/libclang-*.so "$dir"/libclang.so.* "$dir"/libclang-*.so.*; do
    libclang_candidate "$file" && return 0
  done
  return 1
}

have_libclang() {
  local pattern dir prefix
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    [ -f "$LIBCLANG_PATH" ] && libclang_candidate "$LIBCLANG_PATH" && return 0
    libclang_in_dir "$LIBCLANG_PATH"
    return
  fi
  local patterns="${EVENTFOLD_LIBCLANG_SEARCH:-}"
  if [ -z "$patterns" ]; then
    if prefix=$(llvm-config --prefix 2>/dev/null); then
      patterns="$prefix/bin $prefix/lib $prefix/lib64"
    fi
    local IFS_SAVED="$IFS"
    IFS=:
    for dir in ${LD_LIBRARY_PATH:-}; do patterns="$patterns $dir"; done
    IFS="$IFS_SAVED"
    patterns="$patterns /usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* /usr/lib*/*/* /usr/lib*/* /usr/lib*"
  fi
  for pattern in $patterns; do
    # Unquoted on purpose: each pattern is a glob of directories.
    for dir in $pattern; do
      libclang_in_dir "$dir" && return 0
    done
  done
  return 1
}

# Installs Debian packages, through sudo when not root; says what to run
# when it cannot.
apt_install() {
  local SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "error: not root and no sudo. Run as root: apt-get update && apt-get install -y $*" >&2
      exit 1
    fi
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# Sourced by the detection's test only to define the functions above.
[ -n "${EVENTFOLD_DEPS_FUNCTIONS_ONLY:-}" ] && return 0

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
# The cluster crate's etcd client compiles etcd's protocol files with protoc
# (PROTOC names another one).
[ -n "${PROTOC:-}" ] || command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "eventfold: installing build dependencies: ${missing[*]}" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt_install "${missing[@]}"
  else
    echo "error: missing ${missing[*]} and no apt-get here. Install a C++ compiler, libclang" >&2
    echo "       (LLVM's clang library; Fedora: clang-devel, macOS: xcode-select --install)," >&2
    echo "       or point LIBCLANG_PATH at the directory holding libclang.so, and protoc" >&2
    echo "       (Protocol Buffers' compiler; Fedora: protobuf-compiler, macOS: brew install protobuf)." >&2
    exit 1
  fi
  have_libclang || { echo "error: libclang is still missing after installing ${missing[*]}" >&2; exit 1; }
fi

# CI builds once, in a fresh clone: incremental compilation (on in the release
# profile, for working on the code) would only add its caches, several GB for
# the workspace's test targets, to a disk other jobs share.
if [ -n "${CI:-}" ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

# Disk: the release build of the whole workspace with its tests, from cold,
# took 4.7 GB under target/ and 0.3 GB for the fuzz targets with incremental
# caches off (a fresh clone under CI=true, measured 2026-12-07); the caches add
# about 1.8 GB for the test targets alone. RocksDB's C++ is built without debug
# info for that reason (see Cargo.toml). The crates cargo downloads come on top.
# Say so up front rather than fail in the linker twenty minutes in.
if [ "${CARGO_INCREMENTAL:-}" = 0 ]; then
  EVENTFOLD_DISK_NEEDED_MIB="${EVENTFOLD_DISK_NEEDED_MIB:-6144}"
else
  EVENTFOLD_DISK_NEEDED_MIB="${EVENTFOLD_DISK_NEEDED_MIB:-8192}"
fi
free_mib=$(df -Pm . 2>/dev/null | awk 'NR == 2 { print $4 }')
# A warm target/ (RocksDB already built) needs far less: no check then.
if ! compgen -G "${CARGO_TARGET_DIR:-target}/release/deps/liblibrocksdb_sys-*.rlib" >/dev/null \
  && [ -n "${free_mib:-}" ] && [ "$free_mib" -lt "$EVENTFOLD_DISK_NEEDED_MIB" ]; then
  echo "error: only ${free_mib} MiB free on the disk holding $(pwd); building eventfold" >&2
  echo "       needs about ${EVENTFOLD_DISK_NEEDED_MIB} MiB. Free some space (cargo clean in old" >&2
  echo "       checkouts), or set EVENTFOLD_DISK_NEEDED_MIB to override this check." >&2
  exit 1
fi
