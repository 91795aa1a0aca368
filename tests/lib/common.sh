#!/usr/bin/env bash
# common.sh - shared helpers for the interop tests (tests/interop/test-*.sh).
#
# Usage, at the top of a test:
#
#   #!/usr/bin/env bash
#   set -euo pipefail
#   source "$(dirname "$0")/../lib/common.sh"
#   test_init 120          # hard time bound in seconds (default 120)
#
# test_init re-executes the test under coreutils `timeout` (once), makes a
# private temp directory $T (removed on exit) and installs a trap that, on
# any exit (pass, fail, error, signal, timeout), unmounts what the test
# mounted and stops every process the test registered, by PID: TERM, then
# KILL after a grace period.
#
# Servers:
#
#   start_server IMAGE [SERVE-ARGS...]
#       Starts `imgstream serve IMAGE --listen unix:$T/sockN SERVE-ARGS` in
#       the background (unless SERVE-ARGS has its own --listen) and waits
#       until it prints its URI on stdout and the socket accepts
#       (`nbdinfo --can connect`). Sets SERVER_PID, SERVER_URI,
#       SERVER_SOCK, SERVER_OUT, SERVER_ERR.
#   stop_server PID
#       SIGTERM, wait for exit (bounded), returns the server's exit status
#       through $STOP_STATUS (and fails the test if it did not stop).
#
# Other processes started in the background: `register_pid PID`.
# Mount points: `register_mount DIR` (umount -l at exit) and
# `register_fuse DIR` (fusermount3 -u at exit).
#
# Results: `pass MSG` (prints "PASS: MSG"), `fail MSG` (prints "FAIL: MSG"
# on stderr with the server logs' tail and exits 1), `note MSG`.
# Checks: `expect_eq ACTUAL EXPECTED WHAT`, `expect_ok WHAT CMD...`,
# `expect_fail WHAT CMD...`, `expect_same_file A B WHAT`.
#
# Environment:
#   IMGSTREAM   the binary (default: build/imgstream under the repo root)
#   TEST_TIMEOUT  override the hard time bound of every test (seconds)
#   KEEP_TMP=1  keep $T for inspection

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMGSTREAM="${IMGSTREAM:-$REPO_ROOT/build/imgstream}"
case "$IMGSTREAM" in
    /*) ;;
    *) IMGSTREAM="$REPO_ROOT/$IMGSTREAM" ;;
esac
export IMGSTREAM

TEST_NAME="$(basename "$0" .sh)"
T=""
_PIDS=()
_MOUNTS=()
_FUSE=()
_SERVER_LOGS=()
_SERVER_SEQ=0
SERVER_PID=""
SERVER_URI=""
SERVER_SOCK=""
SERVER_OUT=""
SERVER_ERR=""
STOP_STATUS=0

note() { echo "[$TEST_NAME] $*" >&2; }

pass() { echo "PASS: $TEST_NAME: $*"; }

fail() {
    echo "FAIL: $TEST_NAME: $*" >&2
    local log
    for log in "${_SERVER_LOGS[@]}"; do
        if [[ -s $log ]]; then
            echo "--- tail of $(basename "$log") ---" >&2
            tail -n 20 "$log" >&2 || true
        fi
    done
    exit 1
}

skip() {
    echo "SKIP: $TEST_NAME: $*"
    exit 77
}

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || fail "required tool '$c' is not installed"
    done
}

# ---------------------------------------------------------------- lifecycle

test_init() {
    local limit="${TEST_TIMEOUT:-${1:-120}}"
    if [[ -z ${_IMGSTREAM_TEST_BOUNDED:-} ]]; then
        # Hard time bound: timeout runs the test in a process group of its
        # own and, when time is up, signals the whole group (the test and
        # everything it started), then KILLs it 10 s later. A signal to
        # this shell (Ctrl-C, the runner stopping) is passed on the same way.
        export _IMGSTREAM_TEST_BOUNDED=1
        local rc=0 tpid
        timeout --kill-after=10 "$limit" bash "$0" &
        tpid=$!
        trap 'kill -TERM "$tpid" 2>/dev/null' TERM INT HUP
        while :; do
            rc=0
            wait "$tpid" || rc=$?
            _alive "$tpid" || break
        done
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
            echo "FAIL: $TEST_NAME: timed out after ${limit}s" >&2
        fi
        exit "$rc"
    fi
    [[ -x $IMGSTREAM ]] || fail "imgstream binary not found at $IMGSTREAM (build it or set IMGSTREAM)"
    T="$(mktemp -d "${TMPDIR:-/tmp}/imgstream-interop.XXXXXX")"
    trap _cleanup EXIT
    trap 'echo "FAIL: $TEST_NAME: line $LINENO: command failed (status $?): $BASH_COMMAND" >&2' ERR
    trap 'exit 143' TERM
    trap 'exit 130' INT
}

register_pid() { _PIDS+=("$1"); }
register_mount() { _MOUNTS+=("$1"); }
register_fuse() { _FUSE+=("$1"); }

_alive() { kill -0 "$1" 2>/dev/null; }

# _kill_pid PID: TERM, wait up to 5 s, then KILL.
_kill_pid() {
    local pid="$1" i
    _alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        _alive "$pid" || break
        sleep 0.1
    done
    if _alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

_cleanup() {
    local rc=$? m pid i
    set +e
    for m in "${_MOUNTS[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
    for m in "${_FUSE[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
    for ((i = ${#_PIDS[@]} - 1; i >= 0; i--)); do
        _kill_pid "${_PIDS[i]}"
    done
    if [[ -n $T && -d $T ]]; then
        if [[ ${KEEP_TMP:-0} = 1 ]]; then
            echo "[$TEST_NAME] kept $T" >&2
        else
            rm -rf "$T"
        fi
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- servers

# start_server IMAGE [SERVE-ARGS...]
start_server() {
    local image="$1"
    shift
    _SERVER_SEQ=$((_SERVER_SEQ + 1))
    local n=$_SERVER_SEQ
    SERVER_OUT="$T/server$n.out"
    SERVER_ERR="$T/server$n.err"
    SERVER_SOCK=""
    local args=("$@") has_listen=0 a
    for a in "${args[@]}"; do
        [[ $a == --listen || $a == --listen=* ]] && has_listen=1
    done
    if [[ $has_listen = 0 ]]; then
        SERVER_SOCK="$T/sock$n"
        args=(--listen "unix:$SERVER_SOCK" "${args[@]}")
    fi
    _SERVER_LOGS+=("$SERVER_ERR")
    "$IMGSTREAM" serve "$image" "${args[@]}" >"$SERVER_OUT" 2>"$SERVER_ERR" &
    SERVER_PID=$!
    register_pid "$SERVER_PID"
    local i
    SERVER_URI=""
    for ((i = 0; i < 100; i++)); do
        if [[ -s $SERVER_OUT ]]; then
            SERVER_URI="$(head -n 1 "$SERVER_OUT")"
            [[ -n $SERVER_URI ]] && break
        fi
        _alive "$SERVER_PID" || break
        sleep 0.1
    done
    if [[ -z $SERVER_URI ]]; then
        _alive "$SERVER_PID" || fail "server exited before printing its URI: imgstream serve $image ${args[*]}"
        fail "server printed no URI within 10 s: imgstream serve $image ${args[*]}"
    fi
    timeout 10 nbdinfo --can connect "$SERVER_URI" 2>"$T/connect.err" ||
        fail "cannot connect to the server's URI $SERVER_URI: $(head -n 1 "$T/connect.err")"
}

# stop_server PID: SIGTERM and wait (up to 15 s); sets STOP_STATUS.
stop_server() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        _alive "$pid" || break
        sleep 0.1
    done
    _alive "$pid" && fail "server PID $pid did not stop within 15 s of SIGTERM"
    STOP_STATUS=0
    wait "$pid" || STOP_STATUS=$?
}

# stop_server_ok PID: stop_server and require exit status 0.
stop_server_ok() {
    stop_server "$1"
    [[ $STOP_STATUS -eq 0 ]] || fail "server PID $1 exited with status $STOP_STATUS after SIGTERM (expected 0)"
}

# ---------------------------------------------------------------- checks

expect_eq() {
    local actual="$1" expected="$2" what="$3"
    [[ "$actual" == "$expected" ]] || fail "$what: expected '$expected', got '$actual'"
}

# expect_ok WHAT CMD...: CMD must exit 0 (its output goes to $T/last.log).
expect_ok() {
    local what="$1"
    shift
    if ! "$@" >"$T/last.log" 2>&1; then
        tail -n 20 "$T/last.log" >&2
        fail "$what: command failed: $*"
    fi
}

# expect_fail WHAT CMD...: CMD must exit non-zero.
expect_fail() {
    local what="$1"
    shift
    if "$@" >"$T/last.log" 2>&1; then
        tail -n 20 "$T/last.log" >&2
        fail "$what: command succeeded but should have failed: $*"
    fi
}

expect_same_file() {
    local a="$1" b="$2" what="$3" out
    if ! out="$(cmp "$a" "$b" 2>&1)"; then
        fail "$what: files differ: $out"
    fi
}

# make_random_file PATH SIZE_MIB: random content.
make_random_file() {
    head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$1"
}

# Hex dump of LEN bytes at OFF in FILE, as one string of hex digits.
hex_at() {
    od -An -tx1 -v -j "$2" -N "$3" "$1" | tr -d ' \n'
}

# expect_bytes FILE OFF LEN BYTE WHAT: every byte of the range is BYTE
# (two hex digits, e.g. ab).
expect_bytes() {
    local file="$1" off="$2" len="$3" byte="$4" what="$5" out
    out="$(python3 - "$file" "$off" "$len" "$byte" <<'PY'
import sys
path, off, length, byte = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 16)
with open(path, "rb") as f:
    f.seek(off)
    data = f.read(length)
if len(data) != length:
    print(f"file too short: read {len(data)} of {length} bytes")
    sys.exit(0)
bad = len(data) - data.count(bytes([byte]))
if bad:
    first = next(i for i, b in enumerate(data) if b != byte)
    print(f"{bad} bytes differ, first at offset {off + first} is 0x{data[first]:02x}")
PY
)"
    [[ -z $out ]] || fail "$what: range [$off, +$len) of $(basename "$file") should be all 0x$byte: $out"
}
