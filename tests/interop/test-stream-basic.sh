#!/usr/bin/env bash
# imgstream stream from a "remote" image (nbdkit file plugin behind the delay
# filter, 2 ms per read): captive qemu-img compare through the stream, then
# hydration to `detached`, the local copy identical to the image, status
# fields right and holes never fetched. Resume after a SIGTERM mid-way;
# refusal of a store made for another image (also a disk rebuilt with the same
# size, partition table and ends); --no-background (only the
# regions read become present, also in the imgstream:present meta context);
# ctl pause / resume / rate as seen by status; --device (the local copy on
# a preallocated file). Failed opens: another image's store, a device too
# small, an unreachable source, a store in use, another region size: exit 1
# with one error line. --no-background detaches once everything was read; a
# store resumes with its own region size; pause holds a rate-limited batch.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 300
need nbdkit nbdinfo qemu-img qemu-io jq python3 sfdisk mkfs.ext4

MiB=$((1024 * 1024))
SIZE_MIB=96
img="$T/image.img"
make_holey_image "$img" $SIZE_MIB
size=$((SIZE_MIB * MiB))
data_bytes="$(data_region_bytes "$img" $MiB)"
((data_bytes < size)) || fail "test image has no hole regions"
note "image: $SIZE_MIB MiB, $((data_bytes / MiB)) MiB in regions holding data"

start_source "$T/src.sock" --filter=delay file "$img" rdelay=2ms
src_pid=$SOURCE_PID
src="$SOURCE_URI"
wait_cmd="bash $(printf %q "$REPO_ROOT/tests/lib/stream.sh") wait-state"

# ---------------------------------------------------------------- 1. captive compare, hydration
s1="$T/s1"
# Rate-limited so that the compare's reads find missing regions (demand
# fetches); once the compare is done, the limit goes and hydration completes.
rc=0
"$IMGSTREAM" stream "$src" --store "$s1" --rate 4M --run "
    qemu-img compare -f raw $(printf %q "$img") -F raw \"\$uri\" &&
    \"\$IMGSTREAM\" ctl $(printf %q "$s1") rate 0 &&
    $wait_cmd $(printf %q "$s1") detached 60" >"$T/s1.out" 2>"$T/s1.err" || rc=$?
if [[ $rc -ne 0 ]]; then
    cat "$T/s1.out" "$T/s1.err" >&2
    fail "captive qemu-img compare through imgstream stream exited $rc"
fi
grep -q "Images are identical" "$T/s1.out" || fail "qemu-img compare did not say 'Images are identical'"
pass "captive qemu-img compare through the stream, hydration reached detached"

j="$(status_json "$s1")"
note "status: $j"
expect_eq "$(jq -r .state <<<"$j")" detached "state after hydration"
expect_eq "$(jq -r .daemon_running <<<"$j")" false "daemon_running after the streamer exited"
expect_eq "$(jq -r .image_size <<<"$j")" "$size" "image_size"
expect_eq "$(jq -r .region_size <<<"$j")" "$MiB" "region_size (default 1M)"
expect_eq "$(jq -r .regions_total <<<"$j")" "$SIZE_MIB" "regions_total"
expect_eq "$(jq -r .regions_present <<<"$j")" "$SIZE_MIB" "regions_present"
expect_eq "$(jq -r .source <<<"$j")" "$src" "source"
demand="$(jq -r .bytes_fetched_demand <<<"$j")"
background="$(jq -r .bytes_fetched_background <<<"$j")"
((demand > 0)) || fail "bytes_fetched_demand is $demand after a full compare at a 4M rate limit"
((background > 0)) || fail "bytes_fetched_background is $background"
((background < size)) || fail "bytes_fetched_background $background >= image size $size: holes fetched?"
((demand + background <= data_bytes)) ||
    fail "fetched $demand + $background bytes, more than the $data_bytes bytes of data regions (a region fetched twice, or a hole fetched)"
expect_ok "qemu-img compare of the store's data with the image" \
    qemu-img compare -f raw "$T/s1/data" -F raw "$img"
