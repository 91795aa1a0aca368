#!/usr/bin/env bash
# stream.sh - helpers for the streaming tests (tests/interop/test-stream-*.sh)
# and bench/stream.sh. Source it after tests/lib/common.sh:
#
#   source "$(dirname "$0")/../lib/common.sh"
#   source "$(dirname "$0")/../lib/stream.sh"
#
# Images:
#   make_holey_image PATH SIZE_MIB
#       Random data with holes: a fixed layout of data extents and sparse
#       holes (some region-aligned, some not), so that hydration must skip
#       the holes and demand reads cross data/hole boundaries. Prints
#       nothing; writes PATH.data_regions (how many 1 MiB regions hold any
#       data).
#   data_region_bytes IMG REGION_SIZE
#       Bytes in the regions of IMG (REGION_SIZE each) that hold any
#       non-zero byte: an upper bound on what hydration may fetch.
#
# The "remote" source (nbdkit behind filters, on a unix socket):
#   start_source SOCK NBDKIT-ARGS...
#       nbdkit -f --unix SOCK NBDKIT-ARGS (e.g. --filter=delay file IMG
#       rdelay=2ms), registered for cleanup; waits until it accepts. Removes
#       a stale SOCK first (a SIGKILLed nbdkit leaves it behind). Sets
#       SOURCE_PID and SOURCE_URI.
#   kill_source PID [SIGNAL]   signal (default KILL) and reap, bounded.
#
# The streamer:
#   start_streamer SOURCE STORE [STREAM-ARGS...]
#       imgstream stream SOURCE --store STORE --listen unix:$T/streamN.sock
#       STREAM-ARGS in the background; waits for its URI and a connection.
#       Sets STREAMER_PID, STREAMER_URI, STREAMER_SOCK, STREAMER_ERR.
#   status_json STORE            imgstream status STORE --json
#   st STORE FIELD               one field of it (jq -r)
#   wait_state STORE STATE SECS  poll status until state == STATE (fails the
#                                test on timeout, with the last status)
#   wait_field_ge STORE FIELD N SECS   poll until FIELD >= N
#
# Executed rather than sourced, `stream.sh wait-state STORE STATE SECS`
# polls the same way and exits 0 / 1: handy inside `stream --run '...'`.

_stream_lib_bin() { printf '%s' "${IMGSTREAM:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/imgstream}"; }

make_holey_image() {
    local path="$1" mib="$2"
    python3 - "$path" "$mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
M = 1 << 20
size = mib * M
# (start, length) of data extents, as fractions of the image; the rest are holes.
# Some holes are region-aligned, some are not (a region that is partly data is data).
layout = [(0, 6 * M), (7 * M + 4096, 5 * M), (14 * M, 3 * M + 12345)]
pos = 20 * M
i = 0
while pos < size:
    length = (3 + (i * 7) % 9) * M + (i % 3) * 65536
    layout.append((pos, min(length, size - pos)))
    hole = (1 + (i * 5) % 4) * M + ((i % 2) * 8192)
    pos += length + hole
    i += 1
layout.append((size - 64 * 1024, 64 * 1024))  # the last region holds data
with open(path, "wb") as f:
    f.truncate(size)
    for start, length in layout:
        if start >= size or length <= 0:
            continue
        length = min(length, size - start)
        f.seek(start)
        f.write(os.urandom(length))
PY
}

data_region_bytes() {
    python3 - "$1" "$2" <<'PY'
import sys
path, rs = sys.argv[1], int(sys.argv[2])
total = 0
with open(path, "rb") as f:
    while True:
        b = f.read(rs)
        if not b:
            break
        if b.count(0) != len(b):
            total += len(b)
print(total)
PY
}

