#!/usr/bin/env bash
# qemu-img against imgstream serve: virtual size, compare with the file,
# and convert out of and into the export.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 90
need qemu-img

img="$T/disk.img"
size=$((48 * 1024 * 1024 + 12288)) # not a multiple of 1 MiB
truncate -s "$size" "$img"
make_random_file "$T/rand" 5
dd if="$T/rand" of="$img" bs=1M seek=3 conv=notrunc status=none
dd if="$T/rand" of="$img" bs=4096 seek=$((size / 4096 - 2)) count=2 conv=notrunc status=none

start_server "$img" --read-only
uri="$SERVER_URI"

qemu-img info --output=json "$uri" >"$T/info.json" || fail "qemu-img info $uri failed"
vsize="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["virtual-size"])' "$T/info.json")"
expect_eq "$vsize" "$size" "qemu-img info virtual-size"
pass "qemu-img info virtual size"

expect_ok "qemu-img compare export vs file" qemu-img compare -f raw -F raw "$uri" "$img"
# compare must notice a difference too (guards against a vacuous pass).
cp --sparse=always "$img" "$T/other.img"
printf 'x' | dd of="$T/other.img" bs=1 seek=$((3 * 1024 * 1024 + 777)) conv=notrunc status=none
rc=0
qemu-img compare -f raw -F raw "$uri" "$T/other.img" >"$T/cmp.log" 2>&1 || rc=$?
expect_eq "$rc" 1 "qemu-img compare against a different file (exit status)"
# qemu-img reports the 512-byte sector holding the first difference.
grep -q "mismatch at offset $(((3 * 1024 * 1024 + 777) / 512 * 512))" "$T/cmp.log" ||
    fail "qemu-img compare did not name the differing sector: $(cat "$T/cmp.log")"
pass "qemu-img compare"

# convert export -> qcow2 -> compare, using several requests in flight.
expect_ok "qemu-img convert export -> qcow2" qemu-img convert -m 8 -W -f raw -O qcow2 "$uri" "$T/copy.qcow2"
expect_ok "qemu-img compare qcow2 copy vs file" qemu-img compare -F raw "$T/copy.qcow2" "$img"
stop_server_ok "$SERVER_PID"
pass "qemu-img convert from the export"

# convert qcow2 -> a writable export (sparse target), then compare on disk.
target="$T/target.img"
truncate -s "$size" "$target"
start_server "$target"
expect_ok "qemu-img convert qcow2 -> export" qemu-img convert -m 8 -W -n -f qcow2 -O raw "$T/copy.qcow2" "$SERVER_URI"
expect_ok "qemu-img compare export vs source" qemu-img compare -f raw -F raw "$SERVER_URI" "$img"
stop_server_ok "$SERVER_PID"
expect_same_file "$target" "$img" "file written through qemu-img convert"
pass "qemu-img convert into the export"
