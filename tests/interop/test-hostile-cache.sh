#!/usr/bin/env bash
# One hostile NBD_CMD_CACHE (issue 12, point 16): a 28-byte request asking
# `imgstream stream` to cache 4 GiB of a slow source grew the streamer from
# 14 MiB to 4.1 GiB (a buffer for every run of the range, made before the
# first read came back). Every fetch now takes its bytes from a 64 MiB budget
# first, and CACHE works through its range a few pieces at a time.
#
#   1. A CACHE of 4 GiB - 4 KiB (the largest 4 KiB-aligned NBD length) of a
#      5 GiB source (nbdkit memory, sparse, behind the delay filter: 300 ms
#      per read): the streamer's VmRSS, sampled for 6 s, stays below its
#      baseline + RSS_SLACK_MIB, and the CACHE does fetch (regions become
#      present: it is bounded, not dropped).
#   2. Meanwhile another client's read of a missing region (past the CACHE's
#      range) completes within READ_SECS_MAX: the CACHE does not starve it.
#
# --no-background: the hydrator would find the memory plugin's holes and
# make the whole store present without a fetch, leaving the CACHE nothing to
# do.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 120
need nbdkit qemu-io python3 jq

MiB=$((1024 * 1024))
GiB=$((1024 * MiB))
RSS_SLACK_MIB=200
READ_SECS_MAX=5
cache_len=$((4 * GiB - 4096))

start_source "$T/src.sock" --filter=delay memory $((5 * GiB)) rdelay=300ms
store="$T/store"
start_streamer "$SOURCE_URI" "$store" --no-background --io-timeout 30
pid=$STREAMER_PID

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
baseline=0
for ((k = 0; k < 5; k++)); do
    r="$(rss_kib)"
    ((r > baseline)) && baseline=$r
    sleep 0.1
done
limit=$((baseline + RSS_SLACK_MIB * 1024))
note "baseline VmRSS $((baseline / 1024)) MiB; limit $((limit / 1024)) MiB"

# The CACHE, on a connection of its own (raw: nothing refuses to send it).
reply="$(timeout 30 python3 -c '
import sys
sys.path.insert(0, sys.argv[1])
import nbd_raw
c = nbd_raw.Client(sys.argv[2])
if "SEND_CACHE" not in c.flag_names():
    sys.exit("the streamer does not advertise NBD_FLAG_SEND_CACHE")
err, _ = c.cmd("cache", 0, int(sys.argv[3]))
print(err)
c.close()
' "$REPO_ROOT/tests/interop" "$STREAMER_SOCK" "$cache_len")" ||
    fail "sending the CACHE failed: $reply"
expect_eq "$reply" OK "the CACHE's reply"

# A reader on another connection, while the CACHE runs: a missing region past
# the CACHE's range (the source answers it in 300 ms).
read_off=$((4 * GiB + 512 * MiB))
(
    t0=$EPOCHREALTIME
    rc=0
    timeout 60 qemu-io -r -f raw -c "read $read_off 65536" "$STREAMER_URI" >"$T/read.out" 2>&1 || rc=$?
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }' >"$T/read.secs"
    exit $rc
) &
reader=$!
register_pid "$reader"

# Sample VmRSS for 6 s (stop at once when over the limit: the old code would
# take the machine's memory).
peak=0
for ((k = 0; k < 60; k++)); do
    _alive "$pid" || fail "the streamer exited during the CACHE"
    r="$(rss_kib)"
    ((r > peak)) && peak=$r
    if ((peak > limit)); then
        kill -KILL "$pid" 2>/dev/null || true
        fail "VmRSS $((peak / 1024)) MiB after one CACHE of 4 GiB: over baseline $((baseline / 1024)) MiB + $RSS_SLACK_MIB MiB"
    fi
    sleep 0.1
done
note "peak VmRSS $((peak / 1024)) MiB (baseline $((baseline / 1024)) MiB)"

rc=0
wait "$reader" || rc=$?
elapsed="$(cat "$T/read.secs")"
[[ $rc -eq 0 ]] && ! grep -Eiq 'fail|error' "$T/read.out" ||
    fail "the read during the CACHE failed (exit $rc): $(cat "$T/read.out")"
note "read of a missing region during the CACHE: ${elapsed}s"
awk -v e="$elapsed" -v m="$READ_SECS_MAX" 'BEGIN { exit !(e <= m) }' ||
    fail "the read during the CACHE took ${elapsed}s (more than ${READ_SECS_MAX}s: the CACHE starves it)"
pass "one CACHE of 4 GiB: VmRSS peak $(((peak - baseline) / 1024)) MiB over baseline (limit $RSS_SLACK_MIB MiB); another client's read took ${elapsed}s"

# The CACHE is bounded, not dropped: it fetched while we watched.
present="$(st "$store" regions_present)"
note "regions present after the CACHE ran 6 s: $present"
[[ -n $present && $present -ge 8 ]] ||
    fail "the CACHE fetched nothing in 6 s (regions_present $present)"
pass "the CACHE makes progress ($present regions present after 6 s)"

stop_server_ok "$pid"
pass "the streamer stops with the CACHE under way"
