#!/usr/bin/env bash
# A BIOS boot under qemu-system-x86_64 (TCG) of the bootable test disk served by
# `imgstream serve`: the guest's init checks the md5 of its data files and prints
# IMGSTREAM-BOOT-OK <md5>, which must match the disk's recorded md5.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 400
need qemu-system-x86_64

cache="${IMGSTREAM_CACHE:-$REPO_ROOT/.cache}"
mkdir -p "$cache"
disk="$cache/boot-disk.img"
"$REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$disk" >"$T/make.log" 2>&1 ||
    { tail -20 "$T/make.log" >&2; fail "could not build the bootable test disk"; }
md5=$(cat "$disk.md5")

start_server "$disk" --read-only
out=$(BOOT_EXPECT_MD5="$md5" "$REPO_ROOT/tests/lib/boot.sh" "$SERVER_URI" 300) ||
    fail "guest did not boot from imgstream serve: $out"
note "$out"
echo "$out" | grep -q "IMGSTREAM-BOOT-OK $md5" || fail "marker missing: $out"
stop_server "$SERVER_PID"
[[ $STOP_STATUS -eq 0 ]] || fail "server exited $STOP_STATUS after the boot"
pass "booted from imgstream serve ($(echo "$out" | grep elapsed))"
