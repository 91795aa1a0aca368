#!/usr/bin/env bash
# The imgstream demo, on a built-in sample: a small BIOS-bootable Linux disk made from
# Debian packages (tests/fixtures/make-boot-disk.sh).
#   1. `imgstream serve` exports it; nbdinfo shows it; qemu-img reads it back and compares.
#   2. The disk becomes a "remote image" behind a slow link (nbdkit with 10 ms per request)
#      and boots under qemu through `imgstream stream`, with a live progress line, while
#      the local store fills on demand and in the background.
#   3. Once hydration completes, the source is stopped and the disk boots from the local
#      store alone.
#   4. Live migration: that disk is served with change tracking, a machine boots from it,
#      and meanwhile `imgstream migrate` moves it to another server; the machine finishes
#      its boot on the target.
#   5. Offline patch: a file and a first-boot script go into the dormant disk with
#      `imgstream patch` (no VM, no mount); it boots twice: the script runs on the first.
# Installs what is needed first (scripts/setup.sh) and builds (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
bash scripts/build.sh release >/dev/null
bin="$root/build/imgstream"

work=$(mktemp -d /tmp/imgstream-demo.XXXXXX)
pids=()
cleanup() {
  # Newest first: a served disk switched to a target stops before its target does.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p .cache
disk=.cache/boot-disk.img
say "Building the sample bootable disk ($disk)"
tests/fixtures/make-boot-disk.sh "$disk" >"$work/make.log" 2>&1 || { cat "$work/make.log"; exit 1; }
md5=$(cat "$disk.md5")

say "1. imgstream serve: the disk over NBD"
"$bin" serve "$disk" --read-only --run 'nbdinfo "$uri" | head -12; qemu-img compare -f raw '"$disk"' -F raw "$uri"'

say "2. Streaming boot: the disk as a remote image behind 10 ms per request"
nbdkit -f --unix "$work/remote.sock" --filter=delay file "$disk" rdelay=10ms wdelay=10ms &
pids+=($!)
sleep 0.5
"$bin" stream "nbd+unix:///?socket=$work/remote.sock" --store "$work/store" \
  --listen "unix:$work/local.sock" --rate 4M >/dev/null &
streamer=$!
pids+=($streamer)
for _ in $(seq 50); do [ -S "$work/local.sock" ] && break; sleep 0.1; done
"$bin" status "$work/store" --watch --interval 0.5 &
pids+=($!)
BOOT_QUIET=1 BOOT_EXPECT_MD5="$md5" tests/lib/boot.sh "nbd+unix:///?socket=$work/local.sock" 300 |
  sed 's/^/   guest: /'
say "   booted; the rest is copied in the background (rate-limited to 4 MB/s for the show)"
"$bin" ctl "$work/store" rate 0
for _ in $(seq 600); do
  state=$("$bin" status "$work/store" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  [ "$state" = detached ] && break
  sleep 0.5
done
sleep 1

say "3. Source gone: the disk boots from the local store alone"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
kill "$streamer"; wait "$streamer" 2>/dev/null || true
"$bin" status "$work/store"
qemu-img compare -f raw "$disk" -f raw "$work/store/data"
BOOT_QUIET=1 BOOT_EXPECT_MD5="$md5" tests/lib/boot.sh "$work/store/data" 300 | sed 's/^/   guest: /'

say "4. Live migration: the disk moves to another server while the machine boots from it"
cp --sparse=always "$work/store/data" "$work/vm.img"
truncate -s "$(stat -c %s "$work/vm.img")" "$work/target.img"
"$bin" serve "$work/target.img" --listen "unix:$work/target.sock" >/dev/null &
pids+=($!)
"$bin" serve "$work/vm.img" --listen "unix:$work/vm.sock" --track "$work/vm.track" \
  --control "$work/vm.ctl" >/dev/null &
pids+=($!)
for _ in $(seq 50); do [ -S "$work/vm.sock" ] && [ -S "$work/target.sock" ] && break; sleep 0.1; done
BOOT_QUIET=1 BOOT_READONLY=0 BOOT_EXPECT_MD5="$md5" \
  tests/lib/boot.sh "nbd+unix:///?socket=$work/vm.sock" 300 >"$work/boot4.out" &
boot=$!
sleep 2  # the machine is booting: its reads and writes go through `serve --track`
"$bin" migrate --control "$work/vm.ctl" --to "nbd+unix:///?socket=$work/target.sock"
wait "$boot" || { cat "$work/boot4.out"; exit 1; }
sed 's/^/   guest: /' "$work/boot4.out"
say "   the machine went on, on the target's disk, without reconnecting"

say "5. Offline patch: a file and a first-boot script into the dormant disk, no VM, no mount"
cp --sparse=always "$disk" "$work/golden.img"
echo "fleet fix 2026-12" >"$work/fix.conf"
printf '#!/bin/sh\necho "first boot: applying $(cat /etc/fleet/fix.conf)"\n' >"$work/apply-fix.sh"
"$bin" patch "$work/golden.img" --partition 2 --add "$work/fix.conf:/etc/fleet/fix.conf" \
  --firstboot "$work/apply-fix.sh"
"$bin" ls "$work/golden.img" --partition 2 /var/lib/imgstream/firstboot/scripts
for n in 1 2; do
  echo "   boot $n:"
  BOOT_QUIET=1 BOOT_READONLY=0 BOOT_LOG="$work/patched-$n.log" BOOT_EXPECT_MD5="$md5" \
    tests/lib/boot.sh "file=$work/golden.img,format=raw,if=virtio" 300 >/dev/null
  tr -d '\r' <"$work/patched-$n.log" | grep -a "first boot: \|imgstream-firstboot" | sed 's/^/   guest: /' || echo "   guest: (no first-boot script ran: it ran once already)"
done
"$bin" cat "$work/golden.img" --partition 2 /var/log/imgstream-firstboot.log | sed 's/^/   log: /'
say "Done."
