#!/usr/bin/env bash
# serve.sh - benchmark `imgstream serve` against nbdkit (file plugin) and
# qemu-nbd, side by side in the same run.
#
# fio's nbd engine over a unix socket, on a file of random data held in the
# page cache (SIZE, default 1 GiB). Rows:
#   4 KiB random read,  iodepth 32   (IOPS)
#   1 MiB sequential read, iodepth 8 and 32 (MiB/s)
#   4 KiB random write, iodepth 32   (IOPS)
# Every repetition starts each server, runs every row against it and stops
# it by PID, servers in turn, so that drift on the machine hits all alike.
# The table shows the median over the repetitions and imgstream's ratio to
# each peer (> 1 means imgstream is faster).
#
# Usage: bench/serve.sh
# Environment:
#   RUNTIME=5        seconds per fio run        REPEAT=3  repetitions
#   RAMP=1           fio ramp_time seconds (0 when RUNTIME < 3)
#   SIZE=1G          size of the test file      BENCH_FILE=PATH  reuse a file
#   IMGSTREAM=build/imgstream                   SERVERS="imgstream nbdkit qemu-nbd"
#   QD_RANDREAD=32 QD_SEQREAD=8 QD_SEQREAD_DEEP=32 QD_RANDWRITE=32
# Needs: fio (with the nbd engine), nbdkit, qemu-nbd, nbdinfo, python3.
# The output is markdown, to paste into docs/BENCHMARKS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNTIME="${RUNTIME:-5}"
REPEAT="${REPEAT:-3}"
SIZE="${SIZE:-1G}"
if [[ -z ${RAMP:-} ]]; then
    RAMP=1
    [[ $RUNTIME -lt 3 ]] && RAMP=0
fi
IMGSTREAM="${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}"
[[ $IMGSTREAM == /* ]] || IMGSTREAM="$BENCH_REPO_ROOT/$IMGSTREAM"
SERVERS="${SERVERS:-imgstream nbdkit qemu-nbd}"
QD_RANDREAD="${QD_RANDREAD:-32}"
QD_SEQREAD="${QD_SEQREAD:-8}"
QD_SEQREAD_DEEP="${QD_SEQREAD_DEEP:-32}"
QD_RANDWRITE="${QD_RANDWRITE:-32}"

die() {
    echo "serve.sh: error: $*" >&2
    exit 1
}
for tool in fio nbdinfo python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd engine"
for server in $SERVERS; do
    case $server in
        imgstream) [[ -x $IMGSTREAM ]] || die "no imgstream binary at $IMGSTREAM" ;;
        nbdkit) command -v nbdkit >/dev/null || die "nbdkit is not installed" ;;
        qemu-nbd) command -v qemu-nbd >/dev/null || die "qemu-nbd is not installed" ;;
        *) die "unknown server '$server' in SERVERS" ;;
    esac
done

# Rows: id|label|unit|fio arguments. unit: iops (thousands) or mibs.
ROWS=(
    "randread4k|4 KiB random read, QD $QD_RANDREAD|kIOPS|--rw=randread --bs=4k --iodepth=$QD_RANDREAD"
    "seqread1m|1 MiB sequential read, QD $QD_SEQREAD|MiB/s|--rw=read --bs=1m --iodepth=$QD_SEQREAD"
    "seqread1m_deep|1 MiB sequential read, QD $QD_SEQREAD_DEEP|MiB/s|--rw=read --bs=1m --iodepth=$QD_SEQREAD_DEEP"
    "randwrite4k|4 KiB random write, QD $QD_RANDWRITE|kIOPS|--rw=randwrite --bs=4k --iodepth=$QD_RANDWRITE"
)

bench_init
file="${BENCH_FILE:-}"
if [[ -z $file ]]; then
    file="$BENCH_TMP/disk.img"
    echo "creating $SIZE of random data in $file ..." >&2
    bytes="$(numfmt --from=iec "$SIZE")"
    head -c "$bytes" /dev/urandom >"$file"
fi
[[ -f $file ]] || die "BENCH_FILE $file is not a file"
cat "$file" >/dev/null # into the page cache
sock="$BENCH_TMP/nbd.sock"

start_server() {
    local server="$1"
    rm -f "$sock"
    case $server in
        imgstream) bench_spawn "$BENCH_TMP/server.log" "$IMGSTREAM" serve "$file" --listen "unix:$sock" ;;
        nbdkit) bench_spawn "$BENCH_TMP/server.log" nbdkit -f --unix "$sock" file "$file" ;;
        qemu-nbd) bench_spawn "$BENCH_TMP/server.log" qemu-nbd -f raw -t -e 16 -k "$sock" \
            --cache=writeback --aio=threads "$file" ;;
    esac
    SERVER_PID="$SPAWN_PID"
    wait_unix_socket "$sock" "$SERVER_PID" ||
        die "$server did not start: $(tail -n 5 "$BENCH_TMP/server.log")"
}

# run_row SERVER ROW REP: one fio run; records the row's number.
run_row() {
    local server="$1" row="$2" rep="$3" id label unit args out
    IFS='|' read -r id label unit args <<<"$row"
    out="$BENCH_TMP/$server-$id-$rep.json"
    # shellcheck disable=SC2086 # $args is a list of fio options
    if ! fio --name="$id" --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
        $args --time_based=1 --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --numjobs=1 --output-format=json --output="$out" >"$BENCH_TMP/fio.err" 2>&1; then
        die "fio $id against $server failed: $(tail -n 5 "$BENCH_TMP/fio.err"; tail -n 5 "$out" 2>/dev/null)"
    fi
    local r_iops r_bw w_iops value
    read -r r_iops r_bw w_iops _ < <(fio_json_summary "$out") ||
        die "cannot parse fio output $out"
    case $id in
        randread4k) value="$(awk -v v="$r_iops" 'BEGIN { printf "%.2f", v / 1000 }')" ;;
        seqread1m*) value="$(awk -v v="$r_bw" 'BEGIN { printf "%.1f", v / 1048576 }')" ;;
        randwrite4k) value="$(awk -v v="$w_iops" 'BEGIN { printf "%.2f", v / 1000 }')" ;;
    esac
    record "$server" "$id" "$value"
    echo "  rep $rep $server $id: $value $unit" >&2
}

for ((rep = 1; rep <= REPEAT; rep++)); do
    for server in $SERVERS; do
        start_server "$server"
        for row in "${ROWS[@]}"; do
            run_row "$server" "$row" "$rep"
        done
        bench_stop "$SERVER_PID"
    done
done

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f×", a / b }'
}

echo "### imgstream serve vs nbdkit vs qemu-nbd"
echo
machine_info
echo "- method: fio nbd engine over a unix socket, 1 job, ${SIZE} file of random data in page cache;" \
    "median of $REPEAT × ${RUNTIME}s (ramp ${RAMP}s);" \
    "nbdkit -f --unix SOCK file FILE; qemu-nbd -f raw -t -e 16 --cache=writeback --aio=threads;" \
    "imgstream serve FILE --listen unix:SOCK"
echo
echo "| row | imgstream | nbdkit | qemu-nbd | vs nbdkit | vs qemu-nbd |"
echo "|---|---:|---:|---:|---:|---:|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r id label unit _ <<<"$row"
    i="$(result imgstream "$id")"
    n="$(result nbdkit "$id")"
    q="$(result qemu-nbd "$id")"
    echo "| $label ($unit) | $i | $n | $q | $(ratio "$i" "$n") | $(ratio "$i" "$q") |"
done
