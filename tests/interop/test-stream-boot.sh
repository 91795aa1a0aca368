#!/usr/bin/env bash
# The bootable test disk boots under qemu (TCG) through `imgstream stream`
# from a "remote" source (nbdkit file plugin, 10 ms per read); after
# hydration completes (detached) the source and the streamer are stopped and
# the disk boots again from the store's data file alone, and from
# `imgstream stream` on the complete store with the source gone (it must
# start without the source). The guest checks the md5 of its data files.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 900
need qemu-system-x86_64 nbdkit nbdinfo qemu-img jq

cache="${IMGSTREAM_CACHE:-$REPO_ROOT/.cache}"
mkdir -p "$cache"
disk="$cache/boot-disk.img"
"$REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$disk" >"$T/make.log" 2>&1 ||
    { tail -20 "$T/make.log" >&2; fail "could not build the bootable test disk"; }
md5=$(cat "$disk.md5")
# A private copy: the source must not change under us (and the cache may be rebuilt).
cp "$disk" "$T/disk.img"
disk="$T/disk.img"

boot() { # boot WHAT DRIVE_SPEC
    local out
    out=$(BOOT_EXPECT_MD5="$md5" "$REPO_ROOT/tests/lib/boot.sh" "$2" 300) ||
        fail "guest did not boot $1: $out"
    echo "$out" | grep -q "IMGSTREAM-BOOT-OK $md5" || fail "marker missing booting $1: $out"
    echo "$out" | sed -n 's/^elapsed_seconds=//p'
}

start_source "$T/src.sock" --filter=delay file "$disk" rdelay=10ms
src_pid=$SOURCE_PID
src="$SOURCE_URI"
store="$T/store"
# Background hydration slowed to 1 MB/s during the boot, so that the guest's
# reads find missing regions and go to the source on demand.
start_streamer "$src" "$store" --rate 1M
streamer_pid=$STREAMER_PID
secs=$(boot "through imgstream stream (source 10 ms per read)" "$STREAMER_URI")
j="$(status_json "$store")"
note "booted through the stream in ${secs}s: $j"
demand="$(jq -r .bytes_fetched_demand <<<"$j")"
((demand > 0)) || fail "the boot fetched nothing on demand (hydration outran it): the test tests nothing"
pass "booted through imgstream stream in ${secs}s ($((demand / 1048576)) MiB fetched on demand)"

expect_ok "ctl rate 0" "$IMGSTREAM" ctl "$store" rate 0
wait_state "$store" detached 300
j="$(status_json "$store")"
expect_eq "$(jq -r .regions_present <<<"$j")" "$(jq -r .regions_total <<<"$j")" "regions_present after detach"
stop_server_ok "$streamer_pid"
kill_source "$src_pid" TERM
expect_ok "qemu-img compare of the local copy with the disk" qemu-img compare -f raw "$store/data" -F raw "$disk"
pass "hydration completed: the local copy is identical to the disk"

secs=$(boot "from the store's data file" "$store/data")
pass "booted from the local data file alone in ${secs}s"

# The source is gone (its socket does not exist): the streamer must start on the complete store.
[[ ! -e $T/src.sock ]] || rm -f "$T/src.sock"
start_streamer "$src" "$store"
expect_eq "$(st "$store" state)" detached "state of the complete store served without its source"
secs=$(boot "through imgstream stream on the complete store, source gone" "$STREAMER_URI")
stop_server_ok "$STREAMER_PID"
pass "booted through imgstream stream on the complete store with the source gone in ${secs}s"
