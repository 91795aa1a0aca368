#!/usr/bin/env bash
# Several clients at once: four qemu-io processes write disjoint regions
# (random data from files, patterns, parallel aio, unaligned tails) while
# two readers stream the whole export; every client must succeed and the
# file must hold exactly what each wrote.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 120
need qemu-io nbdcopy python3

MiB=$((1024 * 1024))
clients=4
region=$((16 * MiB))
img="$T/disk.img"
truncate -s $((clients * region + 3 * MiB)) "$img"
start_server "$img"

# Client i: even chunks k get 1 MiB of its random file (write -s), odd
# chunks get pattern 0x(i)(k) over 1 MiB - 7k bytes through aio_write.
plan="$T/plan"
: >"$plan"
for ((i = 0; i < clients; i++)); do
    make_random_file "$T/src$i" 1
    cmds=()
    for ((k = 0; k < 16; k++)); do
        off=$((i * region + k * MiB))
        if ((k % 2 == 0)); then
            cmds+=(-c "write -s $T/src$i $off $MiB")
            echo "file $T/src$i $off $MiB" >>"$plan"
        else
            pat=$(printf '0x%x%x' "$i" "$k")
            len=$((MiB - 7 * k))
            cmds+=(-c "aio_write -P $pat $off $len")
            echo "pat $pat $off $len" >>"$plan"
        fi
    done
    cmds+=(-c aio_flush -c flush)
    # Read own region back on the same connection.
    for ((k = 1; k < 16; k += 2)); do
        cmds+=(-c "read -P $(printf '0x%x%x' "$i" "$k") $((i * region + k * MiB)) $((MiB - 7 * k))")
    done
    qemu-io -f raw "${cmds[@]}" "$SERVER_URI" >"$T/client$i.log" 2>&1 &
    pids[i]=$!
    register_pid "${pids[i]}"
done
for r in 1 2; do
    nbdcopy --no-extents "$SERVER_URI" null: >"$T/reader$r.log" 2>&1 &
    rpids[r]=$!
    register_pid "${rpids[r]}"
done

for ((i = 0; i < clients; i++)); do
    rc=0
    wait "${pids[i]}" || rc=$?
    if [[ $rc -ne 0 ]] || grep -Eiq 'fail|error' "$T/client$i.log"; then
        tail -n 20 "$T/client$i.log" >&2
        fail "qemu-io client $i exited $rc or reported an error"
    fi
done
for r in 1 2; do
    wait "${rpids[r]}" || fail "reader $r (nbdcopy -> null:) failed: $(tail -n 5 "$T/reader$r.log")"
done
pass "$clients concurrent writers and 2 readers succeeded"

# Each client now reads a neighbour's region (cross-connection visibility).
for ((i = 0; i < clients; i++)); do
    j=$(((i + 1) % clients))
    qemu-io -r -f raw -c "read -P $(printf '0x%x%x' "$j" 3) $((j * region + 3 * MiB)) $((MiB - 21))" \
        "$SERVER_URI" >"$T/cross$i.log" 2>&1 &
    pids[i]=$!
done
for ((i = 0; i < clients; i++)); do
    rc=0
    wait "${pids[i]}" || rc=$?
    if [[ $rc -ne 0 ]] || grep -Eiq 'fail|error' "$T/cross$i.log"; then
        fail "client $i reading client $(((i + 1) % clients))'s data: $(tail -n 3 "$T/cross$i.log")"
    fi
done
# Many short connections at once.
for ((i = 0; i < 32; i++)); do
    nbdinfo --size "$SERVER_URI" >"$T/many$i.out" 2>&1 &
    pids[i]=$!
done
for ((i = 0; i < 32; i++)); do
    wait "${pids[i]}" || fail "connection $i of 32 concurrent nbdinfo failed: $(cat "$T/many$i.out")"
    expect_eq "$(cat "$T/many$i.out")" "$(stat -c %s "$img")" "size seen by concurrent nbdinfo $i"
done
stop_server_ok "$SERVER_PID"
pass "32 concurrent connections"

python3 - "$img" "$plan" <<'PY' || fail "file content differs from what the clients wrote"
import sys
img = open(sys.argv[1], "rb").read()
for line in open(sys.argv[2]):
    kind, what, off, length = line.split()
    off, length = int(off), int(length)
    if kind == "file":
        want = open(what, "rb").read(length)
    else:
        want = bytes([int(what, 16)]) * length
    if img[off:off + length] != want:
        raise SystemExit(f"region {kind} {what} at {off} (+{length}) differs")
PY
pass "file holds every client's data"
