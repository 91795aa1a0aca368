#!/usr/bin/env bash
# trace.sh - the cost of read tracing: `imgstream serve FILE` with and without
# `--trace`, side by side in the same run.
#
# fio's nbd engine over a unix socket, 4 KiB random reads at iodepth QD (default 32), on a
# file of random data held in the page cache (SIZE, default 1 GiB). Every repetition
# starts the plain server, runs fio, stops it, then does the same with --trace, so that
# drift on the machine hits both alike. Prints the median of each and their ratio
# (traced / plain; the goal is >= 0.95).
#
# Usage: bench/trace.sh
# Environment:
#   RUNTIME=5        seconds per fio run        REPEAT=3  repetitions
#   RAMP=1           fio ramp_time seconds (0 when RUNTIME < 3)
#   SIZE=1G          size of the test file      BENCH_FILE=PATH  reuse a file
#   IMGSTREAM=build/imgstream                   QD=32
# Needs: fio (with the nbd engine), nbdinfo, python3.
# The output is markdown, to paste into docs/BENCHMARKS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNTIME="${RUNTIME:-5}"
REPEAT="${REPEAT:-3}"
SIZE="${SIZE:-1G}"
QD="${QD:-32}"
if [[ -z ${RAMP:-} ]]; then
    RAMP=1
    [[ $RUNTIME -lt 3 ]] && RAMP=0
fi
IMGSTREAM="${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}"
[[ $IMGSTREAM == /* ]] || IMGSTREAM="$BENCH_REPO_ROOT/$IMGSTREAM"

die() {
    echo "trace.sh: error: $*" >&2
    exit 1
}
for tool in fio nbdinfo python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd engine"
[[ -x $IMGSTREAM ]] || die "no imgstream binary at $IMGSTREAM"

bench_init
file="${BENCH_FILE:-}"
if [[ -z $file ]]; then
    file="$BENCH_TMP/disk.img"
    echo "creating $SIZE of random data in $file ..." >&2
    head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom >"$file"
fi
[[ -f $file ]] || die "BENCH_FILE $file is not a file"
cat "$file" >/dev/null # into the page cache
sock="$BENCH_TMP/nbd.sock"
trace="$BENCH_TMP/reads.trace"

# run VARIANT REP: start the server (plain or traced), one fio run, stop it.
run() {
    local variant="$1" rep="$2" out extra=() r_iops value
    rm -f "$sock" "$trace"
    [[ $variant == traced ]] && extra=(--trace "$trace")
    bench_spawn "$BENCH_TMP/server.log" "$IMGSTREAM" serve "$file" --listen "unix:$sock" "${extra[@]}"
    local pid="$SPAWN_PID"
    wait_unix_socket "$sock" "$pid" || die "imgstream did not start: $(tail -n 5 "$BENCH_TMP/server.log")"
    out="$BENCH_TMP/$variant-$rep.json"
    if ! fio --name=randread4k --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
        --rw=randread --bs=4k --iodepth="$QD" --time_based=1 --runtime="$RUNTIME" \
        --ramp_time="$RAMP" --numjobs=1 --output-format=json --output="$out" \
        >"$BENCH_TMP/fio.err" 2>&1; then
        die "fio against $variant failed: $(tail -n 5 "$BENCH_TMP/fio.err")"
    fi
    bench_stop "$pid"
    read -r r_iops _ < <(fio_json_summary "$out") || die "cannot parse fio output $out"
    value="$(awk -v v="$r_iops" 'BEGIN { printf "%.2f", v / 1000 }')"
    echo "$value" >>"$BENCH_TMP/result-$variant"
    if [[ $variant == traced ]]; then
        [[ -s $trace ]] || die "no trace written at $trace"
        echo "  rep $rep $variant: $value kIOPS (trace $(stat -c %s "$trace") bytes)" >&2
    else
        echo "  rep $rep $variant: $value kIOPS" >&2
    fi
}

for ((rep = 1; rep <= REPEAT; rep++)); do
    run plain "$rep"
    run traced "$rep"
done

# shellcheck disable=SC2046
plain="$(median $(cat "$BENCH_TMP/result-plain"))"
# shellcheck disable=SC2046
traced="$(median $(cat "$BENCH_TMP/result-traced"))"
ratio="$(awk -v a="$traced" -v b="$plain" 'BEGIN { printf "%.3f", a / b }')"

echo "### imgstream serve: cost of --trace"
echo
machine_info
echo "- method: fio nbd engine over a unix socket, 1 job, 4 KiB random read, QD $QD," \
    "${SIZE} file of random data in page cache; median of $REPEAT × ${RUNTIME}s (ramp ${RAMP}s);" \
    "imgstream serve FILE --listen unix:SOCK [--trace FILE]"
echo
echo "| row | plain | --trace | ratio |"
echo "|---|---:|---:|---:|"
echo "| 4 KiB random read, QD $QD (kIOPS) | $plain | $traced | ${ratio}× |"
