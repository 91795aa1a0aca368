#!/usr/bin/env bash
# Hostile NBD clients never hold up other clients (issue 12, points 17 and 20), on both
# `serve` and `stream`:
#   17. two clients with a 4 KiB receive buffer send 64 reads of 32 MiB each and never
#       read a reply: another client's FLUSH and read are answered at once (qemu-io,
#       bounded 20 s; < 5 s required) and the server's memory stays bounded
#       (kConnectionBytesMax per connection: VmRSS below 450 MiB).
#   20. twenty clients trickling their handshake a byte a second are cut off when the
#       whole handshake's 10 s are up (not kept for as long as they trickle); with 256
#       idle clients holding every slot, a new client is told "server full" by the
#       server (the NBD error reply's message; qemu-img shows it) instead of a silent
#       close; once the idle clients go, clients are served again.
# After each case the server still serves and the image is unchanged.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 300
need qemu-io qemu-img nbdinfo python3 sha256sum

MiB=$((1024 * 1024))
here="$(cd "$(dirname "$0")" && pwd)"
hc() { python3 "$here/hostile_clients.py" "$@"; }
img="$T/disk.img"
head -c $((64 * MiB)) /dev/urandom >"$img"
sum_before=$(sha256sum <"$img")

rss_mib() { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$1/status"; }
elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
# start_helper NAME ARGS...: runs hostile_clients.py in the background, waits for its
# first line (up to 60 s); sets HELPER_PID and HELPER_LINE.
start_helper() {
    local name="$1" i
    shift
    python3 "$here/hostile_clients.py" "$@" >"$T/$name.out" 2>"$T/$name.err" &
    HELPER_PID=$!
    register_pid "$HELPER_PID"
    for ((i = 0; i < 600; i++)); do
        [[ -s $T/$name.out ]] && break
        _alive "$HELPER_PID" || fail "$name: exited: $(tail -n 3 "$T/$name.err")"
        sleep 0.1
    done
    HELPER_LINE=$(head -n 1 "$T/$name.out")
    [[ -n $HELPER_LINE ]] || fail "$name: no output within 60 s"
}
still_serves() {  # URI WHAT
    timeout 20 qemu-io -f raw -r -c 'read -v 0 512' "$1" >"$T/serves.out" 2>&1 ||
        fail "$2: the server no longer serves: $(tail -n 2 "$T/serves.out")"
}

run_cases() {  # KIND SOCK URI PID
    local kind="$1" sock="$2" uri="$3" pid="$4" t0 took rss

    # 17: clients that never read their replies.
    start_helper "stall-$kind" stall "$sock" 2 64 $((32 * MiB))
    [[ $HELPER_LINE == ready ]] || fail "$kind: stalled clients: $HELPER_LINE"
    local stall_pid=$HELPER_PID
    sleep 2
    t0=$(date +%s.%N)
    timeout 20 qemu-io -f raw -c 'flush' -c 'read 4096 4096' -c 'flush' "$uri" >"$T/other.out" 2>&1 ||
        fail "$kind: another client's flush and read failed or hung with stalled clients present: $(tail -n 2 "$T/other.out")"
    took=$(elapsed_since "$t0")
    awk -v t="$took" 'BEGIN { exit !(t < 5) }' ||
        fail "$kind: another client's flush took ${took}s with stalled clients present (must be < 5 s)"
    rss=$(rss_mib "$pid")
    [[ $rss -lt 450 ]] || fail "$kind: ${rss} MiB resident with two stalled clients (bound: < 450 MiB)"
    note "$kind: flush+read beside 2 stalled clients: ${took}s; server resident ${rss} MiB"
    _kill_pid "$stall_pid"
    still_serves "$uri" "$kind after stalled clients"

    # 20: a handshake trickled a byte a second.
    t0=$(date +%s.%N)
    local longest
    longest=$(hc trickle "$sock" 20 30)
    [[ $longest != alive ]] || fail "$kind: a client trickling its handshake was still connected after 30 s"
    awk -v t="$longest" 'BEGIN { exit !(t >= 8 && t <= 14) }' ||
        fail "$kind: trickling clients were cut after ${longest}s (the handshake has 10 s)"
    note "$kind: trickling handshakes cut after ${longest}s"
    still_serves "$uri" "$kind after trickling clients"

    # 20: a full server says so. (Clients that just left are reaped within a second.)
    sleep 2
    start_helper "idle-$kind" idle "$sock" 256
    [[ $HELPER_LINE == ready ]] || fail "$kind: 256 idle clients: $HELPER_LINE: $(head -n 1 "$T/idle-$kind.err")"
    local idle_pid=$HELPER_PID
    local said
    said=$(hc refused "$sock")
    [[ $said == *"server full"* ]] || fail "$kind: a client of a full server was told '$said', expected 'server full'"
    timeout 20 qemu-img info "$uri" >"$T/full.out" 2>&1 && fail "$kind: qemu-img info succeeded on a full server"
    grep -q "server full" "$T/full.out" || fail "$kind: qemu-img does not show why: $(cat "$T/full.out")"
    note "$kind: full: $(grep -m1 'server full' "$T/full.out")"
    _kill_pid "$idle_pid"
    local i ok=0
    for ((i = 0; i < 50; i++)); do
        if timeout 10 nbdinfo --can connect "$uri" 2>/dev/null; then ok=1; break; fi
        sleep 0.2
    done
    [[ $ok = 1 ]] || fail "$kind: no client served within 10 s after the idle clients left"
    still_serves "$uri" "$kind after a full server"
}

start_server "$img"
run_cases serve "$SERVER_SOCK" "$SERVER_URI" "$SERVER_PID"
stop_server_ok "$SERVER_PID"
[[ $(sha256sum <"$img") == "$sum_before" ]] || fail "serve: the image changed"
pass "serve: stalled, trickling and surplus clients held up nobody"

start_streamer "$img" "$T/store"
run_cases stream "$STREAMER_SOCK" "$STREAMER_URI" "$STREAMER_PID"
stop_server "$STREAMER_PID"
[[ $(sha256sum <"$img") == "$sum_before" ]] || fail "stream: the source changed"
pass "stream: stalled, trickling and surplus clients held up nobody"
