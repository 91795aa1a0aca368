#!/usr/bin/env bash
# A real Debian 12 (systemd, Debian's kernel and its own initramfs; see
# tests/fixtures/make-distro-disk.sh) boots under qemu (TCG) to the marker its
# systemd unit prints after multi-user.target, with the guest writing as it
# boots:
#   (a) from a qcow2 overlay on the cached image (the cache is never written);
#   (b) through `imgstream serve` of a copy, writable: the guest's writes go
#       through imgstream;
#   (c) through `imgstream stream` of it into a fresh store, the source an
#       nbdkit of the image, 5 ms per read, hydration slowed so the boot reads
#       on demand; then hydration completes.
# The guest verifies the md5 of every file dpkg installed (but the kernel's
# modules) and powers off; after (b) and (c) the disk it wrote is checked with
# e2fsck and must hold the record of that very boot (its boot id). The cached
# image is built first if absent (debootstrap: minutes; CI's first run).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
source "$(dirname "$0")/../lib/distro.sh"
test_init 1500
need qemu-system-x86_64 qemu-img nbdkit nbdinfo jq e2fsck debugfs

build_start=$SECONDS
disk=$(distro_disk) || fail "could not build the Debian test disk"
note "disk: $disk (ready in $((SECONDS - build_start)) s)"
md5=$(cat "$disk.md5")
disk_mtime=$(stat -c %Y "$disk")
size=$(stat -c %s "$disk")
# The layout of make-distro-disk.sh: /boot (ext2) at 1 MiB, / (ext4) at 257 MiB.
boot_off=$((1 << 20))
root_off=$((257 << 20))

# boot WHAT DRIVE_SPEC: the guest must print the marker with the disk's md5
# and power off; sets BOOT_OUT, BOOT_SECS (to the marker), BOOT_ID.
boot() {
    BOOT_OUT=$(BOOT_EXPECT_MD5="$md5" BOOT_WAIT_EXIT=60 BOOT_LOG="$T/serial-$1.log" \
        distro_boot "$2" 300) || {
        note "serial log: $(tail -n 40 "$T/serial-$1.log" | tr -d '\r')"
        fail "the distro did not boot $1: $BOOT_OUT"
    }
    grep -q "^IMGSTREAM-DISTRO-OK $md5 " <<<"$BOOT_OUT" || fail "marker missing booting $1: $BOOT_OUT"
    BOOT_SECS=$(sed -n 's/^elapsed_seconds=//p' <<<"$BOOT_OUT")
    BOOT_ID=$(sed -n 's/^IMGSTREAM-DISTRO-OK .* boot_id=\([^ ]*\).*/\1/p' <<<"$BOOT_OUT")
    [[ -n $BOOT_ID ]] || fail "no boot id in the marker booting $1: $BOOT_OUT"
    note "$1: marker after ${BOOT_SECS}s, powered off $(sed -n 's/^exit_seconds=//p' <<<"$BOOT_OUT")s later;" \
        "$(tr -d '\r' <"$T/serial-$1.log" | grep -a -m1 'IMGSTREAM-DISTRO-INFO verified' | sed 's/^IMGSTREAM-DISTRO-INFO //')"
    if grep -qa 'IMGSTREAM-DISTRO-INFO failed units' "$T/serial-$1.log"; then
        note "$1: $(tr -d '\r' <"$T/serial-$1.log" | grep -a -m1 'failed units')"
    fi
}

# check_written WHAT FILE: the disk the guest wrote is clean (it powered off)
# and records the boot just made.
check_written() {
    local what=$1 file=$2 boots
    expect_ok "e2fsck of / after booting $what" e2fsck -fn "$file?offset=$root_off"
    expect_ok "e2fsck of /boot after booting $what" e2fsck -fn "$file?offset=$boot_off"
    boots=$(debugfs -R 'cat /var/lib/imgstream/boots' "$file?offset=$root_off" 2>/dev/null) ||
        fail "cannot read /var/lib/imgstream/boots after booting $what"
    grep -q "^$BOOT_ID " <<<"$boots" || fail "the guest's record of its boot ($BOOT_ID) is not on the disk after booting $what: '$boots'"
}

# (a) local, on an overlay
distro_overlay "$disk" "$T/a.qcow2"
boot local "file=$T/a.qcow2,format=qcow2,if=virtio"
secs_a=$BOOT_SECS
expect_eq "$(stat -c %Y "$disk")" "$disk_mtime" "mtime of the cached image after a boot on an overlay"
rm -f "$T/a.qcow2"
pass "booted from a local overlay in ${secs_a}s"

# (b) imgstream serve, writable, of a copy
cp --sparse=always "$disk" "$T/b.img"
start_server "$T/b.img"
boot serve "$SERVER_URI"
secs_b=$BOOT_SECS
stop_server_ok "$SERVER_PID"
check_written "through imgstream serve" "$T/b.img"
rm -f "$T/b.img"
pass "booted through imgstream serve in ${secs_b}s; the writes it made are on the disk, which is clean"

# (c) imgstream stream into a fresh store, from a "remote" source
start_source "$T/src.sock" -r --filter=delay file "$disk" rdelay=5ms
src_pid=$SOURCE_PID
store="$T/store"
start_streamer "$SOURCE_URI" "$store" --rate 2M
streamer_pid=$STREAMER_PID
boot stream "$STREAMER_URI"
secs_c=$BOOT_SECS
j=$(status_json "$store") || fail "imgstream status --json after the boot"
note "status after the boot: $j"
expect_eq "$(jq -r .image_size <<<"$j")" "$size" "image_size"
state=$(jq -r .state <<<"$j")
[[ $state == streaming || $state == complete || $state == detached ]] || fail "state after the boot is '$state'"
demand=$(jq -r .bytes_fetched_demand <<<"$j")
present=$(jq -r .regions_present <<<"$j")
total=$(jq -r .regions_total <<<"$j")
((demand > 0)) || fail "the boot fetched nothing on demand: the test tests nothing"
((present > 0 && present <= total)) || fail "regions_present $present of $total"
pass "booted through imgstream stream in ${secs_c}s ($((demand >> 20)) MiB fetched on demand, $present of $total regions present)"

expect_ok "ctl rate 0" "$IMGSTREAM" ctl "$store" rate 0
wait_state "$store" detached 400
j=$(status_json "$store")
expect_eq "$(jq -r .regions_present <<<"$j")" "$(jq -r .regions_total <<<"$j")" "regions_present after detach"
stop_server_ok "$streamer_pid"
kill_source "$src_pid" TERM
check_written "through imgstream stream" "$store/data"
pass "hydration completed; the store is clean and holds the boot's own writes"

note "boot times to the marker (TCG): local overlay ${secs_a}s, imgstream serve ${secs_b}s, imgstream stream ${secs_c}s"
