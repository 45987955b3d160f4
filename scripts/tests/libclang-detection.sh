#!/usr/bin/env bash
# Regression test for the libclang detection of scripts/ensure-deps.sh.
# Bug it guards: a fresh Debian machine holding only libclang-cpp.so.14 (the
# C++ interface library, not loadable by bindgen) was taken to have libclang,
# nothing was installed, and librocksdb-sys's build script then panicked with
# "Unable to find libclang".
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTFOLD_DEPS_FUNCTIONS_ONLY=1 source scripts/ensure-deps.sh

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
failures=0

# A fake shared object: the ELF magic and this machine's class byte.
fake_library() {
  local class='\x02'
  [ "$(getconf LONG_BIT 2>/dev/null || echo 64)" = 32 ] && class='\x01'
  printf "\x7fELF${class}fake" >"$1"
}

# expect NAME found|missing FILE...: a directory holding exactly FILEs.
expect() {
  local name="$1" want="$2"
  shift 2
  local dir="$root/$name"
  mkdir -p "$dir/lib"
  local file
  for file in "$@"; do
    case "$file" in
      link:*) ln -s "$dir/lib/absent.so.1" "$dir/lib/${file#link:}" ;;
      text:*) echo "INPUT(-lclang)" >"$dir/lib/${file#text:}" ;;
      *) fake_library "$dir/lib/$file" ;;
    esac
  done
  local got=missing
  if (unset LIBCLANG_PATH; EVENTFOLD_LIBCLANG_SEARCH="$root/$name/l*" have_libclang); then got=found; fi
  if [ "$got" = "$want" ]; then
    echo "ok: $name: $got"
  else
    echo "FAIL: $name: expected $want, got $got" >&2
    failures=$((failures + 1))
  fi
}

expect only-libclang-cpp missing libclang-cpp.so.14
expect only-libclang-cpp-unversioned missing libclang-cpp.so
expect versioned-major found libclang-14.so.1
expect plain found libclang.so
expect suffix-versioned found libclang.so.1
expect dash-versioned found libclang-14.so
expect cpp-beside-real found libclang-cpp.so.14 libclang-14.so.1
expect dangling-symlink missing link:libclang.so
expect not-a-shared-object missing text:libclang.so
expect empty missing
expect unrelated missing libclangBasic.a libLLVM-14.so.1

# LIBCLANG_PATH is searched alone, as clang-sys does: a directory or a file.
mkdir -p "$root/env/good" "$root/env/cpp"
fake_library "$root/env/good/libclang-14.so.1"
fake_library "$root/env/cpp/libclang-cpp.so.14"
check_env() {
  local label="$1" want="$2" value="$3" got=missing
  if (LIBCLANG_PATH="$value" EVENTFOLD_LIBCLANG_SEARCH="$root/nowhere" have_libclang); then got=found; fi
  if [ "$got" = "$want" ]; then echo "ok: $label: $got"; else
    echo "FAIL: $label: expected $want, got $got" >&2
    failures=$((failures + 1))
  fi
}
check_env "LIBCLANG_PATH directory" found "$root/env/good"
check_env "LIBCLANG_PATH file" found "$root/env/good/libclang-14.so.1"
check_env "LIBCLANG_PATH holding only libclang-cpp" missing "$root/env/cpp"
check_env "LIBCLANG_PATH that does not exist" missing "$root/env/absent"

if [ "$failures" -gt 0 ]; then
  echo "libclang detection: $failures case(s) failed" >&2
  exit 1
fi
echo "libclang detection: all cases passed"
