#!/usr/bin/env bash
# kill -9 of the streamer at random moments during hydration, with two
# clients writing and flushing concurrently (qemu-io `write -P N` + `flush`,
# each write on regions no other write touches), ROUNDS times (default 24),
# restarting the streamer on the same store after each kill. Checks:
#   * after every restart, every write acknowledged with a completed flush
#     reads back (qemu-io read -P) through the new streamer;
#   * at the end a restart without a rate limit completes hydration, and the
#     local copy holds, in every region: the image's data, or for a written
#     region the image's data outside the write and inside it the pattern
#     (flushed writes) or, per 4 KiB block, the pattern or the image's data
#     (writes not known to be flushed: they may be lost or half done).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 240
need nbdkit nbdinfo qemu-io jq python3

ROUNDS="${ROUNDS:-24}"
MiB=$((1024 * 1024))
RS=$((64 * 1024)) # region size: many regions (one per write), small merges
SIZE_MIB=128
img="$T/image.img"
make_holey_image "$img" $SIZE_MIB
regions=$((SIZE_MIB * MiB / RS))

source_args=(--filter=delay file "$img" rdelay=1ms)
start_source "$T/src.sock" "${source_args[@]}"
src="$SOURCE_URI"
src_restarts=0
store="$T/store"

# The writes, planned ahead: per writer, "INDEX OFFSET LENGTH PATTERN"; every
# write on regions of its own (partial, whole, and across two regions).
python3 - "$regions" "$RS" "$T/plan" <<'PY'
import random, sys
regions, rs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(20241125)
order = list(range(regions - 1))
rng.shuffle(order)
used = set()
plans = [[], []]
n = 0
for r in order:
    if r in used:
        continue
    kind = n % 3
    if kind == 2 and (r + 1 in used or r + 1 >= regions):
        kind = 0
    if kind == 0:    # partial, 4 KiB aligned
        length = 4096 * rng.randint(1, min(16, rs // 4096 - 1))
        off = r * rs + 4096 * rng.randint(0, (rs - length) // 4096)
        used.add(r)
    elif kind == 1:  # whole region
        off, length = r * rs, rs
        used.add(r)
    else:            # the end of r and the start of r + 1
        off, length = r * rs + rs - 8192, 16384
        used.update((r, r + 1))
    plans[n % 2].append(f"{n} {off} {length} {1 + n % 254}")
    n += 1
for w in (0, 1):
    with open(f"{out}.{w}", "w") as f:
        f.write("\n".join(plans[w]) + "\n")
PY

# writer ID URI: the next planned writes of writer ID until $T/stop exists.
# Logs "A n" before each attempt and "F n" once write and flush succeeded.
writer() {
    local id="$1" uri="$2" n off len pat start
    start="$(awk '$1 == "A" { c++ } END { print c + 0 }' "$T/log.$id" 2>/dev/null || echo 0)"
    tail -n +"$((start + 1))" "$T/plan.$id" | while read -r n off len pat; do
        [[ -e $T/stop ]] && break
        echo "A $n" >>"$T/log.$id"
        if timeout 30 qemu-io -f raw -c "write -P $pat $off $len" -c flush "$uri" \
            >"$T/w.$id.out" 2>&1 && ! grep -Eiq 'fail|error' "$T/w.$id.out"; then
            echo "F $n" >>"$T/log.$id"
        fi
        sleep 0.05
    done
}
: >"$T/log.0"
: >"$T/log.1"

# check_flushed URI: read -P every flushed write through URI.
check_flushed() {
    local uri="$1" cmds=() n off len pat
    while read -r n off len pat; do
        cmds+=(-c "read -P $pat $off $len")
    done < <(awk 'FILENAME ~ /log/ { if ($1 == "F") f[$2] = 1; next } ($1 in f)' \
        "$T/log.0" "$T/log.1" "$T/plan.0" "$T/plan.1")
    ((${#cmds[@]} > 0)) || { echo 0; return 0; }
    if ! timeout 60 qemu-io -r -f raw "${cmds[@]}" "$uri" >"$T/check.out" 2>&1 ||
        grep -Eiq 'fail|error|mismatch' "$T/check.out"; then
        grep -Ei -m5 -B2 'fail|error|mismatch' "$T/check.out" >&2 || tail -n 20 "$T/check.out" >&2
        fail "$1: a write acknowledged with a completed flush does not read back after kill -9 and restart"
    fi
    echo $((${#cmds[@]} / 2))
}

mid=0
for ((round = 1; round <= ROUNDS; round++)); do
    # nbdkit 1.32 may abort when a client vanishes with replies pending
    # ("raw_send_socket: Assertion `sock >= 0' failed"): not what is tested here.
    if ! _alive "$SOURCE_PID"; then
        note "round $round: nbdkit (the source) died after the last kill -9; restarting it"
        wait "$SOURCE_PID" 2>/dev/null || true
        start_source "$T/src.sock" "${source_args[@]}"
        src_restarts=$((src_restarts + 1))
    fi
    start_streamer "$src" "$store" --region-size 64K --rate 1M --batch 256K
    spid=$STREAMER_PID
    checked="$(check_flushed "$STREAMER_URI")"
    rm -f "$T/stop"
    writer 0 "$STREAMER_URI" &
    w0=$!
    writer 1 "$STREAMER_URI" &
    w1=$!
    register_pid "$w0"
    register_pid "$w1"
    # A random moment: 0.2 to 1.8 s.
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.2 + 1.6 * r / 32768 }')"
    present="$(st "$store" regions_present)"
    kill -KILL "$spid"
    wait "$spid" 2>/dev/null || true
    touch "$T/stop"
    wait "$w0" "$w1" 2>/dev/null || true
    ((present < regions)) && mid=$((mid + 1))
    j="$(status_json "$store")" || fail "status of the store after kill -9 (round $round)"
    note "round $round: killed at $present/$regions regions present; $checked flushed writes verified; stored state $(jq -r .stored_state <<<"$j"), $(jq -r .regions_present <<<"$j") present"
done
((mid >= ROUNDS / 2)) || fail "only $mid of $ROUNDS kills happened during hydration (hydration too fast for the test)"
attempts=$(cat "$T/log.0" "$T/log.1" | grep -c '^A' || true)
flushed=$(cat "$T/log.0" "$T/log.1" | grep -c '^F' || true)
((flushed >= 20)) || fail "only $flushed writes were flushed in $ROUNDS rounds (too few to mean anything)"
pass "$ROUNDS rounds of kill -9 ($mid during hydration), $attempts writes, $flushed flushed: every flushed write read back after each restart (source restarted $src_restarts times)"

# Completion: a restart with no limit hydrates the rest.
if ! _alive "$SOURCE_PID"; then
    wait "$SOURCE_PID" 2>/dev/null || true
    start_source "$T/src.sock" "${source_args[@]}"
fi
start_streamer "$src" "$store" --region-size 64K
check_flushed "$STREAMER_URI" >/dev/null
wait_state "$store" detached 90
stop_server_ok "$STREAMER_PID"
expect_eq "$(st "$store" regions_present)" "$regions" "regions_present after the final restart"

python3 - "$img" "$store/data" "$RS" "$T/plan.0" "$T/plan.1" "$T/log.0" "$T/log.1" <<'PY' ||
import sys
img, data, rs = sys.argv[1], sys.argv[2], int(sys.argv[3])
plan = {}
for p in sys.argv[4:6]:
    for line in open(p):
        n, off, length, pat = map(int, line.split())
        plan[n] = (off, length, pat)
attempted, flushed = set(), set()
for p in sys.argv[6:8]:
    for line in open(p):
        k, n = line.split()
        (attempted if k == "A" else flushed).add(int(n))
want = open(img, "rb").read()
got = open(data, "rb").read()
assert len(got) == len(want), f"data file size {len(got)} != {len(want)}"
errors = []
written = bytearray(len(want) // 4096)  # 4 KiB blocks inside some attempted write
for n in sorted(attempted):
    off, length, pat = plan[n]
    p = bytes([pat]) * 4096
    for b in range(off, off + length, 4096):
        written[b // 4096] = 1
        g, w = got[b:b + 4096], want[b:b + 4096]
        if n in flushed:
            if g != p:
                errors.append(f"flushed write {n} (pattern {pat}) at {off}+{length}: block {b} lost")
        elif g != p and g != w:
            errors.append(f"unflushed write {n} at {off}+{length}: block {b} is neither pattern {pat} nor image data")
for blk in range(len(written)):
    if not written[blk]:
        b = blk * 4096
        if got[b:b + 4096] != want[b:b + 4096]:
            errors.append(f"block {b} (region {b // rs}), never written, differs from the image")
for e in errors[:10]:
    print(e)
if errors:
    sys.exit(f"{len(errors)} bad 4 KiB blocks in the local copy")
print(f"checked {len(attempted)} writes ({len(flushed)} flushed)")
PY
    fail "the local copy after $ROUNDS crashes is wrong"
pass "after the last restart hydration completed; local copy = image + flushed writes (+ possibly unflushed ones)"
