#!/usr/bin/env bash
# nbdinfo against imgstream serve: export size, every capability flag for a
# read-write and a --read-only export, export listing, and the allocation
# map of a sparse file.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 60
need nbdinfo python3

# A sparse 64 MiB file: data at [1M, 1M+64K) and [8M, 12M) and the last
# 4 KiB; holes elsewhere.
img="$T/sparse.img"
size=$((64 * 1024 * 1024))
truncate -s "$size" "$img"
head -c 65536 /dev/zero | tr '\0' A | dd of="$img" bs=64K seek=16 conv=notrunc status=none
dd if=/dev/urandom of="$img" bs=1M seek=8 count=4 conv=notrunc status=none
dd if=/dev/urandom of="$img" bs=4K seek=$((size / 4096 - 1)) count=1 conv=notrunc status=none

# can FLAG URI: 0 if nbdinfo says yes, 1 if no; fail on other errors.
can() {
    local rc=0
    nbdinfo --can "$1" "$2" || rc=$?
    case $rc in
        0) echo yes ;;
        2) echo no ;;
        *) fail "nbdinfo --can $1 $2 exited $rc" ;;
    esac
}
is() {
    local rc=0
    nbdinfo --is "$1" "$2" || rc=$?
    case $rc in
        0) echo yes ;;
        2) echo no ;;
        *) fail "nbdinfo --is $1 $2 exited $rc" ;;
    esac
}

check_flags() {
    local uri="$1" mode="$2" flag expected
    declare -A want
    if [[ $mode == rw ]]; then
        want=([write]=yes [flush]=yes [fua]=yes [trim]=yes [zero]=yes [fast-zero]=yes
              [cache]=yes [multi-conn]=yes [df]=yes [read]=yes [structured-reply]=yes)
    else
        # Read-only: no write, trim, zero, fast-zero or FUA (nothing to make
        # durable); flush, cache, multi-conn and df stay as for read-write.
        want=([write]=no [flush]=yes [fua]=no [trim]=no [zero]=no [fast-zero]=no
              [cache]=yes [multi-conn]=yes [df]=yes [read]=yes [structured-reply]=yes)
    fi
    for flag in "${!want[@]}"; do
        expected="${want[$flag]}"
        expect_eq "$(can "$flag" "$uri")" "$expected" "$mode export: nbdinfo --can $flag"
    done
    local ro=no
    [[ $mode == ro ]] && ro=yes
    expect_eq "$(is read-only "$uri")" "$ro" "$mode export: nbdinfo --is read-only"
    expect_eq "$(nbdinfo --size "$uri")" "$size" "$mode export: nbdinfo --size"

    # The same through the JSON output (is_read_only and can_* fields).
    nbdinfo --json "$uri" >"$T/info.json" || fail "nbdinfo --json $uri failed"
    python3 - "$T/info.json" "$mode" "$size" <<'PY' || fail "$mode export: nbdinfo --json fields wrong (see above)"
import json, sys
info = json.load(open(sys.argv[1]))
mode, size = sys.argv[2], int(sys.argv[3])
e = info["exports"][0]
rw = mode == "rw"
want = {"export-size": size, "is_read_only": not rw, "can_flush": True,
        "can_fua": rw, "can_trim": rw, "can_zero": rw, "can_fast_zero": rw,
        "can_cache": True, "can_multi_conn": True, "can_df": True}
bad = [f"{k}: want {v!r} got {e.get(k)!r}" for k, v in want.items() if e.get(k) != v]
if info.get("protocol") != "newstyle-fixed":
    bad.append(f"protocol {info.get('protocol')!r}")
if "base:allocation" not in e.get("contexts", []):
    bad.append("base:allocation context missing")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

start_server "$img"
check_flags "$SERVER_URI" rw
pass "read-write export flags and size"
stop_server_ok "$SERVER_PID"

start_server "$img" --read-only
check_flags "$SERVER_URI" ro
pass "read-only export flags and size"
stop_server_ok "$SERVER_PID"

# --list shows the export name (and description).
start_server "$img" --export disk0 --description "test disk"
case "$SERVER_URI" in
    *"/disk0?"* | *"/disk0") ;;
    *) fail "URI $SERVER_URI does not name export disk0" ;;
