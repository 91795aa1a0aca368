#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cc) with clang and runs each for a bounded
# time. Exits non-zero when a target crashes, leaks, times out or trips a sanitizer.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 30. Environment: BUILD_DIR (default build-fuzz), JOBS
# (parallel build jobs, default 2), CXX (default clang++). The checked-in seeds in
# fuzz/corpus/<target>/ are copied to $BUILD_DIR/corpus/<target>/, which keeps what the
# fuzzer finds between runs; crash inputs land in $BUILD_DIR/artifacts/<target>/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
shift || true
build=${BUILD_DIR:-$root/build-fuzz}
jobs=${JOBS:-2}

# _GLIBCXX_ASSERTIONS: libstdc++ checks preconditions (span and vector indexes, ...) that
# the sanitizers cannot see, such as taking &span[size()].
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="${CXX:-clang++}" \
  -DCMAKE_CXX_FLAGS="-D_GLIBCXX_ASSERTIONS" -DIMGSTREAM_FUZZ=ON >/dev/null
cmake --build "$build" -j "$jobs"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for src in "$root"/fuzz/*_fuzz.cc; do targets+=("$(basename "$src" .cc)"); done
fi

# UBSan is compiled recoverable in the fuzz build: make its reports fatal here.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

failed=()
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  if [ -d "$root/fuzz/corpus/$t" ]; then cp -n "$root/fuzz/corpus/$t"/* "$corpus"/ 2>/dev/null || true; fi
  echo "== $t: ${seconds}s"
  if ! "$build/$t" "$corpus" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 \
      -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/" \
      >"$build/$t.log" 2>&1; then
    echo "!! $t failed; the last lines of $build/$t.log:"
    tail -n 40 "$build/$t.log"
    failed+=("$t")
  else
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$build/$t.log" || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all targets ran ${seconds}s without a finding"