pass "status fields after hydration (demand $demand, background $background, data regions $data_bytes), local copy identical"

# Text status works too and names the state.
"$IMGSTREAM" status "$s1" >"$T/status.txt" || fail "imgstream status (text) failed"
grep -q detached "$T/status.txt" || fail "text status does not say detached: $(cat "$T/status.txt")"

# ---------------------------------------------------------------- 2. resume after SIGTERM
s2="$T/s2"
start_streamer "$src" "$s2" --rate 8M --batch 1M
wait_field_ge "$s2" regions_present 8 60
live="$(st "$s2" daemon_running)"
expect_eq "$live" true "daemon_running while the streamer runs"
stop_server "$STREAMER_PID"
expect_eq "$STOP_STATUS" 0 "streamer exit status after SIGTERM"
j="$(status_json "$s2")"
p1="$(jq -r .regions_present <<<"$j")"
bg1="$(jq -r .bytes_fetched_background <<<"$j")"
note "stopped mid-way: $j"
((p1 > 0 && p1 < SIZE_MIB)) || fail "regions_present after the stop is $p1, expected between 0 and $SIZE_MIB"
expect_eq "$(jq -r .daemon_running <<<"$j")" false "daemon_running after the stop"
[[ $(jq -r .state <<<"$j") != detached ]] || fail "state detached after a stop mid-way"
[[ ! -e $s2/ctl.sock ]] || fail "control socket $s2/ctl.sock left behind after SIGTERM"

# ---------------------------------------------------------------- 3. resume completes
start_streamer "$src" "$s2"
wait_state "$s2" detached 60
stop_server_ok "$STREAMER_PID"
j="$(status_json "$s2")"
expect_eq "$(jq -r .regions_present <<<"$j")" "$SIZE_MIB" "regions_present after the resume"
bg2="$(jq -r .bytes_fetched_background <<<"$j")"
d2="$(jq -r .bytes_fetched_demand <<<"$j")"
((bg2 >= bg1)) || fail "bytes_fetched_background went back from $bg1 to $bg2 across the resume"
((bg2 + d2 <= data_bytes)) ||
    fail "after the resume $bg2 + $d2 bytes were fetched, more than the $data_bytes bytes of data regions: the resume fetched present regions again"
expect_ok "qemu-img compare after the resume" qemu-img compare -f raw "$s2/data" -F raw "$img"
pass "SIGTERM mid-way ($p1/$SIZE_MIB regions), resume on the same store completes, nothing fetched twice"

# ---------------------------------------------------------------- 4. --no-background
s3="$T/s3"
start_streamer "$src" "$s3" --no-background
# Regions read: 3 (4 KiB inside), 10 (64 KiB inside), 20 and 21 (a read
# across their boundary), 95 (the last 4 KiB of the image).
expect_ok "qemu-io demand reads" qemu-io -r -f raw \
    -c "read $((3 * MiB + 8192)) 4096" \
    -c "read $((10 * MiB + 100000)) 65536" \
    -c "read $((21 * MiB - 6000)) 12000" \
    -c "read $((size - 4096)) 4096" \
    "$STREAMER_URI"
sleep 2
j="$(status_json "$s3")"
note "no-background: $j"
expect_eq "$(jq -r .regions_present <<<"$j")" 5 "regions_present after 4 reads over 5 regions with --no-background"
expect_eq "$(jq -r .bytes_fetched_background <<<"$j")" 0 "bytes_fetched_background with --no-background"
expect_eq "$(jq -r .bytes_fetched_demand <<<"$j")" $((5 * MiB)) "bytes_fetched_demand"
nbdinfo --map=imgstream:present "$STREAMER_URI" >"$T/map.txt" 2>"$T/map.err" ||
    fail "nbdinfo --map=imgstream:present failed: $(cat "$T/map.err")"
