#!/usr/bin/env bash
# qemu-io against imgstream serve: pattern writes at aligned, unaligned and
# large (split by the client) offsets and sizes, zero writes (with and
# without unmap), discard, flush, FUA writes and parallel aio writes; read
# back through a new connection, then check the file on disk after the
# server stopped against a model of every operation. A --read-only export
# refuses writes.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 120
need qemu-io python3

MiB=$((1024 * 1024))
img="$T/disk.img"
make_random_file "$img" 64
cp "$img" "$T/orig.img"

# Operations: "KIND PATTERN OFFSET LENGTH". KIND: w (write), wf (FUA
# write), z (write zeroes), zu (write zeroes, unmap allowed), aio (one of a
# batch of parallel writes, ended by aio_flush), d (discard), f (flush).
ops="$T/ops"
cat >"$ops" <<OPS
w 0xab 0 4096
w 0xac 4095 3
w 0xad 12345 100000
w 0xae $((1 * MiB)) $((4 * MiB))
w 0xaf $((6 * MiB + 1)) $((33 * MiB - 3))
wf 0xb0 $((20 * MiB)) 65536
wf 0xb1 $((20 * MiB + 70000)) 333
z 0 $((21 * MiB)) $((1 * MiB))
zu 0 $((22 * MiB + 512)) 100000
z 0 $((23 * MiB + 7)) 9
aio 0xc0 $((40 * MiB)) $((1 * MiB))
aio 0xc1 $((41 * MiB)) $((1 * MiB - 1000))
aio 0xc2 $((42 * MiB + 17)) 4096
aio 0xc3 $((43 * MiB)) $((4 * MiB))
aio 0xc4 $((47 * MiB)) 512
aio 0xc5 $((47 * MiB + 512)) 512
aio 0xc6 $((48 * MiB)) 65536
aio 0xc7 $((49 * MiB - 1)) 2
f 0 0 0
d 0 $((52 * MiB)) $((4 * MiB))
d 0 $((57 * MiB + 100)) 5000
f 0 0 0
w 0xd0 $((64 * MiB - 4096)) 4096
w 0xd1 $((64 * MiB - 1)) 1
OPS

# qemu-io command lines for the writes, and for reading back.
write_cmds=()
read_cmds=()
in_aio=0
while read -r kind pat off len; do
    if [[ $kind != aio && $in_aio = 1 ]]; then
        write_cmds+=(-c aio_flush)
        in_aio=0
    fi
    case $kind in
        w) write_cmds+=(-c "write -P $pat $off $len") ;;
        wf) write_cmds+=(-c "write -f -P $pat $off $len") ;;
        z) write_cmds+=(-c "write -z $off $len") ;;
        zu) write_cmds+=(-c "write -z -u $off $len") ;;
        aio) write_cmds+=(-c "aio_write -P $pat $off $len"); in_aio=1 ;;
        d) write_cmds+=(-c "discard $off $len") ;;
        f) write_cmds+=(-c flush) ;;
    esac
done <"$ops"

# The expected final content of every byte except discarded ranges (whose
# content is unspecified by NBD: old data or zeroes).
python3 - "$T/orig.img" "$ops" "$T/expected.img" "$T/discarded" <<'PY'
import sys
orig, ops, out, disc = sys.argv[1:]
data = bytearray(open(orig, "rb").read())
discarded = []
for line in open(ops):
    kind, pat, off, length = line.split()
    pat, off, length = int(pat, 16), int(off), int(length)
    if kind in ("w", "wf", "aio"):
        data[off:off + length] = bytes([pat]) * length
    elif kind in ("z", "zu"):
        data[off:off + length] = bytes(length)
    elif kind == "d":
        discarded.append((off, length))
open(out, "wb").write(data)
with open(disc, "w") as f:
    for off, length in discarded:
        f.write(f"{off} {length}\n")
PY
while read -r kind pat off len; do
    case $kind in
        w | wf | aio) read_cmds+=(-c "read -P $pat $off $len") ;;
        z | zu) read_cmds+=(-c "read -P 0 $off $len") ;;
    esac
