#!/usr/bin/env bash
# Installs what is needed, builds, and runs every test of imgstream:
#   0. the cheap checks first: the module graph (scripts/check-deps.py), the format of the
#      lines changed since .ci/format-base (scripts/check-format.sh); after the release
#      build, clang-tidy (scripts/tidy.sh, which needs its compile_commands.json);
#   1. unit tests (GoogleTest) in a release build with warnings as errors;
#   2. the same unit tests under ASan + UBSan;
#   3. interop tests against real clients and peers (tests/run-interop.sh);
#   4. the fuzz targets for a bounded time (scripts/fuzz.sh).
# Ends with one line "total: N passed, N failed"; exits non-zero if anything failed.
# Environment: SKIP_SETUP=1 skips apt; FUZZ_SECONDS (default 30 per target).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log_dir=$(mktemp -d /tmp/imgstream-test.XXXXXX)
passed=0
failed=0
failures=()

stage() { echo; echo "=== $* ==="; }
count_gtest() {  # $1 = gtest JSON report, $2 = suite label
  local p f
  read -r p f < <(python3 -c '
import json,sys
j=json.load(open(sys.argv[1]))
print(j["tests"]-j["failures"]-j.get("disabled",0), j["failures"])' "$1") || { p=0; f=1; }
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" -eq 0 ] || failures+=("$2: $f failed")
}

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  stage setup
  bash scripts/setup.sh || { echo "setup failed"; exit 1; }
fi

check() {  # $1 = label, rest = command: counts one pass or one failure
  local label=$1; shift
  stage "$label"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$label"); fi
}
check "module graph (check-deps)" python3 scripts/check-deps.py
check "format of changed lines (check-format)" bash scripts/check-format.sh

stage "build (release, -Werror)"
bash scripts/build.sh release || { echo "build failed"; echo "total: $passed passed, $((failed + 1)) failed"; exit 1; }

check "clang-tidy (tidy)" bash scripts/tidy.sh

stage "unit tests"
./build/unit_tests --gtest_brief=1 --gtest_output=json:"$log_dir/unit.json"
count_gtest "$log_dir/unit.json" "unit tests"

stage "build (ASan + UBSan)"
if bash scripts/build.sh asan; then
  stage "unit tests under ASan + UBSan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ./build-asan/unit_tests --gtest_brief=1 --gtest_output=json:"$log_dir/asan.json"
  count_gtest "$log_dir/asan.json" "unit tests (asan)"
else
  failed=$((failed + 1)); failures+=("asan build")
fi

stage "interop tests"
bash tests/run-interop.sh 2>&1 | tee "$log_dir/interop.log"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log_dir/interop.log" | tail -1)
if [ -n "$line" ]; then
  p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed*}
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" -eq 0 ] || failures+=("interop: $f failed")
else
  failed=$((failed + 1)); failures+=("interop: no summary")
fi

if [ -x scripts/fuzz.sh ]; then
  stage "fuzz (${FUZZ_SECONDS:-30} s per target)"
  if bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); failures+=("fuzz")
  fi
fi

echo
for f in "${failures[@]}"; do echo "FAILED: $f"; done
rm -rf "$log_dir"
echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
