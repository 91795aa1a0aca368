#!/usr/bin/env bash
# boot.sh - boot profiles (issue 4): boot the bootable test disk
# (tests/fixtures/make-boot-disk.sh, 512 MiB, a boot reads ~22 MiB of it)
# under qemu TCG from a "remote" source with RDELAY (10 ms) per request, side
# by side in the same run:
#
#   1. local         the image file itself (the baseline)
#   2. direct        qemu -> the NBD source (nbdkit file plugin, --filter=delay
#                    rdelay=RDELAY, unix socket): no local copy
#   3. stream        imgstream stream SRC --store FRESH --no-background
#   4. stream+prof   the same with --profile P
#   5. stream+prof+bg  imgstream stream SRC --store FRESH --profile P, background
#                    hydration on (the default): it must not slow the boot
#
# The profile P is made first, in the run: RECORD_BOOTS (3) boots through
# `imgstream stream --no-background`, each from a fresh store (a new store
# records its first boot in STORE/boot.trace), merged with `imgstream profile
# merge`. Each repetition then boots every row once, in the order above, and
# the table shows the median of REPS repetitions.
#
# Measured per boot: seconds from the start of qemu (rows 1, 2) or of the
# streamer (rows 3-5: the streamer's start-up and its head start on the
# prefetch count against it) to the guest's IMGSTREAM-BOOT-OK marker (its md5
# is checked); for rows 3-5, from `imgstream status STORE --json` taken right
# after the marker (qemu stopped, streamer still running): the bytes fetched
# from the source (bytes_fetched_demand + bytes_fetched_background +
# bytes_prefetched), prefetch_precision, reads_waited, wait_seconds and
# hit_ratio. With --no-background (rows 3, 4) the guest reads nothing after
# the marker and nothing else fetches, so those bytes are exactly what the
# boot needed; row 5's include what background hydration copied meanwhile.
#
# Required (row 4): at most 1.15x the local boot (aim 1.05x), bytes fetched
# before the marker at most 10% of the image, prefetch precision at least 80%.
# Prints a markdown table (to paste into docs/BENCHMARKS.md) with a PASS or
# FAIL line per requirement; exits 1 if any failed.
#
# The real distro (issue 13, point 7): the Debian 12 + systemd disk of
# tests/fixtures/make-distro-disk.sh (2 GiB, cached by tests/lib/distro.sh;
# built first when absent, minutes), which writes as it boots, to the marker
# its systemd unit prints after multi-user.target (having md5-checked every
# file dpkg installed). Its rows, from the same kind of source (nbdkit file
# plugin of the cached image, read-only, --filter=delay rdelay=RDELAY):
#
#   1. local           a writable copy of the image (fresh per repetition,
#                      synced before the boot, so that no writeback of the
#                      copy is charged to it)
#   2. stream+prof     imgstream stream SRC --store FRESH --no-background --profile P
#   3. stream+prof+bg  the same with background hydration on (the default):
#                      required at most 1.05x the local boot
#   4. ... --idle-after 0   background on and never held back (how it was
#                      before issue 13: what holding back saves)
#
# P is made from DISTRO_RECORD_BOOTS (1) boots through `stream
# --no-background`. Each repetition boots rows 1-4 in turn (interleaved, so
# that a load that comes and goes falls on every row alike); the table shows
# medians, the load average seen at each boot, the streamer's CPU time (user
# + sys, /proc/PID/stat at the marker), the regions present at the marker
# and, for rows 3-4, the seconds from the marker (qemu stopped: the machine
# is quiet) until the store is detached.
#
# Usage: bench/boot.sh > result.md
# Environment:
#   REPS=3  RDELAY=10ms  RECORD_BOOTS=3  BOOT_TIMEOUT=300 (seconds per boot)
#   DISKS="busybox distro" (the tables to make)  DISTRO_RECORD_BOOTS=1
#   BENCH_TIMEOUT=3600 (hard bound on the whole run, seconds)
#   IMGSTREAM=build/imgstream  IMGSTREAM_CACHE=.cache (where the disk is built)
# Needs: qemu-system-x86_64, nbdkit (file plugin, delay filter), nbdinfo, jq,
# and root for the first build of the disk.
set -euo pipefail

