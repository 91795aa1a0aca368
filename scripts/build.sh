#!/usr/bin/env bash
# Builds imgstream. Usage: scripts/build.sh [release|asan|fuzz] (default release).
# Build trees: build/ (release, warnings as errors), build-asan/, build-fuzz/ (clang).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
jobs=$(nproc)
case "$kind" in
  release) dir=build; flags=(-DIMGSTREAM_WERROR=ON) ;;
  asan) dir=build-asan; flags=(-DIMGSTREAM_WERROR=ON -DIMGSTREAM_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug) ;;
  fuzz) dir=build-fuzz; flags=(-DIMGSTREAM_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++) ;;
  *) echo "usage: $0 [release|asan|fuzz]" >&2; exit 2 ;;
esac
# ccache, when installed, makes rebuilds (and builds of other checkouts: paths are taken
# relative to the checkout) cheap.
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR="$(pwd)" CCACHE_NOHASHDIR=1
  flags+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$dir" -G Ninja "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$jobs"
