#!/usr/bin/env bash
# Patched images boot, and a first-boot script runs exactly once:
#   (a) the busybox disk (tests/fixtures/make-boot-disk.sh: busybox init, no systemd),
#       patched in place (files added to its root and its /boot partition, a first-boot
#       script that prints a file's contents), boots twice: the data verify, the script
#       runs on the first boot only (through the inittab hook);
#   (b) the Debian 12 + systemd disk (tests/fixtures/make-distro-disk.sh; /boot is its
#       own partition, found through the root's fstab), patched with two --firstboot
#       scripts (the first exits 3), a file and a kernel-unrelated /boot file, boots
#       twice under TCG: the scripts run, in order, on the first boot only, their output
#       on the console and in /var/log/imgstream-firstboot.log with the exit status;
#       systemd counts no failed unit; both file systems are clean after each boot.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/distro.sh"
test_init 1500
need qemu-system-x86_64 e2fsck debugfs

IMG=$IMGSTREAM
# ---- (a) busybox ----
cache="${IMGSTREAM_CACHE:-$REPO_ROOT/.cache}"
mkdir -p "$cache"
"$REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$cache/boot-disk.img" >"$T/make.log" 2>&1 ||
    { tail -20 "$T/make.log" >&2; fail "could not build the bootable test disk"; }
cp --sparse=always "$cache/boot-disk.img" "$T/bb.img"
echo "patched by imgstream" >"$T/note.txt"
cat >"$T/bb-first.sh" <<'S'
#!/bin/sh
echo "IMGSTREAM-FIRSTBOOT-BUSYBOX $(cat /etc/imgstream/note.txt)"
S
expect_ok "patch the busybox disk" "$IMG" patch "$T/bb.img" --partition 2 \
    --add "$T/note.txt:/etc/imgstream/note.txt" --write /etc/motd:patched --firstboot "$T/bb-first.sh"
grep -q "inittab" "$T/last.log" || fail "the busybox disk did not get the inittab hook: $(cat "$T/last.log")"
expect_ok "patch its /boot" "$IMG" patch "$T/bb.img" --partition 1 --write /patched:yes
bb_md5=$(cat "$cache/boot-disk.img.md5")
for n in 1 2; do
    out=$(BOOT_READONLY=0 BOOT_LOG="$T/bb-serial-$n.log" BOOT_EXPECT_MD5="$bb_md5" "$REPO_ROOT/tests/lib/boot.sh" \
        "file=$T/bb.img,format=raw,if=virtio" 300) || fail "the patched busybox disk did not boot ($n): $out"
    e2fsck -fn "$T/bb.img?offset=$((17 << 20))" >/dev/null 2>&1 || note "busybox root after boot $n: $(e2fsck -fn "$T/bb.img?offset=$((17 << 20))" 2>&1 | tail -n 2)"
done
expect_eq "$(tr -d '\r' <"$T/bb-serial-1.log" | grep -ac 'IMGSTREAM-FIRSTBOOT-BUSYBOX patched by imgstream')" 1 "the busybox first-boot marker with the file's contents, boot 1"
expect_eq "$(tr -d '\r' <"$T/bb-serial-2.log" | grep -ac 'IMGSTREAM-FIRSTBOOT-BUSYBOX')" 0 "the busybox first-boot marker, boot 2"
"$IMG" cat "$T/bb.img" --partition 2 /var/log/imgstream-firstboot.log | grep -q "0001-bb-first.sh exited with status 0" ||
    fail "the busybox first-boot log: $("$IMG" cat "$T/bb.img" --partition 2 /var/log/imgstream-firstboot.log 2>&1)"
expect_eq "$("$IMG" cat "$T/bb.img" --partition 2 /etc/imgstream/note.txt)" "patched by imgstream" "the added file"
pass "the patched busybox disk (busybox init, no systemd) boots twice and verifies its data; the first-boot script ran once, through inittab"

