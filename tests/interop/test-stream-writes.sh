#!/usr/bin/env bash
# Client writes during hydration persist and are never overwritten by a
# fetch: qemu-io writes patterns (inside one missing region, across two,
# whole regions, partial + whole + partial, into source holes, into a region
# already present, the last bytes of the image with FUA, zeroes, concurrent
# aio writes to one missing region) while rate-limited background hydration
# runs over a slow source (100 ms per read, so batches stay in flight), then
# more writes aimed just ahead of the hydration front. After `detached`:
# read back with `qemu-io read -P` through the stream, the local data file
# equal to a model (image + writes) byte for byte, and again through a
# streamer restarted on the complete store with the source gone.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 300
need nbdkit nbdinfo qemu-img qemu-io jq python3

MiB=$((1024 * 1024))
SIZE_MIB=96
size=$((SIZE_MIB * MiB))
img="$T/image.img"
make_holey_image "$img" $SIZE_MIB
# Regions 6, 13, 18 and 19 are holes in make_holey_image's layout.
python3 - "$img" <<'PY' || fail "make_holey_image layout changed: regions 6, 13, 18, 19 must be holes"
import sys
f = open(sys.argv[1], "rb")
for r in (6, 13, 18, 19):
    f.seek(r << 20)
    if f.read(1 << 20).count(0) != 1 << 20:
        sys.exit(f"region {r} is not a hole")
PY

start_source "$T/src.sock" --filter=delay file "$img" rdelay=100ms
src_pid=$SOURCE_PID
src="$SOURCE_URI"
store="$T/store"
start_streamer "$src" "$store" --rate 3M --batch 2M --in-flight 4
uri="$STREAMER_URI"
streamer_pid=$STREAMER_PID

# Operations, in order: "KIND PATTERN OFFSET LENGTH"; KIND w (write), wf
# (FUA write), z (write zeroes), aio (parallel writes, ended by aio_flush).
ops="$T/ops"
cat >"$ops" <<OPS
w 0x11 $((5 * MiB + 1000)) 3000
w 0x12 $((9 * MiB - 512)) 1024
w 0x13 $((16 * MiB)) $MiB
w 0x14 $((24 * MiB + 4096)) $((3 * MiB))
w 0x15 $((6 * MiB + 100)) 200
w 0x16 $((13 * MiB)) $MiB
w 0x17 $((18 * MiB + 4096)) $MiB
wf 0x19 $((size - 4096)) 4096
z 0 $((40 * MiB + 100)) 5000
aio 0x1a $((50 * MiB)) 65536
aio 0x1b $((50 * MiB + 65536)) 65536
aio 0x1c $((50 * MiB + 300000)) 100
aio 0x1d $((52 * MiB - 100)) 200
OPS

# run_qemu_io WHAT ARGS...: qemu-io must exit 0 and report no failure.
run_qemu_io() {
    local what="$1"
    shift
    if ! qemu-io "$@" >"$T/qemu-io.log" 2>&1 ||
        grep -Eiq 'fail|error|mismatch' "$T/qemu-io.log"; then
        tail -n 30 "$T/qemu-io.log" >&2
        fail "$what"
    fi
}

# qemu-io arguments for one op line.
op_args() {
    local kind="$1" pat="$2" off="$3" len="$4"
    case $kind in
        w) echo "write -P $pat $off $len" ;;
        wf) echo "write -f -P $pat $off $len" ;;
        z) echo "write -z $off $len" ;;
        aio) echo "aio_write -P $pat $off $len" ;;
    esac
}

# Sequential writes, one qemu-io each (with short pauses, so hydration runs
# between them); the aio batch in one qemu-io.
aio_args=()
while read -r kind pat off len; do
    if [[ $kind == aio ]]; then
        aio_args+=(-c "$(op_args "$kind" "$pat" "$off" "$len")")
        continue
    fi
    run_qemu_io "qemu-io $kind $pat $off $len during hydration" -f raw -c "$(op_args "$kind" "$pat" "$off" "$len")" "$uri"
    sleep 0.2
done <"$ops"
run_qemu_io "parallel aio writes into missing regions" -f raw "${aio_args[@]}" -c aio_flush "$uri"

# A write to a region made present by a read first.
run_qemu_io "read of region 30" -r -f raw -c "read $((30 * MiB)) 4096" "$uri"
echo "w 0x18 $((30 * MiB + 512)) 512" >>"$ops"
run_qemu_io "write into a present region" -f raw -c "write -P 0x18 $((30 * MiB + 512)) 512" "$uri"

state="$(st "$store" state)"
[[ $state == streaming ]] || fail "hydration ended too early for the test (state $state): the writes did not race it"

# Racing writes at the hydration front (the first missing region): a partial
# write to it, a whole-region write to the next one and a partial write to
# the one after, so that they land on regions a background batch has
# claimed or is about to claim. Each region is written at most once.
used=" 5 6 8 9 13 16 18 19 24 25 26 27 30 40 50 51 52 $((SIZE_MIB - 1)) "
racing=0
for ((i = 0; i < 12; i++)); do
    front="$(nbdinfo --map=imgstream:present "$uri" | awk '$3 == 0 { print $1 / 1048576; exit }')"
    [[ -n $front ]] || break
    for r in $front $((front + 1)) $((front + 2)); do
        ((r < SIZE_MIB - 1)) || continue
        [[ $used == *" $r "* ]] && continue
        used+="$r "
        pat=$(printf '0x%02x' $((0x40 + racing)))
        if ((r == front + 1)); then
            off=$((r * MiB)) len=$MiB
        else
            off=$((r * MiB + 4096 * (racing % 5))) len=8192
        fi
        echo "w $pat $off $len" >>"$ops"
        run_qemu_io "racing write $pat at region $r (front $front)" -f raw -c "write -P $pat $off $len" "$uri"
        racing=$((racing + 1))
    done
    sleep 0.3
