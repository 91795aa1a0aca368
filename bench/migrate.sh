#!/usr/bin/env bash
# migrate.sh - live migration under load (issue 6): a DISK_MIB (2048) MiB raw
# disk, fully allocated with random data, copied to an empty target while fio
# writes to it (4 KiB random writes at RATE, 20m = 20 MiB/s, through NBD on a
# unix socket), side by side in the same run:
#
#   1. imgstream         `imgstream serve DISK --track T --control C`, fio on
#                        its NBD socket; `imgstream migrate --control C --to
#                        TARGET --json --finish hold` (rounds of changes, then
#                        the cutover; hold: see the check below)
#   2. imgstream --active  the same with `migrate --active` (when the binary
#                        has it): the server mirrors writes after the full copy
#   3. QEMU              qemu-storage-daemon: the disk as a file + raw
#                        blockdev exported over NBD (unix socket), fio on it;
#                        blockdev-add of an NBD client node to the target,
#                        blockdev-mirror sync=full, query-block-jobs polled
#                        (50 ms) until ready, then job-complete and the
#                        BLOCK_JOB_COMPLETED event (bench/qmp.py)
#   4. QEMU write-blocking  the same with copy-mode=write-blocking, QEMU's
#                        active mirror (the peer of --active): each write of the
#                        guest also goes to the target before it completes
#
# The target is the same in every row: `imgstream serve` of a file of zeros
# of the disk's size, on a unix socket. It stands for another machine: its
# file is in TARGET_DIR (default /dev/shm, a tmpfs), so that writing it does
# not share the source's disk and its writeback (with the target on the
# source's ext4 file system, fio's writes through `serve --track`, whose
# activity log syncs the first time each 16 MiB is written, were slower in a
# trial). The file is written full of zeros before each row, not left sparse:
# on this VM the first write of a tmpfs page costs what the hypervisor takes
# to back it, 0.4 to 2.6 s for 2 GiB depending on what memory the guest had
# freed and handed back lately, which made whichever row ran first up to 3x
# slower; a real target disk has its storage already. Each row starts from a
# fresh copy of the disk, synced first. fio starts WARMUP (3) seconds
# before the migration and runs until it ends.
#
# Measured per row: rounds (imgstream's report; QEMU's mirror has none);
# bytes sent to the target (imgstream: bytes_total; QEMU: the job's final
# offset, which counts every byte the mirror copied, first pass and re-copies
# of dirty data) over the disk's allocated bytes (here all of it); total time
# (imgstream: the report's seconds; QEMU: blockdev-mirror to the completion
# event); the pause (imgstream: pause_ms, how long the machine's I/O was held
# at the cutover; QEMU: job-complete sent to the BLOCK_JOB_COMPLETED event,
# the time QEMU drains the source's I/O and copies the last dirty data);
# fio's write rate during the migration (writes completed between its start
# and the cutover, from fio's per-write latency log); for QEMU, the longest
# latency of a fio write in flight between job-complete and the event (how
# long the machine's I/O really stopped).
#
# Check of the copy. imgstream runs with --finish hold: after the cutover the
# machine's I/O stays held (HOLD_MS at most), so `qemu-img compare` of the
# source and target files, run at once, sees both as they were at the cutover
# (the measured pause is the cutover's; the hold after it is not counted, and
# fio's rate is measured up to the cutover). QEMU's job-complete pivots: the
# export writes to the target from then on, so the source file stays as it
# was at the cutover while the target gets the later writes; fio is stopped
# right after the event and the files may differ only in the 4 KiB blocks it
# wrote after the pivot: the check counts the differing blocks and requires
# them to be at most what fio could write between the event and its stop
# (RATE x that time, + 64 blocks for requests in flight).
#
# Required: imgstream's pause under 500 ms, its bytes sent at most 1.3x the
# allocated bytes, its total time at most QEMU mirror's (a mirror job never
# ready, cancelled after QEMU_READY_TIMEOUT, is slower than any migration that
# ends). The default row is valid only if fio reached 90% of RATE during its
# migration (a server that cannot take the load makes the migration's job
# easier): checked too. For --active and QEMU a slower fio is noted, not failed:
# active mode makes each write wait for the target by design, and a peer that
# slows the load only flatters its own figures. Prints a markdown table with a
# PASS or FAIL line per requirement; exits 1 if any failed.
#
# Usage: bench/migrate.sh > result.md
# Environment:
#   DISK_MIB=2048  RATE=20m  IODEPTH=1 (fio's)  REPS=1  WARMUP=3 (s)
#   HOLD_MS=10000 (the hold after imgstream's cutover: longer than the compare)
#   TARGET_DIR=/dev/shm (where the target's file is made; needs DISK_MIB free)
#   LINK= (bits/s, e.g. 1000M: the target is reached through nbdkit's rate filter
#          at that rate, a network link; empty: directly, at memory speed)
#   QEMU_READY_TIMEOUT=300 (s: a mirror job not ready by then is cancelled and
#                    reported as not converging)
#   QEMU_GRANULARITY= (bytes; empty: QEMU's default, the target's cluster
#                    size or 64 KiB: each 4 KiB write dirties 64 KiB to copy)
#   BENCH_TIMEOUT=1800 (hard bound on the whole run, seconds)
#   ROWS="imgstream active qemu qemu_active" (the rows to run; a partial run fails
#                    its checks; qemu_active is QEMU's write-blocking mirror)
#   IMGSTREAM=build/imgstream  MIGRATE_ARGS= (more options for both imgstream rows,
#                    e.g. "--connections 2")
# Needs: qemu-storage-daemon, qemu-img, fio (nbd engine), nbdinfo, jq, python3.
set -euo pipefail