# Present ranges, from the map (offset length flags ...): flag 1 = present.
present_ranges="$(awk '$3 == 1 { printf "%d+%d ", $1 / 1048576, $2 / 1048576 }' "$T/map.txt")"
expect_eq "$present_ranges" "3+1 10+1 20+2 95+1 " "present ranges (MiB offset+count) in the imgstream:present map"
stop_server_ok "$STREAMER_PID"
python3 - "$img" "$s3/data" <<'PY' || fail "regions fetched on demand differ from the image"
import sys
M = 1 << 20
a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
for r in (3, 10, 20, 21, 95):
    a.seek(r * M); b.seek(r * M)
    if a.read(M) != b.read(M):
        sys.exit(f"region {r} differs")
PY
pass "--no-background: only the regions read are present, fetched once, and their local data is right"

# ---------------------------------------------------------------- 5. ctl pause / resume / rate
s4="$T/s4"
start_streamer "$src" "$s4" --rate 2M --batch 1M
expect_eq "$(st "$s4" state)" streaming "state at start"
expect_eq "$(st "$s4" rate_limit)" $((2 * MiB)) "rate_limit at start (--rate 2M)"
expect_ok "ctl pause" "$IMGSTREAM" ctl "$s4" pause
expect_eq "$(st "$s4" state)" paused "state after ctl pause"
sleep 1 # a batch in flight may still land
pa="$(st "$s4" regions_present)"
sleep 2
pb="$(st "$s4" regions_present)"
expect_eq "$pb" "$pa" "regions_present while paused (2 s apart)"
expect_ok "ctl rate 1M" "$IMGSTREAM" ctl "$s4" rate 1M
expect_eq "$(st "$s4" rate_limit)" $MiB "rate_limit after ctl rate 1M"
expect_eq "$(st "$s4" state)" paused "state after ctl rate while paused"
expect_ok "ctl resume" "$IMGSTREAM" ctl "$s4" resume
expect_eq "$(st "$s4" state)" streaming "state after ctl resume"
wait_field_ge "$s4" regions_present $((pb + 1)) 30
expect_ok "ctl rate 0" "$IMGSTREAM" ctl "$s4" rate 0
expect_eq "$(st "$s4" rate_limit)" 0 "rate_limit after ctl rate 0"
wait_state "$s4" detached 60
stop_server_ok "$STREAMER_PID"
expect_ok "qemu-img compare after pause/resume" qemu-img compare -f raw "$s4/data" -F raw "$img"
# --paused: starts paused, nothing moves until ctl resume.
s4p="$T/s4p"
start_streamer "$src" "$s4p" --paused
expect_eq "$(st "$s4p" state)" paused "state with --paused"
sleep 1.5
expect_eq "$(st "$s4p" bytes_fetched_background)" 0 "bytes_fetched_background while started --paused"
expect_ok "ctl resume (--paused)" "$IMGSTREAM" ctl "$s4p" resume
wait_state "$s4p" detached 60
stop_server_ok "$STREAMER_PID"
# ctl without a streamer: exit 1, one error line; bad usage: exit 2.
rc=0
"$IMGSTREAM" ctl "$s4" pause >/dev/null 2>"$T/ctl.err" || rc=$?
expect_eq "$rc" 1 "ctl pause with no streamer running: exit status"
grep -q '^imgstream: error: ' "$T/ctl.err" || fail "ctl with no streamer: no error line: $(cat "$T/ctl.err")"
rc=0
"$IMGSTREAM" ctl "$s4" rate >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "ctl rate without RATE: exit status"
rc=0
"$IMGSTREAM" ctl "$s4" frobnicate >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "ctl with an unknown action: exit status"
rc=0
"$IMGSTREAM" ctl "$s4" rate fast >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "ctl rate with a bad RATE: exit status"
rc=0
"$IMGSTREAM" status "$T/no-such-store" --json >/dev/null 2>"$T/status.err" || rc=$?
expect_eq "$rc" 1 "status of a directory that is no store: exit status"
grep -q '^imgstream: error: .*no-such-store' "$T/status.err" || fail "status of no store: error line: $(cat "$T/status.err")"
pass "ctl pause / rate / resume change status (state, rate_limit, progress)"

