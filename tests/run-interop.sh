#!/usr/bin/env bash
# run-interop.sh - run the interop tests (tests/interop/test-*.sh) against
# real NBD clients.
#
# Usage: tests/run-interop.sh [FILTER]
#   FILTER  run only tests whose name contains FILTER (e.g. "fio").
#
# Prints "PASS name (Ns)", "SKIP name" or "FAIL name (Ns)" per test, the
# failing test's output tail, and a last line "N passed, N failed" (parsed
# by CI). Exits 1 if any test failed (or none matched).
#
# Environment: IMGSTREAM (binary, default build/imgstream; the run uses a
# private copy of it), TEST_TIMEOUT
# (seconds per test, overrides each test's own bound), KEEP_TMP=1,
# VERBOSE=1 (print every test's full output).
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
filter="${1:-}"
log_dir="$(mktemp -d "${TMPDIR:-/tmp}/imgstream-interop-logs.XXXXXX")"
trap 'rm -rf "$log_dir"' EXIT
test_pid=""
interrupted=0
# Pass a stop request on to the running test (which stops its servers).
trap 'interrupted=1; [[ -n $test_pid ]] && kill -TERM "$test_pid" 2>/dev/null' INT TERM

# Test one binary for the whole run: a private copy, so that a rebuild in
# the meantime (the linker rewriting build/imgstream) cannot break tests.
bin="${IMGSTREAM:-$here/../build/imgstream}"
[[ $bin == /* ]] || bin="$(pwd)/$bin"
for attempt in 1 2 3 4 5 6; do
    if [[ -x $bin ]] && cp "$bin" "$log_dir/imgstream" 2>/dev/null &&
        "$log_dir/imgstream" --version >/dev/null 2>&1; then
        break
    fi
    rm -f "$log_dir/imgstream"
    [[ $attempt -lt 6 ]] && sleep 5
done
[[ -x $log_dir/imgstream ]] || { echo "no working imgstream binary at $bin"; echo "0 passed, 1 failed"; exit 1; }
export IMGSTREAM="$log_dir/imgstream"

passed=0
failed=0
skipped=0
failed_names=()
for test in "$here"/interop/test-*.sh; do
    name="$(basename "$test" .sh)"
    [[ -n $filter && $name != *"$filter"* ]] && continue
    log="$log_dir/$name.log"
    start=$SECONDS
    rc=0
    bash "$test" </dev/null >"$log" 2>&1 &
    test_pid=$!
    while :; do
        rc=0
        wait "$test_pid" || rc=$?
        kill -0 "$test_pid" 2>/dev/null || break
    done
    test_pid=""
    if [[ $interrupted = 1 ]]; then
        echo "interrupted during $name"
        tail -n 5 "$log" | sed 's/^/    /'
        echo "$passed passed, $((failed + 1)) failed"
        exit 130
    fi
    secs=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then
        echo "PASS $name (${secs}s)"
        passed=$((passed + 1))
        [[ ${VERBOSE:-0} = 1 ]] && sed 's/^/    /' "$log"
    elif [[ $rc -eq 77 ]]; then
        echo "SKIP $name: $(grep -m1 '^SKIP' "$log" || echo "exit 77")"
        skipped=$((skipped + 1))
    else
        echo "FAIL $name (${secs}s, exit $rc)"
        failed=$((failed + 1))
        failed_names+=("$name")
        tail -n 40 "$log" | sed 's/^/    /'
    fi
done

if [[ $skipped -gt 0 ]]; then
    echo "($skipped skipped)"
fi
if [[ $failed -gt 0 ]]; then
    echo "failed: ${failed_names[*]}"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 && $((passed + skipped)) -gt 0 ]]
