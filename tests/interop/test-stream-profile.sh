#!/usr/bin/env bash
# Boot profiles end to end (issue 4's acceptance test): the bootable test disk
# boots under qemu (TCG) through `imgstream stream` from a "remote" source
# (nbdkit file plugin, 10 ms per read) three times, each from an empty store
# (a new store records its first boot in STORE/boot.trace); the three traces
# are merged into a profile. Then the disk boots once more from an empty
# store without the profile and once with it: with the profile it boots (the
# guest checks the md5 of its data files) and the reads that had to wait on
# the source drop by at least 80%, while at least 80% of the prefetched bytes
# are read by the boot (precision).
# Every stream runs with --no-background, so that no background hydration
# races the guest: the baseline fetches on demand only, the profiled boot
# prefetches the profile's regions and nothing else.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 900
need qemu-system-x86_64 nbdkit nbdinfo jq

cache="${IMGSTREAM_CACHE:-$REPO_ROOT/.cache}"
mkdir -p "$cache"
disk="$cache/boot-disk.img"
"$REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$disk" >"$T/make.log" 2>&1 ||
    { tail -20 "$T/make.log" >&2; fail "could not build the bootable test disk"; }
md5=$(cat "$disk.md5")
# A private copy: the source must not change under us (and the cache may be rebuilt).
cp "$disk" "$T/disk.img"
disk="$T/disk.img"
image_bytes=$(stat -c %s "$disk")

start_source "$T/src.sock" --filter=delay file "$disk" rdelay=10ms
src="$SOURCE_URI"

# boot_stream WHAT STORE [STREAM-ARGS...]: boot through a fresh streamer on
# STORE (--no-background), stop it cleanly (the boot trace is closed), and
# leave the store's status, taken right after the boot, in $T/status.json.
boot_stream() {
    local what="$1" store="$2" out secs
    shift 2
    start_streamer "$src" "$store" --no-background "$@"
    out=$(BOOT_EXPECT_MD5="$md5" "$REPO_ROOT/tests/lib/boot.sh" "$STREAMER_URI" 300) ||
        fail "guest did not boot $what: $out"
    echo "$out" | grep -q "IMGSTREAM-BOOT-OK $md5" || fail "marker missing booting $what: $out"
    status_json "$store" >"$T/status.json" || fail "imgstream status $store --json failed"
    stop_server_ok "$STREAMER_PID"
    secs=$(echo "$out" | sed -n 's/^elapsed_seconds=//p')
    note "$what: booted in ${secs}s: $(cat "$T/status.json")"
}
field() { jq -r --arg f "$1" '.[$f] // empty' "$T/status.json"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
r3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }

# ---------------------------------------------------------------- 1. record three boots
for i in 1 2 3; do
    boot_stream "recording boot $i" "$T/rec$i"
    [[ -s $T/rec$i/boot.trace ]] || fail "the new store rec$i recorded no boot.trace"
done
pass "three boots from empty stores, each recorded in STORE/boot.trace"

expect_ok "profile merge" "$IMGSTREAM" profile merge "$T/rec1" "$T/rec2" "$T/rec3" -o "$T/boot.prof"
"$IMGSTREAM" profile show "$T/boot.prof" --json >"$T/show.json" || fail "profile show --json failed"
traces=$(jq -r .traces "$T/show.json")
set_bytes=$(jq -r .boot_set_bytes "$T/show.json")
expect_eq "$traces" 3 "traces merged into the profile"
((set_bytes > 0)) || fail "the merged profile's boot set is empty: $(cat "$T/show.json")"
((set_bytes * 100 < image_bytes * 15)) ||
    fail "the boot set is $set_bytes bytes, not under 15% of the $image_bytes-byte image"
pass "merged profile: boot set $(mib "$set_bytes") MiB ($(jq -r .regions "$T/show.json") regions, $(awk -v b="$set_bytes" -v s="$image_bytes" 'BEGIN { printf "%.1f", 100 * b / s }')% of the image)"

# ---------------------------------------------------------------- 2. without, then with the profile
boot_stream "boot without a profile" "$T/base"
w0=$(field reads_waited)
w0_secs=$(r3 "$(field wait_seconds)")
h0=$(r3 "$(field hit_ratio)")
d0=$(field bytes_fetched_demand)
[[ -n $w0 && -n $(field wait_seconds) ]] || fail "status has no reads_waited / wait_seconds: $(cat "$T/status.json")"
((w0 > 0)) || fail "the boot without a profile waited on the source for no read: the test tests nothing"
pass "boot without a profile: $w0 reads waited on the source (${w0_secs}s), hit ratio $h0, $(mib "$d0") MiB on demand"

boot_stream "boot with the profile" "$T/prof" --profile "$T/boot.prof"
w1=$(field reads_waited)
w1_secs=$(r3 "$(field wait_seconds)")
h1=$(r3 "$(field hit_ratio)")
d1=$(field bytes_fetched_demand)
pre=$(field bytes_prefetched)
pre_read=$(field prefetch_bytes_read)
precision=$(field prefetch_precision)
bg=$(field bytes_fetched_background)
[[ -n $w1 && -n $pre ]] || fail "status has no reads_waited / bytes_prefetched: $(cat "$T/status.json")"
((pre > 0)) || fail "the profile prefetched nothing: $(cat "$T/status.json")"
expect_eq "$bg" 0 "bytes fetched in the background with --no-background --profile"
[[ -n $precision ]] || fail "status has no prefetch_precision after a prefetch: $(cat "$T/status.json")"
note "with the profile: $w1 reads waited (${w1_secs}s) vs $w0 (${w0_secs}s); prefetched $(mib "$pre") MiB," \
    "$(mib "$pre_read") MiB of it read (precision $(r3 "$precision")); $(mib "$d1") MiB on demand; hit ratio $h1 vs $h0"
((w1 * 5 <= w0)) ||
    fail "reads that waited on the source: $w1 with the profile vs $w0 without, a drop of less than 80%"
awk -v p="$precision" 'BEGIN { exit !(p >= 0.8) }' ||
    fail "prefetch precision $precision is under 0.8"
pass "boot with the profile: $w1 reads waited vs $w0 without ($(awk -v a="$w1" -v b="$w0" 'BEGIN { printf "%.0f", 100 * (1 - a / b) }')% fewer)," \
    "wait ${w1_secs}s vs ${w0_secs}s, precision $(r3 "$precision"), hit ratio $h1 vs $h0"
