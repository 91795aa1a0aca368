#!/usr/bin/env bash
# patch.sh - benchmark offline patching (issue 14): `imgstream patch` against
# `virt-customize` (libguestfs-tools: an appliance VM per image), on copies of the
# same image, in the same run.
#
# The action, as the issue names it: add a 1 MiB file and a first-boot script.
#   imgstream patch COPY --add FILE:/opt/fleet/blob --firstboot SCRIPT
#   virt-customize --format raw -a COPY --mkdir /opt/fleet --upload FILE:/opt/fleet/blob --firstboot SCRIPT
# (virt-customize does not make the parents of an upload; imgstream does)
# (LIBGUESTFS_BACKEND=direct, LIBGUESTFS_BACKEND_SETTINGS=force_tcg: KVM hangs here;
# one untimed virt-customize run first builds its supermin appliance, as an operator's
# first run would, so the timed runs are warm). Each timed run gets a fresh copy,
# made and synced before the clock starts (cp + sync are not timed).
#
# Rows (median of REPS, default 3):
#   1. seconds to patch the image in place (imgstream: e2fsck -fn check, journal, fsync
#      included) and with virt-customize; the ratio. Required: at least 20x.
#   2. imgstream patch -o OUT.img (a new image: a sparse copy of the input + the pages).
#   3. a pack of the image (untimed), patched into a delta pack: seconds; the delta's file
#      bytes against the chunks it stores (pack diff --json: new_bytes_stored) plus its
#      index, and against the image. Required: delta <= changed chunks + index.
#
# DISK=distro (default: the Debian 12 disk of tests/fixtures/make-distro-disk.sh,
# cached) or DISK=busybox (tests/fixtures/make-boot-disk.sh). Output: a markdown table
# for docs/BENCHMARKS.md on stdout, progress on stderr.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$BENCH_REPO_ROOT/tests/lib/distro.sh"

die() { echo "patch.sh: $*" >&2; exit 1; }
log() { echo "patch.sh: $*" >&2; }
IMG=${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}
REPS=${REPS:-3}
DISK=${DISK:-distro}
[[ -x $IMG ]] || die "no imgstream binary at $IMG (scripts/build.sh release)"
command -v virt-customize >/dev/null || die "virt-customize is not installed (apt-get install libguestfs-tools)"
bench_init

case $DISK in
    distro) src=$(distro_disk) || die "could not build the Debian test disk" ;;
    busybox) bench_boot_disk "$BENCH_TMP/bb.img"; src=$BENCH_TMP/bb.img ;;
    *) die "DISK is distro or busybox" ;;
esac
head -c $((1 << 20)) /dev/urandom >"$BENCH_TMP/blob"
printf '#!/bin/sh\necho "fleet fix applied"\n' >"$BENCH_TMP/fix.sh"
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg

fresh() { cp --sparse=always "$src" "$1"; sync "$1"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

log "warming virt-customize (its appliance is built on the first run)"
fresh "$BENCH_TMP/warm.img"
virt-customize --format raw -a "$BENCH_TMP/warm.img" --upload "$BENCH_TMP/blob:/tmp/warm" >/dev/null 2>&1 ||
    die "virt-customize does not run here: $(virt-customize --format raw -a "$BENCH_TMP/warm.img" --upload "$BENCH_TMP/blob:/tmp/warm" 2>&1 | tail -n 3)"
rm -f "$BENCH_TMP/warm.img"

for ((r = 1; r <= REPS; r++)); do
    fresh "$BENCH_TMP/a.img"
    t0=$(now)
    "$IMG" patch "$BENCH_TMP/a.img" --add "$BENCH_TMP/blob:/opt/fleet/blob" --firstboot "$BENCH_TMP/fix.sh" >/dev/null
    t1=$(now); record inplace imgstream "$(elapsed "$t0" "$t1")"
    rm -f "$BENCH_TMP/a.img"

    fresh "$BENCH_TMP/b.img"
    t0=$(now)
    "$IMG" patch "$BENCH_TMP/b.img" -o "$BENCH_TMP/b-out.img" --add "$BENCH_TMP/blob:/opt/fleet/blob" --firstboot "$BENCH_TMP/fix.sh" >/dev/null
    t1=$(now); record copy imgstream "$(elapsed "$t0" "$t1")"
    rm -f "$BENCH_TMP/b.img" "$BENCH_TMP/b-out.img"

    fresh "$BENCH_TMP/v.img"
    t0=$(now)
    virt-customize --format raw -a "$BENCH_TMP/v.img" --mkdir /opt/fleet --upload "$BENCH_TMP/blob:/opt/fleet/blob" \
        --firstboot "$BENCH_TMP/fix.sh" >"$BENCH_TMP/vc.log" 2>&1 || die "virt-customize failed: $(tail -n 3 "$BENCH_TMP/vc.log")"
    t1=$(now); record inplace virt-customize "$(elapsed "$t0" "$t1")"
    rm -f "$BENCH_TMP/v.img"
    log "rep $r: imgstream $(tail -n1 "$BENCH_TMP/result-inplace-imgstream") s, -o $(tail -n1 "$BENCH_TMP/result-copy-imgstream") s, virt-customize $(tail -n1 "$BENCH_TMP/result-inplace-virt-customize") s"
done

log "packing the image (untimed)"
"$IMG" pack "$src" -o "$BENCH_TMP/base.pack" >/dev/null
for ((r = 1; r <= REPS; r++)); do
    rm -f "$BENCH_TMP/delta.pack"
    t0=$(now)
    "$IMG" patch "$BENCH_TMP/base.pack" -o "$BENCH_TMP/delta.pack" --add "$BENCH_TMP/blob:/opt/fleet/blob" --firstboot "$BENCH_TMP/fix.sh" >/dev/null
    t1=$(now); record delta imgstream "$(elapsed "$t0" "$t1")"
done
diff_json=$("$IMG" pack diff "$BENCH_TMP/base.pack" "$BENCH_TMP/delta.pack" --json)
new_stored=$(jq .new_bytes_stored <<<"$diff_json")
new_chunks=$(jq .new_chunks <<<"$diff_json")
delta_bytes=$(stat -c %s "$BENCH_TMP/delta.pack")
# docs/pack-format.md: the header's u64 at 48 is the index's stored length.
index_bytes=$(python3 - "$BENCH_TMP/delta.pack" <<'PY'
import struct, sys
print(struct.unpack_from("<Q", open(sys.argv[1], "rb").read(4096), 48)[0])
PY
)
header_bytes=4096
bound=$((new_stored + index_bytes + header_bytes))
image_bytes=$(stat -c %s "$src")

ims=$(result inplace imgstream); vcs=$(result inplace virt-customize)
ratio=$(awk -v a="$vcs" -v b="$ims" 'BEGIN { printf "%.0f", a / b }')
cat <<TABLE
### Offline patch: imgstream patch vs virt-customize ($DISK disk)

$(machine_info)
- virt-customize: $(virt-customize --version 2>/dev/null | head -n1), LIBGUESTFS_BACKEND=direct, TCG, appliance warm
- method: add a 1 MiB file and a first-boot script to a fresh copy of $(basename "$src") ($((image_bytes >> 20)) MiB); median of $REPS

| row | imgstream | virt-customize | virt-customize / imgstream |
|---|---:|---:|---:|
| patch in place (s) | $ims | $vcs | ${ratio}× |
| patch -o OUT.img (s) | $(result copy imgstream) | | |
| patch PACK -o DELTA.pack (s) | $(result delta imgstream) | | |

| delta pack | bytes |
|---|---:|
| the image | $image_bytes |
| the delta pack's file | $delta_bytes |
| its new chunks, stored ($new_chunks of 128 KiB; pack diff new_bytes_stored) | $new_stored |
| its index | $index_bytes |
| bound: new chunks + index + 4 KiB header | $bound |
| delta / bound | $(awk -v a="$delta_bytes" -v b="$bound" 'BEGIN { printf "%.3f", a / b }') |
| delta / image | $(awk -v a="$delta_bytes" -v b="$image_bytes" 'BEGIN { printf "%.5f", a / b }') |
TABLE
awk -v r="$ratio" 'BEGIN { exit !(r >= 20) }' || log "REQUIRED NOT MET: imgstream is only ${ratio}x faster than virt-customize"
((delta_bytes <= bound)) || log "REQUIRED NOT MET: the delta pack ($delta_bytes) is larger than its changed chunks + index ($bound)"