# ---------------------------------------------------------------- 6. --device
dev="$T/device.img"
fallocate -l $((size + 4 * MiB)) "$dev" 2>/dev/null || head -c $((size + 4 * MiB)) /dev/zero >"$dev"
s5="$T/s5"
start_streamer "$src" "$s5" --device "$dev"
expect_ok "qemu-io read through --device stream" qemu-io -r -f raw -c "read 0 65536" "$STREAMER_URI"
wait_state "$s5" detached 60
stop_server_ok "$STREAMER_PID"
[[ ! -e $s5/data ]] || fail "--device: a data file $s5/data was made as well"
expect_ok "qemu-img compare of the device with the image" \
    qemu-img compare -f raw "$dev" -F raw "$img"
expect_eq "$(stat -c %s "$dev")" $((size + 4 * MiB)) "--device: size of the device file after streaming"
pass "--device: the local copy is on the preallocated file, identical to the image"

# ---------------------------------------------------------------- 7. refusal of another image
# On an incomplete store (--no-background, one region read); the store must
# be left as it was.
s7="$T/s7"
start_streamer "$src" "$s7" --no-background
expect_ok "qemu-io read" qemu-io -r -f raw -c "read 0 4096" "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
p7="$(st "$s7" regions_present)"
expect_eq "$p7" 1 "regions_present of the store to refuse"
imgb="$T/image-b.img"
make_random_file "$imgb" $SIZE_MIB
imgc="$T/image-c.img"
make_random_file "$imgc" 32
start_source "$T/srcb.sock" file "$imgb"
srcb_pid=$SOURCE_PID
srcb="$SOURCE_URI"
start_source "$T/srcc.sock" file "$imgc"
srcc_pid=$SOURCE_PID
srcc="$SOURCE_URI"
for other in "$srcb" "$srcc"; do
    rc=0
    timeout 30 "$IMGSTREAM" stream "$other" --store "$s7" --listen "unix:$T/refused.sock" \
        >"$T/refuse.out" 2>"$T/refuse.err" || rc=$?
    what="stream of another image ($other) on the store of $src"
    [[ $rc -eq 1 ]] || fail "$what: exit status $rc, expected 1; stderr: $(head -c 600 "$T/refuse.err")"
    expect_eq "$(wc -l <"$T/refuse.err")" 1 "$what: lines on stderr"
    grep -q '^imgstream: error: ' "$T/refuse.err" || fail "$what: stderr is not 'imgstream: error: ...': $(cat "$T/refuse.err")"
    grep -qF "$s7" "$T/refuse.err" || fail "$what: the error does not name the store $s7: $(cat "$T/refuse.err")"
done
expect_eq "$(st "$s7" regions_present)" "$p7" "regions_present of the store after the refusals"
expect_eq "$(st "$s7" source)" "$src" "source of the store after the refusals"
kill_source "$srcb_pid" TERM
kill_source "$srcc_pid" TERM
pass "a store made for another image is refused (same size other content; other size)"

# A disk image rebuilt with the same size, partition table and ends (an MBR, an ext4 at
# 1 MiB made again: new superblock, new files) is another image; the same one resumes.
make_fs_disk() { # PATH CONTENT
    rm -f "$1"
    truncate -s 64M "$1"
    printf 'label: dos\nlabel-id: 0x1d15c0de\nstart=2048, type=83\n' | sfdisk -q "$1"
    mkdir -p "$T/fs-root" && echo "$2" >"$T/fs-root/version"
    mkfs.ext4 -q -F -E offset=1048576 -d "$T/fs-root" "$1" 63M
}
make_fs_disk "$T/disk-v1.img" v1
make_fs_disk "$T/disk-v2.img" v2
cmp -s <(head -c 65536 "$T/disk-v1.img") <(head -c 65536 "$T/disk-v2.img") ||
    fail "the two disks' first 64 KiB differ: the case would test the old fingerprint only"
cmp -s <(tail -c 65536 "$T/disk-v1.img") <(tail -c 65536 "$T/disk-v2.img") ||
    fail "the two disks' last 64 KiB differ: the case would test the old fingerprint only"