start_source() {
    local sock="$1"
    shift
    rm -f "$sock"
    local log
    log="$T/nbdkit.$(basename "$sock").$RANDOM.log"
    _SERVER_LOGS+=("$log")
    nbdkit -f --unix "$sock" "$@" >"$log" 2>&1 &
    SOURCE_PID=$!
    register_pid "$SOURCE_PID"
    SOURCE_URI="nbd+unix:///?socket=$sock"
    local i
    for ((i = 0; i < 100; i++)); do
        _alive "$SOURCE_PID" || fail "nbdkit exited at start: nbdkit --unix $sock $*: $(tail -n 3 "$log")"
        if [[ -S $sock ]] && timeout 5 nbdinfo --can connect "$SOURCE_URI" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    fail "nbdkit did not accept on $sock within 10 s"
}

kill_source() {
    local pid="$1" sig="${2:-KILL}" i
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        _alive "$pid" || break
        sleep 0.05
    done
    _alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

_STREAMER_SEQ=0
start_streamer() {
    local source="$1" store="$2"
    shift 2
    _STREAMER_SEQ=$((_STREAMER_SEQ + 1))
    local n=$_STREAMER_SEQ
    STREAMER_SOCK="$T/stream$n.sock"
    STREAMER_ERR="$T/stream$n.err"
    local out="$T/stream$n.out"
    _SERVER_LOGS+=("$STREAMER_ERR")
    "$IMGSTREAM" stream "$source" --store "$store" --listen "unix:$STREAMER_SOCK" "$@" \
        >"$out" 2>"$STREAMER_ERR" &
    STREAMER_PID=$!
    register_pid "$STREAMER_PID"
    STREAMER_URI=""
    local i
    for ((i = 0; i < 200; i++)); do
        if [[ -s $out ]]; then
            STREAMER_URI="$(head -n 1 "$out")"
            [[ -n $STREAMER_URI ]] && break
        fi
        _alive "$STREAMER_PID" || break
        sleep 0.1
    done
    if [[ -z $STREAMER_URI ]]; then
        _alive "$STREAMER_PID" ||
            fail "streamer exited before printing its URI: imgstream stream $source --store $store $*: $(tail -n 3 "$STREAMER_ERR")"
        fail "streamer printed no URI within 20 s: imgstream stream $source --store $store $*"
    fi
    timeout 10 nbdinfo --can connect "$STREAMER_URI" 2>"$T/connect.err" ||
        fail "cannot connect to the streamer's URI $STREAMER_URI: $(head -n 1 "$T/connect.err")"
}

status_json() {
    "$(_stream_lib_bin)" status "$1" --json
}

st() {
    local j
    j="$(status_json "$1")" || fail "imgstream status $1 --json failed"
    jq -r --arg f "$2" '.[$f] // empty' <<<"$j"
}

wait_state() {
    local store="$1" want="$2" secs="$3" deadline j state
    deadline=$((SECONDS + secs))
    while :; do
        j="$(status_json "$store" 2>/dev/null)" || j=""
        state="$(jq -r '.state // empty' <<<"$j" 2>/dev/null)" || state=""
        [[ $state == "$want" ]] && return 0
        if ((SECONDS >= deadline)); then
            fail "store $store did not reach state '$want' within ${secs}s; last status: $j"
        fi
        sleep 0.2
    done
}

wait_field_ge() {
    local store="$1" field="$2" want="$3" secs="$4" deadline v
    deadline=$((SECONDS + secs))
    while :; do
        v="$(st "$store" "$field")"
        [[ -n $v && $v -ge $want ]] && return 0
        ((SECONDS >= deadline)) && fail "store $store: $field stayed $v < $want for ${secs}s"
        sleep 0.1
    done
}

# Executed: stream.sh wait-state STORE STATE SECS
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    [[ ${1:-} == wait-state && $# -eq 4 ]] || { echo "usage: stream.sh wait-state STORE STATE SECS" >&2; exit 2; }
    store="$2" want="$3" deadline=$((SECONDS + $4))
    while :; do
        state="$("$(_stream_lib_bin)" status "$store" --json 2>/dev/null | jq -r '.state // empty')"
        [[ $state == "$want" ]] && exit 0
        ((SECONDS >= deadline)) && { echo "stream.sh: $store: state '$state', not '$want' after $4 s" >&2; exit 1; }
        sleep 0.2
    done
fi
