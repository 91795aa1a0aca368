#!/usr/bin/env bash
# pack.sh - benchmark packs (docs/pack-format.md) and streaming them from a
# plain web server (nginx on loopback), side by side with the peers, in the
# same run (issue 5):
#
#   1. Pack size and speed: `imgstream pack` (CHUNK, default 128 KiB chunks, zstd
#      level 6) against `zstd -3 -T0` of the whole raw image, for the bootable
#      test disk (tests/fixtures/make-boot-disk.sh) and a second image: an
#      ext4 file system made with `mkfs.ext4 -d IMAGE2_DIR` (real binaries and
#      libraries of this machine). Context: pack --chunk-size 1M and `casync
#      make` (its chunk store's size). Required: pack / zstd at most 1.1.
#   2. Boot from nginx through `imgstream stream http://...`: a pack written
#      with a boot profile (--profile: the boot set first, fetched in one
#      range request) against one in address order. The profile is merged
#      from three boots of the disk through `stream` (fresh stores,
#      --no-background). Each boot: fresh store, --no-background (so that
#      the HTTP requests counted are the boot's own), seconds from starting
#      `stream` to the guest's marker, and the requests and body bytes nginx
#      logged for the pack by then; plus one run of each with background
#      hydration on.
#   3. Moving a store between two versions of the disk that differ in one
#      file (V2_FILE, default /data/big-1, rewritten with new random bytes of
#      the same size with debugfs on the ext4 root partition): imgstream
#      (v2 packed standalone on the server; `stream http://.../v2.pack --seed
#      V1_STORE`), bytes nginx sent for v2.pack; the changed chunks' size from
#      `pack diff --json` (new_bytes_stored); `casync extract --seed=v1.img
#      http://.../v2.caibx --store=http://.../store.castr`, bytes nginx sent
#      for that (index + chunks). Required: imgstream's bytes at most casync's.
#
# Times and speeds are the median of REPS runs; sizes and byte counts are
# exact (the same every run). nginx logs every request as "METHOD URI STATUS
# BODY_BYTES RANGE"; the byte counts are its $body_bytes_sent.
#
# Usage: bench/pack.sh > result.md
# Environment:
#   REPS=3           runs per measured time (REPEAT is accepted too)
#   ROWS="1 2 3"     rows to run
#   CHUNK=128K       chunk size of the packs (imgstream's default)
#   IMAGE2_DIR=/usr/lib/x86_64-linux-gnu   the second image's content for row 1
#                    (empty: boot disk only); IMAGE2_MIB: its size (default:
#                    the directory's size + 25%)
#   V2_FILE=/data/big-1   the file of the ext4 root that row 3 rewrites
#   BOOT_TIMEOUT=300 (seconds per boot)   BENCH_TIMEOUT=3600 (the whole run)
#   IMGSTREAM=build/imgstream
# Needs: nginx, zstd, casync, qemu-system-x86_64, qemu-img, jq, python3,
# sfdisk, debugfs, mkfs.ext4, curl (and root, for make-boot-disk.sh).
set -euo pipefail

if [[ -z ${_IMGSTREAM_BENCH_BOUNDED:-} ]]; then
    export _IMGSTREAM_BENCH_BOUNDED=1
    exec timeout --kill-after=15 "${BENCH_TIMEOUT:-3600}" bash "$0" "$@"
fi

source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../tests/lib/nginx.sh"