s_fs="$T/s-fs"
start_streamer "$T/disk-v1.img" "$s_fs" --no-background
expect_ok "qemu-io read" qemu-io -r -f raw -c "read 0 4096" "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
rc=0
timeout 30 "$IMGSTREAM" stream "$T/disk-v2.img" --store "$s_fs" --listen "unix:$T/refused8.sock" \
    >/dev/null 2>"$T/refuse8.err" || rc=$?
expect_eq "$rc" 1 "stream of the rebuilt disk on the store of the first: exit status"
grep -q "fingerprint differs" "$T/refuse8.err" || fail "no fingerprint refusal: $(cat "$T/refuse8.err")"
start_streamer "$T/disk-v1.img" "$s_fs" --no-background
expect_ok "the same disk resumes: qemu-img compare" qemu-img compare -q -f raw "$T/disk-v1.img" "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
pass "a disk rebuilt with the same size, partition table and ends is refused; the same disk resumes"

# A device smaller than the image is refused.
small="$T/small.img"
fallocate -l $((size / 2)) "$small" 2>/dev/null || head -c $((size / 2)) /dev/zero >"$small"
rc=0
timeout 30 "$IMGSTREAM" stream "$src" --store "$T/s6" --device "$small" --listen "unix:$T/s6.sock" \
    >/dev/null 2>"$T/small.err" || rc=$?
expect_eq "$rc" 1 "--device smaller than the image: exit status"
grep -q '^imgstream: error: ' "$T/small.err" || fail "--device too small: no error line: $(cat "$T/small.err")"
pass "--device smaller than the image is refused"

# A source that is not there: exit 1, one error line naming it, no store left half made.
rc=0
timeout 30 "$IMGSTREAM" stream "nbd+unix:///?socket=$T/nobody.sock" --store "$T/s8" \
    --listen "unix:$T/s8.sock" >/dev/null 2>"$T/nobody.err" || rc=$?
expect_eq "$rc" 1 "stream of an unreachable source: exit status"
expect_eq "$(wc -l <"$T/nobody.err")" 1 "stream of an unreachable source: lines on stderr"
grep -q "^imgstream: error: .*nobody.sock" "$T/nobody.err" ||
    fail "unreachable source: the error line does not name it: $(cat "$T/nobody.err")"
[[ ! -e $T/s8/meta ]] || fail "unreachable source: a store was made in $T/s8"
pass "an unreachable source: exit 1 with one error line"

# A second streamer on a store in use: refused (exit 1, one error line), the
# first one unharmed.
s9="$T/s9"
start_streamer "$src" "$s9" --rate 1M
first_pid=$STREAMER_PID
first_uri=$STREAMER_URI
rc=0
timeout 30 "$IMGSTREAM" stream "$src" --store "$s9" --listen "unix:$T/s9b.sock" \
    >/dev/null 2>"$T/busy.err" || rc=$?
expect_eq "$rc" 1 "second streamer on a store in use: exit status"
grep -q "^imgstream: error: .*$s9" "$T/busy.err" || fail "store in use: no error line naming the store: $(cat "$T/busy.err")"
expect_ok "the first streamer still serves" qemu-io -r -f raw -c "read 0 65536" "$first_uri"
stop_server_ok "$first_pid"
pass "a second streamer on a store in use is refused"

# A store made with --region-size 256K resumes without repeating the option
# (DESIGN.md: `stream` on an existing store resumes it; the region size is in
# the store's header); an explicit other region size is refused.
s11="$T/s11"
start_streamer "$src" "$s11" --region-size 256K --no-background
expect_ok "qemu-io read" qemu-io -r -f raw -c "read 0 4096" "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
rc=0
timeout 30 "$IMGSTREAM" stream "$src" --store "$s11" --region-size 64K --listen "unix:$T/s11.sock" \
    >/dev/null 2>"$T/rs.err" || rc=$?