done < <(python3 - "$ops" <<'PY'
import sys
# Only read back ranges that no later operation overwrote.
ops = [l.split() for l in open(sys.argv[1])]
for i, (kind, pat, off, length) in enumerate(ops):
    off, length = int(off), int(length)
    if kind in ("f",) or length == 0:
        continue
    later = any(k != "f" and int(o) < off + length and off < int(o) + int(n)
                for k, p, o, n in ops[i + 1:])
    if not later:
        print(kind, pat, off, length)
PY
)

# run_qemu_io WHAT ARGS...: qemu-io must exit 0 and print no failure.
run_qemu_io() {
    local what="$1"
    shift
    if ! qemu-io "$@" >"$T/qemu-io.log" 2>&1 ||
        grep -Eiq 'fail|error|mismatch' "$T/qemu-io.log"; then
        tail -n 30 "$T/qemu-io.log" >&2
        fail "$what"
    fi
}

start_server "$img"
uri="$SERVER_URI"
run_qemu_io "qemu-io writes (${#write_cmds[@]} arguments)" -f raw "${write_cmds[@]}" "$uri"
pass "qemu-io writes, zeroes, FUA, aio, discard, flush"

run_qemu_io "qemu-io read-back with -P through a new connection" -f raw "${read_cmds[@]}" "$uri"
# A read with the wrong pattern must fail (guards against a vacuous pass).
if qemu-io -f raw -c "read -P 0xab 1 4094" -c "read -P 0x00 0 4096" "$uri" >"$T/neg.log" 2>&1 &&
    ! grep -q 'Pattern verification failed' "$T/neg.log"; then
    fail "qemu-io read -P with a wrong pattern did not fail"
fi
grep -q 'Pattern verification failed' "$T/neg.log" || fail "qemu-io wrong pattern: no verification failure printed"
pass "qemu-io read-back"

stop_server_ok "$SERVER_PID"

# On disk: everything outside discarded ranges is exactly as modelled;
# discarded ranges hold either their old bytes or zeroes.
python3 - "$img" "$T/expected.img" "$T/discarded" <<'PY' || fail "file on disk differs from the model of the qemu-io operations"
import sys
got = open(sys.argv[1], "rb").read()
want = bytearray(open(sys.argv[2], "rb").read())
assert len(got) == len(want), f"size {len(got)} != {len(want)}"
for line in open(sys.argv[3]):
    off, n = map(int, line.split())
    g, w = got[off:off + n], want[off:off + n]
    for b in range(0, n, 512):
        gs, ws = g[b:b + 512], w[b:b + 512]
        if gs != ws and gs.count(0) != len(gs):
            raise SystemExit(f"discarded sector at {off + b} is neither old data nor zero")
    want[off:off + n] = g
if got != want:
    first = next(i for i in range(len(got)) if got[i] != want[i])
    raise SystemExit(f"first difference at offset {first}: got 0x{got[first]:02x}, want 0x{want[first]:02x}")
PY
pass "file on disk matches every operation"

# Read-only export: qemu-io cannot open it for writing, and with -r its
# writes are refused; the file is unchanged.
sha_before="$(sha256sum <"$img")"
start_server "$img" --read-only
expect_fail "qemu-io opening a --read-only export read-write" qemu-io -f raw -c "write -P 0x55 0 4096" "$SERVER_URI"
rc=0
qemu-io -r -f raw -c "write -P 0x55 0 4096" "$SERVER_URI" >"$T/ro.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] || fail "qemu-io -r write to a --read-only export exited 0"
run_qemu_io "qemu-io read from a --read-only export" -r -f raw -c "read -P 0xab 0 4095" "$SERVER_URI"
stop_server_ok "$SERVER_PID"
expect_eq "$(sha256sum <"$img")" "$sha_before" "image checksum after write attempts on a --read-only export"
pass "--read-only export refuses qemu-io writes"
