#!/usr/bin/env bash
# Change tracking survives kill -9 (docs/track-format.md): `imgstream serve
# --track` under a random-write load from qemu-io, killed with SIGKILL at a
# random moment, 24 rounds, each with a fresh tracking file. After each kill,
# `imgstream track show` (which recovers the file as a restarting server
# would) must name the region of every write qemu-io saw acknowledged. The
# image is 4 GiB (sparse) so that the writes spread over more 4 MiB extents
# than the activity log holds (256): extents are evicted to the bitmap all
# the time. A clean stop leaves exactly the written regions (no extents).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 600
need qemu-io jq python3

img="$T/disk.img"
truncate -s 4G "$img"
ROUNDS=${TRACK_CRASH_ROUNDS:-24}

check_round() { # LOG TRACK -> fails when an acknowledged write is not named
    python3 - "$1" "$2" <<'PY'
import json, re, subprocess, sys, os
log, track = sys.argv[1], sys.argv[2]
acked = [int(m.group(1)) for m in re.finditer(r"wrote \d+/\d+ bytes at offset (\d+)", open(log).read())]
j = json.loads(subprocess.check_output([os.environ["IMGSTREAM"], "track", "show", "--json", track]))
rs = j["region_size"]
dirty = set()
for first, count in j["runs"]:
    dirty.update(range(first, first + count))
missing = [o for o in acked if o // rs not in dirty]
print(len(acked), j["dirty_regions"])
if missing:
    print("acknowledged writes not named:", missing[:10], file=sys.stderr)
    sys.exit(1)
PY
}

total_acked=0
for ((round = 1; round <= ROUNDS; round++)); do
    track="$T/track"
    rm -f "$track"
    sock="$T/s$round.sock"
    "$IMGSTREAM" serve "$img" --track "$track" --listen "unix:$sock" >"$T/serve.out" 2>"$T/serve.err" &
    spid=$!
    register_pid "$spid"
    for _ in $(seq 50); do [[ -s $T/serve.out ]] && break; sleep 0.1; done
    [[ -s $T/serve.out ]] || fail "round $round: server did not start: $(cat "$T/serve.err")"
    # 2000 4 KiB writes at random offsets over the 4 GiB.
    mapfile -t cmds < <(python3 -c "
import random
r = random.Random($round)
for _ in range(2000):
    print('-c'); print('write -P %d %d 4k' % (r.randrange(1, 255), r.randrange(0, (4 << 30) // 4096) * 4096))")
    qemu-io -f raw "nbd+unix:///?socket=$sock" "${cmds[@]}" >"$T/io.log" 2>&1 &
    qpid=$!
    register_pid "$qpid"
    sleep "$(python3 -c "import random; print(random.Random($round * 7).uniform(0.05, 0.6))")"
    kill -KILL "$spid"
    wait "$spid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    read -r acked dirty < <(check_round "$T/io.log" "$track") ||
        fail "round $round: the tracking file lost an acknowledged write"
    total_acked=$((total_acked + acked))
    note "round $round: $acked writes acknowledged before kill -9, $dirty regions named"
done
((total_acked > 0)) || fail "no write was ever acknowledged: the test tests nothing"
pass "$ROUNDS rounds of kill -9 under write load: all $total_acked acknowledged writes named"

# A clean stop names exactly the regions written.
rm -f "$T/track"
out=$("$IMGSTREAM" serve "$img" --track "$T/track" --run "qemu-io -f raw \"\$uri\" -c 'write 0 4k' -c 'write 1G 4k' -c 'write 3G 64k'" 2>&1) ||
    fail "clean run failed: $out"
runs="$("$IMGSTREAM" track show --json "$T/track" | jq -c .runs)"
expect_eq "$runs" "[[0,1],[262144,1],[786432,16]]" "regions named after a clean stop"
pass "a clean stop names exactly the written regions"