if [[ -z ${_IMGSTREAM_BENCH_BOUNDED:-} ]]; then
    export _IMGSTREAM_BENCH_BOUNDED=1
    exec timeout --kill-after=15 "${BENCH_TIMEOUT:-1800}" bash "$0" "$@"
fi

source "$(dirname "$0")/lib.sh"

DISK_MIB="${DISK_MIB:-2048}"
RATE="${RATE:-20m}"
IODEPTH="${IODEPTH:-1}"
REPS="${REPS:-${REPEAT:-1}}"
WARMUP="${WARMUP:-3}"
HOLD_MS="${HOLD_MS:-10000}"
QEMU_GRANULARITY="${QEMU_GRANULARITY:-}"
TARGET_DIR="${TARGET_DIR:-/dev/shm}"
LINK="${LINK:-}"
QEMU_READY_TIMEOUT="${QEMU_READY_TIMEOUT:-300}"
IMGSTREAM="${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}"
[[ $IMGSTREAM == /* ]] || IMGSTREAM="$BENCH_REPO_ROOT/$IMGSTREAM"
QMP_PY="$BENCH_REPO_ROOT/bench/qmp.py"

die() {
    echo "migrate.sh: error: $*" >&2
    exit 1
}
log() { echo "  $*" >&2; }

for tool in qemu-storage-daemon qemu-img fio nbdinfo jq python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $IMGSTREAM ]] || die "no imgstream binary at $IMGSTREAM"
[[ -z $LINK ]] || command -v nbdkit >/dev/null || die "LINK needs nbdkit"
[[ $REPS =~ ^[1-9][0-9]*$ && $DISK_MIB =~ ^[1-9][0-9]*$ ]] || die "REPS and DISK_MIB must be positive integers"
fio --enghelp 2>/dev/null | grep -qw nbd || die "fio has no nbd engine"

bench_init
# The target's directory is outside $BENCH_TMP: remove it too on exit.
tgt_dir="$(mktemp -d "$TARGET_DIR/imgstream-bench-target.XXXXXX")"
# shellcheck disable=SC2317 # (run by the EXIT trap)
_migrate_cleanup() {
    local rc=$?
    set +e
    rm -rf "$tgt_dir"
    (exit "$rc") # _bench_cleanup exits with $?
    _bench_cleanup
}
trap _migrate_cleanup EXIT
cp "$IMGSTREAM" "$BENCH_TMP/imgstream"
IMGSTREAM="$BENCH_TMP/imgstream"
cp "$QMP_PY" "$BENCH_TMP/qmp.py"
QMP_PY="$BENCH_TMP/qmp.py"

if [[ -n ${ROWS:-} ]]; then
    read -r -a rows <<<"$ROWS"
else
    rows=(imgstream)
    "$IMGSTREAM" migrate --help 2>&1 | grep -q -- '--active' && rows+=(active)
    rows+=(qemu qemu_active)
fi

disk_bytes=$((DISK_MIB * 1048576))
rate_bytes="$(numfmt --from=iec "${RATE^^}")"

now() { printf '%s' "$EPOCHREALTIME"; }
gib() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.2f", b / 1073741824 }'; }
fmt() { # VALUE PRINTF-FORMAT: "-" stays "-"
    awk -v v="$1" -v f="$2" 'BEGIN { if (v == "-" || v == "") print "-"; else printf f, v }'
}

# ---------------------------------------------------------------- the disk
base="$BENCH_TMP/base.img"
log "writing a $DISK_MIB MiB disk of random data ..."
dd if=/dev/urandom of="$base" bs=1M count="$DISK_MIB" status=none iflag=fullblock
sync "$base"
src="$BENCH_TMP/src.img"
tgt="$tgt_dir/target.img"
(($(df -P -k "$tgt_dir" | awk 'NR == 2 { print $4 }') / 1024 > DISK_MIB + 64)) ||
    die "not enough space for the target in $TARGET_DIR (set TARGET_DIR)"

# start_target: a target of zeros, its pages allocated (see above), served by imgstream on $tgt_sock
start_target() {
    rm -f "$tgt"
    dd if=/dev/zero of="$tgt" bs=1M count="$DISK_MIB" status=none
    tgt_sock="$BENCH_TMP/target.sock"
    rm -f "$tgt_sock"
    bench_spawn "$BENCH_TMP/target.log" "$IMGSTREAM" serve "$tgt" --listen "unix:$tgt_sock"
    tgt_pid="$SPAWN_PID"
    wait_unix_socket "$tgt_sock" "$tgt_pid" || die "target did not start: $(tail -n 5 "$BENCH_TMP/target.log")"
    link_pid=
    if [[ -n $LINK ]]; then # the target behind a link of LINK bits/s (both directions)
        local link_sock="$BENCH_TMP/link.sock"
        rm -f "$link_sock"
        bench_spawn "$BENCH_TMP/link.log" nbdkit -f -U "$link_sock" --filter=rate nbd socket="$tgt_sock" rate="$LINK"
        link_pid="$SPAWN_PID"
        wait_unix_socket "$link_sock" "$link_pid" || die "nbdkit did not start: $(tail -n 5 "$BENCH_TMP/link.log")"
        tgt_sock="$link_sock"
    fi
}

stop_target() {
    [[ -n $link_pid ]] && bench_stop "$link_pid"
    bench_stop "$tgt_pid"
}

# start_fio URI: the load, until stop_fio; every write's completion time (epoch
# ms) and latency (ns) in $BENCH_TMP/lat_lat.1.log
start_fio() {
    rm -f "$BENCH_TMP"/lat_*.log
    bench_spawn "$BENCH_TMP/fio.out" fio --name=load --ioengine=nbd --uri="$1" \
        --rw=randwrite --bs=4k --iodepth="$IODEPTH" --rate="$RATE" --size="$disk_bytes" --time_based --runtime=86400 \
        --write_lat_log="$BENCH_TMP/lat" --log_unix_epoch=1 --output-format=json
    fio_pid="$SPAWN_PID"
    fio_t0="$(now)"
    sleep "$WARMUP"
    kill -0 "$fio_pid" 2>/dev/null || die "fio stopped: $(tail -n 5 "$BENCH_TMP/fio.out")"
}

# stop_fio: SIGINT (fio writes its logs and report), wait up to HOLD_MS + 30 s
stop_fio() {
    local i
    kill -INT "$fio_pid" 2>/dev/null || true
    for ((i = 0; i < (HOLD_MS / 100 + 300); i++)); do
        kill -0 "$fio_pid" 2>/dev/null || break
        sleep 0.1
    done
    # (bench_stop's wait fails under set -e on a process that has exited.)
    if kill -0 "$fio_pid" 2>/dev/null; then bench_stop "$fio_pid"; else wait "$fio_pid" || true; fi
    [[ -s $BENCH_TMP/lat_lat.1.log ]] || die "fio left no latency log: $(tail -n 5 "$BENCH_TMP/fio.out")"
    grep -q '"error" : [1-9]' "$BENCH_TMP/fio.out" && die "fio reported an error: $(grep -m 3 -i error "$BENCH_TMP/fio.out")"
    return 0
}

# fio_mibs T0 T1: fio's write rate (MiB/s) between epoch seconds T0 and T1 (writes completed)
fio_mibs() {
    awk -F, -v t0="$1" -v t1="$2" '{ t = $1 / 1000; if (t > t0 && t <= t1) b += $4 }
        END { if (t1 > t0) printf "%.2f", b / (t1 - t0) / 1048576; else print "-" }' "$BENCH_TMP/lat_lat.1.log"
}

# fio_max_lat_ms T0 T1: the longest write (ms) in flight at any time between T0 and T1
fio_max_lat_ms() {
    awk -F, -v t0="$1" -v t1="$2" '{ end = $1 / 1000; start = end - $2 / 1e9
        if (end >= t0 && start <= t1 && $2 > m) m = $2 }
        END { printf "%.1f", m / 1e6 }' "$BENCH_TMP/lat_lat.1.log"
}

# ---------------------------------------------------------------- imgstream rows
run_imgstream() { # ROW [MIGRATE-ARGS...]
    local row="$1" sock ctl t0 t1 rep="$BENCH_TMP/report.json" pause
    shift
    cp "$base" "$src"
    sync "$src"
    rm -f "$BENCH_TMP/src.track" "$BENCH_TMP/src.track.lock"
    start_target
    sock="$BENCH_TMP/src.sock"
    ctl="$BENCH_TMP/ctl.sock"
    rm -f "$sock" "$ctl"
    bench_spawn "$BENCH_TMP/source.log" "$IMGSTREAM" serve "$src" --track "$BENCH_TMP/src.track" \
        --control "$ctl" --listen "unix:$sock"
    local src_pid="$SPAWN_PID"
    wait_unix_socket "$sock" "$src_pid" || die "imgstream serve did not start: $(tail -n 5 "$BENCH_TMP/source.log")"
    start_fio "nbd+unix:///?socket=$sock"
    t0="$(now)"
    "$IMGSTREAM" migrate --control "$ctl" --to "nbd+unix:///?socket=$tgt_sock" --json \
        --finish hold --hold-limit "$HOLD_MS" ${MIGRATE_ARGS:-} "$@" >"$rep" 2>"$BENCH_TMP/migrate.log" ||
        die "imgstream migrate $* failed: $(tail -n 5 "$BENCH_TMP/migrate.log")"
    t1="$(now)"
    # The machine's I/O is held: the files are as they were at the cutover.
    if qemu-img compare -q -f raw -F raw "$src" "$tgt" >"$BENCH_TMP/compare.log" 2>&1; then
        record "$row" same 1
    else
        record "$row" same 0
        log "$row: target differs from the source at the cutover"
    fi
    local t_cmp
    t_cmp="$(now)"
    awk -v a="$t1" -v b="$t_cmp" -v h="$HOLD_MS" 'BEGIN { exit !(b - a > h / 1000) }' &&
        log "$row: the compare took longer than the hold (HOLD_MS=$HOLD_MS): its result is not reliable"
    stop_fio
    record "$row" fio "$(fio_mibs "$t0" "$t1")"
    record "$row" fio_before "$(fio_mibs "$(awk -v t="$fio_t0" 'BEGIN { printf "%.3f", t + 1 }')" "$t0")"
    record "$row" rounds "$(jq '.rounds | length' "$rep")"
    record "$row" bytes "$(jq .bytes_total "$rep")"
    record "$row" alloc "$(jq .allocated_bytes "$rep")"
    record "$row" secs "$(jq .seconds "$rep")"
    pause="$(jq .pause_ms "$rep")"
    record "$row" pause "$pause"
    log "$row: $(jq -c '{rounds: (.rounds | length), bytes_total, allocated_bytes, cutover_bytes, mirrored_bytes, pause_ms, seconds}' "$rep")" \
        "rounds $(jq -c '[.rounds[] | [.bytes, (.seconds * 100 | round / 100), .dirty_after]]' "$rep")" \
        "fio $(tail -n 1 "$BENCH_TMP/result-$row-fio") MiB/s (before: $(tail -n 1 "$BENCH_TMP/result-$row-fio_before")), same at cutover: $(tail -n 1 "$BENCH_TMP/result-$row-same")"
    bench_stop "$src_pid"
    stop_target
    rm -f "$src" "$tgt"
}

# ---------------------------------------------------------------- QEMU row
run_qemu() { # ROW [COPY_MODE]
    local row="$1" copy_mode="${2:-}"
    local qmp="$BENCH_TMP/qmp.sock" sock="$BENCH_TMP/qsd.sock" rep="$BENCH_TMP/qemu.json" i t_stop
    cp "$base" "$src"
    sync "$src"
    start_target
    rm -f "$qmp" "$sock"
    bench_spawn "$BENCH_TMP/qsd.log" qemu-storage-daemon \
        --chardev "socket,id=qmp0,path=$qmp,server=on,wait=off" --monitor chardev=qmp0 \
        --blockdev "driver=file,node-name=srcfile,filename=$src" \
        --blockdev driver=raw,node-name=src,file=srcfile \
        --nbd-server "addr.type=unix,addr.path=$sock" \
        --export type=nbd,id=exp0,node-name=src,name=disk,writable=on
    local qsd_pid="$SPAWN_PID" uri="nbd+unix:///disk?socket=$sock"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$qsd_pid" 2>/dev/null || break
        [[ -S $qmp ]] && nbdinfo --can connect "$uri" 2>/dev/null && break
        sleep 0.1
    done
    nbdinfo --can connect "$uri" 2>/dev/null || die "qemu-storage-daemon did not start: $(tail -n 5 "$BENCH_TMP/qsd.log")"
    start_fio "$uri"
    python3 "$QMP_PY" mirror --socket "$qmp" --device src --target tgt --target-nbd-socket "$tgt_sock" \
        --ready-timeout "$QEMU_READY_TIMEOUT" ${QEMU_GRANULARITY:+--granularity "$QEMU_GRANULARITY"} \
        ${copy_mode:+--copy-mode "$copy_mode"} \
        >"$rep" 2>"$BENCH_TMP/qmp.log" || die "QEMU mirror failed: $(tail -n 5 "$BENCH_TMP/qmp.log")"
    stop_fio
    t_stop="$(now)"
    if [[ $(jq .ready "$rep") == false ]]; then
        # Cancelled: the guest dirtied data as fast as the mirror copied it.
        record "$row" notready "$(jq .seconds "$rep")"
        record "$row" copied "$(jq .offset "$rep")"
        record "$row" fio "$(fio_mibs "$(jq .t_start "$rep")" "$t_stop")"
        record "$row" fio_before "$(fio_mibs "$(awk -v t="$fio_t0" 'BEGIN { printf "%.3f", t + 1 }')" "$(jq .t_start "$rep")")"
        log "$row: not ready after $(jq .seconds "$rep") s, cancelled: $(jq -c '{offset, len, polls}' "$rep")" \
            "fio $(tail -n 1 "$BENCH_TMP/result-$row-fio") MiB/s"
        bench_stop "$qsd_pid"
        stop_target
        rm -f "$src" "$tgt"
        return 0
    fi
    record "$row" fio "$(fio_mibs "$(jq .t_start "$rep")" "$(jq .t_completed "$rep")")"
    record "$row" fio_before "$(fio_mibs "$(awk -v t="$fio_t0" 'BEGIN { printf "%.3f", t + 1 }')" "$(jq .t_start "$rep")")"
    record "$row" bytes "$(jq .offset "$rep")"
    record "$row" alloc "$disk_bytes"
    record "$row" secs "$(jq .seconds "$rep")"
    record "$row" pause "$(jq .pause_ms "$rep")"
    record "$row" maxlat "$(fio_max_lat_ms "$(jq .t_complete "$rep")" "$(jq .t_completed "$rep")")"
    bench_stop "$qsd_pid"
    stop_target
    # The export pivoted to the target at the cutover: the source file is the
    # disk at the cutover; the target differs only where fio wrote after it.
    local diff_blocks max_blocks
    diff_blocks="$(python3 - "$src" "$tgt" <<'PY'
import sys
n = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(1 << 22), b.read(1 << 22)
        if not x and not y:
            break
        if x != y:
            n += sum(1 for i in range(0, max(len(x), len(y)), 4096) if x[i:i + 4096] != y[i:i + 4096])
print(n)
PY
)"
    max_blocks="$(awk -v r="$rate_bytes" -v a="$(jq .t_completed "$rep")" -v b="$t_stop" \
        'BEGIN { printf "%d", r * (b - a) / 4096 + 64 }')"
    record "$row" diff "$diff_blocks"
    if ((diff_blocks <= max_blocks)); then record "$row" same 1; else record "$row" same 0; fi
    log "$row: $(jq -c '{offset, len, ready_seconds, seconds, pause_ms, polls}' "$rep")" \
        "fio $(tail -n 1 "$BENCH_TMP/result-$row-fio") MiB/s (before: $(tail -n 1 "$BENCH_TMP/result-$row-fio_before")); after the pivot the target differs in" \
        "$diff_blocks 4 KiB blocks (fio could write at most $max_blocks)"
    rm -f "$src" "$tgt"
}

# ---------------------------------------------------------------- the runs
t_run="$(now)"
for ((rep = 1; rep <= REPS; rep++)); do
    if [[ " ${rows[*]} " == *" imgstream "* ]]; then
        log "rep $rep: imgstream ..."
        run_imgstream imgstream
    fi
    if [[ " ${rows[*]} " == *" active "* ]]; then
        log "rep $rep: imgstream --active ..."
        run_imgstream active --active
    fi
    if [[ " ${rows[*]} " == *" qemu "* ]]; then
        log "rep $rep: QEMU blockdev-mirror ..."
        run_qemu qemu
    fi
    if [[ " ${rows[*]} " == *" qemu_active "* ]]; then
        log "rep $rep: QEMU blockdev-mirror copy-mode=write-blocking ..."
        run_qemu qemu_active write-blocking
    fi
done
run_secs="$(awk -v a="$t_run" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')"

# ---------------------------------------------------------------- report
# all_same ROW: 1 when every repetition's check passed
all_same() { [[ -s $BENCH_TMP/result-$1-same ]] && ! grep -qx 0 "$BENCH_TMP/result-$1-same" && echo 1 || echo 0; }
row_line() { # ROW LABEL
    local row="$1" label="$2" bytes alloc rounds
    bytes="$(result "$row" bytes)"
    alloc="$(result "$row" alloc)"
    rounds="$(result "$row" rounds)"
    if [[ $row == qemu* ]]; then rounds="- (continuous)"; else rounds="$(fmt "$rounds" %.0f)"; fi
    local secs same=NO
    secs="$(fmt "$(result "$row" secs)" %.2f)"
    if [[ -s $BENCH_TMP/result-$row-notready ]]; then
        secs="$secs (not ready after $(fmt "$(result "$row" notready)" %.0f) s in $(wc -l <"$BENCH_TMP/result-$row-notready") of $REPS runs)"
        # The job's progress when it was cancelled: what it had sent by then.
        [[ $bytes == - ]] && bytes="$(result "$row" copied)" alloc="$disk_bytes"
    fi
    [[ $(all_same "$row") == 1 ]] && same=yes
    [[ -s $BENCH_TMP/result-$row-same ]] || same="-"
    echo "| $label | $rounds | $(gib "$bytes") / $(gib "$alloc") GiB" \
        "($(awk -v a="$bytes" -v b="$alloc" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }')×) |" \
        "$secs | $(fmt "$(result "$row" pause)" %.1f) | $(fmt "$(result "$row" maxlat)" %.1f) |" \
        "$(fmt "$(result "$row" fio_before)" %.2f) / $(fmt "$(result "$row" fio)" %.2f) |" \
        "$same |"
}
echo "### Live migration under a 4 KiB random-write load: imgstream migrate and QEMU blockdev-mirror${LINK:+, target behind a $LINK bits/s link}${QEMU_GRANULARITY:+ (QEMU granularity $QEMU_GRANULARITY)}"
echo
machine_info
echo "- qemu: $(qemu-storage-daemon --version | head -n 1)"
echo "- disk: $DISK_MIB MiB raw file, fully allocated with random data; target: \`imgstream serve\` of a file" \
    "of zeros in $TARGET_DIR, written before each row (standing for another machine), unix socket (the same for every row)${LINK:+,"\
" reached through the nbdkit rate filter at $LINK bits/s (a network link)}"
echo "- load: fio $RATE/s 4 KiB random writes (nbd engine, iodepth $IODEPTH, unix socket), started ${WARMUP} s before the migration" \
    "and running through it"
echo "- method: median of $REPS runs (whole run: $run_secs s); imgstream: \`migrate --json --finish hold\`" \
    "(files compared during the hold); QEMU: qemu-storage-daemon, blockdev-mirror sync=full to an NBD client" \
    "node (granularity ${QEMU_GRANULARITY:-default}; the write-blocking row with copy-mode=write-blocking), job-complete once ready;" \
    "bytes sent: imgstream bytes_total, QEMU the job's final offset"
echo
echo "| row | rounds | bytes sent / allocated | total (s) | pause (ms) | fio's longest write at the cutover (ms) | fio writes before / during (MiB/s) | target = source at cutover |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
row_line imgstream "imgstream migrate"
[[ " ${rows[*]} " == *" active "* ]] && row_line active "imgstream migrate --active"
row_line qemu "QEMU blockdev-mirror"
[[ " ${rows[*]} " == *" qemu_active "* ]] && row_line qemu_active "QEMU blockdev-mirror, write-blocking"
echo

failed=0
check() { # OK(0|1) TEXT...
    if [[ $1 == 1 ]]; then
        echo "- PASS: ${*:2}"
    else
        echo "- FAIL: ${*:2}"
        failed=1
    fi
}
q_secs="$(result qemu secs)"
for row in "${rows[@]}"; do
    [[ $row == qemu* ]] && continue
    label="imgstream migrate"
    [[ $row == active ]] && label="imgstream migrate --active"
    pause="$(result "$row" pause)"
    bytes="$(result "$row" bytes)"
    alloc="$(result "$row" alloc)"
    secs="$(result "$row" secs)"
    check "$(awk -v p="$pause" 'BEGIN { print (p != "-" && p < 500) ? 1 : 0 }')" \
        "$label: pause $(fmt "$pause" %.1f) ms (required under 500 ms)"
    check "$(awk -v a="$bytes" -v b="$alloc" 'BEGIN { print (a != "-" && b != "-" && a <= 1.3 * b) ? 1 : 0 }')" \
        "$label: sent $(awk -v a="$bytes" -v b="$alloc" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.2f", a / b }')×" \
        "the allocated bytes (required at most 1.3×)"
    if [[ $q_secs == - && -s $BENCH_TMP/result-qemu-notready ]]; then
        # QEMU never converged: any finished migration is faster.
        check "$(awk -v a="$secs" 'BEGIN { print (a != "-") ? 1 : 0 }')" \
            "$label: $(fmt "$secs" %.2f) s, QEMU's mirror not ready after $(fmt "$(result qemu notready)" %.0f) s (required no slower)"
    else
        check "$(awk -v a="$secs" -v b="$q_secs" 'BEGIN { print (a != "-" && b != "-" && a <= b) ? 1 : 0 }')" \
            "$label: $(fmt "$secs" %.2f) s, QEMU's mirror $(fmt "$q_secs" %.2f) s (required no slower)"
    fi
    check "$(all_same "$row")" "$label: target equals the source at the cutover (qemu-img compare during the hold)"
done
label_of() {
    case $1 in
        imgstream) echo "imgstream migrate" ;;
        active) echo "imgstream migrate --active" ;;
        qemu_active) echo "QEMU blockdev-mirror, write-blocking" ;;
        *) echo "QEMU blockdev-mirror" ;;
    esac
}
for row in "${rows[@]}"; do
    mibs="$(result "$row" fio)"
    ok="$(awk -v m="$mibs" -v r="$rate_bytes" 'BEGIN { print (m != "-" && m * 1048576 >= 0.9 * r) ? 1 : 0 }')"
    if [[ $row == qemu* ]]; then
        # Not a requirement on the peer: a mirror that slows the machine's writes only
        # makes its own job lighter, so its figures are if anything flattering.
        [[ $ok == 1 ]] || echo "- note: $(label_of "$row") held fio to $(fmt "$mibs" %.2f) MiB/s during its migration" \
            "(RATE=$RATE): its figures were measured under a lighter load than imgstream's"
        continue
    fi
    if [[ $row == active ]]; then
        # Active mode makes each write wait for the target: slower writes are what the
        # mode costs (and how it converges), not a server failing the load. Reported.
        [[ $ok == 1 ]] || echo "- note: imgstream migrate --active: fio wrote $(fmt "$mibs" %.2f) MiB/s during the migration" \
            "(RATE=$RATE): each write waited for the target, through the link, before it was acknowledged"
        continue
    fi
    check "$ok" "$(label_of "$row"): fio wrote $(fmt "$mibs" %.2f) MiB/s during the migration, at least 90% of RATE=$RATE" \
        "(else that row was not measured under the intended load)"
done
for row in qemu qemu_active; do
    if [[ " ${rows[*]} " == *" $row "* && -s $BENCH_TMP/result-$row-same ]]; then
        check "$(all_same "$row")" "$(label_of "$row"): the target differs from the source only in blocks written after the pivot" \
            "($(result "$row" diff) 4 KiB blocks)"
    fi
done
# Active mode against its peer, QEMU's active mirror (not a requirement: a comparison).
if [[ " ${rows[*]} " == *" active "* && " ${rows[*]} " == *" qemu_active "* ]]; then
    a="$(result active secs)" b="$(result qemu_active secs)"
    echo "- ratio: imgstream migrate --active / QEMU write-blocking mirror: time" \
        "$(awk -v a="$a" -v b="$b" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }')×," \
        "fio during the migration $(fmt "$(result active fio)" %.2f) / $(fmt "$(result qemu_active fio)" %.2f) MiB/s"
fi
echo
echo "QEMU's pause is job-complete to the BLOCK_JOB_COMPLETED event: the mirror drains the source's" \
    "I/O and copies the last dirty data meanwhile (fio's writes are not necessarily stopped for all of it). fio's longest write is the longest latency fio logged for" \
    "a write in flight during that time (for imgstream it is not measured: with --finish hold the writes" \
    "held at the cutover wait for the end of the hold, not for the cutover). fio's rates count the writes" \
    "completed in the last $((WARMUP - 1)) s before the migration and from its start to the cutover."
exit "$failed"