REPS="${REPS:-${REPEAT:-3}}"
ROWS="${ROWS:-1 2 3}"
CHUNK="${CHUNK:-128K}"   # imgstream's default chunk size
CHUNK_BYTES="$(numfmt --from=iec "$CHUNK")"
IMAGE2_DIR="${IMAGE2_DIR-/usr/lib/x86_64-linux-gnu}"
IMAGE2_MIB="${IMAGE2_MIB:-}"
V2_FILE="${V2_FILE:-/data/big-1}"
BOOT_TIMEOUT="${BOOT_TIMEOUT:-300}"
IMGSTREAM="${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}"
[[ $IMGSTREAM == /* ]] || IMGSTREAM="$BENCH_REPO_ROOT/$IMGSTREAM"

die() {
    echo "pack.sh: error: $*" >&2
    exit 1
}
log() { echo "  $*" >&2; }

for tool in nginx zstd casync qemu-system-x86_64 qemu-img jq python3 sfdisk debugfs mkfs.ext4 curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $IMGSTREAM ]] || die "no imgstream binary at $IMGSTREAM"
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive number"
NGINX="$(command -v nginx)"

bench_init
# Private copy of the binary: a rebuild during the run cannot change it.
cp "$IMGSTREAM" "$BENCH_TMP/imgstream"
IMGSTREAM="$BENCH_TMP/imgstream"

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}
ratio3() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.3f", a / b }'
}
mb() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.1f", b / 1e6 }'; }
mbs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s == "-" || s <= 0) print "-"; else printf "%.0f", b / s / 1e6 }'; }
has_row() { [[ " $ROWS " == *" $1 "* ]]; }
pack_field() { "$IMGSTREAM" info --json "$1" | jq -r --arg f "$2" '.[$f]'; }
status_field() { "$IMGSTREAM" status "$1" --json | jq -r --arg f "$2" '.[$f]'; }

# ---------------------------------------------------------------- nginx
# nginx_start ROOT: a foreground single-process nginx serving ROOT on a free
# loopback port, logging each request to $NGINX_LOG; sets NGINX_PID, NGINX_URL.
nginx_start() {
    local root="$1" d="$BENCH_TMP/nginx" port i
    port="$(nginx_free_port)"
    NGINX_LOG="$d/access.log"
    nginx_write_conf "$d" "$root" "$port"
    bench_spawn "$d/stderr.log" "$NGINX" -c "$d/nginx.conf" -p "$d"
    NGINX_PID=$SPAWN_PID
    NGINX_URL="http://127.0.0.1:$port"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited at start: $(tail -n 5 "$d/stderr.log" "$d/error.log")"
        curl -s -o /dev/null "$NGINX_URL/" && return 0
        sleep 0.1
    done
    die "nginx did not answer on $NGINX_URL within 10 s"
}
log_lines() { wc -l <"$NGINX_LOG"; }
# log_since LINE: the access log's lines after LINE.
log_since() { tail -n +"$(($1 + 1))" "$NGINX_LOG"; }
# requests_bytes URI_REGEX < log lines: "REQUESTS BODY_BYTES"
requests_bytes() { awk -v u="$1" '$2 ~ u { n++; s += $4 } END { print n + 0, s + 0 }'; }

# ---------------------------------------------------------------- the streamer
# stream_start SOURCE STORE [ARGS...]: imgstream stream on a unix socket, in
# the background; waits for its URI. Sets STREAM_PID, STREAM_URI.
STREAM_SEQ=0
stream_start() {
    local source="$1" store="$2" out i
    shift 2
    STREAM_SEQ=$((STREAM_SEQ + 1))
    out="$BENCH_TMP/stream$STREAM_SEQ.out"
    bench_spawn "$BENCH_TMP/stream$STREAM_SEQ.err" "$IMGSTREAM" stream "$source" --store "$store" \
        --listen "unix:$BENCH_TMP/stream$STREAM_SEQ.sock" "$@"
    STREAM_PID=$SPAWN_PID
    # bench_spawn sends stdout and stderr to one log: the URI is its first nbd line.
    STREAM_URI=""
    for ((i = 0; i < 300; i++)); do
        STREAM_URI="$(grep -m1 '^nbd' "$BENCH_TMP/stream$STREAM_SEQ.err" 2>/dev/null || true)"
        [[ -n $STREAM_URI ]] && return 0
        kill -0 "$STREAM_PID" 2>/dev/null ||
            die "imgstream stream $source exited: $(tail -n 5 "$BENCH_TMP/stream$STREAM_SEQ.err")"
        sleep 0.02
    done
    die "imgstream stream $source printed no URI within 6 s"
}
wait_detached() { # STORE SECS
    local deadline=$((SECONDS + $2))
    while [[ $(status_field "$1" state) != detached ]]; do
        ((SECONDS < deadline)) || die "store $1 not detached after $2 s: $("$IMGSTREAM" status "$1" --json)"
        sleep 0.05
    done
}

# ---------------------------------------------------------------- the disk
disk="$BENCH_TMP/boot.img"
bench_boot_disk "$disk"
md5="$BOOT_DISK_MD5"
disk_bytes="$(stat -c %s "$disk")"
disk_mib=$((disk_bytes >> 20))
www="$BENCH_TMP/www"
mkdir -p "$www"
nginx_start "$www"

# boot DRIVE -> elapsed seconds from qemu start to the marker
boot() {
    local out
    out="$(BOOT_QUIET=1 BOOT_EXPECT_MD5="$md5" "$BENCH_REPO_ROOT/tests/lib/boot.sh" "$1" "$BOOT_TIMEOUT")" ||
        die "boot from $1 failed: $out"
    sed -n 's/^elapsed_seconds=//p' <<<"$out"
}

# ---------------------------------------------------------------- row 1
# R1[name,field]: pack, pack1m, zstd, casync sizes and seconds.
declare -A R1
R1_IMAGES=()
row1_image() { # NAME IMAGE
    local name="$1" img="$2" bytes t ps=() zs=() rep
    bytes="$(stat -c %s "$img")"
    R1_IMAGES+=("$name")
    R1[$name,bytes]=$bytes
    cat "$img" >/dev/null # into the page cache, for every tool alike
    for ((rep = 1; rep <= REPS; rep++)); do
        rm -f "$BENCH_TMP/r1.pack" "$BENCH_TMP/r1.zst"
        t="$(now)"
        "$IMGSTREAM" pack "$img" -o "$BENCH_TMP/r1.pack" --chunk-size "$CHUNK" -q >/dev/null 2>"$BENCH_TMP/pack.err" ||
            die "imgstream pack $img failed: $(tail -n 3 "$BENCH_TMP/pack.err")"
        ps+=("$(since "$t")")
        t="$(now)"
        zstd -3 -T0 -q -f "$img" -o "$BENCH_TMP/r1.zst" || die "zstd -3 of $img failed"
        sync -f "$BENCH_TMP/r1.zst"
        zs+=("$(since "$t")")
        log "row 1 $name rep $rep: pack ${ps[-1]} s, zstd -3 -T0 ${zs[-1]} s"
    done
    R1[$name,pack]="$(stat -c %s "$BENCH_TMP/r1.pack")"
    R1[$name,pack_s]="$(median "${ps[@]}")"
    R1[$name,zstd]="$(stat -c %s "$BENCH_TMP/r1.zst")"
    R1[$name,zstd_s]="$(median "${zs[@]}")"
    "$IMGSTREAM" pack "$img" -o "$BENCH_TMP/r1-1m.pack" --chunk-size 1M -q >/dev/null 2>&1 ||
        die "imgstream pack --chunk-size 1M $img failed"
    R1[$name,pack1m]="$(stat -c %s "$BENCH_TMP/r1-1m.pack")"
    # The bound for chunks compressed independently: zstd -3 of each CHUNK
    # piece of the image alone (all-zero pieces left out, as a pack stores none).
    rm -rf "$BENCH_TMP/split"
    mkdir "$BENCH_TMP/split"
    split -b "$CHUNK_BYTES" -a 6 "$img" "$BENCH_TMP/split/c"
    find "$BENCH_TMP/split" -type f -size "${CHUNK_BYTES}c" -print0 |
        xargs -0 -r python3 -c 'import sys, os
for p in sys.argv[1:]:
    with open(p, "rb") as f:
        d = f.read()
        if d.count(0) == len(d): os.unlink(p)' 
    find "$BENCH_TMP/split" -type f -print0 | xargs -0 -r zstd -3 -q --rm
    R1[$name,perchunk]="$(find "$BENCH_TMP/split" -type f -printf '%s\n' | awk -v c="$CHUNK_BYTES" '{ s += ($1 > c ? c : $1) } END { print s + 0 }')"
    rm -rf "$BENCH_TMP/split"
    rm -rf "$BENCH_TMP/r1.castr" "$BENCH_TMP/r1.caibx"
    t="$(now)"
    casync make --store="$BENCH_TMP/r1.castr" "$BENCH_TMP/r1.caibx" "$img" >/dev/null 2>"$BENCH_TMP/casync.err" ||
        die "casync make $img failed: $(tail -n 3 "$BENCH_TMP/casync.err")"
    R1[$name,casync_s]="$(since "$t")"
    R1[$name,casync]=$(($(du -sb --apparent-size "$BENCH_TMP/r1.castr" | cut -f1) + $(stat -c %s "$BENCH_TMP/r1.caibx")))
    rm -rf "$BENCH_TMP/r1.pack" "$BENCH_TMP/r1-1m.pack" "$BENCH_TMP/r1.zst" "$BENCH_TMP/r1.castr" "$BENCH_TMP/r1.caibx"
}
if has_row 1; then
    row1_image "boot disk ($disk_mib MiB)" "$disk"
    if [[ -n $IMAGE2_DIR ]]; then
        [[ -d $IMAGE2_DIR ]] || die "IMAGE2_DIR $IMAGE2_DIR is not a directory"
        if [[ -z $IMAGE2_MIB ]]; then
            IMAGE2_MIB="$(du -sm "$IMAGE2_DIR" | awk '{ printf "%d", $1 * 1.25 + 64 }')"
        fi
        img2="$BENCH_TMP/image2.img"
        truncate -s "${IMAGE2_MIB}M" "$img2"
        log "row 1: mkfs.ext4 -d $IMAGE2_DIR on $IMAGE2_MIB MiB ..."
        mkfs.ext4 -q -F -b 4096 -d "$IMAGE2_DIR" "$img2" >"$BENCH_TMP/mkfs.log" 2>&1 ||
            die "mkfs.ext4 -d $IMAGE2_DIR failed: $(tail -n 3 "$BENCH_TMP/mkfs.log")"
        row1_image "ext4 of $IMAGE2_DIR ($IMAGE2_MIB MiB)" "$img2"
        rm -f "$img2"
    fi
fi

# ---------------------------------------------------------------- row 2
declare -A R2
if has_row 2; then
    # The profile: three boots through stream of the local disk, fresh stores.
    for i in 1 2 3; do
        stream_start "$disk" "$BENCH_TMP/rec$i" --no-background
        s="$(boot "$STREAM_URI")"
        bench_stop "$STREAM_PID"
        [[ -s $BENCH_TMP/rec$i/boot.trace ]] || die "store rec$i recorded no boot.trace"
        log "row 2: recording boot $i: $s s"
    done
    "$IMGSTREAM" profile merge "$BENCH_TMP/rec1" "$BENCH_TMP/rec2" "$BENCH_TMP/rec3" \
        -o "$BENCH_TMP/boot.prof" >/dev/null 2>"$BENCH_TMP/merge.err" ||
        die "profile merge failed: $(tail -n 3 "$BENCH_TMP/merge.err")"
    rm -rf "$BENCH_TMP"/rec?
    "$IMGSTREAM" pack "$disk" -o "$www/prof.pack" --chunk-size "$CHUNK" --profile "$BENCH_TMP/boot.prof" -q >/dev/null 2>&1 ||
        die "pack --profile failed"
    "$IMGSTREAM" pack "$disk" -o "$www/addr.pack" --chunk-size "$CHUNK" -q >/dev/null 2>&1 || die "pack failed"
    R2[boot_chunks]="$(pack_field "$www/prof.pack" boot_chunks)"
    R2[boot_bytes]="$("$IMGSTREAM" info --json "$www/prof.pack" | jq '.boot_range[1] - .boot_range[0]')"
    ((R2[boot_chunks] > 0)) || die "the profile-ordered pack has no boot set"

    # boot_http KIND [STREAM-ARGS]: one boot through a fresh store; sets BH_S
    # (seconds from starting stream to the marker), BH_N and BH_B (requests
    # and body bytes nginx logged for the pack by then), BH_W (reads waited).
    boot_http() {
        local kind="$1" mark t0 startup s store="$BENCH_TMP/r2-store"
        shift
        rm -rf "$store"
        mark="$(log_lines)"
        t0="$(now)"
        stream_start "$NGINX_URL/$kind.pack" "$store" "$@"
        startup="$(since "$t0")"
        s="$(boot "$STREAM_URI")"
        read -r BH_N BH_B <<<"$(log_since "$mark" | requests_bytes "^/${kind}[.]pack\$")"
        BH_W="$(status_field "$store" reads_waited)"
        BH_S="$(awk -v a="$startup" -v b="$s" 'BEGIN { printf "%.2f", a + b }')"
        bench_stop "$STREAM_PID"
        rm -rf "$store"
    }
    for ((rep = 1; rep <= REPS; rep++)); do
        for kind in prof addr; do
            boot_http "$kind" --no-background
            echo "$BH_S" >>"$BENCH_TMP/r2-$kind-s"
            echo "$BH_N" >>"$BENCH_TMP/r2-$kind-n"
            echo "$BH_B" >>"$BENCH_TMP/r2-$kind-b"
            echo "$BH_W" >>"$BENCH_TMP/r2-$kind-w"
            log "row 2 rep $rep $kind.pack (--no-background): marker after $BH_S s, $BH_N requests, $BH_B bytes, $BH_W reads waited"
        done
    done
    for kind in prof addr; do
        for f in s n b w; do
            # shellcheck disable=SC2046
            R2[$kind,$f]="$(median $(cat "$BENCH_TMP/r2-$kind-$f"))"
        done
        boot_http "$kind"
        R2[$kind,bg_s]=$BH_S R2[$kind,bg_n]=$BH_N R2[$kind,bg_b]=$BH_B
        log "row 2 $kind.pack (background on): marker after $BH_S s, $BH_N requests, $BH_B bytes"
    done
    rm -f "$www/prof.pack" "$www/addr.pack"
fi

# ---------------------------------------------------------------- row 3
declare -A R3
if has_row 3; then
    # v2: V2_FILE of the ext4 root partition rewritten with new random bytes.
    read -r p2_start p2_sectors < <(sfdisk -J "$disk" | jq -r '.partitiontable.partitions[1] | "\(.start) \(.size)"')
    [[ -n $p2_start && $p2_start != null ]] || die "no second partition in the boot disk"
    dd if="$disk" of="$BENCH_TMP/p2.img" bs=512 skip="$p2_start" count="$p2_sectors" status=none
    file_bytes="$(debugfs -R "stat $V2_FILE" "$BENCH_TMP/p2.img" 2>/dev/null | sed -n 's/.*Size: \([0-9]*\)$/\1/p' | head -n 1)"
    [[ -n $file_bytes && $file_bytes -gt 0 ]] || die "$V2_FILE is not a file of the root partition"
    head -c "$file_bytes" /dev/urandom >"$BENCH_TMP/newfile"
    debugfs -w -R "rm $V2_FILE" "$BENCH_TMP/p2.img" >"$BENCH_TMP/debugfs.log" 2>&1 || die "debugfs rm $V2_FILE failed"
    debugfs -w -R "write $BENCH_TMP/newfile $V2_FILE" "$BENCH_TMP/p2.img" >>"$BENCH_TMP/debugfs.log" 2>&1 ||
        die "debugfs write $V2_FILE failed"
    debugfs -R "cat $V2_FILE" "$BENCH_TMP/p2.img" 2>/dev/null | cmp -s - "$BENCH_TMP/newfile" ||
        die "debugfs did not write $V2_FILE: $(cat "$BENCH_TMP/debugfs.log")"
    v1="$BENCH_TMP/v1.img"
    v2="$BENCH_TMP/v2.img"
    cp "$disk" "$v1"
    cp "$disk" "$v2"
    dd if="$BENCH_TMP/p2.img" of="$v2" bs=512 seek="$p2_start" conv=notrunc status=none
    rm -f "$BENCH_TMP/p2.img" "$BENCH_TMP/newfile"
    R3[changed_blocks]="$({ cmp -l "$v1" "$v2" || true; } | awk '{ b = int(($1 - 1) / 4096); if (b != last) n++; last = b } END { print n + 0 }')"

    # imgstream: both versions packed standalone; the client holds a complete v1 store.
    "$IMGSTREAM" pack "$v1" -o "$www/v1.pack" --chunk-size "$CHUNK" -q >/dev/null 2>&1 || die "pack v1 failed"
    "$IMGSTREAM" pack "$v2" -o "$www/v2.pack" --chunk-size "$CHUNK" -q >/dev/null 2>&1 || die "pack v2 failed"
    "$IMGSTREAM" pack diff --json "$www/v1.pack" "$www/v2.pack" >"$BENCH_TMP/diff.json" || die "pack diff failed"
    R3[new_chunks]="$(jq .new_chunks "$BENCH_TMP/diff.json")"
    R3[new_stored]="$(jq .new_bytes_stored "$BENCH_TMP/diff.json")"
    R3[new_image]="$(jq .new_bytes_image "$BENCH_TMP/diff.json")"
    stream_start "$www/v1.pack" "$BENCH_TMP/v1-store"
    wait_detached "$BENCH_TMP/v1-store" 600
    bench_stop "$STREAM_PID"

    # casync: both versions into one chunk store (default chunk sizes, zstd).
    casync make --store="$www/store.castr" "$www/v1.caibx" "$v1" >/dev/null 2>"$BENCH_TMP/casync.err" ||
        die "casync make v1 failed: $(tail -n 3 "$BENCH_TMP/casync.err")"
    casync make --store="$www/store.castr" "$www/v2.caibx" "$v2" >/dev/null 2>"$BENCH_TMP/casync.err" ||
        die "casync make v2 failed: $(tail -n 3 "$BENCH_TMP/casync.err")"

    is=() cs=()
    for ((rep = 1; rep <= REPS; rep++)); do
        store="$BENCH_TMP/v2-store"
        rm -rf "$store"
        mark="$(log_lines)"
        t0="$(now)"
        stream_start "$NGINX_URL/v2.pack" "$store" --seed "$BENCH_TMP/v1-store"
        wait_detached "$store" 600
        is+=("$(since "$t0")")
        bench_stop "$STREAM_PID"
        qemu-img compare -q -f raw "$store/data" -F raw "$v2" || die "the seeded stream's copy differs from v2"
        read -r "R3[img_requests]" "R3[img_bytes]" <<<"$(log_since "$mark" | requests_bytes '[.]pack$')"
        R3[img_fetched]=$(($(status_field "$store" bytes_fetched_demand) + $(status_field "$store" bytes_fetched_background) + $(status_field "$store" bytes_prefetched)))
        R3[img_seeded]="$(status_field "$store" bytes_seeded)"
        rm -rf "$store"

        rm -f "$BENCH_TMP/v2.out"
        mark="$(log_lines)"
        t0="$(now)"
        casync extract --seed="$v1" --store="$NGINX_URL/store.castr" "$NGINX_URL/v2.caibx" "$BENCH_TMP/v2.out" \
            >/dev/null 2>"$BENCH_TMP/casync.err" || die "casync extract failed: $(tail -n 3 "$BENCH_TMP/casync.err")"
        cs+=("$(since "$t0")")
        cmp -s "$BENCH_TMP/v2.out" "$v2" || die "casync extract's v2.out differs from v2"
        read -r "R3[ca_requests]" "R3[ca_bytes]" <<<"$(log_since "$mark" | requests_bytes '.')"
        rm -f "$BENCH_TMP/v2.out"
        log "row 3 rep $rep: imgstream ${R3[img_bytes]} bytes in ${R3[img_requests]} requests, ${is[-1]} s;" \
            "casync ${R3[ca_bytes]} bytes in ${R3[ca_requests]} requests, ${cs[-1]} s"
    done
    R3[img_s]="$(median "${is[@]}")"
    R3[ca_s]="$(median "${cs[@]}")"
    R3[file_bytes]=$file_bytes
fi

# ---------------------------------------------------------------- report
echo "### imgstream pack: size, speed, boot from a web server, updates (against zstd and casync)"
echo
machine_info
echo "- peers: zstd $(zstd --version | grep -o 'v[0-9.]*' | head -n 1), casync $(casync --version 2>&1 | grep -o '[0-9][0-9.]*' | head -n 1) (Debian), $(nginx -v 2>&1 | sed 's/.*: //') on loopback (sendfile, single process)"
echo "- test disk: tests/fixtures/make-boot-disk.sh, $disk_mib MiB; times are the median of $REPS run(s) (REPS), sizes and byte counts are exact"
echo
REQ=()
if has_row 1; then
    echo "| 1. pack size and speed | image MB | imgstream pack MB | zstd -3 -T0 MB | pack / zstd | pack MB/s | zstd MB/s | zstd -3 of each $CHUNK chunk alone MB (/ zstd) | pack --chunk-size 1M MB (/ zstd) | casync make store+index MB (MB/s) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in "${R1_IMAGES[@]}"; do
        b=${R1[$name,bytes]}
        r="$(ratio "${R1[$name,pack]}" "${R1[$name,zstd]}")"
        echo "| $name | $(mb "$b") | $(mb "${R1[$name,pack]}") | $(mb "${R1[$name,zstd]}") | $r |" \
            "$(mbs "$b" "${R1[$name,pack_s]}") | $(mbs "$b" "${R1[$name,zstd_s]}") |" \
            "$(mb "${R1[$name,perchunk]}") ($(ratio "${R1[$name,perchunk]}" "${R1[$name,zstd]}")) |" \
            "$(mb "${R1[$name,pack1m]}") ($(ratio "${R1[$name,pack1m]}" "${R1[$name,zstd]}")) |" \
            "$(mb "${R1[$name,casync]}") ($(mbs "$b" "${R1[$name,casync_s]}")) |"
        if awk -v r="$r" 'BEGIN { exit !(r != "-" && r <= 1.10) }'; then
            REQ+=("PASS: row 1: $name: pack / zstd -3 = $r (required: at most 1.10)")
        else
            REQ+=("FAIL: row 1: $name: pack / zstd -3 = $r (required: at most 1.10)")
        fi
    done
    echo
    echo "zstd -3 of each $CHUNK chunk alone: the smallest a pack of independently compressed $CHUNK chunks can be at level 3" \
        "(each piece of the image compressed by the zstd CLI on its own, all-zero pieces left out, none counted above $CHUNK)."
    echo
fi
if has_row 2; then
    echo "| 2. boot under qemu TCG through \`stream http://...\` from nginx, fresh store | s from \`stream\` start to the marker | HTTP requests by the marker | MB sent by the marker | reads that waited on the server |"
    echo "|---|---:|---:|---:|---:|"
    echo "| profile-ordered pack (boot set: ${R2[boot_chunks]} chunks, $(mb "${R2[boot_bytes]}") MB, one range), --no-background | ${R2[prof,s]} | ${R2[prof,n]} | $(mb "${R2[prof,b]}") | ${R2[prof,w]} |"
    echo "| address-ordered pack, --no-background | ${R2[addr,s]} | ${R2[addr,n]} | $(mb "${R2[addr,b]}") | ${R2[addr,w]} |"
    echo "| profile / address | $(ratio "${R2[prof,s]}" "${R2[addr,s]}") | $(ratio "${R2[prof,n]}" "${R2[addr,n]}") | $(ratio "${R2[prof,b]}" "${R2[addr,b]}") | |"
    echo "| profile-ordered pack, background on (1 run) | ${R2[prof,bg_s]} | ${R2[prof,bg_n]} | $(mb "${R2[prof,bg_b]}") | |"
    echo "| address-ordered pack, background on (1 run) | ${R2[addr,bg_s]} | ${R2[addr,bg_n]} | $(mb "${R2[addr,bg_b]}") | |"
    echo
    echo "The profile: \`profile merge\` of three boots through \`stream\` of the local disk (fresh stores, --no-background)." \
        "Requests counted: every request nginx logged for the pack between starting \`stream\` and the marker (header, index, chunks);" \
        "--no-background, so that they are the boot's own. nginx on loopback adds no latency: on a real network each request costs at least a round trip."
    echo
fi
if has_row 3; then
    echo "| 3. move a store from v1 to v2 (v2: ${V2_FILE} rewritten, $(mb "${R3[file_bytes]}") MB, ${R3[changed_blocks]} 4 KiB blocks of the image differ) | bytes over HTTP | HTTP requests | s | / casync |"
    echo "|---|---:|---:|---:|---:|"
    echo "| imgstream: \`stream http://.../v2.pack --seed V1_STORE\` (v2.pack standalone; bytes nginx sent, header + index + chunks) | ${R3[img_bytes]} | ${R3[img_requests]} | ${R3[img_s]} | $(ratio3 "${R3[img_bytes]}" "${R3[ca_bytes]}") |"
    echo "| the changed chunks: \`pack diff --json\` new_bytes_stored (${R3[new_chunks]} chunks of $CHUNK; ${R3[new_image]} bytes of image) | ${R3[new_stored]} | | | $(ratio3 "${R3[new_stored]}" "${R3[ca_bytes]}") |"
    echo "| casync: \`extract --seed=v1.img http://.../v2.caibx --store=http://.../store.castr\` (bytes nginx sent, index + chunks) | ${R3[ca_bytes]} | ${R3[ca_requests]} | ${R3[ca_s]} | 1 |"
    echo
    echo "imgstream's stream fetched ${R3[img_fetched]} bytes of image (status: fetched) and seeded ${R3[img_seeded]} from the v1 store."
    echo
    if ((R3[img_bytes] <= R3[ca_bytes])); then
        REQ+=("PASS: row 3: imgstream moved the store with ${R3[img_bytes]} bytes <= casync's ${R3[ca_bytes]} (required: no more than casync)")
    else
        REQ+=("FAIL: row 3: imgstream moved the store with ${R3[img_bytes]} bytes > casync's ${R3[ca_bytes]} (required: no more than casync)")
    fi
fi
if ((${#REQ[@]})); then
    echo "Requirements (issue 5):"
    echo
    printf -- '- %s\n' "${REQ[@]}"
    echo
fi