esac
nbdinfo --list --json "$SERVER_URI" >"$T/list.json" || fail "nbdinfo --list $SERVER_URI failed"
python3 - "$T/list.json" "$size" <<'PY' || fail "nbdinfo --list does not show export disk0"
import json, sys
info = json.load(open(sys.argv[1]))
names = [e.get("export-name") for e in info["exports"]]
print("exports:", names, file=sys.stderr)
e = [e for e in info["exports"] if e.get("export-name") == "disk0"]
assert e, "disk0 not listed"
assert e[0]["export-size"] == int(sys.argv[2]), "size in list"
assert e[0].get("description") == "test disk", f"description {e[0].get('description')!r}"
PY
nbdinfo --list "$SERVER_URI" | grep -q 'export="disk0"' || fail "nbdinfo --list (text) lacks export=\"disk0\""
# Asking for an export that does not exist fails.
bad_uri="${SERVER_URI/\/disk0/\/nosuch}"
expect_fail "connecting to a nonexistent export name" nbdinfo --size "$bad_uri"
pass "export listing"
stop_server_ok "$SERVER_PID"

# --map: holes and data where they are. The server may report at a coarser
# granularity than the file system but must never call data a hole.
start_server "$img" --read-only
nbdinfo --map --json "$SERVER_URI" >"$T/map.json" || fail "nbdinfo --map failed"
nbdinfo --map "$SERVER_URI" >&2 || true
python3 - "$T/map.json" "$img" "$size" <<'PY' || fail "nbdinfo --map does not match the file's data and holes"
import json, os, sys
m = json.load(open(sys.argv[1]))
path, size = sys.argv[2], int(sys.argv[3])
# Extents must tile [0, size) exactly.
pos = 0
for e in m:
    assert e["offset"] == pos, f"gap/overlap at {pos}: {e}"
    pos += e["length"]
assert pos == size, f"map covers {pos} of {size} bytes"
def state(off):
    for e in m:
        if e["offset"] <= off < e["offset"] + e["length"]:
            return e["type"]  # bit 0 hole, bit 1 zero
    raise AssertionError(off)
MiB = 1 << 20
data = [(1 * MiB, 64 * 1024), (8 * MiB, 4 * MiB), (size - 4096, 4096)]
holes = [(0, MiB), (2 * MiB, 6 * MiB), (16 * MiB, 32 * MiB)]
for off, ln in data:
    for o in range(off, off + ln, 4096):
        assert state(o) & 1 == 0, f"data at {o} reported as hole"
for off, ln in holes:
    for o in range(off, off + ln, 4096):
        assert state(o) & 1 == 1, f"hole at {o} reported as data"
        assert state(o) & 2 == 2, f"hole at {o} not reported as zero"
PY
pass "block status map of a sparse file"
stop_server_ok "$SERVER_PID"

# Block status follows writes: data written into a hole through the export
# is reported as data (never as a hole) on the next query.
need qemu-io
start_server "$img"
nbdinfo --map --json "$SERVER_URI" >/dev/null # let the server see the holes first
qemu-io -f raw -c "write -P 0x5a $((30 * 1024 * 1024 + 4096)) 8192" -c "write -P 0x5b $((40 * 1024 * 1024 + 100)) 10" \
    "$SERVER_URI" >"$T/qemu-io.log" 2>&1 || fail "qemu-io write into holes: $(cat "$T/qemu-io.log")"
nbdinfo --map --json "$SERVER_URI" >"$T/map2.json" || fail "nbdinfo --map after writes failed"
python3 - "$T/map2.json" <<'PY' || fail "nbdinfo --map reports freshly written data as a hole"
import json, sys
m = json.load(open(sys.argv[1]))
MiB = 1 << 20
for off in (30 * MiB + 4096, 30 * MiB + 8192, 40 * MiB + 100, 40 * MiB + 109):
    e = next(e for e in m if e["offset"] <= off < e["offset"] + e["length"])
    assert e["type"] & 1 == 0, f"offset {off} reported as hole after a write: {e}"
PY
stop_server_ok "$SERVER_PID"
pass "block status reports data written through the export"