# A hard bound on the whole run: re-run under timeout (it signals the whole
# process group; the EXIT trap stops every server).
if [[ -z ${_IMGSTREAM_BENCH_BOUNDED:-} ]]; then
    export _IMGSTREAM_BENCH_BOUNDED=1
    exec timeout --kill-after=15 "${BENCH_TIMEOUT:-3600}" bash "$0" "$@"
fi

source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../tests/lib/distro.sh"

REPS="${REPS:-${REPEAT:-3}}"
RDELAY="${RDELAY:-10ms}"
RECORD_BOOTS="${RECORD_BOOTS:-3}"
BOOT_TIMEOUT="${BOOT_TIMEOUT:-300}"
DISKS="${DISKS:-busybox distro}"
DISTRO_RECORD_BOOTS="${DISTRO_RECORD_BOOTS:-1}"
IMGSTREAM="${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}"
[[ $IMGSTREAM == /* ]] || IMGSTREAM="$BENCH_REPO_ROOT/$IMGSTREAM"

die() {
    echo "boot.sh: error: $*" >&2
    exit 1
}
log() { echo "  $*" >&2; }

for tool in qemu-system-x86_64 nbdkit nbdinfo jq; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $IMGSTREAM ]] || die "no imgstream binary at $IMGSTREAM"
[[ $REPS =~ ^[1-9][0-9]*$ && $RECORD_BOOTS =~ ^[1-9][0-9]*$ && $DISTRO_RECORD_BOOTS =~ ^[1-9][0-9]*$ ]] ||
    die "REPS, RECORD_BOOTS and DISTRO_RECORD_BOOTS must be positive integers"
for d in $DISKS; do
    [[ $d == busybox || $d == distro ]] || die "DISKS: '$d' is neither busybox nor distro"
done
has_disk() { [[ " $DISKS " == *" $1 "* ]]; }

bench_init
# Private copy of the binary: a rebuild during the run cannot change it.
cp "$IMGSTREAM" "$BENCH_TMP/imgstream"
IMGSTREAM="$BENCH_TMP/imgstream"

now() { printf '%s' "$EPOCHREALTIME"; }
mib() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.1f", b / 1048576 }'; }
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}
fmt() { # VALUE PRINTF-FORMAT: "-" stays "-"
    awk -v v="$1" -v f="$2" 'BEGIN { if (v == "-") print "-"; else printf f, v }'
}

# boot_once DRIVE -> seconds from qemu's start to the marker (md5 checked):
# the busybox disk's (read-only), or with boot_kind=distro the Debian disk's
# (writable, 1 GiB; tests/lib/distro.sh). qemu is stopped at the marker.
boot_kind=busybox
boot_once() {
    local out
    if [[ $boot_kind == distro ]]; then
        out="$(BOOT_QUIET=1 BOOT_EXPECT_MD5="$md5" distro_boot "$1" "$BOOT_TIMEOUT")" ||
            die "boot of the distro from $1 failed: $out"
    else
        out="$(BOOT_QUIET=1 BOOT_EXPECT_MD5="$md5" "$BENCH_REPO_ROOT/tests/lib/boot.sh" "$1" "$BOOT_TIMEOUT")" ||
            die "boot from $1 failed: $out"
    fi
    sed -n 's/^elapsed_seconds=//p' <<<"$out"
}

# cpu_seconds PID -> user + sys CPU seconds of PID so far
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
load1() { cut -d' ' -f1 /proc/loadavg; }

# boot_stream STORE [STREAM-ARGS...]: boot through a fresh streamer on STORE;
# sets BOOT_SECS (from the streamer's start) and leaves the store's status,
# taken right after the marker, in $BENCH_TMP/status.json, and the streamer's
# CPU seconds then in BOOT_CPU. With WAIT_DETACHED=SECS it then waits (at
# most SECS) for the store to be detached, the machine gone, and sets
# DETACH_SECS (from the marker; "-" if it did not). The streamer is stopped
# (SIGTERM: its boot trace is closed) before it returns.
stream_seq=0
boot_stream() {
    local store="$1" sock t0 t_qemu secs pid
    shift
    stream_seq=$((stream_seq + 1))
    sock="$BENCH_TMP/stream$stream_seq.sock"
    rm -rf "$store"
    t0="$(now)"
    bench_spawn "$BENCH_TMP/stream.log" "$IMGSTREAM" stream "$src_uri" --store "$store" \
        --listen "unix:$sock" "$@"
    pid="$SPAWN_PID"
    wait_unix_socket "$sock" "$pid" || die "imgstream stream did not start: $(tail -n 5 "$BENCH_TMP/stream.log")"
    t_qemu="$(now)"
    secs="$(boot_once "nbd+unix:///?socket=$sock")"
    BOOT_CPU="$(cpu_seconds "$pid")"
    "$IMGSTREAM" status "$store" --json >"$BENCH_TMP/status.json" || die "imgstream status $store failed"
    DETACH_SECS="-"
    if [[ -n ${WAIT_DETACHED:-} ]]; then
        local t_marker deadline
        t_marker="$(now)"
        deadline=$((SECONDS + WAIT_DETACHED))
        while ((SECONDS < deadline)); do
            if [[ $("$IMGSTREAM" status "$store" --json | jq -r .state) == detached ]]; then
                DETACH_SECS="$(awk -v a="$t_marker" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
                break
            fi
            sleep 0.1
        done
    fi
    bench_stop "$pid"
    rm -f "$sock"
    BOOT_SECS="$(awk -v a="$t0" -v q="$t_qemu" -v s="$secs" 'BEGIN { printf "%.2f", (q - a) + s }')"
}

# record_stream ROW: the figures of $BENCH_TMP/status.json for ROW
record_stream() {
    local row="$1" j="$BENCH_TMP/status.json" v
    record "$row" secs "$BOOT_SECS"
    record "$row" cpu "$BOOT_CPU"
    record "$row" load "$(load1)"
    record "$row" present "$(jq -r .regions_present "$j")"
    [[ $DETACH_SECS == - ]] || record "$row" detach "$DETACH_SECS"
    record "$row" bytes "$(jq -r '.bytes_fetched_demand + .bytes_fetched_background + (.bytes_prefetched // 0)' "$j")"
    for v in prefetch_precision reads_waited wait_seconds hit_ratio; do
        # An absent field (precision without a prefetch) is no measurement.
        if [[ -n $(jq -r --arg f "$v" '.[$f] // empty' "$j") ]]; then
            record "$row" "$v" "$(jq -r --arg f "$v" '.[$f]' "$j")"
        fi
    done
}

failed=0
check() { # OK(0|1) TEXT...
    if [[ $1 == 1 ]]; then
        echo "- PASS: ${*:2}"
    else
        echo "- FAIL: ${*:2}"
        failed=1
    fi
}

# start_source FILE LOG [NBDKIT-OPTION...]: the "remote" image, FILE behind nbdkit's
# delay filter (RDELAY per read) on $src_sock; sets source_pid.
start_source() {
    local file="$1" logf="$2"
    shift 2
    bench_spawn "$logf" nbdkit -f "$@" --unix "$src_sock" --filter=delay file "$file" rdelay="$RDELAY"
    source_pid="$SPAWN_PID"
    wait_unix_socket "$src_sock" "$source_pid" || die "nbdkit source did not start: $(tail -n 5 "$logf")"
}

# record_profile NAME COUNT PROFILE: COUNT boots through imgstream stream (fresh stores
# $BENCH_TMP/NAME1...), their traces merged into PROFILE; sets profile, set_bytes and
# set_regions (the caller's locals, if it has them).
record_profile() {
    local name="$1" count="$2" i rec_stores=()
    profile="$3"
    for ((i = 1; i <= count; i++)); do
        boot_stream "$BENCH_TMP/$name$i" --no-background
        [[ -s $BENCH_TMP/$name$i/boot.trace ]] || die "store $name$i recorded no boot.trace"
        rec_stores+=("$BENCH_TMP/$name$i")
        log "recording boot $i: $BOOT_SECS s"
    done
    "$IMGSTREAM" profile merge "${rec_stores[@]}" -o "$profile" >"$BENCH_TMP/merge.log" 2>&1 ||
        die "profile merge failed: $(tail -n 5 "$BENCH_TMP/merge.log")"
    "$IMGSTREAM" profile show "$profile" --json >"$BENCH_TMP/profile.json" || die "profile show failed"
    set_bytes="$(jq -r .boot_set_bytes "$BENCH_TMP/profile.json")"
    set_regions="$(jq -r .regions "$BENCH_TMP/profile.json")"
    log "profile: boot set $(mib "$set_bytes") MiB in $set_regions regions"
    rm -rf "${rec_stores[@]}"
}

# ---------------------------------------------------------------- the busybox disk
bench_busybox() {
    # ---------------------------------------------------------------- the disk and the source
    log "building (or reusing) the bootable test disk ..."
    disk="$BENCH_TMP/boot.img"
    bench_boot_disk "$disk"
    md5="$BOOT_DISK_MD5"
    image_bytes="$(stat -c %s "$disk")"

    src_sock="$BENCH_TMP/src.sock"
    src_uri="nbd+unix:///?socket=$src_sock"
    start_source "$disk" "$BENCH_TMP/source.log"

    # ---------------------------------------------------------------- the profile
    log "recording $RECORD_BOOTS boots through imgstream stream (fresh stores) for the profile ..."
    record_profile rec "$RECORD_BOOTS" "$BENCH_TMP/boot.prof"

    # ---------------------------------------------------------------- the runs
    for ((rep = 1; rep <= REPS; rep++)); do
        record local secs "$(boot_once "$disk")"
        record direct secs "$(boot_once "$src_uri")"
        boot_stream "$BENCH_TMP/store" --no-background
        record_stream stream
        boot_stream "$BENCH_TMP/store" --no-background --profile "$profile"
        record_stream prof
        boot_stream "$BENCH_TMP/store" --profile "$profile"
        record_stream profbg
        rm -rf "$BENCH_TMP/store"
        log "rep $rep: local $(tail -n 1 "$BENCH_TMP/result-local-secs") s," \
            "direct $(tail -n 1 "$BENCH_TMP/result-direct-secs") s," \
            "stream $(tail -n 1 "$BENCH_TMP/result-stream-secs") s," \
            "stream+profile $(tail -n 1 "$BENCH_TMP/result-prof-secs") s," \
            "stream+profile+background $(tail -n 1 "$BENCH_TMP/result-profbg-secs") s"
    done
    bench_stop "$source_pid"

    # ---------------------------------------------------------------- report
    local_secs="$(result local secs)"
    row_line() { # ROW LABEL
        local row="$1" label="$2" secs bytes pct prec
        secs="$(result "$row" secs)"
        bytes="$(result "$row" bytes)"
        pct="$(awk -v b="$bytes" -v s="$image_bytes" 'BEGIN { if (b == "-") print "-"; else printf "%.1f%%", 100 * b / s }')"
        prec="$(result "$row" prefetch_precision)"
        prec="$(awk -v p="$prec" 'BEGIN { if (p == "-") print "-"; else printf "%.1f%%", 100 * p }')"
        echo "| $label | $(fmt "$secs" %.2f) | $(ratio "$secs" "$local_secs")× | $(mib "$bytes") | $pct | $prec |" \
            "$(fmt "$(result "$row" reads_waited)" %.0f) | $(fmt "$(result "$row" wait_seconds)" %.2f) |" \
            "$(fmt "$(result "$row" hit_ratio)" %.3f) |"
    }
    echo "### Boot from a remote image: local, direct NBD, imgstream stream with and without a boot profile"
    echo
    machine_info
    echo "- qemu: $(qemu-system-x86_64 --version | head -n 1), TCG, 512 MiB RAM, 1 vCPU, virtio-blk"
    echo "- disk: tests/fixtures/make-boot-disk.sh, $(mib "$image_bytes") MiB (BIOS, extlinux, Debian 12 kernel," \
        "busybox root; ~320 MiB of files the boot never reads)"
    echo "- source: nbdkit file plugin, --filter=delay rdelay=$RDELAY, unix socket; every stream from a fresh store"
    echo "- profile: $RECORD_BOOTS boots recorded through \`imgstream stream --no-background\` (fresh stores)," \
        "merged: boot set $(mib "$set_bytes") MiB in $set_regions regions" \
        "($(awk -v b="$set_bytes" -v s="$image_bytes" 'BEGIN { printf "%.1f", 100 * b / s }')% of the image)"
    echo "- method: median of $REPS runs; seconds to the guest's OK marker from qemu's start (rows 1-2) or the" \
        "streamer's (rows 3-5); the other columns from \`imgstream status --json\` right after the marker" \
        "(fetched = demand + background + prefetched)"
    echo
    echo "| row | boot (s) | / local | fetched before the marker (MiB) | % of image | prefetch precision | reads waited | wait (s) | hit ratio |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| 1. local file | $(fmt "$local_secs" %.2f) | 1.00× | - | - | - | - | - | - |"
    echo "| 2. direct: qemu -> NBD source | $(fmt "$(result direct secs)" %.2f) | $(ratio "$(result direct secs)" "$local_secs")× | - | - | - | - | - | - |"
    row_line stream "3. stream, no profile (--no-background)"
    row_line prof "4. stream + profile (--no-background)"
    row_line profbg "5. stream + profile, background hydration on"
    echo

    p_ratio="$(ratio "$(result prof secs)" "$local_secs")"
    p_bytes="$(result prof bytes)"
    p_prec="$(result prof prefetch_precision)"
    check "$(awk -v r="$p_ratio" 'BEGIN { print (r != "-" && r <= 1.15) ? 1 : 0 }')" \
        "stream + profile boots in ${p_ratio}× the local boot (required at most 1.15×; aim 1.05×:" \
        "$(awk -v r="$p_ratio" 'BEGIN { print (r != "-" && r <= 1.05) ? "met" : "not met" }'))"
    check "$(awk -v b="$p_bytes" -v s="$image_bytes" 'BEGIN { print (b != "-" && b <= 0.10 * s) ? 1 : 0 }')" \
        "stream + profile fetched $(mib "$p_bytes") MiB before the marker," \
        "$(awk -v b="$p_bytes" -v s="$image_bytes" 'BEGIN { if (b == "-") print "-"; else printf "%.1f%%", 100 * b / s }') of the image (required at most 10%)"
    check "$(awk -v p="$p_prec" 'BEGIN { print (p != "-" && p >= 0.80) ? 1 : 0 }')" \
        "prefetch precision $(awk -v p="$p_prec" 'BEGIN { if (p == "-") print "-"; else printf "%.1f%%", 100 * p }') (required at least 80%)"
    echo
    echo "Ratios are boot time / the local boot's. Row 5 is row 4 with background hydration copying" \
        "the rest of the image meanwhile (its fetched bytes include what hydration copied before the" \
        "marker); the difference between rows 4 and 5 is what that copy costs the boot on this machine."
}

# ---------------------------------------------------------------- the real distro
bench_distro() {
    local cached i rep row label v
    boot_kind=distro
    log "building (or reusing) the Debian test disk (tests/lib/distro.sh) ..."
    cached="$(distro_disk)" || die "could not build the Debian test disk"
    md5="$(cat "$cached.md5")"
    image_bytes="$(stat -c %s "$cached")"
    src_sock="$BENCH_TMP/dsrc.sock"
    src_uri="nbd+unix:///?socket=$src_sock"
    # Read-only: the guest writes to the store (or its copy), never to the cache.
    start_source "$cached" "$BENCH_TMP/dsource.log" -r

    log "recording $DISTRO_RECORD_BOOTS distro boot(s) through imgstream stream for the profile ..."
    local profile set_bytes set_regions
    record_profile drec "$DISTRO_RECORD_BOOTS" "$BENCH_TMP/distro.prof"

    local copy="$BENCH_TMP/distro-local.img"
    for ((rep = 1; rep <= REPS; rep++)); do
        # A fresh writable copy; synced, so that its writeback is not the boot's.
        cp --sparse=always "$cached" "$copy"
        sync
        record d_local load "$(load1)"
        record d_local secs "$(boot_once "file=${copy//,/,,},format=raw,if=virtio")"
        rm -f "$copy"
        boot_stream "$BENCH_TMP/dstore" --no-background --profile "$profile"
        record_stream d_prof
        rm -rf "$BENCH_TMP/dstore"
        sync
        WAIT_DETACHED=300 boot_stream "$BENCH_TMP/dstore" --profile "$profile"
        record_stream d_profbg
        rm -rf "$BENCH_TMP/dstore"
        sync
        WAIT_DETACHED=300 boot_stream "$BENCH_TMP/dstore" --profile "$profile" --idle-after 0
        record_stream d_profbg0
        rm -rf "$BENCH_TMP/dstore"
        sync
        log "distro rep $rep: local $(tail -n 1 "$BENCH_TMP/result-d_local-secs") s," \
            "stream+profile $(tail -n 1 "$BENCH_TMP/result-d_prof-secs") s," \
            "+background $(tail -n 1 "$BENCH_TMP/result-d_profbg-secs") s," \
            "+background --idle-after 0 $(tail -n 1 "$BENCH_TMP/result-d_profbg0-secs") s" \
            "(load $(load1))"
    done
    bench_stop "$source_pid"

    local local_secs per_run
    local_secs="$(result d_local secs)"
    d_row() { # ROW LABEL
        local row="$1" label="$2" secs
        secs="$(result "$row" secs)"
        echo "| $label | $(fmt "$secs" %.2f) | $(ratio "$secs" "$local_secs")× |" \
            "$(fmt "$(result "$row" load)" %.2f) | $(fmt "$(result "$row" cpu)" %.2f) |" \
            "$(mib "$(result "$row" bytes)") | $(fmt "$(result "$row" present)" %.0f) |" \
            "$(fmt "$(result "$row" reads_waited)" %.0f) | $(fmt "$(result "$row" detach)" %.2f) |"
    }
    echo "### Boot of a real distro (Debian 12, systemd) from a remote image: background hydration held back while it boots"
    echo
    machine_info
    echo "- qemu: $(qemu-system-x86_64 --version | head -n 1), TCG, 1 GiB RAM, 1 vCPU, virtio-blk, writable"
    echo "- disk: tests/fixtures/make-distro-disk.sh, $(mib "$image_bytes") MiB (Debian 12 minbase + systemd," \
        "its own kernel and initramfs; the marker after multi-user.target, md5 of every file dpkg installed)"
    echo "- source: nbdkit file plugin (read-only), --filter=delay rdelay=$RDELAY, unix socket; every stream from a fresh store"
    echo "- profile: $DISTRO_RECORD_BOOTS boot(s) recorded through \`imgstream stream --no-background\`:" \
        "boot set $(mib "$set_bytes") MiB in $set_regions regions"
    echo "- method: median of $REPS repetitions, each booting rows 1-4 in turn; seconds to the marker from" \
        "qemu's start (row 1) or the streamer's (rows 2-4); load = 1-minute load average at each boot;" \
        "CPU = the streamer's user + sys seconds at the marker"
    echo
    echo "| row | boot (s) | / local | load | streamer CPU (s) | fetched before the marker (MiB) | regions present at the marker | reads waited | marker to detached (s) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| 1. local: a writable copy | $(fmt "$local_secs" %.2f) | 1.00× | $(fmt "$(result d_local load)" %.2f) | - | - | - | - | - |"
    d_row d_prof "2. stream + profile, --no-background"
    d_row d_profbg "3. stream + profile, background on (default: held back while the machine boots)"
    d_row d_profbg0 "4. stream + profile, background on, --idle-after 0 (never held back)"
    echo
    per_run="$(paste -d/ "$BENCH_TMP/result-d_local-secs" "$BENCH_TMP/result-d_prof-secs" \
        "$BENCH_TMP/result-d_profbg-secs" "$BENCH_TMP/result-d_profbg0-secs" | paste -sd, | sed 's/,/, /g')"
    echo "Per repetition (rows 1/2/3/4, s): $per_run."
    echo
    local r3
    r3="$(ratio "$(result d_profbg secs)" "$local_secs")"
    check "$(awk -v r="$r3" 'BEGIN { print (r != "-" && r <= 1.05) ? 1 : 0 }')" \
        "the distro streamed with a profile and background hydration on boots in ${r3}× the local boot (required at most 1.05×)"
    check "$([[ $(result d_profbg detach) != - ]] && echo 1 || echo 0)" \
        "hydration held back during the boot completes once the machine is quiet (row 3: detached $(fmt "$(result d_profbg detach)" %.2f) s after the marker)"
    echo
}

has_disk busybox && bench_busybox
has_disk distro && bench_distro
exit "$failed"