expect_eq "$rc" 1 "resume with another explicit --region-size: exit status"
grep -q "^imgstream: error: .*$s11" "$T/rs.err" || fail "resume with another region size: error line: $(cat "$T/rs.err")"
rc=0
timeout 60 "$IMGSTREAM" stream "$src" --store "$s11" --listen "unix:$T/s11.sock" \
    --run "$wait_cmd $(printf %q "$s11") detached 50" >/dev/null 2>"$T/rs2.err" || rc=$?
[[ $rc -eq 0 ]] ||
    fail "resuming a store made with --region-size 256K without the option failed (exit $rc): $(cat "$T/rs2.err")"
expect_eq "$(st "$s11" region_size)" $((256 * 1024)) "region_size of the resumed store"
expect_ok "qemu-img compare (256K regions)" qemu-img compare -f raw "$s11/data" -F raw "$img"
pass "a store resumes with its own region size; another explicit one is refused"

# --no-background: once the client has read every region, the copy is
# complete: the source is let go and the state becomes detached (DESIGN.md:
# "detach when complete"), without a restart.
s10="$T/s10"
start_streamer "$src" "$s10" --no-background
timeout 120 nbdcopy --no-extents "$STREAMER_URI" null: || fail "nbdcopy of the whole stream (--no-background) failed"
# Reads are answered before their store writes: give the queued writes a moment.
for ((i = 0; i < 100; i++)); do
    [[ $(st "$s10" regions_present) == "$SIZE_MIB" ]] && break
    sleep 0.1
done
expect_eq "$(st "$s10" regions_present)" "$SIZE_MIB" "regions_present after reading everything with --no-background"
deadline=$((SECONDS + 10))
while [[ $(st "$s10" state) != detached ]] && ((SECONDS < deadline)); do sleep 0.2; done
state="$(st "$s10" state)"
stop_server_ok "$STREAMER_PID"
[[ $state == detached ]] ||
    fail "--no-background: every region present but the running streamer's state is '$state', not detached, 10 s later (the source is never let go)"
pass "--no-background: complete after demand reads alone, detached"

# ctl pause also holds a batch that was waiting for rate tokens when the
# pause came: with --rate 64K and 1 MiB batches the second batch waits 16 s
# for its tokens; pause, then lift the rate: nothing may be fetched while
# paused.
s12="$T/s12"
start_streamer "$src" "$s12" --rate 64K --batch 1M
wait_field_ge "$s12" regions_present 1 30
sleep 0.5
expect_ok "ctl pause" "$IMGSTREAM" ctl "$s12" pause
pa="$(st "$s12" regions_present)"
expect_ok "ctl rate 0 while paused" "$IMGSTREAM" ctl "$s12" rate 0
sleep 2
pb="$(st "$s12" regions_present)"
expect_eq "$(st "$s12" state)" paused "state after ctl rate 0 while paused"
stop_server_ok "$STREAMER_PID"
[[ $pb == "$pa" ]] ||
    fail "paused, yet regions_present went from $pa to $pb once the rate limit was lifted: a batch waiting in the rate limiter is issued despite the pause"
pass "ctl pause holds a batch waiting for rate tokens"

# ---------------------------------------------------------------- status --watch
s13="$T/s13"
start_streamer "$src" "$s13" --rate 16M
rc=0
timeout 120 "$IMGSTREAM" status "$s13" --watch --interval 0.2 >"$T/watch.out" 2>&1 || rc=$?
[[ $rc -eq 0 ]] || { cat "$T/watch.out" >&2; fail "status --watch exited $rc"; }
grep -qE "streaming +[0-9.]+%.*MB/s +ETA" "$T/watch.out" ||
    { cat "$T/watch.out" >&2; fail "status --watch printed no live progress line (percent, MB/s, ETA)"; }
tail -1 "$T/watch.out" | grep -qE "detached +100.0%" ||
    { cat "$T/watch.out" >&2; fail "status --watch did not end at detached 100%"; }
stop_server_ok "$STREAMER_PID"
pass "status --watch shows live progress and ends when the stream is detached"

kill_source "$src_pid" TERM