# ---- (b) Debian 12 + systemd ----
disk=$(distro_disk) || fail "could not build the Debian test disk"
md5=$(cat "$disk.md5")
boot_off=$((1 << 20)); root_off=$((257 << 20))
cp --sparse=always "$disk" "$T/d.img"
e2fsck -fn "$T/d.img?offset=$root_off" >/dev/null 2>&1 || fail "/ of the Debian disk is not clean before the patch"
cat >"$T/10-hello.sh" <<'S'
#!/bin/sh
echo "IMGSTREAM-FIRSTBOOT-HELLO $(cat /etc/fleet/fleet.conf)"
echo ran >>/var/lib/fb-count
exit 3
S
cat >"$T/20-second.sh" <<'S'
#!/bin/sh
echo "IMGSTREAM-FIRSTBOOT-SECOND"
S
echo "[fleet]" >"$T/fleet.conf"
t0=$(date +%s.%N)
expect_ok "patch the Debian disk" "$IMG" patch "$T/d.img" --firstboot "$T/10-hello.sh" \
    --firstboot "$T/20-second.sh" --add "$T/fleet.conf:/etc/fleet/fleet.conf:0640" \
    --write /boot/imgstream-patched:yes
t1=$(date +%s.%N)
grep -q "systemd unit" "$T/last.log" || fail "the Debian disk did not get the systemd hook: $(cat "$T/last.log")"
grep -q "and d.img partition 1 (ext2)" "$T/last.log" || fail "/boot was not found through fstab: $(cat "$T/last.log")"
note "patched in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s: $(head -n1 "$T/last.log")"

boot_distro() {  # N
    BOOT_OUT=$(BOOT_EXPECT_MD5="$md5" BOOT_WAIT_EXIT=60 BOOT_LOG="$T/serial-$1.log" \
        distro_boot "file=$T/d.img,format=raw,if=virtio" 400) || {
        note "serial log: $(tail -n 40 "$T/serial-$1.log" | tr -d '\r')"
        fail "the patched Debian disk did not boot ($1): $BOOT_OUT"
    }
    grep -q "failed_units=0" <<<"$BOOT_OUT" || fail "boot $1: failed units: $(grep -a 'failed units' "$T/serial-$1.log")"
    e2fsck -fn "$T/d.img?offset=$root_off" >/dev/null 2>&1 || fail "/ is not clean after boot $1"
    e2fsck -fn "$T/d.img?offset=$boot_off" >/dev/null 2>&1 || fail "/boot is not clean after boot $1"
}
boot_distro 1
log1=$(tr -d '\r' <"$T/serial-1.log")
expect_eq "$(grep -ac 'IMGSTREAM-FIRSTBOOT-HELLO \[fleet\]' <<<"$log1")" 1 "the first script's output on the console, boot 1"
hello_line=$(grep -an 'IMGSTREAM-FIRSTBOOT-HELLO' <<<"$log1" | head -n1 | cut -d: -f1)
second_line=$(grep -an 'IMGSTREAM-FIRSTBOOT-SECOND' <<<"$log1" | head -n1 | cut -d: -f1)
[[ -n $second_line && $hello_line -lt $second_line ]] || fail "the scripts did not run in order on boot 1"
grep -qa "0001-10-hello.sh exited with status 3" <<<"$log1" || fail "no exit status on the console"
boot_distro 2
log2=$(tr -d '\r' <"$T/serial-2.log")
expect_eq "$(grep -ac 'IMGSTREAM-FIRSTBOOT' <<<"$log2")" 0 "first-boot output on the second boot"
flog=$("$IMG" cat "$T/d.img" /var/log/imgstream-firstboot.log)
expect_eq "$(grep -c '^IMGSTREAM-FIRSTBOOT-HELLO' <<<"$flog")" 1 "runs of the first script in the log"
grep -q "0001-10-hello.sh exited with status 3" <<<"$flog" || fail "the log has no exit status: $flog"
grep -q "0002-20-second.sh exited with status 0" <<<"$flog" || fail "the log has no second script: $flog"
expect_eq "$("$IMG" cat "$T/d.img" /var/lib/fb-count)" "ran" "the script's own record"
expect_eq "$("$IMG" cat "$T/d.img" /boot/imgstream-patched)" "yes" "the /boot file"
expect_eq "$("$IMG" cat "$T/d.img" /etc/fleet/fleet.conf)" "[fleet]" "the added file"
"$IMG" ls "$T/d.img" /var/lib/imgstream/firstboot/scripts | grep -q . && fail "scripts still waiting after the boot"
pass "Debian 12 booted twice ($(sed -n 's/^elapsed_seconds=//p' <<<"$BOOT_OUT") s the second time): both first-boot scripts ran once, in order, before the marker; status 3 logged; nothing on the second boot"