done
((racing >= 4)) || fail "only $racing racing writes happened (hydration too fast for the test)"
note "$racing writes raced the hydration front"

# Let hydration finish.
expect_ok "ctl rate 0" "$IMGSTREAM" ctl "$store" rate 0
wait_state "$store" detached 120
pass "writes during hydration (partial, whole, holes, FUA, zeroes, aio, $racing racing the front); hydration completed"

# Read back through the stream: every op range that no later op touched.
read_cmds=()
while read -r kind pat off len; do
    case $kind in
        w | wf | aio) read_cmds+=(-c "read -P $pat $off $len") ;;
        z) read_cmds+=(-c "read -P 0 $off $len") ;;
    esac
done <"$ops"
run_qemu_io "read -P of every write through the stream after detach" -r -f raw "${read_cmds[@]}" "$uri"
pass "qemu-io read -P of every write after detach"

stop_server_ok "$streamer_pid"

# The local copy: the image with every op applied, byte for byte.
python3 - "$img" "$ops" "$store/data" <<'PY' || fail "local data differs from the image + writes"
import sys
img, ops, data = sys.argv[1:]
want = bytearray(open(img, "rb").read())
for line in open(ops):
    kind, pat, off, length = line.split()
    pat, off, length = int(pat, 16), int(off), int(length)
    want[off:off + length] = bytes([pat if kind != "z" else 0]) * length
got = open(data, "rb").read()
if len(got) != len(want):
    sys.exit(f"size {len(got)} != {len(want)}")
if got != want:
    M = 1 << 20
    bad = [r for r in range(len(want) // M) if got[r * M:(r + 1) * M] != want[r * M:(r + 1) * M]]
    for r in bad[:8]:
        g, w = got[r * M:(r + 1) * M], want[r * M:(r + 1) * M]
        first = next(i for i in range(M) if g[i] != w[i])
        print(f"region {r}: first difference at +{first}: got 0x{g[first]:02x}, want 0x{w[first]:02x}")
    sys.exit(f"{len(bad)} regions differ")
PY
j="$(status_json "$store")"
expect_eq "$(jq -r .regions_present <<<"$j")" "$SIZE_MIB" "regions_present"
pass "local data = image + writes, byte for byte"

# ---------------------------------------------------------------- no fetch, one fetch
# --no-background, so that the counters show exactly what the writes and
# reads fetched: whole-region write, trim and write-zeroes of whole missing
# regions fetch nothing; a partial write fetches its region once; eight
# concurrent readers of two missing regions (100 ms per source read) fetch
# each region once.
s2="$T/store2"
start_streamer "$src" "$s2" --no-background
uri2="$STREAMER_URI"
run_qemu_io "whole-region write, discard, write-zeroes on missing regions" -f raw \
    -c "write -P 0x61 $((1 * MiB)) $MiB" -c "discard $((3 * MiB)) $MiB" \
    -c "write -z $((4 * MiB)) $((2 * MiB))" -c "write -z -u $((7 * MiB)) $MiB" -c flush "$uri2"
expect_eq "$(st "$s2" bytes_fetched_demand)" 0 "bytes fetched by whole-region write / trim / zero"
expect_eq "$(st "$s2" regions_present)" 5 "regions present after whole-region write, trim and zero of 5 regions"
run_qemu_io "partial write to a missing region" -f raw -c "write -P 0x62 $((10 * MiB + 100)) 100" "$uri2"
expect_eq "$(st "$s2" bytes_fetched_demand)" "$MiB" "bytes fetched by one partial write"
readers=()
for ((k = 0; k < 8; k++)); do
    qemu-io -r -f raw -c "read $((20 * MiB + (k % 4) * 200000)) $((MiB + 4096))" "$uri2" >"$T/reader$k.out" 2>&1 &
    readers+=($!)
    register_pid "$!"
done
for pid in "${readers[@]}"; do
    wait "$pid" || fail "a concurrent reader failed: $(cat "$T"/reader*.out)"
done
expect_eq "$(st "$s2" bytes_fetched_demand)" $((3 * MiB)) "bytes fetched by 8 concurrent readers of regions 20-21 (+ the partial write)"
run_qemu_io "read back" -r -f raw -c "read -P 0x61 $((1 * MiB)) $MiB" -c "read -P 0 $((4 * MiB)) $((2 * MiB))" \
    -c "read -P 0 $((7 * MiB)) $MiB" -c "read -P 0x62 $((10 * MiB + 100)) 100" "$uri2"
stop_server_ok "$STREAMER_PID"
python3 - "$img" "$s2/data" <<'PY' || fail "regions merged or fetched on demand differ from the image"
import sys
M = 1 << 20
a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
region10 = bytearray(a[10 * M:11 * M])
region10[100:200] = b"\x62" * 100
if b[10 * M:11 * M] != bytes(region10):
    sys.exit("region 10 (partial write merged with the source) is wrong")
if b[20 * M:22 * M] != a[20 * M:22 * M]:
    sys.exit("regions 20-21 (concurrent readers) differ from the image")
PY
pass "whole-region write / trim / zero fetch nothing, a partial write fetches once, concurrent readers fetch each region once"

# The source gone: a streamer on the complete store serves the same.
kill_source "$src_pid" TERM
start_streamer "$src" "$store"
expect_eq "$(st "$store" state)" detached "state of a complete store restarted without its source"
run_qemu_io "read -P through a streamer on the complete store, source gone" -r -f raw "${read_cmds[@]}" "$STREAMER_URI"
expect_ok "qemu-img compare through the restarted streamer" \
    qemu-img compare -f raw "$store/data" -F raw "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
pass "complete store served without its source"
